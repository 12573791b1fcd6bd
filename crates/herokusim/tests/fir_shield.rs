//! herokusim's Fir and Shield apps, through real HTTP against an in-process [`herokusim::Sim`]
//! on 127.0.0.1: generation and space in `GET /apps/{app}` under both Accept shapes, pod-style
//! formation dyno names, the exec-manager refusing Fir apps, the account-keys API, and the
//! `https://` attach_url of Fir and Shield one-offs. What happens on that URL (the upgrade, SSH
//! with the real OpenSSH client, `run:inside`, the attach faults) is `attach.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use herokusim::{AppConfig, DynoConfig, Generation, RunningSim, Sim, SimConfig, SpaceKind};
use serde_json::{Value, json};

mod common;

use common::{T, V3, basic, exec_client, request};
const SDK: &str = "application/vnd.heroku+json; version=3.sdk";

/// Apps `demo` (Cedar, Common Runtime, exec enabled), `firapp` (Fir in a Private Space, exec
/// enabled so only the generation can explain a refusal) and `shieldapp` (Cedar in a Shield
/// space). Formation dynos have no command: tracked state only, no processes to clean up.
async fn start() -> RunningSim {
    let web = |name: &str| DynoConfig {
        name: name.to_owned(),
        ..DynoConfig::default()
    };
    let mut config = SimConfig {
        ssh_port: Some(0),
        ..SimConfig::default()
    };
    config.apps = vec![
        AppConfig {
            name: "demo".to_owned(),
            exec_enabled: true,
            formation: vec![web("web.1")],
            ..AppConfig::default()
        },
        AppConfig {
            name: "firapp".to_owned(),
            generation: Generation::Fir,
            space: Some(SpaceKind::Private),
            exec_enabled: true,
            formation: vec![web("web.1"), web("web.2"), web("worker.1")],
            ..AppConfig::default()
        },
        AppConfig {
            name: "shieldapp".to_owned(),
            space: Some(SpaceKind::Shield),
            formation: vec![web("web.1")],
            ..AppConfig::default()
        },
    ];
    Sim::start(config).await.expect("sim starts")
}

async fn get_json(sim: &RunningSim, path: &str, accept: &str) -> Value {
    let resp = request(sim, reqwest::Method::GET, path, accept, None).await;
    assert_eq!(resp.status(), 200, "GET {path}");
    resp.json().await.expect("json")
}

/// A Fir app reports `fir` as an object under v3 and a string under 3.sdk, stack `cnb`, and
/// its Private Space; a Shield app reports `space.shield: true`; Cedar keeps `space: null`.
#[tokio::test]
async fn fir_and_shield_apps_report_generation_stack_and_space() {
    let sim = start().await;
    let v3 = get_json(&sim, "/apps/firapp", V3).await;
    assert_eq!(v3["generation"]["name"], "fir", "{v3}");
    assert!(v3["generation"]["id"].is_string(), "{v3}");
    assert_eq!(v3["stack"]["name"], "cnb", "{v3}");
    assert_eq!(v3["build_stack"]["name"], "cnb", "{v3}");
    assert_eq!(v3["space"]["shield"], false, "{v3}");
    assert!(v3["space"]["id"].is_string() && v3["space"]["name"].is_string());
    let sdk = get_json(&sim, "/apps/firapp", SDK).await;
    assert_eq!(sdk["generation"], "fir", "{sdk}");
    assert_eq!(sdk["stack"]["name"], "cnb", "{sdk}");
    assert_eq!(sdk["space"], v3["space"]);

    let shield = get_json(&sim, "/apps/shieldapp", SDK).await;
    assert_eq!(shield["generation"], "cedar", "{shield}");
    assert_eq!(shield["stack"]["name"], "heroku-24", "{shield}");
    assert_eq!(shield["space"]["shield"], true, "{shield}");
    assert_ne!(shield["space"]["id"], v3["space"]["id"]);

    let cedar = get_json(&sim, "/apps/demo", SDK).await;
    assert_eq!(cedar["generation"], "cedar");
    assert!(cedar["space"].is_null(), "{cedar}");
    sim.shutdown().await;
}

fn is_pod_name(name: &str, process_type: &str) -> bool {
    let parts: Vec<&str> = name.split('-').collect();
    matches!(parts.as_slice(), [t, hash, suffix]
        if *t == process_type
            && hash.len() == 10
            && hash.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            && suffix.len() == 5
            && suffix.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()))
}

/// Fir formation dynos are listed and fetched by pod-style names, derived from the app name
/// (the same in every run and across restarts); Cedar keeps `web.1`.
#[tokio::test]
async fn fir_formation_dynos_have_stable_pod_style_names() {
    let sim = start().await;
    let list = get_json(&sim, "/apps/firapp/dynos", V3).await;
    let names: Vec<String> = list
        .as_array()
        .expect("array")
        .iter()
        .map(|d| d["name"].as_str().expect("name").to_owned())
        .collect();
    assert_eq!(names.len(), 3, "{list}");
    let mut expected = vec![
        herokusim::fir_dyno_name("firapp", "web.1"),
        herokusim::fir_dyno_name("firapp", "web.2"),
        herokusim::fir_dyno_name("firapp", "worker.1"),
    ];
    expected.sort();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(sorted, expected);
    for d in list.as_array().expect("array") {
        let name = d["name"].as_str().expect("name");
        let process_type = d["type"].as_str().expect("type");
        assert!(is_pod_name(name, process_type), "{name} ({process_type})");
        assert_eq!(d["state"], "up");
    }
    let web1 = herokusim::fir_dyno_name("firapp", "web.1");
    let one = get_json(&sim, &format!("/apps/firapp/dynos/{web1}"), V3).await;
    assert_eq!(one["name"], web1.as_str());
    assert_eq!(one["type"], "web");
    // The Cedar name does not exist on a Fir app.
    let resp = request(
        &sim,
        reqwest::Method::GET,
        "/apps/firapp/dynos/web.1",
        V3,
        None,
    )
    .await;
    assert_eq!(resp.status(), 404);

    // A restart keeps the name (stable for the app's life).
    let resp = request(
        &sim,
        reqwest::Method::DELETE,
        &format!("/apps/firapp/dynos/{web1}"),
        V3,
        None,
    )
    .await;
    assert_eq!(resp.status(), 202);
    let again = get_json(&sim, &format!("/apps/firapp/dynos/{web1}"), V3).await;
    assert_eq!(again["name"], web1.as_str());
    assert_ne!(again["id"], one["id"], "restarted");

    let cedar = get_json(&sim, "/apps/demo/dynos", V3).await;
    assert_eq!(cedar[0]["name"], "web.1", "{cedar}");
    sim.shutdown().await;
}

async fn exec_put(sim: &RunningSim, app: &str, dyno: &str) -> reqwest::Response {
    let key = russh::keys::PrivateKey::random(&mut rand::rng(), russh::keys::Algorithm::Ed25519)
        .expect("key");
    let client_key = format!("{} ", key.public_key().to_openssh().expect("openssh"));
    let req = exec_client(sim)
        .put(format!("{}api/v2/{dyno}", sim.exec_url()))
        .header("Authorization", basic(app, sim.api_key()))
        .json(&json!({"client_key": client_key}))
        .send();
    tokio::time::timeout(T, req)
        .await
        .expect("in time")
        .expect("request")
}

async fn exec_status(sim: &RunningSim, app: &str) -> reqwest::Response {
    let req = exec_client(sim)
        .get(format!("{}api/v2", sim.exec_url()))
        .header("Authorization", basic(app, sim.api_key()))
        .send();
    tokio::time::timeout(T, req)
        .await
        .expect("in time")
        .expect("request")
}

async fn assert_fir_refusal(resp: reqwest::Response) {
    assert_eq!(resp.status(), 403);
    let body: Value = resp.json().await.expect("error json");
    assert_eq!(body["id"], "forbidden", "{body}");
    let message = body["message"].as_str().expect("message");
    assert!(
        message.contains("Fir") && message.contains("run:inside"),
        "{message}"
    );
}

/// The exec-manager refuses a Fir app on both routes, although its feature is enabled and its
/// dyno is up; the same requests for a Cedar app succeed, so only the generation explains it.
#[tokio::test]
async fn exec_manager_refuses_fir_apps() {
    let sim = start().await;
    let web1 = herokusim::fir_dyno_name("firapp", "web.1");
    assert_fir_refusal(exec_put(&sim, "firapp", &web1).await).await;
    assert_fir_refusal(exec_status(&sim, "firapp").await).await;

    let ok = exec_put(&sim, "demo", "web.1").await;
    assert_eq!(ok.status(), 200);
    let creds: Value = ok.json().await.expect("json");
    assert!(creds["client_user"].is_string(), "{creds}");
    let status = exec_status(&sim, "demo").await;
    assert_eq!(status.status(), 200);
    sim.shutdown().await;
}

/// A fixed ed25519 key line and its MD5 fingerprint from `ssh-keygen -E md5 -lf`.
const KEY_LINE: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILntH4hiPe0WaU183tnQAE01FVbg5r6a1njcICcs58zL agent@test\n";
const KEY_MD5: &str = "26:38:2e:3e:ab:cd:49:66:ea:7e:3e:86:f1:41:b1:d9";

/// `POST`, `GET` (list and one, by id or fingerprint) and `DELETE /account/keys`, with the
/// schema's Key fields; the key is uploaded with a trailing newline, as `heroku keys:add` does.
#[tokio::test]
async fn account_keys_can_be_added_listed_and_removed() {
    let sim = start().await;
    let resp = request(
        &sim,
        reqwest::Method::POST,
        "/account/keys",
        V3,
        Some(json!({"public_key": KEY_LINE})),
    )
    .await;
    assert_eq!(resp.status(), 201);
    let key: Value = resp.json().await.expect("key json");
    assert!(key["id"].is_string(), "{key}");
    assert_eq!(key["fingerprint"], KEY_MD5);
    assert_eq!(key["public_key"], KEY_LINE);
    assert_eq!(key["comment"], "agent@test");
    assert_eq!(key["email"], "agent@test");
    assert!(key["created_at"].is_string() && key["updated_at"].is_string());
    let id = key["id"].as_str().expect("id").to_owned();

    // A second key, generated here, with no comment.
    let other = russh::keys::PrivateKey::random(&mut rand::rng(), russh::keys::Algorithm::Ed25519)
        .expect("key");
    let other_line = other.public_key().to_openssh().expect("openssh");
    let resp = request(
        &sim,
        reqwest::Method::POST,
        "/account/keys",
        V3,
        Some(json!({"public_key": other_line})),
    )
    .await;
    assert_eq!(resp.status(), 201);
    let second: Value = resp.json().await.expect("json");
    assert_eq!(second["comment"], "");

    let list = get_json(&sim, "/account/keys", V3).await;
    assert_eq!(list.as_array().map(Vec::len), Some(2), "{list}");
    assert_eq!(list[0], key);
    assert_eq!(
        get_json(&sim, &format!("/account/keys/{id}"), V3).await,
        key
    );
    assert_eq!(
        get_json(&sim, &format!("/account/keys/{KEY_MD5}"), V3).await,
        key
    );
    let stored = sim.account_keys();
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0].fingerprint, KEY_MD5);
    assert_eq!(stored[0].comment, "agent@test");

    // Delete by fingerprint: answers the deleted key; it is gone from the list and the sim.
    let resp = request(
        &sim,
        reqwest::Method::DELETE,
        &format!("/account/keys/{KEY_MD5}"),
        V3,
        None,
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.expect("json"), key);
    let resp = request(
        &sim,
        reqwest::Method::GET,
        &format!("/account/keys/{id}"),
        V3,
        None,
    )
    .await;
    assert_eq!(resp.status(), 404);
    let list = get_json(&sim, "/account/keys", V3).await;
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list[0], second);
    // Delete by id.
    let second_id = second["id"].as_str().expect("id");
    let resp = request(
        &sim,
        reqwest::Method::DELETE,
        &format!("/account/keys/{second_id}"),
        V3,
        None,
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert!(sim.account_keys().is_empty());
    let resp = request(
        &sim,
        reqwest::Method::DELETE,
        &format!("/account/keys/{second_id}"),
        V3,
        None,
    )
    .await;
    assert_eq!(resp.status(), 404);
    sim.shutdown().await;
}

/// Malformed, missing and duplicate keys get 422 `invalid_params` in Heroku's error shape, and
/// nothing is stored.
#[tokio::test]
async fn invalid_account_keys_are_refused_with_422() {
    let sim = start().await;
    for body in [
        json!({"public_key": "ssh-ed25519 not-base64 me@host"}),
        json!({"public_key": "hello"}),
        json!({"public_key": ""}),
        json!({"public_key": 42}),
        json!({}),
    ] {
        let resp = request(
            &sim,
            reqwest::Method::POST,
            "/account/keys",
            V3,
            Some(body.clone()),
        )
        .await;
        assert_eq!(resp.status(), 422, "{body}");
        let err: Value = resp.json().await.expect("error json");
        assert_eq!(err["id"], "invalid_params", "{err}");
        assert!(
            err["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{err}"
        );
        assert!(err["url"].is_string(), "{err}");
    }
    assert!(sim.account_keys().is_empty());

    let add = || {
        request(
            &sim,
            reqwest::Method::POST,
            "/account/keys",
            V3,
            Some(json!({"public_key": KEY_LINE})),
        )
    };
    assert_eq!(add().await.status(), 201);
    let dup = add().await;
    assert_eq!(dup.status(), 422);
    let err: Value = dup.json().await.expect("error json");
    assert_eq!(err["id"], "invalid_params", "{err}");
    assert_eq!(sim.account_keys().len(), 1);
    sim.shutdown().await;
}

/// A one-off created with `attach: true` on a Fir or Shield app gets an `https://` attach_url
/// on herokusim's HTTPS listener; a Cedar Common Runtime app keeps `rendezvous://`.
#[tokio::test]
async fn fir_and_shield_one_offs_get_an_https_attach_url() {
    let sim = start().await;
    let create = |app: &'static str| {
        request(
            &sim,
            reqwest::Method::POST,
            match app {
                "firapp" => "/apps/firapp/dynos",
                "shieldapp" => "/apps/shieldapp/dynos",
                _ => "/apps/demo/dynos",
            },
            V3,
            Some(json!({"command": "bash", "attach": true, "time_to_live": 60})),
        )
    };
    let prefix = format!("{}attach/", sim.exec_url());
    let mut urls = Vec::new();
    for app in ["firapp", "shieldapp"] {
        let resp = create(app).await;
        assert_eq!(resp.status(), 201, "{app}");
        let dyno: Value = resp.json().await.expect("json");
        let url = dyno["attach_url"].as_str().expect("attach_url").to_owned();
        assert!(url.starts_with(&prefix), "{app}: {url}");
        assert!(url.len() > prefix.len(), "{app}: no secret in {url}");
        assert_eq!(dyno["state"], "starting");
        urls.push(url);
    }
    assert_ne!(urls[0], urls[1], "each dyno has its own secret");

    let resp = create("demo").await;
    assert_eq!(resp.status(), 201);
    let dyno: Value = resp.json().await.expect("json");
    let url = dyno["attach_url"].as_str().expect("attach_url");
    assert!(url.starts_with("rendezvous://127.0.0.1:"), "{url}");

    // The attach URL is an upgrade endpoint: a plain GET (no `Upgrade: tcp`) is refused and
    // does not use the secret up.
    let resp = tokio::time::timeout(T, exec_client(&sim).get(&urls[0]).send())
        .await
        .expect("in time")
        .expect("request");
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.expect("error json");
    assert_eq!(err["id"], "bad_request", "{err}");
    sim.shutdown().await;
}

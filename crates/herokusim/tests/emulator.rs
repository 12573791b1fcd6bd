//! The emulator's own tests, against an in-process [`herokusim::Sim`] on 127.0.0.1 (SSH proxy on
//! a free port, never 80): Platform API auth, error bodies and headers, dyno create and states,
//! the rendezvous handshake and splice, `time_to_live`, the exec-manager's refusals, the SSH
//! proxy (exec, PTY + window-change, exit status/signal, env), and every fault injection.
//!
//! Where a test waits for something asynchronous that has no event to wait on (a killed
//! process disappearing from /proc), it polls with a deadline and says so.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use herokusim::{Faults, RunningSim, Sim, SimConfig};
use russh::ChannelMsg;
use russh::keys::ssh_key::PublicKey;
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

mod common;

use common::{T, basic, exec_client};

async fn start() -> RunningSim {
    start_with(SimConfig {
        ssh_port: Some(0),
        ack_pause_ms: 50,
        kill_grace_ms: 300,
        ..SimConfig::demo()
    })
    .await
}

async fn start_with(config: SimConfig) -> RunningSim {
    Sim::start(config).await.expect("sim starts")
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().build().expect("client")
}

async fn api(
    sim: &RunningSim,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> reqwest::Response {
    common::request(sim, method, path, common::V3, body).await
}

fn assert_common_headers(resp: &reqwest::Response) {
    assert!(
        resp.headers().contains_key("ratelimit-remaining"),
        "no RateLimit-Remaining on {}",
        resp.status()
    );
    assert!(
        resp.headers().contains_key("request-id"),
        "no Request-Id on {}",
        resp.status()
    );
}

async fn create(sim: &RunningSim, body: Value) -> Value {
    let resp = api(sim, reqwest::Method::POST, "/apps/demo/dynos", Some(body)).await;
    assert_eq!(resp.status(), 201);
    assert_common_headers(&resp);
    resp.json().await.expect("dyno json")
}

fn tls_connector(sim: &RunningSim) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    let mut pem = sim.ca_pem().as_bytes();
    for cert in rustls_pemfile_certs(&mut pem) {
        roots.add(cert).expect("ca cert");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// Minimal PEM certificate reader (avoids another dependency).
fn rustls_pemfile_certs(pem: &mut &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use base64::Engine as _;
    let text = std::str::from_utf8(pem).expect("utf8");
    let mut out = Vec::new();
    for block in text.split("-----BEGIN CERTIFICATE-----").skip(1) {
        let body = block
            .split("-----END CERTIFICATE-----")
            .next()
            .unwrap_or_default();
        let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("b64");
        out.push(rustls::pki_types::CertificateDer::from(der));
    }
    out
}

/// Connects to `attach_url` and writes `line` (the secret plus a terminator).
async fn rendezvous_connect(
    sim: &RunningSim,
    attach_url: &str,
    terminator: &str,
) -> TlsStream<TcpStream> {
    let rest = attach_url
        .strip_prefix("rendezvous://")
        .expect("rendezvous url");
    let (hostport, secret) = rest.split_once('/').expect("secret");
    let tcp = TcpStream::connect(hostport).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let mut tls = tls_connector(sim).connect(name, tcp).await.expect("tls");
    tls.write_all(format!("{secret}{terminator}").as_bytes())
        .await
        .expect("secret");
    tls.flush().await.expect("flush");
    tls
}

/// Reads the ack and asserts it arrived alone (its own write; output comes after a pause).
async fn read_ack(tls: &mut TlsStream<TcpStream>) {
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(T, tls.read(&mut buf))
        .await
        .expect("ack in time")
        .expect("read");
    assert_eq!(
        &buf[..n],
        herokusim::RENDEZVOUS_ACK,
        "the first read must be exactly the ack"
    );
}

/// Reads until EOF (or error); returns the bytes and whether the close was clean.
async fn read_all(tls: &mut TlsStream<TcpStream>) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(T, tls.read(&mut buf))
            .await
            .expect("output in time")
        {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (out, false),
        }
    }
}

async fn read_until(tls: &mut TlsStream<TcpStream>, needle: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !out.windows(needle.len()).any(|w| w == needle) {
        let n = tokio::time::timeout(T, tls.read(&mut buf))
            .await
            .expect("in time")
            .expect("read");
        assert!(
            n > 0,
            "eof before {:?}: {:?}",
            String::from_utf8_lossy(needle),
            String::from_utf8_lossy(&out)
        );
        out.extend_from_slice(&buf[..n]);
    }
    out
}

async fn dyno_state(sim: &RunningSim, name: &str) -> Option<String> {
    let list: Value = api(sim, reqwest::Method::GET, "/apps/demo/dynos", None)
        .await
        .json()
        .await
        .unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == name)
        .map(|d| d["state"].as_str().unwrap().to_owned())
}

/// Polls (deadline 10 s) until `pid` is gone from /proc: killing is asynchronous and a
/// process's disappearance has no event we can wait on.
async fn assert_pid_gone(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "process {pid} still alive");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------- Platform API

#[tokio::test]
async fn auth_errors_and_headers_on_every_response() {
    let sim = start().await;
    let c = http();
    for auth in [None, Some("Bearer wrong"), Some("Basic abc")] {
        let mut req = c.get(format!("{}/account", sim.api_url()));
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401);
        assert_common_headers(&resp);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["id"], "unauthorized");
        assert!(body["message"].is_string() && body["url"].is_string());
    }
    let resp = api(&sim, reqwest::Method::GET, "/account", None).await;
    assert_eq!(resp.status(), 200);
    assert_common_headers(&resp);
    let body: Value = resp.json().await.unwrap();
    assert!(body["email"].is_string() && body["id"].is_string());
    for path in [
        "/apps/nope",
        "/apps/nope/dynos",
        "/apps/demo/dynos/web.9",
        "/no/such/route",
    ] {
        let resp = api(&sim, reqwest::Method::GET, path, None).await;
        assert_eq!(resp.status(), 404, "{path}");
        assert_common_headers(&resp);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["id"], "not_found", "{path}");
        assert!(body["message"].is_string() && body["url"].is_string());
    }
    let resp = api(
        &sim,
        reqwest::Method::POST,
        "/apps/demo/dynos",
        Some(json!({"attach": true})),
    )
    .await;
    assert_eq!(resp.status(), 422);
    assert_common_headers(&resp);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["id"], "invalid_params");

    let app: Value = api(&sim, reqwest::Method::GET, "/apps/demo", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(app["name"], "demo");
    // `version=3` (this helper's Accept): the object shape (heroku-protocols.md §1.5).
    assert_eq!(app["generation"]["name"], "cedar");
    assert!(app["stack"]["name"].is_string() && app["build_stack"]["name"].is_string());
    assert!(app["space"].is_null());
    let rl = api(&sim, reqwest::Method::GET, "/account/rate-limits", None).await;
    let remaining: u64 = rl.headers()["ratelimit-remaining"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body: Value = rl.json().await.unwrap();
    assert_eq!(body["remaining"].as_u64(), Some(remaining));
    let cv: Value = api(&sim, reqwest::Method::GET, "/apps/demo/config-vars", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(cv["DEMO_CONFIG_VAR"], "from-config-vars");
    let bp: Value = api(
        &sim,
        reqwest::Method::GET,
        "/apps/demo/buildpack-installations",
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(bp, json!([]));
    let f: Value = api(
        &sim,
        reqwest::Method::GET,
        "/apps/demo/features/runtime-heroku-exec",
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(f["enabled"], true);
    assert_eq!(f["name"], "runtime-heroku-exec");
    sim.shutdown().await;
}

#[tokio::test]
async fn formation_dynos_are_real_processes_and_restart() {
    let sim = start().await;
    let groups = sim.live_process_groups();
    assert_eq!(groups.len(), 1, "web.1 runs one process group");
    assert_eq!(dyno_state(&sim, "web.1").await.as_deref(), Some("up"));
    let resp = api(&sim, reqwest::Method::DELETE, "/apps/demo/dynos", None).await;
    assert_eq!(resp.status(), 202);
    assert_common_headers(&resp);
    assert_pid_gone(groups[0]).await;
    let after = sim.live_process_groups();
    assert_eq!(after.len(), 1);
    assert_ne!(after, groups, "restart boots a new process");
    assert_eq!(dyno_state(&sim, "web.1").await.as_deref(), Some("up"));
    let resp = api(
        &sim,
        reqwest::Method::DELETE,
        "/apps/demo/dynos/web.1",
        None,
    )
    .await;
    assert_eq!(resp.status(), 202);
    let resp = api(
        &sim,
        reqwest::Method::DELETE,
        "/apps/demo/formations/web",
        None,
    )
    .await;
    assert_eq!(resp.status(), 202);
    sim.shutdown().await;
    assert_pid_gone(after[0]).await;
}

// ---------------------------------------------------------------- rendezvous

#[tokio::test]
async fn tty_one_off_is_sized_from_numeric_columns_and_lines() {
    let sim = start().await;
    let dyno = create(
        &sim,
        json!({"attach": true, "command": "stty size", "env": {"COLUMNS": 100, "LINES": 30, "TERM": "xterm"}}),
    )
    .await;
    assert_eq!(dyno["state"], "starting");
    assert_eq!(dyno["type"], "run");
    assert!(dyno["name"].as_str().unwrap().starts_with("run."));
    let mut tls = rendezvous_connect(&sim, dyno["attach_url"].as_str().unwrap(), "\r\n").await;
    read_ack(&mut tls).await;
    let (out, clean) = read_all(&mut tls).await;
    assert!(clean, "the child's exit closes TLS with close_notify");
    assert_eq!(
        String::from_utf8_lossy(&out),
        "30 100\r\n",
        "PTY output has CRLF"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn no_tty_stdin_ends_at_eot_and_marker_line_is_exact() {
    let sim = start().await;
    let command = "cat; echo done; (exit 3) ; echo \"\u{FFFF} heroku-command-exit-status: $?\"";
    let dyno = create(
        &sim,
        json!({"attach": true, "command": command, "force_no_tty": true, "env": {"TERM": "xterm"}}),
    )
    .await;
    // LF-only secret line with a query string, as the Ruby client could send.
    let url = format!("{}?x=1", dyno["attach_url"].as_str().unwrap());
    let mut tls = rendezvous_connect(&sim, &url, "\n").await;
    read_ack(&mut tls).await;
    tls.write_all(b"hello\n\x04after-eot\n").await.unwrap();
    tls.flush().await.unwrap();
    let (out, clean) = read_all(&mut tls).await;
    assert!(clean);
    let mut expected = b"hello\ndone\n".to_vec();
    expected.extend_from_slice(b"\xEF\xBF\xBF heroku-command-exit-status: 3\n");
    assert_eq!(out, expected, "got {:?}", String::from_utf8_lossy(&out));
    // Gone from the API once the process ended.
    assert_eq!(dyno_state(&sim, dyno["name"].as_str().unwrap()).await, None);
    sim.shutdown().await;
}

#[tokio::test]
async fn stderr_is_merged_without_tty_and_states_move_starting_up_gone() {
    let sim = start().await;
    let dyno = create(&sim, json!({"attach": true, "command": "echo err >&2; read x; echo \"got $x\"", "force_no_tty": true})).await;
    let name = dyno["name"].as_str().unwrap().to_owned();
    assert_eq!(dyno_state(&sim, &name).await.as_deref(), Some("starting"));
    let mut tls = rendezvous_connect(&sim, dyno["attach_url"].as_str().unwrap(), "\r\n").await;
    read_ack(&mut tls).await;
    read_until(&mut tls, b"err\n").await;
    assert_eq!(dyno_state(&sim, &name).await.as_deref(), Some("up"));
    tls.write_all(b"x1\n").await.unwrap();
    let (out, _) = read_all(&mut tls).await;
    assert_eq!(String::from_utf8_lossy(&out), "got x1\n");
    assert_eq!(dyno_state(&sim, &name).await, None);
    sim.shutdown().await;
}

#[tokio::test]
async fn unknown_and_reused_secrets_are_closed_without_ack() {
    let sim = start().await;
    let bogus = format!(
        "rendezvous://127.0.0.1:{}/nosuchsecret",
        sim.rendezvous_port()
    );
    let mut tls = rendezvous_connect(&sim, &bogus, "\r\n").await;
    let (out, _) = read_all(&mut tls).await;
    assert!(out.is_empty());
    let dyno = create(
        &sim,
        json!({"attach": true, "command": "sleep 30", "force_no_tty": true}),
    )
    .await;
    let url = dyno["attach_url"].as_str().unwrap();
    let mut first = rendezvous_connect(&sim, url, "\r\n").await;
    read_ack(&mut first).await;
    let mut second = rendezvous_connect(&sim, url, "\r\n").await;
    let (out, _) = read_all(&mut second).await;
    assert!(out.is_empty(), "a used secret gets no ack");
    drop(first);
    sim.shutdown().await;
}

#[tokio::test]
async fn client_disconnect_kills_the_child() {
    let sim = start().await;
    let dyno = create(
        &sim,
        json!({"attach": true, "command": "echo pid=$$; sleep 1000", "force_no_tty": true}),
    )
    .await;
    let mut tls = rendezvous_connect(&sim, dyno["attach_url"].as_str().unwrap(), "\r\n").await;
    read_ack(&mut tls).await;
    let out = read_until(&mut tls, b"\n").await;
    let text = String::from_utf8_lossy(&out);
    let pid: i32 = text.trim().strip_prefix("pid=").unwrap().parse().unwrap();
    assert!(sim.live_process_groups().contains(&pid));
    drop(tls);
    assert_pid_gone(pid).await;
    // The one-off is gone from the API as well (removed after the kill).
    let deadline = Instant::now() + Duration::from_secs(10);
    while dyno_state(&sim, dyno["name"].as_str().unwrap())
        .await
        .is_some()
    {
        assert!(Instant::now() < deadline, "dyno still listed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!sim.live_process_groups().contains(&pid));
    sim.shutdown().await;
}

#[tokio::test]
async fn time_to_live_stops_the_dyno() {
    let sim = start().await;
    let dyno = create(
        &sim,
        json!({"attach": true, "command": "echo pid=$$; sleep 1000", "force_no_tty": true, "time_to_live": 1}),
    )
    .await;
    let started = Instant::now();
    let mut tls = rendezvous_connect(&sim, dyno["attach_url"].as_str().unwrap(), "\r\n").await;
    read_ack(&mut tls).await;
    let out = read_until(&mut tls, b"\n").await;
    let pid: i32 = String::from_utf8_lossy(&out)
        .trim()
        .strip_prefix("pid=")
        .unwrap()
        .parse()
        .unwrap();
    let (_, _) = read_all(&mut tls).await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900),
        "closed too early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(10),
        "closed too late: {elapsed:?}"
    );
    assert_pid_gone(pid).await;
    assert_eq!(dyno_state(&sim, dyno["name"].as_str().unwrap()).await, None);
    // An unattached dyno expires too.
    let idle = create(
        &sim,
        json!({"attach": true, "command": "true", "time_to_live": 1}),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while dyno_state(&sim, idle["name"].as_str().unwrap())
        .await
        .is_some()
    {
        assert!(Instant::now() < deadline, "unattached dyno did not expire");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn detached_one_off_runs_without_attach() {
    let sim = start().await;
    let dyno = create(&sim, json!({"attach": false, "command": "sleep 1000"})).await;
    assert!(dyno["attach_url"].is_null());
    let name = dyno["name"].as_str().unwrap().to_owned();
    assert_eq!(dyno_state(&sim, &name).await.as_deref(), Some("up"));
    assert_eq!(sim.live_process_groups().len(), 2);
    let resp = api(
        &sim,
        reqwest::Method::DELETE,
        &format!("/apps/demo/dynos/{name}"),
        None,
    )
    .await;
    assert_eq!(resp.status(), 202);
    assert_eq!(dyno_state(&sim, &name).await, None);
    sim.shutdown().await;
}

// ---------------------------------------------------------------- exec-manager + SSH

async fn exec_put(
    sim: &RunningSim,
    app: &str,
    key: &str,
    dyno: &str,
    client_key: &str,
) -> reqwest::Response {
    let c = exec_client(sim);
    c.put(format!("{}api/v2/{dyno}", sim.exec_url()))
        .header("Authorization", basic(app, key))
        .json(&json!({"client_key": client_key}))
        .send()
        .await
        .unwrap()
}

async fn exec_status(sim: &RunningSim) -> Value {
    let c = exec_client(sim);
    c.get(format!("{}api/v2", sim.exec_url()))
        .header("Authorization", basic("demo", sim.api_key()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn client_key() -> PrivateKey {
    PrivateKey::random(&mut rand::rng(), russh::keys::Algorithm::Ed25519).unwrap()
}

fn openssh_pub(key: &PrivateKey) -> String {
    // The CLI sends an empty comment, leaving a trailing space.
    let mut s = key.public_key().to_openssh().unwrap();
    s.push(' ');
    s
}

#[tokio::test]
async fn exec_manager_refuses_as_heroku_does() {
    let sim = start().await;
    let key = openssh_pub(&client_key());
    assert_eq!(
        exec_put(&sim, "demo", "wrong", "web.1", &key)
            .await
            .status(),
        401
    );
    assert_eq!(
        exec_put(&sim, "other", sim.api_key(), "web.1", &key)
            .await
            .status(),
        403
    );
    assert_eq!(
        exec_put(&sim, "demo", sim.api_key(), "web.9", &key)
            .await
            .status(),
        404
    );
    // One-off dynos have no exec agent.
    let one_off = create(&sim, json!({"attach": false, "command": "sleep 1000"})).await;
    let resp = exec_put(
        &sim,
        "demo",
        sim.api_key(),
        one_off["name"].as_str().unwrap(),
        &key,
    )
    .await;
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["id"], "not_found");
    // Works now.
    let resp = exec_put(&sim, "demo", sim.api_key(), "web.1", &key).await;
    assert_eq!(resp.status(), 200);
    let creds: Value = resp.json().await.unwrap();
    assert_eq!(creds["tunnel_host"], "127.0.0.1");
    assert_eq!(creds["dyno_ip"], "127.0.0.1");
    assert_eq!(
        creds["proxy_public_key"].as_str(),
        Some(sim.proxy_public_key())
    );
    assert!(creds["client_user"].is_string());
    assert_eq!(
        exec_status(&sim).await,
        json!([{"dyno_name": "web.1", "dyno_ip": "127.0.0.1"}])
    );
    // Feature off: refused, and nothing listed.
    let resp = api(
        &sim,
        reqwest::Method::PATCH,
        "/apps/demo/features/runtime-heroku-exec",
        Some(json!({"enabled": false})),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        exec_put(&sim, "demo", sim.api_key(), "web.1", &key)
            .await
            .status(),
        404
    );
    assert_eq!(exec_status(&sim).await, json!([]));
    // Enabled again but not restarted: still refused.
    api(
        &sim,
        reqwest::Method::PATCH,
        "/apps/demo/features/runtime-heroku-exec",
        Some(json!({"enabled": true})),
    )
    .await;
    assert_eq!(
        exec_put(&sim, "demo", sim.api_key(), "web.1", &key)
            .await
            .status(),
        404
    );
    // After a restart it works.
    api(&sim, reqwest::Method::DELETE, "/apps/demo/dynos", None).await;
    assert_eq!(
        exec_put(&sim, "demo", sim.api_key(), "web.1", &key)
            .await
            .status(),
        200
    );
    sim.shutdown().await;
}

struct Client {
    expected: PublicKey,
}

impl russh::client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(match key {
            russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } => {
                key.key_data() == self.expected.key_data()
            }
            russh::keys::PublicKeyOrCertificate::Certificate(_) => false,
        })
    }
}

/// Exchanges credentials and connects to the proxy; returns the authenticated handle.
async fn ssh_connect(sim: &RunningSim, key: &PrivateKey) -> russh::client::Handle<Client> {
    let resp = exec_put(sim, "demo", sim.api_key(), "web.1", &openssh_pub(key)).await;
    assert_eq!(resp.status(), 200);
    let creds: Value = resp.json().await.unwrap();
    let user = creds["client_user"].as_str().unwrap().to_owned();
    let expected = PublicKey::from_openssh(creds["proxy_public_key"].as_str().unwrap()).unwrap();
    let config = Arc::new(russh::client::Config::default());
    let mut h = russh::client::connect(config, ("127.0.0.1", sim.ssh_port()), Client { expected })
        .await
        .expect("ssh connect (host key pinned)");
    let auth = h
        .authenticate_publickey(
            user,
            PrivateKeyWithHashAlg::new(Arc::new(key.clone()), None),
        )
        .await
        .unwrap();
    assert!(auth.success(), "registered key accepted");
    h
}

#[derive(Debug, Default)]
struct Collected {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    status: Option<u32>,
    signal: Option<russh::Sig>,
    closed: bool,
}

async fn collect(ch: &mut russh::Channel<russh::client::Msg>) -> Collected {
    let mut c = Collected::default();
    while let Some(msg) = tokio::time::timeout(T, ch.wait())
        .await
        .expect("channel message in time")
    {
        match msg {
            ChannelMsg::Data { data } => c.stdout.extend_from_slice(&data),
            ChannelMsg::ExtendedData { data, ext: 1 } => c.stderr.extend_from_slice(&data),
            ChannelMsg::ExitStatus { exit_status } => c.status = Some(exit_status),
            ChannelMsg::ExitSignal { signal_name, .. } => c.signal = Some(signal_name),
            ChannelMsg::Close => {
                c.closed = true;
                break;
            }
            _ => {}
        }
    }
    c
}

#[tokio::test]
async fn ssh_exec_status_streams_env_and_signals() {
    let sim = start().await;
    let key = client_key();
    let h = ssh_connect(&sim, &key).await;
    let mut ch = h.channel_open_session().await.unwrap();
    ch.exec(
        true,
        "echo out; echo err >&2; echo \"cv=${DEMO_CONFIG_VAR:-unset} dyno=$DYNO\"; exit 7",
    )
    .await
    .unwrap();
    let c = collect(&mut ch).await;
    assert_eq!(
        String::from_utf8_lossy(&c.stdout),
        "out\ncv=unset dyno=web.1\n"
    );
    assert_eq!(String::from_utf8_lossy(&c.stderr), "err\n");
    assert_eq!(c.status, Some(7));
    assert!(c.closed);

    // Stdin EOF without a PTY closes the process's stdin.
    let mut ch = h.channel_open_session().await.unwrap();
    ch.exec(true, "cat; exit 3").await.unwrap();
    ch.data_bytes(bytes::Bytes::from_static(b"abc\n"))
        .await
        .unwrap();
    ch.eof().await.unwrap();
    let c = collect(&mut ch).await;
    assert_eq!(c.stdout, b"abc\n");
    assert_eq!(c.status, Some(3));

    // A signal-killed process reports exit-signal.
    let mut ch = h.channel_open_session().await.unwrap();
    ch.exec(true, "kill -TERM $$").await.unwrap();
    let c = collect(&mut ch).await;
    assert!(matches!(c.signal, Some(russh::Sig::TERM)), "{:?}", c.signal);
    assert_eq!(c.status, None);
    sim.shutdown().await;
}

#[tokio::test]
async fn ssh_pty_window_change_and_shell() {
    let sim = start().await;
    let key = client_key();
    let h = ssh_connect(&sim, &key).await;
    let mut ch = h.channel_open_session().await.unwrap();
    ch.request_pty(true, "xterm", 100, 30, 0, 0, &[])
        .await
        .unwrap();
    ch.exec(true, "stty size; read x; stty size").await.unwrap();
    let mut out = Vec::new();
    while !String::from_utf8_lossy(&out).contains("30 100") {
        match tokio::time::timeout(T, ch.wait()).await.unwrap() {
            Some(ChannelMsg::Data { data }) => out.extend_from_slice(&data),
            Some(_) => {}
            None => panic!("channel ended early: {:?}", String::from_utf8_lossy(&out)),
        }
    }
    ch.window_change(120, 40, 0, 0).await.unwrap();
    ch.data_bytes(bytes::Bytes::from_static(b"\n"))
        .await
        .unwrap();
    let c = collect(&mut ch).await;
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&c.stdout)
    );
    assert!(all.contains("40 120"), "after window-change: {all:?}");
    assert_eq!(c.status, Some(0));

    // A shell with a PTY: ^D ends it.
    let mut ch = h.channel_open_session().await.unwrap();
    ch.request_pty(true, "xterm", 80, 24, 0, 0, &[])
        .await
        .unwrap();
    ch.request_shell(true).await.unwrap();
    ch.data_bytes(bytes::Bytes::from_static(b"echo shell-$((6*7))\nexit 5\n"))
        .await
        .unwrap();
    let c = collect(&mut ch).await;
    assert!(String::from_utf8_lossy(&c.stdout).contains("shell-42"));
    assert_eq!(c.status, Some(5));
    sim.shutdown().await;
}

#[tokio::test]
async fn ssh_refuses_unregistered_keys() {
    let sim = start().await;
    let registered = client_key();
    let resp = exec_put(
        &sim,
        "demo",
        sim.api_key(),
        "web.1",
        &openssh_pub(&registered),
    )
    .await;
    let creds: Value = resp.json().await.unwrap();
    let user = creds["client_user"].as_str().unwrap().to_owned();
    let expected = PublicKey::from_openssh(sim.proxy_public_key()).unwrap();
    let config = Arc::new(russh::client::Config::default());
    let mut h = russh::client::connect(config, ("127.0.0.1", sim.ssh_port()), Client { expected })
        .await
        .unwrap();
    let other = client_key();
    let auth = h
        .authenticate_publickey(
            user.clone(),
            PrivateKeyWithHashAlg::new(Arc::new(other), None),
        )
        .await
        .unwrap();
    assert!(!auth.success(), "an unregistered key is refused");
    let auth = h
        .authenticate_publickey(
            "someone-else",
            PrivateKeyWithHashAlg::new(Arc::new(registered.clone()), None),
        )
        .await
        .unwrap();
    assert!(
        !auth.success(),
        "the right key with the wrong user is refused"
    );
    let auth = h
        .authenticate_publickey(user, PrivateKeyWithHashAlg::new(Arc::new(registered), None))
        .await
        .unwrap();
    assert!(auth.success());
    sim.shutdown().await;
}

#[tokio::test]
async fn rsa_client_keys_use_rsa_sha2() {
    let sim = start().await;
    // 2048-bit, like the CLI's keys (4096 is slow in debug builds).
    let rsa = russh::keys::ssh_key::private::RsaKeypair::random(&mut rand::rng(), 2048).unwrap();
    let key = PrivateKey::from(rsa);
    let resp = exec_put(&sim, "demo", sim.api_key(), "web.1", &openssh_pub(&key)).await;
    let creds: Value = resp.json().await.unwrap();
    let expected = PublicKey::from_openssh(sim.proxy_public_key()).unwrap();
    let mut h = russh::client::connect(
        Arc::new(russh::client::Config::default()),
        ("127.0.0.1", sim.ssh_port()),
        Client { expected },
    )
    .await
    .unwrap();
    let hash = h.best_supported_rsa_hash().await.unwrap().flatten();
    assert!(hash.is_some(), "server advertises rsa-sha2-*");
    let auth = h
        .authenticate_publickey(
            creds["client_user"].as_str().unwrap(),
            PrivateKeyWithHashAlg::new(Arc::new(key), hash),
        )
        .await
        .unwrap();
    assert!(auth.success());
    sim.shutdown().await;
}

// ---------------------------------------------------------------- faults

#[tokio::test]
async fn fault_create_conflicts_then_success() {
    let sim = start().await;
    sim.set_faults(Faults {
        create_conflicts: 2,
        create_limit_errors: 1,
        ..Faults::default()
    });
    let body = json!({"attach": false, "command": "true"});
    for _ in 0..2 {
        let resp = api(
            &sim,
            reqwest::Method::POST,
            "/apps/demo/dynos",
            Some(body.clone()),
        )
        .await;
        assert_eq!(resp.status(), 409);
        assert_common_headers(&resp);
    }
    let resp = api(
        &sim,
        reqwest::Method::POST,
        "/apps/demo/dynos",
        Some(body.clone()),
    )
    .await;
    assert_eq!(resp.status(), 422);
    let e: Value = resp.json().await.unwrap();
    assert_eq!(e["id"], "cannot_run_above_limit");
    let resp = api(&sim, reqwest::Method::POST, "/apps/demo/dynos", Some(body)).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(sim.faults(), Faults::default());
    sim.shutdown().await;
}

#[tokio::test]
async fn fault_rate_limit_and_server_errors_via_admin_endpoint() {
    let sim = start().await;
    let c = http();
    let admin = format!("{}/__admin/faults", sim.api_url());
    let resp = c
        .post(&admin)
        .json(&json!({"rate_limited": 1, "retry_after_secs": 7, "server_errors": 1, "server_error_status": 500}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = api(&sim, reqwest::Method::GET, "/apps/demo", None).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["ratelimit-remaining"], "0");
    assert_eq!(resp.headers()["retry-after"], "7");
    assert!(resp.headers().contains_key("request-id"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["id"], "rate_limit");
    let resp = api(&sim, reqwest::Method::GET, "/apps/demo", None).await;
    assert_eq!(resp.status(), 500);
    assert_common_headers(&resp);
    assert_eq!(
        api(&sim, reqwest::Method::GET, "/apps/demo", None)
            .await
            .status(),
        200
    );
    let now: Value = c.get(&admin).send().await.unwrap().json().await.unwrap();
    assert_eq!(now["rate_limited"], 0);
    assert_eq!(now["server_errors"], 0);
    let bad = c
        .post(&admin)
        .json(&json!({"no_such_fault": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(c.delete(&admin).send().await.unwrap().status(), 200);
    sim.shutdown().await;
}

#[tokio::test]
async fn rate_limit_pool_exhausts() {
    let sim = start_with(SimConfig {
        ssh_port: Some(0),
        rate_limit_pool: 3,
        rate_limit_refill_per_minute: 0,
        ..SimConfig::demo()
    })
    .await;
    for _ in 0..3 {
        assert_eq!(
            api(&sim, reqwest::Method::GET, "/account", None)
                .await
                .status(),
            200
        );
    }
    let resp = api(&sim, reqwest::Method::GET, "/account", None).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["ratelimit-remaining"], "0");
    // rate-limits itself does not count.
    assert_eq!(
        api(&sim, reqwest::Method::GET, "/account/rate-limits", None)
            .await
            .status(),
        200
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn fault_slow_ack() {
    let sim = start().await;
    sim.set_faults(Faults {
        ack_delay_ms: 600,
        ..Faults::default()
    });
    let dyno = create(
        &sim,
        json!({"attach": true, "command": "echo ok", "force_no_tty": true}),
    )
    .await;
    let started = Instant::now();
    let mut tls = rendezvous_connect(&sim, dyno["attach_url"].as_str().unwrap(), "\r\n").await;
    read_ack(&mut tls).await;
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "ack after {:?}",
        started.elapsed()
    );
    let (out, _) = read_all(&mut tls).await;
    assert_eq!(out, b"ok\n");
    sim.shutdown().await;
}

#[tokio::test]
async fn fault_drop_rendezvous_after_bytes() {
    let sim = start().await;
    sim.set_faults(Faults {
        drop_rendezvous_after: Some(1000),
        ..Faults::default()
    });
    let dyno = create(
        &sim,
        json!({"attach": true, "command": "echo pid=$$; head -c 100000 /dev/zero; sleep 1000", "force_no_tty": true}),
    )
    .await;
    let mut tls = rendezvous_connect(&sim, dyno["attach_url"].as_str().unwrap(), "\r\n").await;
    read_ack(&mut tls).await;
    let (out, clean) = read_all(&mut tls).await;
    assert_eq!(out.len(), 1000, "exactly N bytes before the drop");
    assert!(!clean, "dropped without close_notify");
    let pid: i32 = String::from_utf8_lossy(&out[..out.iter().position(|b| *b == b'\n').unwrap()])
        .strip_prefix("pid=")
        .unwrap()
        .parse()
        .unwrap();
    assert_pid_gone(pid).await;
    sim.shutdown().await;
}

#[tokio::test]
async fn fault_drop_ssh_after_bytes_and_refuse_keys() {
    let sim = start().await;
    sim.set_faults(Faults {
        refuse_exec_keys: 1,
        drop_ssh_after: Some(1000),
        ..Faults::default()
    });
    let key = client_key();
    let resp = exec_put(&sim, "demo", sim.api_key(), "web.1", &openssh_pub(&key)).await;
    assert_eq!(resp.status(), 403);
    let h = ssh_connect(&sim, &key).await;
    let mut ch = h.channel_open_session().await.unwrap();
    ch.exec(true, "head -c 100000 /dev/zero; sleep 1000")
        .await
        .unwrap();
    let mut got = 0usize;
    let mut status = None;
    while let Some(msg) = tokio::time::timeout(T, ch.wait()).await.expect("in time") {
        match msg {
            ChannelMsg::Data { data } => got += data.len(),
            ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
            _ => {}
        }
    }
    assert!(got <= 1000, "at most N bytes: {got}");
    assert_eq!(
        status, None,
        "the connection dropped before any exit status"
    );
    // The exec process is killed with the connection: only web.1's group is left.
    let deadline = Instant::now() + Duration::from_secs(10);
    while sim.live_process_groups().len() > 1 {
        assert!(Instant::now() < deadline, "exec process survived the drop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn shutdown_and_drop_kill_every_process() {
    let sim = start().await;
    let dyno = create(&sim, json!({"attach": false, "command": "sleep 1000"})).await;
    assert!(dyno["name"].is_string());
    let groups = sim.live_process_groups();
    assert_eq!(groups.len(), 2);
    sim.shutdown().await;
    for pid in groups {
        assert_pid_gone(pid).await;
    }
    let sim = start().await;
    let groups = sim.live_process_groups();
    drop(sim);
    for pid in groups {
        assert_pid_gone(pid).await;
    }
}

/// `GET /apps/{app}`: `generation` is an object under `version=3` and a string under
/// `version=3.sdk`, as on Heroku (heroku-protocols.md §1.5); other fields keep their shape.
#[tokio::test]
async fn app_generation_shape_follows_the_accept_header() {
    let sim = start().await;
    let get = |accept: &'static str| {
        let url = format!("{}/apps/demo", sim.api_url());
        let key = sim.api_key().to_owned();
        async move {
            let resp = http()
                .get(url)
                .bearer_auth(key)
                .header("Accept", accept)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            resp.json::<Value>().await.unwrap()
        }
    };
    let v3 = get("application/vnd.heroku+json; version=3").await;
    assert_eq!(v3["generation"]["name"], "cedar", "{v3}");
    assert!(v3["generation"]["id"].is_string(), "{v3}");
    let sdk = get("application/vnd.heroku+json; version=3.sdk").await;
    assert_eq!(sdk["generation"], "cedar", "{sdk}");
    assert_eq!(v3["stack"], sdk["stack"]);
    assert!(v3["stack"]["name"].is_string());
    sim.shutdown().await;
}

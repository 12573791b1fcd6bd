//! The psexec backend end to end against the Heroku emulator (in-process `herokusim`: Platform
//! API, HTTPS exec-manager with a test CA, russh exec proxy). Each test starts its own
//! emulator on free ports.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

use std::time::Duration;

use backend::testing::{env, start};
use backend::{Input, Mode, SessionEnv, TermSize};
use backend_psexec::{PsexecBackend, PsexecConfig};
use bytes::Bytes;
use heroku_api::{ApiKey, ClientConfig, HerokuClient};
use herokusim::{AppConfig, DynoConfig, RunningSim, Sim, SimConfig};

const PS_EXEC: &[&str] = &["/app/bin/ps-exec.sh"];

fn formation(names: &[(&str, &str)]) -> Vec<DynoConfig> {
    names
        .iter()
        .map(|(name, command)| DynoConfig {
            name: (*name).to_owned(),
            command: Some((*command).to_owned()),
            ..DynoConfig::default()
        })
        .collect()
}

/// The demo app plus `quiet` (exec off, web.1 + web.2).
async fn sim() -> RunningSim {
    sim_with(false).await
}

/// The demo app plus `quiet` (exec off, web.1 + web.2) and, with `flaky`, an app whose web.1
/// crashes at boot (so process counts change on their own: not for leak checks).
async fn sim_with(flaky: bool) -> RunningSim {
    let mut config = SimConfig {
        ssh_port: Some(0),
        ..SimConfig::demo()
    };
    config.apps.push(AppConfig {
        name: "quiet".into(),
        exec_enabled: false,
        formation: formation(&[("web.1", "sleep infinity"), ("web.2", "sleep infinity")]),
        ..AppConfig::default()
    });
    if flaky {
        config.apps.push(AppConfig {
            name: "flaky".into(),
            exec_enabled: true,
            formation: formation(&[("web.1", "exit 1")]),
            ..AppConfig::default()
        });
    }
    Sim::start(config).await.unwrap()
}

fn api_config(sim: &RunningSim) -> ClientConfig {
    ClientConfig {
        api_url: sim.api_url().parse().unwrap(),
        exec_url: sim.exec_url().parse().unwrap(),
        extra_roots_pem: Some(sim.ca_pem().as_bytes().to_vec()),
        request_timeout: Duration::from_secs(10),
        max_attempts: 1,
        ..ClientConfig::default()
    }
}

fn backend(sim: &RunningSim) -> PsexecBackend {
    PsexecBackend::new(PsexecConfig {
        api: api_config(sim),
        ssh_port: sim.ssh_port(),
        poll_interval: Duration::from_millis(100),
        enable_wait: Duration::from_secs(20),
        ..PsexecConfig::default()
    })
}

fn session_env(sim: &RunningSim) -> SessionEnv {
    env(&[("HEROKU_API_KEY", sim.api_key())])
}

fn client(sim: &RunningSim) -> HerokuClient {
    HerokuClient::new(api_config(sim), ApiKey::new(sim.api_key())).unwrap()
}

/// Waits (bounded) until the emulator runs exactly `n` processes: a session leaves none.
async fn wait_processes(sim: &RunningSim, n: usize) {
    if let Err(left) = sim.wait_process_groups(n, Duration::from_secs(10)).await {
        panic!("processes left behind: {left:?}");
    }
}

#[tokio::test]
async fn default_mode_runs_the_input_and_passes_the_exit_code() {
    let sim = sim().await;
    let baseline = sim.live_process_groups().len();
    let b = backend(&sim);
    let s = start(
        &b,
        PS_EXEC,
        &["--app", "demo"],
        session_env(&sim),
        Mode::Exec,
    );
    s.send(Input::Data(Bytes::from_static(
        b"echo hi; echo err >&2; exit 4",
    )))
    .await;
    s.send(Input::Eof).await;
    let report = s.report.clone();
    let (status, out, err) = s.finish().await;
    assert_eq!(
        status.code,
        4,
        "{status:?} stderr={}",
        String::from_utf8_lossy(&err)
    );
    assert_eq!(out, b"hi\n");
    assert_eq!(err, b"err\n");
    let target = report.target();
    assert_eq!(
        (target.app.as_deref(), target.dyno.as_deref()),
        (Some("demo"), Some("web.1"))
    );

    // The example: the input is a script for `--pipe bash`.
    let s = start(
        &b,
        PS_EXEC,
        &["--app", "demo", "--pipe", "bash"],
        session_env(&sim),
        Mode::Exec,
    );
    s.send(Input::Data(Bytes::from_static(b"echo hi; exit 4")))
        .await;
    s.send(Input::Eof).await;
    let (status, out, _) = s.finish().await;
    assert_eq!(
        (status.code, out.as_slice()),
        (4, &b"hi\n"[..]),
        "{status:?}"
    );

    // An exit-signal is 128+n.
    let s = start(&b, PS_EXEC, &["--app=demo"], session_env(&sim), Mode::Exec);
    s.send(Input::Data(Bytes::from_static(b"kill -TERM $$")))
        .await;
    s.send(Input::Eof).await;
    let (status, _, _) = s.finish().await;
    assert_eq!(status.code, 143, "{status:?}");
    wait_processes(&sim, baseline).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipe_streams_binary_input_byte_exact() {
    let sim = sim().await;
    let baseline = sim.live_process_groups().len();
    let data: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let s = start(
        &backend(&sim),
        PS_EXEC,
        &["--app", "demo", "--dyno", "web.1", "--pipe", "cat"],
        session_env(&sim),
        Mode::Exec,
    );
    let started = std::time::Instant::now();
    for chunk in data.chunks(64 * 1024) {
        s.send(Input::Data(Bytes::copy_from_slice(chunk))).await;
    }
    s.send(Input::Eof).await;
    let (status, out, err) = s.finish().await;
    eprintln!("1 MiB through --pipe cat in {:?}", started.elapsed());
    assert_eq!(
        status.code,
        0,
        "{status:?} stderr={}",
        String::from_utf8_lossy(&err)
    );
    assert_eq!(out.len(), data.len());
    assert!(out == data, "output differs from input");
    wait_processes(&sim, baseline).await;
    sim.shutdown().await;
}

#[tokio::test]
async fn interactive_gets_a_terminal_that_follows_resizes() {
    let sim = sim().await;
    let size = |cols, rows| TermSize {
        rows,
        cols,
        xpixel: 0,
        ypixel: 0,
    };
    let mut s = start(
        &backend(&sim),
        PS_EXEC,
        &["--interactive", "--app", "demo"],
        session_env(&sim),
        Mode::Terminal {
            size: size(100, 30),
        },
    );
    s.send(Input::Data(Bytes::from_static(b"stty size\n")))
        .await;
    s.wait_stdout("30 100", Duration::from_secs(15)).await;
    s.send(Input::Resize(size(120, 40))).await;
    s.send(Input::Data(Bytes::from_static(b"stty size\n")))
        .await;
    s.wait_stdout("40 120", Duration::from_secs(15)).await;
    s.send(Input::Data(Bytes::from_static(b"exit 3\n"))).await;
    let (status, _, _) = s.finish().await;
    assert_eq!(status.code, 3, "{status:?}");
    sim.shutdown().await;
}

#[tokio::test]
async fn status_and_help() {
    let sim = sim().await;
    let b = backend(&sim);
    let s = start(
        &b,
        PS_EXEC,
        &["--app", "demo", "--status"],
        session_env(&sim),
        Mode::Exec,
    );
    let (status, out, _) = s.finish().await;
    let text = String::from_utf8(out).unwrap();
    assert_eq!(status.code, 0, "{status:?}");
    assert!(
        text.contains("Dyno Status") && text.contains("Proxy Status"),
        "{text}"
    );
    let row = text
        .lines()
        .find(|l| l.contains("web.1"))
        .unwrap_or_default();
    assert!(row.contains("up") && row.contains("running"), "{text}");

    // `heroku ps:exec` form, and an app without exec.
    let s = start(
        &b,
        &["heroku", "ps:exec"],
        &["--app", "quiet", "--status"],
        session_env(&sim),
        Mode::Exec,
    );
    let (status, out, _) = s.finish().await;
    assert_eq!(status.code, 0, "{status:?}");
    assert_eq!(
        String::from_utf8(out).unwrap(),
        backend_psexec::status::NOT_RUNNING
    );

    let (status, out, _) = start(&b, PS_EXEC, &["--help"], SessionEnv::default(), Mode::Exec)
        .finish()
        .await;
    assert_eq!(status.code, 0);
    assert!(String::from_utf8(out).unwrap().contains("--pipe"));
    sim.shutdown().await;
}

#[tokio::test]
async fn feature_off_is_refused_without_restarting_anything() {
    let sim = sim().await;
    let api = client(&sim);
    let before: Vec<String> = api
        .dynos("quiet")
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    let s = start(
        &backend(&sim),
        PS_EXEC,
        &["--app", "quiet"],
        session_env(&sim),
        Mode::Exec,
    );
    s.send(Input::Data(Bytes::from_static(b"echo never"))).await;
    s.send(Input::Eof).await;
    let (status, out, _) = s.finish().await;
    assert_eq!(status.code, 1, "{status:?}");
    for needle in [
        "disabled",
        "restarts",
        "--enable-exec",
        "PSEXEC_AUTO_ENABLE",
    ] {
        assert!(status.message.contains(needle), "{needle}: {status:?}");
    }
    assert!(out.is_empty());
    let after: Vec<String> = api
        .dynos("quiet")
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(before, after, "a dyno was restarted");
    assert!(
        !api.feature("quiet", "runtime-heroku-exec")
            .await
            .unwrap()
            .enabled
    );
    sim.shutdown().await;
}

/// A connection can forbid restarts (`PSEXEC_AUTO_ENABLE=false`: `--enable-exec` is refused),
/// and a client's own `PSEXEC_AUTO_ENABLE=true` grants nothing.
#[tokio::test]
async fn a_connection_can_forbid_restarts_and_a_client_cannot_grant_them() {
    let sim = sim().await;
    let api = client(&sim);
    let before = api.dynos("quiet").await.unwrap();
    let mut client_says_true = session_env(&sim);
    client_says_true.set("PSEXEC_AUTO_ENABLE", "true");
    let mut connection_forbids = session_env(&sim);
    connection_forbids.set_from_connection("PSEXEC_AUTO_ENABLE", "false");
    // Issue 13: a connection that says nothing does not let users restart dynos.
    let connection_silent = session_env(&sim);
    let mut client_says_ask = session_env(&sim);
    client_says_ask.set_from_client("PSEXEC_AUTO_ENABLE", "ask");
    let cases = [
        (
            &["--app", "quiet", "--enable-exec"][..],
            connection_forbids,
            "is not allowed on this connection",
        ),
        (
            &["--app", "quiet", "--enable-exec"][..],
            connection_silent,
            "PSEXEC_AUTO_ENABLE=ask on the connection",
        ),
        (
            &["--app", "quiet", "--enable-exec"][..],
            client_says_ask,
            "is not allowed on this connection",
        ),
        (&["--app", "quiet"][..], client_says_true, "is disabled"),
    ];
    for (args, env, needle) in cases {
        let s = start(&backend(&sim), PS_EXEC, args, env, Mode::Exec);
        s.send(Input::Data(Bytes::from_static(b"echo never"))).await;
        s.send(Input::Eof).await;
        let (status, out, _) = s.finish().await;
        assert_eq!(status.code, 1, "{args:?}: {status:?}");
        assert!(status.message.contains(needle), "{args:?}: {status:?}");
        assert!(out.is_empty());
    }
    let after = api.dynos("quiet").await.unwrap();
    let ids = |d: &[heroku_api::Dyno]| d.iter().map(|d| d.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&before), ids(&after), "a dyno was restarted");
    assert!(
        !api.feature("quiet", "runtime-heroku-exec")
            .await
            .unwrap()
            .enabled
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn enable_exec_opt_in_restarts_only_the_named_dyno() {
    let sim = sim().await;
    let api = client(&sim);
    let id = |dynos: &[heroku_api::Dyno], name: &str| {
        dynos
            .iter()
            .find(|d| d.name == name)
            .map(|d| d.id.clone())
            .unwrap()
    };
    let before = api.dynos("quiet").await.unwrap();
    let mut e = session_env(&sim);
    e.set_from_connection("PSEXEC_AUTO_ENABLE", "ask");
    let s = start(
        &backend(&sim),
        PS_EXEC,
        &["--app", "quiet", "--dyno", "web.1", "--enable-exec"],
        e,
        Mode::Exec,
    );
    s.send(Input::Data(Bytes::from_static(b"echo enabled-ok")))
        .await;
    s.send(Input::Eof).await;
    let (status, out, err) = s.finish().await;
    let err = String::from_utf8_lossy(&err);
    assert_eq!(status.code, 0, "{status:?} stderr={err}");
    assert_eq!(out, b"enabled-ok\n");
    for needle in [
        "enabling Heroku Exec",
        "restarting dyno web.1",
        "web.1 is up",
    ] {
        assert!(err.contains(needle), "{needle}: {err}");
    }
    let after = api.dynos("quiet").await.unwrap();
    assert_ne!(
        id(&before, "web.1"),
        id(&after, "web.1"),
        "web.1 was not restarted"
    );
    assert_eq!(
        id(&before, "web.2"),
        id(&after, "web.2"),
        "web.2 was restarted too"
    );
    assert!(
        api.feature("quiet", "runtime-heroku-exec")
            .await
            .unwrap()
            .enabled
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn session_env_opt_in_and_the_not_restarted_case() {
    let sim = sim().await;
    let api = client(&sim);
    // Enabled by someone else, dynos not restarted: no exec agent yet.
    api.set_feature("quiet", "runtime-heroku-exec", true)
        .await
        .unwrap();
    let s = start(
        &backend(&sim),
        PS_EXEC,
        &["--app", "quiet"],
        session_env(&sim),
        Mode::Exec,
    );
    s.send(Input::Data(Bytes::from_static(b"true"))).await;
    s.send(Input::Eof).await;
    let (status, _, _) = s.finish().await;
    assert_eq!(status.code, 1, "{status:?}");
    assert!(status.message.contains("not restarted since"), "{status:?}");

    // With PSEXEC_AUTO_ENABLE=true the named dyno is restarted and the session runs.
    let mut e = session_env(&sim);
    e.set_from_connection("PSEXEC_AUTO_ENABLE", "true");
    let s = start(
        &backend(&sim),
        PS_EXEC,
        &["--app", "quiet", "--dyno", "web.2"],
        e,
        Mode::Exec,
    );
    s.send(Input::Data(Bytes::from_static(b"echo on-web2")))
        .await;
    s.send(Input::Eof).await;
    let (status, out, err) = s.finish().await;
    assert_eq!(
        status.code,
        0,
        "{status:?} stderr={}",
        String::from_utf8_lossy(&err)
    );
    assert_eq!(out, b"on-web2\n");
    sim.shutdown().await;
}

#[tokio::test]
async fn each_could_not_connect_cause_has_its_own_message() {
    let sim = sim_with(true).await;
    let b = backend(&sim);
    let run = |args: &'static [&'static str]| {
        let s = start(&b, PS_EXEC, args, session_env(&sim), Mode::Exec);
        async move {
            s.send(Input::Data(Bytes::from_static(b"true"))).await;
            s.send(Input::Eof).await;
            s.finish().await.0
        }
    };
    let status = run(&["--app", "demo", "--dyno", "run.1"]).await;
    assert!(
        status.code == 1 && status.message.contains("one-off"),
        "{status:?}"
    );

    // flaky's web.1 exits at boot: wait (bounded) for the emulator to mark it crashed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !sim.dyno_states("flaky").iter().any(|(_, s)| s == "crashed") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            sim.dyno_states("flaky")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = run(&["--app", "flaky"]).await;
    assert!(
        status.code == 1 && status.message.contains("crashed, not up"),
        "{status:?}"
    );

    let status = run(&["--app", "demo", "--dyno", "web.9"]).await;
    assert!(
        status.code == 1 && status.message.contains("has no dyno web.9"),
        "{status:?}"
    );

    sim.set_faults(herokusim::Faults {
        refuse_exec_keys: 1,
        ..Default::default()
    });
    let status = run(&["--app", "demo"]).await;
    assert!(
        status.code == 1 && status.message.contains("refused the credentials exchange"),
        "{status:?}"
    );

    let status = run(&["--app", "Not_An_App"]).await;
    assert!(status.code == 2, "{status:?}");

    let mut e = session_env(&sim);
    e.set("HEROKU_API_KEY", "wrong-key");
    let (status, _, _) = start(&b, PS_EXEC, &["--app", "demo", "--status"], e, Mode::Exec)
        .finish()
        .await;
    assert!(
        status.code == 1
            && status
                .message
                .to_lowercase()
                .contains("invalid credentials"),
        "{status:?}"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn a_proxy_with_another_host_key_is_refused() {
    let sim = sim().await;
    // A second emulator plays an impostor proxy: same protocol, different host key.
    let impostor = Sim::start(SimConfig {
        ssh_port: Some(0),
        ..SimConfig::demo()
    })
    .await
    .unwrap();
    let b = PsexecBackend::new(PsexecConfig {
        api: api_config(&sim),
        ssh_port: impostor.ssh_port(),
        ..PsexecConfig::default()
    });
    let s = start(
        &b,
        PS_EXEC,
        &["--app", "demo"],
        session_env(&sim),
        Mode::Exec,
    );
    s.send(Input::Data(Bytes::from_static(b"echo never"))).await;
    s.send(Input::Eof).await;
    let (status, out, _) = s.finish().await;
    assert_eq!(status.code, 254, "{status:?}");
    let fp = |line: &str| {
        backend_ssh::fingerprint(&backend_ssh::hostkey::parse_public_key_line(line).unwrap())
    };
    assert!(status.message.contains("mismatch"), "{status:?}");
    assert!(
        status.message.contains(&fp(sim.proxy_public_key())),
        "{status:?}"
    );
    assert!(
        status.message.contains(&fp(impostor.proxy_public_key())),
        "{status:?}"
    );
    assert!(out.is_empty());
    impostor.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn cancellation_ends_the_dyno_process() {
    let sim = sim().await;
    let baseline = sim.live_process_groups().len();
    let mut s = start(
        &backend(&sim),
        PS_EXEC,
        &["--app", "demo", "--pipe", "echo started; sleep 600"],
        session_env(&sim),
        Mode::Exec,
    );
    s.wait_stdout("started", Duration::from_secs(20)).await;
    assert!(sim.live_process_groups().len() > baseline);
    s.cancel.cancel();
    let (status, _, _) = s.finish().await;
    assert_eq!(status.code, 254);
    wait_processes(&sim, baseline).await;
    sim.shutdown().await;
}

/// Defect 3 (issue 14): cancelling a session mid-channel must stop the remote command the
/// SSH way (`TERM`, then `KILL` after the grace, then close the channel), not by dropping the
/// connection, which the proxy sees as a hang-up. The command records the TERM it gets.
#[tokio::test]
async fn cancel_mid_channel_sends_term_before_closing() {
    let sim = sim().await;
    let baseline = sim.live_process_groups().len();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let flag = std::env::temp_dir().join(format!("psexec-term-{}-{nanos}", std::process::id()));
    let script = format!(
        "trap 'echo got-term > {}; exit 0' TERM; echo started; sleep 600 & wait",
        flag.display()
    );
    let mut s = start(
        &backend(&sim),
        PS_EXEC,
        &["--app", "demo", "--pipe", &script],
        session_env(&sim),
        Mode::Exec,
    );
    s.wait_stdout("started", Duration::from_secs(20)).await;
    s.cancel.cancel();
    let (status, _, _) = s.finish().await;
    assert_eq!(status.code, 254, "{status:?}");
    let got = std::fs::read_to_string(&flag).unwrap_or_default();
    let _ = std::fs::remove_file(&flag);
    assert_eq!(got, "got-term\n", "the remote command never got TERM");
    wait_processes(&sim, baseline).await;
    sim.shutdown().await;
}

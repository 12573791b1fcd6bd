//! `dynoagent dev` end to end: the stack starts on loopback, a client session runs on the
//! `local` demo connection through the gateway and the agent, the audit store records it, and
//! the stack stops cleanly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use devstack::{DevOptions, DevStack};

#[tokio::test]
async fn dev_stack_serves_the_local_demo_connection_and_audits_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let stack = DevStack::start(DevOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        audit_db: Some(db.clone()),
        client_command: "/opt/dynoagent ctl".into(),
        ..DevOptions::default()
    })
    .await
    .unwrap();
    // The hints run the binary's own client (`dynoagent ctl`), so they work at once.
    assert!(
        stack.instructions().contains("/opt/dynoagent ctl exec")
            && stack.instructions().contains(" local -i ")
            && !stack.instructions().contains("cargo run"),
        "{}",
        stack.instructions()
    );
    let client = dynoctl::ClientConfig::new(
        format!("http://{}", stack.gateway_addr()),
        stack.client_token(),
    );
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let outcome = dynoctl::exec(
        &client,
        dynoctl::ExecRequest {
            connection: "local".into(),
            input: bytes::Bytes::from_static(b"echo dev-ok; echo dev-err >&2; exit 4\n"),
            ..Default::default()
        },
        &mut out,
        &mut err,
    )
    .await
    .unwrap();
    assert_eq!(out, b"dev-ok\n");
    assert_eq!(err, b"dev-err\n");
    assert_eq!(outcome.exit_code, 4);
    stack.shutdown().await;

    let store = dynogw::audit::AuditStore::open(&db).unwrap();
    let sessions = store.list_sessions().unwrap();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].exit_code, Some(4));
}

/// The Heroku demo connections reach the emulator through the real run and psexec backends,
/// with the API key the stack holds as a connection secret, and leave no one-off dyno behind.
#[tokio::test]
async fn dev_stack_serves_the_heroku_demo_connections() {
    let dir = tempfile::tempdir().unwrap();
    let stack = DevStack::start(DevOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        audit_db: Some(dir.path().join("audit.db")),
        ..DevOptions::default()
    })
    .await
    .unwrap();
    for conn in ["heroku-run", "psexec"] {
        assert!(
            stack.instructions().contains(&format!(" {conn} ")),
            "{}",
            stack.instructions()
        );
    }
    let client = dynoctl::ClientConfig::new(
        format!("http://{}", stack.gateway_addr()),
        stack.client_token(),
    );
    let exec = |connection: &str, input: &'static [u8], args: &[&str]| {
        let request = dynoctl::ExecRequest {
            connection: connection.into(),
            input: bytes::Bytes::from_static(input),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            ..Default::default()
        };
        let client = client.clone();
        async move {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let outcome = dynoctl::exec(&client, request, &mut out, &mut err)
                .await
                .unwrap();
            (
                outcome.exit_code,
                String::from_utf8_lossy(&out).into_owned(),
                format!("{}{}", String::from_utf8_lossy(&err), outcome.message),
            )
        }
    };

    let (code, out, err) = exec(
        "heroku-run",
        b"",
        &["--app", "demo", "echo one-off $DYNO; exit 7"],
    )
    .await;
    assert_eq!(code, 7, "stdout {out:?} stderr {err:?}");
    assert!(
        out.contains("one-off run."),
        "stdout {out:?} stderr {err:?}"
    );

    let (code, out, err) = exec(
        "psexec",
        b"echo on $DYNO; exit 5",
        &["--app", "demo", "--dyno", "web.1"],
    )
    .await;
    assert_eq!(code, 5, "stdout {out:?} stderr {err:?}");
    assert!(out.contains("on web.1"), "stdout {out:?} stderr {err:?}");

    // Issue 6's "done when": --pipe bash streams the input to bash; --status lists web.1.
    let (code, out, err) = exec(
        "psexec",
        b"echo hi; exit 4",
        &["--app", "demo", "--pipe", "bash"],
    )
    .await;
    assert_eq!((code, out.as_str()), (4, "hi\n"), "stderr {err:?}");
    let (code, out, err) = exec("psexec", b"", &["--app", "demo", "--status"]).await;
    assert_eq!(code, 0, "stdout {out:?} stderr {err:?}");
    assert!(out.contains("web.1"), "stdout {out:?} stderr {err:?}");

    // Issue 15's "done when", on the Fir demo app (HTTPS attach + SSH with the account key
    // the stack registered): a one-off through heroku-run, and psexec through run:inside.
    let (code, out, err) = exec(
        "heroku-run",
        b"echo hi; exit 3",
        &["--app", "firdemo", "bash"],
    )
    .await;
    assert_eq!((code, out.as_str()), (3, "hi\n"), "stderr {err:?}");
    let (code, out, err) = exec("psexec", b"uname -a", &["--app", "firdemo"]).await;
    let uname = std::process::Command::new("uname")
        .arg("-a")
        .output()
        .unwrap();
    assert_eq!(code, 0, "stdout {out:?} stderr {err:?}");
    assert_eq!(
        out,
        String::from_utf8_lossy(&uname.stdout),
        "stderr {err:?}"
    );
    let fir: Vec<_> = stack
        .sim()
        .dyno_states("firdemo")
        .into_iter()
        .filter(|(name, _)| name.starts_with("run."))
        .collect();
    assert!(
        fir.is_empty(),
        "a Fir one-off dyno was left behind: {fir:?}"
    );

    let dynos = stack.sim().dyno_states("demo");
    assert_eq!(
        dynos,
        vec![("web.1".to_owned(), "up".to_owned())],
        "a one-off dyno was left behind"
    );
    stack.shutdown().await;
}

/// Issue 13, finding 8: the development stack is private to its user. It refuses a
/// non-loopback listen address unless told otherwise, its client token is random per run and
/// kept in a 0600 file (never printed), and the audit database is 0600 in a 0700 directory.
#[tokio::test]
async fn dev_stack_is_private_to_its_user() {
    use std::os::unix::fs::PermissionsExt as _;
    let err = DevStack::start(DevOptions {
        listen: "0.0.0.0:0".parse().unwrap(),
        ..DevOptions::default()
    })
    .await
    .unwrap_err();
    assert!(err.to_string().contains("--insecure-listen"), "{err}");
    assert_ne!(
        DevOptions::default().client_token,
        DevOptions::default().client_token,
        "the token is random per run"
    );

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state").join("audit.db");
    let stack = DevStack::start(DevOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        audit_db: Some(db.clone()),
        ..DevOptions::default()
    })
    .await
    .unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        stack.token_path(),
        dir.path().join("state").join("dev-token")
    );
    assert_eq!(
        std::fs::read_to_string(stack.token_path()).unwrap(),
        stack.client_token()
    );
    assert_eq!(mode(stack.token_path()), 0o600);
    assert_eq!(mode(&db), 0o600);
    assert_eq!(mode(db.parent().unwrap()), 0o700);
    assert!(
        !stack.instructions().contains(stack.client_token()),
        "the token is not printed"
    );
    assert!(stack.client_token() != dynogw::DEV_CLIENT_TOKEN);
    // The old fixed token no longer opens sessions.
    let client = dynoctl::ClientConfig::new(
        format!("http://{}", stack.gateway_addr()),
        dynogw::DEV_CLIENT_TOKEN,
    );
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let refused = dynoctl::exec(
        &client,
        dynoctl::ExecRequest {
            connection: "local".into(),
            input: bytes::Bytes::from_static(b"echo should-not-run\n"),
            ..Default::default()
        },
        &mut out,
        &mut err,
    )
    .await;
    assert!(refused.is_err(), "{:?}", refused.ok());
    assert!(out.is_empty());
    let token_path = stack.token_path().to_owned();
    stack.shutdown().await;
    assert!(!token_path.exists(), "the token file is removed at the end");
}

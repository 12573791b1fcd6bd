//! Issue 16's "done when" on the development stack: `dynoagent ctl connect tcp-demo` (the
//! binary's own client) listens on 127.0.0.1 and a plain HTTP request through it reaches the
//! small service `dynoagent dev` starts, through the gateway and the agent; `tcp-dyno` reaches
//! the HTTP server in the emulated demo app's `web.1` the same way, through Heroku Exec.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tcp_demo_connection_relays_an_http_request() {
    let dir = tempfile::tempdir().unwrap();
    let stack = devstack::DevStack::start(devstack::DevOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        audit_db: Some(dir.path().join("audit.db")),
        ..devstack::DevOptions::default()
    })
    .await
    .unwrap();
    assert!(
        stack.instructions().contains(" tcp-demo --port 8999"),
        "{}",
        stack.instructions()
    );
    for answer in fetch_through(&stack, "tcp-demo").await {
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(answer.ends_with(devstack::TCP_DEMO_BODY), "{answer}");
    }

    // `tcp-dyno`: the same through Heroku Exec, to web.1's $PORT inside the emulated dyno,
    // where `python3 -m http.server` answers (a test peer, as in tests/tests/tcp.rs).
    assert!(
        std::process::Command::new("python3")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "python3 is missing: install it with: sudo apt-get install -y python3"
    );
    assert!(
        stack.instructions().contains(" tcp-dyno --port 8998"),
        "{}",
        stack.instructions()
    );
    for answer in fetch_through(&stack, "tcp-dyno").await {
        assert!(answer.starts_with("HTTP/1.0 200 OK"), "{answer}");
    }
    stack.shutdown().await;
}

/// Runs `dynoagent ctl connect CONNECTION --port 0`, sends two HTTP requests through the port
/// it prints, then stops it with SIGINT (it must exit 0). Returns both answers.
async fn fetch_through(stack: &devstack::DevStack, connection: &str) -> Vec<String> {
    let mut ctl = tokio::process::Command::new(env!("CARGO_BIN_EXE_dynoagent"))
        .args(["ctl", "connect", connection, "--port", "0"])
        .env("DYNOCTL_GATEWAY", stack.gateway_addr().to_string())
        .env("DYNOCTL_TOKEN", stack.client_token())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(ctl.stdout.take().unwrap()).lines();
    let mut port = None;
    while port.is_none() {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("the client printed its address in time")
            .unwrap()
            .expect("the client ended before listening");
        port = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("port="))
            .and_then(|p| p.parse::<u16>().ok());
    }
    let mut answers = Vec::new();
    for _ in 0..2 {
        let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", port.unwrap()))
            .await
            .unwrap();
        sock.write_all(b"GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        tokio::time::timeout(WAIT, sock.read_to_string(&mut answer))
            .await
            .expect("the answer and the close arrived in time")
            .unwrap();
        answers.push(answer);
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(ctl.id().unwrap()).unwrap()),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = tokio::time::timeout(WAIT, ctl.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{connection}: {status:?}");
    answers
}

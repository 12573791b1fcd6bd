//! herokusim's HTTPS attach path (heroku-protocols.md §3.9, §3.10, §8.5) driven by the real
//! OpenSSH client, as the Heroku CLI drives it: a small bridge in the test does the TLS
//! connection (verified against the sim's test CA), the `GET /attach/{secret}` + `Upgrade: tcp`
//! exchange, and splices the upgraded stream to a one-shot 127.0.0.1 listener that `/usr/bin/ssh`
//! connects to with a key registered through `POST /account/keys`.
//!
//! Covered: Fir and Shield one-offs (stdout, stderr as extended data, exit status, the dyno
//! gone afterwards), 1 MiB of binary stdin, a PTY with `-tt` (its size from a local terminal,
//! and a resize), bytes pipelined after the upgrade request, `run:inside` (its 409/422 answers,
//! and a restart of its dyno ending the session), `time_to_live`, a client leaving mid-session
//! and one staying after it (disconnected by the sim), sftp and `ssh -W` refused,
//! secret reuse and expiry, injected 404s on dyno polls, and the attach faults (refused upgrade
//! with the connection kept or closed, dropped upgrade, omitted `exit-status`, `exec` refused or
//! allowed), plus an unregistered key.
//!
//! Without OpenSSH the tests fail with an install hint; they never pass silently.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herokusim::{AppConfig, DynoConfig, Faults, Generation, RunningSim, Sim, SimConfig, SpaceKind};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;

mod common;

use common::{T, V3, request};

const SSH: &str = "/usr/bin/ssh";
const SSH_KEYGEN: &str = "/usr/bin/ssh-keygen";
const SSH_HINT: &str = "the OpenSSH client (/usr/bin/ssh, /usr/bin/ssh-keygen) is required for \
this test and was not found. Install it with:\n  sudo apt-get install -y openssh-client\n\
(scripts/test does).";
/// Bound on one ssh run and on each wait for the sim's side of a session to end.
const SSH_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response head the bridge accepts.
const MAX_HEAD: usize = 16 * 1024;

fn require_ssh() {
    for tool in [SSH, SSH_KEYGEN] {
        assert!(Path::new(tool).is_file(), "{tool} is missing: {SSH_HINT}");
    }
}

/// Apps `firapp` (Fir, Private Space, config var `FIR_VAR`), `shieldapp` (Cedar in a Shield
/// space) and `demo` (Cedar, Common Runtime). Formation dynos have no command, so every process
/// the sim runs belongs to an attach session: none may be left after one.
async fn start() -> RunningSim {
    Sim::start(config()).await.expect("sim starts")
}

/// The configuration [`start`] uses.
fn config() -> SimConfig {
    require_ssh();
    let web = || DynoConfig {
        name: "web.1".to_owned(),
        ..DynoConfig::default()
    };
    let mut config = SimConfig {
        ssh_port: Some(0),
        ..SimConfig::default()
    };
    config.apps = vec![
        AppConfig {
            name: "firapp".to_owned(),
            generation: Generation::Fir,
            space: Some(SpaceKind::Private),
            config_vars: [("FIR_VAR".to_owned(), "from-config-vars".to_owned())].into(),
            formation: vec![web()],
            ..AppConfig::default()
        },
        AppConfig {
            name: "shieldapp".to_owned(),
            space: Some(SpaceKind::Shield),
            formation: vec![web()],
            ..AppConfig::default()
        },
        AppConfig {
            name: "demo".to_owned(),
            formation: vec![web()],
            ..AppConfig::default()
        },
    ];
    config
}

/// An ed25519 key pair made by `ssh-keygen` in its own temp dir.
struct Key {
    _dir: tempfile::TempDir,
    path: PathBuf,
    public: String,
}

async fn new_key() -> Key {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("id_ed25519");
    let out = tokio::process::Command::new(SSH_KEYGEN)
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "attach@test", "-f"])
        .arg(&path)
        .stdin(Stdio::null())
        .output();
    let out = tokio::time::timeout(T, out)
        .await
        .expect("ssh-keygen in time")
        .unwrap_or_else(|e| panic!("cannot run {SSH_KEYGEN}: {e}; {SSH_HINT}"));
    assert!(out.status.success(), "ssh-keygen: {out:?}");
    let public = std::fs::read_to_string(path.with_extension("pub")).expect("public key");
    Key {
        _dir: dir,
        path,
        public,
    }
}

/// A key registered on the sim's account.
async fn registered_key(sim: &RunningSim) -> Key {
    let key = new_key().await;
    let resp = request(
        sim,
        reqwest::Method::POST,
        "/account/keys",
        V3,
        Some(json!({"public_key": key.public})),
    )
    .await;
    assert_eq!(resp.status(), 201, "POST /account/keys");
    key
}

/// `POST /apps/{app}/dynos` with `attach: true`: the one-off's name and `https://` attach URL.
async fn create_one_off(sim: &RunningSim, app: &str, command: &str) -> (String, String) {
    let resp = request(
        sim,
        reqwest::Method::POST,
        &format!("/apps/{app}/dynos"),
        V3,
        Some(json!({"command": command, "attach": true, "env": {"TERM": "xterm"}})),
    )
    .await;
    assert_eq!(resp.status(), 201, "create on {app}");
    let dyno: Value = resp.json().await.expect("json");
    let url = dyno["attach_url"].as_str().expect("attach_url").to_owned();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    (dyno["name"].as_str().expect("name").to_owned(), url)
}

async fn dyno_names(sim: &RunningSim, app: &str) -> Vec<String> {
    let resp = request(
        sim,
        reqwest::Method::GET,
        &format!("/apps/{app}/dynos"),
        V3,
        None,
    )
    .await;
    assert_eq!(resp.status(), 200);
    let list: Value = resp.json().await.expect("json");
    list.as_array()
        .expect("array")
        .iter()
        .map(|d| d["name"].as_str().expect("name").to_owned())
        .collect()
}

async fn dyno_state(sim: &RunningSim, app: &str, name: &str) -> String {
    let resp = request(
        sim,
        reqwest::Method::GET,
        &format!("/apps/{app}/dynos/{name}"),
        V3,
        None,
    )
    .await;
    assert_eq!(resp.status(), 200, "GET dyno {name}");
    let d: Value = resp.json().await.expect("json");
    d["state"].as_str().expect("state").to_owned()
}

/// Polls `GET /apps/{app}/dynos` (bounded in time) until `name` is no longer listed: the sim
/// removes a one-off once its SSH connection has ended, just after ssh itself exits.
async fn wait_dyno_gone(sim: &RunningSim, app: &str, name: &str) {
    let deadline = Instant::now() + SSH_TIMEOUT;
    loop {
        let names = dyno_names(sim, app).await;
        if !names.iter().any(|n| n == name) {
            return;
        }
        assert!(Instant::now() < deadline, "{name} still listed: {names:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// No process of any session is left (formation dynos here run none).
async fn assert_no_process_left(sim: &RunningSim) {
    if let Err(left) = sim.wait_process_groups(0, SSH_TIMEOUT).await {
        panic!("processes left behind: {left:?}");
    }
}

/// `host:port` and path of an `https://` attach URL.
fn split_url(url: &str) -> (String, String) {
    let rest = url.strip_prefix("https://").expect("https url");
    let slash = rest.find('/').expect("path");
    let (host, path) = rest.split_at(slash);
    (host.to_owned(), path.to_owned())
}

/// A TLS connection to the sim's HTTPS listener, verified against its test CA.
async fn tls_connect(sim: &RunningSim, host: &str) -> TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(sim.ca_pem().as_bytes()) {
        roots.add(cert.expect("ca pem")).expect("ca cert");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("tls versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::time::timeout(T, TcpStream::connect(host))
        .await
        .expect("connect in time")
        .expect("connect");
    let name = ServerName::try_from("127.0.0.1").expect("server name");
    tokio::time::timeout(T, connector.connect(name, tcp))
        .await
        .expect("tls in time")
        .expect("tls handshake")
}

/// A response head: its status and its text as received.
#[derive(Debug)]
struct Head {
    status: u16,
    text: String,
}

impl Head {
    fn header(&self, name: &str) -> Option<String> {
        self.text.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }
}

/// Writes the CLI's upgrade request (heroku-protocols.md §3.9.3: exactly these three headers).
async fn send_upgrade(tls: &mut TlsStream<TcpStream>, host: &str, path: &str) {
    let req = format!(
        "GET {path} HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: tcp\r\nHost: {host}\r\n\r\n"
    );
    tls.write_all(req.as_bytes()).await.expect("write request");
    tls.flush().await.expect("flush");
}

/// Reads a response head; returns it and the bytes that came after it in the same reads (the
/// SSH server's greeting may share a TLS record with the `101`).
async fn read_head(tls: &mut TlsStream<TcpStream>) -> (Head, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        assert!(buf.len() < MAX_HEAD, "response head too long");
        let n = tokio::time::timeout(T, tls.read(&mut chunk))
            .await
            .expect("response in time")
            .expect("read response");
        assert!(
            n > 0,
            "connection closed before the response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let rest = buf.split_off(end);
    let text = String::from_utf8(buf).expect("utf-8 head");
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {text:?}"));
    (Head { status, text }, rest)
}

/// Reads a response body of `Content-Length` bytes, of which `have` were already read.
async fn read_body(tls: &mut TlsStream<TcpStream>, head: &Head, mut have: Vec<u8>) -> Vec<u8> {
    let len: usize = head
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .expect("content-length");
    while have.len() < len {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(T, tls.read(&mut chunk))
            .await
            .expect("body in time")
            .expect("read body");
        assert!(n > 0, "connection closed inside the body");
        have.extend_from_slice(&chunk[..n]);
    }
    have
}

/// Asserts the server closes the connection (EOF or an error, within [`T`]).
async fn assert_closed(tls: &mut TlsStream<TcpStream>) {
    let mut chunk = [0u8; 1024];
    match tokio::time::timeout(T, tls.read(&mut chunk)).await {
        Ok(Ok(0) | Err(_)) => {}
        Ok(Ok(n)) => panic!("unexpected bytes after the response: {:?}", &chunk[..n]),
        Err(_) => panic!("the connection stayed open"),
    }
}

/// Connects and sends the upgrade for `url`.
async fn upgrade(sim: &RunningSim, url: &str) -> (TlsStream<TcpStream>, Head, Vec<u8>) {
    let (host, path) = split_url(url);
    let mut tls = tls_connect(sim, &host).await;
    send_upgrade(&mut tls, &host, &path).await;
    let (head, rest) = read_head(&mut tls).await;
    (tls, head, rest)
}

fn assert_switched(head: &Head) {
    assert_eq!(head.status, 101, "{}", head.text);
    assert_eq!(
        head.header("connection").as_deref(),
        Some("Upgrade"),
        "{}",
        head.text
    );
    assert_eq!(
        head.header("upgrade").as_deref(),
        Some("tcp"),
        "{}",
        head.text
    );
}

/// The local end of the bridge: a one-shot listener whose single connection is spliced to the
/// upgraded stream, as the CLI does (`setNoDelay` included).
struct Bridge {
    port: u16,
    task: JoinHandle<()>,
}

async fn bridge(mut tls: TlsStream<TcpStream>, early: Vec<u8>) -> Bridge {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let task = tokio::spawn(async move {
        let Ok((mut tcp, _)) = listener.accept().await else {
            return;
        };
        drop(listener);
        let _ = tcp.set_nodelay(true);
        if tcp.write_all(&early).await.is_err() {
            return;
        }
        // Either side may end with an error (the sim closes without close_notify): that is
        // the end of the session, not a test failure.
        let _ = tokio::io::copy_bidirectional(&mut tcp, &mut tls).await;
    });
    Bridge { port, task }
}

impl Bridge {
    /// Waits (bounded) until both directions are done.
    async fn finish(self) {
        let abort = self.task.abort_handle();
        if tokio::time::timeout(SSH_TIMEOUT, self.task).await.is_err() {
            abort.abort();
            panic!("the bridge did not end after ssh exited");
        }
    }
}

#[derive(Debug)]
struct SshRun {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
}

impl SshRun {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Runs `/usr/bin/ssh` to the bridge on `port` with `key`, the CLI's options plus test
/// isolation (no config files, no agent, batch mode, no known_hosts chatter), then `opts`,
/// the host and an optional remote command.
async fn run_ssh(
    port: u16,
    key: &Key,
    opts: &[&str],
    command: Option<&str>,
    stdin: Option<Vec<u8>>,
) -> SshRun {
    let mut cmd = tokio::process::Command::new(SSH);
    cmd.args(["-F", "/dev/null", "-p", &port.to_string(), "-i"])
        .arg(&key.path)
        .args([
            "-oIdentitiesOnly=yes",
            "-oStrictHostKeyChecking=no",
            "-oUserKnownHostsFile=/dev/null",
            "-oBatchMode=yes",
            "-oLogLevel=ERROR",
        ])
        .args(opts)
        .arg("127.0.0.1")
        .args(command)
        .env_remove("SSH_AUTH_SOCK")
        // What a PTY request carries as the terminal type.
        .env("TERM", "vt100")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {SSH}: {e}; {SSH_HINT}"));
    let writer = stdin.map(|data| {
        let mut pipe = child.stdin.take().expect("stdin");
        // Written while the output is read, so neither side can block the other. ssh may
        // exit before reading it all (a failed session): the error is then expected.
        tokio::spawn(async move {
            let _ = pipe.write_all(&data).await;
        })
    });
    let out = tokio::time::timeout(SSH_TIMEOUT, child.wait_with_output())
        .await
        .expect("ssh finished in time")
        .expect("ssh output");
    if let Some(w) = writer {
        w.abort();
    }
    SshRun {
        code: out.status.code(),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Upgrades `url` (asserting the `101`), bridges it and runs ssh over it to the end.
async fn attach(
    sim: &RunningSim,
    url: &str,
    key: &Key,
    opts: &[&str],
    command: Option<&str>,
    stdin: Option<Vec<u8>>,
) -> SshRun {
    let (tls, head, early) = upgrade(sim, url).await;
    assert_switched(&head);
    let b = bridge(tls, early).await;
    let run = run_ssh(b.port, key, opts, command, stdin).await;
    b.finish().await;
    run
}

/// A Fir one-off (with the CLI's `launcher ` prefix, resolved by the sim on a CNB app) and a
/// Shield one-off: stdout and stderr arrive apart (stderr as extended data, no PTY), the exit
/// status is the command's, the app's config vars are set, the dyno is `up` while attached and
/// gone afterwards, and no process is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_offs_on_fir_and_shield_separate_stderr_and_return_the_exit_status() {
    let sim = start().await;
    let key = registered_key(&sim).await;
    for (app, command) in [
        (
            "firapp",
            "launcher echo out $DYNO $FIR_VAR; echo err >&2; exit 3",
        ),
        ("shieldapp", "echo out $DYNO $FIR_VAR; echo err >&2; exit 3"),
    ] {
        let (name, url) = create_one_off(&sim, app, command).await;
        assert!(name.starts_with("run."), "{name}");
        assert_eq!(dyno_state(&sim, app, &name).await, "starting");
        let (tls, head, early) = upgrade(&sim, &url).await;
        assert_switched(&head);
        // Claimed: the one-off is up before any SSH byte.
        assert_eq!(dyno_state(&sim, app, &name).await, "up", "{app}");
        let b = bridge(tls, early).await;
        let run = run_ssh(b.port, &key, &[], None, None).await;
        b.finish().await;
        let config_var = if app == "firapp" {
            " from-config-vars"
        } else {
            ""
        };
        assert_eq!(
            run.stdout(),
            format!("out {name}{config_var}\n"),
            "{app}: {run:?}"
        );
        assert_eq!(run.stderr, "err\n", "{app}: {run:?}");
        assert_eq!(run.code, Some(3), "{app}: {run:?}");
        wait_dyno_gone(&sim, app, &name).await;
        assert_eq!(
            dyno_names(&sim, app).await.len(),
            1,
            "{app}: only web.1 is left"
        );
    }
    assert_no_process_left(&sim).await;
    sim.shutdown().await;
}

/// Deterministic bytes covering all 256 values (xorshift64*), so a failure reproduces.
fn pseudo_random(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

/// 1 MiB of binary stdin through `cat` comes back byte-exact without a PTY (no `0x04`, no
/// CRLF translation), and the local EOF ends `cat` with status 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mib_of_binary_stdin_is_byte_exact_without_a_pty() {
    let sim = start().await;
    let key = registered_key(&sim).await;
    let data = pseudo_random(1 << 20);
    let (name, url) = create_one_off(&sim, "firapp", "cat").await;
    let run = attach(&sim, &url, &key, &[], None, Some(data.clone())).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.stdout.len(), data.len(), "{}", run.stderr);
    assert!(run.stdout == data, "the bytes differ");
    wait_dyno_gone(&sim, "firapp", &name).await;
    assert_no_process_left(&sim).await;
    sim.shutdown().await;
}

/// `ssh -tt` asks for a PTY: the command runs on a `/dev/pts` terminal with ssh's `TERM`,
/// stderr comes merged into the terminal stream, and the exit status still arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tt_runs_the_command_under_a_pty() {
    let sim = start().await;
    let key = registered_key(&sim).await;
    let (name, url) =
        create_one_off(&sim, "shieldapp", "tty; echo $TERM; echo err >&2; exit 4").await;
    let (tls, head, early) = upgrade(&sim, &url).await;
    assert_switched(&head);
    let b = bridge(tls, early).await;
    let run = run_ssh(b.port, &key, &["-tt"], None, None).await;
    b.finish().await;
    let out = run.stdout();
    let lines: Vec<&str> = out.lines().map(|l| l.trim_end_matches('\r')).collect();
    assert!(
        lines.first().is_some_and(|l| l.starts_with("/dev/pts/")),
        "{run:?}"
    );
    assert!(out.contains("\r\n"), "a terminal writes CRLF: {run:?}");
    // The pty-req's terminal type (ssh's TERM) wins over the API call's `xterm`.
    assert_eq!(lines.get(1), Some(&"vt100"), "{run:?}");
    assert!(
        lines.contains(&"err"),
        "stderr merged into the terminal: {run:?}"
    );
    assert!(!run.stderr.contains("err"), "{run:?}");
    assert_eq!(run.code, Some(4), "{run:?}");
    wait_dyno_gone(&sim, "shieldapp", &name).await;
    assert_no_process_left(&sim).await;
    sim.shutdown().await;
}

async fn post_run_inside(
    sim: &RunningSim,
    app: &str,
    dyno: &str,
    command: &str,
) -> reqwest::Response {
    request(
        sim,
        reqwest::Method::POST,
        &format!("/apps/{app}/dynos/{dyno}"),
        "application/vnd.heroku+json; version=3.run-inside",
        Some(json!({"command": command, "env": {"TERM": "xterm"}})),
    )
    .await
}

/// `run:inside` on a Fir formation dyno answers 200 with the dyno and an `https://` URL whose
/// session runs the command in that dyno (its pod-style `DYNO`, the app's config vars); the
/// dyno stays up afterwards and its secret is used up. A Cedar app and a missing dyno get 422.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_inside_runs_in_the_formation_dyno_and_leaves_it_up() {
    let sim = start().await;
    let key = registered_key(&sim).await;
    let web1 = herokusim::fir_dyno_name("firapp", "web.1");
    let resp = post_run_inside(
        &sim,
        "firapp",
        &web1,
        "launcher echo $DYNO $FIR_VAR; exit 5",
    )
    .await;
    assert_eq!(resp.status(), 200);
    let dyno: Value = resp.json().await.expect("json");
    assert_eq!(dyno["name"], web1.as_str(), "{dyno}");
    assert_eq!(dyno["state"], "up", "{dyno}");
    let url = dyno["attach_url"].as_str().expect("attach_url").to_owned();
    assert!(
        url.starts_with(&format!("{}attach/", sim.exec_url())),
        "{url}"
    );

    let run = attach(&sim, &url, &key, &[], None, None).await;
    assert_eq!(
        run.stdout(),
        format!("{web1} from-config-vars\n"),
        "{run:?}"
    );
    assert_eq!(run.code, Some(5), "{run:?}");
    assert_eq!(dyno_state(&sim, "firapp", &web1).await, "up");
    assert_eq!(
        dyno_names(&sim, "firapp").await,
        std::slice::from_ref(&web1)
    );
    assert_no_process_left(&sim).await;
    assert_eq!(dyno_state(&sim, "firapp", &web1).await, "up");

    // The secret was single-use.
    let (mut tls, head, _) = upgrade(&sim, &url).await;
    assert_eq!(head.status, 404, "{}", head.text);
    assert_closed(&mut tls).await;

    // A Cedar app: 422 (run:inside is for Fir apps only).
    let resp = post_run_inside(&sim, "demo", "web.1", "echo hi").await;
    assert_eq!(resp.status(), 422);
    let err: Value = resp.json().await.expect("json");
    assert_eq!(err["id"], "invalid_params", "{err}");
    assert!(
        err["message"].as_str().expect("message").contains("Fir"),
        "{err}"
    );

    // A dyno that does not exist: Heroku's message.
    let resp = post_run_inside(&sim, "firapp", "web-0000000000-zzzzz", "echo hi").await;
    assert_eq!(resp.status(), 422);
    let err: Value = resp.json().await.expect("json");
    assert_eq!(err["id"], "invalid_params", "{err}");
    assert_eq!(
        err["message"], "web-0000000000-zzzzz is either not \"up\" or doesn't exist.",
        "{err}"
    );
    sim.shutdown().await;
}

/// The injected 409 applies to `run:inside` too (heroku-protocols.md §8.1: "both dyno
/// routes"), as the CLI retries it on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_inside_can_be_answered_with_an_injected_409() {
    let sim = start().await;
    let web1 = herokusim::fir_dyno_name("firapp", "web.1");
    sim.set_faults(Faults {
        create_conflicts: 1,
        ..Faults::default()
    });
    let resp = post_run_inside(&sim, "firapp", &web1, "true").await;
    assert_eq!(resp.status(), 409);
    let err: Value = resp.json().await.expect("json");
    assert_eq!(err["id"], "conflict", "{err}");
    let resp = post_run_inside(&sim, "firapp", &web1, "true").await;
    assert_eq!(resp.status(), 200);
    sim.shutdown().await;
}

/// A refused upgrade (403, Heroku's IP restriction) uses nothing up: the connection stays
/// open, and the same secret upgrades on it afterwards and runs its session. A refusal with
/// another status and `attach_refusal_close` closes the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upgrade_keeps_the_secret() {
    let sim = start().await;
    let key = registered_key(&sim).await;
    let (name, url) = create_one_off(&sim, "firapp", "echo after-refusal; exit 3").await;
    sim.set_faults(Faults {
        attach_refusals: 1,
        ..Faults::default()
    });
    let (host, path) = split_url(&url);
    let mut tls = tls_connect(&sim, &host).await;
    send_upgrade(&mut tls, &host, &path).await;
    let (head, rest) = read_head(&mut tls).await;
    assert_eq!(head.status, 403, "{}", head.text);
    let _body = read_body(&mut tls, &head, rest).await;
    assert_eq!(sim.faults().attach_refusals, 0);
    assert_eq!(dyno_state(&sim, "firapp", &name).await, "starting");

    // Same connection (kept alive), same secret: now it upgrades.
    send_upgrade(&mut tls, &host, &path).await;
    let (head, early) = read_head(&mut tls).await;
    assert_switched(&head);
    let b = bridge(tls, early).await;
    let run = run_ssh(b.port, &key, &[], None, None).await;
    b.finish().await;
    assert_eq!(run.stdout(), "after-refusal\n", "{run:?}");
    assert_eq!(run.code, Some(3), "{run:?}");
    wait_dyno_gone(&sim, "firapp", &name).await;

    // Another status, connection closed.
    let (name, url) = create_one_off(&sim, "firapp", "true").await;
    sim.set_faults(Faults {
        attach_refusals: 1,
        attach_refusal_status: 502,
        attach_refusal_close: true,
        ..Faults::default()
    });
    let (mut tls, head, rest) = upgrade(&sim, &url).await;
    assert_eq!(head.status, 502, "{}", head.text);
    let _body = read_body(&mut tls, &head, rest).await;
    assert_closed(&mut tls).await;
    assert_eq!(dyno_state(&sim, "firapp", &name).await, "starting");
    assert_no_process_left(&sim).await;
    sim.shutdown().await;
}

/// A dropped upgrade (`101`, then the socket closes before any SSH byte): ssh fails at once
/// with 255, the one-off is gone, and nothing was left running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_upgrade_fails_ssh_and_leaves_nothing() {
    let sim = start().await;
    let key = registered_key(&sim).await;
    let (name, url) = create_one_off(&sim, "firapp", "echo never").await;
    sim.set_faults(Faults {
        drop_attach_upgrades: 1,
        ..Faults::default()
    });
    let run = attach(&sim, &url, &key, &[], None, None).await;
    assert_eq!(run.code, Some(255), "{run:?}");
    assert!(run.stdout.is_empty(), "{run:?}");
    assert!(
        run.stderr.contains("Connection closed") || run.stderr.contains("reset"),
        "{run:?}"
    );
    wait_dyno_gone(&sim, "firapp", &name).await;
    assert_no_process_left(&sim).await;
    sim.shutdown().await;
}

/// A key that is not on the account is refused: OpenSSH exits 255 with `Permission denied
/// (publickey).` (the string the CLI looks for), the command never runs, the one-off is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistered_key_gets_permission_denied() {
    let sim = start().await;
    let _registered = registered_key(&sim).await;
    let stranger = new_key().await;
    let (name, url) = create_one_off(&sim, "firapp", "echo must-not-run").await;
    let run = attach(&sim, &url, &stranger, &[], None, None).await;
    assert_eq!(run.code, Some(255), "{run:?}");
    assert!(
        run.stderr.contains("Permission denied (publickey)."),
        "{run:?}"
    );
    assert!(!run.stdout().contains("must-not-run"), "{run:?}");
    wait_dyno_gone(&sim, "firapp", &name).await;
    assert_no_process_left(&sim).await;
    sim.shutdown().await;
}

/// A secret works once: a second upgrade and an unknown secret get `404` and the connection is
/// closed. Every request is recorded with its headers and answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_single_use() {
    let sim = start().await;
    let key = registered_key(&sim).await;
    let (_, url) = create_one_off(&sim, "shieldapp", "echo once").await;
    let run = attach(&sim, &url, &key, &[], None, None).await;
    assert_eq!(run.stdout(), "once\n", "{run:?}");
    assert_eq!(run.code, Some(0), "{run:?}");
    let unknown = format!("{}attach/00000000000000000000000000000000", sim.exec_url());
    for url in [url.as_str(), unknown.as_str()] {
        let (mut tls, head, _) = upgrade(&sim, url).await;
        assert_eq!(head.status, 404, "{url}: {}", head.text);
        assert_closed(&mut tls).await;
    }
    // The sim records each request as received, with its answer.
    let (host, path) = split_url(&url);
    let seen = sim.attach_requests();
    let statuses: Vec<u16> = seen.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [101, 404, 404], "{seen:?}");
    assert_eq!(seen[0].method, "GET");
    assert_eq!(seen[0].target, path);
    let headers = [
        ("connection", "Upgrade"),
        ("upgrade", "tcp"),
        ("host", host.as_str()),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));
    assert_eq!(seen[0].headers, headers, "{seen:?}");
    assert_no_process_left(&sim).await;
    sim.shutdown().await;
}

/// With `attach_omit_exit_status` the output still arrives but no `exit-status` does: OpenSSH
/// then exits 255, never the command's 3 (clients must rely on the marker).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn omitted_exit_status_is_not_reported_as_the_command_status() {
    let sim = start().await;
    let key = registered_key(&sim).await;
    sim.set_faults(Faults {
        attach_omit_exit_status: true,
        ..Faults::default()
    });
    let (name, url) = create_one_off(&sim, "firapp", "echo hi; exit 3").await;
    let run = attach(&sim, &url, &key, &[], None, None).await;
    assert_eq!(run.stdout(), "hi\n", "{run:?}");
    assert_ne!(run.code, Some(3), "{run:?}");
    assert_eq!(run.code, Some(255), "{run:?}");
    wait_dyno_gone(&sim, "firapp", &name).await;
    assert_no_process_left(&sim).await;
    sim.shutdown().await;
}

/// `exec` (ssh with a remote command) is refused by default: neither that command nor the
/// dyno's runs. With `attach_allow_exec` the exec'd command runs instead of the dyno's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_is_refused_unless_switched_on() {
    let sim = start().await;
    let key = registered_key(&sim).await;
    let (name, url) = create_one_off(&sim, "firapp", "echo dyno-command").await;
    let run = attach(
        &sim,
        &url,
        &key,
        &[],
        Some("echo exec-command; exit 7"),
        None,
    )
    .await;
    assert_eq!(run.code, Some(255), "{run:?}");
    assert!(run.stdout.is_empty(), "{run:?}");
    assert!(run.stderr.contains("exec request failed"), "{run:?}");
    wait_dyno_gone(&sim, "firapp", &name).await;

    sim.set_faults(Faults {
        attach_allow_exec: true,
        ..Faults::default()
    });
    let (name, url) = create_one_off(&sim, "firapp", "echo dyno-command").await;
    let run = attach(
        &sim,
        &url,
        &key,
        &[],
        Some("echo exec-command; exit 7"),
        None,
    )
    .await;
    assert_eq!(run.stdout(), "exec-command\n", "{run:?}");
    assert_eq!(run.code, Some(7), "{run:?}");
    wait_dyno_gone(&sim, "firapp", &name).await;
    assert_no_process_left(&sim).await;
    sim.shutdown().await;
}

/// Starts ssh (no PTY, stdin closed, stderr dropped) and waits (bounded) until the session's
/// command printed its first line, `ready`: the process is running from then on.
async fn spawn_ssh_until_ready(port: u16, key: &Key) -> tokio::process::Child {
    use tokio::io::AsyncBufReadExt as _;
    let mut child = tokio::process::Command::new(SSH)
        .args(["-F", "/dev/null", "-p", &port.to_string(), "-i"])
        .arg(&key.path)
        .args([
            "-oIdentitiesOnly=yes",
            "-oStrictHostKeyChecking=no",
            "-oUserKnownHostsFile=/dev/null",
            "-oBatchMode=yes",
            "-oLogLevel=ERROR",
            "127.0.0.1",
        ])
        .env_remove("SSH_AUTH_SOCK")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {SSH}: {e}; {SSH_HINT}"));
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(SSH_TIMEOUT, lines.next_line())
        .await
        .expect("output in time")
        .expect("read");
    assert_eq!(first.as_deref(), Some("ready"));
    // Keep reading (and discarding) so that the session never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

/// Restarting the formation dyno ends a `run:inside` session in it: the process is stopped,
/// ssh ends (bounded) without the command's status, the dyno comes back up under a new id,
/// nothing is left running, and a secret granted for the old boot gets 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_the_dyno_ends_its_run_inside_session() {
    let sim = start().await;
    let key = registered_key(&sim).await;
    let web1 = herokusim::fir_dyno_name("firapp", "web.1");
    let resp = post_run_inside(&sim, "firapp", &web1, "echo ready; sleep 600; exit 9").await;
    assert_eq!(resp.status(), 200);
    let dyno: Value = resp.json().await.expect("json");
    let url = dyno["attach_url"].as_str().expect("attach_url").to_owned();
    // A second grant, left unused: the restart voids it.
    let resp = post_run_inside(&sim, "firapp", &web1, "echo stale").await;
    assert_eq!(resp.status(), 200);
    let unused: Value = resp.json().await.expect("json");
    let unused = unused["attach_url"]
        .as_str()
        .expect("attach_url")
        .to_owned();
    let (tls, head, early) = upgrade(&sim, &url).await;
    assert_switched(&head);
    let b = bridge(tls, early).await;
    let mut child = spawn_ssh_until_ready(b.port, &key).await;
    assert_eq!(sim.live_process_groups().len(), 1, "the session's process");

    let resp = request(
        &sim,
        reqwest::Method::DELETE,
        &format!("/apps/firapp/dynos/{web1}"),
        V3,
        None,
    )
    .await;
    assert_eq!(resp.status(), 202);
    let status = tokio::time::timeout(SSH_TIMEOUT, child.wait())
        .await
        .expect("ssh ends after the restart")
        .expect("wait");
    // The dyno's SSH server goes with it: a lost connection, 255 from OpenSSH, never the 9.
    assert_eq!(status.code(), Some(255), "{status:?}");
    b.finish().await;
    assert_no_process_left(&sim).await;
    let resp = request(
        &sim,
        reqwest::Method::GET,
        &format!("/apps/firapp/dynos/{web1}"),
        V3,
        None,
    )
    .await;
    let again: Value = resp.json().await.expect("json");
    assert_eq!(again["state"], "up", "{again}");
    assert_ne!(again["id"], dyno["id"], "a new boot");
    let (mut tls, head, _) = upgrade(&sim, &unused).await;
    assert_eq!(head.status, 404, "{}", head.text);
    assert_closed(&mut tls).await;
    sim.shutdown().await;
}

/// A client that pipelines: its SSH greeting goes out in the same TLS write as the upgrade
/// request, before the `101`. The bridge here reads ssh's greeting first, then sends both at
/// once; the session only completes if the server keeps those bytes for the SSH server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_pipelined_after_the_upgrade_request_reach_the_ssh_server() {
    let sim = start().await;
    let key = registered_key(&sim).await;
    let (name, url) = create_one_off(&sim, "firapp", "echo pipelined").await;
    let (host, path) = split_url(&url);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mut tls = tls_connect(&sim, &host).await;
    let task = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.expect("accept");
        drop(listener);
        // OpenSSH sends its greeting as soon as it connects, without waiting for the server's.
        let mut greeting = vec![0u8; 256];
        let n = tokio::time::timeout(T, tcp.read(&mut greeting))
            .await
            .expect("greeting in time")
            .expect("read greeting");
        greeting.truncate(n);
        assert!(greeting.starts_with(b"SSH-2.0-"), "{greeting:?}");
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: tcp\r\nHost: {host}\r\n\r\n"
        )
        .into_bytes();
        req.extend_from_slice(&greeting);
        tls.write_all(&req).await.expect("write");
        tls.flush().await.expect("flush");
        let (head, early) = read_head(&mut tls).await;
        assert_switched(&head);
        tcp.write_all(&early).await.expect("early bytes");
        let _ = tokio::io::copy_bidirectional(&mut tcp, &mut tls).await;
    });
    let run = run_ssh(port, &key, &[], None, None).await;
    tokio::time::timeout(SSH_TIMEOUT, task)
        .await
        .expect("bridge ends")
        .expect("bridge task");
    assert_eq!(run.stdout(), "pipelined\n", "{run:?}");
    assert_eq!(run.code, Some(0), "{run:?}");
    wait_dyno_gone(&sim, "firapp", &name).await;
    assert_no_process_left(&sim).await;
    sim.shutdown().await;
}

/// A one-off's `time_to_live` ends its attached session: the process is killed, ssh ends
/// (bounded) without the command's status, the dyno is gone and nothing is left running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_to_live_ends_an_attached_one_off() {
    let sim = start().await;
    let key = registered_key(&sim).await;
    let resp = request(
        &sim,
        reqwest::Method::POST,
        "/apps/firapp/dynos",
        V3,
        Some(
            json!({"command": "echo ready; sleep 600; exit 9", "attach": true, "time_to_live": 1}),
        ),
    )
    .await;
    assert_eq!(resp.status(), 201);
    let dyno: Value = resp.json().await.expect("json");
    let name = dyno["name"].as_str().expect("name").to_owned();
    let url = dyno["attach_url"].as_str().expect("attach_url").to_owned();
    let (tls, head, early) = upgrade(&sim, &url).await;
    assert_switched(&head);
    let b = bridge(tls, early).await;
    let mut child = spawn_ssh_until_ready(b.port, &key).await;
    let status = tokio::time::timeout(SSH_TIMEOUT, child.wait())
        .await
        .expect("ssh ends when the dyno expires")
        .expect("wait");
    // The dyno's SSH server goes with it: a lost connection, 255 from OpenSSH, never the 9.
    assert_eq!(status.code(), Some(255), "{status:?}");
    b.finish().await;
    wait_dyno_gone(&sim, "firapp", &name).await;
    assert_no_process_left(&sim).await;
    sim.shutdown().await;
}

/// A client that goes away mid-session (ssh killed): the sim sees the connection end, hangs up
/// the process, and removes the one-off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_mid_session_leaves_nothing_behind() {
    let sim = start().await;
    let key = registered_key(&sim).await;
    let (name, url) = create_one_off(&sim, "firapp", "echo ready; sleep 600").await;
    let (tls, head, early) = upgrade(&sim, &url).await;
    assert_switched(&head);
    let b = bridge(tls, early).await;
    let mut child = spawn_ssh_until_ready(b.port, &key).await;
    assert_eq!(sim.live_process_groups().len(), 1, "the session's process");
    child.start_kill().expect("kill ssh");
    let _ = tokio::time::timeout(SSH_TIMEOUT, child.wait())
        .await
        .expect("ssh killed");
    b.finish().await;
    wait_dyno_gone(&sim, "firapp", &name).await;
    assert_no_process_left(&sim).await;
    sim.shutdown().await;
}

/// `dyno_not_found_polls`: the next N `GET /apps/{app}/dynos/{dyno}` answer 404 `not_found`
/// (a dyno the runtime does not show yet, which the CLI polls through), then the dyno is found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dyno_polls_can_be_answered_with_injected_404s() {
    let sim = start().await;
    let (name, _) = create_one_off(&sim, "firapp", "true").await;
    sim.set_faults(Faults {
        dyno_not_found_polls: 2,
        ..Faults::default()
    });
    let path = format!("/apps/firapp/dynos/{name}");
    for _ in 0..2 {
        let resp = request(&sim, reqwest::Method::GET, &path, V3, None).await;
        assert_eq!(resp.status(), 404);
        let err: Value = resp.json().await.expect("json");
        assert_eq!(err["id"], "not_found", "{err}");
    }
    assert_eq!(dyno_state(&sim, "firapp", &name).await, "starting");
    assert_eq!(sim.faults().dyno_not_found_polls, 0);
    sim.shutdown().await;
}

/// A secret expires after `attach_secret_ttl_ms`: used in time it upgrades, used later it gets
/// 404 and the connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_expire() {
    // Long enough that the first upgrade, made at once, is in time even on a loaded machine.
    const TTL: Duration = Duration::from_secs(3);
    let sim = Sim::start(SimConfig {
        attach_secret_ttl_ms: u64::try_from(TTL.as_millis()).expect("ms"),
        ..config()
    })
    .await
    .expect("sim starts");
    let key = registered_key(&sim).await;
    let (_, late) = create_one_off(&sim, "firapp", "echo late").await;
    // The secret was made before the create answered: it expires before this + TTL.
    let late_created = Instant::now();
    let (_, in_time) = create_one_off(&sim, "firapp", "echo in-time").await;
    let run = attach(&sim, &in_time, &key, &[], None, None).await;
    assert_eq!(run.stdout(), "in-time\n", "{run:?}");
    // Let the second secret's lifetime pass: a wall-clock deadline, nothing to synchronise with.
    let expired = late_created + TTL + Duration::from_millis(50);
    tokio::time::sleep_until(expired.into()).await;
    let (mut tls, head, _) = upgrade(&sim, &late).await;
    assert_eq!(head.status, 404, "{}", head.text);
    assert_closed(&mut tls).await;
    assert_no_process_left(&sim).await;
    sim.shutdown().await;
}

/// With a terminal as stdin (a pty made here), ssh's `pty-req` carries its size and a resize
/// becomes a `window-change`: the remote PTY is resized and its process gets SIGWINCH.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pty_size_and_window_change_reach_the_remote_terminal() {
    use std::os::fd::AsFd as _;
    use tokio::io::AsyncBufReadExt as _;

    let sim = start().await;
    let key = registered_key(&sim).await;
    // The trap answers the resize; `wait` returns as soon as a trapped signal arrives.
    let (name, url) = create_one_off(
        &sim,
        "firapp",
        "stty size; trap 'stty size; exit 0' WINCH; sleep 600 & wait",
    )
    .await;
    let (tls, head, early) = upgrade(&sim, &url).await;
    assert_switched(&head);
    let b = bridge(tls, early).await;
    let (pty, pts) = pty_process::open().expect("pty");
    pty.resize(pty_process::Size::new(33, 101)).expect("size");
    let tty = pts.as_fd().try_clone_to_owned().expect("pts fd");
    let mut child = tokio::process::Command::new(SSH)
        .args(["-F", "/dev/null", "-tt", "-p", &b.port.to_string(), "-i"])
        .arg(&key.path)
        .args([
            "-oIdentitiesOnly=yes",
            "-oStrictHostKeyChecking=no",
            "-oUserKnownHostsFile=/dev/null",
            "-oBatchMode=yes",
            "-oLogLevel=ERROR",
            "127.0.0.1",
        ])
        .env_remove("SSH_AUTH_SOCK")
        .env("TERM", "vt100")
        .stdin(Stdio::from(tty))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {SSH}: {e}; {SSH_HINT}"));
    drop(pts);
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut next = async || {
        tokio::time::timeout(SSH_TIMEOUT, lines.next_line())
            .await
            .expect("output in time")
            .expect("read")
            .map(|l| l.trim_end_matches('\r').to_owned())
    };
    assert_eq!(next().await.as_deref(), Some("33 101"), "pty-req size");
    pty.resize(pty_process::Size::new(40, 120)).expect("resize");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id().expect("pid")).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGWINCH).expect("SIGWINCH to ssh");
    assert_eq!(
        next().await.as_deref(),
        Some("40 120"),
        "window-change size"
    );
    let status = tokio::time::timeout(SSH_TIMEOUT, child.wait())
        .await
        .expect("ssh ends")
        .expect("wait");
    assert_eq!(status.code(), Some(0), "{status:?}");
    drop(pty);
    b.finish().await;
    wait_dyno_gone(&sim, "firapp", &name).await;
    assert_no_process_left(&sim).await;
    sim.shutdown().await;
}

/// sftp (a subsystem) and `direct-tcpip` (`ssh -W`) are refused on the attach path: ssh fails,
/// and the dyno's command never runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_and_tcp_forwarding_are_refused() {
    let sim = start().await;
    let key = registered_key(&sim).await;
    let api_port = sim.api_url().rsplit(':').next().expect("port").to_owned();
    let forward = format!("127.0.0.1:{api_port}");
    for (opts, command, says) in [
        (vec!["-s"], Some("sftp"), "subsystem request failed"),
        (
            vec!["-W", forward.as_str()],
            None,
            "stdio forwarding failed",
        ),
    ] {
        let (name, url) = create_one_off(&sim, "firapp", "echo dyno-command").await;
        let run = attach(&sim, &url, &key, &opts, command, None).await;
        assert_eq!(run.code, Some(255), "{opts:?}: {run:?}");
        assert!(run.stderr.contains(says), "{opts:?}: {run:?}");
        assert!(!run.stdout().contains("dyno-command"), "{opts:?}: {run:?}");
        wait_dyno_gone(&sim, "firapp", &name).await;
    }
    assert_no_process_left(&sim).await;
    sim.shutdown().await;
}

/// A client that keeps the connection after its session (an OpenSSH control master with
/// `ControlPersist`) is disconnected by the sim a few seconds later: the connection ends, the
/// master exits, the one-off is gone. The session's output and status arrived before that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stays_after_its_session_is_disconnected() {
    let sim = start().await;
    let key = registered_key(&sim).await;
    let control = tempfile::tempdir().expect("tempdir");
    let control_path = format!("-oControlPath={}", control.path().join("cm").display());
    let (name, url) = create_one_off(&sim, "firapp", "echo done").await;
    let (tls, head, early) = upgrade(&sim, &url).await;
    assert_switched(&head);
    let b = bridge(tls, early).await;
    let opts = [
        "-oControlMaster=yes",
        "-oControlPersist=yes",
        control_path.as_str(),
    ];
    let run = run_ssh(b.port, &key, &opts, None, None).await;
    assert_eq!(run.stdout(), "done\n", "{run:?}");
    assert_eq!(run.code, Some(0), "{run:?}");
    // The master lingers in the background until the sim disconnects it.
    b.finish().await;
    wait_dyno_gone(&sim, "firapp", &name).await;
    let check = tokio::process::Command::new(SSH)
        .args(["-F", "/dev/null", "-O", "check", &control_path, "127.0.0.1"])
        .stdin(Stdio::null())
        .output();
    let check = tokio::time::timeout(T, check)
        .await
        .expect("check in time")
        .expect("ssh -O check");
    if check.status.success() {
        // Stop the master this test started before failing.
        let _ = std::process::Command::new(SSH)
            .args(["-F", "/dev/null", "-O", "exit", &control_path, "127.0.0.1"])
            .stdin(Stdio::null())
            .output();
        panic!("the control master was still running: {check:?}");
    }
    assert_no_process_left(&sim).await;
    sim.shutdown().await;
}

/// `attach_coalesce_greeting`: the `101` and the SSH server's first bytes go out in one write
/// (one TLS record), as a server may send them. A client must keep the bytes after the head
/// (CLI 11.10.0 drops them and hangs); this bridge does, so the session works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_greeting_arrives_with_the_101() {
    let sim = start().await;
    let key = registered_key(&sim).await;
    sim.set_faults(Faults {
        attach_coalesce_greeting: true,
        ..Faults::default()
    });
    let (name, url) = create_one_off(&sim, "firapp", "echo coalesced").await;
    let (tls, head, early) = upgrade(&sim, &url).await;
    assert_switched(&head);
    assert!(
        early.starts_with(b"SSH-2.0-"),
        "the greeting came with the 101: {:?}",
        String::from_utf8_lossy(&early)
    );
    let b = bridge(tls, early).await;
    let run = run_ssh(b.port, &key, &[], None, None).await;
    b.finish().await;
    assert_eq!(run.stdout(), "coalesced\n", "{run:?}");
    assert_eq!(run.code, Some(0), "{run:?}");
    wait_dyno_gone(&sim, "firapp", &name).await;

    // A refusal on the same connection first: the 403 goes out on its own, the 101 after it
    // still carries the greeting.
    let (name, url) = create_one_off(&sim, "firapp", "echo again").await;
    sim.set_faults(Faults {
        attach_coalesce_greeting: true,
        attach_refusals: 1,
        ..Faults::default()
    });
    let (host, path) = split_url(&url);
    let mut tls = tls_connect(&sim, &host).await;
    send_upgrade(&mut tls, &host, &path).await;
    let (head, rest) = read_head(&mut tls).await;
    assert_eq!(head.status, 403, "{}", head.text);
    let _body = read_body(&mut tls, &head, rest).await;
    send_upgrade(&mut tls, &host, &path).await;
    let (head, early) = read_head(&mut tls).await;
    assert_switched(&head);
    assert!(early.starts_with(b"SSH-2.0-"), "{early:?}");
    let b = bridge(tls, early).await;
    let run = run_ssh(b.port, &key, &[], None, None).await;
    b.finish().await;
    assert_eq!(run.stdout(), "again\n", "{run:?}");
    wait_dyno_gone(&sim, "firapp", &name).await;
    assert_no_process_left(&sim).await;
    sim.shutdown().await;
}

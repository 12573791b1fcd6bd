//! The ssh backend against a real OpenSSH sshd on 127.0.0.1 (one per test, free port).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

mod common;

use std::time::Duration;

use backend::{Input, Mode, TermSize};
use backend_ssh::{SshBackend, SshConfig, fingerprint, hostkey::parse_public_key_line};
use bytes::Bytes;
use common::{Sshd, env, start};

const SSH_CMD: &[&str] = &["ssh", "$SSH_URI", "-i", "$SSH_PRIVATE_KEY"];

fn backend() -> SshBackend {
    let mut config = SshConfig::from_agent_env();
    // Nothing in these tests may depend on the machine's own ~/.ssh.
    config.known_hosts = None;
    SshBackend::new(config)
}

/// Session env for `sshd`: key file path (as a `filesystem:` secret gives) and a known_hosts
/// file with the server's key.
fn session_env(sshd: &Sshd) -> backend::SessionEnv {
    let kh = sshd.dir.path().join("known_hosts");
    std::fs::write(&kh, format!("{}\n", sshd.known_hosts_line())).unwrap();
    env(&[
        ("SSH_URI", &sshd.uri()),
        ("SSH_PRIVATE_KEY", sshd.client_key.to_str().unwrap()),
        ("SSH_KNOWN_HOSTS", kh.to_str().unwrap()),
    ])
}

fn term(cols: u16, rows: u16) -> TermSize {
    TermSize {
        rows,
        cols,
        xpixel: 0,
        ypixel: 0,
    }
}

#[tokio::test]
async fn exec_keeps_stdout_and_stderr_apart_and_passes_exit_codes() {
    let sshd = Sshd::start("");
    let b = backend();
    let s = start(
        &b,
        SSH_CMD,
        &["echo out; echo err >&2; exit 42"],
        session_env(&sshd),
        Mode::Exec,
    );
    s.send(Input::Eof).await;
    let (status, out, err) = s.finish().await;
    assert_eq!(status.code, 42, "{status:?} log={}", sshd.log());
    assert_eq!(out, b"out\n");
    assert_eq!(err, b"err\n");

    let s = start(&b, SSH_CMD, &["true"], session_env(&sshd), Mode::Exec);
    s.send(Input::Eof).await;
    let (status, out, _) = s.finish().await;
    assert_eq!(status, backend::ExitStatus::success());
    assert!(out.is_empty());
}

#[tokio::test]
async fn stdin_is_streamed_byte_exact_and_ended_with_eof() {
    let sshd = Sshd::start("");
    let b = backend();
    // Pinned host key this time (SSH_HOST_KEY) instead of known_hosts.
    let e = env(&[
        ("SSH_URI", &sshd.uri()),
        ("SSH_PRIVATE_KEY", sshd.client_key.to_str().unwrap()),
        ("SSH_HOST_KEY", sshd.host_pub.trim()),
    ]);
    let data: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let s = start(&b, SSH_CMD, &["cat; exit 3"], e, Mode::Exec);
    let started = std::time::Instant::now();
    for chunk in data.chunks(64 * 1024) {
        s.send(Input::Data(Bytes::copy_from_slice(chunk))).await;
    }
    s.send(Input::Eof).await;
    let (status, out, err) = s.finish().await;
    eprintln!("1 MiB through cat over ssh in {:?}", started.elapsed());
    assert_eq!(
        status.code,
        3,
        "{status:?} stderr={}",
        String::from_utf8_lossy(&err)
    );
    assert_eq!(out.len(), data.len());
    assert!(out == data, "stdout differs from stdin");
}

#[tokio::test]
async fn exit_signal_is_128_plus_n() {
    let sshd = Sshd::start("");
    let s = start(
        &backend(),
        SSH_CMD,
        &["kill -TERM $$"],
        session_env(&sshd),
        Mode::Exec,
    );
    s.send(Input::Eof).await;
    let (status, _, _) = s.finish().await;
    assert_eq!(status.code, 143, "{status:?}");
    assert!(status.message.contains("SIGTERM"), "{status:?}");
}

#[tokio::test]
async fn terminal_gets_its_size_resizes_and_keystrokes() {
    let sshd = Sshd::start("");
    let mut s = start(
        &backend(),
        SSH_CMD,
        &[],
        session_env(&sshd),
        Mode::Terminal {
            size: term(100, 30),
        },
    );
    s.send(Input::Data(Bytes::from_static(b"stty size\n")))
        .await;
    s.wait_stdout("30 100", Duration::from_secs(15)).await;
    s.send(Input::Resize(term(120, 40))).await;
    s.send(Input::Data(Bytes::from_static(b"stty size\n")))
        .await;
    s.wait_stdout("40 120", Duration::from_secs(15)).await;
    s.send(Input::Data(Bytes::from_static(b"exit 5\n"))).await;
    let (status, _, _) = s.finish().await;
    assert_eq!(status.code, 5, "{status:?}");
}

#[tokio::test]
async fn terminal_stdin_eof_is_ctrl_d() {
    let sshd = Sshd::start("");
    let mut s = start(
        &backend(),
        SSH_CMD,
        &["cat"],
        session_env(&sshd),
        Mode::Terminal { size: term(80, 24) },
    );
    s.send(Input::Data(Bytes::from_static(b"hello\n"))).await;
    s.wait_stdout("hello\r\nhello\r\n", Duration::from_secs(15))
        .await;
    // An SSH EOF would not end `cat` under a PTY; the backend sends ^D instead.
    s.send(Input::Eof).await;
    let (status, _, _) = s.finish().await;
    assert_eq!(status.code, 0, "{status:?}");
}

#[tokio::test]
async fn unknown_host_key_is_refused_with_its_fingerprint() {
    let sshd = Sshd::start("");
    let presented = fingerprint(&parse_public_key_line(&sshd.host_pub).unwrap());
    // The known_hosts text knows another port only.
    let other = format!(
        "[127.0.0.1]:{} {}",
        sshd.port.wrapping_add(1),
        sshd.host_pub.trim()
    );
    let e = env(&[
        ("SSH_URI", &sshd.uri()),
        ("SSH_PRIVATE_KEY", sshd.client_key.to_str().unwrap()),
        ("SSH_KNOWN_HOSTS", &other),
    ]);
    let s = start(&backend(), SSH_CMD, &["echo never"], e, Mode::Exec);
    let (status, out, _) = s.finish().await;
    assert_eq!(status.code, 254, "{status:?}");
    assert!(status.message.contains("unknown"), "{status:?}");
    assert!(status.message.contains(&presented), "{status:?}");
    assert!(out.is_empty());
    assert!(!sshd.log().contains("Accepted publickey"), "{}", sshd.log());
}

#[tokio::test]
async fn changed_host_key_is_refused_showing_both_fingerprints() {
    let sshd = Sshd::start("");
    let presented = fingerprint(&parse_public_key_line(&sshd.host_pub).unwrap());
    let other = sshd.dir.path().join("other_host");
    common::keygen(&other, &["-t", "ed25519"]);
    let other_pub = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    let expected = fingerprint(&parse_public_key_line(&other_pub).unwrap());

    // known_hosts with a different key for this host and port.
    let kh = sshd.dir.path().join("changed_known_hosts");
    std::fs::write(
        &kh,
        format!("[127.0.0.1]:{} {}", sshd.port, other_pub.trim()),
    )
    .unwrap();
    let e = env(&[
        ("SSH_URI", &sshd.uri()),
        ("SSH_PRIVATE_KEY", sshd.client_key.to_str().unwrap()),
        ("SSH_KNOWN_HOSTS", kh.to_str().unwrap()),
    ]);
    let (status, _, _) = start(&backend(), SSH_CMD, &["true"], e, Mode::Exec)
        .finish()
        .await;
    assert_eq!(status.code, 254, "{status:?}");
    assert!(status.message.contains("CHANGED"), "{status:?}");
    assert!(
        status.message.contains(&presented) && status.message.contains(&expected),
        "{status:?}"
    );

    // A wrong pinned key.
    let e = env(&[
        ("SSH_URI", &sshd.uri()),
        ("SSH_PRIVATE_KEY", sshd.client_key.to_str().unwrap()),
        ("SSH_HOST_KEY", other_pub.trim()),
    ]);
    let (status, _, _) = start(&backend(), SSH_CMD, &["true"], e, Mode::Exec)
        .finish()
        .await;
    assert_eq!(status.code, 254, "{status:?}");
    assert!(status.message.contains("mismatch"), "{status:?}");
    assert!(
        status.message.contains(&presented) && status.message.contains(&expected),
        "{status:?}"
    );
    assert!(!sshd.log().contains("Accepted publickey"), "{}", sshd.log());
}

#[tokio::test]
async fn authentication_failures_and_bad_keys_are_clear() {
    let sshd = Sshd::start("");
    let stranger = sshd.dir.path().join("stranger");
    common::keygen(&stranger, &["-t", "ed25519"]);
    let mut e = session_env(&sshd);
    e.set("SSH_PRIVATE_KEY", stranger.to_str().unwrap());
    let (status, _, _) = start(&backend(), SSH_CMD, &["true"], e, Mode::Exec)
        .finish()
        .await;
    assert_eq!(status.code, 254, "{status:?}");
    assert!(
        status.message.contains("refused public-key authentication"),
        "{status:?}"
    );
    assert!(
        status.message.contains(&format!("{:?}", sshd.user)),
        "{status:?}"
    );

    // Garbage key text: exit 2, and the message does not repeat the text.
    let mut e = session_env(&sshd);
    let bogus = "-----BEGIN OPENSSH PRIVATE KEY-----\nc2VjcmV0LXNlY3JldC1zZWNyZXQ=\n-----END OPENSSH PRIVATE KEY-----\n";
    e.set("SSH_PRIVATE_KEY", bogus);
    let (status, _, _) = start(&backend(), SSH_CMD, &["true"], e, Mode::Exec)
        .finish()
        .await;
    assert_eq!(status.code, 2, "{status:?}");
    assert!(status.message.contains("invalid private key"), "{status:?}");
    assert!(!status.message.contains("c2VjcmV0"), "{status:?}");

    // An unset key variable names the variable.
    let mut e = session_env(&sshd);
    e.set("SSH_PRIVATE_KEY", "");
    let (status, _, _) = start(&backend(), SSH_CMD, &["true"], e, Mode::Exec)
        .finish()
        .await;
    assert_eq!(status.code, 2, "{status:?}");
    assert!(status.message.contains("SSH_PRIVATE_KEY"), "{status:?}");
}

#[tokio::test]
async fn rsa_key_as_pem_text_signs_with_sha2() {
    let sshd = Sshd::start("");
    let rsa = sshd.dir.path().join("client_rsa");
    common::keygen(&rsa, &["-t", "rsa", "-b", "2048", "-m", "PEM"]);
    let rsa_pub = std::fs::read_to_string(rsa.with_extension("pub")).unwrap();
    std::fs::write(sshd.dir.path().join("authorized_keys"), rsa_pub).unwrap();
    let pem = std::fs::read_to_string(&rsa).unwrap();
    assert!(pem.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    let mut e = session_env(&sshd);
    e.set("SSH_PRIVATE_KEY", pem);
    let s = start(&backend(), SSH_CMD, &["echo rsa-ok"], e, Mode::Exec);
    s.send(Input::Eof).await;
    let (status, out, _) = s.finish().await;
    assert_eq!(status.code, 0, "{status:?} log={}", sshd.log());
    assert_eq!(out, b"rsa-ok\n");
    assert!(
        sshd.log().contains("Accepted publickey") && sshd.log().contains("RSA"),
        "{}",
        sshd.log()
    );
}

#[tokio::test]
async fn cancellation_ends_the_remote_command() {
    let sshd = Sshd::start("");
    // Without a PTY (OpenSSH refuses signal requests for root logins, which these tests
    // use): the channel closes, so the command's next write fails and it ends.
    let marker = format!("tick-{}-{}", sshd.port, std::process::id());
    let command = format!("echo started; while :; do echo {marker}; sleep 0.2; done");
    let mut s = start(
        &backend(),
        SSH_CMD,
        &[&command],
        session_env(&sshd),
        Mode::Exec,
    );
    s.wait_stdout(&marker, Duration::from_secs(15)).await;
    assert!(common::process_running(&marker));
    s.cancel.cancel();
    let started = std::time::Instant::now();
    let (status, _, _) = s.finish().await;
    eprintln!("exec cancellation took {:?}", started.elapsed());
    assert_eq!(
        (status.code, status.message.as_str()),
        (254, "session closed")
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    common::wait_gone(&marker, Duration::from_secs(5), &sshd).await;

    // Under a PTY: closing the channel hangs the terminal up.
    let sleeper = format!("{}.{}", sshd.port, std::process::id() % 1000);
    let command = format!("echo started; exec sleep {sleeper}");
    let mut s = start(
        &backend(),
        SSH_CMD,
        &[&command],
        session_env(&sshd),
        Mode::Terminal { size: term(80, 24) },
    );
    s.wait_stdout("started", Duration::from_secs(15)).await;
    let pattern = format!("sleep {sleeper}");
    assert!(common::process_running(&pattern));
    s.cancel.cancel();
    let started = std::time::Instant::now();
    let (status, _, _) = s.finish().await;
    eprintln!("terminal cancellation took {:?}", started.elapsed());
    assert_eq!(
        (status.code, status.message.as_str()),
        (254, "session closed")
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    common::wait_gone(&pattern, Duration::from_secs(5), &sshd).await;
}

#[tokio::test]
async fn a_connection_lost_without_status_is_254_never_0() {
    let sshd = Sshd::start("");
    // The command kills its own sshd session process: the channel ends with no status.
    let s = start(
        &backend(),
        SSH_CMD,
        &["kill -9 $PPID"],
        session_env(&sshd),
        Mode::Exec,
    );
    s.send(Input::Eof).await;
    let (status, _, _) = s.finish().await;
    assert_eq!(status.code, 254, "{status:?}");
    assert!(
        status.message.contains("without an exit status"),
        "{status:?}"
    );
}

#[tokio::test]
async fn max_sessions_refusal_is_a_clean_error() {
    let sshd = Sshd::start("MaxSessions 0");
    let (status, out, _) = start(
        &backend(),
        SSH_CMD,
        &["true"],
        session_env(&sshd),
        Mode::Exec,
    )
    .finish()
    .await;
    assert_eq!(status.code, 254, "{status:?}");
    assert!(status.message.contains("MaxSessions"), "{status:?}");
    assert!(out.is_empty());
}

#[tokio::test]
async fn exec_without_command_feeds_stdin_to_the_shell() {
    let sshd = Sshd::start("");
    let s = start(&backend(), SSH_CMD, &[], session_env(&sshd), Mode::Exec);
    s.send(Input::Data(Bytes::from_static(
        b"echo from-script\nexit 7\n",
    )))
    .await;
    s.send(Input::Eof).await;
    let (status, out, _) = s.finish().await;
    assert_eq!(status.code, 7, "{status:?}");
    assert_eq!(String::from_utf8_lossy(&out).trim(), "from-script");
}

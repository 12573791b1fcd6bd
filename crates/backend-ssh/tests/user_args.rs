//! Issue 13, findings 3 and 4: a user's arguments and `-e` variables cannot override what an
//! ssh connection set (login user, port, key, host-key policy, destination), key and
//! known_hosts files are read only as small regular files, and a key is never echoed in a
//! message. Every attack runs through `SshBackend::run` against a real OpenSSH sshd.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

mod common;

use backend::{ExitStatus, Input, Mode};
use backend_ssh::{SshBackend, SshConfig};
use base64::Engine as _;
use common::{Sshd, env, start};

const SSH_CMD: &[&str] = &["ssh", "$SSH_URI", "-i", "$SSH_PRIVATE_KEY"];

fn backend() -> SshBackend {
    let mut config = SshConfig::from_agent_env();
    config.known_hosts = None;
    SshBackend::new(config)
}

fn session_env(sshd: &Sshd) -> backend::SessionEnv {
    env(&[
        ("SSH_URI", &sshd.uri()),
        ("SSH_PRIVATE_KEY", sshd.client_key.to_str().unwrap()),
        ("SSH_HOST_KEY", sshd.host_pub.trim()),
    ])
}

async fn run(
    command: &[&str],
    args: &[&str],
    env: backend::SessionEnv,
) -> (ExitStatus, String, String) {
    let s = start(&backend(), command, args, env, Mode::Exec);
    s.send(Input::Eof).await;
    let (status, out, err) = s.finish().await;
    (
        status,
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

/// The number of connections sshd accepted so far (its VERBOSE log has one line each).
fn connections(sshd: &Sshd) -> usize {
    sshd.log().matches("Connection from 127.0.0.1").count()
}

#[tokio::test]
async fn user_arguments_cannot_override_the_connections_user_port_or_key() {
    let sshd = Sshd::start("");
    let port = sshd.port.to_string();
    let other_port = (sshd.port ^ 1).to_string();
    let attacks: Vec<Vec<&str>> = vec![
        vec!["-l", "root", "id"],
        vec!["-lroot", "id"],
        vec!["-o", "User=root", "id"],
        vec!["-oUser=root", "id"],
        vec!["-p", &other_port, "id"],
        vec!["-o", "Port=22", "id"],
        vec!["-i", "/etc/passwd", "id"],
        vec!["-i", "/dev/zero", "id"],
        vec!["-o", "IdentityFile=/etc/ssh/ssh_host_ed25519_key", "id"],
    ];
    for attack in attacks {
        let before = connections(&sshd);
        let (status, out, _) = run(SSH_CMD, &attack, session_env(&sshd)).await;
        assert_eq!(status.code, 2, "{attack:?}: {status:?}");
        assert!(
            status.message.contains("set by the connection")
                || status
                    .message
                    .contains("the private key is the connection's"),
            "{attack:?}: {}",
            status.message
        );
        assert!(out.is_empty(), "{attack:?} ran: {out}");
        assert_eq!(
            connections(&sshd),
            before,
            "{attack:?}: nothing may be dialled"
        );
    }
    // Ordinary remote commands and the gaps the connection left open still work.
    let (status, out, _) = run(SSH_CMD, &["echo", "-p", &port, "ok"], session_env(&sshd)).await;
    assert_eq!(status, ExitStatus::success(), "{status:?}");
    assert_eq!(out, format!("-p {port} ok\n"));
    let (status, out, _) = run(
        &["ssh", "-i", "$SSH_PRIVATE_KEY", "-p", &port],
        &[&format!("{}@127.0.0.1", sshd.user), "echo", "open"],
        env(&[
            ("SSH_PRIVATE_KEY", sshd.client_key.to_str().unwrap()),
            ("SSH_HOST_KEY", sshd.host_pub.trim()),
        ]),
    )
    .await;
    assert_eq!(status, ExitStatus::success(), "{status:?}");
    assert_eq!(out, "open\n");
}

#[tokio::test]
async fn with_ssh_uri_the_users_first_word_is_a_command_not_another_host() {
    let sshd = Sshd::start("");
    let e = || {
        let mut e = session_env(&sshd);
        e.set_from_connection("SSH_PRIVATE_KEY", sshd.client_key.to_str().unwrap());
        e
    };
    // `ssh` alone: the destination is the connection's SSH_URI.
    let (status, out, _) = run(&["ssh"], &["echo", "pinned"], e()).await;
    assert_eq!(status, ExitStatus::success(), "{status:?}");
    assert_eq!(out, "pinned\n");
    let before = connections(&sshd);
    let (status, _, _) = run(&["ssh"], &["-l", "root", "id"], e()).await;
    assert_eq!(status.code, 2, "{status:?}");
    assert_eq!(connections(&sshd), before);
}

#[tokio::test]
async fn ssh_policy_variables_count_only_from_the_connection() {
    let sshd = Sshd::start("");
    // The connection gives the key and destination but pins no host key; a user who brings
    // their own pin (or known_hosts, or URI, or key) must not make the session trust it.
    let mut e = env(&[
        ("SSH_URI", &sshd.uri()),
        ("SSH_PRIVATE_KEY", sshd.client_key.to_str().unwrap()),
    ]);
    e.set_from_client("SSH_HOST_KEY", sshd.host_pub.trim());
    let before = connections(&sshd);
    let (status, out, _) = run(SSH_CMD, &["echo", "trusted"], e).await;
    assert_ne!(status.code, 0, "{status:?}");
    assert!(
        status.message.contains("no host keys to verify"),
        "{}",
        status.message
    );
    assert!(out.is_empty());
    assert_eq!(connections(&sshd), before);

    let mut e = env(&[("SSH_HOST_KEY", sshd.host_pub.trim())]);
    e.set_from_client("SSH_URI", sshd.uri());
    e.set_from_client("SSH_PRIVATE_KEY", sshd.client_key.to_str().unwrap());
    let (status, _, _) = run(&["ssh"], &[], e).await;
    assert_eq!(status.code, 2, "{status:?}");
    assert!(
        status.message.contains("no destination"),
        "{}",
        status.message
    );
}

#[tokio::test]
async fn key_and_known_hosts_files_must_be_small_regular_files() {
    let sshd = Sshd::start("");
    let mut e = session_env(&sshd);
    e.set_from_connection("SSH_PRIVATE_KEY", "/dev/zero");
    let (status, _, _) = run(SSH_CMD, &["id"], e).await;
    assert_eq!(status.code, 2, "{status:?}");
    assert!(
        status.message.contains("not a regular file"),
        "{}",
        status.message
    );
    let big = sshd.dir.path().join("big_key");
    std::fs::write(&big, vec![b'A'; 1024 * 1024]).unwrap();
    let mut e = session_env(&sshd);
    e.set_from_connection("SSH_PRIVATE_KEY", big.to_str().unwrap());
    let (status, _, _) = run(SSH_CMD, &["id"], e).await;
    assert_eq!(status.code, 2, "{status:?}");
    assert!(status.message.contains("larger than"), "{}", status.message);

    let mut e = env(&[
        ("SSH_URI", &sshd.uri()),
        ("SSH_PRIVATE_KEY", sshd.client_key.to_str().unwrap()),
    ]);
    e.set_from_connection("SSH_KNOWN_HOSTS", "/dev/zero");
    let (status, _, _) = run(SSH_CMD, &["id"], e).await;
    assert_eq!(status.code, 2, "{status:?}");
    assert!(
        status.message.contains("not a regular file"),
        "{}",
        status.message
    );
}

#[tokio::test]
async fn a_base64_wrapped_key_works_and_a_bad_key_is_never_echoed() {
    let sshd = Sshd::start("");
    let pem = std::fs::read_to_string(&sshd.client_key).unwrap();
    for wrapped in [
        base64::engine::general_purpose::STANDARD.encode(&pem),
        // `base64` without -w0 wraps at 76 columns.
        base64::engine::general_purpose::STANDARD
            .encode(&pem)
            .as_bytes()
            .chunks(76)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join("\n"),
    ] {
        let mut e = session_env(&sshd);
        e.set_from_connection("SSH_PRIVATE_KEY", wrapped.as_str());
        let (status, out, _) = run(SSH_CMD, &["echo", "b64"], e).await;
        assert_eq!(status, ExitStatus::success(), "{status:?}");
        assert_eq!(out, "b64\n");
    }
    // A secret that is no key at all (a typo, the wrong variable, a key with its armour
    // stripped) must not be echoed in the close message.
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .join("\n");
    for secret in [
        body.clone(),
        body.replace('\n', ""),
        "hunter2-not-a-key-but-secret".to_owned(),
    ] {
        let mut e = session_env(&sshd);
        e.set_from_connection("SSH_PRIVATE_KEY", secret.as_str());
        let (status, _, err) = run(SSH_CMD, &["id"], e).await;
        assert_eq!(status.code, 2, "{status:?}");
        for piece in secret.lines().filter(|l| l.len() >= 8) {
            assert!(
                !status.message.contains(piece) && !err.contains(piece),
                "key material echoed: {}",
                status.message
            );
        }
        assert!(
            status.message.contains("SSH_PRIVATE_KEY"),
            "{}",
            status.message
        );
    }
}

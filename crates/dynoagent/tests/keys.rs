//! `dynoagent keys generate` and `dynoagent keys register` against the Heroku emulator: the
//! key file is new and 0600, registering is idempotent, secrets come only from the environment
//! and are never printed, and a missing setting is a one-line error naming it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn keys(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dynoagent"));
    cmd.arg("keys")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run dynoagent");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_then_register_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("account-key");
    let path = file.to_str().unwrap();
    let made = keys(&["generate", "--out", path], &[]);
    assert_eq!(made.code, 0, "{}", made.stderr);
    assert!(
        made.stdout.starts_with("ssh-ed25519 AAAA"),
        "{}",
        made.stdout
    );
    assert!(!made.stdout.contains("PRIVATE KEY"), "{}", made.stdout);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // Never overwritten.
    let again = keys(&["generate", "--out", path], &[]);
    assert_eq!(again.code, 1);
    assert!(
        again.stderr.contains("never overwritten"),
        "{}",
        again.stderr
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);

    let sim = herokusim::Sim::start(herokusim::SimConfig {
        ssh_port: Some(0),
        ..herokusim::SimConfig::demo()
    })
    .await
    .unwrap();
    let env = [
        ("HEROKU_API_KEY", sim.api_key()),
        ("HEROKU_SSH_KEY", text.as_str()),
        ("DYNOAGENT_HEROKU_API_URL", sim.api_url()),
        ("HEROKU_APP_NAME", "my-dynoagent"),
    ];
    // `keys` blocks this worker while the emulator serves on the other one.
    let first = keys(&["register"], &env);
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert!(
        first.stdout.starts_with("registered SHA256:"),
        "{}",
        first.stdout
    );
    assert!(
        first.stdout.contains("dynoagent@my-dynoagent"),
        "{}",
        first.stdout
    );
    // The key as a file path works too, and registering twice changes nothing.
    let mut by_path: Vec<(&str, &str)> = env
        .iter()
        .copied()
        .filter(|(k, _)| *k != "HEROKU_SSH_KEY")
        .collect();
    by_path.push(("HEROKU_SSH_KEY", path));
    let second = keys(&["register", "--comment", "other"], &by_path);
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert!(
        second.stdout.contains("already registered"),
        "{}",
        second.stdout
    );
    let registered = sim.account_keys();
    assert_eq!(registered.len(), 1);
    assert_eq!(registered[0].comment, "dynoagent@my-dynoagent");
    for out in [&first, &second] {
        assert!(!out.stdout.contains(sim.api_key()) && !out.stderr.contains(sim.api_key()));
        assert!(!out.stdout.contains("PRIVATE KEY") && !out.stderr.contains("PRIVATE KEY"));
    }
    sim.shutdown().await;
}

#[test]
fn register_without_its_settings_names_what_is_missing() {
    let none = keys(&["register"], &[]);
    assert_eq!(none.code, 1);
    assert_eq!(none.stderr.lines().count(), 1, "{}", none.stderr);
    assert!(
        none.stderr.contains("HEROKU_API_KEY is not set"),
        "{}",
        none.stderr
    );
    let no_key = keys(&["register"], &[("HEROKU_API_KEY", "k-hunter2")]);
    assert!(
        no_key.stderr.contains("HEROKU_SSH_KEY is not set"),
        "{}",
        no_key.stderr
    );
    let bad = keys(
        &["register"],
        &[
            ("HEROKU_API_KEY", "k-hunter2"),
            ("HEROKU_SSH_KEY", "not-a-key-hunter3"),
        ],
    );
    assert_eq!(bad.code, 1);
    assert!(bad.stderr.contains("HEROKU_SSH_KEY"), "{}", bad.stderr);
    assert!(!bad.stderr.contains("hunter"), "{}", bad.stderr);
}

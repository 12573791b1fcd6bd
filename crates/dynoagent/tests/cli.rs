//! The binary's start-up contract: a missing or malformed `HOOP_KEY` stops it at once with a
//! one-line error that names the variable and never shows the secret.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn run(env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dynoagent"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run dynoagent");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn missing_hoop_key_is_a_one_line_error() {
    let (code, stderr) = run(&[]);
    assert_eq!(code, 2);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("HOOP_KEY is not set"), "{stderr}");
}

#[test]
fn malformed_hoop_key_names_the_variable_without_the_secret() {
    for bad in [
        "grpc://agent:hunter2-secret@127.0.0.1",
        "grpc://agent:hunter2-secret@127.0.0.1:1?mode=embedded",
        "nonsense hunter2-secret",
    ] {
        let (code, stderr) = run(&[("HOOP_KEY", bad)]);
        assert_eq!(code, 2, "{bad}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("HOOP_KEY is malformed"), "{stderr}");
        assert!(!stderr.contains("hunter2"), "secret leaked: {stderr}");
    }
}

#[test]
fn version_prints_and_exits_zero() {
    let out = Command::new(env!("CARGO_BIN_EXE_dynoagent"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("dynoagent "));
}

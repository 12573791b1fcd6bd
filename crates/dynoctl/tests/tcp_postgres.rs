//! `dynoctl connect` on a `tcp` connection (issue 16) with real peers: a PostgreSQL server
//! started by the test on 127.0.0.1 (its own data directory), reached by the real `psql`
//! through the `dynoctl` binary's local listener → dynogw → the real agent → PostgreSQL.
//!
//! PostgreSQL comes from Debian's `postgresql` package (`scripts/test` installs it); without it
//! the test fails and says how to install it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_debug_implementations
)]

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use agent::{Agent, AgentConfig, Router};
use dynogw::{AgentDef, ConnectionDef, Gateway, GatewayConfig};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

mod common;
use common::WAIT;

const BIN: &str = env!("CARGO_BIN_EXE_dynoctl");
const INSTALL_HINT: &str = "PostgreSQL is required for this test and was not found: install it with `apt-get install -y postgresql` (scripts/test does)";

/// The directory with initdb/pg_ctl/postgres.
fn pg_bin() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect(INSTALL_HINT)
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").is_file())
        .collect();
    found.sort();
    found.pop().expect(INSTALL_HINT)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A PostgreSQL server on 127.0.0.1 in a temporary directory, stopped on drop.
struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    as_postgres: bool,
    _dir: tempfile::TempDir,
}

impl Postgres {
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            // initdb and postgres refuse to run as root.
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn start() -> Postgres {
        let bin = pg_bin();
        let dir = tempfile::tempdir().unwrap();
        let as_postgres = nix::unistd::geteuid().is_root();
        if as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success(), "chown for the postgres user");
        }
        let data = dir.path().join("data");
        let pg = Postgres {
            bin,
            data,
            port: free_port(),
            as_postgres,
            _dir: dir,
        };
        let out = pg
            .command("initdb")
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "-D"])
            .arg(&pg.data)
            .output()
            .unwrap();
        assert!(out.status.success(), "initdb: {out:?}");
        let sockets = pg.data.parent().unwrap().to_path_buf();
        let out = pg
            .command("pg_ctl")
            .arg("-D")
            .arg(&pg.data)
            .arg("-l")
            .arg(pg.data.parent().unwrap().join("log"))
            .arg("-o")
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1",
                pg.port,
                sockets.display()
            ))
            .args(["-w", "-t", "30", "start"])
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_ctl start: {out:?}");
        pg
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

/// `psql` on 127.0.0.1:`port` running `args`, with `stdin`; returns stdout (must succeed).
async fn psql(port: u16, args: &[&str], stdin: &[u8]) -> Vec<u8> {
    let mut child = tokio::process::Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .args(["-d", "postgres", "-X", "-v", "ON_ERROR_STOP=1"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("psql (Debian package postgresql-client)");
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = tokio::spawn(async move {
        let _ = input.write_all(&data).await;
    });
    let out = tokio::time::timeout(WAIT * 6, child.wait_with_output())
        .await
        .expect("psql finished in time")
        .unwrap();
    let _ = writer.await;
    assert!(
        out.status.success(),
        "psql {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_works_through_dynoctl_connect() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let secret = dynogw::generate_secret();
    let gw = Gateway::start(GatewayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        audit_db: dir.path().join("audit.db"),
        client_tokens: vec!["tcp-token".into()],
        agents: vec![AgentDef {
            name: "tcp".into(),
            secret: Some(secret.clone()),
            ..Default::default()
        }],
        connections: vec![ConnectionDef {
            name: "pg".into(),
            agent: "tcp".into(),
            connection_type: "tcp".into(),
            secrets: BTreeMap::from([
                ("envvar:HOST".to_owned(), "127.0.0.1".to_owned()),
                ("envvar:PORT".to_owned(), pg.port.to_string()),
            ]),
            ..Default::default()
        }],
        ..GatewayConfig::default()
    })
    .await
    .unwrap();
    let env = HashMap::from([(
        "HOOP_KEY".to_owned(),
        dynogw::agent_dsn("tcp", &secret, gw.addr()),
    )]);
    let config = AgentConfig::from_sources(&env, agent::VERSION).unwrap();
    let router = Router::standard(&config).unwrap();
    let agent_stop = CancellationToken::new();
    let agent = tokio::spawn(Agent::new(config, router, agent_stop.clone()).run());
    assert!(gw.wait_for_agent("tcp", WAIT).await);

    // `dynoctl connect pg --port 0` prints the address it listens on.
    let mut ctl = tokio::process::Command::new(BIN)
        .args(["connect", "pg", "--port", "0"])
        .env("DYNOCTL_GATEWAY", gw.addr().to_string())
        .env("DYNOCTL_TOKEN", "tcp-token")
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
            .expect("dynoctl printed its address in time")
            .unwrap()
            .expect("dynoctl ended before listening");
        port = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("port="))
            .and_then(|p| p.parse::<u16>().ok());
    }
    let port = port.unwrap();

    // A query returns its rows.
    let rows = psql(port, &["-Atc", "select 40 + 2, 'through-the-tunnel'"], b"").await;
    assert_eq!(rows, b"42|through-the-tunnel\n");

    // Two sessions on one tunnel at once: the first stays connected while the second runs.
    let mut first = tokio::process::Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .args(["-d", "postgres", "-X", "-At"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut first_in = first.stdin.take().unwrap();
    let mut first_out = tokio::io::BufReader::new(first.stdout.take().unwrap()).lines();
    first_in.write_all(b"select 'first-up';\n").await.unwrap();
    let line = tokio::time::timeout(WAIT, first_out.next_line())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(line.as_deref(), Some("first-up"));
    let second = psql(
        port,
        &[
            "-Atc",
            "select count(*) from pg_stat_activity where backend_type = 'client backend'",
        ],
        b"",
    )
    .await;
    assert_eq!(second, b"2\n", "both sessions are connected at once");
    first_in
        .write_all(b"select 'first-still-here';\n\\q\n")
        .await
        .unwrap();
    let line = tokio::time::timeout(WAIT, first_out.next_line())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(line.as_deref(), Some("first-still-here"));
    tokio::time::timeout(WAIT, first.wait())
        .await
        .unwrap()
        .unwrap();

    // A 50 MB COPY round-trips byte-exact.
    let mut data = Vec::with_capacity(51 << 20);
    let mut i = 0u64;
    while data.len() < 50 << 20 {
        i += 1;
        let line = format!(
            "{i}\t{}\n",
            format!("{:016x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).repeat(60)
        );
        data.extend_from_slice(line.as_bytes());
    }
    psql(port, &["-c", "create table blob (n bigint, t text)"], b"").await;
    psql(port, &["-c", "\\copy blob from stdin"], &data).await;
    let back = psql(
        port,
        &["-c", "\\copy (select * from blob order by n) to stdout"],
        b"",
    )
    .await;
    assert_eq!(back.len(), data.len());
    assert!(back == data, "the COPY came back different");

    // Ctrl-C ends dynoctl and the session.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(ctl.id().unwrap()).unwrap()),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = tokio::time::timeout(WAIT, ctl.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    let mut err = String::new();
    let _ = ctl.stderr.take().unwrap().read_to_string(&mut err).await;

    agent_stop.cancel();
    tokio::time::timeout(WAIT, agent).await.unwrap().unwrap();
    gw.flush_audit().await;
    // The input (psql's bytes, the COPY data among them) is in the audit, as hoop records it.
    let store = dynogw::audit::AuditStore::open(gw.audit_db()).unwrap();
    let sessions = store.list_sessions().unwrap();
    assert_eq!(sessions.len(), 1, "one tcp session: {err}");
    let input: usize = store
        .events(&sessions[0].id)
        .unwrap()
        .iter()
        .filter(|e| e.kind == dynogw::audit::EventKind::Input)
        .map(|e| e.data.len())
        .sum();
    assert!(input >= data.len(), "{input} bytes of input recorded");
    gw.shutdown().await;
    drop(pg);
}

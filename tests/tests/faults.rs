//! The fault suite (issue 8): the agent under a dying gateway, dropped rendezvous and SSH
//! streams, Heroku API rate-limit and server-error storms, SIGTERM with 100 live sessions, a
//! flood of malformed packets, and (issue 14) cancellation in the middle of each backend's
//! phases: a rendezvous reset mid-write, a 1 MiB paste nobody reads, a cancel mid-channel, a
//! close while a dyno create is in flight; followed by a scan of every log line the suite
//! produced for secrets.
//!
//! This is a `harness = false` test binary because the secret scan needs every log line of
//! every scenario: `main` installs one process-wide tracing subscriber that writes into memory
//! (`LogCapture`), appends the real binary's output to it, runs the scenarios one after another
//! (each on a fresh tokio runtime, under its own time limit), prints `ok`/`FAILED` for each,
//! then scans everything for the Heroku API keys, the DSN secrets and private keys, and exits
//! non-zero on any failure. Positional arguments select scenarios by substring; `--list` lists
//! them; `DYNOAGENT_FAULTS_LOG=<file>` also writes the captured logs to a file. Waiting is always on an event or a polled condition with a deadline; the fixed delays
//! the agent itself must respect (reconnect backoff, `Retry-After`) are measured, not slept.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    // The suite reports its progress on stdout like libtest does.
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dynoagent_tests::faults::{
    LogCapture, RawAgentStream, RawGateway, Relay, Secret, attempts, dynoagent_binary,
    find_secrets, is_stale, malformed_flood, wait_until,
};
use dynoagent_tests::{AgentStream, FakeGateway, Outcome, Params, SessionReplies, Tag, TestAgent};
use herokusim::{Faults, RunningSim, Sim, SimConfig};
use hoop_wire::{AgentPacket, ClientPacket, SessionId, TermSize};

/// Crates whose logs the suite captures at debug level (everything else at warn), like the
/// agent with `LOG_LEVEL=debug`. `RUST_LOG` replaces the whole directive.
const LOG_FILTER: &str = "warn,dynoagent=debug,agent=debug,gateway_link=debug,hoop_wire=debug,\
hoop_gob=debug,heroku_api=debug,backend=debug,backend_local=debug,backend_run=debug,\
backend_ssh=debug,backend_psexec=debug,herokusim=debug,dynoagent_tests=debug,faults=debug";

// ---------------------------------------------------------------------------------------------
// The harness
// ---------------------------------------------------------------------------------------------

/// What every scenario shares: the log capture, the secrets to scan for, the process tags to
/// clean up after, and notes for the report.
struct Suite {
    logs: LogCapture,
    secrets: Mutex<Vec<Secret>>,
    tags: Mutex<Vec<Tag>>,
    notes: Mutex<Vec<String>>,
}

impl Suite {
    fn secret(&self, label: &str, value: &str) {
        self.secrets.lock().unwrap().push(Secret {
            label: label.to_owned(),
            value: value.to_owned(),
        });
    }

    /// A fresh process tag, remembered so that a failed scenario's processes are killed.
    fn tag(&self) -> Tag {
        let tag = Tag::new();
        self.tags.lock().unwrap().push(tag.clone());
        tag
    }

    fn note(&self, text: String) {
        self.notes.lock().unwrap().push(text);
    }
}

type Run = fn(Arc<Suite>) -> Pin<Box<dyn Future<Output = ()> + Send>>;

struct Scenario {
    name: &'static str,
    limit: Duration,
    run: Run,
}

fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "gateway_killed_and_restarted_mid_session",
            limit: Duration::from_secs(60),
            run: |s| Box::pin(gateway_killed_and_restarted_mid_session(s)),
        },
        Scenario {
            name: "rendezvous_and_ssh_proxy_dropped_mid_stream",
            limit: Duration::from_secs(60),
            run: |s| Box::pin(rendezvous_and_ssh_proxy_dropped_mid_stream(s)),
        },
        Scenario {
            name: "heroku_api_429_and_5xx_storms",
            limit: Duration::from_secs(60),
            run: |s| Box::pin(heroku_api_429_and_5xx_storms(s)),
        },
        Scenario {
            name: "sigterm_with_100_live_sessions",
            limit: Duration::from_secs(75),
            run: |s| Box::pin(sigterm_with_100_live_sessions(s)),
        },
        Scenario {
            name: "malformed_flood_beside_a_healthy_session",
            limit: Duration::from_secs(60),
            run: |s| Box::pin(malformed_flood_beside_a_healthy_session(s)),
        },
        Scenario {
            name: "user_boundary_attacks_leak_nothing",
            limit: Duration::from_secs(60),
            run: |s| Box::pin(user_boundary_attacks_leak_nothing(s)),
        },
        Scenario {
            name: "blackholed_gateway_link",
            limit: Duration::from_secs(60),
            run: |s| Box::pin(blackholed_gateway_link(s)),
        },
        Scenario {
            name: "run_rendezvous_reset_mid_write",
            limit: Duration::from_secs(60),
            run: |s| Box::pin(run_rendezvous_reset_mid_write(s)),
        },
        Scenario {
            name: "local_terminal_1mib_paste_unread",
            limit: Duration::from_secs(60),
            run: |s| Box::pin(local_terminal_1mib_paste_unread(s)),
        },
        Scenario {
            name: "psexec_cancel_mid_channel",
            limit: Duration::from_secs(60),
            run: |s| Box::pin(psexec_cancel_mid_channel(s)),
        },
        Scenario {
            name: "run_create_cancelled_mid_flight",
            limit: Duration::from_secs(60),
            run: |s| Box::pin(run_create_cancelled_mid_flight(s)),
        },
        Scenario {
            name: "fir_attach_dropped_mid_output",
            limit: Duration::from_secs(60),
            run: |s| Box::pin(fir_attach_dropped_mid_output(s)),
        },
    ]
}

fn main() -> ExitCode {
    let args = Args::parse(std::env::args().skip(1));
    let all = scenarios();
    if args.list {
        for s in &all {
            println!("{}: test", s.name);
        }
        println!("secrets_scan: test");
        return ExitCode::SUCCESS;
    }
    let selected: Vec<Scenario> = all.into_iter().filter(|s| args.selects(s.name)).collect();
    if selected.is_empty() {
        // Filtered out (e.g. `cargo test --workspace other_test`), as libtest reports it.
        println!("\nrunning 0 fault scenarios\n");
        return ExitCode::SUCCESS;
    }

    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| LOG_FILTER.to_owned());
    let logs = match LogCapture::install(&filter) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot install the log capture: {e}");
            return ExitCode::FAILURE;
        }
    };
    let suite = Arc::new(Suite {
        logs,
        secrets: Mutex::new(Vec::new()),
        tags: Mutex::new(Vec::new()),
        notes: Mutex::new(Vec::new()),
    });

    // A positive control for the scan: a value logged on purpose must be found.
    let canary = unique("log-capture-canary");
    tracing::info!(target: "faults", canary = %canary, "log capture self-check");

    println!("\nrunning {} fault scenarios", selected.len());
    let suite_started = Instant::now();
    let mut failures: Vec<(String, String)> = Vec::new();
    for scenario in &selected {
        let started = Instant::now();
        let mark = suite.logs.mark();
        let result = run_scenario(&suite, scenario);
        let took = started.elapsed().as_secs_f64();
        let notes: Vec<String> = suite.notes.lock().unwrap().drain(..).collect();
        match result {
            Ok(()) => println!("scenario {} ... ok ({took:.1} s)", scenario.name),
            Err(why) => {
                println!("scenario {} ... FAILED ({took:.1} s)", scenario.name);
                let tail: Vec<String> = suite
                    .logs
                    .text_since(mark)
                    .lines()
                    .rev()
                    .take(60)
                    .map(str::to_owned)
                    .collect();
                let tail: Vec<String> = tail.into_iter().rev().collect();
                failures.push((
                    scenario.name.to_owned(),
                    format!("{why}\n--- last log lines ---\n{}", tail.join("\n")),
                ));
            }
        }
        for note in notes {
            println!("    {note}");
        }
    }

    let started = Instant::now();
    let scan = secrets_scan(&suite, &canary);
    if let Some(path) = std::env::var_os("DYNOAGENT_FAULTS_LOG")
        && let Err(e) = std::fs::write(&path, suite.logs.text())
    {
        eprintln!("cannot write the captured logs to {}: {e}", path.display());
    }
    match scan {
        Ok(summary) => println!(
            "scenario secrets_scan ... ok ({:.1} s)\n    {summary}",
            started.elapsed().as_secs_f64()
        ),
        Err(why) => {
            println!("scenario secrets_scan ... FAILED");
            failures.push(("secrets_scan".to_owned(), why));
        }
    }

    for (name, why) in &failures {
        println!("\n---- {name} ----\n{why}");
    }
    let total = selected.len() + 1;
    println!(
        "\nfault suite: {}. {} passed; {} failed; finished in {:.1} s\n",
        if failures.is_empty() { "ok" } else { "FAILED" },
        total - failures.len(),
        failures.len(),
        suite_started.elapsed().as_secs_f64()
    );
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The command line, read the way libtest reads it where it matters: positional arguments are
/// name filters, `--skip NAME` excludes, `--ignored` selects nothing (no scenario is ignored),
/// `--list` lists; other flags are accepted and ignored, with their values.
#[derive(Default)]
struct Args {
    filters: Vec<String>,
    skips: Vec<String>,
    exact: bool,
    ignored: bool,
    list: bool,
}

impl Args {
    fn parse(raw: impl Iterator<Item = String>) -> Args {
        const TAKES_VALUE: &[&str] = &[
            "--test-threads",
            "--format",
            "--color",
            "--logfile",
            "--shuffle-seed",
            "-Z",
        ];
        let mut args = Args::default();
        let mut raw = raw.peekable();
        while let Some(arg) = raw.next() {
            match arg.as_str() {
                "--list" => args.list = true,
                "--exact" => args.exact = true,
                "--ignored" => args.ignored = true,
                "--skip" => args.skips.extend(raw.next()),
                a if TAKES_VALUE.contains(&a) => {
                    raw.next();
                }
                a if a.starts_with('-') => {}
                _ => args.filters.push(arg),
            }
        }
        args
    }

    fn selects(&self, name: &str) -> bool {
        let matches = |f: &String| {
            if self.exact {
                name == f
            } else {
                name.contains(f.as_str())
            }
        };
        !self.ignored
            && (self.filters.is_empty() || self.filters.iter().any(matches))
            && !self.skips.iter().any(|s| name.contains(s.as_str()))
    }
}

/// Runs one scenario on its own runtime under its time limit. Whatever it leaves behind
/// (tasks, tagged processes) is stopped before the next one starts, and reported.
fn run_scenario(suite: &Arc<Suite>, scenario: &Scenario) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot build a runtime: {e}"))?;
    let limit = scenario.limit;
    let task = (scenario.run)(Arc::clone(suite));
    let result = runtime.block_on(async move {
        let mut handle = tokio::spawn(task);
        match tokio::time::timeout(limit, &mut handle).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) if e.is_panic() => Err(panic_text(e.into_panic())),
            Ok(Err(e)) => Err(format!("the scenario task failed: {e}")),
            Err(_) => {
                handle.abort();
                Err(format!("timed out after {limit:?}"))
            }
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(10));
    // Backstop: a failed scenario may leave tagged processes behind; never leak them.
    let mut leftovers = Vec::new();
    for tag in suite.tags.lock().unwrap().drain(..) {
        for pid in tag.processes() {
            leftovers.push(pid);
            if let Ok(pid) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    match (result, leftovers.is_empty()) {
        (Ok(()), true) => Ok(()),
        (Ok(()), false) => Err(format!(
            "processes were left behind (now killed): {leftovers:?}"
        )),
        (Err(e), _) => Err(e),
    }
}

fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => payload
            .downcast::<&'static str>()
            .map(|s| (*s).to_owned())
            .unwrap_or_else(|_| "panic with a non-text payload".to_owned()),
    }
}

/// The last scenario: every captured log line (in-process agents, the emulator, the real
/// binary's stdout and stderr) is checked for every secret the scenarios registered, and for
/// PEM private-key armour. An empty or audit-free capture fails: the scan must see the logs.
fn secrets_scan(suite: &Suite, canary: &str) -> Result<String, String> {
    let text = suite.logs.text();
    let control = Secret {
        label: "canary".into(),
        value: canary.to_owned(),
    };
    if find_secrets(&text, &[control]).len() != 1 {
        return Err(
            "the scan did not find the canary logged on purpose: the capture or the scan is broken (is RUST_LOG hiding target `faults`?)".into(),
        );
    }
    let lines = text.lines().count();
    let audits = text.lines().filter(|l| l.contains("session ended")).count();
    if lines < 20 || audits == 0 {
        return Err(format!(
            "only {lines} log lines ({audits} session audit lines) were captured: the scan would prove nothing"
        ));
    }
    let mut secrets = suite.secrets.lock().unwrap().clone();
    let registered = secrets.len();
    secrets.push(Secret {
        label: "PEM private key armour".into(),
        value: "PRIVATE KEY-----".into(),
    });
    let found = find_secrets(&text, &secrets);
    if found.is_empty() {
        Ok(format!(
            "{lines} log lines ({} KiB, {audits} session audit lines) hold none of {registered} secrets nor private-key armour",
            text.len() / 1024
        ))
    } else {
        Err(format!(
            "{} log lines contain secrets:\n{}",
            found.len(),
            found.join("\n")
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------

/// Bound on any single wait in a scenario.
const WAIT: Duration = Duration::from_secs(20);

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// A fresh gateway agent name and DSN secret, registered for the scan.
fn gateway_credentials(suite: &Suite) -> (String, String) {
    let secret = unique("xagt-faults-secret");
    suite.secret("DSN secret", &secret);
    (unique("agent-faults"), secret)
}

/// The emulator with app `demo` (`web.1` up, Heroku Exec on) and a unique API key.
/// What most emulator scenarios start with: herokusim (and how many process groups it runs
/// idle), a fake gateway, an agent configured for both, and the agent's stream.
struct Rig {
    sim: RunningSim,
    baseline: usize,
    /// Dropping it stops the gateway: scenarios keep it bound (`gw: _gw`) to the end.
    gw: FakeGateway,
    agent: TestAgent,
    stream: AgentStream,
}

impl Rig {
    async fn start(suite: &Suite) -> Rig {
        let sim = start_sim(suite).await;
        let baseline = sim.live_process_groups().len();
        let (name, secret) = gateway_credentials(suite);
        let mut gw = FakeGateway::start(&name, &secret).await;
        let settings = sim_settings(&sim);
        let agent = TestAgent::start(&gw.dsn(), &refs(&settings));
        let stream = gw.next_agent().await;
        Rig {
            sim,
            baseline,
            gw,
            agent,
            stream,
        }
    }
}

async fn start_sim(suite: &Suite) -> RunningSim {
    let api_key = unique("HRKU-faults-key");
    suite.secret("Heroku API key", &api_key);
    // The exec-manager's Basic credentials are `app:key`, base64-encoded.
    suite.secret(
        "Heroku API key (Basic auth)",
        &dynoagent_tests::b64(format!("demo:{api_key}")),
    );
    let mut config = SimConfig {
        api_key,
        ssh_port: Some(0),
        ..SimConfig::demo()
    };
    // A Fir app: its one-off dynos attach over HTTPS + SSH with an account key.
    config.apps.push(herokusim::AppConfig {
        name: "firapp".into(),
        generation: herokusim::Generation::Fir,
        space: Some(herokusim::SpaceKind::Private),
        ..herokusim::AppConfig::default()
    });
    Sim::start(config).await.expect("start the Heroku emulator")
}

/// The agent settings that point the Heroku backends at `sim`.
fn sim_settings(sim: &RunningSim) -> Vec<(String, String)> {
    vec![
        ("DYNOAGENT_HEROKU_API_URL".into(), sim.api_url().into()),
        ("DYNOAGENT_HEROKU_EXEC_URL".into(), sim.exec_url().into()),
        (
            "DYNOAGENT_HEROKU_CA".into(),
            format!("file://{}", sim.ca_file().display()),
        ),
        (
            "DYNOAGENT_HEROKU_EXEC_SSH_PORT".into(),
            sim.ssh_port().to_string(),
        ),
    ]
}

fn refs(settings: &[(String, String)]) -> Vec<(&str, &str)> {
    settings
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

fn one_off_dynos(sim: &RunningSim) -> Vec<(String, String)> {
    dynoagent_tests::one_off_dynos(sim.dyno_states("demo"))
}

/// A `heroku run` session on app `demo`.
fn run_params(tag: &Tag, sim: &RunningSim, verb: &str, command: &str) -> Params {
    Params::new(&["heroku", "run", "--exit-code"], verb, tag)
        .args(&["--app", "demo", command])
        .env("envvar:HEROKU_API_KEY", sim.api_key())
}

/// A Heroku Exec session on `demo`'s `web.1` (`ps-exec.sh --app demo --dyno web.1`); the exec
/// input is the command.
fn psexec_params(tag: &Tag, sim: &RunningSim) -> Params {
    Params::new(&["ps-exec.sh"], "exec", tag)
        .args(&["--app", "demo", "--dyno", "web.1"])
        .env("envvar:HEROKU_API_KEY", sim.api_key())
}

async fn open(stream: &AgentStream, params: Params) -> (SessionId, SessionReplies) {
    let id = dynoagent_tests::sid();
    let mut replies = stream.watch_session(&id);
    stream.send(params.open(&id)).await;
    let ok = replies.next().await;
    assert!(
        matches!(ok, ClientPacket::SessionOpenOk { .. }),
        "expected ClientSessionOpenOK, got {ok:?}"
    );
    (id, replies)
}

async fn start_exec(stream: &AgentStream, id: &SessionId, stdin: &[u8]) {
    stream
        .send(AgentPacket::ExecWriteStdin {
            session_id: id.clone(),
            data: Bytes::copy_from_slice(stdin),
        })
        .await;
}

fn resize(id: &SessionId) -> AgentPacket {
    AgentPacket::TerminalResize {
        session_id: id.clone(),
        size: TermSize {
            rows: 40,
            cols: 120,
            xpixel: 0,
            ypixel: 0,
        },
    }
}

/// Attaches a terminal: a size, then the first write (which hoop's agent discards).
async fn start_terminal(stream: &AgentStream, id: &SessionId) {
    stream.send(resize(id)).await;
    stream
        .send(AgentPacket::TerminalWriteStdin {
            session_id: id.clone(),
            data: Bytes::from_static(b"\n"),
        })
        .await;
}

/// Reads output until stdout contains `needle` (at most [`WAIT`]); a close fails the test.
async fn wait_stdout(replies: &mut SessionReplies, needle: &str) -> Vec<u8> {
    let mut seen = Vec::new();
    let read = async {
        while !String::from_utf8_lossy(&seen).contains(needle) {
            match replies.next().await {
                ClientPacket::Stdout { data, .. } => seen.extend_from_slice(&data),
                ClientPacket::Stderr { .. } | ClientPacket::KeepAlive => {}
                other => panic!(
                    "{other:?} before {needle:?}; stdout so far: {:?}",
                    String::from_utf8_lossy(&seen)
                ),
            }
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .unwrap_or_else(|_| panic!("stdout never contained {needle:?}"));
    seen
}

/// One whole exec session: open, input, close; the gateway then acknowledges the close.
async fn exec_once(stream: &AgentStream, params: Params, stdin: &[u8]) -> Outcome {
    let (id, mut replies) = open(stream, params).await;
    start_exec(stream, &id, stdin).await;
    let out = replies.until_close().await;
    stream
        .send(AgentPacket::SessionClose { session_id: id })
        .await;
    out
}

/// The audit line the agent logged for `id`.
fn audit_line(logs: &str, id: &SessionId) -> Option<String> {
    logs.lines()
        .find(|l| l.contains("session ended") && l.contains(id.as_str()))
        .map(str::to_owned)
}

/// A fresh private key (PEM), registered for the scan line by line.
fn private_key(suite: &Suite) -> String {
    let pem = rcgen::KeyPair::generate()
        .expect("generate a key")
        .serialize_pem();
    for line in pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
    {
        suite.secret("private key (PEM body line)", line);
    }
    pem
}

// ---------------------------------------------------------------------------------------------
// Scenario 1: the gateway dies and comes back
// ---------------------------------------------------------------------------------------------

/// The gateway dies (every connection cut at once, no status, no trailers) while a local exec,
/// a local terminal, a one-off dyno and a session streaming output without pause are live.
/// The agent ends all four (254 in their audit lines; nothing can be sent), kills their
/// processes, stops the dyno, and redials after 1, 2, then 4 s (each shortened by at most 25 %
/// of jitter). The gateway is back after the second refused attempt; the new stream serves and
/// never hears of the old sessions.
async fn gateway_killed_and_restarted_mid_session(suite: Arc<Suite>) {
    let tag = suite.tag();
    let sim = start_sim(&suite).await;
    let baseline = sim.live_process_groups().len();
    let (name, secret) = gateway_credentials(&suite);
    let mut gw1 = FakeGateway::start(&name, &secret).await;
    let relay = Relay::start(Some(gw1.addr())).await;
    let dsn = format!("grpc://{name}:{secret}@{}?mode=standard", relay.addr());
    let settings = sim_settings(&sim);
    let mut agent = TestAgent::start(&dsn, &refs(&settings));
    let stream = gw1.next_agent().await;

    let (exec_id, mut exec) = open(
        &stream,
        Params::new(&["sh", "-c", "echo ready; exec sleep 100"], "exec", &tag),
    )
    .await;
    start_exec(&stream, &exec_id, b"").await;
    wait_stdout(&mut exec, "ready").await;
    let (term_id, mut term) = open(
        &stream,
        Params::new(&["sh", "-c", "echo ready; exec sleep 100"], "connect", &tag),
    )
    .await;
    start_terminal(&stream, &term_id).await;
    wait_stdout(&mut term, "ready").await;
    let (run_id, mut run) = open(
        &stream,
        run_params(&tag, &sim, "exec", "echo started; sleep 100"),
    )
    .await;
    start_exec(&stream, &run_id, b"").await;
    wait_stdout(&mut run, "started").await;
    // Last, a session whose output never stops: the stream dies with packets in flight.
    let (flow_id, mut flow) = open(
        &stream,
        Params::new(
            &["sh", "-c", "echo ready; while :; do echo tick; done"],
            "exec",
            &tag,
        ),
    )
    .await;
    start_exec(&stream, &flow_id, b"").await;
    wait_stdout(&mut flow, "tick").await;
    assert_eq!(one_off_dynos(&sim).len(), 1, "the one-off dyno runs");
    assert_eq!(
        tag.processes().len(),
        3,
        "each local session runs its process"
    );

    let mark = suite.logs.mark();
    let killed_at = Instant::now();
    let accepted_before = relay.accepts().len();
    relay.sever();
    gw1.kill();
    drop(stream);

    agent.wait_idle().await;
    tag.assert_no_processes();
    wait_until("the one-off dyno to stop", WAIT, || {
        one_off_dynos(&sim).is_empty()
    })
    .await;
    wait_until("the emulator to run only web.1", WAIT, || {
        sim.live_process_groups().len() == baseline
    })
    .await;
    let logs = suite.logs.text_since(mark);
    for id in [&exec_id, &term_id, &run_id, &flow_id] {
        let line = audit_line(&logs, id).unwrap_or_else(|| panic!("no audit line for {id}"));
        assert!(line.contains("exit_code=254"), "{line}");
    }
    assert!(
        logs.contains("the gateway stream failed") || logs.contains("the gateway ended the stream"),
        "the agent must say why the sessions ended"
    );

    // At least two refused attempts (the port answers, nothing is behind it), then the
    // gateway returns and the next attempt gets through.
    let gap = Duration::from_millis(300);
    wait_until("two reconnect attempts", WAIT, || {
        attempts(&relay.accepts()[accepted_before..], gap).len() >= 2
    })
    .await;
    // One attempt may open more than one connection (tonic redials within it); let the second
    // attempt end before the gateway returns, or its late connection would get through and
    // count as that attempt.
    wait_until("the second attempt to end", WAIT, || {
        relay
            .accepts()
            .last()
            .is_some_and(|last| last.elapsed() >= gap)
    })
    .await;
    let mut gw2 = FakeGateway::start(&name, &secret).await;
    relay.set_upstream(Some(gw2.addr()));
    let stream2 = gw2.next_agent().await;
    let tries = attempts(&relay.accepts()[accepted_before..], gap);
    assert!(tries.len() >= 3, "{} attempts", tries.len());
    let delays: Vec<Duration> = std::iter::once(killed_at)
        .chain(tries.iter().copied())
        .zip(tries.iter())
        .map(|(before, at)| at.duration_since(before))
        .collect();
    // Nominal 1, 2, 4, then 8 s; jitter only shortens, by at most 25 %. The upper slack covers
    // the failed attempt itself and a loaded machine.
    for (i, delay) in delays.iter().enumerate() {
        let nominal = [1.0_f64, 2.0, 4.0, 8.0][i.min(3)];
        let d = delay.as_secs_f64();
        assert!(
            d >= nominal * 0.75 - 0.01 && d <= nominal + 1.5,
            "reconnect delays {delays:?} are not the 1/2/4/8 s backoff"
        );
    }
    suite.note(format!(
        "reconnected on attempt {} after delays of {:.2?} s (nominal 1, 2, 4, 8 s, -25 % jitter)",
        tries.len(),
        delays.iter().map(Duration::as_secs_f64).collect::<Vec<_>>()
    ));

    let mut old: Vec<SessionReplies> = [&exec_id, &term_id, &run_id, &flow_id]
        .into_iter()
        .map(|id| stream2.watch_session(id))
        .collect();
    let out = exec_once(&stream2, Params::new(&["echo", "back"], "exec", &tag), b"").await;
    assert_eq!(out.stdout, b"back\n");
    assert_eq!(out.exit_code, Some(0));
    agent.wait_idle().await;
    for replies in &mut old {
        assert!(
            replies.try_next().is_none(),
            "the new stream must not carry packets of sessions from the old one"
        );
    }
    agent.shutdown().await;
    sim.shutdown().await;
    tag.assert_no_processes();
}

// ---------------------------------------------------------------------------------------------
// Scenario 2: rendezvous and the SSH proxy drop mid-stream
// ---------------------------------------------------------------------------------------------

/// A one-off dyno's rendezvous stream (terminal session) and a Heroku Exec SSH connection are
/// each cut abruptly while 2 MB of output is flowing. Each session closes once with 254 and a
/// message that says the connection dropped and the exit status is unknown; the one-off dyno
/// is stopped, the exec command's processes are gone, `web.1` is not restarted, and the next
/// session works.
async fn rendezvous_and_ssh_proxy_dropped_mid_stream(suite: Arc<Suite>) {
    const TOTAL: usize = 2_000_000;
    let tag = suite.tag();
    let Rig {
        sim,
        baseline,
        gw: _gw,
        mut agent,
        stream,
    } = Rig::start(&suite).await;

    sim.set_faults(Faults {
        drop_rendezvous_after: Some(256 * 1024),
        ..Faults::default()
    });
    let (id, mut replies) = open(
        &stream,
        run_params(
            &tag,
            &sim,
            "connect",
            &format!("head -c {TOTAL} /dev/zero | tr '\\0' r; sleep 100"),
        ),
    )
    .await;
    start_terminal(&stream, &id).await;
    let out = replies.until_close().await;
    assert_eq!(out.exit_code, Some(254), "{}", out.message);
    assert!(
        out.message.contains("dropped before the command finished")
            && out.message.contains("exit status is unknown")
            && out.message.contains("run."),
        "{}",
        out.message
    );
    let got = out.stdout.iter().filter(|b| **b == b'r').count();
    assert!(
        got > 0 && got < TOTAL,
        "the drop must come mid-stream ({got} of {TOTAL} bytes)"
    );
    stream
        .send(AgentPacket::SessionClose { session_id: id })
        .await;
    agent.wait_idle().await;
    wait_until("the one-off dyno to stop", WAIT, || {
        one_off_dynos(&sim).is_empty()
    })
    .await;
    wait_until("the one-off's processes to end", WAIT, || {
        sim.live_process_groups().len() == baseline
    })
    .await;
    suite.note(format!(
        "rendezvous dropped after {got} bytes: {:?}",
        out.message
    ));

    sim.set_faults(Faults {
        drop_ssh_after: Some(256 * 1024),
        ..Faults::default()
    });
    let out = exec_once(
        &stream,
        psexec_params(&tag, &sim),
        format!("head -c {TOTAL} /dev/zero | tr '\\0' s; sleep 100").as_bytes(),
    )
    .await;
    assert_eq!(out.exit_code, Some(254), "{}", out.message);
    assert!(
        out.message.contains("ended without an exit status")
            && out.message.contains("exit status is unknown"),
        "{}",
        out.message
    );
    let got = out.stdout.iter().filter(|b| **b == b's').count();
    assert!(
        got > 0 && got < TOTAL,
        "the drop must come mid-stream ({got} of {TOTAL} bytes)"
    );
    agent.wait_idle().await;
    wait_until("the exec command's processes to end", WAIT, || {
        sim.live_process_groups().len() == baseline
    })
    .await;
    assert_eq!(
        sim.dyno_states("demo"),
        vec![("web.1".to_owned(), "up".to_owned())],
        "web.1 stays up and no one-off is left"
    );
    suite.note(format!("ssh dropped after {got} bytes: {:?}", out.message));

    sim.set_faults(Faults::default());
    let out = exec_once(&stream, psexec_params(&tag, &sim), b"echo recovered").await;
    assert_eq!(out.stdout, b"recovered\n", "{}", out.message);
    assert_eq!(out.exit_code, Some(0));
    agent.wait_idle().await;
    agent.shutdown().await;
    sim.shutdown().await;
    tag.assert_no_processes();
}

// ---------------------------------------------------------------------------------------------
// Scenario 3: Heroku API storms
// ---------------------------------------------------------------------------------------------

/// Requests a storm consumed: the counter's start value minus what is left.
fn consumed(start: u32, left: u32) -> u32 {
    start - left
}

/// 429 and 5xx storms against the Platform API. Idempotent calls (psexec's lookups) ride out a
/// short storm, honouring `Retry-After`; a long storm gets exactly three attempts and then a
/// clear error in Heroku's words. The non-idempotent dyno create is not repeated into a storm,
/// and a storm that starts while a one-off dyno runs does not leave the dyno behind.
async fn heroku_api_429_and_5xx_storms(suite: Arc<Suite>) {
    const STORM: u32 = 1000;
    let tag = suite.tag();
    let Rig {
        sim,
        baseline,
        gw: _gw,
        mut agent,
        stream,
    } = Rig::start(&suite).await;

    // A short 429 storm: two refusals with Retry-After: 1, then success.
    sim.set_faults(Faults {
        rate_limited: 2,
        retry_after_secs: 1,
        ..Faults::default()
    });
    let t = Instant::now();
    let out = exec_once(&stream, psexec_params(&tag, &sim), b"echo through-429").await;
    let took_short_429 = t.elapsed();
    assert_eq!(out.stdout, b"through-429\n", "{}", out.message);
    assert_eq!(out.exit_code, Some(0));
    assert_eq!(sim.faults().rate_limited, 0);
    assert!(
        took_short_429 >= Duration::from_secs(2),
        "Retry-After: 1 twice must take at least 2 s, took {took_short_429:?}"
    );

    // A long 429 storm: three attempts, then Heroku's error.
    sim.set_faults(Faults {
        rate_limited: STORM,
        retry_after_secs: 1,
        ..Faults::default()
    });
    let t = Instant::now();
    let out = exec_once(&stream, psexec_params(&tag, &sim), b"echo never").await;
    let took_long_429 = t.elapsed();
    assert_eq!(consumed(STORM, sim.faults().rate_limited), 3, "attempts");
    assert_eq!(out.exit_code, Some(1), "{}", out.message);
    assert!(
        out.message.contains("could not connect to dyno web.1")
            && out.message.contains("HTTP 429")
            && out.message.contains("rate_limit"),
        "{}",
        out.message
    );
    assert!(out.stdout.is_empty());
    assert!(
        took_long_429 >= Duration::from_secs(2) && took_long_429 < Duration::from_secs(15),
        "{took_long_429:?}"
    );

    // 5xx: a short storm is ridden out, a long one ends in three attempts and a clear error.
    sim.set_faults(Faults {
        server_errors: 2,
        server_error_status: 500,
        ..Faults::default()
    });
    let out = exec_once(&stream, psexec_params(&tag, &sim), b"echo through-500").await;
    assert_eq!(out.stdout, b"through-500\n", "{}", out.message);
    assert_eq!(sim.faults().server_errors, 0);
    sim.set_faults(Faults {
        server_errors: STORM,
        server_error_status: 502,
        ..Faults::default()
    });
    let t = Instant::now();
    let out = exec_once(&stream, psexec_params(&tag, &sim), b"echo never").await;
    let took_long_5xx = t.elapsed();
    assert_eq!(consumed(STORM, sim.faults().server_errors), 3, "attempts");
    assert_eq!(out.exit_code, Some(1), "{}", out.message);
    assert!(
        out.message.contains("could not connect to dyno web.1") && out.message.contains("HTTP 502"),
        "{}",
        out.message
    );
    assert!(took_long_5xx < Duration::from_secs(15), "{took_long_5xx:?}");

    // Dyno create is not idempotent, but a 429 is refused before anything is created: a short
    // storm is ridden out, a long one ends in three attempts with Heroku's error and no dyno.
    sim.set_faults(Faults {
        rate_limited: 1,
        retry_after_secs: 1,
        ..Faults::default()
    });
    let out = exec_once(
        &stream,
        run_params(&tag, &sim, "exec", "echo through-create-429"),
        b"",
    )
    .await;
    assert_eq!(out.stdout, b"through-create-429\n", "{}", out.message);
    assert_eq!(out.exit_code, Some(0), "{}", out.message);
    sim.set_faults(Faults {
        rate_limited: STORM,
        retry_after_secs: 1,
        ..Faults::default()
    });
    // --no-launcher: no app lookup first, so the storm meets the create itself.
    let no_lookup = run_params(&tag, &sim, "exec", "echo never").args(&[
        "--app",
        "demo",
        "--no-launcher",
        "echo never",
    ]);
    let out = exec_once(&stream, no_lookup, b"").await;
    let used = consumed(STORM, sim.faults().rate_limited);
    assert_eq!(used, 3, "create attempts");
    assert_eq!(out.exit_code, Some(254), "{}", out.message);
    assert!(
        out.message.contains("starting a one-off dyno on demo") && out.message.contains("HTTP 429"),
        "{}",
        out.message
    );
    assert!(one_off_dynos(&sim).is_empty());

    // A storm that begins while a one-off dyno runs: the stop is retried within limits, and
    // the dyno still does not outlive its session.
    sim.set_faults(Faults::default());
    let (id, mut replies) = open(
        &stream,
        run_params(&tag, &sim, "exec", "echo started; sleep 100"),
    )
    .await;
    start_exec(&stream, &id, b"").await;
    wait_stdout(&mut replies, "started").await;
    sim.set_faults(Faults {
        server_errors: STORM,
        ..Faults::default()
    });
    stream
        .send(AgentPacket::SessionClose { session_id: id })
        .await;
    agent.wait_idle().await;
    let used = consumed(STORM, sim.faults().server_errors);
    assert!((1..=3).contains(&used), "{used} stop attempts");
    wait_until("the one-off dyno to end with its session", WAIT, || {
        one_off_dynos(&sim).is_empty()
    })
    .await;
    wait_until("the one-off's processes to end", WAIT, || {
        sim.live_process_groups().len() == baseline
    })
    .await;
    sim.set_faults(Faults::default());
    suite.note(format!(
        "short 429 storm ridden out in {:.1} s; long 429 storm: 3 attempts, error after {:.1} s; long 5xx storm: 3 attempts, error after {:.1} s",
        took_short_429.as_secs_f64(),
        took_long_429.as_secs_f64(),
        took_long_5xx.as_secs_f64()
    ));
    agent.shutdown().await;
    sim.shutdown().await;
    tag.assert_no_processes();
}

// ---------------------------------------------------------------------------------------------
// Scenario 4: SIGTERM with 100 live sessions
// ---------------------------------------------------------------------------------------------

/// 100 live sessions (45 local exec, 45 local terminals, 5 one-off dynos, 5 more local exec
/// holding a private key in a `filesystem:` secret), then SIGTERM to the real `dynoagent`
/// binary: every session gets exactly one close, 254 "agent shutting down"; the binary exits 0
/// within 25 s; no process, secret file or dyno is left. Without a built binary the in-process
/// agent's shutdown is driven instead, and the report says so.
async fn sigterm_with_100_live_sessions(suite: Arc<Suite>) {
    let tag = suite.tag();
    let sim = start_sim(&suite).await;
    let baseline = sim.live_process_groups().len();
    let (name, secret) = gateway_credentials(&suite);
    let mut gw = FakeGateway::start(&name, &secret).await;
    let key_pem = private_key(&suite);
    let env_dir = tempfile::tempdir().unwrap();
    let mut settings = sim_settings(&sim);
    settings.push(("DYNOAGENT_KILL_GRACE_SECS".into(), "2".into()));
    settings.push((
        "DYNOAGENT_ENV_DIR".into(),
        env_dir.path().display().to_string(),
    ));

    let binary = dynoagent_binary();
    enum Running {
        Binary(tokio::process::Child),
        InProcess(TestAgent),
    }
    let mut running = match &binary {
        Some(path) => {
            suite.note(format!(
                "real binary {}{}",
                path.display(),
                match is_stale(path) {
                    Some(false) => "",
                    Some(true) => " (older than its sources: run `cargo build -p dynoagent` first)",
                    None => " (freshness unknown: no dep-info beside it)",
                }
            ));
            let mut cmd = tokio::process::Command::new(path);
            cmd.env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .env("HOOP_KEY", gw.dsn())
                .env("LOG_LEVEL", "debug")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true);
            for (k, v) in &settings {
                cmd.env(k, v);
            }
            Running::Binary(cmd.spawn().expect("start dynoagent"))
        }
        None => {
            suite.note(
                "no dynoagent binary (not built, or DYNOAGENT_BIN is empty): drove the in-process agent's shutdown instead of SIGTERM (run `cargo build -p dynoagent` to use the binary)".into(),
            );
            Running::InProcess(TestAgent::start(&gw.dsn(), &refs(&settings)))
        }
    };
    // Drain the binary's output while it runs, so a full pipe never blocks its logging.
    let readers = match &mut running {
        Running::Binary(child) => {
            let mut out = child.stdout.take().unwrap();
            let mut err = child.stderr.take().unwrap();
            Some((
                tokio::spawn(async move {
                    let mut v = Vec::new();
                    let _ = tokio::io::AsyncReadExt::read_to_end(&mut out, &mut v).await;
                    v
                }),
                tokio::spawn(async move {
                    let mut v = Vec::new();
                    let _ = tokio::io::AsyncReadExt::read_to_end(&mut err, &mut v).await;
                    v
                }),
            ))
        }
        Running::InProcess(_) => None,
    };
    let mut stream = gw.next_agent().await;

    let mut sessions: Vec<(SessionId, SessionReplies)> = Vec::new();
    for i in 0..100 {
        let (params, terminal, needle) = match i {
            0..=4 => (
                run_params(&tag, &sim, "exec", "echo started; sleep 100"),
                false,
                "started",
            ),
            5..=9 => (
                Params::new(
                    &[
                        "sh",
                        "-c",
                        "test -s \"$KEY_FILE\" && echo ready; exec sleep 100",
                    ],
                    "exec",
                    &tag,
                )
                .env("filesystem:KEY_FILE", &key_pem),
                false,
                "ready",
            ),
            _ => (
                Params::new(
                    &["sh", "-c", "echo ready; exec sleep 100"],
                    if i % 2 == 0 { "exec" } else { "connect" },
                    &tag,
                ),
                i % 2 == 1,
                "ready",
            ),
        };
        let (id, mut replies) = open(&stream, params).await;
        if terminal {
            start_terminal(&stream, &id).await;
        } else {
            start_exec(&stream, &id, b"").await;
        }
        wait_stdout(&mut replies, needle).await;
        sessions.push((id, replies));
    }
    // A process that printed its line may still be inside `exec sleep`, where its environ
    // reads as empty for a moment: wait for the count, not one look.
    wait_until("95 local processes", WAIT, || tag.processes().len() == 95).await;
    assert_eq!(one_off_dynos(&sim).len(), 5, "5 one-off dynos run");

    let started = Instant::now();
    let mark = suite.logs.mark();
    let (binary_stdout, exit) = match running {
        Running::Binary(mut child) => {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap());
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
            for (id, replies) in &mut sessions {
                let out = replies.until_close().await;
                assert_eq!(out.exit_code, Some(254), "{id}: {}", out.message);
                assert_eq!(out.message, "agent shutting down", "{id}");
            }
            let status = tokio::time::timeout(Duration::from_secs(25), child.wait())
                .await
                .expect("dynoagent did not exit within 25 s of SIGTERM")
                .unwrap();
            let exit = started.elapsed();
            assert!(status.success(), "dynoagent exited with {status:?}");
            let (out, err) = readers.unwrap();
            let out = tokio::time::timeout(WAIT, out).await.unwrap().unwrap();
            let err = tokio::time::timeout(WAIT, err).await.unwrap().unwrap();
            suite.logs.append(&out);
            suite.logs.append(&err);
            (Some(String::from_utf8_lossy(&out).into_owned()), exit)
        }
        Running::InProcess(agent) => {
            let shutdown = tokio::spawn(agent.shutdown());
            for (id, replies) in &mut sessions {
                let out = replies.until_close().await;
                assert_eq!(out.exit_code, Some(254), "{id}: {}", out.message);
                assert_eq!(out.message, "agent shutting down", "{id}");
            }
            tokio::time::timeout(Duration::from_secs(25), shutdown)
                .await
                .expect("the agent did not stop within 25 s")
                .unwrap();
            (None, started.elapsed())
        }
    };
    assert!(exit < Duration::from_secs(25), "{exit:?}");
    stream.wait_ended().await;
    for (id, replies) in &mut sessions {
        assert!(
            replies.try_next().is_none(),
            "{id}: nothing may follow the session's close"
        );
    }
    tag.assert_no_processes();
    wait_until("the one-off dynos to stop", WAIT, || {
        one_off_dynos(&sim).is_empty()
    })
    .await;
    wait_until("the emulator to run only web.1", WAIT, || {
        sim.live_process_groups().len() == baseline
    })
    .await;
    let left: Vec<_> = std::fs::read_dir(env_dir.path())
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "secret files left behind: {left:?}");

    // One audit line per session, each with 254.
    let logs = binary_stdout.unwrap_or_else(|| suite.logs.text_since(mark));
    let audits: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("session ended"))
        .collect();
    assert_eq!(audits.len(), 100, "one audit line per session");
    assert!(
        audits.iter().all(|l| l.contains("exit_code=254")),
        "every session ended with 254"
    );
    suite.note(format!(
        "100 sessions closed and {} in {:.2} s",
        if binary.is_some() {
            "the binary exited after SIGTERM"
        } else {
            "the in-process agent stopped"
        },
        exit.as_secs_f64()
    ));
    sim.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Scenario 5: malformed packets beside a healthy session
// ---------------------------------------------------------------------------------------------

fn line(id: &SessionId, text: &str) -> AgentPacket {
    AgentPacket::TerminalWriteStdin {
        session_id: id.clone(),
        data: Bytes::from(format!("{text}\r")),
    }
}

fn stdout_has(s: &RawAgentStream, id: &SessionId, needle: &str) -> bool {
    String::from_utf8_lossy(&s.stdout(id)).contains(needle)
}

fn opened(s: &RawAgentStream, id: &SessionId) -> bool {
    s.replies.get(id).is_some_and(|r| {
        r.iter()
            .any(|p| matches!(p, ClientPacket::SessionOpenOk { .. }))
    })
}

/// A terminal session streams 600 KB of output while 1,000 malformed packets arrive in a row:
/// invalid UTF-8 in every text field (component, type, spec keys, session ids, connection type,
/// feature flags, every string of the gob connection params, the client env), missing and
/// over-long session ids, garbage and truncated gob, bad resizes, duplicate keys, a second open
/// for the live session, four payloads over hoop's 17 MiB and an 8 MiB garbage gob. The live
/// session gets all of its output and answers after the flood; each undecodable open is
/// refused once with 254; an oversized input closes only its own session; nothing else is
/// answered; the stream is never dropped; a fresh session works afterwards.
async fn malformed_flood_beside_a_healthy_session(suite: Arc<Suite>) {
    let tag = suite.tag();
    let (name, secret) = gateway_credentials(&suite);
    let mut gw = RawGateway::start(&name, &secret).await;
    let mut agent = TestAgent::start(&gw.dsn(), &[]);
    let mut stream = gw.next_agent().await;

    let live = dynoagent_tests::sid();
    let script = r#"while IFS= read -r l; do case "$l" in count) seq 1 100000;; *) echo "got:$l";; esac; done"#;
    stream
        .send(Params::new(&["bash", "-c", script], "connect", &tag).open(&live))
        .await;
    stream.send(resize(&live)).await;
    stream
        .send(AgentPacket::TerminalWriteStdin {
            session_id: live.clone(),
            data: Bytes::from_static(b"\n"),
        })
        .await;
    stream.send(line(&live, "ping-0")).await;
    stream
        .pump_until("the live session's first answer", WAIT, |s| {
            stdout_has(s, &live, "got:ping-0")
        })
        .await;

    let victim = dynoagent_tests::sid();
    stream
        .send(
            Params::new(&["sh", "-c", "echo ready; exec sleep 100"], "connect", &tag).open(&victim),
        )
        .await;
    stream.send(resize(&victim)).await;
    stream
        .send(AgentPacket::TerminalWriteStdin {
            session_id: victim.clone(),
            data: Bytes::from_static(b"\n"),
        })
        .await;
    stream
        .pump_until("the victim session to start", WAIT, |s| {
            stdout_has(s, &victim, "ready")
        })
        .await;

    // Output streams from the live session while the flood arrives.
    stream.send(line(&live, "count")).await;
    let template = Params::new(&["sleep", "100"], "exec", &tag).0;
    let flood = malformed_flood(1000, &live, &victim, &template);
    assert_eq!(flood.packets.len(), 1000);
    let started = Instant::now();
    for packet in flood.packets {
        stream.send_wire(packet).await;
    }
    stream.send(line(&live, "ping-1")).await;
    stream
        .pump_until(
            "the live session to answer after the flood",
            WAIT * 2,
            |s| stdout_has(s, &live, "got:ping-1"),
        )
        .await;
    let flood_time = started.elapsed();
    let text = String::from_utf8_lossy(&stream.stdout(&live)).into_owned();
    assert!(
        text.contains("\n99999\r\n100000\r\n"),
        "the live session's output must arrive whole"
    );
    assert!(
        !text.contains("must-not-reach"),
        "input for an unparsable session id reached the live session"
    );
    assert!(
        stream.closes(&live).is_empty(),
        "the live session was closed"
    );

    let refused = flood.refused.clone();
    let lenient = flood.lenient.clone();
    stream
        .pump_until("the answers to the flood", WAIT, |s| {
            refused.iter().all(|id| !s.closes(id).is_empty())
                && lenient.iter().all(|(id, _)| opened(s, id))
                && !s.closes(&victim).is_empty()
        })
        .await;
    for id in &flood.refused {
        let closes = stream.closes(id);
        assert_eq!(closes.len(), 1, "{id}: {closes:?}");
        assert_eq!(closes[0].0, Some(254), "{id}: {closes:?}");
        assert!(
            closes[0].1.contains("failed decoding") || closes[0].1.contains("missing"),
            "{id}: {closes:?}"
        );
    }
    for (id, port) in &flood.lenient {
        match stream.replies[id].as_slice() {
            [ClientPacket::SessionOpenOk { request_port, .. }] => {
                assert_eq!(request_port.as_ref(), Some(port), "{id}");
            }
            other => panic!("{id}: {other:?}"),
        }
    }
    let victim_closes = stream.closes(&victim);
    assert_eq!(victim_closes.len(), 1, "{victim_closes:?}");
    assert_eq!(victim_closes[0].0, Some(254));
    assert!(victim_closes[0].1.contains("17 MiB"), "{victim_closes:?}");

    // The gateway acknowledges the closes and closes the lenient sessions.
    stream
        .send(AgentPacket::SessionClose {
            session_id: victim.clone(),
        })
        .await;
    for (id, _) in &flood.lenient {
        stream
            .send(AgentPacket::SessionClose {
                session_id: id.clone(),
            })
            .await;
    }

    // A fresh session works, and the live one still answers.
    let probe = dynoagent_tests::sid();
    stream
        .send(Params::new(&["echo", "after-flood"], "exec", &tag).open(&probe))
        .await;
    stream
        .send(AgentPacket::ExecWriteStdin {
            session_id: probe.clone(),
            data: Bytes::new(),
        })
        .await;
    stream.send(line(&live, "ping-2")).await;
    stream
        .pump_until(
            "the probe to finish and the live session to answer",
            WAIT,
            |s| !s.closes(&probe).is_empty() && stdout_has(s, &live, "got:ping-2"),
        )
        .await;
    assert_eq!(stream.stdout(&probe), b"after-flood\n");
    assert_eq!(stream.closes(&probe)[0].0, Some(0));

    let mut known: HashSet<&SessionId> = flood.refused.iter().collect();
    known.extend(flood.lenient.iter().map(|(id, _)| id));
    known.extend([&live, &victim, &probe]);
    let unexpected: Vec<&SessionId> = stream
        .replies
        .keys()
        .filter(|id| !known.contains(id))
        .collect();
    assert!(
        unexpected.is_empty(),
        "the agent answered sessions nobody opened: {unexpected:?}"
    );
    assert!(stream.undecodable.is_empty(), "{:?}", stream.undecodable);
    assert_eq!(gw.connections(), 1, "the flood must not cost the stream");

    stream
        .send(AgentPacket::SessionClose {
            session_id: live.clone(),
        })
        .await;
    stream
        .send(AgentPacket::SessionClose { session_id: probe })
        .await;
    agent.wait_idle().await;
    tag.assert_no_processes();
    suite.note(format!(
        "1,000 malformed packets ({} refused opens, {} lenient opens, {} over 17 MiB) handled in {:.2} s beside the live session",
        flood.refused.len(),
        flood.lenient.len(),
        flood.oversized,
        flood_time.as_secs_f64()
    ));
    agent.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Scenario 6: a partly trusted user tries to step outside a connection (issue 13)
// ---------------------------------------------------------------------------------------------

/// Opens a session with the client's `-e` entries and returns its single close (the refusals
/// here all come before the open is acknowledged).
async fn refused_open(
    stream: &AgentStream,
    params: Params,
    client_env: &[(&str, &str)],
) -> (Option<i32>, String) {
    let id = dynoagent_tests::sid();
    let mut replies = stream.watch_session(&id);
    let mut open = params.open(&id);
    if let AgentPacket::SessionOpen(o) = &mut open {
        o.client_env = client_env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), dynoagent_tests::b64(v)))
            .collect();
    }
    stream.send(open).await;
    let reply = replies.next().await;
    stream
        .send(AgentPacket::SessionClose { session_id: id })
        .await;
    match reply {
        ClientPacket::SessionClose {
            exit_code, message, ..
        } => (exit_code, String::from_utf8_lossy(&message).into_owned()),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Each attack of issue 13 that carries a secret value: a client variable under a refused
/// name, a client file, a connection asking for the agent's own HOOP_KEY, an ssh key that is
/// not key text, arguments to a pinned command. Every one is refused, and neither the close
/// message (the gateway's audit record) nor any log line holds the value (the suite's scan).
async fn user_boundary_attacks_leak_nothing(suite: Arc<Suite>) {
    let (name, secret) = gateway_credentials(&suite);
    let mut gw = FakeGateway::start(&name, &secret).await;
    let mut agent = TestAgent::start(&gw.dsn(), &[]);
    let stream = gw.next_agent().await;
    let tag = suite.tag();
    let value = |label: &str| {
        let v = unique(&format!("issue13-{label}"));
        suite.secret(label, &v);
        v
    };
    let client_value = value("client LD_PRELOAD value");
    let file_value = value("client filesystem value");
    let key_value = value("non-PEM SSH_PRIVATE_KEY");
    let arg_value = value("pinned command argument");

    let local = || Params::new(&["bash", "-c", "echo report"], "exec", &tag);
    let mut cases = vec![
        (
            refused_open(&stream, local(), &[("envvar:LD_PRELOAD", &client_value)]).await,
            "client variable LD_PRELOAD is refused",
            client_value.clone(),
        ),
        (
            refused_open(&stream, local(), &[("filesystem:CERT", &file_value)]).await,
            "client variable CERT is refused",
            file_value.clone(),
        ),
        (
            refused_open(
                &stream,
                local().env("envvar:HOOP_KEY", "system.agent.envs"),
                &[],
            )
            .await,
            "never handed to a session",
            secret.clone(),
        ),
        (
            refused_open(
                &stream,
                local()
                    .env("envvar:DYNOAGENT_PIN_COMMAND", "true")
                    .args(&[";", &arg_value]),
                &[],
            )
            .await,
            "pins its command",
            arg_value.clone(),
        ),
    ];
    // The ssh backend refuses the key before dialling (exit 2 after the open is acknowledged).
    let ssh = Params::new(
        &["ssh", "ssh://deploy@127.0.0.1:1", "-i", "$SSH_PRIVATE_KEY"],
        "exec",
        &tag,
    )
    .env("envvar:SSH_PRIVATE_KEY", &key_value)
    .env(
        "envvar:SSH_HOST_KEY",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFmzgqxOZ/3QSN5mUo39DWBVNXnczAUx8WZPGmvkK7tB",
    );
    let out = exec_once(&stream, ssh, b"").await;
    cases.push((
        (out.exit_code, out.message.clone()),
        "neither key text",
        key_value.clone(),
    ));
    for ((code, message), needle, secret_value) in &cases {
        assert!(
            matches!(code, Some(254) | Some(2)),
            "{needle}: {code:?} {message}"
        );
        assert!(message.contains(needle), "{needle}: {message}");
        assert!(
            !message.contains(secret_value.as_str()),
            "{needle}: the close message holds the secret: {message}"
        );
    }
    agent.wait_idle().await;
    tag.assert_no_processes();
    suite.note(format!(
        "{} boundary attacks refused; their close messages hold none of the values",
        cases.len()
    ));
    agent.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Scenario: the gateway link goes silent without closing
// ---------------------------------------------------------------------------------------------

/// The link to the gateway is blackholed: a relay between them stops forwarding but keeps both
/// sockets open, so no FIN, no RST and no gRPC status ever arrives and the kernel still
/// acknowledges what the agent writes (its `GatewayKeepAlive`s included). Only the HTTP/2
/// PING can notice. With the PING at 1 s and its timeout at 2 s, the agent drops the link,
/// ends the exec and terminal sessions it had (254 in their audit
/// lines, processes gone) and redials; once the gateway's side of the dead link is gone, the
/// new stream serves. Without the PING the sessions stay
/// up forever: `FAULTS_BLACKHOLE_PING_SECS=0` turns the PING off, and the scenario fails.
async fn blackholed_gateway_link(suite: Arc<Suite>) {
    let tag = suite.tag();
    let (name, secret) = gateway_credentials(&suite);
    let mut gw = FakeGateway::start(&name, &secret).await;
    let relay = Relay::start(Some(gw.addr())).await;
    let dsn = format!("grpc://{name}:{secret}@{}?mode=standard", relay.addr());
    let ping = std::env::var("FAULTS_BLACKHOLE_PING_SECS").unwrap_or_else(|_| "1".into());
    let mut agent = TestAgent::start(
        &dsn,
        &[
            ("DYNOAGENT_GATEWAY_PING_SECS", ping.as_str()),
            ("DYNOAGENT_GATEWAY_PING_TIMEOUT_SECS", "2"),
        ],
    );
    let stream = gw.next_agent().await;
    let (exec_id, mut exec) = open(
        &stream,
        Params::new(&["sh", "-c", "echo ready; exec sleep 100"], "exec", &tag),
    )
    .await;
    start_exec(&stream, &exec_id, b"").await;
    wait_stdout(&mut exec, "ready").await;
    let (term_id, mut term) = open(
        &stream,
        Params::new(&["sh", "-c", "echo ready; exec sleep 100"], "connect", &tag),
    )
    .await;
    start_terminal(&stream, &term_id).await;
    wait_stdout(&mut term, "ready").await;
    assert_eq!(tag.processes().len(), 2, "each session runs its process");

    let mark = suite.logs.mark();
    let accepted_before = relay.accepts().len();
    let blackholed_at = Instant::now();
    relay.blackhole();

    agent.wait_idle().await;
    let detected_after = blackholed_at.elapsed();
    tag.assert_no_processes();
    let logs = suite.logs.text_since(mark);
    for id in [&exec_id, &term_id] {
        let line = audit_line(&logs, id).unwrap_or_else(|| panic!("no audit line for {id}"));
        assert!(line.contains("exit_code=254"), "{line}");
    }
    // hyper closes the connection on the PING timeout; the stream only sees it go
    // ("stream closed because of a broken pipe"), which troubleshooting.md explains.
    assert!(
        logs.contains("the gateway stream failed"),
        "the agent must say why the sessions ended"
    );

    // The gateway still holds the old stream (the relay keeps its socket open), so it answers
    // the agent's redials with "agent already connected" and the agent waits on standby, as
    // with hoop's gateway until its side of the dead link times out. Model that moment: the
    // frozen connection closes, and the next redial takes over.
    wait_until("the agent to redial", WAIT, || {
        relay.accepts().len() > accepted_before
    })
    .await;
    relay.sever();
    relay.set_upstream(Some(gw.addr()));
    let stream2 = gw.next_agent().await;
    let out = exec_once(&stream2, Params::new(&["echo", "back"], "exec", &tag), b"").await;
    assert_eq!(out.stdout, b"back\n");
    assert_eq!(out.exit_code, Some(0));
    suite.note(format!(
        "blackholed link noticed and its 2 sessions ended {:.1} s after the blackhole (PING 1 s, timeout 2 s)",
        detected_after.as_secs_f64()
    ));
    drop(stream);
    agent.shutdown().await;
    tag.assert_no_processes();
}

// ---------------------------------------------------------------------------------------------
// Cancel-safe backends (issue 14): a cancel or a fault in the middle of each backend phase
// ---------------------------------------------------------------------------------------------

/// The names of `dynos`, for comparing dyno sets whose states move on (`starting`, `up`).
fn names(dynos: Vec<(String, String)>) -> Vec<String> {
    dynos.into_iter().map(|(name, _)| name).collect()
}

/// Defect 1: a one-off dyno's rendezvous is reset (TCP RST) once it has read 32 KiB of a
/// 7 MiB exec input that its command (`sleep`) never reads, so the agent's write is pending
/// when the reset arrives. The session closes once, with 254 and a message that says the
/// connection dropped, instead of hanging on the write; its dyno is stopped; a terminal
/// session on another one-off dyno, open beside it the whole time, answers before and after.
async fn run_rendezvous_reset_mid_write(suite: Arc<Suite>) {
    // Under the session's 8 MiB input budget, and more than the loopback socket buffers take
    // before the emulator's first read.
    const INPUT: usize = 7 << 20;
    let tag = suite.tag();
    let Rig {
        sim,
        baseline,
        gw: _gw,
        mut agent,
        stream,
    } = Rig::start(&suite).await;

    // Every rendezvous is reset after 32 KiB of input (less than the pipe to `sleep` holds, so
    // the emulator's reads never wait on the command): the healthy session types far less.
    sim.set_faults(Faults {
        reset_rendezvous_after_input: Some(32 * 1024),
        ..Faults::default()
    });
    let (healthy_id, mut healthy) = open(
        &stream,
        run_params(
            &tag,
            &sim,
            "connect",
            r#"echo ready; while IFS= read -r l; do echo "got:$l"; done"#,
        ),
    )
    .await;
    start_terminal(&stream, &healthy_id).await;
    wait_stdout(&mut healthy, "ready").await;
    stream.send(line(&healthy_id, "before-reset")).await;
    wait_stdout(&mut healthy, "got:before-reset").await;
    let healthy_dyno = names(one_off_dynos(&sim));
    assert_eq!(healthy_dyno.len(), 1, "{healthy_dyno:?}");

    let (id, mut replies) = open(&stream, run_params(&tag, &sim, "exec", "sleep 100")).await;
    let started = Instant::now();
    start_exec(&stream, &id, &vec![b'x'; INPUT]).await;
    let out = tokio::time::timeout(WAIT, replies.until_close())
        .await
        .expect("the session hung after its rendezvous was reset mid-write");
    let took = started.elapsed();
    assert_eq!(out.exit_code, Some(254), "{}", out.message);
    assert!(
        out.message.contains("dropped") && out.message.contains("run."),
        "the close must say the dyno's connection dropped: {}",
        out.message
    );
    stream
        .send(AgentPacket::SessionClose {
            session_id: id.clone(),
        })
        .await;
    wait_until("the reset session's dyno to stop", WAIT, || {
        names(one_off_dynos(&sim)) == healthy_dyno
    })
    .await;

    // The healthy session beside it still answers, then ends with its dyno.
    stream.send(line(&healthy_id, "after-reset")).await;
    wait_stdout(&mut healthy, "got:after-reset").await;
    stream
        .send(AgentPacket::SessionClose {
            session_id: healthy_id,
        })
        .await;
    agent.wait_idle().await;
    assert!(
        replies.try_next().is_none(),
        "nothing may follow the session's close"
    );
    wait_until("the one-off dynos to stop", WAIT, || {
        one_off_dynos(&sim).is_empty()
    })
    .await;
    wait_until("the one-offs' processes to end", WAIT, || {
        sim.live_process_groups().len() == baseline
    })
    .await;
    sim.set_faults(Faults::default());
    suite.note(format!(
        "rendezvous reset mid-write of {} MiB: closed after {:.2} s with {:?}",
        INPUT >> 20,
        took.as_secs_f64(),
        out.message
    ));
    agent.shutdown().await;
    sim.shutdown().await;
    tag.assert_no_processes();
}

/// The highest `tick-N` in `text`.
fn last_tick(text: &[u8]) -> Option<u64> {
    String::from_utf8_lossy(text)
        .split("tick-")
        .skip(1)
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .max()
}

/// Defect 2: a local terminal whose process never reads its input (it prints a numbered tick
/// every 100 ms) gets a 1 MiB paste in one packet. The terminal takes a few KiB and the rest
/// of the write stays pending; meanwhile the process's output keeps arriving (ten more ticks)
/// and an exec session beside it runs. The gateway's close then ends the session within the
/// kill grace, and no process is left.
async fn local_terminal_1mib_paste_unread(suite: Arc<Suite>) {
    const PASTE: usize = 1 << 20;
    let tag = suite.tag();
    let (name, secret) = gateway_credentials(&suite);
    let mut gw = FakeGateway::start(&name, &secret).await;
    let mut agent = TestAgent::start(&gw.dsn(), &[]);
    let stream = gw.next_agent().await;

    let script = "echo ready; i=0; while :; do i=$((i+1)); echo tick-$i; sleep 0.1; done";
    let (id, mut replies) =
        open(&stream, Params::new(&["sh", "-c", script], "connect", &tag)).await;
    start_terminal(&stream, &id).await;
    let seen = wait_stdout(&mut replies, "tick-1\r\n").await;
    let before = last_tick(&seen).unwrap();

    // 64-byte lines (a terminal in canonical mode takes lines), 1 MiB in all.
    let paste = [b"p".repeat(63), b"\n".to_vec()]
        .concat()
        .repeat(PASTE / 64);
    assert_eq!(paste.len(), PASTE);
    stream
        .send(AgentPacket::TerminalWriteStdin {
            session_id: id.clone(),
            data: Bytes::from(paste),
        })
        .await;
    let target = before + 10;
    let during = wait_stdout(&mut replies, &format!("tick-{target}\r\n")).await;
    let echoed = during.iter().filter(|b| **b == b'p').count();
    assert!(
        echoed < PASTE / 2,
        "the terminal echoed {echoed} bytes of the paste: the process was meant not to read it"
    );
    assert!(!tag.processes().is_empty(), "the terminal's process runs");

    // Another session is served while the paste is stuck.
    let out = exec_once(&stream, Params::new(&["echo", "beside"], "exec", &tag), b"").await;
    assert_eq!(out.stdout, b"beside\n", "{}", out.message);
    assert_eq!(out.exit_code, Some(0));

    let mark = suite.logs.mark();
    let closed = Instant::now();
    stream
        .send(AgentPacket::SessionClose {
            session_id: id.clone(),
        })
        .await;
    agent.wait_idle().await;
    let took = closed.elapsed();
    tag.assert_no_processes();
    let logs = suite.logs.text_since(mark);
    assert!(
        audit_line(&logs, &id).is_some(),
        "no audit line for the closed session"
    );
    // The kill grace is 2 s (`TestAgent`); a stuck write must not add to it.
    assert!(took < Duration::from_secs(5), "closing took {took:?}");
    suite.note(format!(
        "1 MiB paste: {echoed} bytes echoed, output kept flowing (tick {before} to {target}); closed in {:.2} s",
        took.as_secs_f64()
    ));
    agent.shutdown().await;
}

/// Defect 3: the gateway closes a Heroku Exec session while its remote command runs. The
/// agent stops the command the SSH way: a `TERM` signal request, then `KILL` after the kill
/// grace (2 s) only if the command is still running, then a clean channel close. The
/// emulator logs each signal request and each channel close (a dropped connection shows
/// neither, and hangs the command up with `SIGHUP` instead). One command records the TERM and
/// exits; the other records it and keeps running until the KILL. Each time the command's
/// process group is gone afterwards and `web.1` stays up.
async fn psexec_cancel_mid_channel(suite: Arc<Suite>) {
    let tag = suite.tag();
    let Rig {
        sim,
        baseline,
        gw: _gw,
        mut agent,
        stream,
    } = Rig::start(&suite).await;
    let dir = tempfile::tempdir().unwrap();

    let mut report = Vec::new();
    for ignores_term in [false, true] {
        let flag = dir.path().join(format!("term-{ignores_term}"));
        let script = if ignores_term {
            format!(
                "trap 'echo got-term >> {}' TERM; echo started; while :; do sleep 1; done",
                flag.display()
            )
        } else {
            format!(
                "trap 'echo got-term >> {}; exit 0' TERM; echo started; sleep 600 & wait",
                flag.display()
            )
        };
        let mark = suite.logs.mark();
        let (id, mut replies) = open(&stream, psexec_params(&tag, &sim)).await;
        start_exec(&stream, &id, script.as_bytes()).await;
        wait_stdout(&mut replies, "started").await;
        assert!(sim.live_process_groups().len() > baseline);

        let closed = Instant::now();
        stream
            .send(AgentPacket::SessionClose {
                session_id: id.clone(),
            })
            .await;
        agent.wait_idle().await;
        let took = closed.elapsed();
        wait_until("the remote command's processes to end", WAIT, || {
            sim.live_process_groups().len() == baseline
        })
        .await;
        let got = std::fs::read_to_string(&flag).unwrap_or_default();
        assert_eq!(
            got, "got-term\n",
            "the remote command (ignores TERM: {ignores_term}) must get exactly one TERM"
        );
        let logs = suite.logs.text_since(mark);
        let count = |needles: &[&str]| {
            logs.lines()
                .filter(|l| needles.iter().all(|n| l.contains(n)))
                .count()
        };
        let terms = count(&["ssh signal request", "signal=SIGTERM"]);
        let kills = count(&["ssh signal request", "signal=SIGKILL"]);
        let client_closes = count(&["ssh channel closed by the client"]);
        let server_closes = count(&["exec channel closed after its process exited"]);
        assert_eq!(
            (terms, kills),
            (1, usize::from(ignores_term)),
            "(TERM, KILL) requests the emulator got (ignores TERM: {ignores_term})"
        );
        // The channel is closed, not the connection dropped: a command that honours TERM exits
        // and the emulator closes the channel after its exit status (the agent waited for it);
        // after a KILL the agent closes the channel itself, unless the emulator's close after
        // the exit comes first (then the agent's close is only the answer).
        if ignores_term {
            assert!(
                client_closes + server_closes >= 1,
                "the channel was never closed (client {client_closes}, emulator {server_closes})"
            );
        } else {
            assert_eq!(
                server_closes, 1,
                "the command did not end on its own after TERM"
            );
        }
        assert!(audit_line(&logs, &id).is_some(), "no audit line for {id}");
        if ignores_term {
            assert!(
                took >= Duration::from_millis(1900),
                "KILL must wait for the 2 s grace, the session ended after {took:?}"
            );
        }
        report.push(format!(
            "{}: ended {:.2} s after the close",
            if ignores_term {
                "TERM ignored, KILL after the grace"
            } else {
                "TERM honoured"
            },
            took.as_secs_f64()
        ));
    }
    assert_eq!(
        sim.dyno_states("demo"),
        vec![("web.1".to_owned(), "up".to_owned())],
        "web.1 stays up and no one-off is left"
    );
    suite.note(format!("psexec cancel mid-channel: {}", report.join("; ")));
    agent.shutdown().await;
    sim.shutdown().await;
    tag.assert_no_processes();
}

/// The gateway closes a `heroku run` session while its dyno create is in flight (the emulator
/// creates the dyno at once and answers 3 s later). Once the create answers, the agent stops
/// the dyno it never got to use (a `DELETE` of that dyno after the create's answer): no
/// one-off dyno is left (polled with a deadline) and none of its processes; a session started
/// afterwards works.
async fn run_create_cancelled_mid_flight(suite: Arc<Suite>) {
    const DELAY_MS: u64 = 3000;
    let tag = suite.tag();
    let Rig {
        sim,
        baseline,
        gw: _gw,
        mut agent,
        stream,
    } = Rig::start(&suite).await;

    sim.set_faults(Faults {
        create_response_delay_ms: DELAY_MS,
        ..Faults::default()
    });
    let creates = sim.created_dynos().len();
    let (id, _replies) = open(
        &stream,
        run_params(&tag, &sim, "exec", "echo started; sleep 100"),
    )
    .await;
    start_exec(&stream, &id, b"").await;
    wait_until(
        "the dyno to exist while its create is in flight",
        WAIT,
        || !one_off_dynos(&sim).is_empty(),
    )
    .await;
    let created = Instant::now();
    assert_eq!(sim.created_dynos().len(), creates + 1, "one create");
    let dyno = names(one_off_dynos(&sim)).remove(0);

    let mark = suite.logs.mark();
    stream
        .send(AgentPacket::SessionClose {
            session_id: id.clone(),
        })
        .await;
    assert!(
        created.elapsed() < Duration::from_millis(DELAY_MS),
        "the close must arrive while the create is still in flight"
    );
    agent.wait_idle().await;
    let ended = created.elapsed();
    wait_until(
        "the dyno created for the closed session to stop",
        WAIT,
        || one_off_dynos(&sim).is_empty(),
    )
    .await;
    let stopped = created.elapsed();
    wait_until("the dyno's processes to end", WAIT, || {
        sim.live_process_groups().len() == baseline
    })
    .await;
    let logs = suite.logs.text_since(mark);
    assert!(audit_line(&logs, &id).is_some(), "no audit line for {id}");
    // The agent stopped the dyno itself, with the name the late answer gave it (the emulator
    // logs each API request as it answers it).
    let position = |needle: &str| {
        logs.lines()
            .position(|l| l.contains("api request") && l.contains(needle))
    };
    let answered = position("method=POST path=/apps/demo/dynos status=201")
        .expect("the create was never answered");
    let deleted = position(&format!("method=DELETE path=/apps/demo/dynos/{dyno} "))
        .unwrap_or_else(|| panic!("the agent never stopped {dyno}"));
    assert!(
        answered < deleted,
        "{dyno} was stopped before its create answered"
    );

    sim.set_faults(Faults::default());
    let out = exec_once(&stream, run_params(&tag, &sim, "exec", "echo after"), b"").await;
    assert_eq!(out.stdout, b"after\n", "{}", out.message);
    assert_eq!(out.exit_code, Some(0), "{}", out.message);
    agent.wait_idle().await;
    wait_until("the second one-off dyno to stop", WAIT, || {
        one_off_dynos(&sim).is_empty()
    })
    .await;
    suite.note(format!(
        "create answered {DELAY_MS} ms late: the session ended {:.2} s and the dyno was gone {:.2} s after it was created",
        ended.as_secs_f64(),
        stopped.as_secs_f64()
    ));
    agent.shutdown().await;
    sim.shutdown().await;
    tag.assert_no_processes();
}

// ---------------------------------------------------------------------------------------------
// Issue 15: the SSH attach path of a Fir app
// ---------------------------------------------------------------------------------------------

/// A fresh account key (OpenSSH private key text), registered for the scan line by line.
fn account_key(suite: &Suite) -> String {
    let text = backend_run::account_key::generate().expect("generate an account key");
    for line in text
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
    {
        suite.secret("account key (OpenSSH body line)", line);
    }
    text
}

/// A `heroku run` session on the Fir app `firapp` with `key` as `HEROKU_SSH_KEY`.
fn fir_params(tag: &Tag, sim: &RunningSim, key: &str, command: &str) -> Params {
    Params::new(&["heroku", "run", "--exit-code"], "exec", tag)
        .args(&["--app", "firapp", command])
        .env("envvar:HEROKU_API_KEY", sim.api_key())
        .env("envvar:HEROKU_SSH_KEY", key)
}

/// A Fir one-off's SSH connection (over the upgraded HTTPS attach URL) is cut after 256 KiB of
/// output while the command still writes: the session ends at once with 254 naming the dyno
/// and the lost connection, the dyno is stopped, and a session with an unregistered key is
/// refused with a clear error. Neither key appears in any log line (the suite's scan).
async fn fir_attach_dropped_mid_output(suite: Arc<Suite>) {
    let tag = suite.tag();
    let Rig {
        sim,
        baseline,
        gw: _gw,
        mut agent,
        stream,
    } = Rig::start(&suite).await;
    let key = account_key(&suite);
    let parsed = backend_ssh::load_key(Some(&key), "test").expect("load the key");
    let api = heroku_api::ClientConfig {
        api_url: sim.api_url().parse().expect("api url"),
        ..heroku_api::ClientConfig::default()
    };
    let client = heroku_api::HerokuClient::new(api, heroku_api::ApiKey::new(sim.api_key()))
        .expect("api client");
    backend_run::account_key::register(&client, &parsed, "dynoagent@faults")
        .await
        .expect("register the account key");

    sim.set_faults(Faults {
        drop_ssh_after: Some(256 * 1024),
        ..Faults::default()
    });
    let started = Instant::now();
    let out = tokio::time::timeout(
        WAIT,
        exec_once(
            &stream,
            fir_params(&tag, &sim, &key, "yes dynoagent-output | head -c 50000000"),
            b"",
        ),
    )
    .await
    .expect("the session hung after its SSH attach connection dropped");
    let took = started.elapsed();
    assert_eq!(out.exit_code, Some(254), "{}", out.message);
    assert!(
        out.message.contains("over SSH") && out.message.contains("run."),
        "the close must name the dyno and the SSH connection: {}",
        out.message
    );
    assert!(
        out.stdout.len() <= 256 * 1024,
        "{} bytes of output after a drop at 256 KiB",
        out.stdout.len()
    );
    wait_until("the Fir one-off to stop", WAIT, || {
        dynoagent_tests::one_off_dynos(sim.dyno_states("firapp")).is_empty()
    })
    .await;

    sim.set_faults(Faults::default());
    let stranger = account_key(&suite);
    let refused = exec_once(&stream, fir_params(&tag, &sim, &stranger, "echo hi"), b"").await;
    assert_eq!(refused.exit_code, Some(254), "{}", refused.message);
    assert!(
        refused
            .message
            .contains("not registered on the Heroku account"),
        "{}",
        refused.message
    );
    agent.wait_idle().await;
    wait_until("the one-off dynos to stop", WAIT, || {
        dynoagent_tests::one_off_dynos(sim.dyno_states("firapp")).is_empty()
    })
    .await;
    wait_until("the emulator's processes to end", WAIT, || {
        sim.live_process_groups().len() == baseline
    })
    .await;
    suite.note(format!(
        "the dropped attach connection was reported in {:.1} s: {}",
        took.as_secs_f64(),
        out.message
    ));
    agent.shutdown().await;
    sim.shutdown().await;
    tag.assert_no_processes();
}

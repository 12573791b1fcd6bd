//! The run backend end to end: a hoop gateway (in-process fake) drives the real agent, which
//! starts one-off dynos on the Heroku emulator (`herokusim`, in-process, real TLS with its
//! test CA) and attaches through rendezvous. Every test ends with no one-off dyno and no
//! emulator process left.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use bytes::Bytes;
use dynoagent_tests::{AgentStream, FakeGateway, Outcome, Params, Tag, TestAgent, init_logs, sid};
use herokusim::{Faults, RunningSim, Sim, SimConfig};
use hoop_wire::{AgentPacket, ClientPacket, TermSize};

struct Env {
    sim: RunningSim,
    _gw: FakeGateway,
    agent: TestAgent,
    stream: AgentStream,
    tag: Tag,
}

async fn setup() -> Env {
    setup_with(SimConfig::demo()).await
}

/// The demo config plus `cnbapp`, an app built with Cloud Native Buildpacks (stack `cnb`).
fn with_cnb_app() -> SimConfig {
    let mut config = SimConfig::demo();
    config.apps.push(herokusim::AppConfig {
        name: "cnbapp".into(),
        stack: Some("cnb".into()),
        ..Default::default()
    });
    config
}

async fn setup_with(config: SimConfig) -> Env {
    init_logs();
    let sim = Sim::start(SimConfig {
        ssh_port: Some(0),
        ..config
    })
    .await
    .unwrap();
    let mut gw = FakeGateway::start("agent-run", "xagt-run-secret").await;
    let ca = format!("file://{}", sim.ca_file().display());
    let agent = TestAgent::start(
        &gw.dsn(),
        &[
            ("DYNOAGENT_HEROKU_API_URL", sim.api_url()),
            ("DYNOAGENT_HEROKU_EXEC_URL", sim.exec_url()),
            ("DYNOAGENT_HEROKU_CA", &ca),
        ],
    );
    let stream = gw.next_agent().await;
    Env {
        sim,
        _gw: gw,
        agent,
        stream,
        tag: Tag::new(),
    }
}

impl Env {
    fn params(&self, args: &[&str], verb: &str) -> Params {
        Params::new(&["/app/bin/heroku", "run", "--exit-code"], verb, &self.tag)
            .args(args)
            .env("envvar:HEROKU_API_KEY", self.sim.api_key())
    }

    async fn exec(&self, params: Params, stdin: &[u8]) -> Outcome {
        self.exec_with(params, None, stdin).await
    }

    /// Like `exec`, with hoop's `jit.timeout` on the session open.
    async fn exec_with(
        &self,
        params: Params,
        jit_timeout: Option<std::time::Duration>,
        stdin: &[u8],
    ) -> Outcome {
        let id = sid();
        let mut replies = self.stream.watch_session(&id);
        let mut open = params.open(&id);
        if let AgentPacket::SessionOpen(o) = &mut open {
            o.jit_timeout = jit_timeout;
        }
        self.stream.send(open).await;
        let ok = replies.next().await;
        assert!(matches!(ok, ClientPacket::SessionOpenOk { .. }), "{ok:?}");
        self.stream
            .send(AgentPacket::ExecWriteStdin {
                session_id: id.clone(),
                data: Bytes::copy_from_slice(stdin),
            })
            .await;
        let out = replies.until_close().await;
        self.stream
            .send(AgentPacket::SessionClose { session_id: id })
            .await;
        out
    }

    fn one_off_dynos(&self) -> Vec<(String, String)> {
        self.one_off_dynos_of("demo")
    }

    fn one_off_dynos_of(&self, app: &str) -> Vec<(String, String)> {
        dynoagent_tests::one_off_dynos(self.sim.dyno_states(app))
    }

    /// Ends the test: no session, no one-off dyno, no process left.
    async fn finish(self) {
        self.finish_apps(&["demo"]).await;
    }

    /// [`Env::finish`] for tests that use more apps.
    async fn finish_apps(mut self, apps: &[&str]) {
        self.agent.wait_idle().await;
        for app in apps {
            let left = self.one_off_dynos_of(app);
            assert!(left.is_empty(), "one-off dynos left on {app}: {left:?}");
        }
        assert!(
            self.one_off_dynos().is_empty(),
            "one-off dynos left: {:?}",
            self.one_off_dynos()
        );
        self.agent.shutdown().await;
        self.sim.shutdown().await;
        self.tag.assert_no_processes();
    }
}

#[tokio::test]
async fn exec_streams_merged_output_and_passes_the_exit_code_through() {
    let env = setup().await;
    let out = env
        .exec(
            env.params(&["--app", "demo", "cat; echo err >&2; (exit 3)"], "exec"),
            b"hello\n",
        )
        .await;
    assert_eq!(
        out.stdout, b"hello\nerr\n",
        "rendezvous merges stderr into one stream"
    );
    assert_eq!(out.exit_code, Some(3), "{}", out.message);
    let ok = env
        .exec(
            env.params(&["--app", "demo", "--", "echo", "a b", "c"], "exec"),
            b"",
        )
        .await;
    assert_eq!(ok.stdout, b"a b c\n");
    assert_eq!(ok.exit_code, Some(0));
    assert_eq!(ok.message, "");
    env.finish().await;
}

#[tokio::test]
async fn binary_input_with_eot_bytes_arrives_unchanged() {
    let env = setup().await;
    let input: Vec<u8> = (0..256 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    assert!(input.contains(&0x04));
    let out = env
        .exec(env.params(&["--app", "demo", "cat"], "exec"), &input)
        .await;
    assert_eq!(
        out.exit_code,
        Some(0),
        "{} (stdout {} bytes, stderr {:?})",
        out.message,
        out.stdout.len(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout == input,
        "output differs ({} bytes vs {})",
        out.stdout.len(),
        input.len()
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("0x04"),
        "the workaround must be announced on stderr"
    );
    env.finish().await;
}

#[tokio::test]
async fn exit_in_the_command_is_its_status_and_a_killed_shell_is_unknown_not_zero() {
    let env = setup().await;
    let out = env
        .exec(
            env.params(&["--app", "demo", "echo hi; exit 3"], "exec"),
            b"",
        )
        .await;
    assert_eq!(out.stdout, b"hi\n");
    assert_eq!(out.exit_code, Some(3), "{}", out.message);
    // `$$` is the dyno's shell (the one that would print the marker), not the subshell.
    let out = env
        .exec(
            env.params(&["--app", "demo", "echo hi; kill -9 $$"], "exec"),
            b"",
        )
        .await;
    assert_eq!(out.stdout, b"hi\n");
    assert_eq!(out.exit_code, Some(254));
    assert!(out.message.contains("exit marker"), "{}", out.message);
    env.finish().await;
}

#[tokio::test]
async fn bad_arguments_exit_2_without_any_api_call() {
    let env = setup().await;
    for args in [
        &["--app", "Not_An_App", "bash"][..],
        &["bash"],
        &["--app", "demo", "--bogus", "bash"],
    ] {
        let out = env.exec(env.params(args, "exec"), b"").await;
        assert_eq!(out.exit_code, Some(2), "{args:?}: {}", out.message);
        assert!(!out.message.is_empty());
    }
    let help = env.exec(env.params(&["--help"], "exec"), b"").await;
    assert_eq!(help.exit_code, Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("--app"));
    env.finish().await;
}

#[tokio::test]
async fn the_app_allowlist_refuses_other_apps_before_any_api_call() {
    let env = setup().await;
    let params = env
        .params(&["--app", "other-app", "true"], "exec")
        .env("envvar:HEROKU_APPS", "demo,staging");
    let out = env.exec(params, b"").await;
    assert_eq!(out.exit_code, Some(254));
    assert!(
        out.message.contains("not allowed") && out.message.contains("demo, staging"),
        "{}",
        out.message
    );
    let allowed = env
        .params(&["--app", "demo", "true"], "exec")
        .env("envvar:HEROKU_APPS", "demo,staging");
    assert_eq!(env.exec(allowed, b"").await.exit_code, Some(0));
    env.finish().await;
}

#[tokio::test]
async fn a_missing_api_key_is_a_clear_error() {
    let env = setup().await;
    let params = Params::new(&["heroku-run"], "exec", &env.tag).args(&["--app", "demo", "true"]);
    let out = env.exec(params, b"").await;
    assert_eq!(out.exit_code, Some(254));
    assert!(out.message.contains("HEROKU_API_KEY"), "{}", out.message);
    env.finish().await;
}

#[tokio::test]
async fn connect_uses_the_pending_size_and_says_later_resizes_cannot_reach_the_dyno() {
    let env = setup().await;
    let id = sid();
    let mut replies = env.stream.watch_session(&id);
    env.stream
        .send(
            env.params(
                &[
                    "--app",
                    "demo",
                    "stty size; echo $TERM; read x; echo got:$x",
                ],
                "connect",
            )
            .open(&id),
        )
        .await;
    assert!(matches!(
        replies.next().await,
        ClientPacket::SessionOpenOk { .. }
    ));
    let size = TermSize {
        rows: 33,
        cols: 111,
        xpixel: 0,
        ypixel: 0,
    };
    env.stream
        .send(AgentPacket::TerminalResize {
            session_id: id.clone(),
            size,
        })
        .await;
    env.stream
        .send(AgentPacket::TerminalWriteStdin {
            session_id: id.clone(),
            data: Bytes::from_static(b"\n"),
        })
        .await;
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("xterm-256color") {
        match replies.next().await {
            ClientPacket::Stdout { data, .. } => seen.extend_from_slice(&data),
            other => panic!(
                "{other:?} before the size: {:?}",
                String::from_utf8_lossy(&seen)
            ),
        }
    }
    assert!(
        String::from_utf8_lossy(&seen).contains("33 111"),
        "{:?}",
        String::from_utf8_lossy(&seen)
    );
    env.stream
        .send(AgentPacket::TerminalResize {
            session_id: id.clone(),
            size: TermSize {
                rows: 10,
                cols: 20,
                xpixel: 0,
                ypixel: 0,
            },
        })
        .await;
    env.stream
        .send(AgentPacket::TerminalWriteStdin {
            session_id: id.clone(),
            data: Bytes::from_static(b"yes\r"),
        })
        .await;
    let out = replies.until_close().await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("got:yes"));
    // `hoop connect` drops stderr, so in a terminal the notice is on stdout, with CRLF.
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("this resize cannot reach it\r\n"),
        "{:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        out.stderr.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.exit_code, Some(0), "{}", out.message);
    env.stream
        .send(AgentPacket::SessionClose { session_id: id })
        .await;
    env.finish().await;
}

#[tokio::test]
async fn closing_the_session_stops_the_one_off_dyno() {
    let env = setup().await;
    let id = sid();
    let mut replies = env.stream.watch_session(&id);
    env.stream
        .send(
            env.params(&["--app", "demo", "echo started; sleep 100"], "exec")
                .open(&id),
        )
        .await;
    assert!(matches!(
        replies.next().await,
        ClientPacket::SessionOpenOk { .. }
    ));
    env.stream
        .send(AgentPacket::ExecWriteStdin {
            session_id: id.clone(),
            data: Bytes::new(),
        })
        .await;
    match replies.next().await {
        ClientPacket::Stdout { data, .. } => assert_eq!(&data[..], b"started\n"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        env.one_off_dynos().len(),
        1,
        "the dyno runs while the session does"
    );
    env.stream
        .send(AgentPacket::SessionClose { session_id: id })
        .await;
    env.finish().await;
}

#[tokio::test]
async fn create_conflicts_are_retried_and_rate_limits_end_in_a_clear_error() {
    let env = setup().await;
    env.sim.set_faults(Faults {
        create_conflicts: 2,
        ..Faults::default()
    });
    let out = env
        .exec(
            env.params(&["--app", "demo", "echo after-409"], "exec"),
            b"",
        )
        .await;
    assert_eq!(out.stdout, b"after-409\n", "{}", out.message);
    assert_eq!(out.exit_code, Some(0));

    env.sim.set_faults(Faults {
        create_conflicts: 10,
        ..Faults::default()
    });
    let out = env
        .exec(env.params(&["--app", "demo", "true"], "exec"), b"")
        .await;
    assert_eq!(out.exit_code, Some(254));
    assert!(out.message.contains("HTTP 409"), "{}", out.message);

    env.sim.set_faults(Faults {
        server_errors: 10,
        ..Faults::default()
    });
    let out = env
        .exec(env.params(&["--app", "demo", "true"], "exec"), b"")
        .await;
    assert_eq!(out.exit_code, Some(254));
    assert!(out.message.contains("HTTP 503"), "{}", out.message);
    assert!(
        !out.message.contains(env.sim.api_key()),
        "the API key leaked: {}",
        out.message
    );
    env.sim.set_faults(Faults::default());
    env.finish().await;
}

#[tokio::test]
async fn a_dropped_rendezvous_is_reported_and_the_dyno_stopped() {
    let env = setup().await;
    env.sim.set_faults(Faults {
        drop_rendezvous_after: Some(5),
        ..Faults::default()
    });
    let out = env
        .exec(
            env.params(&["--app", "demo", "echo 0123456789; sleep 100"], "exec"),
            b"",
        )
        .await;
    assert_eq!(out.exit_code, Some(254));
    assert!(out.message.contains("dropped"), "{}", out.message);
    env.sim.set_faults(Faults::default());
    env.finish().await;
}

/// Every one-off dyno is created with a `time_to_live` (heroku-protocols.md §2.7): Heroku's
/// maximum by default, the connection's `HEROKU_RUN_TIME_TO_LIVE` when set, and hoop's
/// `jit.timeout` plus a minute when that is shorter. A bad setting is refused before any dyno.
#[tokio::test]
async fn every_one_off_dyno_is_created_with_a_bounded_time_to_live() {
    let env = setup().await;
    let secs = |n| Some(std::time::Duration::from_secs(n));
    let last_ttl = |env: &Env| env.sim.created_dynos().last().unwrap().time_to_live;

    let out = env
        .exec(env.params(&["--app", "demo", "true"], "exec"), b"")
        .await;
    assert_eq!(out.exit_code, Some(0), "{}", out.message);
    assert_eq!(last_ttl(&env), secs(86_400));

    let configured = env
        .params(&["--app", "demo", "true"], "exec")
        .env("envvar:HEROKU_RUN_TIME_TO_LIVE", "600");
    let out = env.exec(configured.clone(), b"").await;
    assert_eq!(out.exit_code, Some(0), "{}", out.message);
    assert_eq!(last_ttl(&env), secs(600));

    // A five-minute access window: the dyno expires a minute after it.
    let out = env
        .exec_with(configured, Some(std::time::Duration::from_secs(300)), b"")
        .await;
    assert_eq!(out.exit_code, Some(0), "{}", out.message);
    assert_eq!(last_ttl(&env), secs(360));

    let before = env.sim.created_dynos().len();
    let bad = env
        .params(&["--app", "demo", "true"], "exec")
        .env("envvar:HEROKU_RUN_TIME_TO_LIVE", "forever");
    let out = env.exec(bad, b"").await;
    assert_eq!(out.exit_code, Some(2));
    assert!(
        out.message.contains("HEROKU_RUN_TIME_TO_LIVE"),
        "{}",
        out.message
    );
    assert_eq!(
        env.sim.created_dynos().len(),
        before,
        "no dyno for a bad setting"
    );
    env.finish().await;
}

/// On an app with stack `cnb` the command gets the CNB `launcher ` prefix, as the Heroku CLI
/// adds it (heroku-protocols.md §2.6); `--no-launcher` and other stacks leave it alone.
#[tokio::test]
async fn cnb_apps_run_commands_through_the_launcher() {
    let env = setup_with(with_cnb_app()).await;
    let last_command = |env: &Env| env.sim.created_dynos().last().unwrap().command.clone();

    let out = env
        .exec(
            env.params(&["--app", "cnbapp", "echo hi; (exit 4)"], "exec"),
            b"",
        )
        .await;
    assert_eq!(
        (out.stdout.as_slice(), out.exit_code),
        (&b"hi\n"[..], Some(4)),
        "{}",
        out.message
    );
    assert!(
        last_command(&env).starts_with("launcher "),
        "{}",
        last_command(&env)
    );
    assert!(
        last_command(&env).contains("echo hi; (exit 4)"),
        "{}",
        last_command(&env)
    );

    let out = env
        .exec(
            env.params(&["--app", "cnbapp", "--no-launcher", "echo plain"], "exec"),
            b"",
        )
        .await;
    assert_eq!(out.stdout, b"plain\n", "{}", out.message);
    assert!(
        !last_command(&env).contains("launcher"),
        "{}",
        last_command(&env)
    );

    let out = env
        .exec(env.params(&["--app", "demo", "echo cedar"], "exec"), b"")
        .await;
    assert_eq!(out.stdout, b"cedar\n", "{}", out.message);
    assert!(
        !last_command(&env).contains("launcher"),
        "{}",
        last_command(&env)
    );
    env.finish_apps(&["demo", "cnbapp"]).await;
}

/// Defect 1 (issue 14): the dyno resets the rendezvous connection while the agent is still
/// writing a large exec input into a command that does not read it. The write and the read
/// fail together; whichever the session sees first, it must end with a clear error and the
/// dyno must be gone. Four sessions at once, so that every order is exercised.
#[tokio::test]
async fn a_rendezvous_reset_mid_write_ends_the_session_and_stops_the_dyno() {
    let env = setup().await;
    env.sim.set_faults(Faults {
        reset_rendezvous_after_input: Some(1000),
        ..Faults::default()
    });
    // More than the loopback socket buffers on both sides hold, so the write is pending when
    // the reset arrives. No 0x04 byte: the input goes as is.
    let input = vec![b'x'; 12 << 20];
    let session = || env.exec(env.params(&["--app", "demo", "sleep 100"], "exec"), &input);
    let outs = tokio::join!(session(), session(), session(), session());
    for out in [outs.0, outs.1, outs.2, outs.3] {
        assert_eq!(out.exit_code, Some(254), "{}", out.message);
        assert!(out.message.contains("dropped"), "{}", out.message);
    }
    env.sim.set_faults(Faults::default());
    env.finish().await;
}

/// Issue 14: a session closed while its dyno create is in flight must not leave the dyno
/// behind. The emulator creates the dyno at once and answers 3 s later.
#[tokio::test]
async fn closing_during_dyno_create_leaves_no_dyno() {
    let mut env = setup().await;
    env.sim.set_faults(Faults {
        create_response_delay_ms: 3000,
        ..Faults::default()
    });
    let id = sid();
    let mut replies = env.stream.watch_session(&id);
    env.stream
        .send(
            env.params(&["--app", "demo", "sleep 100"], "exec")
                .open(&id),
        )
        .await;
    assert!(matches!(
        replies.next().await,
        ClientPacket::SessionOpenOk { .. }
    ));
    env.stream
        .send(AgentPacket::ExecWriteStdin {
            session_id: id.clone(),
            data: Bytes::new(),
        })
        .await;
    dynoagent_tests::faults::wait_until(
        "the dyno to exist",
        std::time::Duration::from_secs(10),
        || !env.one_off_dynos().is_empty(),
    )
    .await;
    env.stream
        .send(AgentPacket::SessionClose { session_id: id })
        .await;
    env.agent.wait_idle().await;
    env.sim.set_faults(Faults::default());
    assert!(
        env.one_off_dynos().is_empty(),
        "a dyno outlived its session: {:?}",
        env.one_off_dynos()
    );
    env.finish().await;
}

//! Heroku's SSH attach path (issue 15): a Fir app and a Shield app on the Heroku emulator answer
//! dyno creates (the run backend) and `run:inside` (psexec on Fir) with an `https://` attach URL;
//! the real agent upgrades it over verified TLS (the emulator's test CA), speaks SSH with the
//! connection's account key (`HEROKU_SSH_KEY`, registered the way `dynoagent keys register`
//! does it), and streams both ways. A hoop gateway (in-process fake) drives the agent packet by
//! packet. Every test ends with no one-off dyno and no emulator process left, and the Fir
//! formation dynos still up.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use bytes::Bytes;
use dynoagent_tests::{AgentStream, FakeGateway, Outcome, Params, Tag, TestAgent, init_logs, sid};
use herokusim::{AppConfig, Faults, Generation, RunningSim, Sim, SimConfig, SpaceKind};
use hoop_wire::{AgentPacket, ClientPacket, TermSize};

const APPS: [&str; 2] = ["firapp", "shieldapp"];

struct Env {
    sim: RunningSim,
    _gw: FakeGateway,
    agent: TestAgent,
    stream: AgentStream,
    tag: Tag,
    /// The registered account key (OpenSSH private key text).
    key: String,
}

fn config() -> SimConfig {
    let mut config = SimConfig::demo();
    config.ssh_port = Some(0);
    let dyno = |name: &str| herokusim::DynoConfig {
        name: name.into(),
        ..herokusim::DynoConfig::default()
    };
    config.apps.push(AppConfig {
        name: "firapp".into(),
        generation: Generation::Fir,
        space: Some(SpaceKind::Private),
        formation: vec![dyno("web.1"), dyno("web.2"), dyno("worker.1")],
        ..AppConfig::default()
    });
    config.apps.push(AppConfig {
        name: "shieldapp".into(),
        space: Some(SpaceKind::Shield),
        ..AppConfig::default()
    });
    config
}

fn heroku(sim: &RunningSim) -> heroku_api::HerokuClient {
    let api = heroku_api::ClientConfig {
        api_url: sim.api_url().parse().unwrap(),
        ..heroku_api::ClientConfig::default()
    };
    heroku_api::HerokuClient::new(api, heroku_api::ApiKey::new(sim.api_key())).unwrap()
}

async fn setup() -> Env {
    init_logs();
    let sim = Sim::start(config()).await.unwrap();
    let key = backend_run::account_key::generate().unwrap();
    let parsed = backend_ssh::load_key(Some(&key), "test").unwrap();
    let first = backend_run::account_key::register(&heroku(&sim), &parsed, "dynoagent@test")
        .await
        .unwrap();
    assert!(first.added);
    // Registering again is a no-op: the account keeps one copy.
    let again = backend_run::account_key::register(&heroku(&sim), &parsed, "other-comment")
        .await
        .unwrap();
    assert!(!again.added);
    assert_eq!(sim.account_keys().len(), 1);

    let mut gw = FakeGateway::start("agent-fir", "xagt-fir-secret").await;
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
        key,
    }
}

impl Env {
    fn params(&self, args: &[&str], verb: &str) -> Params {
        self.params_with_key(args, verb, Some(&self.key))
    }

    fn params_with_key(&self, args: &[&str], verb: &str, key: Option<&str>) -> Params {
        let p = Params::new(&["/app/bin/heroku", "run", "--exit-code"], verb, &self.tag)
            .args(args)
            .env("envvar:HEROKU_API_KEY", self.sim.api_key());
        match key {
            Some(k) => p.env("envvar:HEROKU_SSH_KEY", k),
            None => p,
        }
    }

    async fn exec(&self, params: Params, stdin: &[u8]) -> Outcome {
        let id = sid();
        let mut replies = self.stream.watch_session(&id);
        self.stream.send(params.open(&id)).await;
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

    fn one_off_dynos(&self, app: &str) -> Vec<(String, String)> {
        dynoagent_tests::one_off_dynos(self.sim.dyno_states(app))
    }

    fn psexec(&self, args: &[&str], verb: &str) -> Params {
        Params::new(&["/app/bin/ps-exec.sh"], verb, &self.tag)
            .args(args)
            .env("envvar:HEROKU_API_KEY", self.sim.api_key())
            .env("envvar:HEROKU_SSH_KEY", &self.key)
    }

    /// The Fir app's formation dynos (pod-style names), sorted.
    fn fir_formation(&self) -> Vec<(String, String)> {
        let mut dynos: Vec<_> = self
            .sim
            .dyno_states("firapp")
            .into_iter()
            .filter(|(name, _)| !name.starts_with("run."))
            .collect();
        dynos.sort();
        dynos
    }

    /// Ends the test: no session, no one-off dyno, no process left; the Fir formation is up.
    async fn finish(mut self) {
        self.agent.wait_idle().await;
        for app in APPS {
            let left = self.one_off_dynos(app);
            assert!(left.is_empty(), "one-off dynos left on {app}: {left:?}");
        }
        let formation = self.fir_formation();
        assert_eq!(formation.len(), 3, "{formation:?}");
        assert!(
            formation.iter().all(|(_, state)| state == "up"),
            "{formation:?}"
        );
        self.agent.shutdown().await;
        self.sim.shutdown().await;
        self.tag.assert_no_processes();
    }
}

#[tokio::test]
async fn exec_on_fir_and_shield_passes_output_stderr_and_exit_codes() {
    let env = setup().await;
    for app in APPS {
        let out = env
            .exec(
                env.params(&["--app", app, "cat; echo err >&2; (exit 3)"], "exec"),
                b"hello\n",
            )
            .await;
        assert_eq!(out.exit_code, Some(3), "{app}: {}", out.message);
        assert_eq!(out.stdout, b"hello\n", "{app}: the marker is stripped");
        assert_eq!(out.stderr, b"err\n", "{app}: stderr stays apart on SSH");
        let ok = env
            .exec(
                env.params(&["--app", app, "--", "echo", "a b"], "exec"),
                b"",
            )
            .await;
        assert_eq!(
            (ok.exit_code, ok.stdout.as_slice()),
            (Some(0), &b"a b\n"[..])
        );
        let missing = env
            .exec(
                env.params(&["--app", app, "no-such-command-7f3a"], "exec"),
                b"",
            )
            .await;
        assert_eq!(missing.exit_code, Some(127), "{}", missing.message);
        assert!(
            String::from_utf8_lossy(&missing.stderr).contains("not found"),
            "{:?}",
            String::from_utf8_lossy(&missing.stderr)
        );
    }
    // The Fir app's commands went through the CNB launcher, as the CLI sends them.
    let fir: Vec<_> = env
        .sim
        .created_dynos()
        .into_iter()
        .filter(|d| d.app == "firapp")
        .collect();
    assert!(!fir.is_empty());
    assert!(
        fir.iter().all(|d| d.command.starts_with("launcher ")),
        "{fir:?}"
    );
    env.finish().await;
}

#[tokio::test]
async fn a_mebibyte_of_binary_input_arrives_byte_exact() {
    let env = setup().await;
    // Every byte value, 0x04 included, in a pattern that is not periodic in 256.
    let input: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let out = env
        .exec(env.params(&["--app", "firapp", "cat"], "exec"), &input)
        .await;
    assert_eq!(out.exit_code, Some(0), "{}", out.message);
    assert_eq!(out.stdout.len(), input.len());
    assert!(out.stdout == input, "the output differs from the input");
    env.finish().await;
}

async fn read_stdout_until(
    replies: &mut dynoagent_tests::SessionReplies,
    seen: &mut Vec<u8>,
    want: &str,
) {
    while !String::from_utf8_lossy(seen).contains(want) {
        match replies.next().await {
            ClientPacket::Stdout { data, .. } => seen.extend_from_slice(&data),
            ClientPacket::Stderr { .. } | ClientPacket::KeepAlive => {}
            other => panic!(
                "{other:?} before {want:?}: {:?}",
                String::from_utf8_lossy(seen)
            ),
        }
    }
}

#[tokio::test]
async fn a_terminal_gets_its_size_and_live_resizes() {
    let env = setup().await;
    let id = sid();
    let mut replies = env.stream.watch_session(&id);
    env.stream
        .send(
            env.params(
                &[
                    "--app",
                    "firapp",
                    "stty size; echo ready-$TERM; read x; stty size; echo got:$x",
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
    let size = |rows, cols| TermSize {
        rows,
        cols,
        xpixel: 0,
        ypixel: 0,
    };
    env.stream
        .send(AgentPacket::TerminalResize {
            session_id: id.clone(),
            size: size(33, 111),
        })
        .await;
    env.stream
        .send(AgentPacket::TerminalWriteStdin {
            session_id: id.clone(),
            data: Bytes::new(),
        })
        .await;
    let mut seen = Vec::new();
    read_stdout_until(&mut replies, &mut seen, "ready-xterm-256color").await;
    assert!(
        String::from_utf8_lossy(&seen).contains("33 111"),
        "{:?}",
        String::from_utf8_lossy(&seen)
    );
    // This path can resize, unlike rendezvous: the next `stty size` sees the new size.
    env.stream
        .send(AgentPacket::TerminalResize {
            session_id: id.clone(),
            size: size(10, 20),
        })
        .await;
    env.stream
        .send(AgentPacket::TerminalWriteStdin {
            session_id: id.clone(),
            data: Bytes::from_static(b"yes\r"),
        })
        .await;
    read_stdout_until(&mut replies, &mut seen, "got:yes").await;
    let text = String::from_utf8_lossy(&seen).into_owned();
    assert!(text.contains("10 20"), "{text:?}");
    assert!(!text.contains("cannot reach"), "{text:?}");
    let out = replies.until_close().await;
    assert_eq!(out.exit_code, Some(0), "{}", out.message);
    env.stream
        .send(AgentPacket::SessionClose { session_id: id })
        .await;
    env.finish().await;
}

#[tokio::test]
async fn closing_mid_session_leaves_no_dyno_and_no_process() {
    let env = setup().await;
    let id = sid();
    let mut replies = env.stream.watch_session(&id);
    env.stream
        .send(
            env.params(&["--app", "firapp", "echo started; sleep 100"], "exec")
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
    let mut seen = Vec::new();
    read_stdout_until(&mut replies, &mut seen, "started\n").await;
    assert_eq!(env.one_off_dynos("firapp").len(), 1, "it runs meanwhile");
    env.stream
        .send(AgentPacket::SessionClose { session_id: id })
        .await;
    env.finish().await;
}

#[tokio::test]
async fn a_missing_or_unregistered_key_is_a_clear_error_and_leaves_no_dyno() {
    let env = setup().await;
    let out = env
        .exec(
            env.params_with_key(&["--app", "firapp", "echo hi"], "exec", None),
            b"",
        )
        .await;
    // Known from the app lookup: refused before any dyno exists.
    assert_eq!(out.exit_code, Some(2), "{}", out.message);
    assert!(out.message.contains("HEROKU_SSH_KEY"), "{}", out.message);
    assert!(env.sim.created_dynos().is_empty());
    // With --no-launcher there is no app lookup: the attach URL tells, and the dyno is stopped.
    let late = env
        .exec(
            env.params_with_key(
                &["--app", "shieldapp", "--no-launcher", "echo hi"],
                "exec",
                None,
            ),
            b"",
        )
        .await;
    assert_eq!(late.exit_code, Some(254), "{}", late.message);
    assert!(late.message.contains("HEROKU_SSH_KEY"), "{}", late.message);
    assert!(out.stdout.is_empty());

    let stranger = backend_run::account_key::generate().unwrap();
    let out = env
        .exec(
            env.params_with_key(&["--app", "firapp", "echo hi"], "exec", Some(&stranger)),
            b"",
        )
        .await;
    assert_eq!(out.exit_code, Some(254), "{}", out.message);
    assert!(
        out.message.contains("not registered on the Heroku account"),
        "{}",
        out.message
    );
    assert!(!out.message.contains("PRIVATE KEY"), "{}", out.message);
    assert!(out.stdout.is_empty());

    let garbage = env
        .exec(
            env.params_with_key(&["--app", "firapp", "echo hi"], "exec", Some("not a key")),
            b"",
        )
        .await;
    assert_eq!(garbage.exit_code, Some(2), "{}", garbage.message);
    assert!(
        garbage.message.contains("HEROKU_SSH_KEY"),
        "{}",
        garbage.message
    );
    // A key that does not load is refused before any dyno exists: only the --no-launcher and
    // the unregistered-key sessions created one (and stopped it).
    assert_eq!(env.sim.created_dynos().len(), 2);
    env.finish().await;
}

#[tokio::test]
async fn a_refused_or_dropped_upgrade_ends_with_254_and_no_dyno() {
    let env = setup().await;
    env.sim.set_faults(Faults {
        attach_refusals: 1,
        ..Faults::default()
    });
    let out = env
        .exec(env.params(&["--app", "firapp", "echo hi"], "exec"), b"")
        .await;
    assert_eq!(out.exit_code, Some(254), "{}", out.message);
    assert!(
        out.message
            .contains("You can't access this space from your IP address"),
        "{}",
        out.message
    );
    env.sim.set_faults(Faults {
        attach_refusals: 1,
        attach_refusal_status: 502,
        ..Faults::default()
    });
    let out = env
        .exec(env.params(&["--app", "firapp", "echo hi"], "exec"), b"")
        .await;
    assert_eq!(out.exit_code, Some(254), "{}", out.message);
    assert!(out.message.contains("502"), "{}", out.message);
    env.sim.set_faults(Faults {
        drop_attach_upgrades: 1,
        ..Faults::default()
    });
    let out = env
        .exec(env.params(&["--app", "firapp", "echo hi"], "exec"), b"")
        .await;
    assert_eq!(out.exit_code, Some(254), "{}", out.message);
    assert!(out.message.contains("over SSH"), "{}", out.message);
    // Without exit-status the marker still gives the code.
    env.sim.set_faults(Faults {
        attach_omit_exit_status: true,
        ..Faults::default()
    });
    let out = env
        .exec(env.params(&["--app", "firapp", "(exit 6)"], "exec"), b"")
        .await;
    assert_eq!(out.exit_code, Some(6), "{}", out.message);
    env.finish().await;
}

fn local_uname() -> String {
    let out = std::process::Command::new("uname")
        .arg("-a")
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn psexec_on_fir_runs_inside_a_web_dyno_with_the_same_flags() {
    let env = setup().await;
    let web = env.fir_formation()[0].0.clone();
    assert!(web.starts_with("web-"), "{web}");

    // Default mode, no --dyno: the input is the command; a running web dyno is chosen.
    let out = env
        .exec(env.psexec(&["--app", "firapp"], "exec"), b"uname -a")
        .await;
    assert_eq!(out.exit_code, Some(0), "{}", out.message);
    assert_eq!(String::from_utf8_lossy(&out.stdout), local_uname());
    let note = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        note.contains("is a Fir app") && note.contains("run:inside"),
        "{note}"
    );

    // The command runs inside the named dyno (its DYNO), with its exit code.
    let named = env
        .exec(
            env.psexec(&["--app", "firapp", "--dyno", &web], "exec"),
            b"echo $DYNO; exit 3",
        )
        .await;
    assert_eq!(named.exit_code, Some(3), "{}", named.message);
    assert_eq!(String::from_utf8_lossy(&named.stdout), format!("{web}\n"));
    let missing = env
        .exec(
            env.psexec(&["--app", "firapp"], "exec"),
            b"no-such-command-7f3a",
        )
        .await;
    assert_eq!(missing.exit_code, Some(127), "{}", missing.message);

    // --pipe is binary-safe: 1 MiB with every byte value through cat.
    let input: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let piped = env
        .exec(
            env.psexec(&["--app", "firapp", "--pipe", "cat"], "exec"),
            &input,
        )
        .await;
    assert_eq!(piped.exit_code, Some(0), "{}", piped.message);
    assert!(
        piped.stdout == input,
        "the --pipe output differs from its input"
    );
    env.finish().await;
}

#[tokio::test]
async fn psexec_on_fir_names_the_real_dynos_and_lists_them_in_status() {
    let env = setup().await;
    let out = env
        .exec(
            env.psexec(&["--app", "firapp", "--dyno", "web.1"], "exec"),
            b"echo hi",
        )
        .await;
    assert_eq!(out.exit_code, Some(1), "{}", out.message);
    for (name, _) in env.fir_formation() {
        assert!(out.message.contains(&name), "{name}: {}", out.message);
    }
    assert!(
        out.message.contains("web.1 is not one of them"),
        "{}",
        out.message
    );
    assert!(out.stdout.is_empty());

    let status = env
        .exec(env.psexec(&["--app", "firapp", "--status"], "exec"), b"")
        .await;
    assert_eq!(status.exit_code, Some(0), "{}", status.message);
    let text = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(text.contains("is a Fir app"), "{text}");
    for (name, state) in env.fir_formation() {
        assert!(
            text.lines()
                .any(|l| l.contains(&name) && l.contains(&state)),
            "{name} {state}: {text}"
        );
    }

    let nokey = env
        .exec(
            Params::new(&["/app/bin/ps-exec.sh"], "exec", &env.tag)
                .args(&["--app", "firapp"])
                .env("envvar:HEROKU_API_KEY", env.sim.api_key()),
            b"echo hi",
        )
        .await;
    assert_eq!(nokey.exit_code, Some(1), "{}", nokey.message);
    assert!(
        nokey.message.contains("HEROKU_SSH_KEY"),
        "{}",
        nokey.message
    );
    env.finish().await;
}

#[tokio::test]
async fn psexec_interactive_on_fir_resizes_live() {
    let env = setup().await;
    let id = sid();
    let mut replies = env.stream.watch_session(&id);
    env.stream
        .send(
            env.psexec(&["--app", "firapp", "--interactive"], "connect")
                .open(&id),
        )
        .await;
    assert!(matches!(
        replies.next().await,
        ClientPacket::SessionOpenOk { .. }
    ));
    let size = |rows, cols| TermSize {
        rows,
        cols,
        xpixel: 0,
        ypixel: 0,
    };
    env.stream
        .send(AgentPacket::TerminalResize {
            session_id: id.clone(),
            size: size(40, 120),
        })
        .await;
    // hoop's CLI opens a terminal with one newline, which the agent takes as the attach.
    env.stream
        .send(AgentPacket::TerminalWriteStdin {
            session_id: id.clone(),
            data: Bytes::from_static(b"\n"),
        })
        .await;
    env.stream
        .send(AgentPacket::TerminalWriteStdin {
            session_id: id.clone(),
            data: Bytes::from_static(b"stty size; echo first-$DYNO\r"),
        })
        .await;
    let mut seen = Vec::new();
    read_stdout_until(&mut replies, &mut seen, "first-web-").await;
    read_stdout_until(&mut replies, &mut seen, "40 120").await;
    env.stream
        .send(AgentPacket::TerminalResize {
            session_id: id.clone(),
            size: size(12, 34),
        })
        .await;
    env.stream
        .send(AgentPacket::TerminalWriteStdin {
            session_id: id.clone(),
            data: Bytes::from_static(b"stty size; exit 4\r"),
        })
        .await;
    read_stdout_until(&mut replies, &mut seen, "12 34").await;
    let out = replies.until_close().await;
    assert_eq!(out.exit_code, Some(4), "{}", out.message);
    env.stream
        .send(AgentPacket::SessionClose { session_id: id })
        .await;
    env.finish().await;
}

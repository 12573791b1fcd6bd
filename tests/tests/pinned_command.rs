//! Issue 13, finding 5: a connection that pins its command (`DYNOAGENT_PIN_COMMAND=true`)
//! refuses client arguments, for run, psexec and ssh connections alike, through the real path
//! (in-process hoop gateway → agent → backend routing; the Heroku emulator for run). Without
//! the pin, arguments are appended as the Heroku CLI and OpenSSH do.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use bytes::Bytes;
use dynoagent_tests::{AgentStream, FakeGateway, Outcome, Params, Tag, TestAgent, init_logs, sid};
use herokusim::{Sim, SimConfig};
use hoop_wire::{AgentPacket, ClientPacket};

/// Opens an exec session and returns what the client saw (a refusal may come before the
/// open is acknowledged).
async fn exec(stream: &AgentStream, params: Params, stdin: &[u8]) -> Outcome {
    let id = sid();
    let mut replies = stream.watch_session(&id);
    stream.send(params.open(&id)).await;
    let first = replies.next().await;
    let outcome = match first {
        ClientPacket::SessionOpenOk { .. } => {
            stream
                .send(AgentPacket::ExecWriteStdin {
                    session_id: id.clone(),
                    data: Bytes::copy_from_slice(stdin),
                })
                .await;
            replies.until_close().await
        }
        ClientPacket::SessionClose {
            exit_code, message, ..
        } => Outcome {
            open_ok: None,
            stdout: Vec::new(),
            stderr: Vec::new(),
            exit_code,
            message: String::from_utf8_lossy(&message).into_owned(),
            closes: 1,
        },
        other => panic!("unexpected first reply {other:?}"),
    };
    stream
        .send(AgentPacket::SessionClose { session_id: id })
        .await;
    outcome
}

fn refused(out: &Outcome, what: &str) {
    assert_eq!(out.exit_code, Some(254), "{what}: {}", out.message);
    assert!(
        out.message
            .contains("this connection pins its command (DYNOAGENT_PIN_COMMAND)"),
        "{what}: {}",
        out.message
    );
    let all = [&out.stdout[..], &out.stderr[..]].concat();
    assert!(
        !String::from_utf8_lossy(&all).contains("PWNED"),
        "{what}: the user's command ran"
    );
}

#[tokio::test]
async fn a_pinned_command_refuses_client_arguments_for_run_psexec_and_ssh() {
    init_logs();
    let sim = Sim::start(SimConfig {
        ssh_port: Some(0),
        ..SimConfig::demo()
    })
    .await
    .unwrap();
    let mut gw = FakeGateway::start("agent-pin", "xagt-pin-secret").await;
    let ca = format!("file://{}", sim.ca_file().display());
    let mut agent = TestAgent::start(
        &gw.dsn(),
        &[
            ("DYNOAGENT_HEROKU_API_URL", sim.api_url()),
            ("DYNOAGENT_HEROKU_EXEC_URL", sim.exec_url()),
            ("DYNOAGENT_HEROKU_CA", &ca),
        ],
    );
    let stream = gw.next_agent().await;
    let tag = Tag::new();
    let attack: &[&str] = &[";", "echo", "PWNED"];

    // run: `heroku run --app demo -- echo billing-report`.
    let run = |pinned: bool| {
        let p = Params::new(
            &[
                "heroku",
                "run",
                "--exit-code",
                "--app",
                "demo",
                "--",
                "echo",
                "billing-report",
            ],
            "exec",
            &tag,
        )
        .env("envvar:HEROKU_API_KEY", sim.api_key());
        if pinned {
            p.env("envvar:DYNOAGENT_PIN_COMMAND", "true")
        } else {
            p
        }
    };
    // The default keeps the CLI's behaviour: the arguments are appended (and run).
    let out = exec(&stream, run(false).args(attack), b"").await;
    assert_eq!(out.exit_code, Some(0), "{}", out.message);
    assert!(String::from_utf8_lossy(&out.stdout).contains("PWNED"));
    let out = exec(&stream, run(true).args(attack), b"").await;
    refused(&out, "run");
    let out = exec(&stream, run(true), b"").await;
    assert_eq!(out.exit_code, Some(0), "{}", out.message);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "billing-report"
    );

    // psexec: `ps-exec.sh --app demo -- uptime`.
    let psexec = Params::new(
        &["ps-exec.sh", "--app", "demo", "--", "uptime"],
        "exec",
        &tag,
    )
    .env("envvar:HEROKU_API_KEY", sim.api_key())
    .env("envvar:DYNOAGENT_PIN_COMMAND", "true");
    let out = exec(&stream, psexec.clone().args(attack), b"").await;
    refused(&out, "psexec");
    let out = exec(&stream, psexec.args(&["--dyno", "web.2"]), b"").await;
    refused(&out, "psexec --dyno");

    // ssh: `ssh ssh://deploy@127.0.0.1:1 uptime` (nothing is dialled).
    let ssh = Params::new(&["ssh", "ssh://deploy@127.0.0.1:1", "uptime"], "exec", &tag)
        .env("envvar:DYNOAGENT_PIN_COMMAND", "yes");
    let out = exec(&stream, ssh.args(attack), b"").await;
    refused(&out, "ssh");

    agent.wait_idle().await;
    let left = dynoagent_tests::one_off_dynos(sim.dyno_states("demo"));
    assert!(left.is_empty(), "one-off dynos left: {left:?}");
    agent.shutdown().await;
    sim.shutdown().await;
    tag.assert_no_processes();
}

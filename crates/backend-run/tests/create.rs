//! The run backend's dyno create against the Heroku emulator (issue 14): a create whose answer
//! never comes (the client times out, the dyno exists anyway) leaves no one-off dyno behind.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use backend::Mode;
use backend::testing::{env, start};
use backend_run::rendezvous::RendezvousConfig;
use backend_run::{RunBackend, RunConfig};
use heroku_api::ClientConfig;
use herokusim::{Faults, Sim, SimConfig};

#[tokio::test]
async fn a_create_whose_answer_never_comes_leaves_no_dyno() {
    // No SSH proxy on port 80: this test does not use it, and port 80 is shared machine-wide.
    let sim = Sim::start(SimConfig {
        ssh_port: Some(0),
        ..SimConfig::demo()
    })
    .await
    .unwrap();
    // The emulator creates the dyno at once and answers after the client gave up.
    sim.set_faults(Faults {
        create_response_delay_ms: 5_000,
        ..Faults::default()
    });
    let backend = RunBackend::new(RunConfig {
        api: ClientConfig {
            api_url: sim.api_url().parse().unwrap(),
            exec_url: sim.exec_url().parse().unwrap(),
            extra_roots_pem: Some(sim.ca_pem().as_bytes().to_vec()),
            request_timeout: Duration::from_secs(1),
            max_attempts: 1,
            ..ClientConfig::default()
        },
        rendezvous: RendezvousConfig::new(Some(sim.ca_pem().as_bytes())).unwrap(),
        drain_after_marker: Duration::from_secs(1),
        stop_timeout: Duration::from_secs(10),
        attach_ssh: RunConfig::default_attach_ssh(),
    });
    let s = start(
        &backend,
        &["heroku", "run"],
        &["--app", "demo", "sleep 100"],
        env(&[("HEROKU_API_KEY", sim.api_key())]),
        Mode::Exec,
    );
    s.send(backend::Input::Eof).await;
    let (status, _, _) = s.finish().await;
    assert_eq!(status.code, 254, "{status:?}");
    let left: Vec<_> = sim
        .dyno_states("demo")
        .into_iter()
        .filter(|(name, _)| name.starts_with("run."))
        .collect();
    assert!(left.is_empty(), "one-off dynos left: {left:?}");
    sim.set_faults(Faults::default());
    sim.shutdown().await;
}

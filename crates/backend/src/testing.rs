//! Test support for backends (feature `test-support`, dev-only): runs `Backend::run` as the
//! agent's session task does, with in-memory output sinks, an input channel and a
//! cancellation token, and waits on output by notification rather than by polling.
//!
//! It is shared by the backends' end-to-end tests; nothing in a shipped build uses it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_debug_implementations
)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::{
    Backend, ExitStatus, Input, Mode, OutputSink, OutputTarget, SessionEnv, SessionId, SessionIo,
    SessionReport, SessionRequest, SinkClosed, StreamKind,
};

/// Output collected from a session.
#[derive(Default)]
pub struct Collected {
    out: Mutex<Vec<u8>>,
    err: Mutex<Vec<u8>>,
    tick: Mutex<Option<watch::Sender<u64>>>,
}

impl OutputTarget for Collected {
    fn write(&self, stream: StreamKind, chunk: Bytes) -> BoxFuture<'_, Result<(), SinkClosed>> {
        Box::pin(async move {
            match stream {
                StreamKind::Stdout => self.out.lock().unwrap().extend_from_slice(&chunk),
                StreamKind::Stderr => self.err.lock().unwrap().extend_from_slice(&chunk),
            }
            if let Some(tick) = &*self.tick.lock().unwrap() {
                tick.send_modify(|n| *n += 1);
            }
            Ok(())
        })
    }
}

/// A session running on a backend.
pub struct Running {
    pub report: SessionReport,
    pub input: mpsc::Sender<Input>,
    pub cancel: CancellationToken,
    pub task: tokio::task::JoinHandle<ExitStatus>,
    collected: Arc<Collected>,
    ticks: watch::Receiver<u64>,
}

impl Running {
    pub fn stdout(&self) -> Vec<u8> {
        self.collected.out.lock().unwrap().clone()
    }
    pub fn stderr(&self) -> Vec<u8> {
        self.collected.err.lock().unwrap().clone()
    }
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout()).into_owned()
    }
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr()).into_owned()
    }

    /// Waits (at most `limit`) until stdout contains `needle`.
    pub async fn wait_stdout(&mut self, needle: &str, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if self.stdout_text().contains(needle) {
                return;
            }
            match tokio::time::timeout_at(deadline, self.ticks.changed()).await {
                Ok(Ok(())) => {}
                _ => panic!(
                    "stdout never contained {needle:?}; stdout={:?} stderr={:?}",
                    self.stdout_text(),
                    self.stderr_text()
                ),
            }
        }
    }

    pub async fn send(&self, input: Input) {
        self.input.send(input).await.unwrap();
    }

    /// Waits (at most 30 s) for the session's exit status.
    pub async fn finish(self) -> (ExitStatus, Vec<u8>, Vec<u8>) {
        let status = tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the session did not end within 30 s")
            .unwrap();
        let out = self.collected.out.lock().unwrap().clone();
        let err = self.collected.err.lock().unwrap().clone();
        (status, out, err)
    }
}

/// Starts `backend.run` for a session with the given command, args, env and mode.
pub fn start(
    backend: &dyn Backend,
    command: &[&str],
    args: &[&str],
    env: SessionEnv,
    mode: Mode,
) -> Running {
    let collected = Arc::new(Collected::default());
    let (tick_tx, ticks) = watch::channel(0u64);
    *collected.tick.lock().unwrap() = Some(tick_tx);
    let target: Arc<dyn OutputTarget> = collected.clone();
    let (input, input_rx) = mpsc::channel(16);
    let cancel = CancellationToken::new();
    let report = SessionReport::default();
    let io = SessionIo {
        input: input_rx,
        stdout: OutputSink::new(target.clone(), StreamKind::Stdout, Default::default()),
        stderr: OutputSink::new(target, StreamKind::Stderr, Default::default()),
        cancel: cancel.clone(),
        report: report.clone(),
    };
    let request = SessionRequest {
        session_id: SessionId::parse(b"test-session").unwrap(),
        connection_name: "test".into(),
        user: "tester".into(),
        command: command.iter().map(|s| (*s).to_owned()).collect(),
        args: args.iter().map(|s| (*s).to_owned()).collect(),
        env,
        mode,
        jit_timeout: None,
    };
    let task = tokio::spawn(backend.run(request, io));
    Running {
        report,
        input,
        cancel,
        task,
        collected,
        ticks,
    }
}

/// A session env with these plain variables.
pub fn env(vars: &[(&str, &str)]) -> SessionEnv {
    let mut env = SessionEnv::default();
    for (k, v) in vars {
        env.set_from_connection(k, *v);
    }
    env
}

//! The local backend under input pressure: a terminal whose process cannot keep up with a
//! 1 MiB paste keeps serving output, exit and close (STYLE.md rule 16).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backend::{
    Backend as _, Input, Mode, OutputSink, OutputTarget, SessionEnv, SessionId, SessionIo,
    SessionReport, SessionRequest, SinkClosed, StreamKind, TermSize,
};
use backend_local::{LocalBackend, LocalConfig};
use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

/// A safety net only: every wait below ends on an event long before this.
const SAFETY: Duration = Duration::from_secs(30);

/// Records what the session writes to the client.
#[derive(Default)]
struct Client {
    out: Mutex<Vec<u8>>,
    more: Notify,
}

impl OutputTarget for Client {
    fn write(&self, _: StreamKind, chunk: Bytes) -> BoxFuture<'_, Result<(), SinkClosed>> {
        Box::pin(async move {
            self.out.lock().unwrap().extend_from_slice(&chunk);
            self.more.notify_waiters();
            Ok(())
        })
    }
}

impl Client {
    /// Waits until `needle` has appeared `times` times in the output.
    async fn wait_for(&self, needle: &[u8], times: usize) {
        loop {
            let more = self.more.notified();
            let seen = {
                let out = self.out.lock().unwrap();
                out.windows(needle.len()).filter(|w| *w == needle).count()
            };
            if seen >= times {
                return;
            }
            more.await;
        }
    }
}

struct Session {
    input: mpsc::Sender<Input>,
    client: Arc<Client>,
    cancel: CancellationToken,
    run: tokio::task::JoinHandle<backend::ExitStatus>,
}

/// A terminal session running `command`, with an input queue of one event.
fn terminal(command: &[&str]) -> Session {
    let backend = LocalBackend::new(LocalConfig {
        kill_grace: Duration::from_secs(1),
        ..LocalConfig::from_agent_env()
    });
    let client = Arc::new(Client::default());
    let target: Arc<dyn OutputTarget> = client.clone();
    let (tx, rx) = mpsc::channel(1);
    let cancel = CancellationToken::new();
    let io = SessionIo {
        input: rx,
        stdout: OutputSink::new(
            target.clone(),
            StreamKind::Stdout,
            Arc::new(AtomicU64::new(0)),
        ),
        stderr: OutputSink::new(target, StreamKind::Stderr, Arc::new(AtomicU64::new(0))),
        cancel: cancel.clone(),
        report: SessionReport::default(),
    };
    let request = SessionRequest {
        session_id: SessionId::parse(b"0f8e6c3c-8d6b-4b8a-9d69-2d1e3c0b7a55").unwrap(),
        connection_name: "local".into(),
        user: "dev@example.com".into(),
        command: command.iter().map(|s| (*s).to_owned()).collect(),
        args: Vec::new(),
        env: SessionEnv::default(),
        mode: Mode::Terminal {
            size: TermSize::DEFAULT,
        },
        jit_timeout: None,
    };
    let run = tokio::spawn(backend.run(request, io));
    Session {
        input: tx,
        client,
        cancel,
        run,
    }
}

/// 1 MiB of 64-byte lines (a terminal in canonical mode reads lines).
fn paste() -> Bytes {
    let line = [b"y".repeat(63), b"\n".to_vec()].concat();
    Bytes::from(line.repeat(16 * 1024))
}

#[tokio::test]
async fn closing_a_terminal_blocked_by_a_big_paste_ends_the_session() {
    let s = terminal(&["cat"]);
    s.input.send(Input::Data(paste())).await.unwrap();
    // The queue holds one event: once this reserve succeeds the backend has taken the paste
    // and is writing it into a terminal that `cat` cannot drain fast enough.
    let permit = s.input.reserve().await.unwrap();
    drop(permit);
    s.cancel.cancel();
    let status = tokio::time::timeout(SAFETY, s.run)
        .await
        .expect("the session did not end after close")
        .unwrap();
    assert_eq!(status.code, backend::INTERNAL_EXIT_CODE, "{status:?}");
}

#[tokio::test]
async fn a_terminal_keeps_echoing_through_a_big_paste() {
    // `tr` upper-cases what it prints, so its output can be told from the terminal's echo:
    // Linux's line discipline drops echo bytes while the master's buffer is full (seen: the
    // echo of the last line lost in 1 run of 30), but never what the process writes.
    let s = terminal(&["tr", "a-z", "A-Z"]);
    s.input.send(Input::Data(paste())).await.unwrap();
    s.input
        .send(Input::Data(Bytes::from_static(b"the-end\n")))
        .await
        .unwrap();
    // `tr` prints the last line only if output was read while the paste was being written:
    // otherwise it blocks on a full terminal and stops reading its input.
    tokio::time::timeout(SAFETY, s.client.wait_for(b"THE-END", 1))
        .await
        .expect("the paste's output never arrived");
    let printed = s
        .client
        .out
        .lock()
        .unwrap()
        .iter()
        .filter(|b| **b == b'Y')
        .count();
    assert_eq!(
        printed,
        16 * 1024 * 63,
        "every pasted line came back from the process"
    );
    s.cancel.cancel();
    let status = tokio::time::timeout(SAFETY, s.run).await.unwrap().unwrap();
    assert_eq!(status.code, backend::INTERNAL_EXIT_CODE, "{status:?}");
}

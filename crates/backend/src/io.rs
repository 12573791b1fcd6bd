//! A session's byte streams as a backend sees them: input events from the client, and two
//! output sinks that chunk and forward to the client with backpressure.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::TermSize;

/// Largest output chunk forwarded to the client (hoop: 16-32 KiB, well below the 17 MiB limit).
pub const CHUNK_SIZE: usize = 32 * 1024;

/// An event from the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// Bytes for the process's stdin (exec) or terminal (connect).
    Data(Bytes),
    /// End of input (exec only).
    Eof,
    /// A new terminal size (connect only).
    Resize(TermSize),
}

/// Which output stream a sink feeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind {
    Stdout,
    Stderr,
}

/// The client can no longer receive output (the session or the gateway stream is gone).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the session's client is gone")]
pub struct SinkClosed;

/// Where a session's output goes. Implemented by the agent for its gateway stream; `write`
/// waits while the outbound queue is full, which is what gives backends backpressure.
pub trait OutputTarget: Send + Sync + 'static {
    /// Forwards one chunk (at most [`CHUNK_SIZE`] bytes).
    fn write(&self, stream: StreamKind, chunk: Bytes) -> BoxFuture<'_, Result<(), SinkClosed>>;
}

/// One of a session's two output streams. Cheap to clone; counts the bytes it forwards.
#[derive(Clone)]
pub struct OutputSink {
    target: Arc<dyn OutputTarget>,
    kind: StreamKind,
    bytes: Arc<AtomicU64>,
}

impl std::fmt::Debug for OutputSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputSink")
            .field("kind", &self.kind)
            .field("bytes", &self.bytes.load(Ordering::Relaxed))
            .finish()
    }
}

/// A target that drops what it gets: for work that has no client stream to tell (the setup
/// of a `tcp` session's SSH connection, whose progress only goes to the logs).
struct Discard;

impl OutputTarget for Discard {
    fn write(&self, _stream: StreamKind, _chunk: Bytes) -> BoxFuture<'_, Result<(), SinkClosed>> {
        Box::pin(async { Ok(()) })
    }
}

impl OutputSink {
    /// A sink whose output goes nowhere.
    pub fn discard(kind: StreamKind) -> OutputSink {
        OutputSink::new(Arc::new(Discard), kind, Arc::new(AtomicU64::new(0)))
    }

    /// A sink for `kind` that adds what it forwards to `bytes`.
    pub fn new(
        target: Arc<dyn OutputTarget>,
        kind: StreamKind,
        bytes: Arc<AtomicU64>,
    ) -> OutputSink {
        OutputSink {
            target,
            kind,
            bytes,
        }
    }

    /// Forwards `data`, split into chunks of at most [`CHUNK_SIZE`].
    pub async fn write(&self, mut data: Bytes) -> Result<(), SinkClosed> {
        while !data.is_empty() {
            let chunk = data.split_to(data.len().min(CHUNK_SIZE));
            let n = chunk.len() as u64;
            self.target.write(self.kind, chunk).await?;
            self.bytes.fetch_add(n, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// The I/O half of a session handed to a backend.
#[derive(Debug)]
pub struct SessionIo {
    /// Client input, in order. Closed when the session is torn down.
    pub input: mpsc::Receiver<Input>,
    pub stdout: OutputSink,
    pub stderr: OutputSink,
    /// Fires when the session must end now (gateway close, stream loss, agent shutdown).
    pub cancel: CancellationToken,
    /// What the session touched, for the agent's audit line.
    pub report: SessionReport,
}

/// What a backend reports about its target (the Heroku app and dyno), for the agent's
/// per-session audit line. Cheap to clone; never holds secrets or content.
#[derive(Clone, Debug, Default)]
pub struct SessionReport(Arc<std::sync::Mutex<Target>>);

/// The target of a session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Target {
    pub app: Option<String>,
    pub dyno: Option<String>,
}

impl SessionReport {
    /// Records the app the session works on.
    pub fn set_app(&self, app: &str) {
        if let Ok(mut t) = self.0.lock() {
            t.app = Some(app.to_owned());
        }
    }
    /// Records the dyno the session runs on.
    pub fn set_dyno(&self, dyno: &str) {
        if let Ok(mut t) = self.0.lock() {
            t.dyno = Some(dyno.to_owned());
        }
    }
    /// What was recorded.
    pub fn target(&self) -> Target {
        self.0.lock().map(|t| t.clone()).unwrap_or_default()
    }
}

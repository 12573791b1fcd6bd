//! The duplex driver: the one place a backend moves a session's bytes, "input → remote,
//! remote → output, until the remote ends or the session is cancelled".
//!
//! A backend hands the driver its two directions as separate futures (and, when the remote
//! has an exit separate from its output, such as a local process, an exit future). The driver
//! only *observes* them in a `select!` (STYLE.md rule 16): no branch handler awaits, so a write
//! that blocks (a process that stops reading its terminal, a peer that never reads) or fails
//! (a connection reset mid-write) never stops the other direction, the exit or cancellation
//! from being serviced.
//!
//! - **Half-close**: the input direction ending (client EOF, closed queue, a failed write)
//!   never ends the session; output and exit keep being serviced.
//! - **Cancel** is checked first in every phase, including the drain after the exit.
//! - **Drain is bounded**: after the exit, output gets `after_exit`; then `on_stall` runs
//!   (a local backend kills the rest of the process group) and output gets `after_exit` again.
//!
//! It does not clean up: once it returns, its futures (and their borrows) are dropped and the
//! backend stops its process, channel or dyno with the resources it owns.
//!
//! [`pump_input`] and [`pump_output`] are the standard directions for byte streams; backends
//! with message-based remotes (SSH channels) write their own output direction.

use std::future::Future;
use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{CHUNK_SIZE, Input, OutputSink, TermSize};

/// The remote end of the input direction: where client input goes.
pub trait RemoteInput: Send {
    /// Writes client bytes (stdin or terminal keystrokes).
    fn write(&mut self, data: Bytes) -> impl Future<Output = io::Result<()>> + Send;
    /// The client ended its input (exec). Pipes half-close; terminals may send `0x04`.
    fn end(&mut self) -> impl Future<Output = io::Result<()>> + Send;
    /// The client's terminal changed size.
    fn resize(&mut self, size: TermSize) -> impl Future<Output = io::Result<()>> + Send;
}

/// A plain byte stream as a [`RemoteInput`]: writes are flushed, the end is a shutdown and
/// then the writer is dropped (closing a pipe is how its reader sees EOF), resizes are ignored.
#[derive(Debug)]
pub struct WriterInput<W>(Option<W>);

impl<W> WriterInput<W> {
    /// Input into `writer`.
    pub fn new(writer: W) -> WriterInput<W> {
        WriterInput(Some(writer))
    }
}

impl<W: AsyncWrite + Unpin + Send> RemoteInput for WriterInput<W> {
    async fn write(&mut self, data: Bytes) -> io::Result<()> {
        let Some(w) = self.0.as_mut() else {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "input after its end",
            ));
        };
        w.write_all(&data).await?;
        w.flush().await
    }
    async fn end(&mut self) -> io::Result<()> {
        match self.0.take() {
            Some(mut w) => w.shutdown().await,
            None => Ok(()),
        }
    }
    async fn resize(&mut self, _size: TermSize) -> io::Result<()> {
        Ok(())
    }
}

/// How the input direction ended.
#[derive(Debug)]
pub struct InputEnd {
    /// The first write that failed (the remote stopped reading or reset); input after it was
    /// discarded.
    pub failed: Option<io::Error>,
}

/// Forwards client input to `remote` until the client's input queue closes.
///
/// After a failed write the remote cannot take more input; later input is received and
/// discarded, so a client that keeps typing is not mistaken for a stalled session. How the
/// remote ended is for the output side to report.
pub async fn pump_input<R: RemoteInput>(
    input: &mut mpsc::Receiver<Input>,
    mut remote: R,
) -> InputEnd {
    let mut failed: Option<io::Error> = None;
    while let Some(event) = input.recv().await {
        if failed.is_some() {
            continue;
        }
        let result = match event {
            Input::Data(data) => remote.write(data).await,
            Input::Eof => remote.end().await,
            Input::Resize(size) => remote.resize(size).await,
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "the remote stopped taking input; discarding the rest");
            failed = Some(e);
        }
    }
    InputEnd { failed }
}

/// How an output direction ended.
#[derive(Debug)]
pub enum OutputEnd {
    /// The remote closed its output.
    Eof,
    /// The remote's output failed (reset, TLS error). A PTY's `EIO` is [`OutputEnd::Eof`].
    Failed(io::Error),
    /// The client can no longer receive output.
    ClientGone,
}

/// Forwards a byte stream to `sink`, at most [`CHUNK_SIZE`] per read, until it ends. The sink
/// waits while the client is slow, which slows the reads (backpressure), never a buffer.
pub async fn pump_output(mut reader: impl AsyncRead + Unpin, sink: &OutputSink) -> OutputEnd {
    let mut buf = BytesMut::with_capacity(CHUNK_SIZE);
    loop {
        buf.reserve(CHUNK_SIZE);
        match reader.read_buf(&mut buf).await {
            Ok(0) => return OutputEnd::Eof,
            // EIO is how a PTY reports that every slave fd is closed.
            Err(e) if e.raw_os_error() == Some(libc::EIO) => return OutputEnd::Eof,
            Err(e) => return OutputEnd::Failed(e),
            Ok(_) => {
                if sink.write(buf.split().freeze()).await.is_err() {
                    return OutputEnd::ClientGone;
                }
            }
        }
    }
}

/// How [`drive`] ended.
#[derive(Debug)]
pub enum Ending<T> {
    /// The remote ended by itself with `T`.
    Finished(T),
    /// The session was cancelled; the backend must stop the remote.
    Cancelled,
}

/// Runs a remote whose output direction is the whole story (its end is the session's end, as
/// for a rendezvous stream or an SSH channel): `input` and `output` concurrently until
/// `output` completes or `cancel` fires.
pub async fn drive<I, O>(cancel: &CancellationToken, input: I, output: O) -> Ending<O::Output>
where
    I: Future<Output = InputEnd>,
    O: Future,
{
    tokio::pin!(input, output);
    let mut input_done = false;
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => return Ending::Cancelled,
            end = &mut output => return Ending::Finished(end),
            end = &mut input, if !input_done => {
                input_done = true;
                log_input_end(&end);
            }
        }
    }
}

/// The bounded drain after a remote's exit.
#[derive(Debug)]
pub struct Drain<F> {
    /// How long output may keep flowing after the exit, twice: before and after `on_stall`.
    pub after_exit: Duration,
    /// Runs once when output has not ended within `after_exit` of the exit (for example:
    /// kill what is left of the process group). Must not block.
    pub on_stall: F,
}

/// How [`drive_with_exit`] ended.
#[derive(Debug)]
pub enum ExitEnding<T> {
    /// The remote exited with `exit`; `drained` says whether its output ended within the
    /// drain bounds.
    Exited { exit: T, drained: bool },
    /// The session was cancelled; the backend must stop the remote.
    Cancelled,
}

/// Runs a remote that has an exit of its own (a process): `input`, `output` and `exit`
/// concurrently until the exit has come and output has ended (bounded by `drain`), or
/// `cancel` fires. Output ending first does not end the session: the process may still run.
pub async fn drive_with_exit<I, O, E, F>(
    cancel: &CancellationToken,
    input: I,
    output: O,
    exit: E,
    drain: Drain<F>,
) -> ExitEnding<E::Output>
where
    I: Future<Output = InputEnd>,
    O: Future,
    E: Future,
    F: FnOnce(),
{
    tokio::pin!(input, output, exit);
    let mut input_done = false;
    let mut output_done = false;
    let status = loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => return ExitEnding::Cancelled,
            status = &mut exit => break status,
            _ = &mut output, if !output_done => output_done = true,
            end = &mut input, if !input_done => {
                input_done = true;
                log_input_end(&end);
            }
        }
    };
    if output_done {
        return ExitEnding::Exited {
            exit: status,
            drained: true,
        };
    }
    // The remote is gone; whatever still holds its output (a background job) gets a bounded
    // drain, then `on_stall`, then a second one. Input is no longer served.
    let mut on_stall = Some(drain.on_stall);
    for _ in 0..2 {
        let timer = tokio::time::sleep(drain.after_exit);
        tokio::pin!(timer);
        tokio::select! {
            biased;
            () = cancel.cancelled() => return ExitEnding::Cancelled,
            _ = &mut output => return ExitEnding::Exited { exit: status, drained: true },
            () = &mut timer => {
                if let Some(stall) = on_stall.take() {
                    stall();
                }
            }
        }
    }
    ExitEnding::Exited {
        exit: status,
        drained: false,
    }
}

fn log_input_end(end: &InputEnd) {
    match &end.failed {
        Some(e) => tracing::debug!(error = %e, "session input ended after a failed write"),
        None => tracing::debug!("session input ended"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};

    use futures::future::BoxFuture;

    use crate::{OutputTarget, SinkClosed, StreamKind};

    /// A client that records output, or never accepts any (a stuck client).
    #[derive(Default)]
    struct Client {
        out: Mutex<Vec<u8>>,
        stuck: bool,
    }

    impl OutputTarget for Client {
        fn write(&self, _: StreamKind, chunk: Bytes) -> BoxFuture<'_, Result<(), SinkClosed>> {
            Box::pin(async move {
                if self.stuck {
                    std::future::pending::<()>().await;
                }
                self.out.lock().unwrap().extend_from_slice(&chunk);
                Ok(())
            })
        }
    }

    fn sink(client: &Arc<Client>) -> OutputSink {
        let target: Arc<dyn OutputTarget> = client.clone();
        OutputSink::new(target, StreamKind::Stdout, Arc::new(AtomicU64::new(0)))
    }

    /// A writer that accepts `budget` bytes, then fails every write with a reset.
    struct Resetting {
        budget: usize,
        written: Arc<AtomicUsize>,
    }

    impl AsyncWrite for Resetting {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            if self.budget == 0 {
                return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
            }
            let n = buf.len().min(self.budget).min(1000);
            self.budget -= n;
            self.written.fetch_add(n, Ordering::SeqCst);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn mib() -> Bytes {
        Bytes::from(vec![b'x'; 1 << 20])
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_never_reads_does_not_stop_output_or_the_end() {
        // The remote's input side is a 64-byte pipe nobody reads; its output says "bye" and
        // closes. The 1 MiB write blocks forever, yet the session ends with all output.
        let (remote_in, _never_read) = tokio::io::duplex(64);
        let (mut remote_out, out_reader) = tokio::io::duplex(64);
        let (tx, mut rx) = mpsc::channel(4);
        tx.send(Input::Data(mib())).await.unwrap();
        let client = Arc::new(Client::default());
        let sink = sink(&client);
        remote_out.write_all(b"bye").await.unwrap();
        drop(remote_out);
        let ending = drive(
            &CancellationToken::new(),
            pump_input(&mut rx, WriterInput::new(remote_in)),
            pump_output(out_reader, &sink),
        )
        .await;
        assert!(
            matches!(ending, Ending::Finished(OutputEnd::Eof)),
            "{ending:?}"
        );
        assert_eq!(&client.out.lock().unwrap()[..], b"bye");
    }

    #[tokio::test(start_paused = true)]
    async fn a_reset_mid_write_is_survived_and_later_input_is_discarded() {
        let written = Arc::new(AtomicUsize::new(0));
        let remote_in = Resetting {
            budget: 10_000,
            written: written.clone(),
        };
        let (remote_out, out_reader) = tokio::io::duplex(64);
        // More input than the queue holds: the pump must keep receiving after the reset.
        let (tx, mut rx) = mpsc::channel(2);
        let client = Arc::new(Client::default());
        let sink = sink(&client);
        let feeder = tokio::spawn(async move {
            for _ in 0..20 {
                tx.send(Input::Data(mib())).await.unwrap();
            }
            // Every input was taken: now the remote reports its end.
            drop(remote_out);
        });
        let ending = drive(
            &CancellationToken::new(),
            pump_input(&mut rx, WriterInput::new(remote_in)),
            pump_output(out_reader, &sink),
        )
        .await;
        assert!(
            matches!(ending, Ending::Finished(OutputEnd::Eof)),
            "{ending:?}"
        );
        assert_eq!(written.load(Ordering::SeqCst), 10_000);
        feeder.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn input_end_half_closes_and_output_keeps_flowing() {
        let (remote_in, mut remote_reads) = tokio::io::duplex(1024);
        let (mut remote_out, out_reader) = tokio::io::duplex(1024);
        let (tx, mut rx) = mpsc::channel(4);
        tx.send(Input::Data(Bytes::from_static(b"in")))
            .await
            .unwrap();
        tx.send(Input::Eof).await.unwrap();
        let client = Arc::new(Client::default());
        let sink = sink(&client);
        // The remote reads its whole input (EOF included), then answers and closes.
        let remote = async move {
            let mut got = Vec::new();
            remote_reads.read_to_end(&mut got).await.unwrap();
            remote_out.write_all(b"after eof").await.unwrap();
            got
        };
        let cancel = CancellationToken::new();
        let (ending, got) = tokio::join!(
            drive(
                &cancel,
                pump_input(&mut rx, WriterInput::new(remote_in)),
                pump_output(out_reader, &sink),
            ),
            remote
        );
        assert_eq!(got, b"in");
        assert!(
            matches!(ending, Ending::Finished(OutputEnd::Eof)),
            "{ending:?}"
        );
        assert_eq!(&client.out.lock().unwrap()[..], b"after eof");
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_ends_a_session_blocked_in_each_direction() {
        // Phase: nothing happening (output pending, input idle).
        let cancel = CancellationToken::new();
        let (_tx, mut rx) = mpsc::channel::<Input>(1);
        cancel.cancel();
        let ending = drive(
            &cancel,
            pump_input(&mut rx, WriterInput::new(tokio::io::sink())),
            std::future::pending::<()>(),
        )
        .await;
        assert!(matches!(ending, Ending::Cancelled));

        // Phase: input blocked mid-write into a peer that never reads, output blocked on a
        // client that never accepts.
        let cancel = CancellationToken::new();
        let (remote_in, _never_read) = tokio::io::duplex(64);
        let (mut remote_out, out_reader) = tokio::io::duplex(64);
        remote_out.write_all(b"stuck").await.unwrap();
        let (tx, mut rx) = mpsc::channel(1);
        tx.send(Input::Data(mib())).await.unwrap();
        let client = Arc::new(Client {
            stuck: true,
            ..Client::default()
        });
        let sink = sink(&client);
        let later = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            later.cancel();
        });
        let started = tokio::time::Instant::now();
        let ending = drive(
            &cancel,
            pump_input(&mut rx, WriterInput::new(remote_in)),
            pump_output(out_reader, &sink),
        )
        .await;
        assert!(matches!(ending, Ending::Cancelled));
        assert_eq!(started.elapsed(), Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn exit_then_bounded_drain_then_stall_hook_then_give_up() {
        // The process exits at once but something keeps its output open and silent.
        let (_held_open, out_reader) = tokio::io::duplex(64);
        let (_tx, mut rx) = mpsc::channel::<Input>(1);
        let client = Arc::new(Client::default());
        let sink = sink(&client);
        let stalls = AtomicUsize::new(0);
        let started = tokio::time::Instant::now();
        let ending = drive_with_exit(
            &CancellationToken::new(),
            pump_input(&mut rx, WriterInput::new(tokio::io::sink())),
            pump_output(out_reader, &sink),
            std::future::ready(7),
            Drain {
                after_exit: Duration::from_secs(2),
                on_stall: || {
                    stalls.fetch_add(1, Ordering::SeqCst);
                },
            },
        )
        .await;
        assert!(matches!(
            ending,
            ExitEnding::Exited {
                exit: 7,
                drained: false
            }
        ));
        assert_eq!(stalls.load(Ordering::SeqCst), 1);
        assert_eq!(started.elapsed(), Duration::from_secs(4));
    }

    #[tokio::test(start_paused = true)]
    async fn output_after_exit_is_drained_and_output_end_alone_does_not_end() {
        let (mut remote_out, out_reader) = tokio::io::duplex(64);
        let (_tx, mut rx) = mpsc::channel::<Input>(1);
        let client = Arc::new(Client::default());
        let sink = sink(&client);
        let (exit_tx, exit_rx) = tokio::sync::oneshot::channel::<i32>();
        let remote = async move {
            // Output closes first; the process exits a minute later, then nothing is left.
            remote_out.write_all(b"tail").await.unwrap();
            drop(remote_out);
            tokio::time::sleep(Duration::from_secs(60)).await;
            exit_tx.send(0).unwrap();
        };
        let started = tokio::time::Instant::now();
        let cancel = CancellationToken::new();
        let (ending, ()) = tokio::join!(
            drive_with_exit(
                &cancel,
                pump_input(&mut rx, WriterInput::new(tokio::io::sink())),
                pump_output(out_reader, &sink),
                exit_rx,
                Drain {
                    after_exit: Duration::from_secs(2),
                    on_stall: || panic!("nothing to drain"),
                },
            ),
            remote
        );
        assert!(matches!(
            ending,
            ExitEnding::Exited {
                exit: Ok(0),
                drained: true
            }
        ));
        assert_eq!(started.elapsed(), Duration::from_secs(60));
        assert_eq!(&client.out.lock().unwrap()[..], b"tail");
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_during_the_drain_ends_at_once() {
        let (_held_open, out_reader) = tokio::io::duplex(64);
        let (_tx, mut rx) = mpsc::channel::<Input>(1);
        let client = Arc::new(Client::default());
        let sink = sink(&client);
        let cancel = CancellationToken::new();
        let later = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            later.cancel();
        });
        let started = tokio::time::Instant::now();
        let ending = drive_with_exit(
            &cancel,
            pump_input(&mut rx, WriterInput::new(tokio::io::sink())),
            pump_output(out_reader, &sink),
            std::future::ready(()),
            Drain {
                after_exit: Duration::from_secs(10),
                on_stall: || {},
            },
        )
        .await;
        assert!(matches!(ending, ExitEnding::Cancelled));
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }
}

//! `dynoctl connect`: an interactive terminal, as hoop's CLI runs it
//! (hoop-gateway-protocol.md §3.4).
//!
//! Requires a TTY on stdin. After `ClientSessionOpenOK` it switches the terminal to raw mode,
//! sends the initial `"\n"` `AgentTerminalWriteStdin` (which makes the agent create the PTY),
//! sends `AgentTerminalResizeTTY` (`rows,cols,0,0`) once and on every SIGWINCH, copies stdin as
//! `AgentTerminalWriteStdin`, and writes `ClientWriteStdout` to stdout. The terminal is restored
//! on every exit path: [`RawMode`] restores on drop, and [`connect`] drops it before returning.
//!
//! This module owns the caller's real terminal; the session's packets are hoop's.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::os::fd::AsFd as _;

use bytes::Bytes;
use hoop_wire::pb::Packet;
use hoop_wire::spec::{KEEPALIVE_PERIOD, key, packet_type as pt};
use nix::sys::termios::{self, SetArg, Termios};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot};
use tonic::Streaming;

use crate::exec::session_spec;
use crate::stream::{self, ClientStream};
use crate::{ClientConfig, ClientError};

/// Keystroke chunks queued from the stdin reader thread. Overflow policy: backpressure (the
/// reader thread blocks, so the kernel's TTY buffer holds further keystrokes).
const STDIN_QUEUE: usize = 16;

/// Output chunks queued for the stdout writer thread. Overflow policy: backpressure (the
/// session's output waits in the gateway stream; keystrokes do not wait for it).
const STDOUT_QUEUE: usize = 16;

/// The terminal in raw mode; the saved settings are restored when this is dropped.
#[derive(Debug)]
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// Switches stdin's terminal to raw mode.
    pub fn enable() -> Result<RawMode, ClientError> {
        let stdin = std::io::stdin();
        let saved =
            termios::tcgetattr(stdin.as_fd()).map_err(|e| ClientError::Terminal(e.to_string()))?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)
            .map_err(|e| ClientError::Terminal(e.to_string()))?;
        Ok(RawMode { saved })
    }

    /// Restores the saved settings (also done on drop).
    pub fn restore(&self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        self.restore();
    }
}

/// How a terminal session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TerminalOutcome {
    pub session_id: Option<String>,
    /// `client.exit_code`; 1 when unparsable (as hoop's CLI); 143 on SIGTERM/SIGHUP.
    pub exit_code: i32,
    pub message: String,
}

impl TerminalOutcome {
    /// The outcome a `ClientSessionClose` packet reports: `client.exit_code` (1 when
    /// unparsable, as hoop's CLI) and the payload as the message.
    pub(crate) fn closed(session_id: Option<String>, close: &Packet) -> TerminalOutcome {
        TerminalOutcome {
            session_id,
            exit_code: stream::exit_code(close).unwrap_or(1),
            message: String::from_utf8_lossy(&close.payload).into_owned(),
        }
    }
}

/// The current size of stdin's terminal as hoop's `rows,cols,x,y`.
fn current_size() -> Option<Bytes> {
    let ws = rustix::termios::tcgetwinsize(std::io::stdin()).ok()?;
    Some(Bytes::from(format!(
        "{},{},{},{}",
        ws.ws_row, ws.ws_col, ws.ws_xpixel, ws.ws_ypixel
    )))
}

/// Whether stdin is a terminal.
pub fn stdin_is_tty() -> bool {
    nix::unistd::isatty(std::io::stdin()).unwrap_or(false)
}

async fn send(stream: &ClientStream, p: Packet) -> Result<(), ClientError> {
    stream
        .tx
        .send(p)
        .await
        .map_err(|_| ClientError::StreamEnded)
}

/// Which of the two packets that start a terminal goes first. hoop's CLI sends its first
/// `"\n"` and its first resize from two goroutines, so the agent sees either order
/// (hoop-gateway-protocol.md §3.4); dynoctl picks one at random unless told.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum FirstPacket {
    #[default]
    Random,
    Newline,
    Resize,
}

/// Opens an interactive session on `connection` through this process's terminal; on a `tcp`
/// connection, relays local connections on `127.0.0.1:tcp_port` instead (no terminal needed)
/// and calls `tcp_ready` with the address once it listens.
pub async fn connect(
    config: &ClientConfig,
    connection: &str,
    args: &[String],
    env: &BTreeMap<String, String>,
    first: FirstPacket,
    tcp_port: u16,
    tcp_ready: impl FnOnce(std::net::SocketAddr),
) -> Result<TerminalOutcome, ClientError> {
    let mut stream = stream::open(config, "connect", connection).await?;
    let mut open = stream::packet(pt::AGENT_SESSION_OPEN, Bytes::new());
    open.spec = session_spec(args, env);
    send(&stream, open).await?;

    // Wait for the agent to accept before touching the terminal.
    let session_id = loop {
        let p = match stream.inbound.message().await {
            Ok(Some(p)) => p,
            Ok(None) => return Err(ClientError::StreamEnded),
            Err(status) => return Err(stream::from_status(&status)),
        };
        match p.r#type.as_str() {
            pt::CLIENT_SESSION_OPEN_OK => {
                let sid = p
                    .spec
                    .get(key::SESSION_ID)
                    .map(|s| String::from_utf8_lossy(s).into_owned());
                let kind = p.spec.get(key::CONNECTION_TYPE).map(|t| t.as_ref());
                if kind == Some(hoop_wire::spec::CONNECTION_TYPE_TCP.as_bytes()) {
                    return crate::tcp::relay(&mut stream, sid, tcp_port, tcp_ready).await;
                }
                if !stdin_is_tty() {
                    let _ = stream
                        .tx
                        .send(stream::packet(pt::AGENT_SESSION_CLOSE, Bytes::new()))
                        .await;
                    return Err(ClientError::NotATty);
                }
                break sid;
            }
            pt::CLIENT_SESSION_CLOSE => {
                return Ok(TerminalOutcome::closed(None, &p));
            }
            pt::CLIENT_SESSION_OPEN_AGENT_OFFLINE => {
                return Err(ClientError::AgentOffline(connection.to_owned()));
            }
            _ => {}
        }
    };

    let raw = RawMode::enable()?;
    let result = relay(&mut stream, session_id, first).await;
    raw.restore();
    drop(raw);
    result
}

async fn relay(
    stream: &mut ClientStream,
    session_id: Option<String>,
    first: FirstPacket,
) -> Result<TerminalOutcome, ClientError> {
    let winch =
        signal(SignalKind::window_change()).map_err(|e| ClientError::Terminal(e.to_string()))?;
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| ClientError::Terminal(e.to_string()))?;
    let mut hup = signal(SignalKind::hangup()).map_err(|e| ClientError::Terminal(e.to_string()))?;

    // hoop's CLI: the initial "\n" creates the PTY; the initial resize may arrive first.
    let newline = stream::packet(pt::AGENT_TERMINAL_WRITE_STDIN, Bytes::from_static(b"\n"));
    let resize = current_size().map(|size| stream::packet(pt::AGENT_TERMINAL_RESIZE_TTY, size));
    let resize_first = match first {
        FirstPacket::Resize => true,
        FirstPacket::Newline => false,
        FirstPacket::Random => rand::random::<bool>(),
    };
    let (a, b) = if resize_first {
        (resize, Some(newline))
    } else {
        (Some(newline), resize)
    };
    for p in [a, b].into_iter().flatten() {
        send(stream, p).await?;
    }

    // A plain thread reads stdin: blocking reads on a TTY cannot be cancelled, and a thread
    // (unlike a runtime blocking task) never delays the process's exit.
    let (keys_tx, keys) = mpsc::channel::<Bytes>(STDIN_QUEUE);
    std::thread::Builder::new()
        .name("dynoctl-stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin();
            let mut buf = [0u8; 4096];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        let chunk = Bytes::copy_from_slice(buf.get(..n).unwrap_or_default());
                        if keys_tx.blocking_send(chunk).is_err() {
                            return;
                        }
                    }
                }
            }
        })
        .map_err(|e| ClientError::Terminal(format!("cannot start the stdin reader: {e}")))?;
    let stdout = StdoutWriter::spawn()?;

    // Each direction runs on its own (STYLE 16): a terminal that stops draining its output
    // holds up the output, never what the user types, and the signals are always seen.
    let ClientStream { tx, inbound } = stream;
    let output = copy_output(inbound, stdout, session_id.clone());
    let input = copy_input(tx, keys, winch, session_id.clone());
    tokio::select! {
        outcome = output => outcome,
        outcome = input => outcome,
        _ = term.recv() => Ok(interrupted(session_id)),
        _ = hup.recv() => Ok(interrupted(session_id)),
    }
}

/// Gateway to terminal: writes `ClientWriteStdout` until the session closes, and returns its
/// outcome once everything before the close is on the terminal.
async fn copy_output(
    inbound: &mut Streaming<Packet>,
    mut stdout: StdoutWriter,
    session_id: Option<String>,
) -> Result<TerminalOutcome, ClientError> {
    let ended = loop {
        let p = match inbound.message().await {
            Ok(Some(p)) => p,
            Ok(None) => break Err(ClientError::StreamEnded),
            Err(status) => break Err(stream::from_status(&status)),
        };
        match p.r#type.as_str() {
            pt::CLIENT_WRITE_STDOUT => {
                stdout.write(p.payload).await?;
            }
            // Dropped, as `hoop connect` drops it (its receive switch has no stderr case,
            // hoop-gateway-protocol.md §3.4), so tests see what users see.
            pt::CLIENT_WRITE_STDERR => {
                tracing::debug!(
                    bytes = p.payload.len(),
                    "ClientWriteStderr dropped in a terminal session, as hoop connect does"
                );
            }
            pt::CLIENT_SESSION_CLOSE => {
                break Ok(TerminalOutcome::closed(session_id, &p));
            }
            _ => {}
        }
    };
    let written = stdout.finish().await;
    let outcome = ended?;
    written.map(|()| outcome)
}

/// What the input direction sends next.
enum Next {
    Packet(Packet),
    TerminalClosed,
}

/// Terminal to gateway: keystrokes, resizes and keepalives, until the terminal closes. Never
/// ends on its own otherwise: the session's outcome comes from [`copy_output`].
async fn copy_input(
    tx: &mpsc::Sender<Packet>,
    mut keys: mpsc::Receiver<Bytes>,
    mut winch: tokio::signal::unix::Signal,
    session_id: Option<String>,
) -> Result<TerminalOutcome, ClientError> {
    let mut keepalive = tokio::time::interval_at(
        tokio::time::Instant::now() + KEEPALIVE_PERIOD,
        KEEPALIVE_PERIOD,
    );
    loop {
        let next = tokio::select! {
            _ = keepalive.tick() => Next::Packet(stream::keepalive()),
            _ = winch.recv() => match current_size() {
                Some(size) => Next::Packet(stream::packet(pt::AGENT_TERMINAL_RESIZE_TTY, size)),
                None => continue,
            },
            k = keys.recv() => match k {
                Some(data) => Next::Packet(stream::packet(pt::AGENT_TERMINAL_WRITE_STDIN, data)),
                None => Next::TerminalClosed,
            },
        };
        match next {
            Next::Packet(p) => {
                if tx.send(p).await.is_err() {
                    // The request stream is gone, which happens once the session has closed:
                    // how it ended is the output direction's to say, after it has written
                    // everything before the close.
                    return std::future::pending().await;
                }
            }
            // The terminal is gone: end the session.
            Next::TerminalClosed => {
                let _ = tx
                    .send(stream::packet(pt::AGENT_SESSION_CLOSE, Bytes::new()))
                    .await;
                return Ok(TerminalOutcome {
                    session_id,
                    exit_code: crate::INTERNAL_EXIT_CODE,
                    message: "the terminal closed".into(),
                });
            }
        }
    }
}

/// The session's output on its way to stdout, written by a plain thread: a write to a terminal
/// that does not drain blocks, and must block nothing but the output.
struct StdoutWriter {
    tx: Option<mpsc::Sender<Bytes>>,
    done: Option<oneshot::Receiver<std::io::Result<()>>>,
}

impl StdoutWriter {
    fn spawn() -> Result<StdoutWriter, ClientError> {
        let (tx, mut rx) = mpsc::channel::<Bytes>(STDOUT_QUEUE);
        let (done_tx, done) = oneshot::channel();
        std::thread::Builder::new()
            .name("dynoctl-stdout".into())
            .spawn(move || {
                let mut out = std::io::stdout();
                let mut result = Ok(());
                while let Some(chunk) = rx.blocking_recv() {
                    if let Err(e) = write_out(&mut out, &chunk) {
                        result = Err(e);
                        break;
                    }
                }
                let _ = done_tx.send(result);
            })
            .map_err(|e| ClientError::Terminal(format!("cannot start the stdout writer: {e}")))?;
        Ok(StdoutWriter {
            tx: Some(tx),
            done: Some(done),
        })
    }

    /// Queues `data`, waiting while the queue is full; fails with the writer's error.
    async fn write(&mut self, data: Bytes) -> Result<(), ClientError> {
        let sent = match &self.tx {
            Some(tx) => tx.send(data).await.is_ok(),
            None => false,
        };
        if sent {
            Ok(())
        } else {
            self.finish()
                .await
                .and(Err(ClientError::Output(std::io::Error::other(
                    "the stdout writer stopped",
                ))))
        }
    }

    /// Waits until everything queued is written (or the write failed).
    async fn finish(&mut self) -> Result<(), ClientError> {
        drop(self.tx.take());
        let Some(done) = self.done.take() else {
            return Ok(());
        };
        match done.await {
            Ok(result) => result.map_err(ClientError::Output),
            Err(_) => Err(ClientError::Output(std::io::Error::other(
                "the stdout writer stopped",
            ))),
        }
    }
}

fn interrupted(session_id: Option<String>) -> TerminalOutcome {
    TerminalOutcome {
        session_id,
        exit_code: 143,
        message: "interrupted".into(),
    }
}

fn write_out(w: &mut impl std::io::Write, data: &[u8]) -> std::io::Result<()> {
    w.write_all(data)?;
    w.flush()
}

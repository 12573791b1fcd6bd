//! The rendezvous server: TLS, the secret line, the `rendezvous\r\n` ack as its own write, then
//! the one-off dyno's process spliced raw both ways.
//!
//! It owns one connection's session: claim the secret (single use), ack, spawn `bash -c` under
//! a PTY (or with merged pipes for `force_no_tty`), splice, and end it exactly one way:
//! - the child exits → drain its output (bounded), TLS close_notify, close;
//! - the client disconnects → SIGHUP the child's group, SIGKILL after the grace;
//! - the dyno is stopped (time_to_live, DELETE, shutdown) → kill, then close_notify;
//! - an injected drop → stop writing after N bytes and close the TCP without close_notify;
//! - an injected reset → stop reading after N input bytes and reset the TCP (RST).
//!
//! In no-tty mode a client `0x04` closes the child's stdin: bytes before it are delivered,
//! bytes after it are discarded (stdin cannot be reopened; Heroku's behaviour here is
//! unverified). In TTY mode `0x04` goes to the PTY like any other byte.

use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::dynos::{process_env, remove_dyno, resolve_command, set_one_off_state};
use crate::process::{ProcSpec, spawn_merged, spawn_pty, terminate};
use crate::state::{DynoKind, SharedRef};

/// The ack the dyno side sends once attached (observed bytes).
pub const ACK: &[u8] = b"rendezvous\r\n";
/// Bound on the TLS handshake and on reading the secret line.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest secret line accepted.
const MAX_SECRET_LINE: usize = 1024;
/// Bound on sending close_notify at the end.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
const CHUNK: usize = 16 * 1024;

pub(crate) async fn serve(shared: SharedRef, listener: TcpListener, tls: Arc<ServerConfig>) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let accepted = tokio::select! {
            () = shared.cancel.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let shared2 = shared.clone();
                let acceptor = acceptor.clone();
                shared.tracker.spawn(async move {
                    tracing::debug!(%peer, "rendezvous connection");
                    handle(shared2, acceptor, tcp).await;
                });
            }
            Err(e) => tracing::warn!(error = %e, "rendezvous accept failed"),
        }
    }
}

/// Reads up to the first `\n`; returns the secret (without `\r` and `?query`) and any bytes
/// that followed the line.
async fn read_secret<S: AsyncRead + Unpin>(s: &mut S) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::with_capacity(128);
    let mut chunk = [0u8; 256];
    loop {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(chunk.get(..n)?);
        if let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let rest = buf.split_off(pos + 1);
            let line = String::from_utf8(buf).ok()?;
            let line = line.trim_end_matches('\n').trim_end_matches('\r');
            let secret = line.split('?').next().unwrap_or_default().to_owned();
            return Some((secret, rest));
        }
        if buf.len() > MAX_SECRET_LINE {
            return None;
        }
    }
}

/// What the session needs about its dyno, taken when the secret is claimed.
struct Claim {
    app: String,
    id: Uuid,
    name: String,
    command: String,
    env: Vec<(String, String)>,
    cwd: std::path::PathBuf,
    tty: bool,
    rows: u16,
    cols: u16,
    cancel: CancellationToken,
}

fn claim(shared: &SharedRef, secret: &str) -> Option<Claim> {
    let mut st = shared.state();
    let (app_name, id) = st.secrets.remove(secret)?;
    let app = st.apps.get(&app_name)?;
    let dyno = app
        .dynos
        .values()
        .find(|d| d.id == id && d.kind == DynoKind::OneOff)?;
    if dyno.cancel.is_cancelled() || dyno.state != "starting" {
        return None;
    }
    let mut env = process_env(app, dyno, &dyno.env);
    if !env.iter().any(|(k, _)| k == "TERM") {
        env.push(("TERM".to_owned(), "dumb".to_owned()));
    }
    let num = |k: &str, default: u16| {
        dyno.env
            .get(k)
            .and_then(|v| v.trim().parse::<u16>().ok())
            .unwrap_or(default)
    };
    Some(Claim {
        app: app_name.clone(),
        id,
        name: dyno.name.clone(),
        command: resolve_command(app, &dyno.command),
        env,
        cwd: app.home.clone(),
        tty: !dyno.force_no_tty,
        rows: num("LINES", 24),
        cols: num("COLUMNS", 80),
        cancel: dyno.cancel.clone(),
    })
}

async fn handle(shared: SharedRef, acceptor: TlsAcceptor, tcp: TcpStream) {
    let _ = tcp.set_nodelay(true);
    if shared.faults().reset_rendezvous_after_input.is_some() {
        // With a zero linger, dropping the socket sends RST instead of FIN.
        let _ = tcp.set_zero_linger();
    }
    let Ok(Ok(mut tls)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
    else {
        tracing::debug!("rendezvous tls handshake failed");
        return;
    };
    let Ok(Some((secret, leftover))) =
        tokio::time::timeout(HANDSHAKE_TIMEOUT, read_secret(&mut tls)).await
    else {
        tracing::debug!("rendezvous client sent no secret line");
        return;
    };
    let Some(claim) = claim(&shared, &secret) else {
        tracing::info!("rendezvous secret unknown or already used: closing");
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, tls.shutdown()).await;
        return;
    };
    let (app, id) = (claim.app.clone(), claim.id);
    session(&shared, claim, tls, leftover).await;
    remove_dyno(&shared, &app, id);
}

/// How the output direction ended.
enum OutputEnd {
    Eof,
    ClientGone,
    Dropped,
}

/// How the session ended.
enum Outcome {
    Exited,
    ClientGone,
    Dropped,
    Reset,
    Stopped,
}

/// How the input direction ended.
enum InputEnd {
    ClientGone,
    Reset,
}

async fn session<S>(shared: &SharedRef, claim: Claim, tls: S, leftover: Vec<u8>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let cancel = claim.cancel.clone();
    let faults = shared.faults().clone();
    let (mut rd, mut wr) = tokio::io::split(tls);
    if faults.ack_delay_ms > 0 {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(faults.ack_delay_ms)) => {}
        }
    }
    // The ack is its own write, flushed, then a pause: the Node CLI discards its first data
    // event whole, so output must not share a TLS record (or a read) with the ack.
    if wr.write_all(ACK).await.is_err() || wr.flush().await.is_err() {
        return;
    }
    tokio::select! {
        () = cancel.cancelled() => return,
        () = tokio::time::sleep(Duration::from_millis(shared.config.ack_pause_ms)) => {}
    }
    let spec = ProcSpec {
        command: Some(&claim.command),
        env: &claim.env,
        cwd: &claim.cwd,
    };
    type Reader = Box<dyn AsyncRead + Unpin + Send>;
    type Writer = Box<dyn AsyncWrite + Unpin + Send>;
    let spawned = if claim.tty {
        spawn_pty(&shared.procs, &spec, claim.rows, claim.cols).map(|(s, pty)| {
            let (r, w) = pty.into_split();
            (s, Box::new(r) as Reader, Box::new(w) as Writer)
        })
    } else {
        spawn_merged(&shared.procs, &spec)
            .map(|(s, stdin, out)| (s, Box::new(out) as Reader, Box::new(stdin) as Writer))
    };
    let (mut spawned, mut out, stdin) = match spawned {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(dyno = %claim.name, error = %e, "cannot start the one-off's process");
            let _ = wr
                .write_all(format!("herokusim: cannot start the process: {e}\r\n").as_bytes())
                .await;
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, wr.shutdown()).await;
            return;
        }
    };
    set_one_off_state(shared, &claim.app, claim.id, "up");
    tracing::info!(app = %claim.app, dyno = %claim.name, pid = spawned.guard.pgid(), tty = claim.tty, "one-off attached");
    let tty = claim.tty;
    let drain = shared.drain();

    let outcome = {
        let input = pump_input(
            &mut rd,
            stdin,
            leftover,
            tty,
            faults.reset_rendezvous_after_input,
        );
        let output = pump_output(&mut out, &mut wr, faults.drop_rendezvous_after);
        tokio::pin!(input);
        tokio::pin!(output);
        let mut output_eof = false;
        let outcome = loop {
            tokio::select! {
                () = cancel.cancelled() => break Outcome::Stopped,
                end = &mut input => match end {
                    InputEnd::ClientGone => break Outcome::ClientGone,
                    InputEnd::Reset => break Outcome::Reset,
                },
                end = &mut output, if !output_eof => match end {
                    OutputEnd::Eof => output_eof = true,
                    OutputEnd::ClientGone => break Outcome::ClientGone,
                    OutputEnd::Dropped => break Outcome::Dropped,
                },
                status = spawned.child.wait() => {
                    tracing::info!(dyno = %claim.name, status = ?status.ok(), "one-off process exited");
                    break Outcome::Exited;
                }
            }
        };
        if matches!(outcome, Outcome::Exited) && !output_eof {
            // Drain what the process wrote before exiting; a background job holding the
            // output open gets the drain period, then its group is killed.
            match tokio::time::timeout(drain, &mut output).await {
                Ok(OutputEnd::Eof) => {}
                Ok(OutputEnd::ClientGone) => {}
                Ok(OutputEnd::Dropped) => {}
                Err(_) => {
                    spawned.guard.signal(Signal::SIGKILL);
                    let _ = tokio::time::timeout(drain, &mut output).await;
                }
            }
        }
        outcome
    };
    match outcome {
        Outcome::Exited => {
            spawned.guard.signal(Signal::SIGKILL);
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, wr.shutdown()).await;
        }
        Outcome::ClientGone => {
            tracing::info!(dyno = %claim.name, "rendezvous client disconnected: killing the process");
            terminate(&mut spawned, Signal::SIGHUP, shared.kill_grace()).await;
        }
        Outcome::Dropped => {
            tracing::info!(dyno = %claim.name, "dropping the rendezvous connection (injected fault)");
            terminate(&mut spawned, Signal::SIGHUP, shared.kill_grace()).await;
            // No close_notify: the TCP connection just closes.
        }
        Outcome::Reset => {
            tracing::info!(dyno = %claim.name, "resetting the rendezvous connection (injected fault)");
            terminate(&mut spawned, Signal::SIGHUP, shared.kill_grace()).await;
            // No close_notify: the socket has a zero linger, so dropping it sends RST.
        }
        Outcome::Stopped => {
            tracing::info!(dyno = %claim.name, "dyno stopped: killing the process and closing");
            terminate(&mut spawned, Signal::SIGHUP, shared.kill_grace()).await;
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, wr.shutdown()).await;
        }
    }
}

/// Client → process. Returns when the client is gone (EOF or error), or when more than
/// `reset_after` bytes were read (the injected reset).
async fn pump_input<R>(
    rd: &mut R,
    stdin: Box<dyn AsyncWrite + Unpin + Send>,
    leftover: Vec<u8>,
    tty: bool,
    reset_after: Option<u64>,
) -> InputEnd
where
    R: AsyncRead + Unpin,
{
    let mut stdin = Some(stdin);
    let mut discarded = 0usize;
    let mut buf = vec![0u8; CHUNK];
    let mut pending = leftover;
    let mut read = pending.len() as u64;
    let end = loop {
        if reset_after.is_some_and(|limit| read > limit) {
            break InputEnd::Reset;
        }
        if !pending.is_empty() {
            deliver(&mut stdin, &pending, tty, &mut discarded).await;
        }
        let n = match rd.read(&mut buf).await {
            Ok(0) | Err(_) => break InputEnd::ClientGone,
            Ok(n) => n,
        };
        read += n as u64;
        pending = buf.get(..n).map(<[u8]>::to_vec).unwrap_or_default();
    };
    if discarded > 0 {
        tracing::debug!(discarded, "input after 0x04 discarded");
    }
    end
}

async fn deliver(
    stdin: &mut Option<Box<dyn AsyncWrite + Unpin + Send>>,
    data: &[u8],
    tty: bool,
    discarded: &mut usize,
) {
    let Some(w) = stdin.as_mut() else {
        *discarded += data.len();
        return;
    };
    let (deliver, eot) = match (tty, data.iter().position(|b| *b == 0x04)) {
        (false, Some(pos)) => (data.get(..pos).unwrap_or_default(), Some(pos)),
        _ => (data, None),
    };
    let ok = w.write_all(deliver).await.is_ok() && w.flush().await.is_ok();
    if !ok {
        *stdin = None;
        return;
    }
    if let Some(pos) = eot {
        *discarded += data.len() - pos - 1;
        if let Some(mut w) = stdin.take() {
            let _ = w.shutdown().await;
        }
    }
}

/// Process → client, with the injected drop. Returns how it ended.
async fn pump_output<R, W>(out: &mut R, wr: &mut W, drop_after: Option<u64>) -> OutputEnd
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; CHUNK];
    let mut sent = 0u64;
    loop {
        // A PTY reports EIO once the last process holding it is gone: that is EOF.
        let n = match out.read(&mut buf).await {
            Ok(0) | Err(_) => return OutputEnd::Eof,
            Ok(n) => n,
        };
        let chunk = buf.get(..n).unwrap_or_default();
        if let Some(limit) = drop_after {
            let n64 = n as u64;
            if sent + n64 > limit {
                let allowed = usize::try_from(limit - sent).unwrap_or(0);
                let _ = wr.write_all(chunk.get(..allowed).unwrap_or_default()).await;
                let _ = wr.flush().await;
                return OutputEnd::Dropped;
            }
            sent += n64;
        }
        if wr.write_all(chunk).await.is_err() || wr.flush().await.is_err() {
            return OutputEnd::ClientGone;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn secret_line_variants() {
        let mut crlf: &[u8] = b"abc\r\nrest";
        assert_eq!(
            read_secret(&mut crlf).await,
            Some(("abc".to_owned(), b"rest".to_vec()))
        );
        let mut lf: &[u8] = b"abc?x=1\n";
        assert_eq!(
            read_secret(&mut lf).await,
            Some(("abc".to_owned(), Vec::new()))
        );
        let mut none: &[u8] = b"abc";
        assert_eq!(read_secret(&mut none).await, None);
    }
}

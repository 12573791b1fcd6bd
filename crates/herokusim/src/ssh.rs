//! The Heroku Exec SSH proxy (russh server). Its host key is the exec-manager's
//! `proxy_public_key`; it lets in only a `client_user` with the key registered for it by
//! `PUT /api/v2/{dyno}`, and runs `exec`/`shell` channels as local processes "of that dyno":
//! the dyno's env without the app's config vars, killed when the dyno restarts.
//!
//! The same server also runs on the sockets of the HTTPS attach path (Fir and Shield one-offs,
//! `run:inside`; see `attach.rs`), in [`Mode::Attach`]: any user name, only keys registered on
//! the account, `shell` runs the command of the API call that made the secret, `exec` is
//! refused unless switched on, and the connection is closed once that command has exited.
//!
//! Per channel: exec or shell, with or without a PTY (`pty-req`, `window-change` resizes the
//! PTY, which delivers SIGWINCH), stdin EOF (closes stdin without a PTY; ignored with one, as
//! OpenSSH does), `signal`, then after the process exits: its output drained (bounded),
//! `exit-status` or `exit-signal`, `eof`, `close`.
//!
//! `direct-tcpip` (`ssh -L`, `ps:forward`, `ps:socks`), in exec mode only: a connection "inside
//! the dyno" to its loopback (`127.0.0.1`, `localhost`, `::1`, and `0.0.0.0`, which
//! `ps:forward` sends and Heroku's proxy treats as loopback, heroku-protocols.md §6.7, §8.4),
//! spliced both ways with EOF passed on each way ([`Forward`]). herokusim does not isolate the
//! dynos' network namespaces: a dyno's loopback is the machine's, and each dyno's `PORT` is a
//! port of its own there (`dynos.rs`), so port P reaches whatever listens on 127.0.0.1:P. Any
//! other host is refused (`administratively prohibited`); a port where nothing listens gets
//! `connect failed`. The dyno's restart or stop closes its forwarded channels, as it kills its
//! exec sessions; the SSH connection itself stays, and new channels for the old boot are refused.
//! The attach path refuses `direct-tcpip` (Heroku's behaviour there is unverified).
//!
//! Not emulated: sftp, remote forwarding (`tcpip-forward`), agent and X11 forwarding (refused).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::process::ExitStatusExt as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use nix::sys::signal::Signal;
use russh::server::{Auth, ChannelOpenHandle, Handle, Msg, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelMsg, MethodKind, MethodSet, Sig};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::dynos::{ExecTarget, exec_target};
use crate::process::{ProcSpec, spawn_pty, spawn_split, terminate};
use crate::state::SharedRef;

/// Input messages queued per channel; the SSH session waits (backpressure) when full.
const CHANNEL_INPUT_QUEUE: usize = 64;
const CHUNK: usize = 16 * 1024;
/// How long an attach connection may stay open after its one session ended.
const ATTACH_LINGER: Duration = Duration::from_secs(5);
/// Bound on a `direct-tcpip` channel's connection inside the dyno (loopback: it either
/// connects or is refused at once; the bound only guards against a stuck stack).
const FORWARD_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The russh server config for the proxy.
pub(crate) fn server_config(host_key: russh::keys::PrivateKey) -> Arc<russh::server::Config> {
    Arc::new(russh::server::Config {
        keys: vec![host_key],
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        auth_rejection_time: Duration::from_millis(10),
        auth_rejection_time_initial: Some(Duration::ZERO),
        inactivity_timeout: Some(Duration::from_secs(3600)),
        nodelay: true,
        ..Default::default()
    })
}

pub(crate) async fn serve(
    shared: SharedRef,
    listener: TcpListener,
    config: Arc<russh::server::Config>,
) {
    loop {
        let accepted = tokio::select! {
            () = shared.cancel.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let shared2 = shared.clone();
                let config = config.clone();
                shared.tracker.spawn(connection(shared2, config, tcp, peer));
            }
            Err(e) => tracing::warn!(error = %e, "ssh accept failed"),
        }
    }
}

/// Output bytes sent on one connection, for the injected drop.
struct Budget {
    limit: Option<u64>,
    sent: AtomicU64,
    drop: CancellationToken,
}

impl Budget {
    /// How many of `n` bytes may still be sent; fires the drop when the limit is crossed.
    fn allow(&self, n: usize) -> usize {
        let Some(limit) = self.limit else {
            return n;
        };
        let n64 = n as u64;
        let before = self.sent.fetch_add(n64, Ordering::SeqCst);
        if before + n64 <= limit {
            return n;
        }
        self.drop.cancel();
        usize::try_from(limit.saturating_sub(before)).unwrap_or(0)
    }
}

/// What a connection is for: the Heroku Exec proxy (reservations from the exec-manager) or one
/// session of the HTTPS attach path.
#[derive(Clone, Debug)]
pub(crate) enum Mode {
    Exec,
    Attach(AttachTarget),
}

/// The one program an attach connection may run, claimed with its secret.
#[derive(Clone, Debug)]
pub(crate) struct AttachTarget {
    /// Resolved already (`launcher` on a CNB app, a leading process type).
    pub command: String,
    pub target: ExecTarget,
    /// Fault switch: let `exec` run its own command (Heroku's answer is unverified).
    pub allow_exec: bool,
    /// Fault switch: send no `exit-status`, so that clients must fall back to the marker.
    pub omit_exit_status: bool,
}

/// The russh server config of the attach path: an ECDSA P-256 host key (Heroku's was ECDSA,
/// heroku-protocols.md §3.9.4), public key authentication only.
pub(crate) fn attach_config(host_key: russh::keys::PrivateKey) -> Arc<russh::server::Config> {
    server_config(host_key)
}

async fn connection(
    shared: SharedRef,
    config: Arc<russh::server::Config>,
    tcp: TcpStream,
    peer: SocketAddr,
) {
    let _ = tcp.set_nodelay(true);
    serve_stream(shared, config, tcp, peer, Mode::Exec).await;
}

/// Runs one SSH connection on any byte stream (a TCP socket of the proxy, or an upgraded HTTPS
/// connection of the attach path) until the client leaves, the emulator stops or a fault drops
/// it. In attach mode the target dyno stopping ends the connection too.
pub(crate) async fn serve_stream<S>(
    shared: SharedRef,
    config: Arc<russh::server::Config>,
    stream: S,
    peer: SocketAddr,
    mode: Mode,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let dyno_stopped = match &mode {
        Mode::Exec => CancellationToken::new(),
        Mode::Attach(a) => a.target.cancel.clone(),
    };
    let budget = Arc::new(Budget {
        limit: shared.faults().drop_ssh_after,
        sent: AtomicU64::new(0),
        drop: CancellationToken::new(),
    });
    let conn_cancel = shared.cancel.child_token();
    let handler = Conn {
        shared: shared.clone(),
        peer,
        mode,
        target: None,
        started: false,
        channels: HashMap::new(),
        budget: budget.clone(),
        conn_cancel: conn_cancel.clone(),
    };
    let stream = Killable::new(stream, budget.drop.clone());
    match russh::server::run_stream(config, stream, handler).await {
        Ok(session) => {
            tokio::select! {
                r = session => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "ssh session ended with an error");
                    }
                }
                () = shared.cancel.cancelled() => budget.drop.cancel(),
                () = dyno_stopped.cancelled() => {
                    // The SSH server runs in the dyno and stops with it: the connection is cut
                    // at once (no exit status), and the channel's job stops the process.
                    tracing::info!(%peer, "the attached dyno stopped: closing the ssh connection");
                    budget.drop.cancel();
                }
                () = budget.drop.cancelled() => {
                    tracing::info!(%peer, "dropping the ssh connection (injected fault)");
                }
            }
        }
        Err(e) => tracing::debug!(%peer, error = %e, "ssh handshake failed"),
    }
    conn_cancel.cancel();
}

/// A stream that fails every read and write once its token fires: an abrupt drop of the TCP
/// connection (no SSH disconnect) when the session notices.
struct Killable<S> {
    inner: S,
    dead: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl<S> Killable<S> {
    fn new(inner: S, token: CancellationToken) -> Self {
        Self {
            inner,
            dead: Box::pin(token.cancelled_owned()),
        }
    }

    fn check(&mut self, cx: &mut Context<'_>) -> Result<(), io::Error> {
        if self.dead.as_mut().poll(cx).is_ready() {
            Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "connection dropped",
            ))
        } else {
            Ok(())
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Killable<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Killable<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Err(e) = this.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A requested PTY.
#[derive(Clone, Debug)]
struct PtyReq {
    term: String,
    cols: u16,
    rows: u16,
}

/// Input for a running channel.
#[derive(Debug)]
enum ChanInput {
    Data(Vec<u8>),
    Eof,
    Resize { cols: u16, rows: u16 },
    Signal(Signal),
}

#[derive(Default)]
struct ChanState {
    pty: Option<PtyReq>,
    env: Vec<(String, String)>,
    input: Option<mpsc::Sender<ChanInput>>,
}

/// One SSH connection's handler.
struct Conn {
    shared: SharedRef,
    peer: SocketAddr,
    mode: Mode,
    target: Option<ExecTarget>,
    /// Attach mode runs one program per connection (its secret was single-use).
    started: bool,
    channels: HashMap<ChannelId, ChanState>,
    budget: Arc<Budget>,
    conn_cancel: CancellationToken,
}

fn clamp(v: u32) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX)
}

impl Conn {
    /// The target this key may reach: in exec mode the dyno of a reservation made for this
    /// user and key; in attach mode the claimed dyno, if the key is registered on the account
    /// (any user name: the CLI's ssh sends the local login name).
    fn authorized_target(
        &self,
        user: &str,
        key: &russh::keys::ssh_key::PublicKey,
    ) -> Option<ExecTarget> {
        if let Mode::Attach(a) = &self.mode {
            let st = self.shared.state();
            return st
                .account_keys
                .iter()
                .any(|k| k.is_key(key))
                .then(|| a.target.clone());
        }
        let st = self.shared.state();
        let r = st
            .reservations
            .iter()
            .rev()
            .find(|r| r.client_user == user && r.key.key_data() == key.key_data())?;
        exec_target(&st, &r.app, &r.dyno, r.boot)
    }

    /// Where a `direct-tcpip` channel to `host:port` goes, or why it is refused.
    fn forward_target(
        &self,
        host: &str,
        port: u32,
    ) -> Result<(ExecTarget, SocketAddr), russh::ChannelOpenFailure> {
        use russh::ChannelOpenFailure::{AdministrativelyProhibited, ConnectFailed};
        let peer = self.peer;
        if let Mode::Attach(_) = self.mode {
            tracing::info!(%peer, %host, port, "attach: direct-tcpip refused (unverified on Heroku)");
            return Err(AdministrativelyProhibited);
        }
        let Some(target) = self.target.clone() else {
            return Err(AdministrativelyProhibited);
        };
        let (app, dyno) = (&target.app, &target.dyno);
        if target.cancel.is_cancelled() {
            tracing::info!(%peer, %app, %dyno, %host, port, "direct-tcpip refused: the dyno restarted or stopped since this connection authenticated");
            return Err(ConnectFailed);
        }
        let Some(ip) = loopback(host) else {
            tracing::info!(%peer, %app, %dyno, %host, port, "direct-tcpip refused: only the dyno's own loopback can be reached (127.0.0.1, localhost, ::1, 0.0.0.0)");
            return Err(AdministrativelyProhibited);
        };
        let Some(port) = u16::try_from(port).ok().filter(|p| *p != 0) else {
            tracing::info!(%peer, %app, %dyno, %host, port, "direct-tcpip refused: not a port");
            return Err(ConnectFailed);
        };
        Ok((target, SocketAddr::new(ip, port)))
    }

    fn start(
        &mut self,
        channel: ChannelId,
        command: Option<String>,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        let Some(target) = self.target.clone() else {
            return session.channel_failure(channel);
        };
        let Some(state) = self.channels.get_mut(&channel) else {
            return session.channel_failure(channel);
        };
        if state.input.is_some() {
            // One program per channel.
            return session.channel_failure(channel);
        }
        let (command, attach) = match &self.mode {
            Mode::Exec => (command, None),
            Mode::Attach(a) => {
                if self.started {
                    return session.channel_failure(channel);
                }
                match command {
                    // `shell` runs the command of the API call that made the secret.
                    None => (Some(a.command.clone()), Some(a.omit_exit_status)),
                    Some(c) if a.allow_exec => (Some(c), Some(a.omit_exit_status)),
                    Some(_) => {
                        tracing::info!(peer = %self.peer, "attach: exec refused (only shell runs the dyno's command)");
                        return session.channel_failure(channel);
                    }
                }
            }
        };
        self.started = true;
        let (tx, rx) = mpsc::channel(CHANNEL_INPUT_QUEUE);
        state.input = Some(tx);
        let mut env = target.env.clone();
        env.extend(state.env.iter().cloned());
        if let Some(pty) = &state.pty {
            env.retain(|(k, _)| k != "TERM");
            env.push(("TERM".to_owned(), pty.term.clone()));
        }
        let ssh_client = format!("{} {} 80", self.peer.ip(), self.peer.port());
        env.push(("SSH_CLIENT".to_owned(), ssh_client.clone()));
        env.push((
            "SSH_CONNECTION".to_owned(),
            format!("{ssh_client} 127.0.0.1 80"),
        ));
        let job = ChannelJob {
            handle: session.handle(),
            channel,
            command,
            pty: state.pty.clone(),
            env,
            target,
            budget: self.budget.clone(),
            conn_cancel: self.conn_cancel.clone(),
            attach,
        };
        let shared = self.shared.clone();
        self.shared.tracker.spawn(job.run(shared, rx));
        session.channel_success(channel)
    }
}

impl russh::server::Handler for Conn {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(
            if self.authorized_target(user, offer.public_key).is_some() {
                Auth::Accept
            } else {
                Auth::reject()
            },
        )
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        match self.authorized_target(user, key.public_key) {
            Some(target) => {
                tracing::info!(peer = %self.peer, %user, algorithm = %key.algorithm, "ssh client authenticated");
                self.target = Some(target);
                Ok(Auth::Accept)
            }
            None => {
                tracing::info!(peer = %self.peer, %user, "ssh client refused: no matching reservation or account key");
                Ok(Auth::reject())
            }
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.target.is_none() {
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        // Input arrives through the handler callbacks; the channel object is not read, so it
        // is dropped (keeping it unread would stall the session once its buffer fills).
        self.channels.insert(channel.id(), ChanState::default());
        drop(channel);
        reply.accept().await;
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        originator_address: &str,
        originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let peer = self.peer;
        let (target, addr) = match self.forward_target(host_to_connect, port_to_connect) {
            Ok(ok) => ok,
            Err(reason) => {
                reply.reject(reason).await;
                return Ok(());
            }
        };
        let forward = Forward {
            channel,
            addr,
            originator: format!("{originator_address}:{originator_port}"),
            peer,
            target,
            budget: self.budget.clone(),
            conn_cancel: self.conn_cancel.clone(),
        };
        self.shared.tracker.spawn(forward.run(reply));
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        col_width: u32,
        row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.channels.get_mut(&channel) {
            Some(state) if state.input.is_none() => {
                state.pty = Some(PtyReq {
                    term: term.to_owned(),
                    cols: clamp(col_width),
                    rows: clamp(row_height),
                });
                session.channel_success(channel)
            }
            _ => session.channel_failure(channel),
        }
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Like OpenSSH's usual `AcceptEnv LANG LC_*`.
        let accepted = name == "LANG" || name.starts_with("LC_");
        match self.channels.get_mut(&channel) {
            Some(state) if accepted => {
                state.env.push((name.to_owned(), value.to_owned()));
                session.channel_success(channel)
            }
            _ => session.channel_failure(channel),
        }
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let command = String::from_utf8_lossy(data).into_owned();
        tracing::info!(peer = %self.peer, "ssh exec");
        self.start(channel, Some(command), session)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        tracing::info!(peer = %self.peer, "ssh shell");
        self.start(channel, None, session)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        tracing::info!(peer = %self.peer, subsystem = name, "ssh subsystem refused (not emulated)");
        session.channel_failure(channel)
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        col_width: u32,
        row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let (cols, rows) = (clamp(col_width), clamp(row_height));
        if let Some(state) = self.channels.get_mut(&channel) {
            if let Some(tx) = &state.input {
                let _ = tx.send(ChanInput::Resize { cols, rows }).await;
            } else if let Some(pty) = &mut state.pty {
                pty.cols = cols;
                pty.rows = rows;
            }
        }
        Ok(())
    }

    async fn signal(
        &mut self,
        channel: ChannelId,
        signal: Sig,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let sig = match signal {
            Sig::ABRT => Signal::SIGABRT,
            Sig::ALRM => Signal::SIGALRM,
            Sig::FPE => Signal::SIGFPE,
            Sig::HUP => Signal::SIGHUP,
            Sig::ILL => Signal::SIGILL,
            Sig::INT => Signal::SIGINT,
            Sig::KILL => Signal::SIGKILL,
            Sig::PIPE => Signal::SIGPIPE,
            Sig::QUIT => Signal::SIGQUIT,
            Sig::SEGV => Signal::SIGSEGV,
            Sig::TERM => Signal::SIGTERM,
            Sig::USR1 => Signal::SIGUSR1,
            Sig::Custom(_) => return Ok(()),
        };
        // Logged so that tests can tell a client's TERM/KILL from the emulator's own hang-up.
        tracing::debug!(peer = %self.peer, channel = %channel, signal = %sig, "ssh signal request");
        if let Some(tx) = self.channels.get(&channel).and_then(|s| s.input.as_ref()) {
            let _ = tx.send(ChanInput::Signal(sig)).await;
        }
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(tx) = self.channels.get(&channel).and_then(|s| s.input.as_ref()) {
            let _ = tx.send(ChanInput::Data(data.to_vec())).await;
        }
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(tx) = self.channels.get(&channel).and_then(|s| s.input.as_ref()) {
            let _ = tx.send(ChanInput::Eof).await;
        }
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Logged so that tests can tell a clean channel close from a dropped connection.
        tracing::debug!(peer = %self.peer, channel = %channel, "ssh channel closed by the client");
        // Dropping the sender tells the channel's task the client is gone.
        self.channels.remove(&channel);
        Ok(())
    }
}

/// One running exec/shell channel.
struct ChannelJob {
    handle: Handle,
    channel: ChannelId,
    command: Option<String>,
    pty: Option<PtyReq>,
    env: Vec<(String, String)>,
    target: ExecTarget,
    budget: Arc<Budget>,
    conn_cancel: CancellationToken,
    /// Attach mode: `Some(omit_exit_status)`; the connection is closed after the channel.
    attach: Option<bool>,
}

fn sig_name(signo: i32) -> Sig {
    match Signal::try_from(signo) {
        Ok(Signal::SIGABRT) => Sig::ABRT,
        Ok(Signal::SIGALRM) => Sig::ALRM,
        Ok(Signal::SIGFPE) => Sig::FPE,
        Ok(Signal::SIGHUP) => Sig::HUP,
        Ok(Signal::SIGILL) => Sig::ILL,
        Ok(Signal::SIGINT) => Sig::INT,
        Ok(Signal::SIGKILL) => Sig::KILL,
        Ok(Signal::SIGPIPE) => Sig::PIPE,
        Ok(Signal::SIGQUIT) => Sig::QUIT,
        Ok(Signal::SIGSEGV) => Sig::SEGV,
        Ok(Signal::SIGTERM) => Sig::TERM,
        Ok(Signal::SIGUSR1) => Sig::USR1,
        Ok(other) => Sig::Custom(other.as_str().trim_start_matches("SIG").to_owned()),
        Err(_) => Sig::Custom(signo.to_string()),
    }
}

/// Copies one output stream to the channel (as data, or stderr extended data).
fn pump<R>(
    mut reader: R,
    handle: Handle,
    channel: ChannelId,
    stderr: bool,
    budget: Arc<Budget>,
) -> JoinHandle<()>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            // A PTY reports EIO once the last process holding it is gone: that is EOF.
            let n = match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let allowed = budget.allow(n);
            let chunk = bytes::Bytes::copy_from_slice(buf.get(..allowed).unwrap_or_default());
            if !chunk.is_empty() {
                let sent = if stderr {
                    handle.extended_data(channel, 1, chunk).await
                } else {
                    handle.data(channel, chunk).await
                };
                if sent.is_err() {
                    break;
                }
            }
            if allowed < n {
                break;
            }
        }
    })
}

impl ChannelJob {
    async fn run(self, shared: SharedRef, mut inputs: mpsc::Receiver<ChanInput>) {
        let spec = ProcSpec {
            command: self.command.as_deref(),
            env: &self.env,
            cwd: &self.target.cwd,
        };
        let mut stdin: Option<Box<dyn AsyncWrite + Unpin + Send>>;
        let mut resizer = None;
        let mut pumps = Vec::new();
        let mut spawned = if let Some(pty) = &self.pty {
            match spawn_pty(&shared.procs, &spec, pty.rows, pty.cols) {
                Ok((s, pty)) => {
                    let (r, w) = pty.into_split();
                    pumps.push(pump(
                        r,
                        self.handle.clone(),
                        self.channel,
                        false,
                        self.budget.clone(),
                    ));
                    resizer = Some(w);
                    stdin = None;
                    s
                }
                Err(e) => return self.fail(&e).await,
            }
        } else {
            match spawn_split(&shared.procs, &spec) {
                Ok((s, i, o, e)) => {
                    pumps.push(pump(
                        o,
                        self.handle.clone(),
                        self.channel,
                        false,
                        self.budget.clone(),
                    ));
                    pumps.push(pump(
                        e,
                        self.handle.clone(),
                        self.channel,
                        true,
                        self.budget.clone(),
                    ));
                    stdin = Some(Box::new(i));
                    s
                }
                Err(e) => return self.fail(&e).await,
            }
        };
        tracing::debug!(
            pid = spawned.guard.pgid(),
            pty = self.pty.is_some(),
            "exec process started"
        );
        let grace = shared.kill_grace();
        let status = loop {
            tokio::select! {
                () = self.target.cancel.cancelled() => {
                    // The dyno restarted or stopped: its processes go with it.
                    terminate(&mut spawned, Signal::SIGTERM, grace).await;
                    let _ = self.handle.eof(self.channel).await;
                    let _ = self.handle.close(self.channel).await;
                    return;
                }
                () = self.conn_cancel.cancelled() => {
                    terminate(&mut spawned, Signal::SIGHUP, grace).await;
                    return;
                }
                msg = inputs.recv() => match msg {
                    None => {
                        // The client closed the channel or the connection.
                        terminate(&mut spawned, Signal::SIGHUP, grace).await;
                        return;
                    }
                    Some(ChanInput::Data(d)) => {
                        if let Some(w) = resizer.as_mut() {
                            let _ = w.write_all(&d).await;
                        } else if let Some(w) = stdin.as_mut()
                            && (w.write_all(&d).await.is_err() || w.flush().await.is_err())
                        {
                            stdin = None;
                        }
                    }
                    Some(ChanInput::Eof) => {
                        // Without a PTY EOF closes stdin; a PTY's input is not closed by an
                        // SSH EOF (OpenSSH behaves the same; clients send ^D instead).
                        if let Some(mut w) = stdin.take() {
                            let _ = w.shutdown().await;
                        }
                    }
                    Some(ChanInput::Resize { cols, rows }) => {
                        if let Some(w) = resizer.as_ref()
                            && let Err(e) = w.resize(pty_process::Size::new(rows, cols))
                        {
                            tracing::debug!(error = %e, "cannot resize the pty");
                        }
                    }
                    Some(ChanInput::Signal(sig)) => spawned.guard.signal(sig),
                },
                status = spawned.child.wait() => break status,
            }
        };
        drop(stdin);
        // Drain: output written before the exit still goes out; a background job holding the
        // output open gets the drain period, then its group is killed.
        let drain = shared.drain();
        let aborts: Vec<_> = pumps.iter().map(JoinHandle::abort_handle).collect();
        let all = futures::future::join_all(pumps.iter_mut());
        tokio::pin!(all);
        if tokio::time::timeout(drain, &mut all).await.is_err() {
            spawned.guard.signal(Signal::SIGKILL);
            if tokio::time::timeout(drain, &mut all).await.is_err() {
                for a in &aborts {
                    a.abort();
                }
            }
        }
        drop(resizer);
        spawned.guard.signal(Signal::SIGKILL);
        match status {
            Ok(_) if self.attach == Some(true) => {
                tracing::debug!(channel = %self.channel, "attach: exit-status omitted (fault switch)");
            }
            Ok(s) => {
                if let Some(code) = s.code() {
                    let _ = self
                        .handle
                        .exit_status_request(self.channel, u32::try_from(code).unwrap_or(255))
                        .await;
                } else if let Some(signo) = s.signal() {
                    let _ = self
                        .handle
                        .exit_signal_request(
                            self.channel,
                            sig_name(signo),
                            s.core_dumped(),
                            String::new(),
                            String::new(),
                        )
                        .await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot wait for the exec process"),
        }
        let _ = self.handle.eof(self.channel).await;
        let _ = self.handle.close(self.channel).await;
        // A hang-up (the client gone) returns above without this line.
        tracing::debug!(channel = %self.channel, "exec channel closed after its process exited");
        if self.attach.is_some() {
            // The attach path carries one session: the connection ends with it. The client
            // normally leaves once the channel is closed; a disconnect sent at once could
            // overtake channel data still queued behind the window, so it waits first.
            tokio::select! {
                () = self.conn_cancel.cancelled() => return,
                () = tokio::time::sleep(ATTACH_LINGER) => {}
            }
            tracing::info!(channel = %self.channel, "attach: the client stayed after its session ended: disconnecting");
            let _ = self
                .handle
                .disconnect(
                    russh::Disconnect::ByApplication,
                    "session ended".to_owned(),
                    String::new(),
                )
                .await;
        }
    }

    async fn fail(self, e: &io::Error) {
        tracing::warn!(error = %e, "cannot start the exec process");
        let msg = format!("herokusim: cannot start the process: {e}\r\n");
        let _ = self
            .handle
            .extended_data(self.channel, 1, bytes::Bytes::from(msg))
            .await;
        let _ = self.handle.exit_status_request(self.channel, 127).await;
        let _ = self.handle.eof(self.channel).await;
        let _ = self.handle.close(self.channel).await;
    }
}

/// The address inside the dyno that a `direct-tcpip` host names, if it is the dyno's loopback.
/// `0.0.0.0` is what `ps:forward` asks for (heroku-protocols.md §6.7); Heroku's proxy treats
/// it as loopback (§8.4), so it connects to 127.0.0.1.
fn loopback(host: &str) -> Option<IpAddr> {
    match host.to_ascii_lowercase().as_str() {
        "127.0.0.1" | "localhost" | "0.0.0.0" => Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        "::1" | "[::1]" => Some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        _ => None,
    }
}

/// Why a forwarded channel ended early (before both ways had passed their EOF).
#[derive(Debug, thiserror::Error)]
enum Ended {
    #[error("the client closed the channel")]
    ClientClosed,
    #[error("the dyno's socket failed: {0}")]
    Dyno(io::Error),
    #[error("the ssh session could not take more data")]
    Session,
    #[error("the connection was dropped (injected fault)")]
    Dropped,
    #[error("the dyno restarted or stopped")]
    DynoStopped,
    #[error("the ssh connection ended")]
    ConnectionGone,
}

/// One `direct-tcpip` channel: a TCP connection inside the dyno, spliced to the channel.
///
/// Flow control: each direction holds at most one chunk. Dyno → client writes wait for the
/// client's SSH window; client → dyno writes wait for the dyno to read, and while they wait
/// the channel's queue in russh (`channel_buffer_size` messages) fills and then the whole SSH
/// connection waits (russh grants window on receipt, so a channel cannot be paused alone).
/// EOF is passed on each way; the channel is closed once both ways have ended, or at once when
/// the client closes it, the dyno's socket fails, the dyno restarts or stops, or the
/// connection ends.
struct Forward {
    channel: Channel<Msg>,
    addr: SocketAddr,
    originator: String,
    peer: SocketAddr,
    target: ExecTarget,
    budget: Arc<Budget>,
    conn_cancel: CancellationToken,
}

impl Forward {
    async fn run(self, reply: ChannelOpenHandle) {
        let Self {
            channel,
            addr,
            originator,
            peer,
            target,
            budget,
            conn_cancel,
        } = self;
        let (app, dyno) = (target.app.as_str(), target.dyno.as_str());
        let connect = tokio::time::timeout(FORWARD_CONNECT_TIMEOUT, TcpStream::connect(addr));
        let tcp = tokio::select! {
            r = connect => r,
            () = target.cancel.cancelled() => {
                reply.reject(russh::ChannelOpenFailure::ConnectFailed).await;
                return;
            }
            // The connection is gone: nobody to answer.
            () = conn_cancel.cancelled() => return,
        };
        let tcp = match tcp {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => {
                tracing::info!(%peer, %app, %dyno, %addr, error = %e, "direct-tcpip: cannot connect inside the dyno");
                reply.reject(russh::ChannelOpenFailure::ConnectFailed).await;
                return;
            }
            Err(_) => {
                tracing::info!(%peer, %app, %dyno, %addr, "direct-tcpip: connecting inside the dyno timed out");
                reply.reject(russh::ChannelOpenFailure::ConnectFailed).await;
                return;
            }
        };
        let _ = tcp.set_nodelay(true);
        reply.accept().await;
        let id = channel.id();
        tracing::info!(%peer, %app, %dyno, %addr, %originator, channel = %id, "direct-tcpip: forwarding");

        let (mut from_client, to_client) = channel.split();
        let (mut from_dyno, mut to_dyno) = tcp.into_split();
        let (eof_tx, mut eof_rx) = tokio::sync::oneshot::channel::<()>();
        // Client → dyno. Ends when the client closes the channel; its EOF half-closes the
        // dyno's socket and is reported, and the channel is still watched for the close.
        let up = async move {
            let mut eof_tx = Some(eof_tx);
            loop {
                match from_client.wait().await {
                    Some(ChannelMsg::Data { data }) => {
                        to_dyno.write_all(&data).await.map_err(Ended::Dyno)?;
                    }
                    Some(ChannelMsg::Eof) => {
                        let _ = to_dyno.shutdown().await;
                        if let Some(tx) = eof_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Some(ChannelMsg::Close) | None => return Err::<(), _>(Ended::ClientClosed),
                    Some(_) => {}
                }
            }
        };
        // Dyno → client, at the pace of the client's window; the dyno's EOF becomes the
        // channel's.
        let down = async {
            let mut writer = to_client.make_writer();
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = from_dyno.read(&mut buf).await.map_err(Ended::Dyno)?;
                if n == 0 {
                    to_client.eof().await.map_err(|_| Ended::Session)?;
                    return Ok::<(), Ended>(());
                }
                let allowed = budget.allow(n);
                let chunk = buf.get(..allowed).unwrap_or_default();
                if !chunk.is_empty() {
                    writer.write_all(chunk).await.map_err(|_| Ended::Session)?;
                }
                if allowed < n {
                    return Err(Ended::Dropped);
                }
            }
        };
        // Both directions are dropped before the close goes out: a client → dyno write stuck on
        // a dyno that does not read holds the channel's receiver, and with it the SSH session
        // (which waits to queue more input); dropping it frees the session to send the close.
        let why = {
            tokio::pin!(up, down);
            let (mut down_done, mut client_eof) = (false, false);
            loop {
                tokio::select! {
                    r = &mut up => break r.err(),
                    r = &mut down, if !down_done => {
                        down_done = true;
                        if r.is_err() || client_eof {
                            break r.err();
                        }
                    }
                    r = &mut eof_rx, if !client_eof => {
                        client_eof = true;
                        if r.is_ok() && down_done {
                            break None;
                        }
                    }
                    () = target.cancel.cancelled() => {
                        tracing::info!(%peer, %app, %dyno, %addr, channel = %id, "direct-tcpip: the dyno restarted or stopped: closing the channel");
                        break Some(Ended::DynoStopped);
                    }
                    () = conn_cancel.cancelled() => break Some(Ended::ConnectionGone),
                }
            }
        };
        let _ = to_client.close().await;
        let ended = why.map_or_else(|| "both ways ended".to_owned(), |e| e.to_string());
        tracing::debug!(%peer, %addr, channel = %id, %ended, "direct-tcpip: channel closed");
    }
}

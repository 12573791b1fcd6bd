//! The SSH client layer shared by the ssh and psexec backends: dial with a timeout, verify
//! the host key through a [`HostKeyPolicy`], authenticate with a public key (RSA signs with
//! `rsa-sha2-*`), keep the connection alive (10 s × 3 by default), and run one session
//! channel against a backend's [`SessionIo`] until the server closes it.
//!
//! Channel rules (test-peers.md §2.2), each one a lesson from a real peer:
//! - read until `Close`: `exit-status` may arrive before the last data;
//! - stdin EOF is a channel `eof` without a PTY and a `0x04` byte under one (a PTY ignores
//!   SSH EOF);
//! - `exit-signal` without `exit-status` is `128 + n`; no status at all is 254, never 0;
//! - output goes to the sinks as it arrives; a slow client slows the channel (SSH window)
//!   rather than growing a buffer;
//! - on cancellation the remote command gets `TERM`, then `KILL` after a grace period, then
//!   the channel and the connection are closed.
//!
//! It does not parse command lines or read session variables; the backends do.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backend::duplex::{self, Ending, RemoteInput, pump_input};
use backend::{ExitStatus, SessionIo, TermSize};
use bytes::Bytes;
use russh::client;
use russh::keys::ssh_key::{Algorithm, HashAlg, PrivateKey};
use russh::keys::{PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{ChannelMsg, Disconnect, Preferred, Sig};

use crate::error::SshError;
use crate::hostkey::{HostKeyError, HostKeyPolicy, fingerprint};

/// End of transmission: how a terminal's input is ended.
const EOT: u8 = 0x04;
/// After `exit-status`, how long the channel may stay silent before we stop waiting for
/// `Close` (a server that never closes must not hang the session; data resets the timer).
const DRAIN_AFTER_STATUS: Duration = Duration::from_secs(5);

/// Where to connect and as whom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub user: String,
}

impl Target {
    fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Connection settings with their defaults.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Limit for TCP connect, key exchange and authentication together.
    pub connect_timeout: Duration,
    /// Keepalive probe interval (Heroku's CLI: 10 s).
    pub keepalive_interval: Duration,
    /// Unanswered probes before the connection is declared dead (Heroku's CLI: 3).
    pub keepalive_max: usize,
    /// On cancellation, time between `TERM` and `KILL` for the remote command.
    pub kill_grace: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(15),
            keepalive_interval: Duration::from_secs(10),
            keepalive_max: 3,
            kill_grace: Duration::from_secs(2),
        }
    }
}

/// A verified, authenticated SSH connection.
pub struct Connection {
    handle: client::Handle<Checker>,
    target: Target,
    options: ClientOptions,
    ended: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("target", &self.target)
            .finish()
    }
}

/// The client handler: verifies the host key and remembers why the connection ended.
struct Checker {
    host: String,
    port: u16,
    policy: Arc<HostKeyPolicy>,
    refusal: Arc<Mutex<Option<HostKeyError>>>,
    ended: Arc<Mutex<Option<String>>>,
}

impl client::Handler for Checker {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_public_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let outcome = match server_public_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => {
                self.policy.check(&self.host, self.port, key)
            }
            PublicKeyOrCertificate::Certificate(_) => Err(HostKeyError::Certificate),
        };
        match outcome {
            Ok(()) => Ok(true),
            Err(e) => {
                tracing::warn!(host = %self.host, port = self.port, error = %e, "ssh host key refused");
                if let Ok(mut slot) = self.refusal.lock() {
                    *slot = Some(e);
                }
                Ok(false)
            }
        }
    }

    async fn disconnected(
        &mut self,
        reason: client::DisconnectReason<Self::Error>,
    ) -> Result<(), Self::Error> {
        let text = match &reason {
            client::DisconnectReason::ReceivedDisconnect(info) => {
                format!("the server disconnected: {info:?}")
            }
            client::DisconnectReason::Error(russh::Error::KeepaliveTimeout) => {
                "the connection timed out: no answer to keepalive probes".to_owned()
            }
            client::DisconnectReason::Error(e) => format!("the connection failed: {e}"),
        };
        if let Ok(mut slot) = self.ended.lock() {
            slot.get_or_insert(text);
        }
        match reason {
            client::DisconnectReason::ReceivedDisconnect(_) => Ok(()),
            client::DisconnectReason::Error(e) => Err(e),
        }
    }
}

/// Parses a private key from OpenSSH/PEM text. The error never quotes the text.
pub fn parse_private_key(text: &str) -> Result<PrivateKey, SshError> {
    russh::keys::decode_secret_key(text, None).map_err(|e| {
        SshError::Key(format!(
            "cannot decode it ({}); expected an unencrypted OpenSSH or PEM private key",
            redact_key_error(&e)
        ))
    })
}

fn redact_key_error(e: &russh::keys::Error) -> String {
    // russh's key errors describe formats, not contents; keep only the first line anyway.
    e.to_string()
        .lines()
        .next()
        .unwrap_or("invalid key")
        .to_owned()
}

/// Dials `target`, verifies its host key with `policy` and authenticates with `key`.
pub async fn connect(
    target: &Target,
    policy: HostKeyPolicy,
    key: Arc<PrivateKey>,
    options: &ClientOptions,
) -> Result<Connection, SshError> {
    let addr = target.addr();
    let dial_and_connect = async {
        let stream = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|e| SshError::Connect {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
        let _ = stream.set_nodelay(true);
        connect_inner(stream, target, policy, key, options).await
    };
    match tokio::time::timeout(options.connect_timeout, dial_and_connect).await {
        Ok(r) => r,
        Err(_) => Err(SshError::Timeout {
            addr,
            after: options.connect_timeout,
        }),
    }
}

/// Like [`connect`], over a stream that is already open (for example an upgraded HTTPS
/// connection); `target` names the server in messages and for `policy`.
pub async fn connect_stream<S>(
    stream: S,
    target: &Target,
    policy: HostKeyPolicy,
    key: Arc<PrivateKey>,
    options: &ClientOptions,
) -> Result<Connection, SshError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let addr = target.addr();
    match tokio::time::timeout(
        options.connect_timeout,
        connect_inner(stream, target, policy, key, options),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(SshError::Timeout {
            addr,
            after: options.connect_timeout,
        }),
    }
}

async fn connect_inner<S>(
    stream: S,
    target: &Target,
    policy: HostKeyPolicy,
    key: Arc<PrivateKey>,
    options: &ClientOptions,
) -> Result<Connection, SshError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let addr = target.addr();
    let mut preferred = Preferred::default();
    let known = policy.algorithms_for(&target.host, target.port);
    if !known.is_empty() {
        // Offer the algorithms we can verify first, then the rest, as OpenSSH does.
        let mut order: Vec<Algorithm> = known.clone();
        order.extend(preferred.key.iter().filter(|a| !known.contains(a)).cloned());
        preferred.key = order.into();
    }
    // AES-GCM first: aws-lc-rs runs it with AES-NI, several times faster than
    // chacha20-poly1305 (russh's default first choice) on the hardware dynoagent runs on.
    let mut ciphers = vec![russh::cipher::AES_256_GCM];
    ciphers.extend(
        preferred
            .cipher
            .iter()
            .filter(|c| **c != russh::cipher::AES_256_GCM)
            .cloned(),
    );
    preferred.cipher = ciphers.into();
    let config = Arc::new(client::Config {
        keepalive_interval: Some(options.keepalive_interval),
        keepalive_max: options.keepalive_max,
        inactivity_timeout: None,
        nodelay: true,
        preferred,
        ..Default::default()
    });
    let refusal = Arc::new(Mutex::new(None));
    let ended = Arc::new(Mutex::new(None));
    let handler = Checker {
        host: target.host.clone(),
        port: target.port,
        policy: Arc::new(policy),
        refusal: refusal.clone(),
        ended: ended.clone(),
    };
    let mut handle = match client::connect_stream(config, stream, handler).await {
        Ok(h) => h,
        Err(e) => {
            if let Some(refused) = refusal.lock().ok().and_then(|mut s| s.take()) {
                return Err(SshError::HostKey(refused));
            }
            return Err(SshError::Handshake {
                addr,
                reason: e.to_string(),
            });
        }
    };
    let hash = if key.algorithm().is_rsa() {
        // Servers that do not announce server-sig-algs still get SHA-256: OpenSSH ≥ 8.8
        // refuses SHA-1 `ssh-rsa` signatures.
        match handle.best_supported_rsa_hash().await {
            Ok(Some(h)) => h,
            Ok(None) | Err(_) => Some(HashAlg::Sha256),
        }
    } else {
        None
    };
    let algorithm = key.algorithm().as_str().to_owned();
    let fp = fingerprint(key.public_key());
    let auth = handle
        .authenticate_publickey(target.user.clone(), PrivateKeyWithHashAlg::new(key, hash))
        .await
        .map_err(|e| SshError::Handshake {
            addr: addr.clone(),
            reason: format!("during authentication: {e}"),
        })?;
    if !auth.success() {
        let _ = handle
            .disconnect(Disconnect::ByApplication, "authentication failed", "en")
            .await;
        return Err(SshError::Auth {
            addr,
            user: target.user.clone(),
            algorithm,
            fingerprint: fp,
        });
    }
    Ok(Connection {
        handle,
        target: target.clone(),
        options: options.clone(),
        ended,
    })
}

/// What to start on the channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// `exec` of a command line (the server passes it to the user's shell).
    Exec(String),
    /// The user's login shell.
    Shell,
}

/// One session channel: what to start, and whether it gets a terminal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelSpec {
    pub start: Start,
    /// A PTY of this initial size; `None` for plain pipes (stdout and stderr separate).
    pub pty: Option<TermSize>,
    /// `TERM` for the PTY.
    pub term: String,
    /// The input was already consumed by the backend (for example it was the command):
    /// send end-of-input right away.
    pub stdin_closed: bool,
}

impl ChannelSpec {
    /// Exec without a PTY, stdin streamed.
    pub fn exec(command: impl Into<String>) -> ChannelSpec {
        ChannelSpec {
            start: Start::Exec(command.into()),
            pty: None,
            term: "xterm-256color".to_owned(),
            stdin_closed: false,
        }
    }
}

/// A transformation of the channel's stdout before it reaches the session (the run
/// backend's exit marker), which may also know the command's exit code.
pub trait StdoutFilter: Send {
    /// The bytes to forward for `chunk` (possibly fewer, held back across calls).
    fn feed(&mut self, chunk: Bytes) -> Bytes;
    /// Whatever is still held back once the channel has ended.
    fn finish(&mut self) -> Bytes;
    /// An exit code found in the output; it takes precedence over the channel's own.
    fn exit_code(&self) -> Option<i32>;
}

/// Forwards everything and knows no exit code.
struct Unfiltered;

impl StdoutFilter for Unfiltered {
    fn feed(&mut self, chunk: Bytes) -> Bytes {
        chunk
    }
    fn finish(&mut self) -> Bytes {
        Bytes::new()
    }
    fn exit_code(&self) -> Option<i32> {
        None
    }
}

/// How the remote side ended, before mapping to an exit code.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Code(u32),
    Signal { name: String, message: String },
}

/// A `direct-tcpip` channel as a byte stream (local port forwarding, `ssh -L`).
pub type ForwardStream = russh::ChannelStream<client::Msg>;

impl Connection {
    /// The target this connection reached.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Opens a `direct-tcpip` channel to `host:port` as the server sees them (`ssh -L`); the
    /// channel is a byte stream (EOF both ways; dropped, it closes). Several may be open at
    /// once on one connection.
    pub async fn forward(&self, host: &str, port: u16) -> Result<ForwardStream, SshError> {
        let channel = self
            .handle
            .channel_open_direct_tcpip(host, u32::from(port), "127.0.0.1", 0)
            .await
            .map_err(|e| SshError::Channel {
                addr: self.target.addr(),
                reason: channel_open_reason(&e),
            })?;
        Ok(channel.into_stream())
    }

    /// Whether the connection has ended (keepalive timeout, server gone).
    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// Closes the connection (for connections used only through [`Connection::forward`]).
    pub async fn close(&self) {
        let _ = self
            .handle
            .disconnect(Disconnect::ByApplication, "", "en")
            .await;
    }

    /// Runs one channel to completion against `io`, then closes the connection.
    pub async fn run(self, spec: ChannelSpec, io: SessionIo) -> ExitStatus {
        self.run_filtered(spec, io, &mut Unfiltered).await
    }

    /// Like [`Connection::run`], with the channel's stdout passed through `filter`; an exit
    /// code the filter found wins over the channel's `exit-status`, and stands in when the
    /// channel sent none.
    pub async fn run_filtered(
        self,
        spec: ChannelSpec,
        io: SessionIo,
        filter: &mut dyn StdoutFilter,
    ) -> ExitStatus {
        let status = self
            .run_channel(spec, io, filter)
            .await
            .unwrap_or_else(ExitStatus::from);
        let _ = self
            .handle
            .disconnect(Disconnect::ByApplication, "", "en")
            .await;
        status
    }

    async fn run_channel(
        &self,
        spec: ChannelSpec,
        io: SessionIo,
        filter: &mut dyn StdoutFilter,
    ) -> Result<ExitStatus, SshError> {
        let SessionIo {
            input,
            stdout,
            stderr,
            cancel,
            ..
        } = io;
        let channel = tokio::select! {
            () = cancel.cancelled() => return Err(SshError::Closed),
            r = self.handle.channel_open_session() => r.map_err(|e| SshError::Channel {
                addr: self.target.addr(),
                reason: channel_open_reason(&e),
            })?,
        };
        let (mut read, write) = channel.split();
        let write = Arc::new(write);
        // Requests are sent with want_reply; their answers arrive in order on the channel.
        let mut pending: VecDeque<&'static str> = VecDeque::new();
        if let Some(size) = spec.pty {
            write
                .request_pty(
                    true,
                    &spec.term,
                    u32::from(size.cols),
                    u32::from(size.rows),
                    u32::from(size.xpixel),
                    u32::from(size.ypixel),
                    &[],
                )
                .await
                .map_err(SshError::Terminal)?;
            pending.push_back("a terminal (pty-req)");
        }
        let sent = match &spec.start {
            Start::Exec(cmd) => write.exec(true, cmd.as_bytes()).await,
            Start::Shell => write.request_shell(true).await,
        };
        sent.map_err(SshError::Start)?;
        pending.push_back(match spec.start {
            Start::Exec(_) => "the command (exec)",
            Start::Shell => "a shell",
        });

        let pty = spec.pty.is_some();
        let mut input = input;
        let input_side = async {
            let mut remote = ChannelInput {
                write: write.clone(),
                pty,
                ended: false,
            };
            let mut first = None;
            if spec.stdin_closed
                && let Err(e) = remote.end().await
            {
                first = Some(e);
            }
            let mut end = pump_input(&mut input, remote).await;
            end.failed = first.or(end.failed);
            end
        };
        let mut outcome: Option<Outcome> = None;
        let output_side = async {
            let mut drain_deadline: Option<tokio::time::Instant> = None;
            loop {
                let msg = match drain_deadline {
                    Some(deadline) => match tokio::time::timeout_at(deadline, read.wait()).await {
                        Ok(msg) => msg,
                        Err(_) => return ChannelEnd::DrainTimeout,
                    },
                    None => read.wait().await,
                };
                let Some(msg) = msg else {
                    return ChannelEnd::Closed;
                };
                let is_stderr = matches!(msg, ChannelMsg::ExtendedData { .. });
                match msg {
                    ChannelMsg::Data { data } | ChannelMsg::ExtendedData { data, .. } => {
                        // Extended data (type 1) is the remote stderr.
                        let (sink, data) = if is_stderr {
                            (&stderr, data)
                        } else {
                            (&stdout, filter.feed(data))
                        };
                        if !data.is_empty() && sink.write(data).await.is_err() {
                            return ChannelEnd::ClientGone;
                        }
                    }
                    ChannelMsg::ExitStatus { exit_status } => {
                        outcome.get_or_insert(Outcome::Code(exit_status));
                    }
                    ChannelMsg::ExitSignal {
                        signal_name,
                        error_message,
                        core_dumped,
                        ..
                    } => {
                        let mut message = error_message;
                        if core_dumped {
                            message.push_str(" (core dumped)");
                        }
                        outcome.get_or_insert(Outcome::Signal {
                            name: sig_name(&signal_name),
                            message,
                        });
                    }
                    ChannelMsg::Success => {
                        pending.pop_front();
                    }
                    ChannelMsg::Failure => {
                        return ChannelEnd::Refused(
                            pending.pop_front().unwrap_or("a channel request"),
                        );
                    }
                    ChannelMsg::Close => return ChannelEnd::Closed,
                    _ => {}
                }
                if outcome.is_some() {
                    // Data resets the timer: a server that keeps sending is still draining.
                    drain_deadline = Some(tokio::time::Instant::now() + DRAIN_AFTER_STATUS);
                }
            }
        };
        match duplex::drive(&cancel, input_side, output_side).await {
            Ending::Cancelled | Ending::Finished(ChannelEnd::ClientGone) => {
                self.stop_remote(&write, &mut read, pty).await;
                return Err(SshError::Closed);
            }
            Ending::Finished(ChannelEnd::Refused(what)) => {
                let _ = write.close().await;
                return Err(SshError::Refused {
                    addr: self.target.addr(),
                    what,
                });
            }
            Ending::Finished(ChannelEnd::DrainTimeout) => {
                tracing::debug!("ssh channel sent its exit status but did not close; ending it");
                let _ = write.close().await;
            }
            Ending::Finished(ChannelEnd::Closed) => {}
        }
        let rest = filter.finish();
        if !rest.is_empty() {
            let _ = stdout.write(rest).await;
        }
        if let Some(code) = filter.exit_code() {
            return Ok(ExitStatus::exited(code));
        }
        match outcome {
            Some(Outcome::Code(code)) => Ok(status_from_code(code)),
            Some(Outcome::Signal { name, message }) => Ok(status_from_signal(&name, &message)),
            None => {
                let why = self
                    .ended
                    .lock()
                    .ok()
                    .and_then(|s| s.clone())
                    .unwrap_or_else(|| "the channel closed".to_owned());
                Err(SshError::NoExitStatus {
                    addr: self.target.addr(),
                    why,
                })
            }
        }
    }

    /// Ends the remote command. Under a PTY, closing the channel hangs up the terminal,
    /// which sends `SIGHUP` to the remote session. Without one, the command gets `TERM`, then
    /// `KILL` after the grace period, then the channel closes (its pipes close, so a command
    /// that still writes or reads ends too). OpenSSH honours signal requests only for
    /// non-root logins (it logs "session signalling requires privilege separation").
    async fn stop_remote(
        &self,
        write: &russh::ChannelWriteHalf<client::Msg>,
        read: &mut russh::ChannelReadHalf,
        pty: bool,
    ) {
        let _ = write.signal(Sig::TERM).await;
        if pty {
            let _ = write.close().await;
            return;
        }
        let ended = tokio::time::timeout(self.options.kill_grace, async {
            while let Some(msg) = read.wait().await {
                if matches!(
                    msg,
                    ChannelMsg::ExitStatus { .. }
                        | ChannelMsg::ExitSignal { .. }
                        | ChannelMsg::Close
                ) {
                    return;
                }
            }
        })
        .await;
        if ended.is_err() {
            let _ = write.signal(Sig::KILL).await;
        }
        let _ = write.close().await;
    }
}

/// How the channel's read side ended.
enum ChannelEnd {
    /// The server closed the channel.
    Closed,
    /// The server sent an exit status, then stayed silent past [`DRAIN_AFTER_STATUS`].
    DrainTimeout,
    /// The server refused a channel request (what is named).
    Refused(&'static str),
    /// The client can no longer receive output.
    ClientGone,
}

/// The channel's write side as the input direction: data, end of input (`eof` without a
/// PTY, `0x04` under one, since a PTY ignores SSH EOF) and window changes.
struct ChannelInput {
    write: Arc<russh::ChannelWriteHalf<client::Msg>>,
    pty: bool,
    /// An SSH EOF was sent: nothing may follow it.
    ended: bool,
}

impl RemoteInput for ChannelInput {
    async fn write(&mut self, data: Bytes) -> std::io::Result<()> {
        if self.ended {
            // Later input would be a protocol error; the command has its EOF.
            return Ok(());
        }
        self.write
            .data_bytes(data)
            .await
            .map_err(std::io::Error::other)
    }
    async fn end(&mut self) -> std::io::Result<()> {
        if self.pty {
            self.write
                .data_bytes(Bytes::from_static(&[EOT]))
                .await
                .map_err(std::io::Error::other)
        } else if self.ended {
            Ok(())
        } else {
            self.ended = true;
            self.write.eof().await.map_err(std::io::Error::other)
        }
    }
    async fn resize(&mut self, size: TermSize) -> std::io::Result<()> {
        if !self.pty {
            return Ok(());
        }
        self.write
            .window_change(
                u32::from(size.cols),
                u32::from(size.rows),
                u32::from(size.xpixel),
                u32::from(size.ypixel),
            )
            .await
            .map_err(std::io::Error::other)
    }
}

fn channel_open_reason(e: &russh::Error) -> String {
    match e {
        russh::Error::ChannelOpenFailure(reason) => format!(
            "the server refused the channel ({reason:?}); it may limit sessions (OpenSSH MaxSessions) or forbid them for this user"
        ),
        other => other.to_string(),
    }
}

/// Maps an SSH `exit-status`.
pub fn status_from_code(code: u32) -> ExitStatus {
    ExitStatus::exited(i32::try_from(code).unwrap_or(i32::MAX))
}

/// Maps an SSH `exit-signal` (a name like `TERM`) to `128 + n`.
pub fn status_from_signal(name: &str, message: &str) -> ExitStatus {
    let name = name.strip_prefix("SIG").unwrap_or(name);
    match signal_number(name) {
        Some(n) => {
            let mut status = ExitStatus::signaled(n, name);
            if !message.trim().is_empty() {
                status.message.push_str(&format!(" ({})", message.trim()));
            }
            status
        }
        None => SshError::UnknownSignal {
            name: name.to_owned(),
        }
        .into(),
    }
}

fn sig_name(sig: &Sig) -> String {
    match sig {
        Sig::ABRT => "ABRT",
        Sig::ALRM => "ALRM",
        Sig::FPE => "FPE",
        Sig::HUP => "HUP",
        Sig::ILL => "ILL",
        Sig::INT => "INT",
        Sig::KILL => "KILL",
        Sig::PIPE => "PIPE",
        Sig::QUIT => "QUIT",
        Sig::SEGV => "SEGV",
        Sig::TERM => "TERM",
        Sig::USR1 => "USR1",
        Sig::Custom(name) => name.as_str(),
    }
    .to_owned()
}

/// RFC 4254 signal names to Linux numbers.
fn signal_number(name: &str) -> Option<i32> {
    Some(match name {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "ILL" => 4,
        "TRAP" => 5,
        "ABRT" => 6,
        "BUS" => 7,
        "FPE" => 8,
        "KILL" => 9,
        "USR1" => 10,
        "SEGV" => 11,
        "USR2" => 12,
        "PIPE" => 13,
        "ALRM" => 14,
        "TERM" => 15,
        "XCPU" => 24,
        "XFSZ" => 25,
        "VTALRM" => 26,
        "PROF" => 27,
        "SYS" => 31,
        _ => return None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_and_signals_map_to_hoop_codes() {
        assert_eq!(status_from_code(0), ExitStatus::success());
        assert_eq!(status_from_code(42).code, 42);
        let term = status_from_signal("TERM", "");
        assert_eq!(term.code, 143);
        assert!(term.message.contains("SIGTERM"), "{}", term.message);
        assert_eq!(status_from_signal("SIGKILL", "").code, 137);
        assert_eq!(status_from_signal("WEIRD", "").code, 254);
        assert_eq!(sig_name(&Sig::Custom("USR2".into())), "USR2");
    }
}

//! The ssh backend, and the SSH client layer it shares with psexec.
//!
//! - [`hostkey`]: host-key policies (pinned keys, known_hosts) with fingerprints in refusals;
//! - [`client`]: connect, authenticate, keep alive, run one channel against a session's I/O;
//! - [`args`]: the `ssh …` command line as OpenSSH reads it.
//!
//! A session of the ssh backend: the connection command (`ssh $SSH_URI -i $SSH_PRIVATE_KEY`,
//! with session variables expanded) plus the client's arguments give the destination, the
//! key and an optional remote command.
//!
//! | session | remote command given | no remote command |
//! |---|---|---|
//! | `hoop exec` | `exec` of the words joined by spaces, no PTY, stdin streamed then `eof` | the login shell without a PTY, reading stdin as its script (like `ssh host < script`) |
//! | `hoop connect` | `exec` with a PTY of the client's size | the login shell with a PTY |
//!
//! `-T` turns the PTY off for `hoop connect` too. Host keys come from the session variables
//! `SSH_HOST_KEY` (pinned OpenSSH public key lines) or `SSH_KNOWN_HOSTS` (a known_hosts file
//! path or its text), else from `~/.ssh/known_hosts`; unknown or changed keys are refused
//! with their fingerprint. The key comes from `-i` (a file path, e.g. a `filesystem:` secret,
//! or the PEM text of an `envvar:` secret), else from `SSH_PRIVATE_KEY`. Neither the key nor
//! the expanded command line is ever logged.

#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod args;
pub mod client;
pub mod hostkey;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use backend::{Backend, ExitStatus, Mode, SessionEnv, SessionIo, SessionRequest};
use futures::future::BoxFuture;
use russh::keys::PrivateKey;

pub use client::{ChannelSpec, ClientOptions, Connection, SshError, Start, Target, connect};
pub use hostkey::{HostKeyError, HostKeyPolicy, KnownHosts, fingerprint};

/// Exit code for a bad command line or configuration (nothing was dialled).
const USAGE_EXIT_CODE: i32 = 2;

/// Whether a connection command belongs to this backend: its program is `ssh` (any path).
pub fn claims(command: &[String]) -> bool {
    command.first().is_some_and(|c| basename(c) == "ssh")
}

/// The last path component of a command.
pub fn basename(cmd: &str) -> &str {
    cmd.rsplit('/').next().unwrap_or(cmd)
}

/// Settings for [`SshBackend`].
#[derive(Clone, Debug)]
pub struct SshConfig {
    /// Connect timeout, keepalive and kill grace; `-o` options override per session.
    pub client: ClientOptions,
    /// The known_hosts file used when a session sets neither `SSH_HOST_KEY` nor
    /// `SSH_KNOWN_HOSTS` (`~/.ssh/known_hosts` by default; `None`: refuse such sessions).
    pub known_hosts: Option<PathBuf>,
}

impl SshConfig {
    /// Defaults, with `~/.ssh/known_hosts` from the agent's `HOME`.
    pub fn from_agent_env() -> SshConfig {
        SshConfig {
            client: ClientOptions::default(),
            known_hosts: hostkey::default_known_hosts(
                std::env::var_os("HOME").as_deref().map(Path::new),
            ),
        }
    }
}

/// Runs sessions on SSH servers.
#[derive(Debug, Clone)]
pub struct SshBackend {
    config: SshConfig,
}

impl SshBackend {
    /// A backend with the given settings.
    pub fn new(config: SshConfig) -> SshBackend {
        SshBackend { config }
    }
}

impl Backend for SshBackend {
    fn name(&self) -> &'static str {
        "ssh"
    }

    fn run(&self, request: SessionRequest, io: SessionIo) -> BoxFuture<'static, ExitStatus> {
        let config = self.config.clone();
        Box::pin(run(config, request, io))
    }
}

/// Everything a session needs before dialling.
struct Plan {
    target: Target,
    policy: HostKeyPolicy,
    key: PrivateKey,
    spec: ChannelSpec,
    options: ClientOptions,
}

fn usage(message: impl std::fmt::Display) -> ExitStatus {
    ExitStatus {
        code: USAGE_EXIT_CODE,
        message: message.to_string(),
    }
}

async fn run(config: SshConfig, request: SessionRequest, io: SessionIo) -> ExitStatus {
    let plan = match plan(&config, &request).await {
        Ok(p) => p,
        Err(status) => return status,
    };
    tracing::debug!(host = %plan.target.host, port = plan.target.port, user = %plan.target.user, "ssh session connecting");
    let cancel = io.cancel.clone();
    let conn = tokio::select! {
        () = cancel.cancelled() => return ExitStatus::internal("session closed"),
        r = connect(&plan.target, plan.policy, Arc::new(plan.key), &plan.options) => match r {
            Ok(c) => c,
            Err(e) => return ExitStatus::internal(e.to_string()),
        },
    };
    conn.run(plan.spec, io).await
}

async fn plan(config: &SshConfig, request: &SessionRequest) -> Result<Plan, ExitStatus> {
    // The connection's command is expanded (it names secrets as $VARS); the client's
    // arguments are taken exactly as typed.
    let mut words: Vec<String> = request
        .command
        .iter()
        .skip(1)
        .map(|w| request.env.expand(w))
        .collect();
    words.extend(request.args.iter().cloned());
    let mut parsed = args::parse(&words).map_err(usage)?;
    if parsed.host.is_none() {
        match request.env.get_str("SSH_URI").filter(|u| !u.is_empty()) {
            Some(uri) => args::apply_destination(&mut parsed, uri).map_err(usage)?,
            None => {
                return Err(usage(
                    "ssh: no destination: set SSH_URI (ssh://user@host:port) for this connection or pass user@host",
                ));
            }
        }
    }
    let host = parsed.host.clone().unwrap_or_default();
    let Some(user) = parsed.user.clone() else {
        return Err(usage(format!(
            "ssh: no user for {host}: use user@host, ssh://user@host:port or -l USER"
        )));
    };
    let port = parsed.port.unwrap_or(22);
    let identity = parsed
        .identity
        .clone()
        .or_else(|| request.env.get_str("SSH_PRIVATE_KEY").map(str::to_owned));
    let key = load_key(identity.as_deref()).await?;
    let policy = host_key_policy(&request.env, config.known_hosts.as_deref())?;
    let pty = match request.mode {
        Mode::Terminal { size } if !parsed.no_pty => Some(size),
        _ => None,
    };
    let spec = ChannelSpec {
        start: parsed.command.clone().map_or(Start::Shell, Start::Exec),
        pty,
        term: request
            .env
            .get_str("TERM")
            .unwrap_or("xterm-256color")
            .to_owned(),
        stdin_closed: false,
    };
    let mut options = config.client.clone();
    if let Some(t) = parsed.connect_timeout {
        options.connect_timeout = t;
    }
    if let Some(t) = parsed.keepalive_interval.filter(|t| !t.is_zero()) {
        options.keepalive_interval = t;
    }
    if let Some(n) = parsed.keepalive_max {
        options.keepalive_max = n;
    }
    Ok(Plan {
        target: Target { host, port, user },
        policy,
        key,
        spec,
        options,
    })
}

/// Loads the private key from PEM text or a file path. Errors never quote key material.
async fn load_key(identity: Option<&str>) -> Result<PrivateKey, ExitStatus> {
    let Some(identity) = identity.filter(|i| !i.trim().is_empty()) else {
        return Err(usage(
            "ssh: no private key: pass -i KEYFILE or set the connection secret SSH_PRIVATE_KEY (envvar: with the key text, or filesystem: for a file)",
        ));
    };
    let text = if identity.contains("-----BEGIN") || identity.contains("PuTTY-User-Key-File") {
        identity.to_owned()
    } else if let Some(var) = identity.strip_prefix('$') {
        return Err(usage(format!(
            "ssh: the private key variable {} is not set for this connection",
            var.trim_matches(['{', '}'])
        )));
    } else {
        match tokio::fs::read_to_string(identity).await {
            Ok(t) => t,
            Err(e) => {
                return Err(usage(format!(
                    "ssh: cannot read the private key file {identity}: {e}"
                )));
            }
        }
    };
    client::parse_private_key(&text).map_err(|e| usage(format!("ssh: {e}")))
}

/// The host-key policy a session asks for.
fn host_key_policy(
    env: &SessionEnv,
    default_known_hosts: Option<&Path>,
) -> Result<HostKeyPolicy, ExitStatus> {
    if let Some(pins) = env.get_str("SSH_HOST_KEY").filter(|v| !v.trim().is_empty()) {
        let keys = pins
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(hostkey::parse_public_key_line)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| usage(format!("ssh: SSH_HOST_KEY: {e}")))?;
        return Ok(HostKeyPolicy::Pinned(keys));
    }
    if let Some(known) = env
        .get_str("SSH_KNOWN_HOSTS")
        .filter(|v| !v.trim().is_empty())
    {
        let path = Path::new(known.trim());
        if !known.contains('\n') && path.is_file() {
            return KnownHosts::from_file(path)
                .map(HostKeyPolicy::KnownHosts)
                .map_err(|e| usage(format!("ssh: {e}")));
        }
        let parsed = KnownHosts::parse(known, "SSH_KNOWN_HOSTS");
        if parsed.is_empty() {
            return Err(usage(
                "ssh: SSH_KNOWN_HOSTS is neither a readable file nor known_hosts text (lines like `[host]:port ssh-ed25519 AAAA…`)",
            ));
        }
        return Ok(HostKeyPolicy::KnownHosts(parsed));
    }
    match default_known_hosts {
        Some(path) => KnownHosts::from_file(path)
            .map(HostKeyPolicy::KnownHosts)
            .map_err(|e| usage(format!("ssh: {e}"))),
        None => Err(usage(
            "ssh: no host keys to verify the server with: set SSH_KNOWN_HOSTS or SSH_HOST_KEY for this connection",
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| (*a).to_owned()).collect()
    }

    #[test]
    fn claims_ssh_only() {
        assert!(claims(&v(&["ssh", "$SSH_URI"])));
        assert!(claims(&v(&["/usr/bin/ssh"])));
        assert!(!claims(&v(&["sshpass"])));
        assert!(!claims(&v(&["ps-exec.sh"])));
        assert!(!claims(&v(&[])));
    }
}

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
mod error;
pub mod hostkey;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use backend::{Backend, ExitStatus, Mode, SessionEnv, SessionIo, SessionRequest};
use futures::future::BoxFuture;

pub use client::{
    ChannelSpec, ClientOptions, Connection, ForwardStream, Start, StdoutFilter, Target, connect,
    connect_stream,
};
pub use error::SshError;
pub use hostkey::{HostKeyError, HostKeyPolicy, KnownHosts, fingerprint};
/// The key type [`load_key`] returns and [`connect`] takes.
pub use russh::keys::PrivateKey;

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

async fn run(config: SshConfig, request: SessionRequest, io: SessionIo) -> ExitStatus {
    let plan = match plan(&config, &request).await {
        Ok(p) => p,
        Err(e) => return e.into(),
    };
    tracing::debug!(host = %plan.target.host, port = plan.target.port, user = %plan.target.user, "ssh session connecting");
    let cancel = io.cancel.clone();
    let conn = tokio::select! {
        () = cancel.cancelled() => return SshError::Closed.into(),
        r = connect(&plan.target, plan.policy, Arc::new(plan.key), &plan.options) => match r {
            Ok(c) => c,
            Err(e) => return e.into(),
        },
    };
    conn.run(plan.spec, io).await
}

async fn plan(config: &SshConfig, request: &SessionRequest) -> Result<Plan, SshError> {
    // The connection's command is expanded (it names secrets as $VARS); the client's
    // arguments are taken exactly as typed and may not override what the connection set.
    let words: Vec<String> = request
        .command
        .iter()
        .skip(1)
        .map(|w| request.env.expand(w))
        .collect();
    let mut parsed = args::parse_session(
        &words,
        request.env.connection_str(SSH_URI_VAR),
        &request.args,
    )?;
    let Some(host) = parsed.host.clone() else {
        return Err(SshError::NoDestination);
    };
    let Some(user) = parsed.user.clone() else {
        return Err(SshError::NoUser { host });
    };
    let port = parsed.port.unwrap_or(22);
    // Name where the key came from in messages, never the key itself.
    let via_var = request
        .command
        .iter()
        .any(|w| w.contains("$SSH_PRIVATE_KEY") || w.contains("${SSH_PRIVATE_KEY}"));
    let key = match parsed.identity.take() {
        Some(identity) if via_var => load_key(Some(&identity), "SSH_PRIVATE_KEY (via -i)")?,
        Some(identity) => load_key(Some(&identity), "the -i of the connection's command")?,
        None => load_key(
            request.env.connection_text_or_file(SSH_PRIVATE_KEY_VAR),
            SSH_PRIVATE_KEY_VAR,
        )?,
    };
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

/// The connection variable with the destination (`ssh://user@host:port`).
pub const SSH_URI_VAR: &str = "SSH_URI";
/// The connection variable with the private key (text, base64-wrapped text, or a file path).
pub const SSH_PRIVATE_KEY_VAR: &str = "SSH_PRIVATE_KEY";
/// The connection variable with pinned host keys.
pub const SSH_HOST_KEY_VAR: &str = "SSH_HOST_KEY";
/// The connection variable with known_hosts text or a known_hosts file path.
pub const SSH_KNOWN_HOSTS_VAR: &str = "SSH_KNOWN_HOSTS";

/// The largest private key file read (an RSA-16384 key is about 13 KiB of PEM).
pub const MAX_KEY_FILE: u64 = 64 * 1024;
/// The largest known_hosts file read.
pub const MAX_KNOWN_HOSTS_FILE: u64 = hostkey::MAX_KNOWN_HOSTS_BYTES;

/// Loads the private key from PEM text, base64-wrapped PEM/OpenSSH text, or a file path.
/// `source` names where the value came from, for messages. Errors never quote the value: a key
/// that is not recognised as key text could still be one, so it is never echoed as a "path".
pub fn load_key(identity: Option<&str>, source: &str) -> Result<PrivateKey, SshError> {
    let Some(identity) = identity.filter(|i| !i.trim().is_empty()) else {
        return Err(SshError::NoKey);
    };
    let text = if looks_like_key_text(identity) {
        identity.to_owned()
    } else if let Some(text) = unwrap_base64_key(identity) {
        text
    } else if let Some(var) = identity
        .strip_prefix('$')
        .filter(|v| v.len() < 256 && !v.contains(char::is_whitespace))
    {
        return Err(SshError::KeyVariableUnset {
            var: var.trim_matches(['{', '}']).to_owned(),
        });
    } else if is_path_like(identity) {
        backend::file::read_capped_text(Path::new(identity), MAX_KEY_FILE).map_err(|error| {
            SshError::KeyFile {
                from: source.to_owned(),
                error,
            }
        })?
    } else {
        return Err(SshError::NotKeyText {
            from: source.to_owned(),
        });
    };
    client::parse_private_key(&text).map_err(|error| SshError::KeyIn {
        from: source.to_owned(),
        error: Box::new(error),
    })
}

fn looks_like_key_text(value: &str) -> bool {
    value.contains("-----BEGIN") || value.contains("PuTTY-User-Key-File")
}

/// A key stored base64-wrapped (`base64 -w0 id_ed25519`, a common habit for config vars):
/// decoded if the result is key text.
fn unwrap_base64_key(value: &str) -> Option<String> {
    use base64::Engine as _;
    let compact: String = value.chars().filter(|c| !c.is_whitespace()).collect();
    if compact.len() < 64 {
        return None;
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&compact)
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    looks_like_key_text(&text).then_some(text)
}

/// Whether a value can be a file path: one short line starting with `/`, `./` or `../`.
/// Anything else is treated as (unrecognised) key material and never used as a path.
fn is_path_like(value: &str) -> bool {
    value.len() <= 4096
        && !value.contains(['\n', '\0'])
        && ["/", "./", "../"].iter().any(|p| value.starts_with(p))
}

/// The host-key policy a session asks for.
fn host_key_policy(
    env: &SessionEnv,
    default_known_hosts: Option<&Path>,
) -> Result<HostKeyPolicy, SshError> {
    if let Some(pins) = env
        .connection_str(SSH_HOST_KEY_VAR)
        .filter(|v| !v.trim().is_empty())
    {
        let keys = pins
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(hostkey::parse_public_key_line)
            .collect::<Result<Vec<_>, _>>()
            .map_err(SshError::HostKeyPins)?;
        return Ok(HostKeyPolicy::Pinned(keys));
    }
    if let Some(known) = env
        .connection_text_or_file(SSH_KNOWN_HOSTS_VAR)
        .filter(|v| !v.trim().is_empty())
    {
        if !known.contains('\n') && is_path_like(known.trim()) {
            let path = Path::new(known.trim());
            return backend::file::read_capped_text(path, MAX_KNOWN_HOSTS_FILE)
                .map(|text| {
                    HostKeyPolicy::KnownHosts(KnownHosts::parse(&text, path.display().to_string()))
                })
                .map_err(|error| SshError::KnownHostsFile {
                    path: path.display().to_string(),
                    error,
                });
        }
        let parsed = KnownHosts::parse(known, "SSH_KNOWN_HOSTS");
        if parsed.is_empty() {
            return Err(SshError::KnownHostsText);
        }
        return Ok(HostKeyPolicy::KnownHosts(parsed));
    }
    match default_known_hosts {
        Some(path) => KnownHosts::from_file(path)
            .map(HostKeyPolicy::KnownHosts)
            .map_err(SshError::DefaultKnownHosts),
        None => Err(SshError::NoHostKeys),
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

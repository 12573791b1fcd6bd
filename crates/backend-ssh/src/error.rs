//! Why an ssh (or psexec) session could not be set up or run, and the one place where that
//! becomes the session's exit status (`From<SshError> for ExitStatus`): 2 for a bad command
//! line or connection setting (nothing was dialled), 254 for everything else. A remote command
//! that ran reports its own status (`exit-status`, `exit-signal`); that is not an error.
//!
//! Messages never contain key material or the expanded command line: a key that fails to load
//! is named by where it came from, never quoted.

use std::time::Duration;

use backend::file::FileError;
use backend::{ExitStatus, INTERNAL_EXIT_CODE};

use crate::args::ArgsError;
use crate::hostkey::HostKeyError;

/// Exit code for a bad command line or configuration (nothing was dialled).
const USAGE_EXIT_CODE: i32 = 2;

/// Why a connection, channel or session plan failed.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    // A bad command line or connection setting: nothing was dialled.
    /// A bad `ssh` argument.
    #[error(transparent)]
    Args(#[from] ArgsError),
    #[error(
        "ssh: no destination: set SSH_URI (ssh://user@host:port) for this connection or pass user@host"
    )]
    NoDestination,
    #[error("ssh: no user for {host}: use user@host, ssh://user@host:port or -l USER")]
    NoUser { host: String },
    #[error(
        "ssh: no private key: set the connection secret SSH_PRIVATE_KEY (envvar: with the key text, or filesystem: for a file), or -i in the connection's command"
    )]
    NoKey,
    #[error("ssh: the private key variable {var} is not set for this connection")]
    KeyVariableUnset { var: String },
    /// `from` names where the path came from, never the key.
    #[error(
        "ssh: cannot use the private key file named by {from}: {error}; give a regular key file (at most {max} bytes) or the key's text",
        max = crate::MAX_KEY_FILE
    )]
    KeyFile { from: String, error: FileError },
    #[error(
        "ssh: the private key in {from} is neither key text (-----BEGIN …), base64 of key text, nor a file path; store the whole private key file's text (or its base64) there"
    )]
    NotKeyText { from: String },
    /// The key text did not decode (`error` is a [`SshError::Key`]).
    #[error("ssh: the private key in {from}: {error}")]
    KeyIn { from: String, error: Box<SshError> },
    #[error("ssh: SSH_HOST_KEY: {0}")]
    HostKeyPins(HostKeyError),
    #[error(
        "ssh: cannot use the known_hosts file {path} (SSH_KNOWN_HOSTS): {error}; give a regular file of at most {max} bytes or the known_hosts text",
        max = crate::MAX_KNOWN_HOSTS_FILE
    )]
    KnownHostsFile { path: String, error: FileError },
    #[error(
        "ssh: SSH_KNOWN_HOSTS is neither a readable file nor known_hosts text (lines like `[host]:port ssh-ed25519 AAAA…`)"
    )]
    KnownHostsText,
    /// The agent's default known_hosts could not be read.
    #[error("ssh: {0}")]
    DefaultKnownHosts(HostKeyError),
    #[error(
        "ssh: no host keys to verify the server with: set SSH_KNOWN_HOSTS or SSH_HOST_KEY for this connection"
    )]
    NoHostKeys,

    // Connecting.
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error(
        "connecting to {addr} timed out after {after:?} (TCP connect, key exchange and authentication)"
    )]
    Timeout { addr: String, after: Duration },
    #[error("{0}")]
    HostKey(#[from] HostKeyError),
    #[error("SSH handshake with {addr} failed: {reason}")]
    Handshake { addr: String, reason: String },
    #[error(
        "the server at {addr} refused public-key authentication for user {user:?} with the {algorithm} key {fingerprint}; check that this key's public half is in that user's authorized_keys"
    )]
    Auth {
        addr: String,
        user: String,
        algorithm: String,
        fingerprint: String,
    },
    #[error("invalid private key: {0}")]
    Key(String),

    // The session's channel.
    /// The session was closed (gateway close, shutdown) or its client went away.
    #[error("session closed")]
    Closed,
    #[error("cannot open an SSH session channel on {addr}: {reason}")]
    Channel { addr: String, reason: String },
    #[error("cannot request a terminal: {0}")]
    Terminal(russh::Error),
    #[error("cannot start the remote command: {0}")]
    Start(russh::Error),
    /// The server answered a channel request (`what`) with a failure.
    #[error("the SSH server at {addr} refused {what}")]
    Refused { addr: String, what: &'static str },
    #[error(
        "the remote command on {addr} ended without an exit status ({why}); its exit status is unknown"
    )]
    NoExitStatus { addr: String, why: String },
    #[error("the remote command was killed by signal {name}, whose number is unknown here")]
    UnknownSignal { name: String },
}

impl From<SshError> for ExitStatus {
    fn from(e: SshError) -> ExitStatus {
        use SshError as E;
        let code = match &e {
            E::Args(_)
            | E::NoDestination
            | E::NoUser { .. }
            | E::NoKey
            | E::KeyVariableUnset { .. }
            | E::KeyFile { .. }
            | E::NotKeyText { .. }
            | E::KeyIn { .. }
            | E::HostKeyPins(_)
            | E::KnownHostsFile { .. }
            | E::KnownHostsText
            | E::DefaultKnownHosts(_)
            | E::NoHostKeys => USAGE_EXIT_CODE,
            E::Connect { .. }
            | E::Timeout { .. }
            | E::HostKey(_)
            | E::Handshake { .. }
            | E::Auth { .. }
            | E::Key(_)
            | E::Closed
            | E::Channel { .. }
            | E::Terminal(_)
            | E::Start(_)
            | E::Refused { .. }
            | E::NoExitStatus { .. }
            | E::UnknownSignal { .. } => INTERNAL_EXIT_CODE,
        };
        ExitStatus {
            code,
            message: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_exit_2_and_the_rest_254() {
        let usage = ExitStatus::from(SshError::NoUser {
            host: "example.com".into(),
        });
        assert_eq!(usage.code, 2);
        assert_eq!(
            usage.message,
            "ssh: no user for example.com: use user@host, ssh://user@host:port or -l USER"
        );
        let key = ExitStatus::from(SshError::KeyIn {
            from: "SSH_PRIVATE_KEY".into(),
            error: Box::new(SshError::Key("cannot decode it".into())),
        });
        assert_eq!(
            (key.code, key.message.as_str()),
            (
                2,
                "ssh: the private key in SSH_PRIVATE_KEY: invalid private key: cannot decode it"
            )
        );
        assert_eq!(
            ExitStatus::from(SshError::Closed),
            ExitStatus::internal("session closed")
        );
    }
}

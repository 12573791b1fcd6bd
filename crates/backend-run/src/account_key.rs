//! The agent's account SSH key for Heroku's SSH attach path (heroku-protocols.md §3.9.6 rule 1):
//! generating one (ed25519) and registering its public half on the Heroku account idempotently
//! (`GET /account/keys`, then `POST` only if absent). Used by `dynoagent keys generate` and
//! `dynoagent keys register`; the session itself only reads `HEROKU_SSH_KEY`.
//!
//! The key is account-wide: a registered key opens the SSH attach path of every Fir or Shield
//! app the account can run dynos on. It is never deleted here (the agent never removes a key it
//! did not add, and removing the one it uses would break its sessions).

use backend_ssh::PrivateKey;
use heroku_api::{AccountKey, HerokuClient, HerokuError};
use russh::keys::ssh_key::LineEnding;

/// A new ed25519 private key in OpenSSH format (the text to store as `HEROKU_SSH_KEY`).
pub fn generate() -> Result<String, String> {
    let key = PrivateKey::random(&mut rand::rng(), russh::keys::Algorithm::Ed25519)
        .map_err(|e| format!("cannot generate an ed25519 key: {e}"))?;
    key.to_openssh(LineEnding::LF)
        .map(|text| text.to_string())
        .map_err(|e| format!("cannot encode the key: {e}"))
}

/// The OpenSSH public key line of `key` with `comment`.
pub fn public_line(key: &PrivateKey, comment: &str) -> Result<String, String> {
    let line = key
        .public_key()
        .to_openssh()
        .map_err(|e| format!("cannot encode the public key: {e}"))?;
    Ok(if comment.is_empty() {
        line
    } else {
        format!("{line} {comment}")
    })
}

/// The outcome of [`register`].
#[derive(Clone, Debug)]
pub struct Registration {
    pub key: AccountKey,
    /// False when the account already had this key.
    pub added: bool,
    /// The key's SHA-256 fingerprint, as ssh-keygen shows it.
    pub fingerprint: String,
}

/// Registers `key`'s public half on the account of `client`'s API key unless it is there
/// already (same type and key material; the comment does not matter).
pub async fn register(
    client: &HerokuClient,
    key: &PrivateKey,
    comment: &str,
) -> Result<Registration, RegisterError> {
    let line = public_line(key, comment).map_err(RegisterError::Encode)?;
    let (registered, added) = client.ensure_account_key(&line).await?;
    Ok(Registration {
        key: registered,
        added,
        fingerprint: backend_ssh::fingerprint(key.public_key()),
    })
}

/// Why [`register`] failed.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("{0}")]
    Encode(String),
    #[error(transparent)]
    Api(#[from] HerokuError),
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_load_and_have_a_public_line() {
        let text = generate().unwrap();
        assert!(text.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
        let key = backend_ssh::load_key(Some(&text), "test").unwrap();
        let line = public_line(&key, "dynoagent@test").unwrap();
        assert!(line.starts_with("ssh-ed25519 AAAA"), "{line}");
        assert!(line.ends_with(" dynoagent@test"), "{line}");
        assert_ne!(generate().unwrap(), text, "each key is new");
    }
}

//! The account's SSH keys (`/account/keys`, heroku-protocols.md §3.9.5): parsing an uploaded
//! OpenSSH public key line, its MD5 colon-hex fingerprint, and the Key JSON Heroku answers with.
//!
//! It owns the key model and its validation. The HTTP routes are in `api.rs`; the SSH server of
//! the HTTPS attach path (`ssh.rs`, attach mode) lets in exactly these keys.

use std::time::SystemTime;

use base64::Engine as _;
use russh::keys::ssh_key::PublicKey;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::state::rfc3339;

/// At most this many keys per account; a further `POST` is refused with 422 (an emulator
/// bound; Heroku's own limit is unknown).
pub(crate) const MAX_ACCOUNT_KEYS: usize = 64;

/// One SSH key registered on the account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountKey {
    pub id: Uuid,
    /// The `public_key` exactly as uploaded (a trailing newline included).
    pub public_key: String,
    /// The key line's comment (third field), empty when it has none.
    pub comment: String,
    /// MD5 of the key blob in colon-hex (`8c:51:…`), as Heroku shows it.
    pub fingerprint: String,
    pub created_at: SystemTime,
}

impl AccountKey {
    /// Whether `key` is this registered key (same algorithm and key material; the comment
    /// does not matter).
    pub(crate) fn is_key(&self, key: &PublicKey) -> bool {
        PublicKey::from_openssh(self.public_key.trim())
            .is_ok_and(|k| k.key_data() == key.key_data())
    }

    /// Parses an uploaded OpenSSH public key line (`ssh-ed25519 AAAA… comment`, a trailing
    /// newline allowed). The error says what is wrong, for a 422 message.
    pub(crate) fn parse(uploaded: &str) -> Result<Self, String> {
        let line = uploaded.trim();
        PublicKey::from_openssh(line)
            .map_err(|e| format!("public_key is not an OpenSSH public key line: {e}"))?;
        // The fingerprint is over the wire-format blob, i.e. the base64 field of the line.
        let blob = line
            .split_whitespace()
            .nth(1)
            .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
            .ok_or_else(|| "public_key has no base64 key field".to_owned())?;
        let digest = md5::compute(&blob);
        let fingerprint = digest
            .0
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        Ok(Self {
            id: Uuid::new_v4(),
            public_key: uploaded.to_owned(),
            // The comment is everything after the base64 field (`user@host`, possibly with
            // spaces), as in an authorized_keys line.
            comment: line
                .split_whitespace()
                .skip(2)
                .collect::<Vec<_>>()
                .join(" "),
            fingerprint,
            created_at: SystemTime::now(),
        })
    }

    /// Whether `ident` (a path segment) names this key: its id or its fingerprint.
    pub(crate) fn matches(&self, ident: &str) -> bool {
        self.id.to_string() == ident || self.fingerprint == ident
    }

    /// The Key object (schema `definitions/key`): `email` is the deprecated alias of `comment`.
    pub(crate) fn to_json(&self) -> Value {
        let at = rfc3339(self.created_at);
        json!({
            "id": self.id,
            "public_key": self.public_key,
            "comment": self.comment,
            "email": self.comment,
            "fingerprint": self.fingerprint,
            "created_at": at,
            "updated_at": at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_key_line_with_a_trailing_newline() {
        // The fingerprint of this fixed key, computed with `ssh-keygen -E md5 -lf`.
        let line = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILntH4hiPe0WaU183tnQAE01FVbg5r6a1njcICcs58zL agent@test\n";
        let key = AccountKey::parse(line).unwrap();
        assert_eq!(key.comment, "agent@test");
        assert_eq!(key.public_key, line);
        assert_eq!(
            key.fingerprint,
            "26:38:2e:3e:ab:cd:49:66:ea:7e:3e:86:f1:41:b1:d9"
        );
        assert!(key.matches(&key.fingerprint) && key.matches(&key.id.to_string()));
        assert!(AccountKey::parse("ssh-ed25519 notbase64 x").is_err());
        assert!(AccountKey::parse("").is_err());
        assert!(AccountKey::parse("hello world").is_err());
    }
}

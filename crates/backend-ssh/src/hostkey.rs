//! Host-key verification: which server keys a connection accepts, and why it refuses the
//! others. Every policy here verifies; there is deliberately no "accept any key" variant.
//!
//! - [`HostKeyPolicy::Pinned`]: the server must present exactly one of the given keys
//!   (Heroku Exec pins `proxy_public_key`; the ssh backend pins `SSH_HOST_KEY`). The
//!   comparison is the SHA-256 of the key blob, which is what the fingerprint is.
//! - [`HostKeyPolicy::KnownHosts`]: OpenSSH `known_hosts` text (a file or inline), matched on
//!   `host` for port 22 and `[host]:port` otherwise, with comma lists, `*`/`?` wildcards, `!`
//!   negation, hashed `|1|` entries and `@revoked`. `@cert-authority` lines are ignored:
//!   this client does not accept host certificates.
//!
//! Refusals always name the presented key's fingerprint (`SHA256:…`) and, when the policy
//! expected other keys, theirs too, so an operator can compare them with `ssh-keygen -lf`.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use hmac::{KeyInit as _, Mac as _};
use russh::keys::ssh_key::{Algorithm, HashAlg, PublicKey};

/// The largest known_hosts file read (a few thousand hosts fit easily).
pub const MAX_KNOWN_HOSTS_BYTES: u64 = 4 * 1024 * 1024;

/// The `SHA256:…` fingerprint of a key, as `ssh-keygen -lf` prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Parses one OpenSSH public key line: `type base64 [comment]`. A leading known_hosts host
/// field (`host type base64`) is tolerated, so a line copied from `ssh-keyscan` works too.
pub fn parse_public_key_line(line: &str) -> Result<PublicKey, HostKeyError> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let candidates = [fields.get(1), fields.get(2)];
    for blob in candidates.into_iter().flatten() {
        if let Ok(key) = russh::keys::parse_public_key_base64(blob) {
            return Ok(key);
        }
    }
    Err(HostKeyError::BadKey(format!(
        "expected an OpenSSH public key line like `ssh-ed25519 AAAA… comment`, got {} field(s) starting with {:?}",
        fields.len(),
        fields
            .first()
            .map(|f| f.chars().take(32).collect::<String>())
            .unwrap_or_default()
    )))
}

/// Why a server's key was refused (or a policy could not be built).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostKeyError {
    #[error(
        "host key mismatch for {host}: the server presented {presented}, but the pinned key is {expected}; refusing to connect (the server's key changed, or someone is intercepting the connection)"
    )]
    PinMismatch {
        host: String,
        presented: String,
        expected: String,
    },
    #[error(
        "the host key of {host} is unknown: the server presented {presented} ({algorithm}), which is not in {origin}; if that is the right key, add it (for example the output of `ssh-keyscan -p PORT HOST`) to SSH_KNOWN_HOSTS, or set SSH_HOST_KEY to it"
    )]
    Unknown {
        host: String,
        presented: String,
        algorithm: String,
        origin: String,
    },
    #[error(
        "HOST KEY CHANGED for {host}: the server presented {presented}, but {origin} expects {expected}; refusing to connect (the server's key changed, or someone is intercepting the connection)"
    )]
    Changed {
        host: String,
        presented: String,
        expected: String,
        origin: String,
    },
    #[error(
        "the host key {presented} of {host} is marked @revoked in {origin}; refusing to connect"
    )]
    Revoked {
        host: String,
        presented: String,
        origin: String,
    },
    #[error("the server presented a host certificate; only plain host keys are accepted")]
    Certificate,
    #[error("invalid host key: {0}")]
    BadKey(String),
    #[error("cannot read known_hosts {path}: {reason}")]
    Read { path: String, reason: String },
}

/// Which host keys a connection accepts.
#[derive(Clone)]
pub enum HostKeyPolicy {
    /// Exactly these keys (any of them).
    Pinned(Vec<PublicKey>),
    /// Entries of a known_hosts file or text.
    KnownHosts(KnownHosts),
    /// Any key: the transport underneath already authenticates the server. Only for Heroku's
    /// HTTPS attach path, whose SSH runs inside a verified TLS connection reached through a
    /// secret URL and whose host keys no source publishes (heroku-protocols.md §3.9.6 rule 4,
    /// a written exception to "verify host keys"). The presented key's fingerprint is logged.
    TrustTransport,
}

impl fmt::Debug for HostKeyPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostKeyPolicy::Pinned(keys) => f
                .debug_tuple("Pinned")
                .field(&keys.iter().map(fingerprint).collect::<Vec<_>>())
                .finish(),
            HostKeyPolicy::KnownHosts(k) => k.fmt(f),
            HostKeyPolicy::TrustTransport => f.write_str("TrustTransport"),
        }
    }
}

impl HostKeyPolicy {
    /// Checks `key` presented by `host`:`port`.
    pub fn check(&self, host: &str, port: u16, key: &PublicKey) -> Result<(), HostKeyError> {
        let label = host_label(host, port);
        match self {
            HostKeyPolicy::Pinned(pins) => {
                let presented = fingerprint(key);
                if pins.iter().any(|p| fingerprint(p) == presented) {
                    Ok(())
                } else {
                    Err(HostKeyError::PinMismatch {
                        host: label,
                        presented,
                        expected: join_fingerprints(pins.iter()),
                    })
                }
            }
            HostKeyPolicy::KnownHosts(known) => known.check(&label, key),
            HostKeyPolicy::TrustTransport => {
                tracing::info!(host = %label, fingerprint = %fingerprint(key), "ssh host key accepted: the transport (verified TLS, secret URL) authenticates this server");
                Ok(())
            }
        }
    }

    /// The key algorithms this policy knows for `host`:`port`, to offer those first in the
    /// key exchange (as OpenSSH does), so a server with several host keys presents the one
    /// we can verify. Empty when the policy knows none.
    pub fn algorithms_for(&self, host: &str, port: u16) -> Vec<Algorithm> {
        let keys: Vec<&PublicKey> = match self {
            HostKeyPolicy::Pinned(pins) => pins.iter().collect(),
            HostKeyPolicy::TrustTransport => Vec::new(),
            HostKeyPolicy::KnownHosts(known) => {
                let label = host_label(host, port);
                known
                    .entries
                    .iter()
                    .filter(|e| e.marker == Marker::None && e.hosts.matches(&label))
                    .map(|e| &e.key)
                    .collect()
            }
        };
        let mut out = Vec::new();
        for key in keys {
            let algs = match key.algorithm() {
                Algorithm::Rsa { .. } => vec![
                    Algorithm::Rsa {
                        hash: Some(HashAlg::Sha512),
                    },
                    Algorithm::Rsa {
                        hash: Some(HashAlg::Sha256),
                    },
                ],
                other => vec![other],
            };
            for a in algs {
                if !out.contains(&a) {
                    out.push(a);
                }
            }
        }
        out
    }
}

/// `host` for port 22, `[host]:port` otherwise (OpenSSH's known_hosts key).
pub fn host_label(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_owned()
    } else {
        format!("[{host}]:{port}")
    }
}

fn join_fingerprints<'a>(keys: impl Iterator<Item = &'a PublicKey>) -> String {
    let all: Vec<String> = keys.map(fingerprint).collect();
    if all.is_empty() {
        "(none)".to_owned()
    } else {
        all.join(" or ")
    }
}

/// Parsed known_hosts entries and where they came from.
#[derive(Clone)]
pub struct KnownHosts {
    origin: String,
    entries: Vec<Entry>,
}

impl fmt::Debug for KnownHosts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KnownHosts")
            .field("origin", &self.origin)
            .field("entries", &self.entries.len())
            .finish()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Marker {
    None,
    Revoked,
    CertAuthority,
}

#[derive(Clone, Debug)]
enum Hosts {
    Patterns(Vec<String>),
    Hashed { salt: Vec<u8>, hash: Vec<u8> },
}

#[derive(Clone, Debug)]
struct Entry {
    marker: Marker,
    hosts: Hosts,
    key: PublicKey,
}

impl KnownHosts {
    /// Parses known_hosts `text`; `origin` names it in messages (a path or a variable name).
    /// Lines that are not entries (comments, blank lines, unknown key types) are skipped, as
    /// OpenSSH does.
    pub fn parse(text: &str, origin: impl Into<String>) -> KnownHosts {
        let entries = text.lines().filter_map(parse_entry).collect();
        KnownHosts {
            origin: origin.into(),
            entries,
        }
    }

    /// Reads a known_hosts file. A missing file is an empty list (every host is unknown).
    pub fn from_file(path: &Path) -> Result<KnownHosts, HostKeyError> {
        // A regular file of bounded size only: a known_hosts path must not block (a FIFO) or
        // exhaust memory (`/dev/zero`).
        match backend::file::read_capped_text(path, MAX_KNOWN_HOSTS_BYTES) {
            Ok(text) => Ok(KnownHosts::parse(&text, path.display().to_string())),
            Err(e) if e.is_not_found() => Ok(KnownHosts {
                origin: format!("{} (which does not exist)", path.display()),
                entries: Vec::new(),
            }),
            Err(e) => Err(HostKeyError::Read {
                path: path.display().to_string(),
                reason: e.to_string(),
            }),
        }
    }

    /// How many entries were parsed.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry was parsed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn check(&self, label: &str, key: &PublicKey) -> Result<(), HostKeyError> {
        let presented = fingerprint(key);
        let matching: Vec<&Entry> = self
            .entries
            .iter()
            .filter(|e| e.marker != Marker::CertAuthority && e.hosts.matches(label))
            .collect();
        let same = |e: &&&Entry| fingerprint(&e.key) == presented;
        if matching
            .iter()
            .filter(|e| e.marker == Marker::Revoked)
            .any(|e| same(&e))
        {
            return Err(HostKeyError::Revoked {
                host: label.to_owned(),
                presented,
                origin: self.origin.clone(),
            });
        }
        let plain: Vec<&&Entry> = matching
            .iter()
            .filter(|e| e.marker == Marker::None)
            .collect();
        if plain.iter().any(same) {
            return Ok(());
        }
        if plain.is_empty() {
            return Err(HostKeyError::Unknown {
                host: label.to_owned(),
                presented,
                algorithm: key.algorithm().as_str().to_owned(),
                origin: self.origin.clone(),
            });
        }
        Err(HostKeyError::Changed {
            host: label.to_owned(),
            presented,
            expected: join_fingerprints(plain.iter().map(|e| &e.key)),
            origin: self.origin.clone(),
        })
    }
}

fn parse_entry(line: &str) -> Option<Entry> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let mut fields = line.split_whitespace();
    let mut first = fields.next()?;
    let marker = match first {
        "@revoked" => Marker::Revoked,
        "@cert-authority" => Marker::CertAuthority,
        m if m.starts_with('@') => return None,
        _ => Marker::None,
    };
    if marker != Marker::None {
        first = fields.next()?;
    }
    let _key_type = fields.next()?;
    let blob = fields.next()?;
    let key = russh::keys::parse_public_key_base64(blob).ok()?;
    let hosts = if let Some(rest) = first.strip_prefix("|1|") {
        let (salt, hash) = rest.split_once('|')?;
        let b64 = base64::engine::general_purpose::STANDARD;
        Hosts::Hashed {
            salt: b64.decode(salt).ok()?,
            hash: b64.decode(hash).ok()?,
        }
    } else {
        Hosts::Patterns(first.split(',').map(str::to_owned).collect())
    };
    Some(Entry { marker, hosts, key })
}

impl Hosts {
    fn matches(&self, label: &str) -> bool {
        match self {
            Hosts::Hashed { salt, hash } => {
                let Ok(mac) = hmac::Hmac::<sha1::Sha1>::new_from_slice(salt) else {
                    return false;
                };
                mac.chain_update(label.as_bytes())
                    .verify_slice(hash)
                    .is_ok()
            }
            Hosts::Patterns(patterns) => {
                let mut matched = false;
                for p in patterns {
                    if let Some(negated) = p.strip_prefix('!') {
                        if wildcard(negated, label) {
                            return false;
                        }
                    } else if wildcard(p, label) {
                        matched = true;
                    }
                }
                matched
            }
        }
    }
}

/// OpenSSH's `match_pattern`: `*` is any run, `?` one character; case-insensitive.
fn wildcard(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.to_ascii_lowercase().chars().collect();
    let t: Vec<char> = text.to_ascii_lowercase().chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(c) if *c == '?' || Some(c) == t.get(ti) => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p.get(pi..).unwrap_or_default().iter().all(|c| *c == '*')
}

/// Where the ssh backend finds host keys when the session sets none.
pub fn default_known_hosts(home: Option<&Path>) -> Option<PathBuf> {
    home.map(|h| h.join(".ssh").join("known_hosts"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use russh::keys::PrivateKey;

    fn key() -> PublicKey {
        PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)
            .unwrap()
            .public_key()
            .clone()
    }

    fn line(hosts: &str, k: &PublicKey) -> String {
        format!("{hosts} {}", k.to_openssh().unwrap())
    }

    #[test]
    fn pinned_keys_match_exactly_and_show_both_fingerprints() {
        let (a, b) = (key(), key());
        let policy = HostKeyPolicy::Pinned(vec![a.clone()]);
        assert!(policy.check("h", 80, &a).is_ok());
        let e = policy.check("h", 80, &b).unwrap_err().to_string();
        assert!(
            e.contains(&fingerprint(&a)) && e.contains(&fingerprint(&b)),
            "{e}"
        );
        assert!(e.contains("SHA256:"), "{e}");
    }

    #[test]
    fn known_hosts_match_host_and_port_forms() {
        let (a, b) = (key(), key());
        let text = format!(
            "# comment\n\n{}\n{}\n@cert-authority * {}\n",
            line("example.com,10.0.0.1", &a),
            line("[127.0.0.1]:2222", &b),
            a.to_openssh().unwrap()
        );
        let policy = HostKeyPolicy::KnownHosts(KnownHosts::parse(&text, "test"));
        assert!(policy.check("example.com", 22, &a).is_ok());
        assert!(policy.check("10.0.0.1", 22, &a).is_ok());
        assert!(policy.check("127.0.0.1", 2222, &b).is_ok());
        // Same host on another port is a different entry: unknown there.
        let e = policy.check("127.0.0.1", 2223, &b).unwrap_err();
        assert!(matches!(e, HostKeyError::Unknown { .. }), "{e}");
        assert!(e.to_string().contains(&fingerprint(&b)));
        // A known host presenting another key is a change, showing both keys.
        let e = policy.check("example.com", 22, &b).unwrap_err();
        assert!(matches!(e, HostKeyError::Changed { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains(&fingerprint(&a)) && msg.contains(&fingerprint(&b)),
            "{msg}"
        );
        assert_eq!(
            policy.algorithms_for("example.com", 22),
            vec![Algorithm::Ed25519]
        );
    }

    #[test]
    fn wildcards_negation_revocation_and_hashed_entries() {
        let (a, b) = (key(), key());
        // `ssh-keygen -H` format: |1|base64(salt)|base64(HMAC-SHA1(salt, host))
        let salt = [7u8; 20];
        let mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(&salt)
            .unwrap()
            .chain_update(b"[db.internal]:2200")
            .finalize()
            .into_bytes();
        let b64 = base64::engine::general_purpose::STANDARD;
        let hashed = format!("|1|{}|{}", b64.encode(salt), b64.encode(mac));
        let text = format!(
            "{}\n{}\n@revoked * {}\n",
            line("*.example.com,!bad.example.com", &a),
            line(&hashed, &a),
            b.to_openssh().unwrap()
        );
        let known = KnownHosts::parse(&text, "inline");
        let policy = HostKeyPolicy::KnownHosts(known);
        assert!(policy.check("x.example.com", 22, &a).is_ok());
        assert!(policy.check("bad.example.com", 22, &a).is_err());
        assert!(policy.check("db.internal", 2200, &a).is_ok());
        assert!(policy.check("db.internal", 22, &a).is_err());
        let e = policy.check("x.example.com", 22, &b).unwrap_err();
        assert!(matches!(e, HostKeyError::Revoked { .. }), "{e}");
    }

    #[test]
    fn public_key_lines_parse_with_or_without_a_host_field() {
        let a = key();
        let openssh = a.to_openssh().unwrap();
        assert_eq!(
            fingerprint(&parse_public_key_line(&openssh).unwrap()),
            fingerprint(&a)
        );
        let with_host = format!("[h]:22 {openssh}");
        assert_eq!(
            fingerprint(&parse_public_key_line(&with_host).unwrap()),
            fingerprint(&a)
        );
        assert!(parse_public_key_line("nonsense").is_err());
    }

    #[test]
    fn wildcard_matching() {
        assert!(wildcard("*", "anything"));
        assert!(wildcard("10.0.0.?", "10.0.0.7"));
        assert!(!wildcard("10.0.0.?", "10.0.0.17"));
        assert!(wildcard("[*]:2222", "[h]:2222"));
        assert!(wildcard("A*.com", "ab.com"));
    }
}

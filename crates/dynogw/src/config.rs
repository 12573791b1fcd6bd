//! The gateway's configuration: typed structs read from one TOML file, explicit defaults, and
//! validation before anything binds a socket.
//!
//! ```toml
//! listen = "127.0.0.1:8010"          # default
//! audit_db = "/var/lib/dynogw/audit.db"  # default: dynogw::default_audit_db()
//! client_tokens = ["dev-token"]      # at least one
//! offline_wait = "15s"               # default; also "500ms" or a number of seconds
//! user_id = "dev"                    # recorded as the session user (default "dev")
//! user_email = "dev@localhost"       # default
//!
//! [[agents]]
//! name = "dev"
//! secret_sha256 = "<sha256 hex of the agent secret>"   # or, for development, secret = "..."
//!
//! [[connections]]
//! name = "local"
//! agent = "dev"
//! command = ["bash"]
//! secrets = { "envvar:GREETING" = "hello", "filesystem:CERT" = "-----BEGIN..." }
//! ```
//!
//! Owns parsing and validation only; it does not read the environment and never prints secret
//! values (`Debug` redacts agent secrets and connection secret values).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Why a configuration was refused. Messages name keys, never secret values.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config TOML: {0}")]
    Toml(String),
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// The whole gateway configuration.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// gRPC listen address; port 0 picks a free port.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The SQLite audit database (created when missing).
    #[serde(default = "crate::default_audit_db")]
    pub audit_db: PathBuf,
    /// Bearer tokens accepted from clients (`dynoctl`, `hoop`).
    #[serde(default)]
    pub client_tokens: Vec<String>,
    /// Agents allowed to connect.
    #[serde(default)]
    pub agents: Vec<AgentDef>,
    /// Connections clients may open.
    #[serde(default)]
    pub connections: Vec<ConnectionDef>,
    /// How long a session open waits for an offline agent before `ClientSessionOpenAgentOffline`.
    #[serde(default = "default_offline_wait", with = "duration_text")]
    pub offline_wait: Duration,
    /// The user id sent to agents (`UserID`) and recorded in the audit.
    #[serde(default = "default_user_id")]
    pub user_id: String,
    /// The user email sent to agents (`UserEmail`).
    #[serde(default = "default_user_email")]
    pub user_email: String,
}

/// An agent allowed to connect.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentDef {
    /// Must equal the user part of the agent's DSN.
    pub name: String,
    /// sha256 hex of the agent's secret, as hoop stores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_sha256: Option<String>,
    /// The plain secret (development only; hashed when the gateway starts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// The mode stored with the agent, as hoop stores it: `standard` (default), `embedded` or
    /// `multi-connection`. The gateway applies this, never the mode in the agent's DSN; a
    /// `multi-connection` agent (hoop's organization key) is refused without a connection name.
    #[serde(default = "default_agent_mode")]
    pub mode: String,
}

/// A connection served by one agent.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionDef {
    pub name: String,
    /// The agent that serves it.
    pub agent: String,
    /// The command (`CmdList`); client arguments are appended by the agent.
    pub command: Vec<String>,
    /// `envvar:NAME` / `filesystem:NAME` to plain values; base64-encoded on the wire.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// The connection type hoop sends the agent after its mapping (`ToConnectionType`):
    /// `command-line` (default), `tcp`, `postgres`, `ssh`, `httpproxy`, ...
    #[serde(default, rename = "type", skip_serializing_if = "String::is_empty")]
    pub connection_type: String,
    /// Guardrail rules as hoop ships them (`GuardRailRules` JSON), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guardrail_rules: Option<String>,
    /// Data-masking rules (`DataMaskingEntityTypesData` JSON array), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_masking: Option<String>,
    /// Info types of the connection's `dlp` plugin (`DLPInfoTypes`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dlp_info_types: Vec<String>,
}

impl ConnectionDef {
    /// The type sent to agents and clients.
    pub fn connection_type(&self) -> &str {
        if self.connection_type.is_empty() {
            hoop_wire::spec::CONNECTION_TYPE_COMMAND_LINE
        } else {
            &self.connection_type
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8010))
}
fn default_offline_wait() -> Duration {
    Duration::from_secs(15)
}
fn default_user_id() -> String {
    "dev".into()
}
fn default_user_email() -> String {
    "dev@localhost".into()
}
fn default_agent_mode() -> String {
    "standard".into()
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: default_listen(),
            audit_db: crate::default_audit_db(),
            client_tokens: Vec::new(),
            agents: Vec::new(),
            connections: Vec::new(),
            offline_wait: default_offline_wait(),
            user_id: default_user_id(),
            user_email: default_user_email(),
        }
    }
}

impl GatewayConfig {
    /// Reads and validates a TOML file.
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<GatewayConfig, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        GatewayConfig::from_toml_str(&text)
    }

    /// Parses and validates TOML text.
    pub fn from_toml_str(text: &str) -> Result<GatewayConfig, ConfigError> {
        // toml's messages quote the offending line, which may hold a secret: keep only the
        // first line of the message (the key and position).
        let config: GatewayConfig = toml::from_str(text).map_err(|e| {
            let span = e
                .span()
                .map(|s| format!(" at bytes {}..{}", s.start, s.end))
                .unwrap_or_default();
            ConfigError::Toml(format!("{}{span}", e.message()))
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Serialises the config as TOML (for writing a demo file).
    pub fn to_toml_string(&self) -> Result<String, ConfigError> {
        toml::to_string(self).map_err(|e| ConfigError::Toml(e.to_string()))
    }

    /// Checks the invariants the gateway relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.client_tokens.is_empty() || self.client_tokens.iter().any(String::is_empty) {
            return bad("client_tokens must hold at least one non-empty token".into());
        }
        let mut agents = BTreeSet::new();
        for a in &self.agents {
            if a.name.is_empty() {
                return bad("an agent has an empty name".into());
            }
            if !agents.insert(a.name.as_str()) {
                return bad(format!("agent {:?} is defined twice", a.name));
            }
            a.resolved_hash().map_err(ConfigError::Invalid)?;
            if !matches!(
                a.mode.as_str(),
                "" | "standard" | "embedded" | "multi-connection"
            ) {
                return bad(format!(
                    "agent {:?}: mode must be standard, embedded or multi-connection",
                    a.name
                ));
            }
        }
        let mut names = BTreeSet::new();
        for c in &self.connections {
            if c.name.is_empty() {
                return bad("a connection has an empty name".into());
            }
            if !names.insert(c.name.as_str()) {
                return bad(format!("connection {:?} is defined twice", c.name));
            }
            if !agents.contains(c.agent.as_str()) {
                return bad(format!(
                    "connection {:?} names agent {:?}, which is not in [[agents]]",
                    c.name, c.agent
                ));
            }
            // A tcp connection relays to its HOST:PORT and runs no command.
            let needs_command = c.connection_type() != hoop_wire::spec::CONNECTION_TYPE_TCP;
            if (needs_command && c.command.is_empty()) || c.command.iter().any(String::is_empty) {
                return bad(format!(
                    "connection {:?} needs a non-empty command list",
                    c.name
                ));
            }
            for key in c.secrets.keys() {
                let name = key
                    .strip_prefix("envvar:")
                    .or_else(|| key.strip_prefix("filesystem:"));
                if name.is_none_or(str::is_empty) {
                    return bad(format!(
                        "connection {:?}: secret key {key:?} must be envvar:NAME or filesystem:NAME",
                        c.name
                    ));
                }
            }
        }
        if self.offline_wait > Duration::from_secs(3600) {
            return bad("offline_wait must be at most one hour".into());
        }
        Ok(())
    }

    /// The connection named `name`.
    pub fn connection(&self, name: &str) -> Option<&ConnectionDef> {
        self.connections.iter().find(|c| c.name == name)
    }
}

impl AgentDef {
    /// The stored hash: `secret_sha256`, or the hash of `secret`; both must agree if given.
    pub fn resolved_hash(&self) -> Result<String, String> {
        let from_secret = self.secret.as_deref().map(crate::hash_secret);
        let given = self
            .secret_sha256
            .as_deref()
            .map(|h| h.trim().to_ascii_lowercase());
        if let Some(h) = &given
            && (h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(format!(
                "agent {:?}: secret_sha256 must be 64 hex characters",
                self.name
            ));
        }
        match (given, from_secret) {
            (Some(h), Some(s)) if h != s => Err(format!(
                "agent {:?}: secret and secret_sha256 disagree",
                self.name
            )),
            (Some(h), _) | (None, Some(h)) => Ok(h),
            (None, None) => Err(format!(
                "agent {:?} needs secret_sha256 (or secret)",
                self.name
            )),
        }
    }
}

impl fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("listen", &self.listen)
            .field("audit_db", &self.audit_db)
            .field(
                "client_tokens",
                &format!("<{} redacted>", self.client_tokens.len()),
            )
            .field("agents", &self.agents)
            .field("connections", &self.connections)
            .field("offline_wait", &self.offline_wait)
            .field("user_id", &self.user_id)
            .finish()
    }
}

impl fmt::Debug for AgentDef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentDef")
            .field("name", &self.name)
            .field("secret_sha256", &self.secret_sha256)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("mode", &self.mode)
            .finish()
    }
}

impl fmt::Debug for ConnectionDef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionDef")
            .field("name", &self.name)
            .field("agent", &self.agent)
            .field("command", &self.command)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .field("type", &self.connection_type())
            .field("guardrail_rules", &self.guardrail_rules.is_some())
            .field("data_masking", &self.data_masking.is_some())
            .field("dlp_info_types", &self.dlp_info_types)
            .finish()
    }
}

/// Durations as text (`"15s"`, `"500ms"`) or a number of seconds.
mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", d.as_millis()))
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(u64),
        Float(f64),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = |f: f64| {
            Duration::try_from_secs_f64(f).map_err(|_| D::Error::custom("invalid duration"))
        };
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Duration::from_secs(n)),
            Raw::Float(f) => secs(f),
            Raw::Text(t) => {
                let t = t.trim();
                let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
                    (n, 0.001)
                } else if let Some(n) = t.strip_suffix('s') {
                    (n, 1.0)
                } else {
                    (t, 1.0)
                };
                let n: f64 = num.trim().parse().map_err(|_| {
                    D::Error::custom("duration must look like \"15s\" or \"500ms\"")
                })?;
                secs(n * scale)
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
client_tokens = ["t"]
offline_wait = "250ms"

[[agents]]
name = "dev"
secret = "xagt-abc"

[[connections]]
name = "local"
agent = "dev"
command = ["bash"]
secrets = { "envvar:GREETING" = "s3cr3t-value" }
"#;

    #[test]
    fn parses_the_documented_format_with_defaults() {
        let c = GatewayConfig::from_toml_str(SAMPLE).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8010");
        assert_eq!(c.offline_wait, Duration::from_millis(250));
        assert_eq!(
            c.agents[0].resolved_hash().unwrap(),
            crate::hash_secret("xagt-abc")
        );
        assert_eq!(c.connection("local").unwrap().command, vec!["bash"]);
        let debug = format!("{c:?}");
        assert!(!debug.contains("s3cr3t") && !debug.contains("xagt-abc"));
        // Round trip through the writer.
        let again = GatewayConfig::from_toml_str(&c.to_toml_string().unwrap()).unwrap();
        assert_eq!(again.offline_wait, c.offline_wait);
    }

    #[test]
    fn refuses_bad_configs_without_echoing_secrets() {
        let cases = [
            SAMPLE.replace("client_tokens = [\"t\"]", ""),
            SAMPLE.replace("agent = \"dev\"", "agent = \"nobody\""),
            SAMPLE.replace("envvar:GREETING", "GREETING"),
            SAMPLE.replace("command = [\"bash\"]", "command = []"),
            SAMPLE.replace("secret = \"xagt-abc\"", ""),
            SAMPLE.replace("offline_wait = \"250ms\"", "offline_wait = \"soon\""),
            SAMPLE.replace("s3cr3t-value\" }", "s3cr3t-value\" "),
        ];
        for text in cases {
            let e = GatewayConfig::from_toml_str(&text).unwrap_err().to_string();
            assert!(!e.contains("s3cr3t"), "{e}");
        }
        assert!(GatewayConfig::from_toml_str("offline_wait = 3\nclient_tokens=[\"x\"]").is_ok());
    }
}

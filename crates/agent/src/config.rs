//! The agent's configuration, read once at start through the `config` crate from the
//! environment (hoop's variable names) and an optional TOML file (`DYNOAGENT_CONFIG`).
//!
//! Everything is validated here, before anything dials: a missing or malformed `HOOP_KEY`
//! becomes a one-line [`ConfigError`] naming the variable. Error messages never contain the
//! DSN or its secret.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use gateway_link::{Dsn, LinkConfig, TlsOptions};
use serde::Deserialize;

/// Default cap on concurrent sessions.
pub const DEFAULT_MAX_SESSIONS: usize = 256;

/// How logs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogEncoding {
    /// `key=value` lines (Heroku's log drains parse them). The default.
    Logfmt,
    /// One JSON object per line (`LOG_ENCODING=json`).
    Json,
    /// Human-oriented text (`LOG_ENCODING=human`, `console` or `verbose`).
    Human,
}

/// Logging settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// A tracing filter directive, e.g. `info` or `debug`.
    pub level: String,
    pub encoding: LogEncoding,
}

/// The agent's validated configuration.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub link: LinkConfig,
    pub log: LogConfig,
    /// Sessions served at once; one more is refused with 254.
    pub max_sessions: usize,
    /// SIGTERM-to-SIGKILL grace for a closed session's processes.
    pub kill_grace: Duration,
    /// Upper bound for a graceful shutdown (Heroku sends SIGKILL 30 s after SIGTERM).
    pub shutdown_timeout: Duration,
    /// Where `filesystem:` secrets are written (mode 0600, removed after each session).
    pub env_file_dir: PathBuf,
    /// Where the Heroku backends send their requests.
    pub heroku: HerokuSettings,
    /// Run sessions whose connection has guardrail rules or data masking configured, which
    /// this agent does not enforce (`DYNOAGENT_ALLOW_UNENFORCED_POLICIES`; default `false`:
    /// such sessions are refused). Every session it lets through logs a WARN.
    pub allow_unenforced_policies: bool,
    /// Per-session bounds: input memory and deadlines.
    pub limits: SessionLimits,
}

/// Bounds on every session (docs/operations.md, "Session limits").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionLimits {
    /// Client input one session may hold that its process has not consumed yet
    /// (`DYNOAGENT_SESSION_INPUT_MIB`, default 8). A single larger packet (up to hoop's 17 MiB
    /// limit) counts as the whole budget.
    pub session_input_bytes: usize,
    /// The same, for all sessions together (`DYNOAGENT_INPUT_BUDGET_MIB`, default 64).
    pub agent_input_bytes: usize,
    /// How long a session may wait for its first input after `ClientSessionOpenOK`
    /// (`DYNOAGENT_FIRST_INPUT_TIMEOUT_SECS`, default 60).
    pub first_input_timeout: Duration,
    /// End a session after this long without input or output
    /// (`DYNOAGENT_SESSION_IDLE_TIMEOUT_SECS`; unset or 0: never).
    pub idle_timeout: Option<Duration>,
    /// End a session this long after it opened (`DYNOAGENT_SESSION_MAX_LIFETIME_SECS`; unset
    /// or 0: never).
    pub max_lifetime: Option<Duration>,
    /// After a session is closed, how long its backend may take to stop before the session
    /// task is aborted and an ERROR logged (15 s; inside Heroku's 30 s shutdown window).
    pub cancel_deadline: Duration,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            session_input_bytes: 8 << 20,
            agent_input_bytes: 64 << 20,
            first_input_timeout: Duration::from_secs(60),
            idle_timeout: None,
            max_lifetime: None,
            cancel_deadline: Duration::from_secs(15),
        }
    }
}

/// Heroku endpoints. Real Heroku by default; `herokusim` (tests, `dynoagent dev`) overrides.
#[derive(Clone, Debug)]
pub struct HerokuSettings {
    /// Platform API base URL (`DYNOAGENT_HEROKU_API_URL`).
    pub api_url: url::Url,
    /// Exec-manager base URL (`DYNOAGENT_HEROKU_EXEC_URL`).
    pub exec_url: url::Url,
    /// Extra trusted CA for the API, rendezvous and exec-manager (`DYNOAGENT_HEROKU_CA`: PEM,
    /// `base64://` or `file://`).
    pub ca_pem: Option<Vec<u8>>,
    /// The Heroku Exec SSH proxy's port (`DYNOAGENT_HEROKU_EXEC_SSH_PORT`; Heroku: 80).
    pub exec_ssh_port: u16,
}

fn parse_url(
    var: &'static str,
    value: Option<&str>,
    default: &str,
) -> Result<url::Url, ConfigError> {
    let raw = value
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .unwrap_or(default);
    let url = url::Url::parse(raw).map_err(|e| ConfigError::Invalid {
        var,
        reason: format!("{raw:?} is not a URL: {e}"),
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ConfigError::Invalid {
            var,
            reason: format!("{raw:?} must be an http or https URL"),
        });
    }
    // Plain HTTP would send the API key in clear text: only the emulator on loopback may.
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    if url.scheme() == "http" && !loopback {
        return Err(ConfigError::Invalid {
            var,
            reason: format!(
                "{raw:?} is plain http on a non-loopback host, which would send the Heroku API key unencrypted; use https (http is allowed only for 127.0.0.1, ::1 or localhost)"
            ),
        });
    }
    Ok(url)
}

/// A configuration-source error in words that never quote a value: the TOML parser's message
/// shows the offending line (which may hold `HOOP_KEY`), and serde's type errors show the value.
fn describe_source_error(e: &config::ConfigError) -> String {
    match e {
        config::ConfigError::FileParse { uri, cause } => {
            // toml's first line is "TOML parse error at line L, column C"; the rest quotes
            // the line.
            let text = cause.to_string();
            let position = text
                .lines()
                .next()
                .filter(|l| l.starts_with("TOML parse error at line"))
                .unwrap_or("TOML syntax error");
            format!(
                "DYNOAGENT_CONFIG {} is not valid TOML: {position} (the line is not shown, it may hold a secret); fix that line",
                uri.as_deref().unwrap_or("file")
            )
        }
        config::ConfigError::Type { key, expected, .. } => format!(
            "{} has the wrong type (expected {expected}); write every value as a quoted string",
            key.as_deref().unwrap_or("a setting")
        ),
        config::ConfigError::At { error, key, .. } => match key {
            Some(key) => format!("{key}: {}", describe_source_error(error)),
            None => describe_source_error(error),
        },
        config::ConfigError::NotFound(key) => format!("{key} not found"),
        config::ConfigError::Foreign(cause) => {
            // File access errors ("configuration file … not found").
            cause.to_string().lines().next().unwrap_or("").to_owned()
        }
        // Serde's custom messages and the rest may carry values: name the failure only.
        _ => "the configuration could not be read (a value has the wrong form); check DYNOAGENT_CONFIG and the HOOP_*/DYNOAGENT_* variables".to_owned(),
    }
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "HOOP_KEY is not set: give the agent's DSN (scheme://name:secret@host:port?mode=standard)"
    )]
    MissingKey,
    #[error(
        "{var} is hoop's organization key (mode=multi-connection), usable only with \"hoop run\"; create a standard agent key (\"hoop admin create agent <name>\" or the web UI) and set it as {var}"
    )]
    OrgKey { var: &'static str },
    #[error(
        "{var} is an embedded-mode key (PreConnect on demand), which this agent does not support; create a standard agent key (\"hoop admin create agent <name>\" or the web UI) and set it as {var}"
    )]
    EmbeddedKey { var: &'static str },
    #[error("{var} is malformed: the DSN {reason}")]
    BadKey {
        var: &'static str,
        reason: gateway_link::DsnError,
    },
    #[error("{var} is invalid: {reason}")]
    Invalid { var: &'static str, reason: String },
    #[error("cannot read the configuration: {0}")]
    Source(String),
    #[error(transparent)]
    Tls(#[from] gateway_link::TlsError),
}

/// Raw values as `config` delivers them: environment variable names, lower-cased.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Raw {
    hoop_key: Option<String>,
    hoop_dsn: Option<String>,
    hoop_tlsca: Option<String>,
    hoop_tlsservername: Option<String>,
    hoop_tls_skip_verify: Option<String>,
    log_level: Option<String>,
    log_encoding: Option<String>,
    dynoagent_max_sessions: Option<String>,
    dynoagent_kill_grace_secs: Option<String>,
    dynoagent_shutdown_timeout_secs: Option<String>,
    dynoagent_env_dir: Option<String>,
    dynoagent_heroku_api_url: Option<String>,
    dynoagent_heroku_exec_url: Option<String>,
    dynoagent_heroku_ca: Option<String>,
    dynoagent_heroku_exec_ssh_port: Option<String>,
    dynoagent_allow_unenforced_policies: Option<String>,
    dynoagent_session_input_mib: Option<String>,
    dynoagent_input_budget_mib: Option<String>,
    dynoagent_first_input_timeout_secs: Option<String>,
    dynoagent_session_idle_timeout_secs: Option<String>,
    dynoagent_session_max_lifetime_secs: Option<String>,
    dynoagent_gateway_ping_secs: Option<String>,
    dynoagent_gateway_ping_timeout_secs: Option<String>,
    dynoagent_gateway_tcp_user_timeout_secs: Option<String>,
}

fn parse_bool(var: &'static str, value: Option<&str>) -> Result<bool, ConfigError> {
    match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        None | Some("") | Some("false") | Some("0") | Some("no") => Ok(false),
        Some("true") | Some("1") | Some("yes") => Ok(true),
        Some(other) => Err(ConfigError::Invalid {
            var,
            reason: format!("{other:?} is not a boolean (use true or false)"),
        }),
    }
}

fn parse_num<T: std::str::FromStr>(
    var: &'static str,
    value: Option<&str>,
    default: T,
) -> Result<T, ConfigError> {
    match value.map(str::trim) {
        None | Some("") => Ok(default),
        Some(v) => v.parse().map_err(|_| ConfigError::Invalid {
            var,
            reason: format!("{v:?} is not a number"),
        }),
    }
}

/// The gateway link's dead-peer detection (`gateway_link::Liveness`; docs/operations.md,
/// "Gateway link liveness"). `0` turns the PING or the TCP user timeout off.
fn parse_liveness(raw: &Raw) -> Result<gateway_link::Liveness, ConfigError> {
    let defaults = gateway_link::Liveness::default();
    let secs = |var: &'static str, value: Option<&str>, default: Option<Duration>| {
        let n: u64 = parse_num(var, value, default.map_or(0, |d| d.as_secs()))?;
        Ok::<_, ConfigError>((n > 0).then(|| Duration::from_secs(n)))
    };
    let ping_interval = secs(
        "DYNOAGENT_GATEWAY_PING_SECS",
        raw.dynoagent_gateway_ping_secs.as_deref(),
        defaults.ping_interval,
    )?;
    let ping_timeout = secs(
        "DYNOAGENT_GATEWAY_PING_TIMEOUT_SECS",
        raw.dynoagent_gateway_ping_timeout_secs.as_deref(),
        Some(defaults.ping_timeout),
    )?
    .ok_or(ConfigError::Invalid {
        var: "DYNOAGENT_GATEWAY_PING_TIMEOUT_SECS",
        reason: "must be at least 1".into(),
    })?;
    let tcp_user_timeout = secs(
        "DYNOAGENT_GATEWAY_TCP_USER_TIMEOUT_SECS",
        raw.dynoagent_gateway_tcp_user_timeout_secs.as_deref(),
        defaults.tcp_user_timeout,
    )?;
    Ok(gateway_link::Liveness {
        ping_interval,
        ping_timeout,
        tcp_user_timeout,
    })
}

fn parse_limits(raw: &Raw) -> Result<SessionLimits, ConfigError> {
    let defaults = SessionLimits::default();
    let mib = |var: &'static str, value: Option<&str>, default: usize| {
        let n: usize = parse_num(var, value, default >> 20)?;
        if n == 0 || n > 4096 {
            return Err(ConfigError::Invalid {
                var,
                reason: format!("{n} MiB is out of range (1 to 4096)"),
            });
        }
        Ok(n << 20)
    };
    let optional_secs = |var: &'static str, value: Option<&str>| {
        let secs: u64 = parse_num(var, value, 0)?;
        Ok::<_, ConfigError>((secs > 0).then(|| Duration::from_secs(secs)))
    };
    let first_input_secs: u64 = parse_num(
        "DYNOAGENT_FIRST_INPUT_TIMEOUT_SECS",
        raw.dynoagent_first_input_timeout_secs.as_deref(),
        defaults.first_input_timeout.as_secs(),
    )?;
    if first_input_secs == 0 {
        return Err(ConfigError::Invalid {
            var: "DYNOAGENT_FIRST_INPUT_TIMEOUT_SECS",
            reason: "must be at least 1".into(),
        });
    }
    Ok(SessionLimits {
        session_input_bytes: mib(
            "DYNOAGENT_SESSION_INPUT_MIB",
            raw.dynoagent_session_input_mib.as_deref(),
            defaults.session_input_bytes,
        )?,
        agent_input_bytes: mib(
            "DYNOAGENT_INPUT_BUDGET_MIB",
            raw.dynoagent_input_budget_mib.as_deref(),
            defaults.agent_input_bytes,
        )?,
        first_input_timeout: Duration::from_secs(first_input_secs),
        idle_timeout: optional_secs(
            "DYNOAGENT_SESSION_IDLE_TIMEOUT_SECS",
            raw.dynoagent_session_idle_timeout_secs.as_deref(),
        )?,
        max_lifetime: optional_secs(
            "DYNOAGENT_SESSION_MAX_LIFETIME_SECS",
            raw.dynoagent_session_max_lifetime_secs.as_deref(),
        )?,
        cancel_deadline: defaults.cancel_deadline,
    })
}

fn parse_log(raw: &Raw) -> Result<LogConfig, ConfigError> {
    let level = match raw
        .log_level
        .as_deref()
        .map(|l| l.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("") | Some("info") => "info",
        Some("debug") => "debug",
        Some("trace") => "trace",
        Some("warn") | Some("warning") => "warn",
        Some("error") => "error",
        Some(other) => {
            return Err(ConfigError::Invalid {
                var: "LOG_LEVEL",
                reason: format!("{other:?} is not one of trace, debug, info, warn, error"),
            });
        }
    };
    let encoding = match raw
        .log_encoding
        .as_deref()
        .map(|l| l.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("") | Some("logfmt") => LogEncoding::Logfmt,
        Some("json") => LogEncoding::Json,
        Some("human") | Some("console") | Some("verbose") => LogEncoding::Human,
        Some(other) => {
            return Err(ConfigError::Invalid {
                var: "LOG_ENCODING",
                reason: format!("{other:?} is not one of logfmt, json, human"),
            });
        }
    };
    Ok(LogConfig {
        level: level.to_owned(),
        encoding,
    })
}

impl AgentConfig {
    /// What an operator must know about how the gateway link is protected, one WARN line each:
    /// plaintext to a non-loopback gateway (the DSN secret and every session travel in clear
    /// text), certificate verification turned off.
    pub fn transport_warnings(&self) -> Vec<&'static str> {
        let mut warnings = Vec::new();
        let host = self.link.dsn.host();
        let loopback = host.eq_ignore_ascii_case("localhost")
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !self.link.dsn.tls() && !loopback {
            warnings.push("the gateway link is plaintext (HOOP_KEY is not grpcs://) to a non-loopback host: the agent's key and every session travel unencrypted; use a grpcs:// DSN");
        }
        if self.link.dsn.tls() && self.link.tls.skip_verify {
            warnings.push("HOOP_TLS_SKIP_VERIFY=true: the gateway's certificate is not verified, so anyone on the path can impersonate it and receive the agent's key; unset it and use HOOP_TLSCA for a private CA");
        }
        warnings
    }

    /// Reads the configuration from this process's environment and, when `DYNOAGENT_CONFIG`
    /// names one, a TOML file whose keys are the variable names in lower case.
    pub fn from_process_env(version: &str) -> Result<AgentConfig, ConfigError> {
        let env: HashMap<String, String> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        AgentConfig::from_sources(&env, version)
    }

    /// Reads the configuration from the given variables (a swappable source for tests).
    pub fn from_sources(
        env: &HashMap<String, String>,
        version: &str,
    ) -> Result<AgentConfig, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = env.get("DYNOAGENT_CONFIG").filter(|p| !p.is_empty()) {
            builder = builder
                .add_source(config::File::new(path, config::FileFormat::Toml).required(true));
        }
        let env_source = config::Environment::default().source(Some(
            env.iter()
                .filter(|(k, _)| {
                    k.starts_with("HOOP_") || k.starts_with("LOG_") || k.starts_with("DYNOAGENT_")
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ));
        let raw: Raw = builder
            .add_source(env_source)
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(|e| ConfigError::Source(describe_source_error(&e)))?;
        AgentConfig::validate(raw, version)
    }

    fn validate(raw: Raw, version: &str) -> Result<AgentConfig, ConfigError> {
        let (var, value) = match (raw.hoop_key.as_deref(), raw.hoop_dsn.as_deref()) {
            (Some(k), _) if !k.trim().is_empty() => ("HOOP_KEY", k),
            (_, Some(d)) if !d.trim().is_empty() => ("HOOP_DSN", d),
            _ => return Err(ConfigError::MissingKey),
        };
        let dsn = Dsn::parse(value).map_err(|reason| ConfigError::BadKey { var, reason })?;
        match dsn.mode() {
            gateway_link::Mode::Standard => {}
            gateway_link::Mode::MultiConnection => return Err(ConfigError::OrgKey { var }),
            gateway_link::Mode::Embedded => return Err(ConfigError::EmbeddedKey { var }),
        }
        let tls = TlsOptions {
            ca_pem: raw
                .hoop_tlsca
                .as_deref()
                .filter(|v| !v.trim().is_empty())
                .map(gateway_link::load_ca)
                .transpose()?,
            server_name: raw
                .hoop_tlsservername
                .clone()
                .filter(|v| !v.trim().is_empty()),
            skip_verify: parse_bool("HOOP_TLS_SKIP_VERIFY", raw.hoop_tls_skip_verify.as_deref())?,
        };
        let max_sessions = parse_num(
            "DYNOAGENT_MAX_SESSIONS",
            raw.dynoagent_max_sessions.as_deref(),
            DEFAULT_MAX_SESSIONS,
        )?;
        if max_sessions == 0 {
            return Err(ConfigError::Invalid {
                var: "DYNOAGENT_MAX_SESSIONS",
                reason: "must be at least 1".into(),
            });
        }
        let kill_grace = Duration::from_secs(parse_num(
            "DYNOAGENT_KILL_GRACE_SECS",
            raw.dynoagent_kill_grace_secs.as_deref(),
            5,
        )?);
        let shutdown_timeout = Duration::from_secs(parse_num(
            "DYNOAGENT_SHUTDOWN_TIMEOUT_SECS",
            raw.dynoagent_shutdown_timeout_secs.as_deref(),
            25,
        )?);
        let log = parse_log(&raw)?;
        let limits = parse_limits(&raw)?;
        let liveness = parse_liveness(&raw)?;
        let env_file_dir = raw
            .dynoagent_env_dir
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                std::env::temp_dir().join(format!("dynoagent-{}", std::process::id()))
            });
        let heroku = HerokuSettings {
            api_url: parse_url(
                "DYNOAGENT_HEROKU_API_URL",
                raw.dynoagent_heroku_api_url.as_deref(),
                heroku_api::DEFAULT_API_URL,
            )?,
            exec_url: parse_url(
                "DYNOAGENT_HEROKU_EXEC_URL",
                raw.dynoagent_heroku_exec_url.as_deref(),
                heroku_api::DEFAULT_EXEC_URL,
            )?,
            ca_pem: raw
                .dynoagent_heroku_ca
                .as_deref()
                .filter(|v| !v.trim().is_empty())
                .map(|v| {
                    gateway_link::load_ca(v).map_err(|e| ConfigError::Invalid {
                        var: "DYNOAGENT_HEROKU_CA",
                        reason: e.to_string(),
                    })
                })
                .transpose()?,
            exec_ssh_port: parse_num(
                "DYNOAGENT_HEROKU_EXEC_SSH_PORT",
                raw.dynoagent_heroku_exec_ssh_port.as_deref(),
                80,
            )?,
        };
        let allow_unenforced_policies = parse_bool(
            "DYNOAGENT_ALLOW_UNENFORCED_POLICIES",
            raw.dynoagent_allow_unenforced_policies.as_deref(),
        )?;
        Ok(AgentConfig {
            allow_unenforced_policies,
            heroku,
            limits,
            link: LinkConfig {
                liveness,
                ..LinkConfig::new(dsn, tls, version)
            },
            log,
            max_sessions,
            kill_grace,
            shutdown_timeout,
            env_file_dir,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn gateway_liveness_is_configurable_and_zero_turns_a_mechanism_off() {
        let key = ("HOOP_KEY", "grpc://a1:sekrit@127.0.0.1:8010?mode=standard");
        let c = AgentConfig::from_sources(&env(&[key]), "0").unwrap();
        assert_eq!(c.link.liveness, gateway_link::Liveness::default());
        let c = AgentConfig::from_sources(
            &env(&[
                key,
                ("DYNOAGENT_GATEWAY_PING_SECS", "0"),
                ("DYNOAGENT_GATEWAY_PING_TIMEOUT_SECS", "3"),
                ("DYNOAGENT_GATEWAY_TCP_USER_TIMEOUT_SECS", "0"),
            ]),
            "0",
        )
        .unwrap();
        assert_eq!(
            c.link.liveness,
            gateway_link::Liveness {
                ping_interval: None,
                ping_timeout: Duration::from_secs(3),
                tcp_user_timeout: None,
            }
        );
        let err = AgentConfig::from_sources(
            &env(&[key, ("DYNOAGENT_GATEWAY_PING_TIMEOUT_SECS", "0")]),
            "0",
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("DYNOAGENT_GATEWAY_PING_TIMEOUT_SECS is invalid"),
            "{err}"
        );
    }

    #[test]
    fn reads_hoop_variables() {
        let c = AgentConfig::from_sources(
            &env(&[
                ("HOOP_KEY", "grpc://a1:sekrit@127.0.0.1:8010?mode=standard"),
                ("LOG_LEVEL", "debug"),
                ("LOG_ENCODING", "json"),
                ("DYNOAGENT_MAX_SESSIONS", "3"),
                ("UNRELATED", "x"),
            ]),
            "0.1.0",
        )
        .unwrap();
        assert_eq!(c.link.dsn.agent_name(), "a1");
        assert_eq!(
            c.log,
            LogConfig {
                level: "debug".into(),
                encoding: LogEncoding::Json
            }
        );
        assert_eq!(c.max_sessions, 3);
        assert_eq!(c.limits, SessionLimits::default());
        assert!(
            !format!("{c:?}").contains("sekrit"),
            "Debug must not print the secret"
        );
    }

    #[test]
    fn organization_and_embedded_keys_are_refused_in_one_line_naming_the_variable() {
        for (var, dsn, want) in [
            (
                "HOOP_KEY",
                "grpc://_default:hunter2@gw:8010?mode=multi-connection",
                "HOOP_KEY is hoop's organization key",
            ),
            (
                "HOOP_DSN",
                "grpcs://a:hunter2@gw:8443?mode=multi-connection",
                "HOOP_DSN is hoop's organization key",
            ),
            (
                "HOOP_KEY",
                "grpc://a:hunter2@gw:8010?mode=embedded",
                "HOOP_KEY is an embedded-mode key",
            ),
        ] {
            let e = AgentConfig::from_sources(&env(&[(var, dsn)]), "0")
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(want), "{e}");
            assert!(e.contains("create a standard agent key"), "{e}");
            assert!(e.ends_with(&format!("set it as {var}")), "{e}");
            assert!(!e.contains("hunter2") && !e.contains('\n'), "{e}");
        }
        // The organization key without `mode` is only a hint: it starts (and warns).
        let c = AgentConfig::from_sources(&env(&[("HOOP_KEY", "grpc://_default:s@gw:1")]), "0")
            .unwrap();
        assert!(c.link.dsn.looks_like_org_key());
        assert!(!c.allow_unenforced_policies);
    }

    #[test]
    fn session_limits_are_read_and_checked() {
        let key = ("HOOP_KEY", "grpc://a1:s@127.0.0.1:8010");
        let c = AgentConfig::from_sources(
            &env(&[
                key,
                ("DYNOAGENT_SESSION_INPUT_MIB", "2"),
                ("DYNOAGENT_INPUT_BUDGET_MIB", "32"),
                ("DYNOAGENT_FIRST_INPUT_TIMEOUT_SECS", "5"),
                ("DYNOAGENT_SESSION_IDLE_TIMEOUT_SECS", "600"),
                ("DYNOAGENT_SESSION_MAX_LIFETIME_SECS", "0"),
            ]),
            "0",
        )
        .unwrap();
        assert_eq!(
            c.limits,
            SessionLimits {
                session_input_bytes: 2 << 20,
                agent_input_bytes: 32 << 20,
                first_input_timeout: Duration::from_secs(5),
                idle_timeout: Some(Duration::from_secs(600)),
                max_lifetime: None,
                ..SessionLimits::default()
            }
        );
        for bad in [
            ("DYNOAGENT_SESSION_INPUT_MIB", "0"),
            ("DYNOAGENT_INPUT_BUDGET_MIB", "lots"),
            ("DYNOAGENT_FIRST_INPUT_TIMEOUT_SECS", "0"),
        ] {
            let e = AgentConfig::from_sources(&env(&[key, bad]), "0")
                .unwrap_err()
                .to_string();
            assert!(e.contains(bad.0), "{e}");
        }
    }

    #[test]
    fn hoop_dsn_is_an_alias() {
        let c =
            AgentConfig::from_sources(&env(&[("HOOP_DSN", "grpcs://a2:s@gw:8443")]), "0").unwrap();
        assert!(c.link.dsn.tls());
    }

    #[test]
    fn missing_or_malformed_keys_name_the_variable() {
        let e = AgentConfig::from_sources(&env(&[]), "0")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("HOOP_KEY is not set"), "{e}");
        let e = AgentConfig::from_sources(&env(&[("HOOP_KEY", "grpc://name@h:1")]), "0")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("HOOP_KEY is malformed"), "{e}");
        let e = AgentConfig::from_sources(
            &env(&[
                ("HOOP_KEY", "grpc://n:hunter2@h:1"),
                ("HOOP_TLS_SKIP_VERIFY", "maybe"),
            ]),
            "0",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("HOOP_TLS_SKIP_VERIFY") && !e.contains("hunter2"),
            "{e}"
        );
        assert!(!e.contains('\n'));
    }

    #[test]
    fn a_malformed_toml_file_is_reported_without_its_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        for text in [
            "hoop_key = \"grpc://f:hunter2-toml@127.0.0.1:9\ndynoagent_max_sessions = \"7\"\n",
            "hoop_key = grpc://f:hunter2-toml@127.0.0.1:9\n",
            "hoop_key = [\"grpc://f:hunter2-toml@127.0.0.1:9\"]\n",
            "hoop_key = { x = \"hunter2-toml\" }\n",
        ] {
            std::fs::write(&path, text).unwrap();
            let e = AgentConfig::from_sources(
                &env(&[("DYNOAGENT_CONFIG", path.to_str().unwrap())]),
                "0",
            )
            .unwrap_err()
            .to_string();
            assert!(!e.contains("hunter2"), "{text}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn plain_http_for_the_heroku_api_only_on_loopback() {
        let base = [("HOOP_KEY", "grpc://f:s@127.0.0.1:9")];
        for (url, ok) in [
            ("http://127.0.0.1:5000", true),
            ("http://[::1]:5000", true),
            ("http://localhost:5000", true),
            ("https://api.example.com", true),
            ("http://api.example.com", false),
            ("http://10.0.0.1:5000", false),
        ] {
            let mut vars = base.to_vec();
            vars.push(("DYNOAGENT_HEROKU_API_URL", url));
            let r = AgentConfig::from_sources(&env(&vars), "0");
            assert_eq!(r.is_ok(), ok, "{url}: {:?}", r.err());
            let mut vars = base.to_vec();
            vars.push(("DYNOAGENT_HEROKU_EXEC_URL", url));
            assert_eq!(
                AgentConfig::from_sources(&env(&vars), "0").is_ok(),
                ok,
                "{url}"
            );
        }
    }

    #[test]
    fn warns_about_plaintext_and_unverified_gateway_links() {
        let warnings = |pairs: &[(&str, &str)]| {
            AgentConfig::from_sources(&env(pairs), "0")
                .unwrap()
                .transport_warnings()
        };
        assert!(warnings(&[("HOOP_KEY", "grpc://f:s@127.0.0.1:9")]).is_empty());
        assert!(warnings(&[("HOOP_KEY", "grpc://f:s@localhost:9")]).is_empty());
        assert!(warnings(&[("HOOP_KEY", "grpcs://f:s@gw.example.com:443")]).is_empty());
        let w = warnings(&[("HOOP_KEY", "grpc://f:s@gw.example.com:8010")]);
        assert!(w.len() == 1 && w[0].contains("plaintext"), "{w:?}");
        let w = warnings(&[
            ("HOOP_KEY", "grpcs://f:s@gw.example.com:443"),
            ("HOOP_TLS_SKIP_VERIFY", "true"),
        ]);
        assert!(w.len() == 1 && w[0].contains("not verified"), "{w:?}");
    }

    #[test]
    fn reads_an_optional_toml_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            "hoop_key = \"grpc://f:s@127.0.0.1:9\"\ndynoagent_max_sessions = \"7\"\n",
        )
        .unwrap();
        let c =
            AgentConfig::from_sources(&env(&[("DYNOAGENT_CONFIG", path.to_str().unwrap())]), "0")
                .unwrap();
        assert_eq!(c.link.dsn.agent_name(), "f");
        assert_eq!(c.max_sessions, 7);
    }
}

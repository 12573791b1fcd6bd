//! The emulator's configuration: listeners, the API key, timings, rate-limit pool, faults and the
//! apps with their formation, read from a TOML file or built in code ([`SimConfig::demo`]).
//!
//! It owns parsing and validation only; it starts nothing. Every field has an explicit default,
//! so a config file only names what differs from the demo-like defaults.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::SimError;
use crate::faults::Faults;

/// The API key `--demo` (and [`SimConfig::demo`]) accepts. Fixed so scripts can hard-code it.
pub const DEMO_API_KEY: &str = "herokusim-demo-key";

/// Everything [`crate::Sim::start`] needs. `Debug` redacts the API key.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// The only accepted API key: `Authorization: Bearer <key>` on the Platform API and the
    /// Basic password on the exec-manager.
    pub api_key: String,
    /// Platform API port on 127.0.0.1 (plain HTTP); 0 picks a free port.
    pub api_port: u16,
    /// Exec-manager port on 127.0.0.1 (HTTPS); 0 picks a free port.
    pub exec_port: u16,
    /// Rendezvous port on 127.0.0.1 (TLS); 0 picks a free port.
    pub rendezvous_port: u16,
    /// SSH proxy port on 127.0.0.1. `None`: 80 when running as root (the real CLI hard-codes
    /// port 80), otherwise a free port. `Some(0)`: a free port.
    pub ssh_port: Option<u16>,
    /// Where the CA certificate (`ca.pem`) and the apps' home directories are written.
    /// `None`: a fresh temporary directory, removed when the emulator stops.
    pub state_dir: Option<PathBuf>,
    /// The account's email in `GET /account`.
    pub account_email: String,
    /// Size of the rate-limit token pool (Heroku documents 2400 and 4500 over time).
    pub rate_limit_pool: u32,
    /// Tokens refilled per minute.
    pub rate_limit_refill_per_minute: u32,
    /// Pause after the rendezvous ack before any output, in milliseconds. The Node CLI
    /// discards its whole first `data` event, so the ack must arrive on its own.
    pub ack_pause_ms: u64,
    /// Time between the polite signal (SIGHUP for a disconnected one-off, SIGTERM for a
    /// restart) and SIGKILL, in milliseconds.
    pub kill_grace_ms: u64,
    /// How long output may keep flowing after a process exits before its group is killed
    /// (a background job holding the output open must not hang a session), in milliseconds.
    pub drain_ms: u64,
    /// How long an `https://` attach secret (Fir and Shield one-offs, `run:inside`) stays
    /// valid, in milliseconds. Heroku's lifetime is unverified; 60 s is an emulator choice.
    pub attach_secret_ttl_ms: u64,
    /// Faults active from the start (the admin endpoint can change them later).
    pub faults: Faults,
    /// The apps and their formation.
    pub apps: Vec<AppConfig>,
}

impl std::fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimConfig")
            .field("api_key", &"<redacted>")
            .field("api_port", &self.api_port)
            .field("exec_port", &self.exec_port)
            .field("rendezvous_port", &self.rendezvous_port)
            .field("ssh_port", &self.ssh_port)
            .field("state_dir", &self.state_dir)
            .field("faults", &self.faults)
            .field("apps", &self.apps)
            .finish_non_exhaustive()
    }
}

impl Default for SimConfig {
    /// No apps; everything else as for the demo.
    fn default() -> Self {
        Self {
            api_key: DEMO_API_KEY.to_owned(),
            api_port: 0,
            exec_port: 0,
            rendezvous_port: 0,
            ssh_port: None,
            state_dir: None,
            account_email: "demo@herokusim.invalid".to_owned(),
            rate_limit_pool: 4500,
            rate_limit_refill_per_minute: 75,
            ack_pause_ms: 100,
            kill_grace_ms: 1000,
            drain_ms: 2000,
            attach_secret_ttl_ms: 60_000,
            faults: Faults::default(),
            apps: Vec::new(),
        }
    }
}

/// One app.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppConfig {
    /// The app name (`-a NAME`).
    pub name: String,
    /// `stack.name` and `build_stack.name`. `cnb` makes the CLI prefix commands with `launcher`.
    /// `None`: `cnb` on Fir, `heroku-24` on Cedar.
    pub stack: Option<String>,
    /// `generation`: `cedar` (default) or `fir`. Fir makes the CLI refuse `ps:exec`, the
    /// exec-manager refuse the app, and formation dynos take pod-style names.
    pub generation: Generation,
    /// The Private Space the app lives in: none (default, the Common Runtime), `private` or
    /// `shield`. Shown as `space: {id, name, shield}` in `GET /apps/{app}`.
    pub space: Option<SpaceKind>,
    /// Whether the `runtime-heroku-exec` feature starts enabled (dynos boot with an exec agent).
    pub exec_enabled: bool,
    /// Config vars: in the env of formation and one-off dynos, never in exec sessions.
    pub config_vars: BTreeMap<String, String>,
    /// Buildpack URLs for `GET /apps/{app}/buildpack-installations`.
    pub buildpacks: Vec<String>,
    /// The formation: one entry per dyno (`web.1`, `worker.1`, ...).
    pub formation: Vec<DynoConfig>,
}

impl Default for AppConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            stack: None,
            generation: Generation::Cedar,
            space: None,
            exec_enabled: false,
            config_vars: BTreeMap::new(),
            buildpacks: Vec::new(),
            formation: Vec::new(),
        }
    }
}

impl AppConfig {
    /// `stack.name`: the configured stack, else `cnb` on Fir and `heroku-24` on Cedar.
    pub fn stack_name(&self) -> String {
        match (&self.stack, self.generation) {
            (Some(stack), _) => stack.clone(),
            (None, Generation::Fir) => "cnb".to_owned(),
            (None, Generation::Cedar) => "heroku-24".to_owned(),
        }
    }
}

/// Heroku's platform generation of an app (heroku-protocols.md §1.5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Generation {
    /// The classic runtime: `web.1` dyno names, Heroku Exec available.
    #[default]
    Cedar,
    /// Cloud Native Buildpacks on Kubernetes: pod-style dyno names, no Heroku Exec.
    Fir,
}

impl Generation {
    /// The name Heroku reports (`cedar`, `fir`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cedar => "cedar",
            Self::Fir => "fir",
        }
    }
}

/// The kind of Private Space an app lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpaceKind {
    /// A Private Space (`shield: false`).
    Private,
    /// A Shield Private Space (`shield: true`).
    Shield,
}

/// The pod-style name of a Fir formation dyno, e.g. `web-1f0c9a2b3d-k4p2x`:
/// `<process type>-<10 hex>-<5 lower-case alphanumerics>` (heroku-protocols.md §3.10). It is
/// derived from the app name and the configured `type.N` name, so it is stable for the app's
/// life (restarts keep it) and the same in every run, which tests can rely on. As in a
/// Kubernetes deployment, the middle part depends only on the process type (one "replica set"
/// per type) and the suffix on the individual dyno.
pub fn fir_dyno_name(app: &str, configured: &str) -> String {
    const ALNUM: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let process_type = configured.split('.').next().unwrap_or(configured);
    let set = uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!("herokusim-fir-set:{app}:{process_type}").as_bytes(),
    );
    let pod = uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!("herokusim-fir-pod:{app}:{configured}").as_bytes(),
    );
    let hash: String = set.simple().to_string().chars().take(10).collect();
    let suffix: String = pod
        .as_bytes()
        .iter()
        .take(5)
        .map(|b| char::from(ALNUM[usize::from(*b) % ALNUM.len()]))
        .collect();
    format!("{process_type}-{hash}-{suffix}")
}

/// One formation dyno.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DynoConfig {
    /// `type.N`, e.g. `web.1`.
    pub name: String,
    /// Run with `bash -c` as a local process for as long as the dyno is up. `None`: the dyno is
    /// tracked state only (always `up`, no process); exec sessions still run on it.
    pub command: Option<String>,
    /// Extra env of this dyno (also visible in its exec sessions).
    pub env: BTreeMap<String, String>,
    /// `size` in the API.
    pub size: String,
}

impl Default for DynoConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            command: None,
            env: BTreeMap::new(),
            size: "Basic".to_owned(),
        }
    }
}

impl DynoConfig {
    /// The process type: the part of the name before the first dot (`web.1`) or, for a Fir
    /// pod-style name (`web-1f0c9a2b3d-k4p2x`), before the first dash. Process types never
    /// contain either (validation allows only alphanumerics and `_`).
    pub fn process_type(&self) -> &str {
        self.name.split(['.', '-']).next().unwrap_or(&self.name)
    }
}

impl SimConfig {
    /// The `--demo` setup: app `demo` with the exec feature enabled, a fixed API key
    /// ([`DEMO_API_KEY`]), a config var `DEMO_CONFIG_VAR` (to show exec sessions do not get it),
    /// and a formation of `web.1` running `sleep infinity` (a real, long-lived process).
    pub fn demo() -> Self {
        let mut config_vars = BTreeMap::new();
        config_vars.insert("DEMO_CONFIG_VAR".to_owned(), "from-config-vars".to_owned());
        Self {
            apps: vec![AppConfig {
                name: "demo".to_owned(),
                exec_enabled: true,
                config_vars,
                formation: vec![DynoConfig {
                    name: "web.1".to_owned(),
                    command: Some("sleep infinity".to_owned()),
                    ..DynoConfig::default()
                }],
                ..AppConfig::default()
            }],
            ..Self::default()
        }
    }

    /// Parses a TOML config (see the crate docs for the format) and validates it.
    pub fn from_toml_str(text: &str) -> Result<Self, SimError> {
        let config: Self =
            toml::from_str(text).map_err(|e| SimError::Config(format!("invalid TOML: {e}")))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and parses a TOML config file.
    pub fn from_file(path: &Path) -> Result<Self, SimError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            SimError::Config(format!("cannot read config file {}: {e}", path.display()))
        })?;
        Self::from_toml_str(&text)
    }

    /// Checks names and values before anything is started.
    pub fn validate(&self) -> Result<(), SimError> {
        if self.api_key.is_empty() {
            return Err(SimError::Config("api_key must not be empty".to_owned()));
        }
        if self.attach_secret_ttl_ms == 0 {
            return Err(SimError::Config(
                "attach_secret_ttl_ms must be at least 1".to_owned(),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for app in &self.apps {
            if app.name.is_empty()
                || !app
                    .name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            {
                return Err(SimError::Config(format!(
                    "app name {:?} must be lower-case letters, digits and dashes",
                    app.name
                )));
            }
            if !seen.insert(app.name.as_str()) {
                return Err(SimError::Config(format!(
                    "app {:?} is defined twice",
                    app.name
                )));
            }
            let mut dynos = std::collections::BTreeSet::new();
            for dyno in &app.formation {
                let valid = dyno.name.split_once('.').is_some_and(|(t, n)| {
                    !t.is_empty()
                        && t != "run"
                        && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                        && !n.is_empty()
                        && n.chars().all(|c| c.is_ascii_digit())
                });
                if !valid {
                    return Err(SimError::Config(format!(
                        "formation dyno name {:?} in app {:?} must look like web.1 (type `run` is reserved)",
                        dyno.name, app.name
                    )));
                }
                if !dynos.insert(dyno.name.as_str()) {
                    return Err(SimError::Config(format!(
                        "dyno {:?} is defined twice in app {:?}",
                        dyno.name, app.name
                    )));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_config_file() {
        let config = SimConfig::from_toml_str(
            r#"
            api_key = "k"
            ssh_port = 0
            [faults]
            create_conflicts = 2
            [[apps]]
            name = "shop"
            exec_enabled = true
            config_vars = { DATABASE_URL = "postgres://x" }
            [[apps.formation]]
            name = "web.1"
            command = "sleep infinity"
            env = { ROLE = "web" }
            [[apps.formation]]
            name = "worker.1"
            "#,
        );
        let config = match config {
            Ok(c) => c,
            Err(e) => panic!("config rejected: {e}"),
        };
        assert_eq!(config.ssh_port, Some(0));
        assert_eq!(config.faults.create_conflicts, 2);
        assert_eq!(config.apps.len(), 1);
        assert_eq!(config.apps[0].formation[1].name, "worker.1");
        assert_eq!(config.apps[0].formation[1].command, None);
        assert_eq!(config.apps[0].formation[0].process_type(), "web");
    }

    #[test]
    fn rejects_bad_names_and_unknown_keys() {
        assert!(SimConfig::from_toml_str("[[apps]]\nname = \"Bad\"").is_err());
        assert!(
            SimConfig::from_toml_str("[[apps]]\nname=\"a\"\n[[apps.formation]]\nname=\"run.1\"")
                .is_err()
        );
        assert!(SimConfig::from_toml_str("nope = 1").is_err());
        assert!(SimConfig::from_toml_str("attach_secret_ttl_ms = 0").is_err());
        let c = SimConfig::from_toml_str("attach_secret_ttl_ms = 500").unwrap();
        assert_eq!(c.attach_secret_ttl_ms, 500);
        assert_eq!(SimConfig::default().attach_secret_ttl_ms, 60_000);
    }

    #[test]
    fn parses_generation_and_space() {
        let config = SimConfig::from_toml_str(
            "[[apps]]\nname = \"f\"\ngeneration = \"fir\"\nspace = \"private\"\n\
             [[apps]]\nname = \"s\"\nspace = \"shield\"\n[[apps]]\nname = \"c\"",
        );
        let config = match config {
            Ok(c) => c,
            Err(e) => panic!("config rejected: {e}"),
        };
        let [fir, shield, cedar] = config.apps.as_slice() else {
            panic!("three apps expected");
        };
        assert_eq!(fir.generation, Generation::Fir);
        assert_eq!(fir.space, Some(SpaceKind::Private));
        assert_eq!(fir.stack_name(), "cnb");
        assert_eq!(shield.generation, Generation::Cedar);
        assert_eq!(shield.space, Some(SpaceKind::Shield));
        assert_eq!(cedar.space, None);
        assert_eq!(cedar.stack_name(), "heroku-24");
        assert!(SimConfig::from_toml_str("[[apps]]\nname=\"a\"\ngeneration=\"cedar-14\"").is_err());
        assert!(SimConfig::from_toml_str("[[apps]]\nname=\"a\"\nspace=\"public\"").is_err());
    }

    #[test]
    fn fir_dyno_names_are_pod_style_and_stable() {
        let name = fir_dyno_name("shop", "web.1");
        assert_eq!(name, fir_dyno_name("shop", "web.1"), "deterministic");
        let parts: Vec<&str> = name.split('-').collect();
        assert_eq!(parts.len(), 3, "{name}");
        assert_eq!(parts[0], "web");
        assert!(parts[1].len() == 10 && parts[1].chars().all(|c| c.is_ascii_hexdigit()));
        assert!(
            parts[2].len() == 5
                && parts[2]
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        );
        // Same process type: same "replica set" hash, different pod suffix.
        let second = fir_dyno_name("shop", "web.2");
        assert_eq!(second.split('-').nth(1), Some(parts[1]));
        assert_ne!(second, name);
        assert_ne!(fir_dyno_name("other", "web.1"), name);
        let cfg = DynoConfig {
            name,
            ..DynoConfig::default()
        };
        assert_eq!(cfg.process_type(), "web");
    }

    #[test]
    fn debug_redacts_the_key() {
        let text = format!("{:?}", SimConfig::demo());
        assert!(!text.contains(DEMO_API_KEY));
    }
}

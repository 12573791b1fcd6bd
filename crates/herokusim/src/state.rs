//! The emulator's shared state: apps, their dynos (formation and one-off), rendezvous and
//! attach secrets, exec reservations, the rate-limit pool and the active faults, behind one short-held lock.
//!
//! It owns the data model and its JSON rendering. It never holds the lock across an `.await`
//! and never spawns processes itself (see `dynos.rs` for the lifecycle that does).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use russh::keys::ssh_key::PublicKey;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::config::{DynoConfig, Generation, SimConfig, SpaceKind};
use crate::faults::Faults;
use crate::process::ProcessTable;

/// At most this many exec reservations are kept; the oldest is dropped beyond it.
pub(crate) const MAX_RESERVATIONS: usize = 256;

/// Everything the servers share.
pub(crate) struct Shared {
    pub config: SimConfig,
    pub state: Mutex<State>,
    pub faults: Mutex<Faults>,
    pub procs: ProcessTable,
    /// Cancelled on shutdown; every dyno's token is a child of it.
    pub cancel: CancellationToken,
    pub tracker: TaskTracker,
    pub rendezvous_port: u16,
    /// Port of the HTTPS listener (the exec-manager's), where `https://` attach URLs point.
    pub https_port: u16,
    /// `proxy_public_key`: the SSH proxy's host key in OpenSSH format.
    pub proxy_public_key: String,
    /// The SSH server config of the HTTPS attach path (its own ECDSA host key).
    pub attach_ssh: Arc<russh::server::Config>,
    pub account_id: Uuid,
}

impl Shared {
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn faults(&self) -> MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn kill_grace(&self) -> Duration {
        Duration::from_millis(self.config.kill_grace_ms)
    }

    pub fn drain(&self) -> Duration {
        Duration::from_millis(self.config.drain_ms)
    }

    /// How long an attach secret stays valid.
    pub fn attach_secret_ttl(&self) -> Duration {
        Duration::from_millis(self.config.attach_secret_ttl_ms)
    }
}

/// The mutable model.
pub(crate) struct State {
    pub apps: BTreeMap<String, App>,
    /// Unused rendezvous secrets → (app, dyno id). A secret is removed when presented.
    pub secrets: HashMap<String, (String, Uuid)>,
    /// Exec reservations, oldest first.
    pub reservations: VecDeque<Reservation>,
    pub next_run: u32,
    pub next_boot: u64,
    pub rate: RatePool,
    /// Every one-off create request that was accepted, oldest first (for tests).
    pub created: Vec<crate::CreatedDyno>,
    /// The account's SSH keys, oldest first; at most [`crate::keys::MAX_ACCOUNT_KEYS`].
    pub account_keys: Vec<crate::keys::AccountKey>,
    /// Unused secrets of `https://` attach URLs (Fir and Shield one-offs, `run:inside`).
    pub attach_grants: HashMap<String, crate::attach::Grant>,
    /// The latest attach upgrade requests (at most [`crate::attach::MAX_RECORDED`]), oldest
    /// first (for tests: what a client sent, and the answer).
    pub attach_requests: VecDeque<crate::AttachRequest>,
}

/// One app.
pub(crate) struct App {
    pub id: Uuid,
    pub name: String,
    pub stack: String,
    pub generation: Generation,
    pub space: Option<SpaceKind>,
    pub exec_enabled: bool,
    pub feature_updated_at: SystemTime,
    pub config_vars: BTreeMap<String, String>,
    pub buildpacks: Vec<String>,
    pub formation: Vec<DynoConfig>,
    pub created_at: SystemTime,
    pub release_id: Uuid,
    /// The app's working directory and `HOME` for every process of its dynos.
    pub home: PathBuf,
    pub dynos: BTreeMap<String, Dyno>,
    /// Each formation dyno's `PORT`, chosen at its first boot and kept across restarts.
    pub ports: BTreeMap<String, u16>,
}

/// Formation or one-off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum DynoKind {
    Formation,
    OneOff,
}

/// One dyno as the API shows it, plus what its processes need.
pub(crate) struct Dyno {
    pub id: Uuid,
    pub name: String,
    pub kind: DynoKind,
    pub process_type: String,
    pub command: String,
    pub size: String,
    pub state: &'static str,
    pub attach_url: Option<String>,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
    /// The dyno's own env (formation `env`, or the one-off's request `env`).
    pub env: BTreeMap<String, String>,
    pub force_no_tty: bool,
    /// Whether an exec agent runs on this dyno: the feature was enabled when it booted and has
    /// not been disabled since.
    pub exec_agent: bool,
    /// Changes on every (re)boot; exec reservations name the boot they were made for.
    pub boot: u64,
    /// The platform's `PORT` for this dyno: a real port on 127.0.0.1 of its own (dynos share
    /// the machine's loopback; see `dynos.rs`).
    pub port: u16,
    /// Cancelled to stop the dyno (restart, delete, time_to_live, shutdown); processes of the
    /// dyno (its own and exec sessions) are killed when it fires.
    pub cancel: CancellationToken,
    /// Completes when the dyno's supervisor has finished killing its process.
    pub stopped: Option<tokio::sync::watch::Receiver<bool>>,
}

impl Dyno {
    pub fn set_state(&mut self, state: &'static str) {
        self.state = state;
        self.updated_at = SystemTime::now();
    }

    pub fn to_json(&self, app: &App) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "type": self.process_type,
            "command": self.command,
            "attach_url": self.attach_url,
            "size": self.size,
            "state": self.state,
            "release": {"id": app.release_id, "version": 1},
            "app": {"id": app.id, "name": app.name},
            "created_at": rfc3339(self.created_at),
            "updated_at": rfc3339(self.updated_at),
        })
    }
}

/// A stable id for a generation name, as Heroku's generation objects carry one.
pub(crate) fn generation_id(name: &str) -> Uuid {
    Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("heroku-generation:{name}").as_bytes(),
    )
}

impl App {
    pub fn to_json(&self, owner_email: &str, owner_id: Uuid) -> Value {
        let created = rfc3339(self.created_at);
        json!({
            "id": self.id,
            "name": self.name,
            "generation": self.generation.as_str(),
            "stack": {"id": Uuid::nil(), "name": self.stack},
            "build_stack": {"id": Uuid::nil(), "name": self.stack},
            "space": self.space_json(),
            "team": null,
            "organization": null,
            "region": {"id": Uuid::nil(), "name": "us"},
            "owner": {"email": owner_email, "id": owner_id},
            "process_tier": "basic",
            "maintenance": false,
            "acm": false,
            "locked": false,
            "internal_routing": null,
            "archived_at": null,
            "buildpack_provided_description": null,
            "git_url": format!("https://git.heroku.com/{}.git", self.name),
            "web_url": format!("https://{}.herokuapp.com/", self.name),
            "repo_size": null,
            "slug_size": null,
            "created_at": created,
            "released_at": created,
            "updated_at": created,
        })
    }

    /// `space`: null on the Common Runtime, else `{id, name, shield}` (heroku-protocols.md §1.5).
    /// One emulated space per kind, so apps of the same kind share it, as apps in one real
    /// space do.
    pub fn space_json(&self) -> Value {
        let Some(kind) = self.space else {
            return Value::Null;
        };
        let (name, shield) = match kind {
            SpaceKind::Private => ("herokusim-private", false),
            SpaceKind::Shield => ("herokusim-shield", true),
        };
        let id = Uuid::new_v5(
            &Uuid::NAMESPACE_OID,
            format!("herokusim-space:{name}").as_bytes(),
        );
        json!({"id": id, "name": name, "shield": shield})
    }

    /// Whether one-off dynos attach over HTTPS + SSH (Fir and Shield Private Spaces,
    /// heroku-protocols.md §3.9) rather than rendezvous.
    pub fn https_attach(&self) -> bool {
        self.generation == Generation::Fir || self.space == Some(SpaceKind::Shield)
    }

    pub fn feature_json(&self) -> Value {
        json!({
            "id": Uuid::nil(),
            "name": "runtime-heroku-exec",
            "display_name": "Heroku Exec",
            "description": "Enables SSH access to dynos (emulated by herokusim)",
            "doc_url": "https://devcenter.heroku.com/articles/exec",
            "enabled": self.exec_enabled,
            "state": "general",
            "feedback_email": "feedback@herokusim.invalid",
            "created_at": rfc3339(self.created_at),
            "updated_at": rfc3339(self.feature_updated_at),
        })
    }
}

/// A credential made by `PUT /api/v2/{dyno}`: the SSH proxy lets `client_user` in with `key`
/// and runs its commands on that dyno boot.
#[derive(Clone, Debug)]
pub(crate) struct Reservation {
    pub client_user: String,
    pub key: PublicKey,
    pub app: String,
    pub dyno: String,
    pub boot: u64,
}

/// The rate-limit token bucket.
pub(crate) struct RatePool {
    pub size: f64,
    pub refill_per_sec: f64,
    pub tokens: f64,
    pub last: Instant,
}

impl RatePool {
    pub fn new(size: u32, refill_per_minute: u32) -> Self {
        Self {
            size: f64::from(size),
            refill_per_sec: f64::from(refill_per_minute) / 60.0,
            tokens: f64::from(size),
            last: Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.refill_per_sec).min(self.size);
    }

    /// Takes one token; false when the pool is empty.
    pub fn take(&mut self) -> bool {
        self.refill();
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    pub fn remaining(&mut self) -> u64 {
        self.refill();
        // Truncation is intended: a partial token cannot be spent.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let whole = self.tokens.floor().max(0.0) as u64;
        whole
    }
}

/// A shared handle to the state, for the servers.
pub(crate) type SharedRef = Arc<Shared>;

/// Formats a time as RFC 3339 UTC with second precision (`2026-01-02T03:04:05Z`).
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_709_210_096); // 2024-02-29T12:34:56Z
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56Z");
    }

    #[test]
    fn rate_pool_empties() {
        let mut pool = RatePool::new(2, 0);
        assert!(pool.take());
        assert!(pool.take());
        assert!(!pool.take());
        assert_eq!(pool.remaining(), 0);
    }
}

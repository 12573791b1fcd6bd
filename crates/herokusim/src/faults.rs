//! Fault injection: the set of misbehaviours the emulator can be told to show, from CLI flags,
//! the config file, [`crate::RunningSim::set_faults`] or `POST /__admin/faults`.
//!
//! It owns the fault values and the "take one" bookkeeping (counters count down as faults
//! fire). It does not decide where a fault applies; the servers ask when they reach the point
//! where it could.

use serde::{Deserialize, Serialize};

/// Faults to inject. Counters are "the next N"; they count down as the fault fires. A value
/// of zero or `None` means off. Posting a new set replaces the whole set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Answer the next N `POST /apps/{app}/dynos` and `POST /apps/{app}/dynos/{dyno}`
    /// (`run:inside`) with 409 (the release is not yet visible to the runtime, as just after
    /// app creation).
    pub create_conflicts: u32,
    /// Answer the next N creates with 422 `cannot_run_above_limit`.
    pub create_limit_errors: u32,
    /// Create one-off dynos at once but answer the create this many milliseconds later (a
    /// slow API): a client that gives up meanwhile leaves a dyno it never heard of.
    pub create_response_delay_ms: u64,
    /// Answer the next N `GET /apps/{app}/dynos/{dyno}` with 404 `not_found`, as when the
    /// runtime does not show a new dyno yet: the CLI polls again at once, at most 20 times in a
    /// row, before the SSH attach path (heroku-protocols.md §3.9.2).
    pub dyno_not_found_polls: u32,
    /// Answer the next N Platform API requests with 429 `rate_limit`, `RateLimit-Remaining: 0`
    /// and `Retry-After: retry_after_secs`.
    pub rate_limited: u32,
    /// `Retry-After` seconds on injected 429s (at least 1).
    pub retry_after_secs: u64,
    /// Answer the next N Platform API requests with `server_error_status`.
    pub server_errors: u32,
    /// Status of injected server errors; 0 means 503.
    pub server_error_status: u16,
    /// Delay the rendezvous ack by this many milliseconds (a slow `starting`).
    pub ack_delay_ms: u64,
    /// Drop every rendezvous connection abruptly (no TLS close_notify) after this many output
    /// bytes; the one-off's process is killed as for a client disconnect.
    pub drop_rendezvous_after: Option<u64>,
    /// Reset every rendezvous connection (TCP RST, no TLS close_notify) once more than this
    /// many input bytes were read from the client, as when a dyno's process exits without
    /// reading its input; the client's pending write and read fail. The one-off's process is
    /// killed as for a client disconnect.
    pub reset_rendezvous_after_input: Option<u64>,
    /// Drop every SSH connection abruptly (TCP closed, no SSH close) after this many bytes of
    /// channel data were sent to the client; its processes are killed.
    pub drop_ssh_after: Option<u64>,
    /// Refuse the next N exec-manager `PUT /api/v2/{dyno}` with 403 `forbidden`.
    pub refuse_exec_keys: u32,
    /// Answer the next N `Upgrade: tcp` requests of the HTTPS attach path with
    /// `attach_refusal_status` instead of 101 (the secret stays unused).
    pub attach_refusals: u32,
    /// Status of refused attach upgrades; 0 means 403 (Heroku's IP restriction).
    pub attach_refusal_status: u16,
    /// Close the connection after a refused upgrade (otherwise it stays open, keep-alive).
    pub attach_refusal_close: bool,
    /// Answer the next N attach upgrades with 101, then close the socket before any SSH.
    pub drop_attach_upgrades: u32,
    /// On the attach path, let `exec` requests run their own command (refused by default:
    /// Heroku's behaviour is unverified, and only `shell` is known to work).
    pub attach_allow_exec: bool,
    /// On the attach path, send no `exit-status`/`exit-signal` (clients must use the marker).
    pub attach_omit_exit_status: bool,
    /// On the attach path, hold the `101` back and send it in one write (one TLS record) with
    /// the SSH server's first bytes, so that a client reads the greeting together with the
    /// response head (CLI 11.10.0 drops such bytes and hangs). Applies to connections accepted
    /// while it is on. With `drop_attach_upgrades` the `101` is then never sent.
    pub attach_coalesce_greeting: bool,
}

/// Takes one shot from a countdown: true if the fault fires now.
pub(crate) fn take(counter: &mut u32) -> bool {
    if *counter > 0 {
        *counter -= 1;
        true
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_count_down() {
        let mut n = 2;
        assert!(take(&mut n));
        assert!(take(&mut n));
        assert!(!take(&mut n));
    }

    #[test]
    fn unknown_fields_are_rejected() {
        assert!(serde_json::from_str::<Faults>(r#"{"create_conflict": 1}"#).is_err());
        let f: Faults = serde_json::from_str(r#"{"create_conflicts": 1}"#).unwrap_or_default();
        assert_eq!(f.create_conflicts, 1);
    }
}

//! Heroku session policy shared by the run and psexec backends: which app names are valid,
//! which apps a connection allows (`HEROKU_APPS`), where the Heroku API key comes from
//! (`HEROKU_API_KEY`), and how a session's command and client arguments become the
//! backend's argument list. Everything here runs before any API call.
//!
//! Why a crate of its own: `backend` is the Heroku-agnostic contract every backend shares
//! (the ssh and local backends have no business knowing Heroku's app-name rules), and
//! `heroku-api` is a plain Platform API client that knows nothing about sessions or
//! connections. This crate sits between them (it depends on both, neither depends on it),
//! so the policy lives once and both Heroku backends use it.
//!
//! It does not decide exit codes: each backend maps a [`PolicyError`] to its session's exit
//! status in its own error type, like its other failures.

#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::panic))]

use backend::{SessionEnv, SessionRequest};
use heroku_api::ApiKey;

/// The connection variable that restricts which Heroku apps a session may touch.
pub const APPS_ALLOWLIST_VAR: &str = "HEROKU_APPS";

/// The session variable with the Heroku API key.
pub const API_KEY_VAR: &str = "HEROKU_API_KEY";

/// Why Heroku policy refuses a session. Messages never contain the API key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// Holds at most the first 64 characters of the name.
    #[error("{}", heroku_args::invalid_app_name_message(.0))]
    InvalidAppName(String),
    #[error(
        "app {app:?} is not allowed on this connection: its HEROKU_APPS is not readable text, so no app is allowed; set it as an envvar: of comma-separated app names"
    )]
    AllowlistUnreadable { app: String },
    /// `allowed` is the allowlist joined by `", "`, or `no apps`.
    #[error("app {app:?} is not allowed on this connection; HEROKU_APPS allows: {allowed}")]
    AppNotAllowed { app: String, allowed: String },
    #[error(
        "HEROKU_API_KEY is not set for this connection: add it as a connection secret (envvar:HEROKU_API_KEY), or set it on the agent and give the connection the value system.agent.envs"
    )]
    MissingApiKey,
}

pub use heroku_args::is_heroku_app_name;

/// [`is_heroku_app_name`] as a check whose error quotes (the start of) the bad name.
pub fn check_app_name(app: &str) -> Result<(), PolicyError> {
    if is_heroku_app_name(app) {
        Ok(())
    } else {
        Err(PolicyError::InvalidAppName(app.chars().take(64).collect()))
    }
}

/// Checks `app` against the connection's `HEROKU_APPS` allowlist (comma-separated app names).
/// No allowlist means every app the API key can reach. Read only from the connection (a
/// client's value is not an allowlist). Called before any API call.
pub fn check_app_allowed(env: &SessionEnv, app: &str) -> Result<(), PolicyError> {
    let Some(list) = env.connection_str(APPS_ALLOWLIST_VAR) else {
        if env.named_by_connection(APPS_ALLOWLIST_VAR) {
            // Set, but not readable as text (a `filesystem:` entry, bytes that are not
            // UTF-8): fail closed rather than allow every app.
            return Err(PolicyError::AllowlistUnreadable {
                app: app.to_owned(),
            });
        }
        return Ok(());
    };
    let allowed: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .collect();
    if allowed.contains(&app) {
        return Ok(());
    }
    Err(PolicyError::AppNotAllowed {
        app: app.to_owned(),
        allowed: if allowed.is_empty() {
            "no apps".to_owned()
        } else {
            allowed.join(", ")
        },
    })
}

/// The session's Heroku API key (`HEROKU_API_KEY`, from the connection or, through
/// `system.agent.envs`, from the agent). An empty value counts as unset.
pub fn api_key(env: &SessionEnv) -> Result<ApiKey, PolicyError> {
    env.get_str(API_KEY_VAR)
        .filter(|k| !k.is_empty())
        .map(ApiKey::new)
        .ok_or(PolicyError::MissingApiKey)
}

/// The last path component of a command.
pub fn basename(cmd: &str) -> &str {
    cmd.rsplit('/').next().unwrap_or(cmd)
}

/// A Heroku backend's arguments: the connection command after its program (and after the
/// subcommand, `run` or `ps:exec`, when the program is `heroku`), then the client's arguments.
pub fn session_args(request: &SessionRequest) -> Vec<String> {
    let skip = match request.command.first().map(|c| basename(c)) {
        Some("heroku") => 2,
        _ => 1,
    };
    request
        .command
        .iter()
        .skip(skip)
        .chain(request.args.iter())
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heroku_app_names_and_ids() {
        for ok in [
            "abc",
            "my-app-2",
            "a23456789012345678901234567890",
            "01234567-89ab-cdef-0123-456789ABCDEF",
        ] {
            assert!(is_heroku_app_name(ok), "{ok}");
            assert!(check_app_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ab",
            "Bad_App",
            "1app",
            "app/../x",
            "a234567890123456789012345678901",
            "0123456789abcdef0123456789abcdef",
            "{01234567-89ab-cdef-0123-456789abcdef}",
        ] {
            assert!(!is_heroku_app_name(bad), "{bad}");
            assert!(check_app_name(bad).is_err(), "{bad}");
        }
        let long = "x".repeat(100);
        let PolicyError::InvalidAppName(shown) = check_app_name(&long).unwrap_err() else {
            panic!("not an invalid name");
        };
        assert_eq!(shown.len(), 64, "a bad name is quoted only in part");
    }

    #[test]
    fn the_app_allowlist_refuses_other_apps() {
        let mut env = SessionEnv::default();
        assert!(
            check_app_allowed(&env, "any-app").is_ok(),
            "no allowlist: everything allowed"
        );
        env.set(APPS_ALLOWLIST_VAR, "app-three");
        assert!(
            check_app_allowed(&env, "any-app").is_ok(),
            "a client's value is not an allowlist"
        );
        let mut file = SessionEnv::default();
        file.set_file_from_connection(APPS_ALLOWLIST_VAR, "/tmp/x.envfs");
        let refused = check_app_allowed(&file, "any-app").unwrap_err().to_string();
        assert!(refused.contains("not readable text"), "{refused}");
        env.set_from_connection(APPS_ALLOWLIST_VAR, "app-one, app-two");
        assert!(check_app_allowed(&env, "app-two").is_ok());
        let refused = check_app_allowed(&env, "app-three")
            .unwrap_err()
            .to_string();
        assert!(refused.contains("app-one, app-two"), "{refused}");
        env.set_from_connection(APPS_ALLOWLIST_VAR, " , ");
        let refused = check_app_allowed(&env, "app-one").unwrap_err().to_string();
        assert!(refused.ends_with("allows: no apps"), "{refused}");
    }

    #[test]
    fn the_api_key_is_required_and_never_shown() {
        let mut env = SessionEnv::default();
        assert_eq!(api_key(&env).unwrap_err(), PolicyError::MissingApiKey);
        env.set_from_connection(API_KEY_VAR, "");
        assert_eq!(api_key(&env).unwrap_err(), PolicyError::MissingApiKey);
        env.set_from_connection(API_KEY_VAR, "secret-key-123");
        let key = api_key(&env).unwrap();
        assert!(!format!("{key:?}").contains("secret-key-123"));
    }

    #[test]
    fn session_args_skip_the_program_and_subcommand() {
        fn v(s: &[&str]) -> Vec<String> {
            s.iter().map(|a| (*a).to_owned()).collect()
        }
        let request = |command: &[&str], args: &[&str]| SessionRequest {
            session_id: backend::SessionId::parse(b"s").unwrap(),
            connection_name: "c".into(),
            user: "u".into(),
            command: v(command),
            args: v(args),
            env: SessionEnv::default(),
            mode: backend::Mode::Exec,
            jit_timeout: None,
        };
        assert_eq!(
            session_args(&request(&["/usr/bin/heroku", "run", "-a", "x"], &["bash"])),
            v(&["-a", "x", "bash"])
        );
        assert_eq!(
            session_args(&request(&["heroku", "ps:exec"], &["--app", "x"])),
            v(&["--app", "x"])
        );
        assert_eq!(
            session_args(&request(&["/app/ps-exec.sh", "--app", "x"], &[])),
            v(&["--app", "x"])
        );
        assert_eq!(basename("/a/b/heroku-run"), "heroku-run");
        assert_eq!(basename("psexec"), "psexec");
    }
}

//! `dynoagent keys`: the one-time setup of the account SSH key that Heroku's SSH attach path
//! needs (Fir apps, Shield Private Spaces, `run:inside`; heroku-protocols.md §3.9.6).
//!
//! - `generate --out FILE`: a new ed25519 private key written to FILE (created, never
//!   overwritten, mode 0600); prints only the public line.
//! - `register`: registers the public half of `HEROKU_SSH_KEY` on the account of
//!   `HEROKU_API_KEY`, unless it is there already. Both come from the environment, never from
//!   the command line, so neither appears in a process listing; neither is ever printed.
//!
//! The key is account-wide: once registered it opens the attach path of every Fir or Shield
//! app the account can run dynos on.

use std::collections::HashMap;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use backend_run::HEROKU_SSH_KEY_VAR;

/// The variable with the Heroku API key.
const API_KEY_VAR: &str = "HEROKU_API_KEY";

/// Why a `keys` command failed. Messages never hold a key.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("{0} is not set; it must hold {1}")]
    Missing(&'static str, &'static str),
    #[error("{0}")]
    Key(String),
    #[error("cannot create {path}: {reason} (it is never overwritten)")]
    Write { path: String, reason: String },
    #[error("{var}: {reason}")]
    Setting { var: &'static str, reason: String },
    #[error("{0}")]
    Api(String),
}

/// Writes a new ed25519 private key to `path` (0600, must not exist) and returns its public
/// key line.
pub fn generate_to(path: &Path) -> Result<String, KeysError> {
    let text = backend_run::account_key::generate().map_err(KeysError::Key)?;
    let key = backend_ssh::load_key(Some(&text), "the new key")
        .map_err(|e| KeysError::Key(e.to_string()))?;
    let public =
        backend_run::account_key::public_line(&key, "dynoagent").map_err(KeysError::Key)?;
    let write_error = |e: std::io::Error| KeysError::Write {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(write_error)?;
    file.write_all(text.as_bytes()).map_err(write_error)?;
    file.sync_all().map_err(write_error)?;
    Ok(public)
}

/// Registers the key in `HEROKU_SSH_KEY` on the account of `HEROKU_API_KEY` (both from `env`),
/// with `comment` (default `dynoagent@<HEROKU_APP_NAME, else the host name>`; give one with
/// `--comment`: `heroku keys:remove` deletes every key with a given comment). The API URL and
/// an extra CA come from `DYNOAGENT_HEROKU_API_URL` and `DYNOAGENT_HEROKU_CA` as for the agent.
/// Returns the line to print.
pub async fn register(
    env: &HashMap<String, String>,
    comment: Option<&str>,
) -> Result<String, KeysError> {
    let get = |name: &str| {
        env.get(name)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    };
    let api_key = get(API_KEY_VAR).ok_or(KeysError::Missing(
        API_KEY_VAR,
        "the Heroku API key of the account to register the key on",
    ))?;
    let key_value = get(HEROKU_SSH_KEY_VAR).ok_or(KeysError::Missing(
        HEROKU_SSH_KEY_VAR,
        "the private key (text, base64 of the text, or a file path; `dynoagent keys generate --out FILE` makes one)",
    ))?;
    let key = backend_ssh::load_key(Some(key_value), HEROKU_SSH_KEY_VAR)
        .map_err(|e| KeysError::Key(e.to_string()))?;
    let api_url = get("DYNOAGENT_HEROKU_API_URL").unwrap_or(heroku_api::DEFAULT_API_URL);
    let api_url = url::Url::parse(api_url).map_err(|e| KeysError::Setting {
        var: "DYNOAGENT_HEROKU_API_URL",
        reason: e.to_string(),
    })?;
    let extra_roots_pem = get("DYNOAGENT_HEROKU_CA")
        .map(|v| {
            gateway_link::load_ca(v).map_err(|e| KeysError::Setting {
                var: "DYNOAGENT_HEROKU_CA",
                reason: e.to_string(),
            })
        })
        .transpose()?;
    let config = heroku_api::ClientConfig {
        api_url,
        extra_roots_pem,
        ..heroku_api::ClientConfig::default()
    };
    let client = heroku_api::HerokuClient::new(config, heroku_api::ApiKey::new(api_key))
        .map_err(|e| KeysError::Api(e.to_string()))?;
    let comment = match comment {
        Some(c) => c.to_owned(),
        None => {
            // HEROKU_APP_NAME exists on dynos with the runtime-dyno-metadata feature; bash does
            // not export HOSTNAME, so the kernel's host name is read instead.
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
            let host = host.as_deref().map(str::trim).filter(|h| !h.is_empty());
            format!(
                "dynoagent@{}",
                get("HEROKU_APP_NAME").or(host).unwrap_or("agent")
            )
        }
    };
    let done = backend_run::account_key::register(&client, &key, &comment)
        .await
        .map_err(|e| KeysError::Api(e.to_string()))?;
    Ok(if done.added {
        format!(
            "registered {} on the Heroku account as {:?} (id {}); it opens the SSH attach path of every Fir and Shield app this account can run dynos on",
            done.fingerprint, comment, done.key.id
        )
    } else {
        format!(
            "{} is already registered on the Heroku account (as {:?}); nothing changed",
            done.fingerprint, done.key.comment
        )
    })
}

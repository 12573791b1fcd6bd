//! What a client types after a run or psexec connection's command, parsed before any API call
//! (a bad argument exits 2 and costs nothing), and the run backend's exit-marker scanner.
//!
//! - [`run`]: the `heroku run` flags (heroku-protocols.md §2.2);
//! - [`psexec`]: the flags of hoop's `ps-exec.sh` (hoop-gateway-protocol.md §7.1);
//! - [`marker`]: the `heroku run --exit-code` marker, scanned across reads (§4);
//! - [`is_heroku_app_name`] / [`check_app_name`]: what may name an app.
//!
//! Everything here parses bytes a user controls, and is fuzzed (`fuzz/`). It is a crate of its
//! own so that the fuzz build compiles clap and this code only, not the backends' network
//! stacks (hyper, russh, rustls): that build was 9 of CI's 40 minutes.

#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod marker;
pub mod psexec;
pub mod run;

/// Whether `app` can name a Heroku app: 3 to 30 lower-case letters, digits and dashes,
/// starting with a letter, or an app id (a hyphenated UUID). Checked before any API call, so
/// a hostile name never reaches a URL.
pub fn is_heroku_app_name(app: &str) -> bool {
    let uuid = app.len() == 36
        && app.chars().enumerate().all(|(i, c)| {
            matches!(i, 8 | 13 | 18 | 23) == (c == '-') && (c == '-' || c.is_ascii_hexdigit())
        });
    let name = (3..=30).contains(&app.len())
        && app.starts_with(|c: char| c.is_ascii_lowercase())
        && app
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    uuid || name
}

/// [`is_heroku_app_name`] as a check; the error quotes (the first 64 characters of) the name.
pub fn check_app_name(app: &str) -> Result<(), String> {
    if is_heroku_app_name(app) {
        Ok(())
    } else {
        Err(invalid_app_name_message(
            &app.chars().take(64).collect::<String>(),
        ))
    }
}

/// The text for an app name that [`is_heroku_app_name`] refuses.
pub fn invalid_app_name_message(shown: &str) -> String {
    format!(
        "invalid app name {shown:?}: Heroku app names are 3-30 lower-case letters, digits and dashes, starting with a letter"
    )
}

//! Fuzz target `run_args`: `heroku run` argument parsing (`heroku_args::run::parse`) on
//! arbitrary argument vectors. The bytes are split on NUL into arguments (lossy UTF-8, as
//! arguments arrive from a gob `[]string`, which is UTF-8 by the time it gets here).
//! Checked: nothing panics, and what parses satisfies the promises the backend relies on
//! before it calls the Platform API (a valid app, a non-empty command, valid env names).

#![no_main]

use heroku_args::run::{self as args, Parsed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let argv: Vec<String> = data
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let _ = args::build_command(&argv);
    match args::parse(&argv) {
        Ok(Parsed::Run(r)) => {
            assert!(
                args::validate_app(&r.app).is_ok(),
                "accepted app {:?}",
                r.app
            );
            assert!(!r.command.trim().is_empty(), "accepted an empty command");
            for (name, _) in &r.env {
                assert!(
                    !name.is_empty()
                        && name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)),
                    "accepted env name {name:?}"
                );
            }
            if let Some(kind) = &r.kind {
                assert!(
                    !kind.is_empty()
                        && kind
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
                    "accepted process type {kind:?}"
                );
            }
        }
        Ok(Parsed::Help(text)) => assert!(!text.is_empty()),
        Err(e) => assert!(!e.0.is_empty()),
    }
});

//! Fuzz target `psexec_args`: psexec argument parsing (`heroku_args::psexec::parse`) on
//! arbitrary argument vectors, split on NUL as in `run_args`. Checked: nothing panics, errors
//! carry the `psexec: ` prefix users see, and what parses has a valid app and dyno and never
//! both `--pipe` and a command.

#![no_main]

use heroku_args::psexec::{self as args, Action};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let argv: Vec<String> = data
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    match args::parse(&argv) {
        Ok(Action::Exec(e)) => {
            assert!(
                args::validate_app(&e.app).is_ok(),
                "accepted app {:?}",
                e.app
            );
            assert!(
                args::validate_dyno(&e.dyno).is_ok(),
                "accepted dyno {:?}",
                e.dyno
            );
            assert!(
                !(e.pipe.is_some() && e.command.is_some()),
                "--pipe and a command"
            );
            if let Some(pipe) = &e.pipe {
                assert!(!pipe.trim().is_empty(), "accepted an empty --pipe");
            }
            let _ = args::is_one_off(&e.dyno);
        }
        Ok(Action::Status { app }) => {
            assert!(args::validate_app(&app).is_ok(), "accepted app {app:?}");
        }
        Ok(Action::Help(text)) => assert!(!text.is_empty()),
        Err(e) => assert!(e.0.starts_with("psexec: "), "error without prefix: {e}"),
    }
});

//! The `dynoctl` binary: the command line lives in the library (`dynoctl::cli`), so that
//! `dynoagent ctl` runs exactly the same thing.

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    dynoctl::cli::main_from(std::env::args_os())
}

//! `heroku run` arguments, parsed like Heroku's CLI parses them (heroku-protocols.md §2.2):
//! `-a/--app` (required), `-s/--size`, `--type`, `-e/--env 'A=1;B=2'`, `--no-tty`, `--no-launcher`,
//! `-x/--exit-code` (accepted; dynoagent always passes exit codes through), then the command
//! (`--` optional), or `--help`. Parsing uses clap; validation of app and env names is ours.
//! Everything here runs before any API call, so a bad argument costs nothing.

use clap::Parser;

/// Parsed `heroku run` arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunArgs {
    pub app: String,
    pub size: Option<String>,
    pub kind: Option<String>,
    pub env: Vec<(String, String)>,
    pub no_tty: bool,
    /// Do not prefix `launcher ` on Cloud Native Buildpack apps (heroku-protocols.md §2.6).
    pub no_launcher: bool,
    /// The command as the dyno will see it (before the exit marker is appended).
    pub command: String,
}

/// What the arguments asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    Run(RunArgs),
    /// `--help`: print this text and exit 0.
    Help(String),
}

/// A bad argument. Shown to the user as is; the session exits 2.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ArgsError(pub String);

#[derive(Debug, Parser)]
#[command(
    name = "heroku run",
    no_binary_name = true,
    disable_version_flag = true,
    about = "Run a one-off process inside a Heroku dyno",
    override_usage = "heroku run --app APP [--size SIZE] [--type TYPE] [--env 'A=1;B=2'] [--no-tty] [--no-launcher] [--exit-code] [--] COMMAND..."
)]
struct Cli {
    /// The app to run the command on.
    #[arg(short = 'a', long = "app", value_name = "APP")]
    app: Option<String>,
    /// Dyno size (for example standard-2x).
    #[arg(short = 's', long = "size", value_name = "SIZE")]
    size: Option<String>,
    /// Process type (defaults to run).
    #[arg(long = "type", value_name = "TYPE")]
    kind: Option<String>,
    /// Environment variables, separated by semicolons: 'A=1;B=2'.
    #[arg(short = 'e', long = "env", value_name = "VARS")]
    env: Vec<String>,
    /// Run without a terminal (always the case for exec sessions).
    #[arg(long = "no-tty")]
    no_tty: bool,
    /// Do not prefix the command with the CNB `launcher` on apps with stack `cnb`.
    #[arg(long = "no-launcher")]
    no_launcher: bool,
    /// Pass the command's exit code through (always on in dynoagent).
    #[arg(short = 'x', long = "exit-code")]
    exit_code: bool,
    /// Accepted for compatibility; dynoagent never sends notifications.
    #[arg(long = "no-notify")]
    no_notify: bool,
    /// The command to run.
    #[arg(trailing_var_arg = true, value_name = "COMMAND")]
    command: Vec<String>,
}

/// Parses `args` (everything after `heroku run`).
pub fn parse(args: &[String]) -> Result<Parsed, ArgsError> {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => {
            return Ok(Parsed::Help(e.render().to_string()));
        }
        Err(e) => {
            let text = e.render().to_string();
            let first = text
                .lines()
                .next()
                .unwrap_or("invalid arguments")
                .trim_start_matches("error: ");
            return Err(ArgsError(format!("heroku run: {first}; see --help")));
        }
    };
    let app = cli
        .app
        .ok_or_else(|| ArgsError("heroku run: missing required flag --app APP".into()))?;
    validate_app(&app)?;
    let mut env = Vec::new();
    for value in &cli.env {
        env.extend(parse_env(value)?);
    }
    if let Some(kind) = &cli.kind
        && (kind.is_empty()
            || !kind
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
    {
        return Err(ArgsError(format!(
            "heroku run: invalid process type {kind:?}"
        )));
    }
    let _ = (cli.exit_code, cli.no_notify);
    let command = build_command(&cli.command);
    if command.trim().is_empty() {
        return Err(ArgsError(
            "heroku run: no command given; for example: -- --app APP bash".into(),
        ));
    }
    Ok(Parsed::Run(RunArgs {
        app,
        size: cli.size,
        kind: cli.kind,
        env,
        no_tty: cli.no_tty,
        no_launcher: cli.no_launcher,
        command,
    }))
}

/// Heroku app names ([`crate::check_app_name`]): 3 to 30 lower-case letters, digits
/// and dashes, starting with a letter, or an app id (a UUID).
pub fn validate_app(app: &str) -> Result<(), ArgsError> {
    crate::check_app_name(app).map_err(ArgsError)
}

/// Splits `-e 'A=1;B=2'` like the CLI: `^\s*([\w.-]+)\s*=\s*(.*)?\s*$` per `;`-separated part.
fn parse_env(value: &str) -> Result<Vec<(String, String)>, ArgsError> {
    let mut out = Vec::new();
    for part in value.split(';') {
        if part.trim().is_empty() {
            continue;
        }
        let (name, val) = part
            .split_once('=')
            .ok_or_else(|| ArgsError(format!("heroku run: env flag {part:?} appears invalid; use NAME=value and avoid ';' in values")))?;
        let name = name.trim();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
        {
            return Err(ArgsError(format!(
                "heroku run: invalid environment variable name {name:?}"
            )));
        }
        out.push((name.to_owned(), val.trim_start().to_owned()));
    }
    Ok(out)
}

/// Joins argv like the CLI: one element verbatim; several joined with spaces, each element
/// holding a space or `"` wrapped in `"…"` with inner quotes escaped.
pub fn build_command(argv: &[String]) -> String {
    match argv {
        [] => String::new(),
        [one] => one.clone(),
        many => many
            .iter()
            .map(|a| {
                if a.contains(' ') || a.contains('"') {
                    format!("\"{}\"", a.replace('"', "\\\""))
                } else {
                    a.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(" "),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| (*a).to_owned()).collect()
    }

    fn run(s: &[&str]) -> RunArgs {
        match parse(&args(s)).unwrap() {
            Parsed::Run(r) => r,
            Parsed::Help(h) => panic!("unexpected help: {h}"),
        }
    }

    #[test]
    fn parses_flags_then_the_command() {
        let r = run(&[
            "--exit-code",
            "--app",
            "my-app",
            "-s",
            "standard-2x",
            "--type",
            "worker",
            "-e",
            "A=1; B = two words ;C=",
            "--no-tty",
            "--",
            "python3",
            "-c",
            "print(1)",
        ]);
        assert_eq!(r.app, "my-app");
        assert_eq!(r.size.as_deref(), Some("standard-2x"));
        assert_eq!(r.kind.as_deref(), Some("worker"));
        assert_eq!(
            r.env,
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "two words ".into()),
                ("C".into(), String::new())
            ]
        );
        assert!(r.no_tty);
        assert!(!r.no_launcher);
        assert!(run(&["-a", "abc", "--no-launcher", "x"]).no_launcher);
        assert_eq!(r.command, "python3 -c print(1)");
        assert_eq!(run(&["-a", "abc", "bash"]).command, "bash");
        assert_eq!(run(&["-a", "abc", "rake test"]).command, "rake test");
        assert_eq!(
            run(&["-a", "abc", "echo", "a b", "say \"hi\""]).command,
            "echo \"a b\" \"say \\\"hi\\\"\""
        );
        assert_eq!(run(&["--app=abc", "ls", "-la"]).command, "ls -la");
    }

    #[test]
    fn refuses_bad_input_before_any_api_call() {
        for bad in [
            &["bash"][..],
            &["--app", "Bad_App", "bash"],
            &["--app", "ab", "bash"],
            &["--app", "abc"],
            &["--app", "abc", "--frobnicate", "bash"],
            &["--app", "abc", "-e", "novalue", "bash"],
            &["--app", "abc", "--type", "web;rm", "bash"],
        ] {
            let e = parse(&args(bad)).unwrap_err();
            assert!(!e.0.is_empty(), "{bad:?}");
        }
    }

    #[test]
    fn help_is_usage_text() {
        match parse(&args(&["--help"])).unwrap() {
            Parsed::Help(text) => assert!(text.contains("--app"), "{text}"),
            Parsed::Run(r) => panic!("{r:?}"),
        }
    }
}

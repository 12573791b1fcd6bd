//! The psexec arguments, exactly those of hoop's `ps-exec.sh` (hoop-gateway-protocol.md §7.1):
//! `--app APP` (required unless `--help`), `--dyno DYNO` (default `web.1`), `--pipe CMD`,
//! `--status`, `--interactive`, `--help`, plus dynoagent's `--enable-exec` opt-in. Both
//! `--opt=value` and `--opt value` work (clap). `heroku ps:exec`'s `-a`/`-d` are accepted too,
//! and words after the options (or after `--`) are a remote command, as with `heroku ps:exec`.
//! App and dyno names are validated here, before any API call; a bad argument exits 2.

use clap::Parser;

/// The Heroku Exec feature flag.
pub const EXEC_FEATURE: &str = "runtime-heroku-exec";

/// What the session does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Print the usage text and exit 0.
    Help(String),
    /// The exec status table of an app.
    Status { app: String },
    /// A session on a dyno.
    Exec(ExecArgs),
}

/// A session on a dyno.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecArgs {
    pub app: String,
    /// `--dyno`, or `web.1` when not given.
    pub dyno: String,
    /// Whether `--dyno` was given (on a Fir app the default picks a running web dyno).
    pub dyno_given: bool,
    /// `--pipe CMD`: CMD runs in a login shell with the input streamed to it.
    pub pipe: Option<String>,
    /// Words after the options: a remote command (as `heroku ps:exec -- CMD`).
    pub command: Option<String>,
    pub interactive: bool,
    pub enable_exec: bool,
}

/// A bad argument. Shown to the user as is; the session exits 2.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ArgsError(pub String);

#[derive(Debug, Parser)]
#[command(
    name = "ps-exec.sh",
    no_binary_name = true,
    disable_version_flag = true,
    about = "Create an SSH session to a dyno (Heroku Exec), natively in dynoagent",
    override_usage = "ps-exec.sh --app APP [--dyno DYNO] [--pipe CMD | --interactive | --status] [--enable-exec] [-- COMMAND...]",
    after_help = "Default: the whole input is the command run on the dyno.\n--pipe CMD: CMD runs in a login shell on the dyno and receives the input (any size, binary-safe).\n--interactive: a shell (or the --pipe program) with a terminal when the session has one.\n--status: the dynos with Heroku Exec and their state.\n\nHeroku Exec needs the app feature runtime-heroku-exec; enabling it restarts dynos, so dynoagent only does it when the connection allows it (--enable-exec works if the connection sets PSEXEC_AUTO_ENABLE=ask; PSEXEC_AUTO_ENABLE=true does it without the flag), and then restarts only the named dyno."
)]
struct Cli {
    /// The app (required).
    #[arg(long = "app", short = 'a', value_name = "APP")]
    app: Option<String>,
    /// The dyno to connect to [default: web.1; on a Fir app, a running web dyno].
    #[arg(long = "dyno", short = 'd', value_name = "DYNO")]
    dyno: Option<String>,
    /// Run CMD in a login shell on the dyno with the input as its stdin.
    #[arg(long = "pipe", value_name = "CMD")]
    pipe: Option<String>,
    /// Show which dynos have Heroku Exec.
    #[arg(long = "status", conflicts_with_all = ["pipe", "interactive", "command"])]
    status: bool,
    /// Open a shell (or the --pipe program).
    #[arg(long = "interactive")]
    interactive: bool,
    /// If Heroku Exec is off: enable it and restart only this dyno.
    #[arg(long = "enable-exec")]
    enable_exec: bool,
    /// A command to run on the dyno (as with `heroku ps:exec`).
    #[arg(trailing_var_arg = true, value_name = "COMMAND")]
    command: Vec<String>,
}

/// Parses `args` (everything after `ps-exec.sh`, `psexec` or `heroku ps:exec`).
pub fn parse(args: &[String]) -> Result<Action, ArgsError> {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => {
            return Ok(Action::Help(e.render().to_string()));
        }
        Err(e) => {
            let text = e.render().to_string();
            let first = text
                .lines()
                .next()
                .unwrap_or("invalid arguments")
                .trim_start_matches("error: ");
            return Err(ArgsError(format!("psexec: {first}; see --help")));
        }
    };
    let app = cli
        .app
        .ok_or_else(|| ArgsError("psexec: required argument --app not set; see --help".into()))?;
    validate_app(&app)?;
    if cli.status {
        return Ok(Action::Status { app });
    }
    let dyno_given = cli.dyno.is_some();
    let dyno = cli.dyno.unwrap_or_else(|| DEFAULT_DYNO.to_owned());
    validate_dyno(&dyno)?;
    if cli.pipe.as_deref().is_some_and(|p| p.trim().is_empty()) {
        return Err(ArgsError("psexec: --pipe needs a command".into()));
    }
    if cli.pipe.is_some() && !cli.command.is_empty() {
        return Err(ArgsError(
            "psexec: give either --pipe CMD or a command after the options, not both".into(),
        ));
    }
    Ok(Action::Exec(ExecArgs {
        app,
        dyno,
        dyno_given,
        pipe: cli.pipe,
        command: (!cli.command.is_empty()).then(|| cli.command.join(" ")),
        interactive: cli.interactive,
        enable_exec: cli.enable_exec,
    }))
}

/// Heroku app names ([`crate::check_app_name`]): 3 to 30 lower-case letters, digits
/// and dashes, starting with a letter, or an app id (a UUID).
pub fn validate_app(app: &str) -> Result<(), ArgsError> {
    crate::check_app_name(app).map_err(|e| ArgsError(format!("psexec: {e}")))
}

/// The dyno when `--dyno` is not given (ps-exec.sh's default).
pub const DEFAULT_DYNO: &str = "web.1";

/// Dyno names: `type.N` (`web.1`, `worker_2.3`) on Cedar, or Fir's pod-style
/// `type-hash-xxxxx` (`web-848cd4f64d-pvpr2`): lower-case letters, digits, `-` and `_`,
/// starting with a letter.
pub fn validate_dyno(dyno: &str) -> Result<(), ArgsError> {
    let cedar = dyno.split_once('.').is_some_and(|(kind, n)| {
        !kind.is_empty()
            && kind
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            && !n.is_empty()
            && n.chars().all(|c| c.is_ascii_digit())
    });
    let fir = dyno.starts_with(|c: char| c.is_ascii_lowercase())
        && dyno.contains('-')
        && !dyno.ends_with('-')
        && dyno
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if dyno.len() <= 64 && (cedar || fir) {
        Ok(())
    } else {
        Err(ArgsError(format!(
            "psexec: invalid dyno name {:?}: expected TYPE.N (web.1) or, on a Fir app, a dyno name such as web-848cd4f64d-pvpr2",
            dyno.chars().take(64).collect::<String>()
        )))
    }
}

/// Whether a dyno is a one-off (`run.*`) or release-phase dyno, which have no exec agent on
/// the Common Runtime.
pub fn is_one_off(dyno: &str) -> bool {
    dyno.starts_with("run.") || dyno.starts_with("release.")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn p(words: &[&str]) -> Result<Action, ArgsError> {
        parse(&words.iter().map(|w| (*w).to_owned()).collect::<Vec<_>>())
    }

    fn exec(words: &[&str]) -> ExecArgs {
        match p(words).unwrap() {
            Action::Exec(e) => e,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn flags_as_ps_exec_sh_takes_them() {
        let e = exec(&[
            "--app",
            "my-app",
            "--dyno",
            "web.2",
            "--pipe",
            "rails runner -",
        ]);
        assert_eq!(
            e,
            ExecArgs {
                app: "my-app".into(),
                dyno: "web.2".into(),
                dyno_given: true,
                pipe: Some("rails runner -".into()),
                command: None,
                interactive: false,
                enable_exec: false,
            }
        );
        let e = exec(&[
            "--app=my-app",
            "--dyno=worker.1",
            "--pipe=python",
            "--enable-exec",
        ]);
        assert_eq!(
            (e.dyno.as_str(), e.pipe.as_deref(), e.enable_exec),
            ("worker.1", Some("python"), true)
        );
        let e = exec(&["--interactive", "--app", "abc"]);
        assert_eq!(
            (e.dyno.as_str(), e.dyno_given, e.interactive, e.pipe),
            ("web.1", false, true, None)
        );
        let e = exec(&["-a", "abc", "-d", "web-848cd4f64d-pvpr2"]);
        assert_eq!(
            (e.dyno.as_str(), e.dyno_given),
            ("web-848cd4f64d-pvpr2", true)
        );
        let e = exec(&["-a", "abc", "-d", "web.3", "--", "ls", "-la"]);
        assert_eq!(
            (e.dyno.as_str(), e.command.as_deref()),
            ("web.3", Some("ls -la"))
        );
        assert_eq!(
            p(&["--app", "abc", "--status"]).unwrap(),
            Action::Status { app: "abc".into() }
        );
    }

    #[test]
    fn help_needs_no_app() {
        match p(&["--help"]).unwrap() {
            Action::Help(text) => {
                assert!(
                    text.contains("--app")
                        && text.contains("--pipe")
                        && text.contains("--enable-exec"),
                    "{text}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_input_is_refused_before_any_api_call() {
        for bad in [
            &[][..],
            &["--dyno", "web.1"],
            &["--app", "Bad_App"],
            &["--app", "ab"],
            &["--app", "abc", "--dyno", "web"],
            &["--app", "abc", "--dyno", "web.1;rm -rf /"],
            &["--app", "abc", "--dyno", "web-848cd4f64d-pvpr2;id"],
            &["--app", "abc", "--dyno", "Web-848cd4f64d-pvpr2"],
            &["--app", "abc", "--dyno", "web-"],
            &["--app", "abc", "--pipe"],
            &["--app", "abc", "--pipe", " "],
            &["--app", "abc", "--status", "--interactive"],
            &["--app", "abc", "--frobnicate"],
            &["--app", "abc", "--pipe", "cat", "--", "ls"],
        ] {
            let e = p(bad).unwrap_err();
            assert!(e.0.starts_with("psexec: "), "{bad:?}: {e}");
        }
        assert!(validate_app("01234567-89ab-cdef-0123-456789abcdef").is_ok());
        assert!(is_one_off("run.1234") && is_one_off("release.1") && !is_one_off("web.1"));
    }
}

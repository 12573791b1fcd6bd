//! The ssh backend's command line: the connection command (`ssh $SSH_URI -i $SSH_PRIVATE_KEY`,
//! variables already expanded) followed by the client's arguments, read the way OpenSSH reads
//! it: options may come before and after the destination; the first word after the
//! destination that is not an option starts the remote command, whose words are joined
//! with single spaces (OpenSSH does the same; quoting is the remote shell's business).
//!
//! Options: `-i KEY` (a key file path, or the key's PEM text itself when an `envvar:` secret
//! was expanded into it), `-p PORT`, `-l USER`, `-t` (accepted: terminals follow the session
//! mode), `-T` (never allocate a PTY), `-q`/`-v` (accepted, no effect), `-o Name=value` for
//! `Port`, `User`, `IdentityFile`, `ConnectTimeout`, `ServerAliveInterval`,
//! `ServerAliveCountMax`, `RequestTTY=no` (others are refused, so a connection does not
//! believe an option like `StrictHostKeyChecking=no` took effect). `--` ends the options.
//! Destinations: `user@host`, `host`, `ssh://[user@]host[:port]`, with `[v6]` literals.

use std::time::Duration;

/// A bad command line. Shown to the user as is; the session exits 2.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("ssh: {0}")]
pub struct ArgsError(pub String);

/// The parsed command line. `identity` may hold key text: never log it (`Debug` redacts it).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SshArgs {
    pub user: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub identity: Option<String>,
    /// The remote command, words joined by spaces; `None` for a shell.
    pub command: Option<String>,
    /// `-T` or `RequestTTY=no`.
    pub no_pty: bool,
    pub connect_timeout: Option<Duration>,
    pub keepalive_interval: Option<Duration>,
    pub keepalive_max: Option<usize>,
}

impl std::fmt::Debug for SshArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshArgs")
            .field("user", &self.user)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("identity", &self.identity.as_ref().map(|_| "<set>"))
            .field("command", &self.command.as_ref().map(String::len))
            .field("no_pty", &self.no_pty)
            .finish()
    }
}

/// Parses `words` (everything after `ssh`) as one command line, all of it the connection's.
pub fn parse(words: &[String]) -> Result<SshArgs, ArgsError> {
    parse_session(words, None, &[])
}

/// Which settings the connection fixed; a client may not give them again.
#[derive(Clone, Copy, Debug, Default)]
struct Fixed {
    user: bool,
    port: bool,
}

/// Parses a session's command line: the connection's words (variables expanded), then its
/// `SSH_URI` destination when its words name none, then the client's words.
///
/// OpenSSH keeps the first value of an option, and so does this parser: the connection's
/// `-l`, `-p`, `-o User=`/`Port=` and its destination win. A client may not give an option the
/// connection already set (refused, rather than silently ignored, so the user sees why), may
/// never name a key (`-i`, `-o IdentityFile=`: a key is the connection's secret and a path
/// would make the agent read any file), and when the connection names a destination the
/// client's first plain word starts the remote command instead of naming another host.
pub fn parse_session(
    connection: &[String],
    ssh_uri: Option<&str>,
    client: &[String],
) -> Result<SshArgs, ArgsError> {
    let mut p = Parser::default();
    p.feed(connection, false)?;
    if p.destination.is_none()
        && let Some(uri) = ssh_uri.filter(|u| !u.trim().is_empty())
    {
        p.destination = Some(uri.trim().to_owned());
    }
    let fixed = Fixed {
        user: p.out.user.is_some() || p.destination.as_deref().is_some_and(names_user),
        port: p.out.port.is_some() || p.destination.as_deref().is_some_and(names_port),
    };
    p.fixed = fixed;
    p.feed(client, true)?;
    let Parser {
        mut out,
        destination,
        command,
        ..
    } = p;
    if let Some(dest) = destination {
        apply_destination(&mut out, &dest)?;
    }
    if !command.is_empty() {
        out.command = Some(command.join(" "));
    }
    Ok(out)
}

/// Whether a destination names a login user (`user@host`, `ssh://user@host`).
fn names_user(dest: &str) -> bool {
    let mut probe = SshArgs::default();
    apply_destination(&mut probe, dest).is_ok() && probe.user.is_some()
}

/// Whether a destination names a port (`ssh://host:port`).
fn names_port(dest: &str) -> bool {
    let mut probe = SshArgs::default();
    apply_destination(&mut probe, dest).is_ok() && probe.port.is_some()
}

#[derive(Default)]
struct Parser {
    out: SshArgs,
    destination: Option<String>,
    command: Vec<String>,
    fixed: Fixed,
}

impl Parser {
    /// Reads `words`; `client` marks the user's words, which may not override the connection.
    fn feed(&mut self, words: &[String], client: bool) -> Result<(), ArgsError> {
        let mut it = words.iter().map(String::as_str).peekable();
        while let Some(word) = it.next() {
            if !self.command.is_empty() {
                self.command.push(word.to_owned());
                continue;
            }
            if word == "--" {
                if self.destination.is_none() {
                    let Some(dest) = it.next() else { break };
                    self.set_destination(dest, client)?;
                }
                self.command.extend(it.by_ref().map(str::to_owned));
                break;
            }
            if let Some(opts) = word.strip_prefix('-').filter(|o| !o.is_empty()) {
                for (i, flag) in opts.char_indices() {
                    let attached = opts.get(i + flag.len_utf8()..).unwrap_or_default();
                    let mut value = || -> Result<String, ArgsError> {
                        if !attached.is_empty() {
                            Ok(attached.to_owned())
                        } else {
                            it.next()
                                .map(str::to_owned)
                                .ok_or_else(|| ArgsError(format!("option -{flag} needs a value")))
                        }
                    };
                    match flag {
                        'i' => {
                            let v = value()?;
                            self.identity(v, client)?;
                            break;
                        }
                        'p' => {
                            let v = parse_port(&value()?)?;
                            self.port(v, client, "-p")?;
                            break;
                        }
                        'l' => {
                            let v = value()?;
                            self.user(v, client, "-l")?;
                            break;
                        }
                        'o' => {
                            let v = value()?;
                            self.option(&v, client)?;
                            break;
                        }
                        'T' => self.out.no_pty = true,
                        't' | 'q' | 'v' => {}
                        other => {
                            return Err(ArgsError(format!(
                                "unsupported option -{other}; supported: -i KEY, -p PORT, -l USER, -o NAME=VALUE, -t, -T"
                            )));
                        }
                    }
                }
                continue;
            }
            if self.destination.is_none() {
                self.set_destination(word, client)?;
            } else {
                self.command.push(word.to_owned());
            }
        }
        Ok(())
    }

    fn set_destination(&mut self, dest: &str, client: bool) -> Result<(), ArgsError> {
        if client {
            // The connection left the destination open on purpose; it may still have fixed
            // the login user or port, which the destination may then not name.
            if self.fixed.user && names_user(dest) {
                return Err(fixed_by_connection("the login user (user@host)"));
            }
            if self.fixed.port && names_port(dest) {
                return Err(fixed_by_connection("the port (ssh://host:port)"));
            }
        }
        self.destination = Some(dest.to_owned());
        Ok(())
    }

    fn identity(&mut self, value: String, client: bool) -> Result<(), ArgsError> {
        if client {
            return Err(ArgsError(
                "the private key is the connection's: a user may not pass -i or -o IdentityFile; an administrator sets SSH_PRIVATE_KEY (or -i) on the connection".into(),
            ));
        }
        self.out.identity.get_or_insert(value);
        Ok(())
    }

    fn user(&mut self, value: String, client: bool, how: &str) -> Result<(), ArgsError> {
        if client && self.fixed.user {
            return Err(fixed_by_connection(&format!("the login user ({how})")));
        }
        self.out.user.get_or_insert(value);
        Ok(())
    }

    fn port(&mut self, value: u16, client: bool, how: &str) -> Result<(), ArgsError> {
        if client && self.fixed.port {
            return Err(fixed_by_connection(&format!("the port ({how})")));
        }
        self.out.port.get_or_insert(value);
        Ok(())
    }

    fn option(&mut self, option: &str, client: bool) -> Result<(), ArgsError> {
        let (name, value) = option
            .split_once('=')
            .or_else(|| option.split_once(' '))
            .ok_or_else(|| ArgsError(format!("option -o {option:?} needs NAME=VALUE")))?;
        let secs = |v: &str| {
            v.trim()
                .parse::<u64>()
                .map_err(|_| ArgsError(format!("option {name} needs a number of seconds")))
        };
        let out = &mut self.out;
        match name.trim().to_ascii_lowercase().as_str() {
            "port" => {
                let port = parse_port(value.trim())?;
                return self.port(port, client, "-o Port");
            }
            "user" => return self.user(value.trim().to_owned(), client, "-o User"),
            "identityfile" => return self.identity(value.trim().to_owned(), client),
            "connecttimeout" => {
                out.connect_timeout
                    .get_or_insert(Duration::from_secs(secs(value)?));
            }
            "serveraliveinterval" => {
                out.keepalive_interval
                    .get_or_insert(Duration::from_secs(secs(value)?));
            }
            "serveralivecountmax" => {
                out.keepalive_max
                    .get_or_insert(usize::try_from(secs(value)?).unwrap_or(usize::MAX));
            }
            "requesttty" => out.no_pty |= value.trim().eq_ignore_ascii_case("no"),
            other => {
                return Err(ArgsError(format!(
                    "unsupported option -o {other}; host keys are always verified (SSH_KNOWN_HOSTS, SSH_HOST_KEY or ~/.ssh/known_hosts)"
                )));
            }
        }
        Ok(())
    }
}

fn fixed_by_connection(what: &str) -> ArgsError {
    ArgsError(format!(
        "{what} is set by the connection and cannot be given again; remove it from your arguments"
    ))
}

/// An SSH URI fit for messages: its password, if any, replaced by `***`.
fn redacted(url: &url::Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() {
        let _ = shown.set_password(Some("***"));
    }
    shown.to_string()
}

/// Fills user, host and port from a destination.
pub fn apply_destination(out: &mut SshArgs, dest: &str) -> Result<(), ArgsError> {
    if dest.starts_with("ssh://") {
        // Error texts never echo the URI as given: it may hold a password (which is not used).
        let url = url::Url::parse(dest)
            .map_err(|e| ArgsError(format!("invalid SSH URI (ssh://…): {e}")))?;
        let shown = redacted(&url);
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| ArgsError(format!("the SSH URI {shown} has no host")))?;
        out.host = Some(
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
        );
        if !url.username().is_empty() && out.user.is_none() {
            out.user = Some(
                percent_decode(url.username())
                    .ok_or_else(|| ArgsError(format!("invalid user in {shown}")))?,
            );
        }
        if let Some(port) = url.port() {
            out.port.get_or_insert(port);
        }
        if !matches!(url.path(), "" | "/") {
            return Err(ArgsError(format!(
                "the SSH URI {shown} has a path; use ssh://user@host:port"
            )));
        }
        return Ok(());
    }
    let (user, host) = match dest.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, dest),
    };
    if let Some(u) = user.filter(|u| !u.is_empty()) {
        out.user.get_or_insert_with(|| u.to_owned());
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains(['/', ' ']) {
        return Err(ArgsError(format!("invalid SSH destination {dest:?}")));
    }
    out.host = Some(host.to_owned());
    Ok(())
}

fn percent_decode(s: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(s.len());
    let mut it = s.bytes();
    while let Some(b) = it.next() {
        if b == b'%' {
            let hi = char::from(it.next()?).to_digit(16)?;
            let lo = char::from(it.next()?).to_digit(16)?;
            bytes.push(u8::try_from(hi * 16 + lo).ok()?);
        } else {
            bytes.push(b);
        }
    }
    String::from_utf8(bytes).ok()
}

fn parse_port(s: &str) -> Result<u16, ArgsError> {
    s.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| ArgsError(format!("invalid port {s:?}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn p(words: &[&str]) -> Result<SshArgs, ArgsError> {
        parse(&words.iter().map(|w| (*w).to_owned()).collect::<Vec<_>>())
    }

    #[test]
    fn errors_never_echo_a_password_from_the_uri() {
        for dest in [
            "ssh://u:hunter2@db.example.com:22/some/path",
            "ssh://u:hunter2@:22",
            "ssh://u:hunter2@db.example.com:99999",
        ] {
            let mut out = SshArgs::default();
            let e = apply_destination(&mut out, dest).unwrap_err();
            assert!(!e.0.contains("hunter2"), "{dest}: {}", e.0);
        }
        let mut out = SshArgs::default();
        let e = apply_destination(&mut out, "ssh://u:hunter2@h/p").unwrap_err();
        assert!(e.0.contains("ssh://u:***@h/p"), "{}", e.0);
    }

    #[test]
    fn options_around_the_destination_then_the_command() {
        let a = p(&[
            "ssh://deploy@db.example.com:2222",
            "-i",
            "/k",
            "ls",
            "-la",
            "/tmp",
        ])
        .unwrap();
        assert_eq!(a.user.as_deref(), Some("deploy"));
        assert_eq!(a.host.as_deref(), Some("db.example.com"));
        assert_eq!(a.port, Some(2222));
        assert_eq!(a.identity.as_deref(), Some("/k"));
        assert_eq!(a.command.as_deref(), Some("ls -la /tmp"));

        let a = p(&["-p2200", "root@10.0.0.1", "-i/k", "-T"]).unwrap();
        assert_eq!(a.port, Some(2200));
        assert_eq!(a.user.as_deref(), Some("root"));
        assert_eq!(a.identity.as_deref(), Some("/k"));
        assert!(a.no_pty);
        assert_eq!(a.command, None);

        let a = p(&["-o", "Port=2022", "-l", "me", "[::1]", "--", "-x", "y"]).unwrap();
        assert_eq!(
            (a.port, a.user.as_deref(), a.host.as_deref()),
            (Some(2022), Some("me"), Some("::1"))
        );
        assert_eq!(a.command.as_deref(), Some("-x y"));
        let a = p(&["ssh://[::1]:23"]).unwrap();
        assert_eq!((a.host.as_deref(), a.port), (Some("::1"), Some(23)));
    }

    #[test]
    fn pem_text_is_a_single_identity_word_and_is_not_printed() {
        let pem = "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n";
        let a = p(&["u@h", "-i", pem]).unwrap();
        assert_eq!(a.identity.as_deref(), Some(pem));
        assert!(!format!("{a:?}").contains("abc"));
    }

    #[test]
    fn the_first_value_wins_and_users_cannot_override_the_connection() {
        let w = |s: &[&str]| s.iter().map(|w| (*w).to_owned()).collect::<Vec<_>>();
        let a = p(&["-p", "2200", "-p", "22", "-l", "a", "-o", "User=b", "h"]).unwrap();
        assert_eq!((a.port, a.user.as_deref()), (Some(2200), Some("a")));
        let conn = w(&["u@h", "-p", "2200"]);
        for client in [
            &["-l", "root"][..],
            &["-o", "User=root"],
            &["-p", "22"],
            &["-oPort=22"],
            &["-i", "/etc/passwd"],
            &["-o", "IdentityFile=/k"],
        ] {
            assert!(
                parse_session(&conn, None, &w(client)).is_err(),
                "{client:?}"
            );
        }
        // With SSH_URI as the destination the user's first word is a command.
        let a = parse_session(&[], Some("ssh://u@h:2"), &w(&["other@host", "x"])).unwrap();
        assert_eq!(a.host.as_deref(), Some("h"));
        assert_eq!(a.command.as_deref(), Some("other@host x"));
        // Gaps the connection leaves open may be filled.
        let a = parse_session(&w(&["-i", "/k"]), None, &w(&["-p", "2", "me@h2"])).unwrap();
        assert_eq!((a.port, a.user.as_deref()), (Some(2), Some("me")));
    }

    #[test]
    fn refuses_what_it_cannot_honour() {
        assert!(p(&["-o", "StrictHostKeyChecking=no", "u@h"]).is_err());
        assert!(p(&["-X", "u@h"]).is_err());
        assert!(p(&["-p", "0", "u@h"]).is_err());
        assert!(p(&["-p"]).is_err());
        assert!(p(&["ssh://u@h/path"]).is_err());
        assert!(p(&["u@"]).is_err());
    }
}

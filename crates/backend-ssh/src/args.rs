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

/// Parses `words` (everything after `ssh`).
pub fn parse(words: &[String]) -> Result<SshArgs, ArgsError> {
    let mut out = SshArgs::default();
    let mut destination: Option<&str> = None;
    let mut command: Vec<&str> = Vec::new();
    let mut it = words.iter().map(String::as_str).peekable();
    while let Some(word) = it.next() {
        if !command.is_empty() {
            command.push(word);
            continue;
        }
        if word == "--" {
            if destination.is_none() {
                let Some(dest) = it.next() else { break };
                destination = Some(dest);
            }
            command.extend(it.by_ref());
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
                        out.identity = Some(value()?);
                        break;
                    }
                    'p' => {
                        out.port = Some(parse_port(&value()?)?);
                        break;
                    }
                    'l' => {
                        out.user = Some(value()?);
                        break;
                    }
                    'o' => {
                        apply_option(&mut out, &value()?)?;
                        break;
                    }
                    'T' => out.no_pty = true,
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
        if destination.is_none() {
            destination = Some(word);
        } else {
            command.push(word);
        }
    }
    if let Some(dest) = destination {
        apply_destination(&mut out, dest)?;
    }
    if !command.is_empty() {
        out.command = Some(command.join(" "));
    }
    Ok(out)
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

fn apply_option(out: &mut SshArgs, option: &str) -> Result<(), ArgsError> {
    let (name, value) = option
        .split_once('=')
        .or_else(|| option.split_once(' '))
        .ok_or_else(|| ArgsError(format!("option -o {option:?} needs NAME=VALUE")))?;
    let secs = |v: &str| {
        v.trim()
            .parse::<u64>()
            .map_err(|_| ArgsError(format!("option {name} needs a number of seconds")))
    };
    match name.trim().to_ascii_lowercase().as_str() {
        "port" => out.port = Some(parse_port(value.trim())?),
        "user" => out.user = Some(value.trim().to_owned()),
        "identityfile" => out.identity = Some(value.trim().to_owned()),
        "connecttimeout" => out.connect_timeout = Some(Duration::from_secs(secs(value)?)),
        "serveraliveinterval" => out.keepalive_interval = Some(Duration::from_secs(secs(value)?)),
        "serveralivecountmax" => {
            out.keepalive_max = Some(usize::try_from(secs(value)?).unwrap_or(usize::MAX))
        }
        "requesttty" => out.no_pty = value.trim().eq_ignore_ascii_case("no"),
        other => {
            return Err(ArgsError(format!(
                "unsupported option -o {other}; host keys are always verified (SSH_KNOWN_HOSTS, SSH_HOST_KEY or ~/.ssh/known_hosts)"
            )));
        }
    }
    Ok(())
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
    fn refuses_what_it_cannot_honour() {
        assert!(p(&["-o", "StrictHostKeyChecking=no", "u@h"]).is_err());
        assert!(p(&["-X", "u@h"]).is_err());
        assert!(p(&["-p", "0", "u@h"]).is_err());
        assert!(p(&["-p"]).is_err());
        assert!(p(&["ssh://u@h/path"]).is_err());
        assert!(p(&["u@"]).is_err());
    }
}

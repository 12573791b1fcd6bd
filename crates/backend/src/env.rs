//! The session environment: hoop's `envvar:`/`filesystem:` entries resolved into variables.
//!
//! Owns decoding the base64 values, the `system.agent.envs` substitution, `_envjson:`
//! references, writing `filesystem:` values to 0600 temp files (deleted when the
//! [`SessionEnv`] is dropped) and the merge order of hoop-gateway-protocol.md §2.6. It does not
//! decide which variables a process inherits from the agent: that is each backend's business.
//!
//! Values are secrets. Nothing here logs them, and `Debug` prints variable names only.
//!
//! Clients are only partly trusted (STYLE.md rule 17): they may send `envvar:` entries only,
//! never under a name in [`CLIENT_REFUSED_NAMES`] or [`CLIENT_REFUSED_PREFIXES`] (names that
//! make loaders, shells and interpreters run other code, and dynoagent's own policy names),
//! and, when the connection sets [`CLIENT_ENV_ALLOW_VAR`], only under the names it lists.
//! `$NAME` in a connection's command expands from connection and agent (`HOOP_*`) values only.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::Write as _;
use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use hoop_wire::spec::SYSTEM_AGENT_ENVS;

/// Secret-manager references the agent does not resolve (hoop's enterprise providers).
const UNSUPPORTED_REFERENCES: [&str; 3] = ["_aws:", "_vaultkv1:", "_vaultkv2:"];
const ENVJSON_REFERENCE: &str = "_envjson:";

/// The agent's own credentials: no connection may copy them into a session, whether by
/// `system.agent.envs` or by an `_envjson:` reference.
const AGENT_ONLY_VARS: [&str; 2] = ["HOOP_KEY", "HOOP_DSN"];

/// The connection variable that narrows which variables clients may send: a comma-separated
/// list of names (spaces ignored). Set but empty, clients may send none. Read only from the
/// connection; names in [`CLIENT_REFUSED_NAMES`] stay refused even when listed.
pub const CLIENT_ENV_ALLOW_VAR: &str = "DYNOAGENT_CLIENT_ENV";

/// Variable names a client may never set: each makes a loader, a shell, an interpreter or a
/// tool the connection runs load or execute code of the client's choosing, or is a policy,
/// key or identity variable that only the connection may set. Documented in docs/security.md.
pub const CLIENT_REFUSED_NAMES: &[&str] = &[
    // The dynamic loader and libc (glibc ignores these only for setuid programs).
    "GCONV_PATH",
    "GETCONF_DIR",
    "GLIBC_TUNABLES",
    "HOSTALIASES",
    "LOCALDOMAIN",
    "LOCPATH",
    "MALLOC_TRACE",
    "NIS_PATH",
    "NLSPATH",
    "RESOLV_HOST_CONF",
    "RES_OPTIONS",
    "TMPDIR",
    "TZDIR",
    // Where programs are found and which start-up files shells and tools read.
    "PATH",
    "HOME",
    "SHELL",
    "ENV",
    "BASH_ENV",
    "SHELLOPTS",
    "BASHOPTS",
    "PS4",
    "PROMPT_COMMAND",
    "IFS",
    "CDPATH",
    "GLOBIGNORE",
    "INPUTRC",
    "ZDOTDIR",
    "XDG_CONFIG_HOME",
    "XDG_CONFIG_DIRS",
    "XDG_DATA_HOME",
    "XDG_DATA_DIRS",
    // Programs that tools start on the user's behalf.
    "PAGER",
    "MANPAGER",
    "PSQL_PAGER",
    "PSQL_EDITOR",
    "PSQL_EDITOR_LINENUMBER_ARG",
    "PSQLRC",
    "PGSERVICEFILE",
    "PGSYSCONFDIR",
    "EDITOR",
    "VISUAL",
    "BROWSER",
    "LESSOPEN",
    "LESSCLOSE",
    "LESSKEY",
    "LESSKEYIN",
    "SYSTEMD_PAGER",
    "SSH_ASKPASS",
    "SUDO_ASKPASS",
    "MYSQL_HOME",
    // Interpreters and runtimes.
    "NODE_OPTIONS",
    "NODE_PATH",
    "NODE_REPL_EXTERNAL_MODULE",
    "PYTHONSTARTUP",
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONUSERBASE",
    "PYTHONINSPECT",
    "PYTHONBREAKPOINT",
    "PERL5OPT",
    "PERL5LIB",
    "PERLLIB",
    "PERL5DB",
    "RUBYOPT",
    "RUBYLIB",
    "RUBYSHELL",
    "IRBRC",
    "GEM_HOME",
    "GEM_PATH",
    "BUNDLE_GEMFILE",
    "JAVA_TOOL_OPTIONS",
    "_JAVA_OPTIONS",
    "JDK_JAVA_OPTIONS",
    "CLASSPATH",
    "PHPRC",
    "PHP_INI_SCAN_DIR",
    "LUA_INIT",
    "LUA_PATH",
    "LUA_CPATH",
    "R_PROFILE_USER",
    "R_ENVIRON_USER",
    // Policy, keys and identity: only the connection sets these.
    "HEROKU_API_KEY",
    "HEROKU_APPS",
    "HEROKU_SSH_KEY",
    "PSEXEC_AUTO_ENABLE",
    CLIENT_ENV_ALLOW_VAR,
];

/// Name prefixes a client may never use (same reasons as [`CLIENT_REFUSED_NAMES`]): the
/// loader's `LD_*` (and macOS's `DYLD_*`), bash's exported functions (`BASH_FUNC_*`), git's
/// hooks, helpers and config injection (`GIT_*`), Python and Node runtime switches, the ssh
/// backend's settings (`SSH_*`), hoop's and dynoagent's own variables (`HOOP_*`,
/// `DYNOAGENT_*`).
pub const CLIENT_REFUSED_PREFIXES: &[&str] = &[
    "LD_",
    "DYLD_",
    "BASH_FUNC_",
    "GIT_",
    "PYTHON",
    "NODE_",
    "SSH_",
    "HOOP_",
    "DYNOAGENT_",
];

/// Why a client variable name is refused, or `None` if the deny list allows it.
pub fn client_name_refusal(name: &str) -> Option<&'static str> {
    if CLIENT_REFUSED_NAMES.contains(&name) {
        return Some(
            "it can make the connection's programs load or run other code, or it is a setting only the connection may set",
        );
    }
    if CLIENT_REFUSED_PREFIXES.iter().any(|p| name.starts_with(p)) {
        return Some(
            "names with this prefix steer loaders, interpreters or the agent itself and only the connection may set them",
        );
    }
    None
}

/// Why the session environment could not be built. Messages name variables, never values.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvError {
    #[error("unknown environment variable type in {0:?}: expected envvar:NAME or filesystem:NAME")]
    UnknownType(String),
    #[error("invalid environment variable name in {0:?}")]
    InvalidName(String),
    #[error("environment variable {0} is not valid base64")]
    NotBase64(String),
    #[error(
        "environment variable {0} asks for the agent's own value (system.agent.envs), but the agent has no {0} set"
    )]
    MissingAgentVar(String),
    #[error("environment variable {name}: {reason}")]
    Reference { name: String, reason: String },
    #[error(
        "the connection asks for the agent's {0} (system.agent.envs or _envjson:), which is the agent's own key and never handed to a session; remove that variable from the connection"
    )]
    AgentOnly(String),
    #[error("cannot write the file for {name}: {reason}")]
    File { name: String, reason: String },
    #[error(
        "client variable {0} is refused: clients may send only envvar: values (hoop exec -e NAME=VALUE), not files; store files in the connection"
    )]
    ClientFile(String),
    #[error(
        "client variable {name} is refused: {reason}; remove -e {name}, or set it on the connection"
    )]
    ClientName { name: String, reason: &'static str },
    #[error(
        "client variable {0} is refused: this connection allows only the client variables listed in its DYNOAGENT_CLIENT_ENV; remove -e {0}, or ask an administrator to list it"
    )]
    ClientNotAllowed(String),
}

/// Resolved variables plus the files that back `filesystem:` entries.
#[derive(Default)]
pub struct SessionEnv {
    vars: BTreeMap<String, OsString>,
    files: Vec<PathBuf>,
    /// This session's private directory (0700) holding `files`, created on the first
    /// `filesystem:` entry and removed with the environment.
    dir: Option<PathBuf>,
    /// Names whose value came from the connection (the gateway's administrators), not from
    /// the client: only these may carry policy (allowlists, opt-ins).
    from_connection: std::collections::BTreeSet<String>,
    /// Every name the connection sent, whatever its kind or encoding (`filesystem:` entries
    /// and non-UTF-8 values too): a policy variable the connection set but that cannot be read
    /// as text must fail closed, not count as unset.
    named_by_connection: std::collections::BTreeSet<String>,
    /// Names whose value came from the client: never expanded into a command.
    from_client: std::collections::BTreeSet<String>,
    /// Names of the connection's `filesystem:` entries (their value is the file's path).
    connection_files: std::collections::BTreeSet<String>,
}

impl fmt::Debug for SessionEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionEnv")
            .field("names", &self.vars.keys().collect::<Vec<_>>())
            .field("files", &self.files.len())
            .finish()
    }
}

impl Drop for SessionEnv {
    fn drop(&mut self) {
        for path in &self.files {
            if let Err(e) = std::fs::remove_file(path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a session env file");
            }
        }
        if let Some(dir) = &self.dir
            && let Err(e) = std::fs::remove_dir(dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %dir.display(), error = %e, "cannot remove a session env directory");
        }
    }
}

impl SessionEnv {
    /// The value of a variable.
    pub fn get(&self, name: &str) -> Option<&OsStr> {
        self.vars.get(name).map(OsString::as_os_str)
    }

    /// The value of a variable as UTF-8 text.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(OsStr::to_str)
    }

    /// The value of a variable as UTF-8 text, only if the connection set it. Settings that
    /// widen what a session may do (opt-ins, allowlists) are read with this, so a client's
    /// `-e NAME=VALUE` cannot grant itself more.
    pub fn connection_str(&self, name: &str) -> Option<&str> {
        if self.from_connection.contains(name) {
            self.get_str(name)
        } else {
            None
        }
    }

    /// The value of a connection entry as UTF-8 text: an `envvar:` value, or the path of the
    /// file written for a `filesystem:` entry. Secrets that may be given either way (SSH keys,
    /// known_hosts) are read with this; never a client's value.
    pub fn connection_text_or_file(&self, name: &str) -> Option<&str> {
        if self.from_connection.contains(name) || self.connection_files.contains(name) {
            self.get_str(name)
        } else {
            None
        }
    }

    /// Sets a `filesystem:` entry as the connection would (tests): `path` is the file.
    pub fn set_file_from_connection(&mut self, name: &str, path: impl Into<OsString>) {
        self.set(name, path);
        self.connection_files.insert(name.to_owned());
        self.named_by_connection.insert(name.to_owned());
    }

    /// Whether the connection sent an entry of this name at all (any kind, any encoding).
    /// Policy readers use it to fail closed when [`SessionEnv::connection_str`] is `None`
    /// although the connection did name the variable (a `filesystem:` entry, bytes that are
    /// not UTF-8).
    pub fn named_by_connection(&self, name: &str) -> bool {
        self.named_by_connection.contains(name)
    }

    /// Sets a variable as the connection would (tests, and backends' own defaults).
    pub fn set_from_connection(&mut self, name: &str, value: impl Into<OsString>) {
        self.set(name, value);
        self.from_connection.insert(name.to_owned());
        self.named_by_connection.insert(name.to_owned());
    }

    /// Sets a variable as a client would (tests).
    pub fn set_from_client(&mut self, name: &str, value: impl Into<OsString>) {
        self.set(name, value);
        self.from_client.insert(name.to_owned());
    }

    /// Sets a variable unless it is already set.
    pub fn set_default(&mut self, name: &str, value: impl Into<OsString>) {
        self.vars
            .entry(name.to_owned())
            .or_insert_with(|| value.into());
    }

    /// Sets a variable as the agent does, replacing any value (it no longer counts as the
    /// connection's nor the client's).
    pub fn set(&mut self, name: &str, value: impl Into<OsString>) {
        self.vars.insert(name.to_owned(), value.into());
        self.from_connection.remove(name);
        self.from_client.remove(name);
        self.connection_files.remove(name);
    }

    /// All variables, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &OsStr)> {
        self.vars.iter().map(|(k, v)| (k.as_str(), v.as_os_str()))
    }

    /// The files written for `filesystem:` entries.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Expands `$NAME` and `${NAME}` in `text` where `NAME` is a variable set by the connection
    /// or by the agent (`HOOP_*` session variables). A client's `-e` value is never expanded:
    /// otherwise a user could fill a `$NAME` the connection leaves unset and so change the
    /// connection's command. Anything else (`$$`, `$1`, names the session does not define,
    /// client names) is left exactly as written, so a connection command like
    /// `bash -c 'read l; echo $l'` keeps working. hoop's agent failed on unknown names instead;
    /// passing them through is the friendlier, documented choice.
    pub fn expand(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(pos) = rest.find('$') {
            out.push_str(rest.get(..pos).unwrap_or_default());
            let after = rest.get(pos + 1..).unwrap_or_default();
            let (name, tail) = match after.strip_prefix('{') {
                Some(braced) => match braced.find('}') {
                    Some(end) => (
                        braced.get(..end).unwrap_or_default(),
                        braced.get(end + 1..).unwrap_or_default(),
                    ),
                    None => ("", after),
                },
                None => {
                    let end = after
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(after.len());
                    (
                        after.get(..end).unwrap_or_default(),
                        after.get(end..).unwrap_or_default(),
                    )
                }
            };
            match self
                .get_str(name)
                .filter(|_| !name.is_empty() && !self.from_client.contains(name))
            {
                Some(value) => {
                    out.push_str(value);
                    rest = tail;
                }
                None => {
                    out.push('$');
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        out
    }
}

/// The inputs of [`resolve`].
#[derive(Debug)]
pub struct EnvSources<'a> {
    /// The connection's entries (`AgentConnectionParams.EnvVars`), values base64.
    pub connection: &'a BTreeMap<String, String>,
    /// The client's entries (`terminal.envvars`), values base64. They never override
    /// connection entries.
    pub client: &'a BTreeMap<String, String>,
    /// Variables the agent sets last (`HOOP_SESSION_ID`, ...), plain text.
    pub session: &'a [(&'a str, String)],
    /// Where `filesystem:` files are written (a directory only the agent can read).
    pub file_dir: &'a Path,
}

/// Resolves the session environment. `agent_var` reads the agent's own environment; it is
/// consulted only for `system.agent.envs` and `_envjson:` values of connection entries, never
/// for client entries.
pub fn resolve(
    sources: &EnvSources<'_>,
    agent_var: &dyn Fn(&str) -> Option<OsString>,
) -> Result<SessionEnv, EnvError> {
    let mut env = SessionEnv::default();
    check_client_entries(sources)?;
    // Only connection entries (set by the gateway's administrators) may reach into the agent's
    // own environment. A client's value is taken literally: otherwise any user could read the
    // agent's secrets (`-e HOOP_KEY=system.agent.envs`).
    for (entries, trusted) in [(sources.connection, true), (sources.client, false)] {
        for (key, value) in entries {
            let (kind, name) = key
                .split_once(':')
                .ok_or_else(|| EnvError::UnknownType(key.clone()))?;
            if name.is_empty() || name.contains(['=', '\0']) {
                return Err(EnvError::InvalidName(key.clone()));
            }
            if trusted {
                env.named_by_connection.insert(name.to_owned());
            }
            if env.vars.contains_key(name) {
                continue;
            }
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(value.trim())
                .map_err(|_| EnvError::NotBase64(name.to_owned()))?;
            let decoded = if trusted {
                dereference(name, decoded, agent_var)?
            } else {
                decoded
            };
            match kind {
                "envvar" => {
                    env.vars
                        .insert(name.to_owned(), OsString::from_vec(decoded));
                    if trusted {
                        env.from_connection.insert(name.to_owned());
                    } else {
                        env.from_client.insert(name.to_owned());
                    }
                }
                "filesystem" => {
                    let file_error = |reason: String| EnvError::File {
                        name: name.to_owned(),
                        reason,
                    };
                    let dir = match &env.dir {
                        Some(dir) => dir.clone(),
                        None => {
                            let dir = private_session_dir(sources.file_dir).map_err(file_error)?;
                            env.dir = Some(dir.clone());
                            dir
                        }
                    };
                    let path = write_file(&dir, &decoded).map_err(|e| file_error(e.to_string()))?;
                    env.vars
                        .insert(name.to_owned(), path.clone().into_os_string());
                    env.files.push(path);
                    env.connection_files.insert(name.to_owned());
                }
                _ => return Err(EnvError::UnknownType(key.clone())),
            }
        }
    }
    for (name, value) in sources.session {
        env.set(name, value);
    }
    Ok(env)
}

/// Refuses client entries that are not plain `envvar:` values, that use a refused name, or
/// that the connection's [`CLIENT_ENV_ALLOW_VAR`] does not list. Checked before anything is
/// decoded or written, so a refused session leaves no file behind.
fn check_client_entries(sources: &EnvSources<'_>) -> Result<(), EnvError> {
    let allow: Option<Vec<String>> = sources
        .connection
        .get(&format!("envvar:{CLIENT_ENV_ALLOW_VAR}"))
        .map(|v| {
            // Undecodable: fail closed (an empty list allows nothing).
            let text = base64::engine::general_purpose::STANDARD
                .decode(v.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .unwrap_or_default();
            text.split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
                .collect()
        });
    let allow = allow.or_else(|| {
        // Named by the connection in another form (a file): also fail closed.
        sources
            .connection
            .contains_key(&format!("filesystem:{CLIENT_ENV_ALLOW_VAR}"))
            .then(Vec::new)
    });
    for key in sources.client.keys() {
        let (kind, name) = key
            .split_once(':')
            .ok_or_else(|| EnvError::UnknownType(key.clone()))?;
        if name.is_empty() || name.contains(['=', '\0']) {
            return Err(EnvError::InvalidName(key.clone()));
        }
        match kind {
            "envvar" => {}
            "filesystem" => return Err(EnvError::ClientFile(name.to_owned())),
            _ => return Err(EnvError::UnknownType(key.clone())),
        }
        if let Some(reason) = client_name_refusal(name) {
            return Err(EnvError::ClientName {
                name: name.to_owned(),
                reason,
            });
        }
        if let Some(allow) = &allow
            && !allow.iter().any(|a| a == name)
        {
            return Err(EnvError::ClientNotAllowed(name.to_owned()));
        }
    }
    Ok(())
}

fn dereference(
    name: &str,
    value: Vec<u8>,
    agent_var: &dyn Fn(&str) -> Option<OsString>,
) -> Result<Vec<u8>, EnvError> {
    if value == SYSTEM_AGENT_ENVS.as_bytes() {
        if AGENT_ONLY_VARS.contains(&name) {
            return Err(EnvError::AgentOnly(name.to_owned()));
        }
        return agent_var(name)
            .map(OsString::into_vec)
            .ok_or_else(|| EnvError::MissingAgentVar(name.to_owned()));
    }
    let reference = |reason: String| EnvError::Reference {
        name: name.to_owned(),
        reason,
    };
    if let Some(spec) = value.strip_prefix(ENVJSON_REFERENCE.as_bytes()) {
        // _envjson:<AGENT_VAR>:<key>: a key of a JSON object held in one of the agent's vars.
        let spec = std::str::from_utf8(spec)
            .map_err(|_| reference("malformed _envjson: reference".into()))?;
        let (var, key) = spec.split_once(':').ok_or_else(|| {
            reference("malformed _envjson: reference, expected _envjson:VAR:KEY".into())
        })?;
        if AGENT_ONLY_VARS.contains(&var) {
            return Err(EnvError::AgentOnly(var.to_owned()));
        }
        let raw = agent_var(var).ok_or_else(|| reference(format!("the agent has no {var} set")))?;
        let obj: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(raw.as_bytes())
                .map_err(|_| reference(format!("the agent's {var} is not a JSON object")))?;
        return match obj.get(key) {
            Some(serde_json::Value::String(s)) => Ok(s.clone().into_bytes()),
            Some(other) => Ok(other.to_string().into_bytes()),
            None => Err(reference(format!(
                "key {key:?} not found in the agent's {var}"
            ))),
        };
    }
    if UNSUPPORTED_REFERENCES
        .iter()
        .any(|p| value.starts_with(p.as_bytes()))
    {
        return Err(reference(
            "secret-manager references (_aws:, _vaultkv1:, _vaultkv2:) are not supported by dynoagent; store the value in the connection instead".into(),
        ));
    }
    Ok(value)
}

/// Creates a session's own directory under `base`, mode 0700, and checks what it relies on:
/// `base` is a real directory (not a symlink) that no other user can write to and that the
/// agent's user owns (so nobody else can swap the session directory), and the new directory is
/// the agent's, 0700. Another user who pre-created `base` (its default name under `/tmp` is
/// predictable) is refused instead of trusted.
fn private_session_dir(base: &Path) -> Result<PathBuf, String> {
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(base)
        .map_err(|e| format!("cannot create DYNOAGENT_ENV_DIR {}: {e}", base.display()))?;
    let dir = base.join(uuid::Uuid::new_v4().to_string());
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| {
            format!(
                "cannot create a session directory in {}: {e}",
                base.display()
            )
        })?;
    let checked = (|| {
        let base_meta = std::fs::symlink_metadata(base)
            .map_err(|e| format!("cannot inspect DYNOAGENT_ENV_DIR {}: {e}", base.display()))?;
        let meta = std::fs::symlink_metadata(&dir)
            .map_err(|e| format!("cannot inspect the session directory: {e}"))?;
        if !meta.is_dir() || meta.mode() & 0o777 != 0o700 {
            return Err(format!(
                "the session directory in {} is not a private directory (mode {:o})",
                base.display(),
                meta.mode() & 0o777
            ));
        }
        // The new directory is owned by the agent's user: the base must be too.
        if !base_meta.is_dir() || base_meta.uid() != meta.uid() || base_meta.mode() & 0o022 != 0 {
            return Err(format!(
                "DYNOAGENT_ENV_DIR {} must be a directory owned by the agent's user that no one else can write to (it is mode {:o}, owner uid {}); remove it or chmod 700 it",
                base.display(),
                base_meta.mode() & 0o777,
                base_meta.uid()
            ));
        }
        Ok(())
    })();
    if let Err(e) = checked {
        let _ = std::fs::remove_dir(&dir);
        return Err(e);
    }
    Ok(dir)
}

fn write_file(dir: &Path, content: &[u8]) -> std::io::Result<PathBuf> {
    let path = dir.join(format!("{}.envfs", uuid::Uuid::new_v4()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    if let Err(e) = f.write_all(content).and_then(|()| f.sync_all()) {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(path)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), b64(v)))
            .collect()
    }

    #[test]
    fn merges_in_hoop_order_and_writes_private_files() {
        let dir = tempfile::tempdir().unwrap();
        let connection = map(&[
            ("envvar:A", "conn"),
            ("filesystem:KEYFILE", "-----BEGIN KEY-----"),
            ("envvar:FROM_AGENT", SYSTEM_AGENT_ENVS),
        ]);
        let client = map(&[("envvar:A", "client"), ("envvar:B", "client-b")]);
        let session = [("HOOP_SESSION_ID", "s-1".to_owned())];
        let sources = EnvSources {
            connection: &connection,
            client: &client,
            session: &session,
            file_dir: dir.path(),
        };
        let agent = |name: &str| (name == "FROM_AGENT").then(|| OsString::from("agent-value"));
        let env = resolve(&sources, &agent).unwrap();
        assert_eq!(
            env.get_str("A"),
            Some("conn"),
            "client vars never override the connection"
        );
        assert_eq!(env.get_str("B"), Some("client-b"));
        assert_eq!(env.get_str("FROM_AGENT"), Some("agent-value"));
        assert_eq!(env.get_str("HOOP_SESSION_ID"), Some("s-1"));
        let path = PathBuf::from(env.get("KEYFILE").unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"-----BEGIN KEY-----");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(
            !format!("{env:?}").contains("conn"),
            "Debug must not print values"
        );
        drop(env);
        assert!(!path.exists(), "files are removed with the environment");
    }

    #[test]
    fn each_session_gets_its_own_private_directory() {
        use std::os::unix::fs::MetadataExt as _;
        let base = tempfile::tempdir().unwrap();
        let none = BTreeMap::new();
        let connection = map(&[("filesystem:A", "a"), ("filesystem:B", "b")]);
        let sources = EnvSources {
            connection: &connection,
            client: &none,
            session: &[],
            file_dir: base.path(),
        };
        let one = resolve(&sources, &|_| None).unwrap();
        let two = resolve(&sources, &|_| None).unwrap();
        let dir_of = |env: &SessionEnv, name: &str| {
            PathBuf::from(env.get(name).unwrap())
                .parent()
                .unwrap()
                .to_owned()
        };
        assert_eq!(dir_of(&one, "A"), dir_of(&one, "B"));
        assert_ne!(dir_of(&one, "A"), dir_of(&two, "A"));
        let dir = dir_of(&one, "A");
        let meta = std::fs::metadata(&dir).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o700);
        drop(one);
        assert!(
            !dir.exists(),
            "the session directory is removed with the env"
        );
        drop(two);

        // A base directory others can write to (or pre-created by another user) is refused.
        std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        match resolve(&sources, &|_| None) {
            Err(EnvError::File { reason, .. }) => {
                assert!(reason.contains("no one else can write"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(std::fs::read_dir(base.path()).unwrap().count(), 0);
    }

    #[test]
    fn refuses_bad_entries_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let none = BTreeMap::new();
        let cases: Vec<(BTreeMap<String, String>, EnvError)> = vec![
            (
                map(&[("secret:X", "v")]),
                EnvError::UnknownType("secret:X".into()),
            ),
            (
                map(&[("envvar:", "v")]),
                EnvError::InvalidName("envvar:".into()),
            ),
            (
                [("envvar:X".to_owned(), "%%%".to_owned())].into(),
                EnvError::NotBase64("X".into()),
            ),
            (
                map(&[("envvar:NOPE", SYSTEM_AGENT_ENVS)]),
                EnvError::MissingAgentVar("NOPE".into()),
            ),
        ];
        for (connection, want) in cases {
            let sources = EnvSources {
                connection: &connection,
                client: &none,
                session: &[],
                file_dir: dir.path(),
            };
            assert_eq!(resolve(&sources, &|_| None).unwrap_err(), want);
        }
    }

    #[test]
    fn client_values_never_reach_the_agents_environment() {
        let dir = tempfile::tempdir().unwrap();
        let connection = map(&[("envvar:FROM_CONN", "system.agent.envs")]);
        let client = map(&[
            ("envvar:AGENT_TOKEN", "system.agent.envs"),
            ("envvar:LEAK", "_envjson:SECRETS:db_url"),
        ]);
        let sources = EnvSources {
            connection: &connection,
            client: &client,
            session: &[],
            file_dir: dir.path(),
        };
        let agent = |n: &str| match n {
            "AGENT_TOKEN" => Some(OsString::from("grpc://a:secret@gw:8010")),
            "FROM_CONN" => Some(OsString::from("agent value")),
            "SECRETS" => Some(OsString::from(r#"{"db_url":"postgres://x"}"#)),
            _ => None,
        };
        let env = resolve(&sources, &agent).unwrap();
        // The connection may ask for the agent's value; the client gets its text literally.
        assert_eq!(env.get_str("FROM_CONN"), Some("agent value"));
        assert_eq!(env.get_str("AGENT_TOKEN"), Some("system.agent.envs"));
        assert_eq!(env.connection_str("FROM_CONN"), Some("agent value"));
        assert_eq!(
            env.connection_str("AGENT_TOKEN"),
            None,
            "a client value is not policy"
        );
        assert_eq!(env.get_str("LEAK"), Some("_envjson:SECRETS:db_url"));
    }

    #[test]
    fn clients_send_only_plain_values_under_allowed_names() {
        let dir = tempfile::tempdir().unwrap();
        let resolve_client = |connection: &BTreeMap<String, String>, client: &[(&str, &str)]| {
            let client = map(client);
            let sources = EnvSources {
                connection,
                client: &client,
                session: &[],
                file_dir: dir.path(),
            };
            resolve(&sources, &|_| None)
        };
        let none = BTreeMap::new();
        for name in [
            "LD_PRELOAD",
            "LD_AUDIT",
            "BASH_ENV",
            "ENV",
            "PATH",
            "PAGER",
            "NODE_OPTIONS",
            "PYTHONSTARTUP",
            "PYTHONPATH",
            "PERL5OPT",
            "RUBYOPT",
            "GIT_CONFIG_COUNT",
            "HOOP_KEY",
            "SSH_HOST_KEY",
            "DYNOAGENT_CLIENT_ENV",
        ] {
            let key = format!("envvar:{name}");
            match resolve_client(&none, &[(key.as_str(), "x")]) {
                Err(EnvError::ClientName { name: n, .. }) => assert_eq!(n, name),
                other => panic!("{name}: {other:?}"),
            }
        }
        assert_eq!(
            resolve_client(&none, &[("filesystem:CERT", "bytes")]).unwrap_err(),
            EnvError::ClientFile("CERT".into())
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "nothing written"
        );
        let env = resolve_client(&none, &[("envvar:TZ", "UTC")]).unwrap();
        assert_eq!(env.get_str("TZ"), Some("UTC"));

        let allow = map(&[("envvar:DYNOAGENT_CLIENT_ENV", " TZ ,LANG")]);
        assert!(resolve_client(&allow, &[("envvar:LANG", "C")]).is_ok());
        assert_eq!(
            resolve_client(&allow, &[("envvar:OTHER", "x")]).unwrap_err(),
            EnvError::ClientNotAllowed("OTHER".into())
        );
        let empty = map(&[("envvar:DYNOAGENT_CLIENT_ENV", "")]);
        assert!(resolve_client(&empty, &[("envvar:TZ", "UTC")]).is_err());
        assert!(resolve_client(&empty, &[]).is_ok());
        let file = map(&[("filesystem:DYNOAGENT_CLIENT_ENV", "TZ")]);
        assert!(
            resolve_client(&file, &[("envvar:TZ", "UTC")]).is_err(),
            "an allowlist in a file fails closed"
        );
        // A listed name that the deny list refuses stays refused.
        let wide = map(&[("envvar:DYNOAGENT_CLIENT_ENV", "LD_PRELOAD")]);
        assert!(matches!(
            resolve_client(&wide, &[("envvar:LD_PRELOAD", "x")]),
            Err(EnvError::ClientName { .. })
        ));
    }

    #[test]
    fn only_connection_and_agent_values_expand() {
        let mut env = SessionEnv::default();
        env.set_from_client("TARGET", "evil");
        env.set_from_connection("DB", "reports");
        env.set("HOOP_SESSION_ID", "s-1");
        assert_eq!(
            env.expand("$TARGET ${TARGET} $DB $HOOP_SESSION_ID"),
            "$TARGET ${TARGET} reports s-1"
        );
    }

    #[test]
    fn policy_names_given_as_files_are_visible_to_policy_readers() {
        let dir = tempfile::tempdir().unwrap();
        let connection = map(&[("filesystem:HEROKU_APPS", "app-one")]);
        let none = BTreeMap::new();
        let sources = EnvSources {
            connection: &connection,
            client: &none,
            session: &[],
            file_dir: dir.path(),
        };
        let env = resolve(&sources, &|_| None).unwrap();
        assert_eq!(env.connection_str("HEROKU_APPS"), None);
        assert!(env.named_by_connection("HEROKU_APPS"));
    }

    #[test]
    fn not_even_the_connection_can_copy_the_agents_own_key() {
        let dir = tempfile::tempdir().unwrap();
        let none = BTreeMap::new();
        let agent = |n: &str| match n {
            "HOOP_KEY" | "HOOP_DSN" => Some(OsString::from("grpc://a:hunter2@gw:8010")),
            _ => None,
        };
        for (key, value) in [
            ("envvar:HOOP_KEY", SYSTEM_AGENT_ENVS),
            ("envvar:HOOP_DSN", SYSTEM_AGENT_ENVS),
            ("envvar:X", "_envjson:HOOP_KEY:k"),
        ] {
            let connection = map(&[(key, value)]);
            let sources = EnvSources {
                connection: &connection,
                client: &none,
                session: &[],
                file_dir: dir.path(),
            };
            let e = resolve(&sources, &agent).unwrap_err();
            assert!(matches!(e, EnvError::AgentOnly(_)), "{key}: {e:?}");
            assert!(!e.to_string().contains("hunter2"));
        }
    }

    #[test]
    fn envjson_references_read_the_agents_json() {
        let dir = tempfile::tempdir().unwrap();
        let connection = map(&[("envvar:DB", "_envjson:SECRETS:db_url")]);
        let none = BTreeMap::new();
        let sources = EnvSources {
            connection: &connection,
            client: &none,
            session: &[],
            file_dir: dir.path(),
        };
        let agent =
            |n: &str| (n == "SECRETS").then(|| OsString::from(r#"{"db_url":"postgres://x"}"#));
        assert_eq!(
            resolve(&sources, &agent).unwrap().get_str("DB"),
            Some("postgres://x")
        );
    }

    #[test]
    fn expands_variables() {
        let mut env = SessionEnv::default();
        env.set("SSH_URI", "root@host");
        assert_eq!(
            env.expand("ssh $SSH_URI -p ${SSH_URI}x"),
            "ssh root@host -p root@hostx"
        );
        assert_eq!(
            env.expand("kill $$; echo $MISSING ${MISSING} $1 ${"),
            "kill $$; echo $MISSING ${MISSING} $1 ${"
        );
        assert_eq!(env.expand("cost: 5$"), "cost: 5$");
    }
}

//! The session environment: hoop's `envvar:`/`filesystem:` entries resolved into variables.
//!
//! Owns decoding the base64 values, the `system.agent.envs` substitution, `_envjson:`
//! references, writing `filesystem:` values to 0600 temp files (deleted when the
//! [`SessionEnv`] is dropped) and the merge order of hoop-gateway-protocol.md §2.6. It does not
//! decide which variables a process inherits from the agent: that is each backend's business.
//!
//! Values are secrets. Nothing here logs them, and `Debug` prints variable names only.

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
    #[error("cannot write the file for {name}: {reason}")]
    File { name: String, reason: String },
}

/// Resolved variables plus the files that back `filesystem:` entries.
#[derive(Default)]
pub struct SessionEnv {
    vars: BTreeMap<String, OsString>,
    files: Vec<PathBuf>,
    /// Names whose value came from the connection (the gateway's administrators), not from
    /// the client: only these may carry policy (allowlists, opt-ins).
    from_connection: std::collections::BTreeSet<String>,
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

    /// Sets a variable as the connection would (tests, and backends' own defaults).
    pub fn set_from_connection(&mut self, name: &str, value: impl Into<OsString>) {
        self.set(name, value);
        self.from_connection.insert(name.to_owned());
    }

    /// Sets a variable unless it is already set.
    pub fn set_default(&mut self, name: &str, value: impl Into<OsString>) {
        self.vars
            .entry(name.to_owned())
            .or_insert_with(|| value.into());
    }

    /// Sets a variable, replacing any value (it no longer counts as the connection's).
    pub fn set(&mut self, name: &str, value: impl Into<OsString>) {
        self.vars.insert(name.to_owned(), value.into());
        self.from_connection.remove(name);
    }

    /// All variables, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &OsStr)> {
        self.vars.iter().map(|(k, v)| (k.as_str(), v.as_os_str()))
    }

    /// The files written for `filesystem:` entries.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Expands `$NAME` and `${NAME}` in `text` where `NAME` is a session variable. Anything
    /// else (`$$`, `$1`, names the session does not define) is left exactly as written, so a
    /// connection command like `bash -c 'read l; echo $l'` keeps working. hoop's agent failed
    /// on unknown names instead; passing them through is the friendlier, documented choice.
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
            match self.get_str(name).filter(|_| !name.is_empty()) {
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
                    }
                }
                "filesystem" => {
                    let path =
                        write_file(sources.file_dir, &decoded).map_err(|e| EnvError::File {
                            name: name.to_owned(),
                            reason: e.to_string(),
                        })?;
                    env.vars
                        .insert(name.to_owned(), path.clone().into_os_string());
                    env.files.push(path);
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

fn dereference(
    name: &str,
    value: Vec<u8>,
    agent_var: &dyn Fn(&str) -> Option<OsString>,
) -> Result<Vec<u8>, EnvError> {
    if value == SYSTEM_AGENT_ENVS.as_bytes() {
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

fn write_file(dir: &Path, content: &[u8]) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
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
#[allow(clippy::unwrap_used, clippy::expect_used)]
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
            ("envvar:HOOP_KEY", "system.agent.envs"),
            ("envvar:LEAK", "_envjson:SECRETS:db_url"),
        ]);
        let sources = EnvSources {
            connection: &connection,
            client: &client,
            session: &[],
            file_dir: dir.path(),
        };
        let agent = |n: &str| match n {
            "HOOP_KEY" => Some(OsString::from("grpc://a:secret@gw:8010")),
            "FROM_CONN" => Some(OsString::from("agent value")),
            "SECRETS" => Some(OsString::from(r#"{"db_url":"postgres://x"}"#)),
            _ => None,
        };
        let env = resolve(&sources, &agent).unwrap();
        // The connection may ask for the agent's value; the client gets its text literally.
        assert_eq!(env.get_str("FROM_CONN"), Some("agent value"));
        assert_eq!(env.get_str("HOOP_KEY"), Some("system.agent.envs"));
        assert_eq!(env.connection_str("FROM_CONN"), Some("agent value"));
        assert_eq!(
            env.connection_str("HOOP_KEY"),
            None,
            "a client value is not policy"
        );
        assert_eq!(env.get_str("LEAK"), Some("_envjson:SECRETS:db_url"));
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

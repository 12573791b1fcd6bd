//! The Platform API and exec-manager objects dynoagent reads and writes. Only the fields it
//! uses are typed; unknown fields are ignored, as Heroku adds fields over time.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `GET /apps/{app}` (the fields the backends use).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct App {
    #[serde(default)]
    pub id: String,
    pub name: String,
    /// The generation's name (`cedar`, `fir`). Heroku sends a string under `version=3.sdk`
    /// and an object `{id, name}` under `version=3` (heroku-protocols.md §1.5); both decode
    /// here, and absent or null is `None` (treated as Cedar).
    #[serde(default, deserialize_with = "generation_name")]
    pub generation: Option<String>,
    #[serde(default)]
    pub stack: Option<NamedRef>,
    /// The app's space (`null` on the Common Runtime).
    #[serde(default)]
    pub space: Option<Space>,
}

impl App {
    /// Whether its one-off dynos attach over Heroku's SSH attach path (an `https://`
    /// `attach_url`): Fir apps and apps in Shield Private Spaces (heroku-protocols.md §3.9.1).
    pub fn attaches_over_ssh(&self) -> bool {
        self.generation.as_deref() == Some("fir") || self.space.as_ref().is_some_and(|s| s.shield)
    }
}

/// An app's space: `{id, name, shield}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Space {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub shield: bool,
}

fn generation_name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Shape {
        Name(String),
        Object { name: String },
    }
    Ok(Option::<Shape>::deserialize(d)?.map(|shape| match shape {
        Shape::Name(name) | Shape::Object { name } => name,
    }))
}

/// A `{name}` reference such as `stack`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct NamedRef {
    #[serde(default)]
    pub name: String,
}

/// A dyno. `Debug` omits the command (it holds the user's arguments) and the `attach_url`
/// (its path is the rendezvous secret).
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Dyno {
    #[serde(default)]
    pub id: String,
    pub name: String,
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub command: String,
    #[serde(default)]
    pub size: Option<String>,
    #[serde(default)]
    pub attach_url: Option<String>,
}

impl std::fmt::Debug for Dyno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dyno")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("state", &self.state)
            .field("command", &format_args!("<{} bytes>", self.command.len()))
            .field("size", &self.size)
            .field(
                "attach_url",
                &self.attach_url.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// The body of `POST /apps/{app}/dynos`. `None` fields are left out, as the CLI does. `Debug`
/// omits the command and the values of `env` (the user's arguments and `-e` values).
#[derive(Clone, Default, PartialEq, Serialize)]
pub struct CreateDyno {
    pub command: String,
    pub attach: bool,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub force_no_tty: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", rename = "type")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_to_live: Option<u64>,
}

impl std::fmt::Debug for CreateDyno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateDyno")
            .field("command", &format_args!("<{} bytes>", self.command.len()))
            .field("attach", &self.attach)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("force_no_tty", &self.force_no_tty)
            .field("size", &self.size)
            .field("kind", &self.kind)
            .field("time_to_live", &self.time_to_live)
            .finish()
    }
}

/// An app feature such as `runtime-heroku-exec`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Feature {
    #[serde(default)]
    pub name: String,
    pub enabled: bool,
}

/// Exec-manager's answer to `PUT /api/v2/{dyno}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct ExecCredentials {
    pub tunnel_host: String,
    pub client_user: String,
    pub proxy_public_key: String,
    #[serde(default)]
    pub dyno_ip: String,
}

/// An SSH key registered on the account (`/account/keys`, heroku-protocols.md §3.9.5).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct AccountKey {
    #[serde(default)]
    pub id: String,
    /// The OpenSSH public key line as uploaded.
    #[serde(default)]
    pub public_key: String,
    #[serde(default)]
    pub comment: String,
    #[serde(default)]
    pub fingerprint: String,
}

impl AccountKey {
    /// Whether this registered key is `public_key` (an OpenSSH public key line): the same type
    /// and base64 key field; comments do not matter.
    pub fn is(&self, public_key: &str) -> bool {
        let fields = |line: &str| {
            let mut f = line.split_whitespace();
            (f.next().map(str::to_owned), f.next().map(str::to_owned))
        };
        let (t, b) = fields(&self.public_key);
        t.is_some() && b.is_some() && (t, b) == fields(public_key)
    }
}

/// `POST /apps/{app}/dynos/{dyno}` (`run:inside`, heroku-protocols.md §3.10): only `command`
/// and `env`, as the CLI sends.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RunInside {
    pub command: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, serde_json::Value>,
}

/// One entry of exec-manager's `GET /api/v2`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct ExecReservation {
    pub dyno_name: String,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn generation_decodes_in_both_of_herokus_shapes() {
        let app = |generation: &str| -> App {
            serde_json::from_str(&format!(
                r#"{{"id":"1","name":"a","stack":{{"id":"2","name":"cnb"}},"space":null{generation}}}"#
            ))
            .unwrap()
        };
        // version=3: an object; version=3.sdk: a string; absent or null: unknown (Cedar).
        let object = app(r#","generation":{"id":"0b1","name":"fir"}"#);
        assert_eq!(object.generation.as_deref(), Some("fir"));
        assert_eq!(object.stack.unwrap().name, "cnb");
        assert_eq!(
            app(r#","generation":"cedar""#).generation.as_deref(),
            Some("cedar")
        );
        assert_eq!(app(r#","generation":null"#).generation, None);
        assert_eq!(app("").generation, None);
        // Any other shape is a decode error, not a silent "Cedar".
        assert!(serde_json::from_str::<App>(r#"{"name":"a","generation":7}"#).is_err());
    }

    #[test]
    fn debug_never_prints_commands_env_values_or_the_attach_url() {
        let dyno = Dyno {
            name: "run.1".into(),
            command: "rake secret-task".into(),
            attach_url: Some("rendezvous://rendezvous.runtime.heroku.com:5000/rv-secret".into()),
            ..Dyno::default()
        };
        let text = format!("{dyno:?}");
        assert!(text.contains("run.1"), "{text}");
        assert!(
            !text.contains("rv-secret") && !text.contains("secret-task"),
            "{text}"
        );
        let create = CreateDyno {
            command: "rake secret-task".into(),
            env: [("TOKEN".to_owned(), serde_json::Value::from("env-secret"))].into(),
            ..CreateDyno::default()
        };
        let text = format!("{create:?}");
        assert!(text.contains("TOKEN"), "{text}");
        assert!(
            !text.contains("env-secret") && !text.contains("secret-task"),
            "{text}"
        );
    }
}

//! The Rust shape of hoop's `AgentConnectionParams` and
//! `AISessionAnalyzerParams`, the Go field names they travel under, and a
//! `Debug` that never prints secrets (env var values, the GCP DLP
//! credentials, the analyzer API key).
//!
//! It deliberately does not read or write gob (`decode.rs` and `encode.rs`
//! do) and does not interpret the values (base64 env vars and JSON rules stay
//! as hoop sent them).

use std::collections::BTreeMap;
use std::fmt;

/// Go field names of `AISessionAnalyzerParams`, in declaration order
/// (the order of [`AiSessionAnalyzerParams::fields`]).
pub(crate) const AI_FIELD_NAMES: [&str; 9] = [
    "RuleName",
    "Provider",
    "APIURL",
    "APIKey",
    "Model",
    "CustomPrompt",
    "LowRiskAction",
    "MediumRiskAction",
    "HighRiskAction",
];

/// hoop's `agent.connection_params` spec value.
///
/// Field `N` below is Go's field `N` of `AgentConnectionParams`; gob matches
/// them by the Go name, which is given on each field. Absent (zero) Go
/// fields decode to the Rust default.
#[derive(Default, Clone, PartialEq, Eq)]
pub struct AgentConnectionParams {
    /// `ConnectionName`.
    pub connection_name: String,
    /// `ConnectionType`.
    pub connection_type: String,
    /// `ConnectionSubType`.
    pub connection_sub_type: String,
    /// `UserID`.
    pub user_id: String,
    /// `UserEmail`.
    pub user_email: String,
    /// `EnvVars` (`map[string]any` whose values are strings holding base64);
    /// keys look like `envvar:NAME` or `filesystem:NAME`. Values are secrets.
    pub env_vars: BTreeMap<String, String>,
    /// `CmdList`.
    pub cmd_list: Vec<String>,
    /// `ClientArgs`.
    pub client_args: Vec<String>,
    /// `ClientVerb`.
    pub client_verb: String,
    /// `ClientOrigin`.
    pub client_origin: String,
    /// `DlpProvider`.
    pub dlp_provider: String,
    /// `DlpMode`.
    pub dlp_mode: String,
    /// `DLPInfoTypes`.
    pub dlp_info_types: Vec<String>,
    /// `DlpGcpRawCredentialsJSON`. A secret.
    pub dlp_gcp_raw_credentials_json: String,
    /// `DlpPresidioAnalyzerURL`.
    pub dlp_presidio_analyzer_url: String,
    /// `DlpPresidioAnonymizerURL`.
    pub dlp_presidio_anonymizer_url: String,
    /// `DataMaskingEntityTypesData` (`json.RawMessage`, raw bytes).
    pub data_masking_entity_types_data: Vec<u8>,
    /// `GuardRailRules` (`json.RawMessage`, raw bytes).
    pub guard_rail_rules: Vec<u8>,
    /// `AnalyzerMetricsRules` (`json.RawMessage`, raw bytes).
    pub analyzer_metrics_rules: Vec<u8>,
    /// `AISessionAnalyzer` (`*AISessionAnalyzerParams`; `None` for a nil pointer).
    pub ai_session_analyzer: Option<AiSessionAnalyzerParams>,
}

/// hoop's `AISessionAnalyzerParams`.
#[derive(Default, Clone, PartialEq, Eq)]
pub struct AiSessionAnalyzerParams {
    /// `RuleName`.
    pub rule_name: String,
    /// `Provider`.
    pub provider: String,
    /// `APIURL`.
    pub api_url: String,
    /// `APIKey`. A secret.
    pub api_key: String,
    /// `Model`.
    pub model: String,
    /// `CustomPrompt`.
    pub custom_prompt: String,
    /// `LowRiskAction`.
    pub low_risk_action: String,
    /// `MediumRiskAction`.
    pub medium_risk_action: String,
    /// `HighRiskAction`.
    pub high_risk_action: String,
}

impl AiSessionAnalyzerParams {
    /// The fields in Go declaration order (see [`AI_FIELD_NAMES`]).
    pub(crate) fn fields(&self) -> [&String; 9] {
        [
            &self.rule_name,
            &self.provider,
            &self.api_url,
            &self.api_key,
            &self.model,
            &self.custom_prompt,
            &self.low_risk_action,
            &self.medium_risk_action,
            &self.high_risk_action,
        ]
    }

    /// Mutable access in the same order as [`Self::fields`].
    pub(crate) fn fields_mut(&mut self) -> [&mut String; 9] {
        [
            &mut self.rule_name,
            &mut self.provider,
            &mut self.api_url,
            &mut self.api_key,
            &mut self.model,
            &mut self.custom_prompt,
            &mut self.low_risk_action,
            &mut self.medium_risk_action,
            &mut self.high_risk_action,
        ]
    }
}

/// Prints `<redacted>` for a non-empty secret and `""` for an empty one, so
/// logs show whether a secret was set but never what it is.
struct Secret<'a>(&'a str);

impl fmt::Debug for Secret<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("\"\"")
        } else {
            f.write_str("<redacted>")
        }
    }
}

/// Prints env var names with every value redacted.
struct EnvVarNames<'a>(&'a BTreeMap<String, String>);

impl fmt::Debug for EnvVarNames<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|k| (k, Secret("x"))))
            .finish()
    }
}

/// Prints JSON bytes as (lossy) text rather than a list of numbers.
struct RawJson<'a>(&'a [u8]);

impl fmt::Debug for RawJson<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&String::from_utf8_lossy(self.0), f)
    }
}

impl fmt::Debug for AgentConnectionParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Destructured so that a new field cannot be added without deciding
        // here whether it is a secret.
        let Self {
            connection_name,
            connection_type,
            connection_sub_type,
            user_id,
            user_email,
            env_vars,
            cmd_list,
            client_args,
            client_verb,
            client_origin,
            dlp_provider,
            dlp_mode,
            dlp_info_types,
            dlp_gcp_raw_credentials_json,
            dlp_presidio_analyzer_url,
            dlp_presidio_anonymizer_url,
            data_masking_entity_types_data,
            guard_rail_rules,
            analyzer_metrics_rules,
            ai_session_analyzer,
        } = self;
        f.debug_struct("AgentConnectionParams")
            .field("connection_name", connection_name)
            .field("connection_type", connection_type)
            .field("connection_sub_type", connection_sub_type)
            .field("user_id", user_id)
            .field("user_email", user_email)
            .field("env_vars", &EnvVarNames(env_vars))
            .field("cmd_list", cmd_list)
            .field("client_args", &format_args!("<{} args>", client_args.len()))
            .field("client_verb", client_verb)
            .field("client_origin", client_origin)
            .field("dlp_provider", dlp_provider)
            .field("dlp_mode", dlp_mode)
            .field("dlp_info_types", dlp_info_types)
            .field(
                "dlp_gcp_raw_credentials_json",
                &Secret(dlp_gcp_raw_credentials_json),
            )
            .field("dlp_presidio_analyzer_url", dlp_presidio_analyzer_url)
            .field("dlp_presidio_anonymizer_url", dlp_presidio_anonymizer_url)
            .field(
                "data_masking_entity_types_data",
                &RawJson(data_masking_entity_types_data),
            )
            .field("guard_rail_rules", &RawJson(guard_rail_rules))
            .field("analyzer_metrics_rules", &RawJson(analyzer_metrics_rules))
            .field("ai_session_analyzer", ai_session_analyzer)
            .finish()
    }
}

impl fmt::Debug for AiSessionAnalyzerParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            rule_name,
            provider,
            api_url,
            api_key,
            model,
            custom_prompt,
            low_risk_action,
            medium_risk_action,
            high_risk_action,
        } = self;
        f.debug_struct("AiSessionAnalyzerParams")
            .field("rule_name", rule_name)
            .field("provider", provider)
            .field("api_url", api_url)
            .field("api_key", &Secret(api_key))
            .field("model", model)
            .field("custom_prompt", custom_prompt)
            .field("low_risk_action", low_risk_action)
            .field("medium_risk_action", medium_risk_action)
            .field("high_risk_action", high_risk_action)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_secrets() {
        let p = AgentConnectionParams {
            connection_name: "psexec".into(),
            env_vars: BTreeMap::from([
                ("envvar:API_KEY".to_owned(), "c2VjcmV0LXZhbHVl".to_owned()),
                ("filesystem:KEY".to_owned(), "cGVtLWJvZHk=".to_owned()),
            ]),
            dlp_gcp_raw_credentials_json: "{\"private_key\":\"gcp-secret\"}".into(),
            ai_session_analyzer: Some(AiSessionAnalyzerParams {
                provider: "openai".into(),
                api_key: "sk-analyzer-secret".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        for rendered in [format!("{p:?}"), format!("{p:#?}")] {
            for secret in [
                "c2VjcmV0LXZhbHVl",
                "cGVtLWJvZHk=",
                "gcp-secret",
                "sk-analyzer-secret",
            ] {
                assert!(!rendered.contains(secret), "{secret} leaked: {rendered}");
            }
            for shown in [
                "psexec",
                "envvar:API_KEY",
                "filesystem:KEY",
                "openai",
                "<redacted>",
            ] {
                assert!(rendered.contains(shown), "{shown} missing: {rendered}");
            }
        }
    }

    #[test]
    fn debug_shows_unset_secrets_as_empty() {
        let rendered = format!("{:?}", AgentConnectionParams::default());
        assert!(rendered.contains("dlp_gcp_raw_credentials_json: \"\""));
        assert!(!rendered.contains("<redacted>"));
    }
}

//! A small client for the Heroku Platform API and Heroku Exec's exec-manager, covering what the
//! run and psexec backends need (heroku-protocols.md §1, §2, §6).
//!
//! Owns: the v3 `Accept` header, Bearer auth (Basic `app:key` for exec-manager), Heroku's error
//! bodies as typed [`ApiError`]s shown in Heroku's own words, timeouts on every call, retries
//! (409 and 429 on dyno create; 429 and 5xx on idempotent calls, honouring `Retry-After` and
//! `RateLimit-Remaining`), and configurable base URLs and extra TLS roots for the emulator.
//! The API key lives in [`ApiKey`], whose `Debug` and `Display` are redacted; no error message
//! is built from a request's headers. It does not know about sessions or rendezvous.

#![forbid(unsafe_code)]
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod model;

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use reqwest::{Method, StatusCode, header};
use serde::de::DeserializeOwned;
use url::Url;

pub use model::{
    AccountKey, App, CreateDyno, Dyno, ExecCredentials, ExecReservation, Feature, RunInside, Space,
};

/// Heroku's production Platform API.
pub const DEFAULT_API_URL: &str = "https://api.heroku.com";
/// Heroku's production exec-manager.
pub const DEFAULT_EXEC_URL: &str = "https://exec-manager.heroku.com";
const ACCEPT_V3: &str = "application/vnd.heroku+json; version=3";
/// The variant the CLI sends for `run:inside` (heroku-protocols.md §3.10).
const ACCEPT_RUN_INSIDE: &str = "application/vnd.heroku+json; version=3.run-inside";
const USER_AGENT: &str = concat!("dynoagent/", env!("CARGO_PKG_VERSION"));

/// A Heroku API key. Never printed.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key.
    pub fn new(key: impl Into<String>) -> ApiKey {
        ApiKey(key.into())
    }
    /// The key itself, for scanners that must look for it in text.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// Where the client talks to, and how patiently.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub api_url: Url,
    pub exec_url: Url,
    /// Extra trusted roots (PEM), e.g. the emulator's test CA.
    pub extra_roots_pem: Option<Vec<u8>>,
    /// Limit for one HTTP exchange.
    pub request_timeout: Duration,
    /// Attempts for a retryable failure, including the first.
    pub max_attempts: u32,
    /// First retry delay; doubled each time, capped at 8 s, unless the server says otherwise.
    pub base_delay: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            api_url: Url::parse(DEFAULT_API_URL).unwrap_or_else(|_| unreachable_url()),
            exec_url: Url::parse(DEFAULT_EXEC_URL).unwrap_or_else(|_| unreachable_url()),
            extra_roots_pem: None,
            request_timeout: Duration::from_secs(30),
            max_attempts: 3,
            base_delay: Duration::from_millis(500),
        }
    }
}

fn unreachable_url() -> Url {
    // Both constants parse; this keeps the crate free of `expect`.
    Url::parse("https://invalid.invalid").unwrap_or_else(|_| unreachable_url())
}

/// An error body from Heroku: `{"id": ..., "message": ..., "url": ...}`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct ApiError {
    #[serde(skip)]
    pub status: u16,
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub url: Option<String>,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Heroku's words first, as the CLI prints them, then the id and status for support.
        write!(
            f,
            "{} (Heroku error {}, HTTP {})",
            self.message.trim(),
            self.id,
            self.status
        )
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum HerokuError {
    #[error("{what}: {error}")]
    Api { what: String, error: ApiError },
    #[error("{what}: no answer from Heroku within {timeout:?}")]
    Timeout { what: String, timeout: Duration },
    #[error("{what}: cannot reach {host}: {reason}")]
    Network {
        what: String,
        host: String,
        reason: String,
    },
    #[error("{what}: unexpected answer from Heroku: {reason}")]
    Decode { what: String, reason: String },
    #[error("heroku client setup: {0}")]
    Setup(String),
}

impl HerokuError {
    /// The Heroku error, if the API answered with one.
    pub fn api(&self) -> Option<&ApiError> {
        match self {
            HerokuError::Api { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// How a call may be retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Retry {
    /// Safe to repeat: 429 and 5xx are retried.
    Idempotent,
    /// Dyno create: 409 (release not yet visible, as Heroku's CLI retries) and 429 (the rate
    /// limit refuses a request before doing anything, so nothing was created). Never 5xx: the
    /// dyno may exist.
    CreateDyno,
    /// Never repeated.
    Never,
}

/// The Platform API and exec-manager client for one API key.
#[derive(Clone, Debug)]
pub struct HerokuClient {
    http: reqwest::Client,
    config: ClientConfig,
    key: ApiKey,
}

impl HerokuClient {
    /// A client for `key` with `config`.
    pub fn new(config: ClientConfig, key: ApiKey) -> Result<HerokuClient, HerokuError> {
        let mut builder = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout.min(Duration::from_secs(10)));
        if let Some(pem) = &config.extra_roots_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| HerokuError::Setup(format!("invalid extra CA PEM: {e}")))?;
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder
            .build()
            .map_err(|e| HerokuError::Setup(e.to_string()))?;
        Ok(HerokuClient { http, config, key })
    }

    fn api_url(&self, path: &str) -> Result<Url, HerokuError> {
        self.config
            .api_url
            .join(path)
            .map_err(|e| HerokuError::Setup(format!("invalid API path {path:?}: {e}")))
    }

    /// `GET /apps/{app}`.
    pub async fn app(&self, app: &str) -> Result<App, HerokuError> {
        let url = self.api_url(&format!("/apps/{app}"))?;
        self.call(
            Method::GET,
            url,
            None,
            Auth::Bearer,
            Retry::Idempotent,
            &format!("looking up app {app}"),
        )
        .await
    }

    /// `run:inside`: runs `body.command` inside the running dyno `dyno` (Fir); the answer's
    /// `attach_url` is where to attach. Never retried on 5xx (the command may have started).
    pub async fn run_inside(
        &self,
        app: &str,
        dyno: &str,
        body: &RunInside,
    ) -> Result<Dyno, HerokuError> {
        let url = self.api_url(&format!("/apps/{app}/dynos/{dyno}"))?;
        let body = serde_json::to_value(body).map_err(|e| HerokuError::Setup(e.to_string()))?;
        self.call_as(
            ACCEPT_RUN_INSIDE,
            Method::POST,
            url,
            Some(body),
            Auth::Bearer,
            Retry::CreateDyno,
            &format!("running a command inside dyno {dyno} of {app}"),
        )
        .await
    }

    /// The SSH keys registered on the account.
    pub async fn account_keys(&self) -> Result<Vec<AccountKey>, HerokuError> {
        let url = self.api_url("/account/keys")?;
        self.call(
            Method::GET,
            url,
            None,
            Auth::Bearer,
            Retry::Idempotent,
            "listing the account's SSH keys",
        )
        .await
    }

    /// Registers an OpenSSH public key line on the account.
    pub async fn add_account_key(&self, public_key: &str) -> Result<AccountKey, HerokuError> {
        let url = self.api_url("/account/keys")?;
        self.call(
            Method::POST,
            url,
            Some(serde_json::json!({ "public_key": public_key })),
            Auth::Bearer,
            Retry::Never,
            "registering an SSH key on the account",
        )
        .await
    }

    /// Registers `public_key` unless the account already has it (same type and key; the
    /// comment does not matter). Returns the key and whether it was added now.
    pub async fn ensure_account_key(
        &self,
        public_key: &str,
    ) -> Result<(AccountKey, bool), HerokuError> {
        if let Some(k) = self
            .account_keys()
            .await?
            .into_iter()
            .find(|k| k.is(public_key))
        {
            return Ok((k, false));
        }
        Ok((self.add_account_key(public_key).await?, true))
    }

    /// `POST /apps/{app}/dynos`, retried on 409 (the release is not yet visible).
    pub async fn create_dyno(&self, app: &str, body: &CreateDyno) -> Result<Dyno, HerokuError> {
        let url = self.api_url(&format!("/apps/{app}/dynos"))?;
        let body = serde_json::to_value(body).map_err(|e| HerokuError::Setup(e.to_string()))?;
        self.call(
            Method::POST,
            url,
            Some(body),
            Auth::Bearer,
            Retry::CreateDyno,
            &format!("starting a one-off dyno on {app}"),
        )
        .await
    }

    /// `GET /apps/{app}/dynos`.
    pub async fn dynos(&self, app: &str) -> Result<Vec<Dyno>, HerokuError> {
        let url = self.api_url(&format!("/apps/{app}/dynos"))?;
        self.call(
            Method::GET,
            url,
            None,
            Auth::Bearer,
            Retry::Idempotent,
            &format!("listing dynos of {app}"),
        )
        .await
    }

    /// `GET /apps/{app}/dynos/{name}`.
    pub async fn dyno(&self, app: &str, name: &str) -> Result<Dyno, HerokuError> {
        let url = self.api_url(&format!("/apps/{app}/dynos/{name}"))?;
        self.call(
            Method::GET,
            url,
            None,
            Auth::Bearer,
            Retry::Idempotent,
            &format!("looking up dyno {name} of {app}"),
        )
        .await
    }

    /// `DELETE /apps/{app}/dynos/{name}`: stops a one-off dyno, restarts a formation dyno.
    pub async fn stop_dyno(&self, app: &str, name: &str) -> Result<(), HerokuError> {
        let url = self.api_url(&format!("/apps/{app}/dynos/{name}"))?;
        let _: serde_json::Value = self
            .call(
                Method::DELETE,
                url,
                None,
                Auth::Bearer,
                Retry::Idempotent,
                &format!("stopping dyno {name} of {app}"),
            )
            .await?;
        Ok(())
    }

    /// `GET /apps/{app}/features/{feature}`.
    pub async fn feature(&self, app: &str, feature: &str) -> Result<Feature, HerokuError> {
        let url = self.api_url(&format!("/apps/{app}/features/{feature}"))?;
        self.call(
            Method::GET,
            url,
            None,
            Auth::Bearer,
            Retry::Idempotent,
            &format!("reading feature {feature} of {app}"),
        )
        .await
    }

    /// `PATCH /apps/{app}/features/{feature}` with `{"enabled": enabled}`.
    pub async fn set_feature(
        &self,
        app: &str,
        feature: &str,
        enabled: bool,
    ) -> Result<Feature, HerokuError> {
        let url = self.api_url(&format!("/apps/{app}/features/{feature}"))?;
        let body = serde_json::json!({ "enabled": enabled });
        self.call(
            Method::PATCH,
            url,
            Some(body),
            Auth::Bearer,
            Retry::Idempotent,
            &format!("changing feature {feature} of {app}"),
        )
        .await
    }

    /// Exec-manager `PUT /api/v2/{dyno}` with `{client_key}` (Basic `app:key`).
    pub async fn exec_credentials(
        &self,
        app: &str,
        dyno: &str,
        client_key: &str,
    ) -> Result<ExecCredentials, HerokuError> {
        let url = self.exec_path(&format!("/api/v2/{dyno}"))?;
        let body = serde_json::json!({ "client_key": client_key });
        self.call(
            Method::PUT,
            url,
            Some(body),
            Auth::Basic(app),
            Retry::Never,
            &format!("establishing Heroku Exec credentials for {app} {dyno}"),
        )
        .await
    }

    /// Exec-manager `GET /api/v2`: the dynos with an exec agent.
    pub async fn exec_reservations(&self, app: &str) -> Result<Vec<ExecReservation>, HerokuError> {
        let url = self.exec_path("/api/v2")?;
        self.call(
            Method::GET,
            url,
            None,
            Auth::Basic(app),
            Retry::Idempotent,
            &format!("reading Heroku Exec status of {app}"),
        )
        .await
    }

    fn exec_path(&self, path: &str) -> Result<Url, HerokuError> {
        // Heroku's CLI keeps only the host:port of HEROKU_EXEC_URL and always speaks HTTPS.
        let mut url = self.config.exec_url.clone();
        if url.set_scheme("https").is_err() {
            return Err(HerokuError::Setup(
                "the exec-manager URL must be an https URL".into(),
            ));
        }
        url.set_path(path);
        url.set_query(None);
        Ok(url)
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: Option<serde_json::Value>,
        auth: Auth<'_>,
        retry: Retry,
        what: &str,
    ) -> Result<T, HerokuError> {
        self.call_as(ACCEPT_V3, method, url, body, auth, retry, what)
            .await
    }

    /// [`HerokuClient::call`] with another `Accept` variant.
    #[allow(clippy::too_many_arguments)]
    async fn call_as<T: DeserializeOwned>(
        &self,
        accept: &str,
        method: Method,
        url: Url,
        body: Option<serde_json::Value>,
        auth: Auth<'_>,
        retry: Retry,
        what: &str,
    ) -> Result<T, HerokuError> {
        let host = url.host_str().unwrap_or_default().to_owned();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let mut request = self
                .http
                .request(method.clone(), url.clone())
                .header(header::ACCEPT, accept);
            request = match auth {
                Auth::Bearer => request.bearer_auth(self.key.expose()),
                Auth::Basic(app) => {
                    let token = base64::engine::general_purpose::STANDARD
                        .encode(format!("{app}:{}", self.key.expose()));
                    request.header(header::AUTHORIZATION, format!("Basic {token}"))
                }
            };
            if let Some(body) = &body {
                request = request.json(body);
            }
            let outcome = request.send().await;
            let response = match outcome {
                Ok(r) => r,
                Err(e) if e.is_timeout() => {
                    return Err(HerokuError::Timeout {
                        what: what.to_owned(),
                        timeout: self.config.request_timeout,
                    });
                }
                Err(e) => {
                    // reqwest's message for a send error names the URL, never headers.
                    return Err(HerokuError::Network {
                        what: what.to_owned(),
                        host,
                        reason: error_chain(&e),
                    });
                }
            };
            let status = response.status();
            if status.is_success() {
                let bytes = response.bytes().await.map_err(|e| HerokuError::Network {
                    what: what.to_owned(),
                    host: host.clone(),
                    reason: error_chain(&e),
                })?;
                let bytes = if bytes.is_empty() {
                    &b"null"[..]
                } else {
                    &bytes[..]
                };
                return decode_json(bytes).map_err(|reason| HerokuError::Decode {
                    what: what.to_owned(),
                    reason,
                });
            }
            let delay = retry_delay(&response, retry, attempt, &self.config);
            let error = api_error(status, response).await;
            match delay {
                Some(delay) if attempt < self.config.max_attempts => {
                    tracing::warn!(what, status = status.as_u16(), id = %error.id, attempt, delay_ms = delay.as_millis() as u64, "heroku api call failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                _ => {
                    return Err(HerokuError::Api {
                        what: what.to_owned(),
                        error,
                    });
                }
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Auth<'a> {
    Bearer,
    Basic(&'a str),
}

fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    match serde_json::from_slice(bytes) {
        Ok(v) => Ok(v),
        // Heroku's SDK also accepts a JSON document encoded as a JSON string.
        Err(first) => match serde_json::from_slice::<String>(bytes) {
            Ok(inner) => serde_json::from_str(&inner).map_err(|e| e.to_string()),
            Err(_) => Err(first.to_string()),
        },
    }
}

async fn api_error(status: StatusCode, response: reqwest::Response) -> ApiError {
    let body = response.bytes().await.unwrap_or_default();
    let mut error = serde_json::from_slice::<ApiError>(&body).unwrap_or_else(|_| ApiError {
        status: 0,
        id: String::new(),
        message: String::from_utf8_lossy(body.get(..body.len().min(200)).unwrap_or_default())
            .trim()
            .to_owned(),
        url: None,
    });
    error.status = status.as_u16();
    if error.id.is_empty() {
        error.id = default_id(status).to_owned();
    }
    if error.message.is_empty() {
        error.message = status.canonical_reason().unwrap_or("error").to_owned();
    }
    error
}

fn default_id(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        409 => "conflict",
        422 => "invalid_params",
        429 => "rate_limit",
        _ => "server_error",
    }
}

/// The delay before retrying, or `None` when this failure is final.
fn retry_delay(
    response: &reqwest::Response,
    retry: Retry,
    attempt: u32,
    config: &ClientConfig,
) -> Option<Duration> {
    let status = response.status();
    let retryable = match retry {
        Retry::CreateDyno => {
            status == StatusCode::CONFLICT || status == StatusCode::TOO_MANY_REQUESTS
        }
        Retry::Idempotent => status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error(),
        Retry::Never => false,
    };
    if !retryable {
        return None;
    }
    let header_secs = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let exp = config
        .base_delay
        .saturating_mul(1 << (attempt.saturating_sub(1)).min(4))
        .min(Duration::from_secs(8));
    let jitter = exp.mul_f64(rand::random::<f64>() * 0.25);
    let mut delay = exp + jitter;
    if let Some(secs) = header_secs("retry-after") {
        delay = delay.max(Duration::from_secs(secs));
    } else if status == StatusCode::TOO_MANY_REQUESTS
        && header_secs("ratelimit-remaining") == Some(0)
    {
        // Heroku refills the pool continuously; wait at least a few seconds when it is empty.
        delay = delay.max(Duration::from_secs(2));
    }
    // A caller waits at most this long per retry; beyond it, report Heroku's answer.
    (delay <= Duration::from_secs(30)).then_some(delay)
}

/// Formats an error and its sources on one line.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

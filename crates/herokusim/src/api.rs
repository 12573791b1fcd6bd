//! The Platform API over plain HTTP (axum): Bearer auth, Heroku's error bodies, the
//! rate-limit pool, `RateLimit-Remaining` and `Request-Id` on every response, the endpoints the
//! CLI uses for `run`, `ps`, `ps:restart`, `features` and `ps:exec` gating, and the admin
//! endpoint for faults (`/__admin/faults`, no auth, not rate limited).
//!
//! It owns request validation and response shapes. Dyno processes and state transitions live
//! in `dynos.rs`; rendezvous and exec are other servers.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::dynos::{self, OneOffRequest, RestartScope};
use crate::faults::{Faults, take};
use crate::keys::{AccountKey, MAX_ACCOUNT_KEYS};
use crate::state::SharedRef;

/// The longest `time_to_live` the schema allows.
const MAX_TTL_SECS: u64 = 86_400;

/// A Heroku-style error response: `{id, message, url}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub id: &'static str,
    pub message: String,
    pub url: &'static str,
    pub retry_after: Option<u64>,
}

const ERRORS_URL: &str =
    "https://devcenter.heroku.com/articles/platform-api-reference#error-responses";
const RATE_LIMIT_URL: &str =
    "https://devcenter.heroku.com/articles/platform-api-reference#rate-limits";

impl ApiError {
    pub fn new(status: StatusCode, id: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            id,
            message: message.into(),
            url: ERRORS_URL,
            retry_after: None,
        }
    }

    fn app_not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "Couldn't find that app.",
        )
    }

    fn dyno_not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "Couldn't find that dyno.",
        )
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_params", message)
    }

    pub fn rate_limited(retry_after: u64) -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            id: "rate_limit",
            message: "Your account reached the API rate limit\nPlease wait a few minutes before making new requests".to_owned(),
            url: RATE_LIMIT_URL,
            retry_after: Some(retry_after.max(1)),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"id": self.id, "message": self.message, "url": self.url});
        let mut resp = (self.status, json_body(&body)).into_response();
        if let Some(secs) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

fn json_body(value: &Value) -> ([(header::HeaderName, &'static str); 1], String) {
    (
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
}

fn ok_json(status: StatusCode, value: &Value) -> Response {
    (status, json_body(value)).into_response()
}

type ApiResult = Result<Response, ApiError>;

/// The Platform API router (also answers the Particleboard `GET /account`).
pub(crate) fn router(shared: SharedRef) -> Router {
    Router::new()
        .route("/account", get(account))
        .route("/account/rate-limits", get(rate_limits))
        .route("/account/keys", get(list_keys).post(add_key))
        .route("/account/keys/{key}", get(get_key).delete(delete_key))
        .route("/apps/{app}", get(app_info))
        .route(
            "/apps/{app}/dynos",
            get(list_dynos).post(create_dyno).delete(restart_all),
        )
        .route(
            "/apps/{app}/dynos/{dyno}",
            get(get_dyno).delete(restart_dyno).post(run_inside),
        )
        .route(
            "/apps/{app}/formations/{process_type}",
            axum::routing::delete(restart_type),
        )
        .route("/apps/{app}/features", get(list_features))
        .route(
            "/apps/{app}/features/{feature}",
            get(get_feature).patch(patch_feature),
        )
        .route("/apps/{app}/config-vars", get(config_vars))
        .route("/apps/{app}/buildpack-installations", get(buildpacks))
        .route(
            "/__admin/faults",
            get(get_faults).post(set_faults).delete(clear_faults),
        )
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(shared.clone(), gate))
        .with_state(shared)
}

fn bearer_ok(headers: &HeaderMap, key: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|token| token.trim() == key)
}

/// Auth, faults and the rate-limit pool in front of every route; `RateLimit-Remaining` and
/// `Request-Id` on every response, errors included.
async fn gate(State(shared): State<SharedRef>, req: Request, next: Next) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let mut remaining_override = None;
    let resp = if path.starts_with("/__admin/") {
        next.run(req).await
    } else if !bearer_ok(req.headers(), &shared.config.api_key) {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Invalid credentials provided.",
        )
        .into_response()
    } else {
        let injected = {
            let mut f = shared.faults();
            if take(&mut f.rate_limited) {
                Some(ApiError::rate_limited(f.retry_after_secs))
            } else if take(&mut f.server_errors) {
                let status = StatusCode::from_u16(f.server_error_status)
                    .ok()
                    .filter(StatusCode::is_server_error)
                    .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                Some(ApiError::new(
                    status,
                    "internal_server_error",
                    "Internal server error (injected by herokusim).",
                ))
            } else {
                None
            }
        };
        if let Some(err) = injected {
            if err.status == StatusCode::TOO_MANY_REQUESTS {
                remaining_override = Some(0);
            }
            err.into_response()
        } else if path != "/account/rate-limits" && !shared.state().rate.take() {
            remaining_override = Some(0);
            ApiError::rate_limited(60).into_response()
        } else {
            next.run(req).await
        }
    };
    let mut resp = resp;
    let remaining = remaining_override.unwrap_or_else(|| shared.state().rate.remaining());
    tracing::debug!(%method, %path, status = resp.status().as_u16(), request_id = %request_id, "api request");
    let headers = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&remaining.to_string()) {
        headers.insert("ratelimit-remaining", v);
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        headers.insert("request-id", v);
    }
    resp
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "The requested API endpoint was not found. Are you using the right HTTP verb (i.e. `GET` vs. `POST`), and did you specify your intended version with the `Accept` header?",
    )
}

async fn account(State(shared): State<SharedRef>) -> Response {
    let now = crate::state::rfc3339(SystemTime::now());
    ok_json(
        StatusCode::OK,
        &json!({
            "id": shared.account_id,
            "email": shared.config.account_email,
            "name": "herokusim",
            "allow_tracking": false,
            "beta": false,
            "verified": true,
            "two_factor_authentication": false,
            "default_organization": null,
            "default_team": null,
            "delinquent_at": null,
            "suspended_at": null,
            "created_at": now,
            "updated_at": now,
            "last_login": now,
        }),
    )
}

fn key_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "Couldn't find that key.",
    )
}

async fn list_keys(State(shared): State<SharedRef>) -> Response {
    let st = shared.state();
    let list: Vec<Value> = st.account_keys.iter().map(AccountKey::to_json).collect();
    ok_json(StatusCode::OK, &Value::Array(list))
}

/// `POST /account/keys {public_key}` → 201 and the Key. Heroku's answers for a malformed or
/// duplicate key are [unverified] (heroku-protocols.md §3.9.5); herokusim answers both with 422
/// `invalid_params`, as it does for other bad input.
async fn add_key(State(shared): State<SharedRef>, body: Bytes) -> ApiResult {
    let uploaded = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| {
            v.get("public_key")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .ok_or_else(|| ApiError::invalid("Missing required params: public_key."))?;
    let key = AccountKey::parse(&uploaded).map_err(ApiError::invalid)?;
    let mut st = shared.state();
    if st
        .account_keys
        .iter()
        .any(|k| k.fingerprint == key.fingerprint)
    {
        return Err(ApiError::invalid(format!(
            "Key {} is already in use.",
            key.fingerprint
        )));
    }
    if st.account_keys.len() >= MAX_ACCOUNT_KEYS {
        return Err(ApiError::invalid(format!(
            "An account can have at most {MAX_ACCOUNT_KEYS} keys."
        )));
    }
    tracing::info!(fingerprint = %key.fingerprint, comment = %key.comment, "account key added");
    let json = key.to_json();
    st.account_keys.push(key);
    Ok(ok_json(StatusCode::CREATED, &json))
}

async fn get_key(State(shared): State<SharedRef>, Path(ident): Path<String>) -> ApiResult {
    let st = shared.state();
    let key = st
        .account_keys
        .iter()
        .find(|k| k.matches(&ident))
        .ok_or_else(key_not_found)?;
    Ok(ok_json(StatusCode::OK, &key.to_json()))
}

/// `DELETE /account/keys/{id_or_fingerprint}` → 200 and the deleted Key.
async fn delete_key(State(shared): State<SharedRef>, Path(ident): Path<String>) -> ApiResult {
    let mut st = shared.state();
    let i = st
        .account_keys
        .iter()
        .position(|k| k.matches(&ident))
        .ok_or_else(key_not_found)?;
    let key = st.account_keys.remove(i);
    tracing::info!(fingerprint = %key.fingerprint, comment = %key.comment, "account key removed");
    Ok(ok_json(StatusCode::OK, &key.to_json()))
}

async fn rate_limits(State(shared): State<SharedRef>) -> Response {
    let remaining = shared.state().rate.remaining();
    ok_json(StatusCode::OK, &json!({"remaining": remaining}))
}

async fn app_info(
    State(shared): State<SharedRef>,
    Path(app): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    // Heroku answers `generation` as a plain string under `version=3.sdk` (what the CLI
    // sends) and as an object `{id, name}` under the default `version=3`
    // (heroku-protocols.md §1.5). Other fields keep their shape.
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let sdk = accept.contains("version=3.sdk");
    tracing::debug!(accept, "app info");
    let st = shared.state();
    let app = st.apps.get(&app).ok_or_else(ApiError::app_not_found)?;
    let mut body = app.to_json(&shared.config.account_email, shared.account_id);
    if !sdk && let Some(generation) = body.get_mut("generation") {
        let name = generation.as_str().unwrap_or_default().to_owned();
        *generation = json!({"id": crate::state::generation_id(&name), "name": name});
    }
    Ok(ok_json(StatusCode::OK, &body))
}

async fn list_dynos(State(shared): State<SharedRef>, Path(app): Path<String>) -> ApiResult {
    let st = shared.state();
    let app = st.apps.get(&app).ok_or_else(ApiError::app_not_found)?;
    let list: Vec<Value> = app.dynos.values().map(|d| d.to_json(app)).collect();
    Ok(ok_json(StatusCode::OK, &Value::Array(list)))
}

async fn get_dyno(
    State(shared): State<SharedRef>,
    Path((app, dyno)): Path<(String, String)>,
) -> ApiResult {
    if take(&mut shared.faults().dyno_not_found_polls) {
        return Err(ApiError::dyno_not_found());
    }
    let st = shared.state();
    let app = st.apps.get(&app).ok_or_else(ApiError::app_not_found)?;
    let d = app
        .dynos
        .values()
        .find(|d| d.name == dyno || d.id.to_string() == dyno)
        .ok_or_else(ApiError::dyno_not_found)?;
    Ok(ok_json(StatusCode::OK, &d.to_json(app)))
}

fn app_exists(shared: &SharedRef, app: &str) -> Result<(), ApiError> {
    if shared.state().apps.contains_key(app) {
        Ok(())
    } else {
        Err(ApiError::app_not_found())
    }
}

/// The injected 409 of both dyno routes (the release is not yet visible to the runtime).
fn conflict() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "conflict",
        "The release is not yet available to the runtime. Please try again.",
    )
}

async fn create_dyno(
    State(shared): State<SharedRef>,
    Path(app): Path<String>,
    body: Bytes,
) -> ApiResult {
    app_exists(&shared, &app)?;
    {
        let mut f = shared.faults();
        if take(&mut f.create_conflicts) {
            return Err(conflict());
        }
        if take(&mut f.create_limit_errors) {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "cannot_run_above_limit",
                "Cannot run more than 1 Basic size dynos.",
            ));
        }
    }
    let req = parse_create(&body)?;
    let record = crate::CreatedDyno {
        app: app.clone(),
        command: req.command.clone(),
        time_to_live: req.time_to_live,
    };
    let json = dynos::create_one_off(&shared, &app, req).ok_or_else(ApiError::app_not_found)?;
    shared.state().created.push(record);
    let delay = shared.faults().create_response_delay_ms;
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    Ok(ok_json(StatusCode::CREATED, &json))
}

/// `POST /apps/{app}/dynos/{dyno}`: `heroku run:inside` (heroku-protocols.md §3.10). The CLI
/// sends `Accept: …version=3.run-inside` (the SDK `3.sdk`); any v3 variant is accepted. Body:
/// `command` and `env`; other fields are ignored as the CLI never sends them.
///
/// Refusals: a dyno that is not `up` or does not exist gets Heroku's 422 `invalid_params`. A
/// non-Fir app gets 422 too: `run:inside` is documented for Fir apps only, and what Heroku
/// answers for a Cedar app is [unverified] (herokusim's choice, worded to say why). The
/// injected 409 (`create_conflicts`) applies here as on create: the CLI retries it on both.
async fn run_inside(
    State(shared): State<SharedRef>,
    Path((app, dyno)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let fir = {
        let st = shared.state();
        let a = st.apps.get(&app).ok_or_else(ApiError::app_not_found)?;
        a.generation == crate::config::Generation::Fir
    };
    if take(&mut shared.faults().create_conflicts) {
        return Err(conflict());
    }
    if !fir {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_params",
            format!("run:inside is only available for Fir apps; {app} is a Cedar app."),
        ));
    }
    let req = parse_create(&body)?;
    let json = dynos::run_inside(&shared, &app, &dyno, req.command, req.env).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_params",
            format!("{dyno} is either not \"up\" or doesn't exist."),
        )
    })?;
    Ok(ok_json(StatusCode::OK, &json))
}

fn parse_create(body: &[u8]) -> Result<OneOffRequest, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("Invalid JSON in the request body: {e}"),
        )
    })?;
    let obj = value
        .as_object()
        .ok_or_else(|| ApiError::invalid("The request body must be a JSON object."))?;
    let command = match obj.get("command") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err(ApiError::invalid("Missing required params: command.")),
    };
    let flag = |name: &str| -> Result<Option<bool>, ApiError> {
        match obj.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(ApiError::invalid(format!("{name} must be a boolean."))),
        }
    };
    let string = |name: &str| -> Result<Option<String>, ApiError> {
        match obj.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ApiError::invalid(format!("{name} must be a string."))),
        }
    };
    let mut env = BTreeMap::new();
    match obj.get("env") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (k, v) in map {
                if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(ApiError::invalid(format!(
                        "Invalid env key {k:?}: keys must match ^\\w+$."
                    )));
                }
                // The CLI sends COLUMNS/LINES as JSON numbers although the schema says strings.
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    Value::Null => continue,
                    _ => {
                        return Err(ApiError::invalid(format!(
                            "Invalid env value for {k}: must be a string."
                        )));
                    }
                };
                env.insert(k.clone(), v);
            }
        }
        Some(_) => return Err(ApiError::invalid("env must be an object.")),
    }
    let time_to_live = match obj.get("time_to_live") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let secs = v
                .as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                .filter(|s| (1..=MAX_TTL_SECS).contains(s))
                .ok_or_else(|| {
                    ApiError::invalid(format!(
                        "time_to_live must be an integer number of seconds between 1 and {MAX_TTL_SECS}."
                    ))
                })?;
            Some(Duration::from_secs(secs))
        }
    };
    let process_type = string("type")?.unwrap_or_else(|| "run".to_owned());
    if process_type.is_empty()
        || !process_type
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(ApiError::invalid("type must be a process type name."));
    }
    Ok(OneOffRequest {
        command,
        attach: flag("attach")?.unwrap_or(false),
        env,
        force_no_tty: flag("force_no_tty")?.unwrap_or(false),
        size: string("size")?,
        process_type,
        time_to_live,
    })
}

async fn restart_all(State(shared): State<SharedRef>, Path(app): Path<String>) -> ApiResult {
    app_exists(&shared, &app)?;
    dynos::restart(&shared, &app, &RestartScope::All).await;
    Ok(ok_json(StatusCode::ACCEPTED, &json!({})))
}

async fn restart_dyno(
    State(shared): State<SharedRef>,
    Path((app, dyno)): Path<(String, String)>,
) -> ApiResult {
    app_exists(&shared, &app)?;
    if dynos::restart(&shared, &app, &RestartScope::Dyno(dyno)).await {
        Ok(ok_json(StatusCode::ACCEPTED, &json!({})))
    } else {
        Err(ApiError::dyno_not_found())
    }
}

async fn restart_type(
    State(shared): State<SharedRef>,
    Path((app, process_type)): Path<(String, String)>,
) -> ApiResult {
    app_exists(&shared, &app)?;
    if dynos::restart(&shared, &app, &RestartScope::Type(process_type)).await {
        Ok(ok_json(StatusCode::ACCEPTED, &json!({})))
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "Couldn't find that formation.",
        ))
    }
}

const EXEC_FEATURE: &str = "runtime-heroku-exec";

async fn list_features(State(shared): State<SharedRef>, Path(app): Path<String>) -> ApiResult {
    let st = shared.state();
    let app = st.apps.get(&app).ok_or_else(ApiError::app_not_found)?;
    Ok(ok_json(StatusCode::OK, &json!([app.feature_json()])))
}

fn feature_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "Couldn't find that feature.",
    )
}

async fn get_feature(
    State(shared): State<SharedRef>,
    Path((app, feature)): Path<(String, String)>,
) -> ApiResult {
    let st = shared.state();
    let app = st.apps.get(&app).ok_or_else(ApiError::app_not_found)?;
    if feature != EXEC_FEATURE {
        return Err(feature_not_found());
    }
    Ok(ok_json(StatusCode::OK, &app.feature_json()))
}

async fn patch_feature(
    State(shared): State<SharedRef>,
    Path((app_name, feature)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let enabled = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("enabled").and_then(Value::as_bool))
        .ok_or_else(|| ApiError::invalid("Missing required params: enabled."))?;
    let mut st = shared.state();
    let app = st
        .apps
        .get_mut(&app_name)
        .ok_or_else(ApiError::app_not_found)?;
    if feature != EXEC_FEATURE {
        return Err(feature_not_found());
    }
    if app.exec_enabled != enabled {
        app.exec_enabled = enabled;
        app.feature_updated_at = SystemTime::now();
    }
    if !enabled {
        // Disabling stops the exec agents; enabling needs a restart to start them again.
        for d in app.dynos.values_mut() {
            d.exec_agent = false;
        }
    }
    let json = app.feature_json();
    if !enabled {
        st.reservations.retain(|r| r.app != app_name);
    }
    tracing::info!(app = %app_name, enabled, "runtime-heroku-exec changed");
    Ok(ok_json(StatusCode::OK, &json))
}

async fn config_vars(State(shared): State<SharedRef>, Path(app): Path<String>) -> ApiResult {
    let st = shared.state();
    let app = st.apps.get(&app).ok_or_else(ApiError::app_not_found)?;
    Ok(ok_json(StatusCode::OK, &json!(app.config_vars)))
}

async fn buildpacks(State(shared): State<SharedRef>, Path(app): Path<String>) -> ApiResult {
    let st = shared.state();
    let app = st.apps.get(&app).ok_or_else(ApiError::app_not_found)?;
    let list: Vec<Value> = app
        .buildpacks
        .iter()
        .enumerate()
        .map(|(i, url)| {
            let name = url.rsplit('/').next().unwrap_or(url);
            json!({"buildpack": {"url": url, "name": name}, "ordinal": i})
        })
        .collect();
    Ok(ok_json(StatusCode::OK, &Value::Array(list)))
}

async fn get_faults(State(shared): State<SharedRef>) -> Response {
    let faults = shared.faults().clone();
    ok_json(StatusCode::OK, &json!(faults))
}

async fn set_faults(State(shared): State<SharedRef>, body: Bytes) -> ApiResult {
    let faults: Faults = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("invalid faults: {e}"),
        )
    })?;
    tracing::info!(?faults, "faults set");
    *shared.faults() = faults.clone();
    Ok(ok_json(StatusCode::OK, &json!(faults)))
}

async fn clear_faults(State(shared): State<SharedRef>) -> Response {
    *shared.faults() = Faults::default();
    ok_json(StatusCode::OK, &json!(Faults::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_accepts_numeric_env_and_rejects_bad_input() {
        let req = parse_create(
            br#"{"command":"ls","attach":true,"env":{"COLUMNS":80,"LINES":"24","TERM":"xterm"},"force_no_tty":true,"time_to_live":5}"#,
        );
        let req = match req {
            Ok(r) => r,
            Err(e) => panic!("rejected: {e:?}"),
        };
        assert_eq!(req.env.get("COLUMNS").map(String::as_str), Some("80"));
        assert_eq!(req.env.get("LINES").map(String::as_str), Some("24"));
        assert!(req.attach && req.force_no_tty);
        assert_eq!(req.process_type, "run");
        assert_eq!(req.time_to_live, Some(Duration::from_secs(5)));
        assert!(parse_create(br#"{"attach":true}"#).is_err());
        assert!(parse_create(br#"{"command":"x","env":{"A-B":"1"}}"#).is_err());
        assert!(parse_create(br#"{"command":"x","time_to_live":0}"#).is_err());
        assert!(parse_create(b"not json").is_err());
    }
}

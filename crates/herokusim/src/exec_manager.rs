//! The exec-manager over HTTPS: `PUT /api/v2/{dyno}` exchanges a client key for SSH proxy
//! credentials, `GET /api/v2` lists the dynos with an exec agent. Basic auth `app:apikey`.
//!
//! It owns the credential exchange and its refusals (feature off, dyno not up, one-off dyno,
//! dyno not restarted since enabling: 404, as when Heroku's dyno has no exec agent; a Fir app:
//! 403, see [`FIR_REFUSAL`]). It does not run SSH; reservations it records are what the SSH
//! proxy checks. Its listener also hosts `/attach/{secret}`, where the `https://` attach URLs
//! of Fir and Shield one-offs and `run:inside` point (`attach.rs`).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use base64::Engine as _;
use russh::keys::ssh_key::PublicKey;
use serde_json::{Value, json};

use crate::api::ApiError;
use crate::config::Generation;
use crate::dynos;
use crate::faults::take;
use crate::state::{MAX_RESERVATIONS, Reservation, SharedRef};

pub(crate) fn router(shared: SharedRef) -> Router {
    Router::new()
        .route("/api/v2", get(status))
        .route("/api/v2/", get(status))
        .route("/api/v2/{dyno}", put(exchange))
        .route("/attach/{secret}", get(crate::attach::upgrade))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such exec-manager endpoint",
            )
        })
        .with_state(shared)
}

fn json_response(status: StatusCode, value: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

/// What the exec-manager answers for a Fir app, on every route, before anything else.
///
/// Fir has no Heroku Exec at all (heroku-protocols.md §6.2, §6.9). The spec only documents the
/// CLI's client-side check (`ps:exec` fails on `generation == "fir"` before any request), so
/// the real exec-manager's answer for a Fir app is [unverified]: this 403 with Heroku's
/// `{id, message, url}` shape is herokusim's choice, worded like the CLI's refusal, so that a
/// client that skips the generation check fails loudly instead of getting credentials.
const FIR_REFUSAL: &str = "Heroku Exec is unavailable for Fir apps. Use heroku run:inside instead. See https://devcenter.heroku.com/articles/run-tasks-in-an-existing-dyno.";

/// Checks Basic `app:apikey` and refuses Fir apps; returns the app name.
fn authorize(shared: &SharedRef, headers: &HeaderMap) -> Result<String, ApiError> {
    let unauthorized = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Invalid credentials provided.",
        )
    };
    let encoded = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .ok_or_else(unauthorized)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| unauthorized())?;
    let decoded = String::from_utf8(decoded).map_err(|_| unauthorized())?;
    let (app, key) = decoded.split_once(':').ok_or_else(unauthorized)?;
    if key != shared.config.api_key {
        return Err(unauthorized());
    }
    let generation = shared.state().apps.get(app).map(|a| a.generation);
    match generation {
        None => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("You do not have access to the app {app}."),
        )),
        Some(Generation::Fir) => {
            tracing::info!(%app, "exec-manager refused a Fir app");
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                FIR_REFUSAL,
            ))
        }
        Some(Generation::Cedar) => Ok(app.to_owned()),
    }
}

async fn status(State(shared): State<SharedRef>, headers: HeaderMap) -> Result<Response, ApiError> {
    let app = authorize(&shared, &headers)?;
    let st = shared.state();
    let list: Vec<Value> = st
        .apps
        .get(&app)
        .map(|a| {
            a.dynos
                .keys()
                .filter(|name| dynos::no_agent_reason(&st, &app, name).is_none())
                .map(|name| json!({"dyno_name": name, "dyno_ip": "127.0.0.1"}))
                .collect()
        })
        .unwrap_or_default();
    Ok(json_response(StatusCode::OK, &Value::Array(list)))
}

async fn exchange(
    State(shared): State<SharedRef>,
    Path(dyno): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let app = authorize(&shared, &headers)?;
    if take(&mut shared.faults().refuse_exec_keys) {
        tracing::info!(%app, %dyno, "exec-manager refusing the client key (injected fault)");
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "client key refused (injected by herokusim)",
        ));
    }
    let key = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| {
            v.get("client_key")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_params",
                "Missing required params: client_key.",
            )
        })?;
    // The CLI sends an OpenSSH public key with an empty comment, so a trailing space.
    let key = PublicKey::from_openssh(key.trim()).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_params",
            format!("client_key is not an OpenSSH public key: {e}"),
        )
    })?;
    let client_user = format!("u{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
    {
        let mut st = shared.state();
        if let Some(reason) = dynos::no_agent_reason(&st, &app, &dyno) {
            tracing::info!(%app, %dyno, %reason, "exec-manager refused");
            return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", reason));
        }
        let boot = st
            .apps
            .get(&app)
            .and_then(|a| a.dynos.get(&dyno))
            .map_or(0, |d| d.boot);
        if st.reservations.len() >= MAX_RESERVATIONS {
            st.reservations.pop_front();
        }
        st.reservations.push_back(Reservation {
            client_user: client_user.clone(),
            key,
            app: app.clone(),
            dyno: dyno.clone(),
            boot,
        });
    }
    tracing::info!(%app, %dyno, %client_user, "exec credentials issued");
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "tunnel_host": "127.0.0.1",
            "client_user": client_user,
            "proxy_public_key": shared.proxy_public_key,
            "dyno_ip": "127.0.0.1",
        }),
    ))
}

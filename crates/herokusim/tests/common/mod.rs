//! HTTP helpers the emulator's test files share: Platform API requests with a chosen Accept
//! header, and the exec-manager's TLS client and Basic auth.

#![allow(dead_code, clippy::expect_used)]

use std::time::Duration;

use herokusim::RunningSim;
use serde_json::Value;

/// Bound on any single request.
pub const T: Duration = Duration::from_secs(20);

/// The Platform API's default Accept header.
pub const V3: &str = "application/vnd.heroku+json; version=3";

/// A Platform API request with the sim's API key and `accept`, bounded by [`T`].
pub async fn request(
    sim: &RunningSim,
    method: reqwest::Method,
    path: &str,
    accept: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .request(method, format!("{}{path}", sim.api_url()))
        .bearer_auth(sim.api_key())
        .header("Accept", accept);
    if let Some(b) = body {
        req = req.json(&b);
    }
    tokio::time::timeout(T, req.send())
        .await
        .expect("in time")
        .expect("request")
}

/// A client that trusts the sim's test CA (exec-manager, HTTPS listener).
pub fn exec_client(sim: &RunningSim) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(sim.ca_pem().as_bytes()).expect("ca");
    reqwest::Client::builder()
        .tls_certs_only([ca])
        .build()
        .expect("client")
}

/// The exec-manager's `Authorization` value: Basic with the app name and the API key.
pub fn basic(app: &str, key: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{app}:{key}"))
    )
}

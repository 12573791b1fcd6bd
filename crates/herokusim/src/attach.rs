//! The HTTPS attach path of Fir and Shield apps (heroku-protocols.md §3.9, §8.5): the secrets
//! that `POST /apps/{app}/dynos` (a Fir or Shield one-off) and `run:inside` hand out in an
//! `https://` `attach_url`, and the `GET /attach/{secret}` + `Upgrade: tcp` exchange that turns
//! the HTTPS connection into an SSH connection to the dyno.
//!
//! It owns the grants (single-use, expiring), the upgrade's answers (`101` with exactly
//! `Connection: Upgrade` and `Upgrade: tcp`; `404` for an unknown, used or expired secret; the
//! injected `403`/other status and dropped upgrade) and the one-off's lifecycle on this path
//! (`up` once claimed, gone when the SSH connection ends). The SSH server itself is `ssh.rs` in
//! attach mode; hyper keeps any bytes that followed the request's header block. Each request is
//! recorded (method, target, headers, answer) for tests: [`crate::RunningSim::attach_requests`].
//! With the `attach_coalesce_greeting` fault, [`Coalesce`] sends the `101` together with the SSH
//! greeting in one TLS record.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use uuid::Uuid;

use crate::api::ApiError;
use crate::dynos::{ExecTarget, process_env, remove_dyno, resolve_command, set_one_off_state};
use crate::faults::take;
use crate::ssh::{AttachTarget, Mode, serve_stream};
use crate::state::{DynoKind, SharedRef};

/// At most this many unused grants are kept; the oldest are dropped beyond it.
const MAX_GRANTS: usize = 1024;
/// At most this many attach requests are recorded; the oldest are dropped beyond it.
pub(crate) const MAX_RECORDED: usize = 256;

/// One request to `GET /attach/{secret}`, as received, and the status it got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachRequest {
    /// The method (`GET`).
    pub method: String,
    /// The request target: path and query, as sent.
    pub target: String,
    /// Every header, in the order received (names lower-cased).
    pub headers: Vec<(String, String)>,
    /// The answer: 101, or the refusal (400, 404, an injected status).
    pub status: u16,
}

/// What an `https://` attach secret opens: a command to run in a dyno.
#[derive(Clone, Debug)]
pub(crate) struct Grant {
    pub app: String,
    pub dyno_id: Uuid,
    /// As sent in the API call (`launcher` and process types are resolved at claim time).
    pub command: String,
    /// The API call's `env` (`TERM`, `COLUMNS`, `LINES`, …).
    pub env: BTreeMap<String, String>,
    /// A one-off made for this session (removed when it ends), or a formation dyno that
    /// `run:inside` borrows (stays `up`).
    pub one_off: bool,
    pub expires: Instant,
}

/// Records a grant and returns the `attach_url` that carries its secret.
pub(crate) fn grant(state: &mut crate::state::State, https_port: u16, grant: Grant) -> String {
    let secret = Uuid::new_v4().simple().to_string();
    let now = Instant::now();
    state.attach_grants.retain(|_, g| g.expires > now);
    if state.attach_grants.len() >= MAX_GRANTS
        && let Some(oldest) = state
            .attach_grants
            .iter()
            .min_by_key(|(_, g)| g.expires)
            .map(|(s, _)| s.clone())
    {
        state.attach_grants.remove(&oldest);
    }
    state.attach_grants.insert(secret.clone(), grant);
    format!("https://127.0.0.1:{https_port}/attach/{secret}")
}

/// A claimed grant: what the SSH server runs, and what to clean up after.
struct Claimed {
    app: String,
    dyno_id: Uuid,
    dyno_name: String,
    one_off: bool,
    command: String,
    target: ExecTarget,
}

/// Takes a grant (single use) if it is unexpired and its dyno can still run it.
fn claim(shared: &SharedRef, secret: &str) -> Option<Claimed> {
    let mut st = shared.state();
    let g = st.attach_grants.remove(secret)?;
    if g.expires <= Instant::now() {
        return None;
    }
    let app = st.apps.get(&g.app)?;
    let dyno = app.dynos.values().find(|d| d.id == g.dyno_id)?;
    if dyno.cancel.is_cancelled() {
        return None;
    }
    let runnable = if g.one_off {
        dyno.kind == DynoKind::OneOff && dyno.state == "starting"
    } else {
        dyno.kind == DynoKind::Formation && dyno.state == "up"
    };
    if !runnable {
        return None;
    }
    let mut own = dyno.env.clone();
    own.extend(g.env.clone());
    let env = process_env(app, dyno, &own);
    Some(Claimed {
        app: g.app.clone(),
        dyno_id: g.dyno_id,
        dyno_name: dyno.name.clone(),
        one_off: g.one_off,
        command: resolve_command(app, &g.command),
        target: ExecTarget {
            app: g.app.clone(),
            dyno: dyno.name.clone(),
            env,
            cwd: app.home.clone(),
            cancel: dyno.cancel.clone(),
        },
    })
}

fn plain(status: StatusCode, text: &str, close: bool) -> Response {
    let mut r = (status, text.to_owned()).into_response();
    if close {
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

fn asks_for_tcp(req: &Request) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("tcp"))
}

/// `GET /attach/{secret}` with `Upgrade: tcp`; records the request and its answer.
pub(crate) async fn upgrade(
    State(shared): State<SharedRef>,
    Path(secret): Path<String>,
    req: Request,
) -> Response {
    let mut record = AttachRequest {
        method: req.method().to_string(),
        target: req
            .uri()
            .path_and_query()
            .map(ToString::to_string)
            .unwrap_or_default(),
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        status: 0,
    };
    let names: Vec<&str> = record.headers.iter().map(|(k, _)| k.as_str()).collect();
    tracing::info!(method = %record.method, headers = ?names, "attach upgrade request");
    let response = answer(&shared, &secret, req);
    record.status = response.status().as_u16();
    let mut st = shared.state();
    if st.attach_requests.len() >= MAX_RECORDED {
        st.attach_requests.pop_front();
    }
    st.attach_requests.push_back(record);
    response
}

fn answer(shared: &SharedRef, secret: &str, mut req: Request) -> Response {
    if !asks_for_tcp(&req) {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the attach endpoint expects `Connection: Upgrade` and `Upgrade: tcp`",
        )
        .into_response();
    }
    let (refuse, status, close, drop_it) = {
        let mut f = shared.faults();
        let refuse = take(&mut f.attach_refusals);
        let status = StatusCode::from_u16(f.attach_refusal_status)
            .ok()
            .filter(|s| !s.is_informational())
            .unwrap_or(StatusCode::FORBIDDEN);
        let drop_it = !refuse && take(&mut f.drop_attach_upgrades);
        (refuse, status, f.attach_refusal_close, drop_it)
    };
    if refuse {
        tracing::info!(status = %status, close, "attach upgrade refused (injected fault)");
        // The secret stays unused: a refused upgrade ran nothing.
        return plain(status, "Forbidden", close);
    }
    let Some(claimed) = claim(shared, secret) else {
        tracing::info!("attach secret unknown, used or expired: 404");
        return plain(StatusCode::NOT_FOUND, "Not Found", true);
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    if claimed.one_off {
        set_one_off_state(shared, &claimed.app, claimed.dyno_id, "up");
    }
    tracing::info!(app = %claimed.app, dyno = %claimed.dyno_name, one_off = claimed.one_off, "attach upgraded");
    let (allow_exec, omit_exit_status) = {
        let f = shared.faults();
        (f.attach_allow_exec, f.attach_omit_exit_status)
    };
    let shared2 = shared.clone();
    shared.tracker.spawn(async move {
        let (app, id, one_off) = (claimed.app.clone(), claimed.dyno_id, claimed.one_off);
        match on_upgrade.await {
            Ok(upgraded) if !drop_it => {
                let mode = Mode::Attach(AttachTarget {
                    command: claimed.command,
                    target: claimed.target,
                    allow_exec,
                    omit_exit_status,
                });
                let config = shared2.attach_ssh.clone();
                let peer = SocketAddr::from(([127, 0, 0, 1], 0));
                serve_stream(shared2.clone(), config, TokioIo::new(upgraded), peer, mode).await;
            }
            Ok(upgraded) => {
                tracing::info!("dropping the upgraded attach connection (injected fault)");
                drop(upgraded);
            }
            Err(e) => tracing::debug!(error = %e, "attach upgrade did not complete"),
        }
        if one_off {
            remove_dyno(&shared2, &app, id);
        }
    });
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    r.headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static("tcp"));
    r
}

/// The exec-manager's listener as the attach path needs it: each accepted TLS stream is
/// wrapped in [`Coalesce`], armed when `attach_coalesce_greeting` is on at accept time.
pub(crate) struct Listener {
    inner: crate::tls::TlsListener,
    shared: SharedRef,
}

impl Listener {
    pub fn new(inner: crate::tls::TlsListener, shared: SharedRef) -> Self {
        Self { inner, shared }
    }
}

impl axum::serve::Listener for Listener {
    type Io = Coalesce<<crate::tls::TlsListener as axum::serve::Listener>::Io>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = self.inner.accept().await;
        let armed = self.shared.faults().attach_coalesce_greeting;
        (Coalesce::new(io, armed), addr)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A stream that, when armed, holds back a write that starts a `101` response (hyper writes the
/// head in one buffer and flushes it) and sends it in one write with the next bytes, which on
/// the attach path are the SSH server's greeting. Everything else passes through.
pub(crate) struct Coalesce<S> {
    inner: S,
    armed: bool,
    held: Vec<u8>,
}

impl<S> Coalesce<S> {
    fn new(inner: S, armed: bool) -> Self {
        Self {
            inner,
            armed,
            held: Vec::new(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Coalesce<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalesce<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.armed && this.held.is_empty() && buf.starts_with(b"HTTP/1.1 101 ") {
            this.armed = false;
            this.held = buf.to_vec();
            return Poll::Ready(Ok(buf.len()));
        }
        if this.held.is_empty() {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        // The held head and these bytes in one write; `buf` counts as written only once all
        // of the head is out.
        let held = this.held.len();
        let mut both = std::mem::take(&mut this.held);
        both.extend_from_slice(buf);
        match Pin::new(&mut this.inner).poll_write(cx, &both) {
            Poll::Ready(Ok(0)) => {
                both.truncate(held);
                this.held = both;
                Poll::Ready(Err(io::ErrorKind::WriteZero.into()))
            }
            Poll::Ready(Ok(n)) if n > held || buf.is_empty() => {
                Poll::Ready(Ok(n.saturating_sub(held)))
            }
            Poll::Ready(Ok(n)) => {
                // Only (part of) the head went out: keep the rest, and have `buf` written
                // again (never report 0 bytes written for a non-empty buffer).
                both.truncate(held);
                this.held = both.split_off(n);
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            other => {
                both.truncate(held);
                this.held = both;
                other.map_ok(|_| 0)
            }
        }
    }

    // Unarmed, it is the inner stream, vectored writes included; armed, hyper must write the
    // head as one buffer for `poll_write` to recognise it.
    fn is_write_vectored(&self) -> bool {
        !self.armed && self.held.is_empty() && self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !this.armed && this.held.is_empty() {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &**b);
        Pin::new(this).poll_write(cx, first)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.held.is_empty() {
            Pin::new(&mut this.inner).poll_flush(cx)
        } else {
            // The held head waits for the bytes it is to go out with.
            Poll::Ready(Ok(()))
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while !this.held.is_empty() {
            match Pin::new(&mut this.inner).poll_write(cx, &this.held) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    this.held.drain(..n);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

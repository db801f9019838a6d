//! A loopback, Entra-shaped token authority for tests.
//!
//! A real HTTPS server (HTTP/1.1 and HTTP/2) on `127.0.0.1:0`, running on the test's own tokio
//! runtime, that answers `POST /{tenant}/oauth2/v2.0/token` the way Microsoft Entra ID does,
//! and `POST /{tenant}/oauth2/v2.0/devicecode` with a fixed device code (see
//! [`DEVICE_CODE`]): a device code poll is then answered as any token request (queue
//! `authorization_pending` faults for a user who has not signed in yet).
//! Tests can count and inspect what it received and queue faults (error answers, delays, hangs,
//! dropped connections, bad bodies) to drive a client's error and retry paths.
//!
//! This file depends only on crates in `Cargo.toml` and on `super::tls`, never on the library
//! itself, so examples can include it with `#[path = …]` next to `tls.rs`.

// Shared by several binaries (this test binary, examples), none of which use every item.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::serve::{BoxError, InFlight, NoAnswer, accept_loop, check_exact, exact_reply, lock};

/// Fixed, recognisable ids and time used in every error body.
pub const TRACE_ID: &str = "00000000-0000-0000-0000-000000007ace";
pub const CORRELATION_ID: &str = "00000000-0000-0000-0000-00000000c0de";
pub const TIMESTAMP: &str = "2024-05-01 00:00:00Z";

/// Token request bodies are a few hundred bytes; anything past this is a client bug.
const MAX_REQUEST_BODY: usize = 1024 * 1024;

const TOKEN_PATH_SUFFIX: &str = "/oauth2/v2.0/token";
const DEVICE_CODE_PATH_SUFFIX: &str = "/oauth2/v2.0/devicecode";
/// The device code every device authorization request gets, with a 5 s interval (unless
/// [`Authority::set_device_code_interval`] says otherwise) and 900 s lifetime, as Entra gives.
pub const DEVICE_CODE: &str = "loopback-device-code";
pub const DEVICE_CODE_INTERVAL: u64 = 5;
const JSON_UTF8: &str = "application/json; charset=utf-8";

/// A running authority. Dropping it stops the server: no new connections are accepted, open
/// connections are shut down gracefully, and `Fault::Hang`, `Fault::Hold` and `Fault::HoldThen`
/// requests are released (their connections close without an answer).
pub struct Authority {
    state: Arc<State>,
    addr: SocketAddr,
    accept_loop: JoinHandle<()>,
    // Never sent on: dropping it is the shutdown signal every connection task listens for.
    _shutdown: watch::Sender<()>,
}

/// One token request, as the authority received it.
#[derive(Clone, Debug)]
pub struct Received {
    /// The `{tenant}` path segment, as sent (not percent-decoded).
    pub tenant: String,
    /// The request target's path, plus `?query` if the client sent one.
    pub path: String,
    pub method: Method,
    /// The HTTP version it came over (HTTP/2 when the client took the `h2` ALPN offered).
    pub version: Version,
    pub headers: HeaderMap,
    /// The decoded `application/x-www-form-urlencoded` body, in the order sent.
    pub form: Vec<(String, String)>,
    /// When its body had arrived, on tokio's clock (paused in most tests).
    pub at: tokio::time::Instant,
}

impl Received {
    fn new(tenant: String, head: http::request::Parts, body: &[u8]) -> Received {
        // Keep the query too: the token endpoint takes none, so a test should see a stray one.
        let path = head
            .uri
            .path_and_query()
            .map_or(head.uri.path(), |target| target.as_str())
            .to_owned();
        Received {
            tenant,
            path,
            method: head.method,
            version: head.version,
            headers: head.headers,
            form: url::form_urlencoded::parse(body).into_owned().collect(),
            at: tokio::time::Instant::now(),
        }
    }

    /// The first value of form field `name`.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The form field names, sorted. Duplicates are kept so tests can spot them.
    pub fn field_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.form.iter().map(|(key, _)| key.as_str()).collect();
        names.sort_unstable();
        names
    }
}

/// How to answer one token request instead of a normal success.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with exactly this status, body and headers.
    Respond {
        status: u16,
        body: String,
        headers: Vec<(String, String)>,
    },
    /// 429 with `Retry-After: <value>` and an Entra-like JSON error body.
    TooManyRequests { retry_after: String },
    /// The given 5xx status with an Entra-like JSON error body.
    ServerError(u16),
    /// Sleep on tokio's clock (so paused-clock tests run instantly), then answer normally.
    Delay(Duration),
    /// 200 with this exact body (malformed JSON, missing fields, HTML …).
    Body(String),
    /// 200 with a valid token response padded (extra field) to at least this many bytes.
    Oversized(usize),
    /// Never answer; only this request waits (other requests and HTTP/2 streams proceed).
    /// Released when the `Authority` is dropped, by closing the connection.
    Hang,
    /// Wait until the test opens the gate (`gate.notify_one()`), then answer normally: holds a
    /// request for as long as a test needs, whatever a paused clock does meanwhile. Released
    /// without an answer when the `Authority` is dropped.
    Hold(Arc<tokio::sync::Notify>),
    /// As `Hold`, then answer as the fault says (a refusal held until the test lets it come).
    HoldThen(Arc<tokio::sync::Notify>, Box<Fault>),
    /// Close without any response: the HTTP/1.1 connection is closed; on HTTP/2 the stream is
    /// reset (other streams on the connection are unaffected).
    Close,
}

/// The shape of successful token answers.
#[derive(Clone, Debug)]
pub struct TokenShape {
    pub expires_in: u64,
    pub refresh_in: Option<u64>,
    /// Absolute expiry, epoch seconds (managed-identity style).
    pub expires_on: Option<u64>,
    /// Emit `"3599"` instead of `3599` for every number field.
    pub numbers_as_strings: bool,
    /// `None` omits `token_type`.
    pub token_type: Option<String>,
    /// Omit `expires_in` and `expires_on` (`ext_expires_in` is still sent, as it is not an
    /// expiry the client may use).
    pub omit_expiry: bool,
}

impl Default for TokenShape {
    fn default() -> Self {
        TokenShape {
            expires_in: 3600,
            refresh_in: None,
            expires_on: None,
            numbers_as_strings: false,
            token_type: Some("Bearer".to_owned()),
            omit_expiry: false,
        }
    }
}

/// An Entra-shaped error body, e.g. `error_body("invalid_client", 7000215, "Invalid client
/// secret provided.")`.
pub fn error_body(error: &str, code: u32, description: &str) -> String {
    let description = format!(
        "AADSTS{code}: {description}\r\nTrace ID: {TRACE_ID}\r\n\
         Correlation ID: {CORRELATION_ID}\r\nTimestamp: {TIMESTAMP}"
    );
    json!({
        "error": error,
        "error_description": description,
        "error_codes": [code],
        "timestamp": TIMESTAMP,
        "trace_id": TRACE_ID,
        "correlation_id": CORRELATION_ID,
    })
    .to_string()
}

impl Authority {
    /// Binds `127.0.0.1:0` and serves on the current tokio runtime, offering ALPN `h2` and
    /// `http/1.1`.
    pub async fn start() -> Authority {
        Self::serve(super::tls::pki().server_config()).await
    }

    /// As [`start`](Self::start), offering only `http/1.1` in ALPN: a server (or TLS front)
    /// that does not speak HTTP/2.
    pub async fn start_http1_only() -> Authority {
        let mut config = (*super::tls::pki().server_config()).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self::serve(Arc::new(config)).await
    }

    async fn serve(config: Arc<rustls::ServerConfig>) -> Authority {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("authority: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("authority: listener address");
        let (shutdown_tx, shutdown_rx) = watch::channel(());
        let state = Arc::new(State::new(shutdown_rx));
        let acceptor = TlsAcceptor::from(config);
        let handler = {
            let state = Arc::clone(&state);
            move |req| handle(Arc::clone(&state), req)
        };
        let accept_loop = tokio::spawn(accept_loop(
            listener,
            Some(acceptor),
            state.shutdown.clone(),
            handler,
        ));
        Authority {
            state,
            addr,
            accept_loop,
            _shutdown: shutdown_tx,
        }
    }

    /// `https://127.0.0.1:<port>`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    /// The PEM of the CA that signed the server certificate.
    pub fn ca_pem(&self) -> &'static str {
        super::tls::pki().ca_pem()
    }

    /// Token POSTs received (counted when the request head arrives, faults included).
    pub fn token_posts(&self) -> usize {
        self.state.token_posts.load(Ordering::SeqCst)
    }

    /// Every token request, in arrival order.
    pub fn requests(&self) -> Vec<Received> {
        lock(&self.state.log).clone()
    }

    /// Every device authorization request, in arrival order (not among `requests()`).
    pub fn device_code_requests(&self) -> Vec<Received> {
        lock(&self.state.device_code_log).clone()
    }

    /// Queues a fault; each token request takes the oldest one, if any.
    ///
    /// Panics (in the test, where the mistake is) if the fault could not be sent on the wire.
    pub fn push_fault(&self, fault: Fault) {
        check_fault(&fault);
        lock(&self.state.faults).push_back(fault);
    }

    /// The polling interval the device authorization answers name from now on, in seconds.
    pub fn set_device_code_interval(&self, seconds: u64) {
        self.state
            .device_code_interval
            .store(seconds, Ordering::SeqCst);
    }

    /// The shape of successful answers from now on.
    pub fn set_response(&self, shape: TokenShape) {
        *lock(&self.state.shape) = shape;
    }

    /// Clears the logs, the `token_posts` counter and the fault queue. The response shape is
    /// kept, and token numbering continues so tokens stay distinct over the authority's life.
    pub fn clear(&self) {
        lock(&self.state.log).clear();
        lock(&self.state.device_code_log).clear();
        lock(&self.state.faults).clear();
        self.state.token_posts.store(0, Ordering::SeqCst);
    }

    /// Token requests currently being handled (head received, answer not yet produced).
    pub fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::SeqCst)
    }
}

impl Drop for Authority {
    fn drop(&mut self) {
        self.accept_loop.abort();
        // `_shutdown` is dropped right after this, which tells connections to finish.
    }
}

// ---------------------------------------------------------------------------------------------
// Shared state

struct State {
    token_posts: AtomicUsize,
    in_flight: Arc<AtomicUsize>,
    /// Tokens issued so far; never reset, so every token is distinct.
    issued: AtomicU64,
    log: Mutex<Vec<Received>>,
    device_code_log: Mutex<Vec<Received>>,
    faults: Mutex<VecDeque<Fault>>,
    shape: Mutex<TokenShape>,
    /// The `interval` of device authorization answers, in seconds.
    device_code_interval: AtomicU64,
    /// Completes (with an error) when the `Authority` is dropped.
    shutdown: watch::Receiver<()>,
}

impl State {
    fn new(shutdown: watch::Receiver<()>) -> State {
        State {
            token_posts: AtomicUsize::new(0),
            in_flight: Arc::new(AtomicUsize::new(0)),
            issued: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
            device_code_log: Mutex::new(Vec::new()),
            faults: Mutex::new(VecDeque::new()),
            shape: Mutex::new(TokenShape::default()),
            device_code_interval: AtomicU64::new(DEVICE_CODE_INTERVAL),
            shutdown,
        }
    }

    fn next_fault(&self) -> Option<Fault> {
        lock(&self.faults).pop_front()
    }

    /// A fresh token response body (as a JSON object) for this request. A token requested
    /// with claims beyond the CAE capability (`xms_cc`), i.e. answering a challenge, is
    /// marked `-claims`.
    fn token_response(&self, received: &Received) -> Map<String, Value> {
        let n = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
        let claims = if received.field("claims").is_some_and(is_challenge_claims) {
            "-claims"
        } else {
            ""
        };
        let access_token = format!("at-{n}-{}{claims}", received.tenant);
        let shape = lock(&self.shape).clone();
        token_json(&shape, access_token)
    }
}

// ---------------------------------------------------------------------------------------------
// Answers

type Answer = Response<Full<Bytes>>;

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Answer, BoxError> {
    let Some(tenant) = token_tenant(req.method(), req.uri().path()) else {
        if let Some(tenant) = tenant_of(req.method(), req.uri().path(), DEVICE_CODE_PATH_SUFFIX) {
            return device_authorization(&state, tenant, req).await;
        }
        return Ok(json_answer(
            StatusCode::NOT_FOUND,
            r#"{"error":"not_found"}"#.to_owned(),
        ));
    };
    state.token_posts.fetch_add(1, Ordering::SeqCst);
    let _in_flight = InFlight::enter(&state.in_flight);

    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_REQUEST_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => {
            let body = r#"{"error":"request_too_large"}"#.to_owned();
            return Ok(json_answer(StatusCode::PAYLOAD_TOO_LARGE, body));
        }
        // The client went away mid-body: nothing to answer.
        Err(e) => return Err(e),
    };
    let received = Received::new(tenant, parts, &body);
    // Logged before any fault applies, so hung and delayed requests show up in `requests()`.
    lock(&state.log).push(received.clone());

    match state.next_fault() {
        None => Ok(token_answer(&state, &received)),
        Some(fault) => answer_with_fault(&state, &received, fault).await,
    }
}

/// The tenant, if this is `POST /{tenant}/oauth2/v2.0/token`.
fn token_tenant(method: &Method, path: &str) -> Option<String> {
    tenant_of(method, path, TOKEN_PATH_SUFFIX)
}

/// The tenant, if this is `POST /{tenant}{suffix}`.
fn tenant_of(method: &Method, path: &str, suffix: &str) -> Option<String> {
    if method != Method::POST {
        return None;
    }
    let tenant = path.strip_prefix('/')?.strip_suffix(suffix)?;
    let valid = !tenant.is_empty() && !tenant.contains('/');
    valid.then(|| tenant.to_owned())
}

/// The device authorization answer (RFC 8628 §3.2, with Entra's `message`): always
/// [`DEVICE_CODE`]. Logged apart from token requests; faults do not apply.
async fn device_authorization(
    state: &State,
    tenant: String,
    req: Request<Incoming>,
) -> Result<Answer, BoxError> {
    let (parts, body) = req.into_parts();
    let body = Limited::new(body, MAX_REQUEST_BODY)
        .collect()
        .await?
        .to_bytes();
    lock(&state.device_code_log).push(Received::new(tenant, parts, &body));
    let body = json!({
        "device_code": DEVICE_CODE,
        "user_code": "LOOPBACK",
        "verification_uri": "https://127.0.0.1/devicelogin",
        "expires_in": 900,
        "interval": state.device_code_interval.load(Ordering::SeqCst),
        "message": "To sign in, enter the code LOOPBACK at https://127.0.0.1/devicelogin.",
    });
    Ok(json_answer(StatusCode::OK, body.to_string()))
}

async fn answer_with_fault(
    state: &State,
    received: &Received,
    fault: Fault,
) -> Result<Answer, BoxError> {
    match fault {
        Fault::Respond {
            status,
            body,
            headers,
        } => Ok(exact_reply(status, body, &headers)),
        Fault::TooManyRequests { retry_after } => Ok(too_many_requests(&retry_after)),
        Fault::ServerError(status) => Ok(server_error(status)),
        Fault::Delay(delay) => {
            tokio::time::sleep(delay).await;
            Ok(token_answer(state, received))
        }
        Fault::Body(body) => Ok(json_answer(StatusCode::OK, body)),
        Fault::Oversized(min_len) => {
            let body = padded(state.token_response(received), min_len);
            Ok(json_answer(StatusCode::OK, body))
        }
        Fault::Hang => {
            // Wait for the authority to be dropped (an error from `changed` means exactly that),
            // so hung requests do not outlive it.
            let _ = state.shutdown.clone().changed().await;
            Err(Box::new(NoAnswer("hung request released at shutdown")))
        }
        Fault::Hold(gate) => {
            let mut shutdown = state.shutdown.clone();
            tokio::select! {
                () = gate.notified() => Ok(token_answer(state, received)),
                _ = shutdown.changed() => Err(Box::new(NoAnswer("held request released at shutdown"))),
            }
        }
        Fault::HoldThen(gate, then) => {
            let mut shutdown = state.shutdown.clone();
            tokio::select! {
                () = gate.notified() => Box::pin(answer_with_fault(state, received, *then)).await,
                _ = shutdown.changed() => Err(Box::new(NoAnswer("held request released at shutdown"))),
            }
        }
        Fault::Close => Err(Box::new(NoAnswer("fault: close without answering"))),
    }
}

// ---------------------------------------------------------------------------------------------
// Answers

fn token_answer(state: &State, received: &Received) -> Answer {
    let body = Value::Object(state.token_response(received)).to_string();
    json_answer(StatusCode::OK, body)
}

fn token_json(shape: &TokenShape, access_token: String) -> Map<String, Value> {
    let number = |n: u64| {
        if shape.numbers_as_strings {
            Value::String(n.to_string())
        } else {
            Value::from(n)
        }
    };
    // `serde_json` keeps insertion order here (`preserve_order`), so answers read like Entra's.
    let mut body = Map::new();
    if let Some(token_type) = &shape.token_type {
        body.insert("token_type".into(), token_type.as_str().into());
    }
    if !shape.omit_expiry {
        body.insert("expires_in".into(), number(shape.expires_in));
    }
    body.insert("ext_expires_in".into(), number(shape.expires_in));
    if let Some(refresh_in) = shape.refresh_in {
        body.insert("refresh_in".into(), number(refresh_in));
    }
    if let (Some(expires_on), false) = (shape.expires_on, shape.omit_expiry) {
        body.insert("expires_on".into(), number(expires_on));
    }
    body.insert("access_token".into(), access_token.into());
    body
}

/// Serialises `body` with an extra `x_padding` field so the result is at least `min_len` bytes.
fn padded(mut body: Map<String, Value>, min_len: usize) -> String {
    body.insert("x_padding".into(), Value::String(String::new()));
    let unpadded = Value::Object(body.clone()).to_string().len();
    // 'x' needs no JSON escaping, so each one adds exactly one byte.
    let padding = "x".repeat(min_len.saturating_sub(unpadded));
    body.insert("x_padding".into(), Value::String(padding));
    Value::Object(body).to_string()
}

fn too_many_requests(retry_after: &str) -> Answer {
    let body = error_body(
        "temporarily_unavailable",
        90055,
        "TenantThrottlingError - There are too many incoming requests. Retry later.",
    );
    let mut answer = json_answer(StatusCode::TOO_MANY_REQUESTS, body);
    if let Ok(value) = HeaderValue::from_str(retry_after) {
        answer.headers_mut().insert(header::RETRY_AFTER, value);
    }
    answer
}

fn server_error(status: u16) -> Answer {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = error_body(
        "server_error",
        50000,
        "There was an error issuing a token or an issue with our sign-in service.",
    );
    json_answer(status, body)
}

/// A JSON answer with the headers Entra sends on token endpoint answers.
fn json_answer(status: StatusCode, body: String) -> Answer {
    let mut answer = Response::new(Full::new(Bytes::from(body)));
    *answer.status_mut() = status;
    let headers = answer.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON_UTF8));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, no-cache"),
    );
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    answer
}

/// Rejects faults that cannot be put on the wire, at the test line that queued them.
fn check_fault(fault: &Fault) {
    match fault {
        Fault::Respond {
            status, headers, ..
        } => check_exact("Fault::Respond", *status, headers),
        Fault::TooManyRequests { retry_after } => assert!(
            HeaderValue::try_from(retry_after).is_ok(),
            "Fault::TooManyRequests: invalid Retry-After value {retry_after:?}"
        ),
        Fault::ServerError(status) => assert!(
            (500..=599).contains(status),
            "Fault::ServerError: {status} is not a 5xx status"
        ),
        Fault::HoldThen(_, then) => check_fault(then),
        Fault::Delay(_)
        | Fault::Body(_)
        | Fault::Oversized(_)
        | Fault::Hang
        | Fault::Hold(_)
        | Fault::Close => {}
    }
}

/// Whether a `claims` form value asks for more than the CAE capability announcement.
fn is_challenge_claims(claims: &str) -> bool {
    let Ok(Value::Object(root)) = serde_json::from_str::<Value>(claims) else {
        return true;
    };
    root.iter().any(|(key, value)| match (key.as_str(), value) {
        ("access_token", Value::Object(access)) => access.keys().any(|k| k != "xms_cc"),
        _ => true,
    })
}

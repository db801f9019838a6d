//! A loopback protected resource for tests of the bearer-token layer.
//!
//! A real server (HTTPS with the test PKI, or plain HTTP) on `127.0.0.1:0`, serving HTTP/1.1 and
//! HTTP/2 on the test's own tokio runtime. Every request, on any method and path, is checked for
//! `Authorization: Bearer at-…` the way an Entra-protected API checks its tokens, and answered
//! with a 200 that echoes the token it saw, or a 401 with a `WWW-Authenticate` challenge —
//! including Continuous Access Evaluation (CAE) claims challenges. Tests can count and inspect
//! what it received, revoke tokens, and queue one-off answers (challenges, any status, delays,
//! a 401 sent before the request body was read).
//!
//! This file depends only on crates in `Cargo.toml` and on `super::tls`, never on the library
//! itself, so examples can include it with `#[path = …]` next to `tls.rs`.

// Shared by several binaries (this test binary, examples), none of which use every item.
#![allow(dead_code)]

use std::collections::{HashSet, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use http::{header, request};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::serve::{
    BoxError, InFlight, NoAnswer, Reply, accept_loop, check_exact, exact_reply, lock,
};

/// The `authorization_uri` Entra-protected resources put in their challenges.
pub const AUTHORIZATION_URI: &str = "https://login.microsoftonline.com/common/oauth2/authorize";

/// The challenge for a request without usable credentials (none, or another scheme).
pub const BEARER_CHALLENGE: &str = r#"Bearer realm="""#;

/// Bodies past this are answered 413 and not logged: a safety net against a runaway streaming
/// body filling the test process's memory, far above anything a test sends on purpose.
pub const MAX_REQUEST_BODY: usize = 64 * 1024 * 1024;

const JSON: &str = "application/json";

/// A running resource. Dropping it stops the server: no new connections are accepted, open
/// connections are shut down gracefully (closed after a short grace period), and requests
/// waiting in an `Answer::Delay` are released without an answer.
pub struct Resource {
    state: Arc<State>,
    addr: SocketAddr,
    https: bool,
    accept_loop: JoinHandle<()>,
    // Never sent on: dropping it is the shutdown signal every connection task listens for.
    _shutdown: watch::Sender<()>,
}

/// One request, as the resource received it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    /// The request target's path, plus `?query` if there was one.
    pub path: String,
    pub headers: HeaderMap,
    /// The raw (first) `Authorization` header value; non-UTF-8 bytes are replaced.
    pub authorization: Option<String>,
    /// The whole body as received. Empty for `Answer::EarlyUnauthorized`, which answers
    /// without reading it.
    pub body: Bytes,
    /// The trailers, if the client sent any (HTTP/2, or chunked HTTP/1.1).
    pub trailers: Option<HeaderMap>,
    pub version: Version,
}

impl Seen {
    fn new(head: request::Parts, body: Bytes, trailers: Option<HeaderMap>) -> Seen {
        let path = head
            .uri
            .path_and_query()
            .map_or(head.uri.path(), |target| target.as_str())
            .to_owned();
        let authorization = head
            .headers
            .get(header::AUTHORIZATION)
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
        Seen {
            method: head.method,
            path,
            headers: head.headers,
            authorization,
            body,
            trailers,
            version: head.version,
        }
    }

    /// The bearer token, if `Authorization` is `Bearer <token>` (scheme in any case).
    pub fn bearer(&self) -> Option<&str> {
        bearer_token(self.authorization.as_deref()?)
    }
}

/// A one-off answer to the next request, instead of the standing [`Mode`].
#[derive(Clone, Debug)]
pub enum Answer {
    /// 401 with a CAE claims challenge: `WWW-Authenticate: Bearer realm="",
    /// authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize",
    /// error="insufficient_claims", claims="<base64url of claims>"` (see [`cae_challenge`]).
    Cae { claims: String },
    /// 401 with exactly this `WWW-Authenticate` value (or none) and this body, and no other
    /// headers. The body may be large: hyper sends it with backpressure, so a client that stops
    /// reading only stalls its own connection.
    Unauthorized {
        www_authenticate: Option<String>,
        body: String,
    },
    /// The CAE 401 of `Answer::Cae`, sent right after the request head arrives, without reading
    /// the request body (the "401 before the body was fully sent" case). The request is logged
    /// with an empty body. On HTTP/1.1 the answer carries `Connection: close` and the connection
    /// is closed after it; on HTTP/2 only the stream ends (hyper resets it with `NO_ERROR`, asking
    /// the client to stop sending the body).
    EarlyUnauthorized { claims: String },
    /// Exactly this status, headers (in order, repeats kept) and body.
    Status {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Read the request, sleep on tokio's clock (so paused-clock tests run instantly), then
    /// answer by the standing [`Mode`].
    Delay(Duration),
    /// Read the request, wait until the test opens the gate (`gate.notify_one()`), then answer
    /// by the standing [`Mode`]: holds a request for as long as a test needs, whatever a paused
    /// clock does meanwhile.
    Hold(Arc<tokio::sync::Notify>),
}

/// How requests are answered when no [`Answer`] is queued.
#[derive(Clone, Debug, Default)]
pub enum Mode {
    /// Any `Bearer at-…` token that is not revoked gets a 200. No `Authorization`, or another
    /// scheme, gets 401 `Bearer realm=""`; a revoked token or one not shaped `at-…` gets 401
    /// `Bearer realm="", error="invalid_token", error_description="…"`.
    #[default]
    AcceptAny,
    /// Like `AcceptAny`, but a revoked token gets a CAE claims challenge (claims
    /// [`revocation_claims`] of the current time), and a token ending in `-claims` (one the
    /// authority issued for a request with claims) is always accepted, even if revoked: the way
    /// a CAE resource behaves after a revocation event.
    Cae,
}

/// The `WWW-Authenticate` value of a CAE claims challenge carrying `claims` (JSON), encoded
/// base64url with padding, as Entra-protected resources send it.
pub fn cae_challenge(claims: &str) -> String {
    format!(
        r#"Bearer realm="", authorization_uri="{AUTHORIZATION_URI}", error="insufficient_claims", claims="{}""#,
        URL_SAFE.encode(claims)
    )
}

/// The claims a CAE resource asks for after a revocation: a token not valid before `unix_now`.
pub fn revocation_claims(unix_now: u64) -> String {
    json!({"access_token": {"nbf": {"essential": true, "value": unix_now.to_string()}}}).to_string()
}

impl Resource {
    /// Serves HTTPS (the test PKI's server certificate) on `127.0.0.1:0`, on the current tokio
    /// runtime.
    pub async fn start() -> Resource {
        let acceptor = TlsAcceptor::from(super::tls::pki().server_config());
        Resource::start_with(Some(acceptor)).await
    }

    /// Serves plain HTTP (HTTP/1.1, and HTTP/2 with prior knowledge) on `127.0.0.1:0`.
    pub async fn start_http() -> Resource {
        Resource::start_with(None).await
    }

    async fn start_with(tls: Option<TlsAcceptor>) -> Resource {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("resource: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("resource: listener address");
        let (shutdown_tx, shutdown_rx) = watch::channel(());
        let state = Arc::new(State::new(shutdown_rx));
        let https = tls.is_some();
        let handler = {
            let state = Arc::clone(&state);
            move |req| handle(Arc::clone(&state), req)
        };
        let accept_loop = tokio::spawn(accept_loop(listener, tls, state.shutdown.clone(), handler));
        Resource {
            state,
            addr,
            https,
            accept_loop,
            _shutdown: shutdown_tx,
        }
    }

    /// `https://127.0.0.1:<port>` (`http://` for `start_http`), without a trailing slash.
    pub fn url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.addr.port())
    }

    /// The PEM of the CA that signed the server certificate.
    pub fn ca_pem(&self) -> &'static str {
        super::tls::pki().ca_pem()
    }

    /// Every request whose body was read (or that was answered early), in the order their
    /// heads arrived.
    pub fn requests(&self) -> Vec<Seen> {
        lock(&self.state.log)
            .iter()
            .map(|(_, seen)| seen.clone())
            .collect()
    }

    /// Requests received, counted when the head arrives (whatever the answer).
    pub fn count(&self) -> usize {
        self.state.count.load(Ordering::SeqCst)
    }

    /// Requests being handled (head received, answer not yet produced).
    pub fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::SeqCst)
    }

    /// The tokens of requests the standing [`Mode`] accepted (answered 200), in answer order.
    /// Queued `Answer::Status { status: 200, .. }` answers are not acceptances.
    pub fn accepted_tokens(&self) -> Vec<String> {
        lock(&self.state.accepted).clone()
    }

    /// Queues an answer; each request takes the oldest one, if any, when its head arrives.
    ///
    /// Panics (in the test, where the mistake is) if the answer could not be sent on the wire.
    pub fn push(&self, answer: Answer) {
        check_answer(&answer);
        lock(&self.state.queue).push_back(answer);
    }

    /// The standing policy for requests with no queued answer.
    pub fn set_mode(&self, mode: Mode) {
        *lock(&self.state.mode) = mode;
    }

    /// Rejects `token` from now on: 401 `invalid_token`, or a CAE challenge in `Mode::Cae`.
    pub fn revoke(&self, token: &str) {
        lock(&self.state.revoked).insert(token.to_owned());
    }

    /// Clears the log, the counter, the accepted tokens and the answer queue. The mode and the
    /// revoked tokens are kept: they are the resource's policy, not a record.
    pub fn clear(&self) {
        lock(&self.state.log).clear();
        lock(&self.state.accepted).clear();
        lock(&self.state.queue).clear();
        self.state.count.store(0, Ordering::SeqCst);
    }
}

impl Drop for Resource {
    fn drop(&mut self) {
        self.accept_loop.abort();
        // `_shutdown` is dropped right after this, which tells connections to finish.
    }
}

// ---------------------------------------------------------------------------------------------
// Shared state

struct State {
    count: AtomicUsize,
    in_flight: Arc<AtomicUsize>,
    /// Head arrival order; never reset, so the log stays in arrival order across `clear`.
    arrivals: AtomicU64,
    /// Kept sorted by arrival number: bodies may finish in another order than heads arrived.
    log: Mutex<Vec<(u64, Seen)>>,
    accepted: Mutex<Vec<String>>,
    queue: Mutex<VecDeque<Answer>>,
    mode: Mutex<Mode>,
    revoked: Mutex<HashSet<String>>,
    /// Completes (with an error) when the `Resource` is dropped.
    shutdown: watch::Receiver<()>,
}

impl State {
    fn new(shutdown: watch::Receiver<()>) -> State {
        State {
            count: AtomicUsize::new(0),
            in_flight: Arc::new(AtomicUsize::new(0)),
            arrivals: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
            accepted: Mutex::new(Vec::new()),
            queue: Mutex::new(VecDeque::new()),
            mode: Mutex::new(Mode::default()),
            revoked: Mutex::new(HashSet::new()),
            shutdown,
        }
    }

    fn record(&self, arrival: u64, seen: Seen) {
        let mut log = lock(&self.log);
        let at = log.partition_point(|(earlier, _)| *earlier < arrival);
        log.insert(at, (arrival, seen));
    }
}

// ---------------------------------------------------------------------------------------------
// Answers

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Reply, BoxError> {
    state.count.fetch_add(1, Ordering::SeqCst);
    let arrival = state.arrivals.fetch_add(1, Ordering::SeqCst);
    let _in_flight = InFlight::enter(&state.in_flight);
    // Taken when the head arrives, so answers go to requests in arrival order.
    let answer = lock(&state.queue).pop_front();

    let (parts, body) = req.into_parts();
    if let Some(Answer::EarlyUnauthorized { claims }) = answer {
        // The body is dropped unread; hyper then ends the exchange early.
        drop(body);
        let http1 = parts.version < Version::HTTP_2;
        state.record(arrival, Seen::new(parts, Bytes::new(), None));
        let mut answer = cae_answer(&claims);
        if http1 {
            // The unread rest of the body makes the connection unusable; say so, as servers do
            // (without it, hyper still closes, but only once it notices the unread body).
            let close = HeaderValue::from_static("close");
            answer.headers_mut().insert(header::CONNECTION, close);
        }
        return Ok(answer);
    }

    let Some((body, trailers)) = read_body(body).await? else {
        let body = r#"{"error":"request_too_large"}"#;
        return Ok(json_answer(StatusCode::PAYLOAD_TOO_LARGE, body.to_owned()));
    };
    let seen = Seen::new(parts, body, trailers);
    // Logged before the answer applies, so delayed requests show up in `requests()`.
    state.record(arrival, seen.clone());

    match answer {
        None => Ok(answer_by_mode(&state, &seen)),
        Some(Answer::Cae { claims }) => Ok(cae_answer(&claims)),
        Some(Answer::Unauthorized {
            www_authenticate,
            body,
        }) => {
            let headers: Vec<(String, String)> = www_authenticate
                .into_iter()
                .map(|value| (header::WWW_AUTHENTICATE.as_str().to_owned(), value))
                .collect();
            Ok(exact_reply(401, body, &headers))
        }
        Some(Answer::Status {
            status,
            headers,
            body,
        }) => Ok(exact_reply(status, body, &headers)),
        Some(Answer::Delay(delay)) => {
            let mut shutdown = state.shutdown.clone();
            tokio::select! {
                () = tokio::time::sleep(delay) => Ok(answer_by_mode(&state, &seen)),
                _ = shutdown.changed() => Err(Box::new(NoAnswer("delayed request released at shutdown"))),
            }
        }
        Some(Answer::Hold(gate)) => {
            let mut shutdown = state.shutdown.clone();
            tokio::select! {
                () = gate.notified() => Ok(answer_by_mode(&state, &seen)),
                _ = shutdown.changed() => Err(Box::new(NoAnswer("held request released at shutdown"))),
            }
        }
        Some(Answer::EarlyUnauthorized { .. }) => unreachable!("answered before the body"),
    }
}

/// The whole body and its trailers, or `None` past `MAX_REQUEST_BODY`. An error means the client
/// went away mid-body: there is nothing to answer.
async fn read_body(mut body: Incoming) -> Result<Option<(Bytes, Option<HeaderMap>)>, BoxError> {
    let mut data = BytesMut::new();
    let mut trailers: Option<HeaderMap> = None;
    while let Some(frame) = body.frame().await {
        let frame = match frame?.into_data() {
            Ok(chunk) => {
                if data.len() + chunk.len() > MAX_REQUEST_BODY {
                    return Ok(None);
                }
                data.extend_from_slice(&chunk);
                continue;
            }
            Err(frame) => frame,
        };
        if let Ok(more) = frame.into_trailers() {
            match &mut trailers {
                Some(trailers) => trailers.extend(more),
                None => trailers = Some(more),
            }
        }
    }
    Ok(Some((data.freeze(), trailers)))
}

/// The standing policy: check the bearer token like an Entra-protected API.
fn answer_by_mode(state: &State, seen: &Seen) -> Reply {
    let Some(token) = seen.bearer() else {
        return unauthorized(
            BEARER_CHALLENGE.to_owned(),
            r#"{"error":"missing_token"}"#.to_owned(),
        );
    };
    if !token.starts_with("at-") {
        return invalid_token("The access token is malformed.");
    }
    let mode = lock(&state.mode).clone();
    let revoked = lock(&state.revoked).contains(token);
    match mode {
        Mode::Cae if token.ends_with("-claims") => accept(state, seen, token),
        _ if !revoked => accept(state, seen, token),
        Mode::AcceptAny => invalid_token("The access token has been revoked."),
        Mode::Cae => cae_answer(&revocation_claims(unix_now())),
    }
}

/// The token of `Bearer <token>`, the scheme matched case-insensitively (RFC 9110 §11.1).
fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.split_once(' ')?;
    let token = token.trim_matches(' ');
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

// ---------------------------------------------------------------------------------------------
// Answers

fn accept(state: &State, seen: &Seen, token: &str) -> Reply {
    lock(&state.accepted).push(token.to_owned());
    let body = json!({
        "ok": true,
        "token": token,
        "method": seen.method.as_str(),
        "path": seen.path,
        "body_len": seen.body.len(),
    });
    json_answer(StatusCode::OK, body.to_string())
}

fn invalid_token(description: &str) -> Reply {
    let challenge =
        format!(r#"Bearer realm="", error="invalid_token", error_description="{description}""#);
    let body = json!({"error": "invalid_token", "error_description": description});
    unauthorized(challenge, body.to_string())
}

fn cae_answer(claims: &str) -> Reply {
    let body = json!({
        "error": "insufficient_claims",
        "error_description": "Continuous access evaluation resulted in challenge.",
    });
    unauthorized(cae_challenge(claims), body.to_string())
}

fn unauthorized(challenge: String, body: String) -> Reply {
    let mut answer = json_answer(StatusCode::UNAUTHORIZED, body);
    // Built from fixed text, base64 and test-given JSON; only a test's description could be
    // invalid, and those are fixed strings above.
    let challenge = HeaderValue::try_from(challenge).expect("resource: valid challenge");
    answer
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, challenge);
    answer
}

fn json_answer(status: StatusCode, body: String) -> Reply {
    let mut answer = Response::new(Full::new(Bytes::from(body)));
    *answer.status_mut() = status;
    answer
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON));
    answer
}

/// Rejects answers that cannot be put on the wire, at the test line that queued them.
fn check_answer(answer: &Answer) {
    match answer {
        Answer::Status {
            status, headers, ..
        } => check_exact("Answer::Status", *status, headers),
        Answer::Unauthorized {
            www_authenticate: Some(value),
            ..
        } => assert!(
            HeaderValue::try_from(value).is_ok(),
            "Answer::Unauthorized: invalid WWW-Authenticate value {value:?}"
        ),
        Answer::Unauthorized { .. }
        | Answer::Cae { .. }
        | Answer::EarlyUnauthorized { .. }
        | Answer::Delay(_)
        | Answer::Hold(_) => {}
    }
}

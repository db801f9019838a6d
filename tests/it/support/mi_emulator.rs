//! Loopback emulators of the managed-identity endpoints: IMDS, App Service, Azure Arc, Cloud
//! Shell, Azure ML and Service Fabric.
//!
//! One server type, [`Emulator`], parameterised by [`Flavour`]. Each flavour checks what the
//! real endpoint requires (method, api-version, the identity header or secret, Arc's key-file
//! challenge, Service Fabric's TLS), answers in that source's response format, logs every
//! request, and can be told to misbehave (410 for a while, 429 + Retry-After, 5xx, slow,
//! malformed JSON, identity not found). [`Emulator::env`] gives the environment that points a
//! credential (ours or azure-identity) at it. Formats: `production-credentials.md` §1.
//!
//! Times (the 410 window, delays, `Logged::at`) are on tokio's clock, so paused-clock tests
//! run instantly; the `expires_on` values the emulator sends are wall-clock epoch seconds,
//! because that is what a client compares them with.

// Not every test uses every item.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::serve::{BoxError, NoAnswer, accept_loop, check_exact, exact_reply, lock};

/// The App Service / Service Fabric `IDENTITY_HEADER` the emulators expect. Recognisable, so
/// tests can assert it never shows up in errors or Debug output.
pub const IDENTITY_HEADER: &str = "mi-emulator-identity-header-Vq7";
/// The Azure ML `MSI_SECRET` the emulator expects.
pub const MSI_SECRET: &str = "mi-emulator-msi-secret-K3p";
/// The contents of the Azure Arc key file (a real agent writes a random string).
pub const ARC_KEY: &str = "mi-emulator-arc-key-Hd2Tz";
/// `resource` query value the emulators answer "identity not found" for (any flavour).
pub const UNKNOWN_RESOURCE: &str = "https://identity-not-found.test";

/// Token lifetime of successful answers unless a test sets another.
pub const DEFAULT_LIFETIME: u64 = 3600;

/// Request bodies are a few dozen bytes; anything past this is a client bug.
const MAX_REQUEST_BODY: usize = 64 * 1024;

/// The endpoint paths, as the real services' environment variables spell them.
const IMDS_PATH: &str = "/metadata/identity/oauth2/token";
const APP_SERVICE_PATH: &str = "/msi/token";
const ARC_PATH: &str = "/metadata/identity/oauth2/token";
const CLOUD_SHELL_PATH: &str = "/oauth2/token";
const AZURE_ML_PATH: &str = "/MSI/auth";
const SERVICE_FABRIC_PATH: &str = "/metadata/identity/oauth2/token";

/// The headers that carry an identity secret or marker; logged separately so comparisons can
/// look at exactly these.
pub const IDENTITY_HEADERS: [&str; 4] =
    ["metadata", "x-identity-header", "secret", "authorization"];

/// Which managed-identity endpoint to emulate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    Imds,
    AppService,
    AzureArc,
    CloudShell,
    AzureMl,
    ServiceFabric,
}

impl Flavour {
    pub const ALL: [Flavour; 6] = [
        Flavour::Imds,
        Flavour::AppService,
        Flavour::AzureArc,
        Flavour::CloudShell,
        Flavour::AzureMl,
        Flavour::ServiceFabric,
    ];

    /// The `api-version` query value the real endpoint expects (Cloud Shell takes none).
    pub fn api_version(self) -> Option<&'static str> {
        match self {
            Flavour::Imds => Some("2018-02-01"),
            Flavour::AppService => Some("2019-08-01"),
            Flavour::AzureArc => Some("2020-06-01"),
            Flavour::CloudShell => None,
            Flavour::AzureMl => Some("2017-09-01"),
            Flavour::ServiceFabric => Some("2019-07-01-preview"),
        }
    }

    fn path(self) -> &'static str {
        match self {
            Flavour::Imds => IMDS_PATH,
            Flavour::AppService => APP_SERVICE_PATH,
            Flavour::AzureArc => ARC_PATH,
            Flavour::CloudShell => CLOUD_SHELL_PATH,
            Flavour::AzureMl => AZURE_ML_PATH,
            Flavour::ServiceFabric => SERVICE_FABRIC_PATH,
        }
    }

    fn method(self) -> Method {
        if self == Flavour::CloudShell {
            Method::POST
        } else {
            Method::GET
        }
    }
}

/// How a successful answer states when the token expires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpiresOn {
    /// Epoch seconds as a JSON string (`"1700000000"`), what IMDS and App Service send.
    EpochString,
    /// Epoch seconds as a JSON number.
    EpochNumber,
    /// Azure ML 2017-09-01 on Linux: `"06/20/2019 02:57:58 +00:00"`.
    Date,
    /// Azure ML 2017-09-01 on Windows: `"1/16/2020 5:24:12 AM +00:00"`.
    DateAmPm,
}

/// How to answer one request instead of following the flavour's rules. Each request takes the
/// oldest queued fault, if any (the Arc challenge request too).
#[derive(Clone, Debug)]
pub enum Fault {
    /// Exactly this status, JSON body and headers.
    Respond {
        status: u16,
        body: String,
        headers: Vec<(String, String)>,
    },
    /// 429 with `Retry-After: <value>`.
    TooManyRequests { retry_after: String },
    /// This 5xx status with a JSON error body.
    ServerError(u16),
    /// Sleep on tokio's clock, then answer normally.
    Delay(Duration),
    /// 200 with this exact body (malformed JSON, missing fields …).
    Body(String),
    /// IMDS's answer when the identity is not assigned to the machine: 400
    /// `{"error":"invalid_request","error_description":"Identity not found"}`.
    IdentityNotFound,
    /// Close without answering.
    Close,
}

/// One request as the emulator received it.
#[derive(Clone, Debug)]
pub struct Logged {
    /// Arrival number since the emulator started (not reset by `clear`).
    pub seq: u64,
    pub method: Method,
    /// The path, without the query.
    pub path: String,
    /// The decoded query pairs, in the order sent.
    pub query: Vec<(String, String)>,
    /// The identity headers present ([`IDENTITY_HEADERS`], names lower-cased), in that order.
    pub identity_headers: Vec<(String, String)>,
    /// Every header, for anything else a test wants to look at.
    pub headers: HeaderMap,
    /// The raw body (UTF-8, lossy).
    pub body: String,
    /// When it arrived, on tokio's clock, since the emulator started.
    pub at: Duration,
    /// The status it was answered with (`None`: closed or still being answered).
    pub status: Option<u16>,
}

impl Logged {
    /// The first value of query parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The query parameter names, sorted (duplicates kept).
    pub fn param_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.query.iter().map(|(key, _)| key.as_str()).collect();
        names.sort_unstable();
        names
    }

    /// The body decoded as a form, in the order sent.
    pub fn form(&self) -> Vec<(String, String)> {
        url::form_urlencoded::parse(self.body.as_bytes())
            .into_owned()
            .collect()
    }

    /// The value of an identity header (lower-case name).
    pub fn identity_header(&self, name: &str) -> Option<&str> {
        self.identity_headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// A running emulator. Dropping it stops the server (and deletes Arc's key directory).
pub struct Emulator {
    flavour: Flavour,
    state: Arc<State>,
    addr: SocketAddr,
    accept_loop: JoinHandle<()>,
    /// Arc: the directory holding the key file (the test's stand-in for
    /// `/var/opt/azcmagent/tokens`).
    key_dir: Option<tempfile::TempDir>,
    /// Service Fabric: SHA-1 of the server certificate, 40 upper-case hex digits.
    thumbprint: Option<String>,
    // Never sent on: dropping it is the shutdown signal every connection task listens for.
    _shutdown: watch::Sender<()>,
}

impl Emulator {
    /// Binds `127.0.0.1:0` and serves `flavour` on the current tokio runtime.
    pub async fn start(flavour: Flavour) -> Emulator {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("mi emulator: bind 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("mi emulator: listener address");
        let (shutdown_tx, shutdown_rx) = watch::channel(());

        let key_dir = (flavour == Flavour::AzureArc).then(|| {
            let dir = tempfile::tempdir().expect("mi emulator: Arc key directory");
            std::fs::write(dir.path().join(ARC_KEY_FILE), ARC_KEY).expect("write Arc key file");
            dir
        });
        let realm = key_dir.as_ref().map(|dir| dir.path().join(ARC_KEY_FILE));
        let (tls, thumbprint) = if flavour == Flavour::ServiceFabric {
            let (config, thumbprint) = service_fabric_tls();
            (Some(TlsAcceptor::from(config)), Some(thumbprint))
        } else {
            (None, None)
        };

        let state = Arc::new(State {
            flavour,
            started: Instant::now(),
            issued: AtomicU64::new(0),
            arrived: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
            faults: Mutex::new(VecDeque::new()),
            gone_until: Mutex::new(None),
            lifetime: AtomicU64::new(DEFAULT_LIFETIME),
            expires_on: Mutex::new(default_expires_on(flavour)),
            arc_realm: Mutex::new(realm),
            arc_key_file: Mutex::new(None),
            echo_identity: std::sync::atomic::AtomicBool::new(true),
            shutdown: shutdown_rx.clone(),
        });
        let handler = {
            let state = Arc::clone(&state);
            move |req| handle(Arc::clone(&state), req)
        };
        let accept_loop = tokio::spawn(accept_loop(listener, tls, shutdown_rx, handler));
        Emulator {
            flavour,
            state,
            addr,
            accept_loop,
            key_dir,
            thumbprint,
            _shutdown: shutdown_tx,
        }
    }

    pub fn flavour(&self) -> Flavour {
        self.flavour
    }

    /// `http://127.0.0.1:<port>` (`https` for Service Fabric), no trailing slash.
    pub fn base_url(&self) -> String {
        let scheme = if self.flavour == Flavour::ServiceFabric {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}", self.addr.port())
    }

    /// The token endpoint's full URL (for IMDS: what the credential builds from the base URL).
    pub fn endpoint(&self) -> String {
        format!("{}{}", self.base_url(), self.flavour.path())
    }

    /// The environment that points a credential at this emulator and selects its source, as
    /// each source's host sets it (App Service, Arc and Service Fabric set `IDENTITY_*`, Azure
    /// ML and Cloud Shell `MSI_*`, and IMDS is redirected by azure-identity's
    /// `AZURE_POD_IDENTITY_AUTHORITY_HOST`).
    pub fn env(&self) -> Vec<(String, String)> {
        let pairs: Vec<(&str, String)> = match self.flavour {
            Flavour::Imds => vec![("AZURE_POD_IDENTITY_AUTHORITY_HOST", self.base_url())],
            Flavour::AppService => vec![
                ("IDENTITY_ENDPOINT", self.endpoint()),
                ("IDENTITY_HEADER", IDENTITY_HEADER.to_owned()),
            ],
            Flavour::AzureArc => vec![
                ("IDENTITY_ENDPOINT", self.endpoint()),
                ("IMDS_ENDPOINT", self.base_url()),
            ],
            Flavour::CloudShell => vec![("MSI_ENDPOINT", self.endpoint())],
            Flavour::AzureMl => vec![
                ("MSI_ENDPOINT", self.endpoint()),
                ("MSI_SECRET", MSI_SECRET.to_owned()),
            ],
            Flavour::ServiceFabric => vec![
                ("IDENTITY_ENDPOINT", self.endpoint()),
                ("IDENTITY_HEADER", IDENTITY_HEADER.to_owned()),
                ("IDENTITY_SERVER_THUMBPRINT", self.thumbprint().to_owned()),
            ],
        };
        pairs
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect()
    }

    /// Service Fabric: SHA-1 of the server certificate's DER, 40 upper-case hex digits (the
    /// way Windows shows thumbprints). Panics for other flavours.
    pub fn thumbprint(&self) -> &str {
        self.thumbprint
            .as_deref()
            .expect("only the Service Fabric emulator has a thumbprint")
    }

    /// Arc: the directory holding the key file. Panics for other flavours.
    pub fn arc_key_dir(&self) -> &Path {
        self.key_dir
            .as_ref()
            .expect("only the Arc emulator has a key directory")
            .path()
    }

    /// Arc: the key file the challenge names by default.
    pub fn arc_key_file(&self) -> PathBuf {
        self.arc_key_dir().join(ARC_KEY_FILE)
    }

    /// Arc: name this path (any string, any file) in the challenge's `Basic realm=` from now
    /// on; the second request must then carry `Basic <that file's contents>`.
    pub fn set_arc_realm(&self, path: impl Into<PathBuf>) {
        *lock(&self.state.arc_realm) = Some(path.into());
        *lock(&self.state.arc_key_file) = None;
    }

    /// Arc: name `realm` in the challenge but demand the contents of `key_file` (an agent
    /// whose realm names its key file by another path, as clients that use only the file name
    /// must cope with).
    pub fn set_arc_realm_and_key_file(&self, realm: impl Into<PathBuf>, key_file: PathBuf) {
        *lock(&self.state.arc_realm) = Some(realm.into());
        *lock(&self.state.arc_key_file) = Some(key_file);
    }

    /// Every request, in arrival order.
    pub fn requests(&self) -> Vec<Logged> {
        lock(&self.state.log).clone()
    }

    /// How many requests arrived.
    pub fn request_count(&self) -> usize {
        lock(&self.state.log).len()
    }

    /// Clears the log and the fault queue (and the 410 window).
    pub fn clear(&self) {
        lock(&self.state.log).clear();
        lock(&self.state.faults).clear();
        *lock(&self.state.gone_until) = None;
    }

    /// Queues a fault for the next request that has none yet.
    pub fn push_fault(&self, fault: Fault) {
        check_fault(&fault);
        lock(&self.state.faults).push_back(fault);
    }

    /// Queues the same fault for the next `times` requests.
    pub fn push_faults(&self, fault: Fault, times: usize) {
        for _ in 0..times {
            self.push_fault(fault.clone());
        }
    }

    /// Answers every request with 410 Gone until `duration` has passed on tokio's clock from
    /// now (IMDS does this for up to 70 s while it is being updated).
    pub fn gone_for(&self, duration: Duration) {
        *lock(&self.state.gone_until) = Some(Instant::now() + duration);
    }

    /// The lifetime of tokens from now on, in seconds.
    pub fn set_lifetime(&self, seconds: u64) {
        self.state.lifetime.store(seconds, Ordering::SeqCst);
    }

    /// How `expires_on` is written from now on (flavours that send it).
    pub fn set_expires_on(&self, format: ExpiresOn) {
        *lock(&self.state.expires_on) = format;
    }

    /// Whether answers name the user-assigned identity they were asked for (default yes). An
    /// old Arc agent ignores the selector and answers for the system-assigned identity without
    /// saying so: `false` emulates it.
    pub fn set_echo_identity(&self, echo: bool) {
        self.state.echo_identity.store(echo, Ordering::SeqCst);
    }

    /// Tokio time since the emulator started (the clock `Logged::at` uses).
    pub fn elapsed(&self) -> Duration {
        self.state.started.elapsed()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

/// A loopback port nothing listens on: bound, noted, and released. Another process could
/// take it in between, but the kernel hands out ephemeral ports in sequence, so the window is
/// the length of one test.
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// `http://127.0.0.1:<closed port>`.
pub fn closed_base_url() -> String {
    format!("http://127.0.0.1:{}", closed_port())
}

/// The SHA-1 of `der` as 40 upper-case hex digits.
pub fn sha1_hex(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, der);
    digest.as_ref().iter().fold(String::new(), |mut out, byte| {
        let _ = write!(out, "{byte:02X}");
        out
    })
}

// ---------------------------------------------------------------------------------------------
// State

const ARC_KEY_FILE: &str = "mi-emulator.key";

struct State {
    flavour: Flavour,
    started: Instant,
    issued: AtomicU64,
    arrived: AtomicU64,
    log: Mutex<Vec<Logged>>,
    faults: Mutex<VecDeque<Fault>>,
    gone_until: Mutex<Option<Instant>>,
    lifetime: AtomicU64,
    expires_on: Mutex<ExpiresOn>,
    arc_realm: Mutex<Option<PathBuf>>,
    /// The file whose contents the agent demands, when not the realm's.
    arc_key_file: Mutex<Option<PathBuf>>,
    echo_identity: std::sync::atomic::AtomicBool,
    shutdown: watch::Receiver<()>,
}

fn default_expires_on(flavour: Flavour) -> ExpiresOn {
    match flavour {
        // Service Fabric's documentation shows a number; the others send strings.
        Flavour::ServiceFabric => ExpiresOn::EpochNumber,
        _ => ExpiresOn::EpochString,
    }
}

type Answer = Response<Full<Bytes>>;

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Answer, BoxError> {
    let at = state.started.elapsed();
    let (parts, body) = req.into_parts();
    let body = Limited::new(body, MAX_REQUEST_BODY)
        .collect()
        .await?
        .to_bytes();
    let logged = Logged {
        seq: state.arrived.fetch_add(1, Ordering::SeqCst),
        method: parts.method.clone(),
        path: parts.uri.path().to_owned(),
        query: parts
            .uri
            .query()
            .map(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .into_owned()
                    .collect()
            })
            .unwrap_or_default(),
        identity_headers: IDENTITY_HEADERS
            .iter()
            .filter_map(|name| {
                let value = parts.headers.get(*name)?;
                Some((
                    (*name).to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                ))
            })
            .collect(),
        headers: parts.headers.clone(),
        body: String::from_utf8_lossy(&body).into_owned(),
        at,
        status: None,
    };
    // Logged before any fault applies, so delayed and closed requests show up too.
    lock(&state.log).push(logged.clone());
    let answer = answer(&state, &logged).await;
    if let Ok(answer) = &answer {
        let mut log = lock(&state.log);
        // Found by number: the log may have been cleared while this request was answered.
        if let Some(entry) = log.iter_mut().find(|entry| entry.seq == logged.seq) {
            entry.status = Some(answer.status().as_u16());
        }
    }
    answer
}

async fn answer(state: &State, req: &Logged) -> Result<Answer, BoxError> {
    let gone = lock(&state.gone_until).is_some_and(|until| Instant::now() < until);
    if gone {
        return Ok(json_answer(
            StatusCode::GONE,
            json!({"error": "gone", "error_description": "IMDS is being updated"}).to_string(),
        ));
    }
    let fault = lock(&state.faults).pop_front();
    match fault {
        None => Ok(flavour_answer(state, req)),
        Some(Fault::Respond {
            status,
            body,
            headers,
        }) => Ok(exact_reply(status, body, &headers)),
        Some(Fault::TooManyRequests { retry_after }) => {
            let mut answer = json_answer(
                StatusCode::TOO_MANY_REQUESTS,
                json!({"error": "too_many_requests", "error_description": "Too many requests"})
                    .to_string(),
            );
            if let Ok(value) = HeaderValue::from_str(&retry_after) {
                answer.headers_mut().insert(header::RETRY_AFTER, value);
            }
            Ok(answer)
        }
        Some(Fault::ServerError(status)) => Ok(json_answer(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            json!({"error": "server_error", "error_description": "emulated server error"})
                .to_string(),
        )),
        Some(Fault::Delay(delay)) => {
            tokio::time::sleep(delay).await;
            Ok(flavour_answer(state, req))
        }
        Some(Fault::Body(body)) => Ok(json_answer(StatusCode::OK, body)),
        Some(Fault::IdentityNotFound) => Ok(identity_not_found()),
        Some(Fault::Close) => Err(Box::new(NoAnswer("fault: close without answering"))),
    }
}

fn identity_not_found() -> Answer {
    json_answer(
        StatusCode::BAD_REQUEST,
        json!({"error": "invalid_request", "error_description": "Identity not found"}).to_string(),
    )
}

/// The flavour's own rules: what it checks, then its answer.
fn flavour_answer(state: &State, req: &Logged) -> Answer {
    let flavour = state.flavour;
    if req.path != flavour.path() {
        return json_answer(
            StatusCode::NOT_FOUND,
            json!({"error": "not_found", "error_description": format!("no endpoint at {}", req.path)})
                .to_string(),
        );
    }
    if req.method != flavour.method() {
        return json_answer(
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"error": "invalid_request", "error_description": "method not allowed"})
                .to_string(),
        );
    }
    // Cloud Shell takes its parameters as a form body, everyone else in the query.
    let params: Vec<(String, String)> = if flavour == Flavour::CloudShell {
        req.form()
    } else {
        req.query.clone()
    };
    let param = |name: &str| {
        params
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    if let Some(problem) = check_secret(flavour, req) {
        return problem;
    }
    if let Some(expected) = flavour.api_version() {
        if param("api-version") != Some(expected) {
            return bad_request(flavour, &format!("api-version must be {expected}"));
        }
    }
    let Some(resource) = param("resource").filter(|r| !r.is_empty()) else {
        return bad_request(flavour, "resource is required");
    };
    if resource == UNKNOWN_RESOURCE {
        return identity_not_found();
    }
    if flavour == Flavour::AzureArc {
        if let Some(challenge) = arc_challenge(state, req) {
            return challenge;
        }
    }
    let n = state.issued.fetch_add(1, Ordering::SeqCst) + 1;
    json_answer(
        StatusCode::OK,
        token_body(state, resource, &params, n).to_string(),
    )
}

/// The flavour's secret check; `Some` is the refusal.
fn check_secret(flavour: Flavour, req: &Logged) -> Option<Answer> {
    let (header, expected) = match flavour {
        // IMDS and Arc only want the `Metadata: true` marker (Arc's key comes later).
        Flavour::Imds | Flavour::AzureArc | Flavour::CloudShell => ("metadata", "true"),
        Flavour::AppService => ("x-identity-header", IDENTITY_HEADER),
        Flavour::AzureMl => ("secret", MSI_SECRET),
        Flavour::ServiceFabric => ("secret", IDENTITY_HEADER),
    };
    if req.identity_header(header) == Some(expected) {
        return None;
    }
    Some(match flavour {
        Flavour::ServiceFabric => json_answer(
            StatusCode::UNAUTHORIZED,
            json!({"error": {"code": "SecretHeaderNotFound", "message": "Secret is not found in the request headers."}})
                .to_string(),
        ),
        Flavour::AppService | Flavour::AzureMl => json_answer(
            StatusCode::UNAUTHORIZED,
            json!({"statusCode": 401, "message": format!("missing or wrong {header} header")})
                .to_string(),
        ),
        _ => json_answer(
            StatusCode::BAD_REQUEST,
            json!({"error": "invalid_request", "error_description": "Required metadata header not specified"})
                .to_string(),
        ),
    })
}

fn bad_request(flavour: Flavour, message: &str) -> Answer {
    let body = match flavour {
        Flavour::ServiceFabric => {
            json!({"error": {"code": "ArgumentNullOrEmpty", "message": message}})
        }
        Flavour::AppService | Flavour::AzureMl => json!({"statusCode": 400, "message": message}),
        _ => json!({"error": "invalid_request", "error_description": message}),
    };
    json_answer(StatusCode::BAD_REQUEST, body.to_string())
}

/// Arc: without `Authorization`, 401 with `WWW-Authenticate: Basic realm=<key file>`; with it,
/// it must be `Basic <contents of that file>` (or of the key file set apart from the realm).
/// `None`: authorised.
fn arc_challenge(state: &State, req: &Logged) -> Option<Answer> {
    let realm = lock(&state.arc_realm).clone()?;
    let challenge = || {
        let mut answer = json_answer(
            StatusCode::UNAUTHORIZED,
            json!({"error": "unauthorized", "error_description": "Basic authentication required"})
                .to_string(),
        );
        if let Ok(value) = HeaderValue::from_str(&format!("Basic realm={}", realm.display())) {
            answer.headers_mut().insert(header::WWW_AUTHENTICATE, value);
        }
        answer
    };
    let Some(authorization) = req.identity_header("authorization") else {
        return Some(challenge());
    };
    // What a real agent compares with is what it wrote; read it now, so a test that swaps
    // the file sees the new contents demanded. A wrong key gets the challenge again.
    let key_file = lock(&state.arc_key_file)
        .clone()
        .unwrap_or_else(|| realm.clone());
    let Ok(expected) = std::fs::read_to_string(&key_file) else {
        return Some(challenge());
    };
    if authorization.strip_prefix("Basic ") == Some(expected.as_str()) {
        None
    } else {
        Some(challenge())
    }
}

/// The success body in the flavour's format.
fn token_body(state: &State, resource: &str, params: &[(String, String)], n: u64) -> Value {
    let flavour = state.flavour;
    let lifetime = state.lifetime.load(Ordering::SeqCst);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let expires_on_secs = now + lifetime;
    let format = *lock(&state.expires_on);
    let expires_on = match format {
        ExpiresOn::EpochString => Value::String(expires_on_secs.to_string()),
        ExpiresOn::EpochNumber => Value::from(expires_on_secs),
        ExpiresOn::Date => Value::String(ml_date(expires_on_secs, false)),
        ExpiresOn::DateAmPm => Value::String(ml_date(expires_on_secs, true)),
    };
    let access_token = format!("mi-{}-{n}", flavour_tag(flavour));
    let mut body = Map::new();
    body.insert("access_token".into(), access_token.into());
    match flavour {
        // IMDS (and the Arc agent, which mimics it) send every number as a string.
        Flavour::Imds | Flavour::AzureArc => {
            body.insert("expires_in".into(), lifetime.to_string().into());
            body.insert("expires_on".into(), expires_on);
            body.insert("ext_expires_in".into(), lifetime.to_string().into());
            body.insert("not_before".into(), now.to_string().into());
        }
        Flavour::CloudShell => {
            body.insert("expires_in".into(), lifetime.to_string().into());
            body.insert("expires_on".into(), expires_on);
            body.insert("not_before".into(), now.to_string().into());
        }
        Flavour::AppService | Flavour::AzureMl | Flavour::ServiceFabric => {
            body.insert("expires_on".into(), expires_on);
        }
    }
    body.insert("resource".into(), resource.into());
    body.insert("token_type".into(), "Bearer".into());
    // Echo the user-assigned selector the way agents that honour one do (MSAL checks Arc's).
    let echo = state.echo_identity.load(Ordering::SeqCst);
    for (name, value) in params.iter().filter(|_| echo) {
        if matches!(
            name.as_str(),
            "client_id" | "clientid" | "object_id" | "msi_res_id" | "mi_res_id"
        ) {
            body.insert(name.clone(), value.as_str().into());
        }
    }
    Value::Object(body)
}

fn flavour_tag(flavour: Flavour) -> &'static str {
    match flavour {
        Flavour::Imds => "imds",
        Flavour::AppService => "appservice",
        Flavour::AzureArc => "arc",
        Flavour::CloudShell => "cloudshell",
        Flavour::AzureMl => "azureml",
        Flavour::ServiceFabric => "servicefabric",
    }
}

/// Azure ML 2017-09-01's `expires_on`: `MM/DD/YYYY HH:MM:SS +00:00` (Linux) or
/// `M/D/YYYY H:MM:SS AM +00:00` (Windows), UTC.
pub fn ml_date(epoch: u64, am_pm: bool) -> String {
    let days = epoch / 86_400;
    let secs = epoch % 86_400;
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (secs / 3600, secs / 60 % 60, secs % 60);
    if am_pm {
        let (h12, half) = match hour {
            0 => (12, "AM"),
            1..=11 => (hour, "AM"),
            12 => (12, "PM"),
            _ => (hour - 12, "PM"),
        };
        format!("{month}/{day}/{year} {h12}:{minute:02}:{second:02} {half} +00:00")
    } else {
        format!("{month:02}/{day:02}/{year} {hour:02}:{minute:02}:{second:02} +00:00")
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

fn json_answer(status: StatusCode, body: String) -> Answer {
    let mut answer = Response::new(Full::new(Bytes::from(body)));
    *answer.status_mut() = status;
    answer.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    answer
}

fn check_fault(fault: &Fault) {
    match fault {
        Fault::Respond {
            status, headers, ..
        } => check_exact("mi Fault::Respond", *status, headers),
        Fault::TooManyRequests { retry_after } => assert!(
            HeaderValue::try_from(retry_after).is_ok(),
            "mi Fault::TooManyRequests: invalid Retry-After {retry_after:?}"
        ),
        Fault::ServerError(status) => assert!(
            (500..=599).contains(status),
            "mi Fault::ServerError: {status} is not 5xx"
        ),
        _ => {}
    }
}

/// A throwaway self-signed server certificate, as Service Fabric's managed-identity endpoint
/// presents (clients pin it by thumbprint, there is no CA), and its thumbprint.
fn service_fabric_tls() -> (Arc<ServerConfig>, String) {
    let key = KeyPair::generate().expect("Service Fabric emulator: key");
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .expect("Service Fabric emulator: SANs");
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "mi-emulator service fabric");
    params.distinguished_name = dn;
    let cert = params
        .self_signed(&key)
        .expect("Service Fabric emulator: self-sign");
    let thumbprint = sha1_hex(cert.der());
    let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("Service Fabric emulator: protocol versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("Service Fabric emulator: certificate and key");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    (Arc::new(config), thumbprint)
}

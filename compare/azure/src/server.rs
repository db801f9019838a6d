//! The one loopback server both stacks talk to: an Entra-shaped token endpoint
//! (`POST /{tenant}/oauth2/v2.0/token`, client-credentials grant) and the protected resource
//! (`GET /resource`), over HTTPS with a CA made at start by rcgen. HTTPS because
//! azure_identity refuses an `http` authority host and azure_core's bearer policy refuses
//! `http` resources; HTTP/1.1 only (ALPN `http/1.1`), so both clients speak the same protocol.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

pub const TENANT: &str = "00000000-0000-0000-0000-00000000beef";
pub const CLIENT_ID: &str = "00000000-0000-0000-0000-0000000c11e7";
pub const CLIENT_SECRET: &str = "compare-secret";
pub const SCOPE: &str = "https://resource.test/.default";

/// The claims the resource's challenge asks for (the CAE vector of
/// `/work/shared/reference/challenges.txt`), and the `WWW-Authenticate` value carrying them.
const CHALLENGE: &str = "Bearer realm=\"\", authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\", error=\"insufficient_claims\", claims=\"eyJhY2Nlc3NfdG9rZW4iOnsibmJmIjp7ImVzc2VudGlhbCI6dHJ1ZSwidmFsdWUiOiIxNzI2MDc3NTk1In0sInhtc19jYWVlcnJvciI6eyJ2YWx1ZSI6IjEwMDEyIn19fQ==\"";
/// A token request whose `claims` carry this was made for the challenge above.
const CHALLENGE_MARK: &str = "1726077595";

/// How token requests after the first short-lived token are answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// At once, a token living an hour.
    Normal,
    /// After this delay, a token living an hour.
    Slow(Duration),
    /// 503 with an Entra-shaped error body.
    Unavailable,
}

/// What the next token requests get.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// This many next token requests get a token due for renewal two seconds after it is
    /// issued: `expires_in` 302 (azure_core renews 300 s before expiry) and `refresh_in` 2
    /// (Entra's hint, which tower-identity follows).
    pub short_tokens: u32,
    pub renewal: Renewal,
}

pub struct State {
    pub token_requests: AtomicU64,
    pub resource_requests: AtomicU64,
    /// While set, a token not obtained with the challenge's claims gets the claims challenge.
    pub cae_armed: AtomicBool,
    plan: Mutex<Plan>,
    issued: AtomicU64,
}

impl State {
    pub fn set_plan(&self, plan: Plan) {
        *self.plan.lock().unwrap_or_else(PoisonError::into_inner) = plan;
    }

    /// The answer for one token request: its plan entry, taken under the lock, applied after.
    fn next_answer(&self) -> (bool, Renewal) {
        let mut plan = self.plan.lock().unwrap_or_else(PoisonError::into_inner);
        if plan.short_tokens > 0 {
            plan.short_tokens -= 1;
            (true, plan.renewal)
        } else {
            (false, plan.renewal)
        }
    }
}

pub struct Server {
    pub addr: SocketAddr,
    pub state: Arc<State>,
    pub ca_der: CertificateDer<'static>,
    pub ca_pem: String,
}

impl Server {
    pub fn authority_host(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    pub fn resource_url(&self) -> String {
        format!("https://127.0.0.1:{}/resource", self.addr.port())
    }
}

/// Binds 127.0.0.1:0 and serves on the current runtime.
pub async fn start() -> Server {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::default();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = ca_params.self_signed(&ca_key).expect("self-signed CA");
    let key = KeyPair::generate().expect("server key");
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("server SANs")
        .signed_by(&key, &ca, &ca_key)
        .expect("server certificate");
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone(), ca.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
    .expect("server certificate and key");
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(tls));

    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("listener address");
    let state = Arc::new(State {
        token_requests: AtomicU64::new(0),
        resource_requests: AtomicU64::new(0),
        cae_armed: AtomicBool::new(false),
        plan: Mutex::new(Plan {
            short_tokens: 0,
            renewal: Renewal::Normal,
        }),
        issued: AtomicU64::new(0),
    });
    let accept_state = Arc::clone(&state);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, state) = (acceptor.clone(), Arc::clone(&accept_state));
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(move |request| handle(Arc::clone(&state), request));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .http1_only()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Server {
        addr,
        state,
        ca_der: ca.der().clone(),
        ca_pem: ca.pem(),
    }
}

async fn handle(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.uri().path() == "/resource" {
        return Ok(resource(&state, &request));
    }
    if request.method() == http::Method::POST
        && request.uri().path() == format!("/{TENANT}/oauth2/v2.0/token")
    {
        let body = request.into_body().collect().await.map(|b| b.to_bytes());
        return Ok(token(&state, &body.unwrap_or_default()).await);
    }
    Ok(answer(StatusCode::NOT_FOUND, "not found"))
}

fn resource(state: &State, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    state.resource_requests.fetch_add(1, Ordering::Relaxed);
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    let Some(token) = token.filter(|t| t.starts_with("tok-") || t.starts_with("cae-")) else {
        return answer(StatusCode::UNAUTHORIZED, "no valid token");
    };
    if state.cae_armed.load(Ordering::Relaxed) {
        if !token.starts_with("cae-") {
            let mut response = answer(StatusCode::UNAUTHORIZED, "claims challenge");
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static(CHALLENGE),
            );
            return response;
        }
        state.cae_armed.store(false, Ordering::Relaxed);
    }
    answer(StatusCode::OK, "ok")
}

async fn token(state: &State, body: &[u8]) -> Response<Full<Bytes>> {
    state.token_requests.fetch_add(1, Ordering::Relaxed);
    let form: Vec<(String, String)> = url_form(body);
    let field = |name: &str| {
        form.iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    if field("grant_type") != Some("client_credentials")
        || field("client_id") != Some(CLIENT_ID)
        || field("client_secret") != Some(CLIENT_SECRET)
        || field("scope") != Some(SCOPE)
    {
        return json(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided."}),
        );
    }
    let (short, renewal) = state.next_answer();
    if !short {
        match renewal {
            Renewal::Normal => {}
            Renewal::Slow(delay) => tokio::time::sleep(delay).await,
            Renewal::Unavailable => {
                return json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({"error": "temporarily_unavailable", "error_description": "AADSTS90033: A transient error has occurred. Please try again."}),
                );
            }
        }
    }
    let cae = field("claims").is_some_and(|claims| claims.contains(CHALLENGE_MARK));
    let n = state.issued.fetch_add(1, Ordering::Relaxed);
    let access_token = format!("{}-{n:08}", if cae { "cae" } else { "tok" });
    let mut answer = serde_json::json!({
        "token_type": "Bearer",
        "expires_in": if short { 302 } else { 3600 },
        "ext_expires_in": if short { 302 } else { 3600 },
        "access_token": access_token,
    });
    if short {
        answer["refresh_in"] = 2.into();
    }
    json(StatusCode::OK, answer)
}

fn url_form(body: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = answer(status, &value.to_string());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

fn answer(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    response
}

//! The node `oidc-provider` peer (tests/peers/oidc): started once per test process, over
//! HTTPS with a CA it makes at start-up. It exits when this process does (its stdin closes).
//!
//! A missing `node` or missing `node_modules` fails the test with the command that fixes it.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tower::ServiceExt;
use tower_identity::HttpClient;

/// The confidential client every tenant of the peer knows.
pub const CLIENT_ID: &str = "11111111-1111-1111-1111-111111111111";
pub const CLIENT_SECRET: &str = "peer-secret-1";
/// Azure CLI's public client id: the peer answers it with `foci: "1"` (family refresh tokens).
pub const FOCI_CLIENT_ID: &str = "04b07795-8ddb-461a-bbee-02f9e1bf7b46";
/// A public client outside the family.
pub const PUBLIC_CLIENT_ID: &str = "22222222-2222-2222-2222-222222222222";
/// The redirect URI every peer client accepts.
pub const REDIRECT_URI: &str = "http://localhost:8400/callback";
/// The home tenant ids (`utid`) the peer gives the tenants `contoso` and `fabrikam`.
pub const CONTOSO_TID: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
pub const FABRIKAM_TID: &str = "f8cdef31-a31e-4b4a-93e4-5f571e91255a";
/// The app with a federated identity credential trusting the peer's cluster issuer for
/// [`WORKLOAD_SUBJECT`] and the audience `api://AzureADTokenExchange`.
pub const WORKLOAD_CLIENT_ID: &str = "33333333-3333-3333-3333-333333333333";
pub const WORKLOAD_SUBJECT: &str = "system:serviceaccount:workloads:token-reader";

pub struct Peer {
    pub base: String,
    /// The second issuer, standing for a Kubernetes cluster (service-account tokens).
    pub cluster_issuer: String,
    pub ca_pem: String,
    pub ca_path: PathBuf,
    log_path: PathBuf,
    // Held so the peer's stdin stays open for the life of the test process.
    _child: Mutex<Child>,
    _dir: tempfile::TempDir,
}

const INSTALL_HINT: &str = "install the peers with `tests/run.sh` (or `npm ci --prefix tests/peers/oidc`; Node.js 20+ and openssl are needed)";

pub fn peer() -> &'static Peer {
    static PEER: OnceLock<Result<Peer, String>> = OnceLock::new();
    match PEER.get_or_init(|| start(&[])) {
        Ok(peer) => peer,
        Err(message) => panic!("oidc-provider peer unavailable: {message}"),
    }
}

/// A second instance on 127.0.0.1:443: azure-identity's shared-cache credential compares the
/// cached `environment` (msal writes the host without port) with the authority's host *and
/// port*, so it finds cached accounts only on the default port. Binding 443 needs root (CI
/// runs as root) or CAP_NET_BIND_SERVICE.
pub fn peer_443() -> &'static Peer {
    static PEER: OnceLock<Result<Peer, String>> = OnceLock::new();
    match PEER.get_or_init(|| start(&["--port", "443"])) {
        Ok(peer) => peer,
        Err(message) => panic!(
            "oidc-provider peer on 127.0.0.1:443 unavailable (binding port 443 needs root or \
             CAP_NET_BIND_SERVICE): {message}"
        ),
    }
}

fn peer_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/oidc")
}

fn start(extra: &[&str]) -> Result<Peer, String> {
    let dir = peer_dir();
    if !dir.join("node_modules/oidc-provider").is_dir() {
        return Err(format!(
            "{} has no node_modules; {INSTALL_HINT}",
            dir.display()
        ));
    }
    let temp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let log_path = temp.path().join("peer.log");
    let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
    let mut child = Command::new("node")
        .arg(dir.join("server.mjs"))
        .arg("--dir")
        .arg(temp.path())
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot run `node` ({e}); {INSTALL_HINT}"))?;
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let mut reader = BufReader::new(stdout);
        let _ = tx.send(reader.read_line(&mut line).map(|_| line));
        // Keep draining so the peer never blocks on a full pipe.
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
    });
    let line = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Ok(line)) if !line.trim().is_empty() => line,
        other => {
            let _ = child.kill();
            return Err(format!(
                "the peer did not report ready ({other:?}); its log:\n{}",
                read_log(&log_path)
            ));
        }
    };
    let ready: serde_json::Value =
        serde_json::from_str(&line).map_err(|e| format!("bad ready line {line:?}: {e}"))?;
    let base = ready["base"]
        .as_str()
        .ok_or("ready line without base")?
        .to_owned();
    let cluster_issuer = ready["cluster_issuer"]
        .as_str()
        .ok_or("ready line without cluster_issuer")?
        .to_owned();
    let ca = ready["ca"].as_str().ok_or("ready line without ca")?;
    let ca_pem = std::fs::read_to_string(ca).map_err(|e| format!("reading {ca}: {e}"))?;
    Ok(Peer {
        base,
        cluster_issuer,
        ca_pem,
        ca_path: PathBuf::from(ca),
        log_path,
        _child: Mutex::new(child),
        _dir: temp,
    })
}

fn read_log(path: &PathBuf) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    text
}

impl Peer {
    /// An HTTP client trusting the peer's CA (and the public roots).
    pub fn http(&self) -> HttpClient {
        HttpClient::builder()
            .add_root_certificates_pem(&self.ca_pem)
            .build()
            .expect("peer CA is valid PEM")
    }

    /// What the peer wrote to stderr so far (for failure messages).
    pub fn log(&self) -> String {
        read_log(&self.log_path)
    }

    /// GET/POST a test endpoint and parse its JSON.
    pub async fn call(
        &self,
        method: http::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> serde_json::Value {
        let request = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))
            .unwrap();
        let response = self.http().oneshot(request).await.expect("peer answers");
        serde_json::from_slice(response.body()).unwrap_or_else(|e| {
            panic!(
                "peer answered non-JSON to {path}: {e}: {:?}",
                response.body()
            )
        })
    }

    /// An authorization code for `username`, obtained without a person (the peer's
    /// test-only endpoint drives its own sign-in and consent).
    pub async fn authorization_code(
        &self,
        tenant: &str,
        client_id: &str,
        scope: &str,
        username: &str,
    ) -> String {
        self.authorize(serde_json::json!({
            "tenant": tenant,
            "client_id": client_id,
            "redirect_uri": REDIRECT_URI,
            "scope": scope,
            "login_hint": username,
        }))
        .await
    }

    /// [`authorization_code`](Self::authorization_code) for a sign-in with PKCE: the code is
    /// bound to `code_challenge` (`S256`), and redeemed only with its verifier.
    pub async fn authorization_code_with_pkce(
        &self,
        tenant: &str,
        client_id: &str,
        scope: &str,
        username: &str,
        code_challenge: &str,
    ) -> String {
        self.authorize(serde_json::json!({
            "tenant": tenant,
            "client_id": client_id,
            "redirect_uri": REDIRECT_URI,
            "scope": scope,
            "login_hint": username,
            "code_challenge": code_challenge,
            "code_challenge_method": "S256",
        }))
        .await
    }

    async fn authorize(&self, request: serde_json::Value) -> String {
        let answer = self
            .call(http::Method::POST, "/_test/authorize", Some(request))
            .await;
        answer["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no code from /_test/authorize: {answer}"))
            .to_owned()
    }

    /// Makes the peer reject this refresh token from now on (invalid_grant).
    pub async fn revoke_refresh_token(&self, refresh_token: &str) {
        let answer = self
            .call(
                http::Method::POST,
                "/_test/revoke_refresh_token",
                Some(serde_json::json!({ "refresh_token": refresh_token })),
            )
            .await;
        assert_eq!(answer["revoked"], true, "{answer}");
    }

    /// A service-account token signed by the cluster issuer, as the kubelet projects it; `input`
    /// overrides its defaults (`sub`, `aud`, `iss`, `issued_ago`, `lifetime`, `rogue_key`: see
    /// the peer's README). Returns the token and its claims.
    pub async fn service_account_token(
        &self,
        input: serde_json::Value,
    ) -> (String, serde_json::Value) {
        let answer = self
            .call(http::Method::POST, "/_test/workload/token", Some(input))
            .await;
        let token = answer["token"]
            .as_str()
            .unwrap_or_else(|| panic!("no token from /_test/workload/token: {answer}"))
            .to_owned();
        (token, answer["claims"].clone())
    }

    /// The token requests the peer received, oldest first.
    pub async fn token_log(&self) -> Vec<serde_json::Value> {
        match self.call(http::Method::GET, "/_test/log", None).await {
            serde_json::Value::Array(entries) => entries,
            other => panic!("unexpected log {other}"),
        }
    }
}

/// The claims of a JWT (its middle segment), unverified.
pub fn jwt_claims(token: &str) -> serde_json::Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("a JWT has three segments");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .expect("base64url payload");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

/// The user's side of the device code flow, through the peer's verification page.
impl Peer {
    /// Signs `username` in with `user_code` at `tenant` and consents.
    pub async fn approve_device_code(&self, tenant: &str, user_code: &str, username: &str) {
        let answer = self
            .call(
                http::Method::POST,
                "/_test/device/approve",
                Some(serde_json::json!({
                    "tenant": tenant, "user_code": user_code, "login_hint": username,
                })),
            )
            .await;
        assert_eq!(answer["approved"], true, "{answer}");
    }

    /// Declines the sign-in of `user_code` on the confirmation page.
    pub async fn decline_device_code(&self, tenant: &str, user_code: &str) {
        let answer = self
            .call(
                http::Method::POST,
                "/_test/device/decline",
                Some(serde_json::json!({ "tenant": tenant, "user_code": user_code })),
            )
            .await;
        assert_eq!(answer["declined"], true, "{answer}");
    }

    /// Makes the code of `user_code` expired from now on.
    pub async fn expire_device_code(&self, user_code: &str) {
        let answer = self
            .call(
                http::Method::POST,
                "/_test/device/expire",
                Some(serde_json::json!({ "user_code": user_code })),
            )
            .await;
        assert_eq!(answer["expired"], true, "{answer}");
    }

    /// The next `count` device code polls at `tenant` are answered `slow_down`.
    pub async fn slow_down_device_polls(&self, tenant: &str, count: u32) {
        let answer = self
            .call(
                http::Method::POST,
                "/_test/device/slow_down",
                Some(serde_json::json!({ "tenant": tenant, "count": count })),
            )
            .await;
        assert_eq!(answer["slow_down"], count, "{answer}");
    }
}

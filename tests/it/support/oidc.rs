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

pub struct Peer {
    pub base: String,
    pub ca_pem: String,
    log_path: PathBuf,
    // Held so the peer's stdin stays open for the life of the test process.
    _child: Mutex<Child>,
    _dir: tempfile::TempDir,
}

const INSTALL_HINT: &str = "install the peers with `tests/run.sh` (or `npm ci --prefix tests/peers/oidc`; Node.js 20+ and openssl are needed)";

pub fn peer() -> &'static Peer {
    static PEER: OnceLock<Result<Peer, String>> = OnceLock::new();
    match PEER.get_or_init(start) {
        Ok(peer) => peer,
        Err(message) => panic!("oidc-provider peer unavailable: {message}"),
    }
}

fn peer_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/oidc")
}

fn start() -> Result<Peer, String> {
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
    let ca = ready["ca"].as_str().ok_or("ready line without ca")?;
    let ca_pem = std::fs::read_to_string(ca).map_err(|e| format!("reading {ca}: {e}"))?;
    Ok(Peer {
        base,
        ca_pem,
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

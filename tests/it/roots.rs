//! `HttpClientBuilder::roots`: the platform's store, read from `SSL_CERT_FILE` / `SSL_CERT_DIR`
//! as rustls-native-certs does on Linux, next to the bundled roots.
//!
//! Those variables are process-wide and the tests run on parallel threads, so each case runs
//! in a child: this test binary again, running only [`child_requests_a_token`] with the
//! variables set to the loopback authority's CA. The parent serves the authority and reads
//! the child's one result line.

use std::path::{Path, PathBuf};

use tokio::process::Command;
use tower_identity::{ClientSecretCredential, CredentialExt, HttpClient, Roots};

use crate::support::authority::Authority;
use crate::support::creds::{CLIENT_ID, CLIENT_SECRET, Logs, SCOPE, TENANT};

/// The child's settings, passed in its environment.
const CHILD_AUTHORITY: &str = "TOWER_IDENTITY_TEST_ROOTS_AUTHORITY";
const CHILD_ROOTS: &str = "TOWER_IDENTITY_TEST_ROOTS";
/// The child's result line starts with this.
const RESULT: &str = "roots-result: ";

/// What the child saw.
struct Outcome {
    /// `token <secret>`, `build-error <message>` or `token-error <message>`.
    result: String,
    /// Everything the child logged through `tracing`.
    logs: String,
}

/// Runs [`child_requests_a_token`] with `roots` and these trust variables (none inherited).
async fn in_child(authority: &Authority, roots: &str, vars: &[(&str, &Path)]) -> Outcome {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "roots::child_requests_a_token",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR")
        .env(CHILD_AUTHORITY, authority.url())
        .env(CHILD_ROOTS, roots);
    for (name, value) in vars {
        command.env(name, value);
    }
    let output = command.output().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "the child test did not run and pass:\n{stdout}\n{stderr}"
    );
    let result = stdout
        .lines()
        // libtest writes the test's name on the same line, before it.
        .find_map(|line| line.split_once(RESULT).map(|(_, result)| result))
        .unwrap_or_else(|| panic!("no result line:\n{stdout}"))
        .to_owned();
    Outcome {
        result,
        logs: stderr,
    }
}

/// A loopback authority and its CA written to a PEM file in a temporary directory.
struct Setup {
    authority: Authority,
    dir: tempfile::TempDir,
    ca: PathBuf,
}

impl Setup {
    async fn start() -> Setup {
        let authority = Authority::start().await;
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("corporate-ca.pem");
        std::fs::write(&ca, authority.ca_pem()).unwrap();
        Setup { authority, dir, ca }
    }
}

fn assert_token(outcome: &Outcome) {
    assert_eq!(outcome.result, "token at-1-contoso", "{}", outcome.logs);
}

/// The child logged a warning naming `path`.
fn assert_warned_about(outcome: &Outcome, path: &Path) {
    let path = path.display().to_string();
    assert!(
        outcome
            .logs
            .lines()
            .any(|line| line.contains("WARN") && line.contains(&path)),
        "no warning names {path}:\n{}",
        outcome.logs
    );
}

/// The client was built, and the authority's certificate was refused.
fn assert_unknown_issuer(outcome: &Outcome) {
    assert!(
        outcome.result.starts_with("token-error ") && outcome.result.contains("UnknownIssuer"),
        "{}",
        outcome.result
    );
}

/// The child: one token request with the roots named in its environment, reported on stdout.
#[tokio::test]
#[ignore = "the child process of the roots:: tests: they run it with its environment"]
async fn child_requests_a_token() {
    let authority = std::env::var(CHILD_AUTHORITY)
        .unwrap_or_else(|_| panic!("run by the roots:: tests, which set {CHILD_AUTHORITY}"));
    let roots = match std::env::var(CHILD_ROOTS).as_deref() {
        Ok("bundled") => Roots::Bundled,
        Ok("platform") => Roots::Platform,
        Ok("both") => Roots::BundledAndPlatform,
        other => panic!("{CHILD_ROOTS}: {other:?}"),
    };
    let (logs, _guard) = Logs::capture();
    let result = match HttpClient::builder().roots(roots).build() {
        Err(e) => format!("build-error {e}"),
        Ok(http) => {
            let credential = ClientSecretCredential::builder(TENANT, CLIENT_ID, CLIENT_SECRET)
                .authority_host(authority)
                .http_client(http)
                .build()
                .unwrap();
            match credential.get_token([SCOPE]).await {
                Ok(token) => format!("token {}", token.secret().expose_secret()),
                Err(e) => format!("token-error {e}"),
            }
        }
    };
    eprintln!("{}", logs.text());
    println!("{RESULT}{result}");
}

#[tokio::test]
async fn platform_roots_trust_a_ca_in_ssl_cert_file() {
    let setup = Setup::start().await;
    let outcome = in_child(
        &setup.authority,
        "platform",
        &[("SSL_CERT_FILE", &setup.ca)],
    )
    .await;
    assert_token(&outcome);
    assert_eq!(setup.authority.token_posts(), 1);
}

#[tokio::test]
async fn platform_roots_trust_a_ca_in_ssl_cert_dir() {
    let setup = Setup::start().await;
    let dir = setup.dir.path();
    let outcome = in_child(&setup.authority, "platform", &[("SSL_CERT_DIR", dir)]).await;
    assert_token(&outcome);
}

#[tokio::test]
async fn bundled_and_platform_roots_trust_it_too() {
    let setup = Setup::start().await;
    let outcome = in_child(&setup.authority, "both", &[("SSL_CERT_FILE", &setup.ca)]).await;
    assert_token(&outcome);
}

#[tokio::test]
async fn bundled_roots_ignore_the_platform_store() {
    let setup = Setup::start().await;
    let outcome = in_child(&setup.authority, "bundled", &[("SSL_CERT_FILE", &setup.ca)]).await;
    assert_unknown_issuer(&outcome);
    // The hint names the option that would have helped.
    assert!(
        outcome.result.contains("Roots::BundledAndPlatform"),
        "{}",
        outcome.result
    );
    assert_eq!(setup.authority.token_posts(), 0);
}

#[tokio::test]
async fn an_empty_platform_store_fails_the_build_saying_what_to_do() {
    let setup = Setup::start().await;
    let empty = setup.dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let outcome = in_child(&setup.authority, "platform", &[("SSL_CERT_FILE", &empty)]).await;
    let message = outcome
        .result
        .strip_prefix("build-error ")
        .unwrap_or_else(|| {
            panic!("{}", outcome.result);
        });
    for hint in [
        "no usable root certificate",
        "SSL_CERT_FILE",
        "ca-certificates",
        "add_root_certificates_pem",
        "Roots::BundledAndPlatform",
    ] {
        assert!(message.contains(hint), "{hint}: {message}");
    }
    assert!(
        outcome.logs.contains("the store holds none"),
        "{}",
        outcome.logs
    );
}

#[tokio::test]
async fn an_unreadable_platform_store_is_logged_and_the_bundled_roots_still_serve() {
    let setup = Setup::start().await;
    let missing = setup.dir.path().join("missing.pem");
    let outcome = in_child(&setup.authority, "both", &[("SSL_CERT_FILE", &missing)]).await;
    // Built on the bundled roots, which do not hold the authority's CA.
    assert_unknown_issuer(&outcome);
    assert_warned_about(&outcome, &missing);
}

#[tokio::test]
async fn a_partly_unreadable_platform_store_keeps_what_it_read() {
    let setup = Setup::start().await;
    let missing = setup.dir.path().join("no-such-dir");
    let vars: [(&str, &Path); 2] = [("SSL_CERT_FILE", &setup.ca), ("SSL_CERT_DIR", &missing)];
    let outcome = in_child(&setup.authority, "platform", &vars).await;
    assert_token(&outcome);
    assert_warned_about(&outcome, &missing);
}

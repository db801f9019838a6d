//! The examples, run as a user runs them: the built binaries, configured by environment
//! variables only. The copyable ones get the standard Azure variables pointing at the loopback
//! authority, `SSL_CERT_FILE` naming the loopback CA (the platform's store on Linux, as for a
//! TLS-inspecting proxy) and the loopback API as `RESOURCE_URL`: the code path a user runs
//! against Entra, with nothing leaving the machine.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use tokio::io::{AsyncBufReadExt, BufReader};
use tower::ServiceExt;

use crate::support::authority::{Authority, Fault};
use crate::support::certs;
use crate::support::client::hyper_client;
use crate::support::creds::{CLIENT_ID, CLIENT_SECRET, SCOPE, TENANT};
use crate::support::resource::{Answer, Resource};

/// `target/<profile>/examples/<name>`, built by `cargo test` alongside this binary.
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let path = profile_dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is not built; run the tests with `cargo test` (which builds examples)",
        path.display()
    );
    path
}

#[test]
fn get_token_with_nothing_configured_exits_non_zero_listing_every_attempt() {
    // IMDS at a closed loopback port, no home with a token cache, no az or azd on PATH.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let imds = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let home = tempfile::tempdir().unwrap();
    let output = Command::new(example("get_token"))
        .args(["--scope", "https://management.azure.com/.default"])
        .env_clear()
        .env("PATH", "/nonexistent")
        .env("HOME", home.path())
        .env("AZURE_POD_IDENTITY_AUTHORITY_HOST", &imds)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(output.stdout.is_empty());
    let mut last = 0;
    for (i, name) in (1..).zip([
        "EnvironmentCredential",
        "WorkloadIdentityCredential",
        "ManagedIdentityCredential",
        "SharedTokenCacheCredential",
        "AzureCliCredential",
        "AzureDeveloperCliCredential",
    ]) {
        let at = stderr
            .find(&format!("{i}. {name} (unavailable)"))
            .unwrap_or_else(|| panic!("{name} missing or out of order:\n{stderr}"));
        assert!(at >= last);
        last = at;
    }
    for hint in [
        "Set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET",
        "AZURE_FEDERATED_TOKEN_FILE",
        "az login",
        "azd auth login",
    ] {
        assert!(stderr.contains(hint), "{hint}: {stderr}");
    }
    assert_eq!(stderr.matches("error:").count(), 1, "one message: {stderr}");
}

/// A token request that cannot connect, from a client reading the proxy variables of the
/// process environment (the default), says what to do by the route it took: no proxy variable
/// set → set `HTTPS_PROXY`; one set and `NO_PROXY` exempting the host → that it went direct.
/// Each run is four attempts over about 6 s (the default retries); the two run side by side.
#[test]
fn a_connection_failure_hints_at_the_environments_proxy_variables() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let authority = format!("https://{}", closed.local_addr().unwrap());
    drop(closed);
    let home = tempfile::tempdir().unwrap();
    let run = |proxy: &[(&str, &str)]| {
        Command::new(example("get_token"))
            .args(["--scope", "https://management.azure.com/.default"])
            .env_clear()
            .env("PATH", "/nonexistent")
            .env("HOME", home.path())
            .env("AZURE_TOKEN_CREDENTIALS", "EnvironmentCredential")
            .env("AZURE_TENANT_ID", TENANT)
            .env("AZURE_CLIENT_ID", CLIENT_ID)
            .env("AZURE_CLIENT_SECRET", CLIENT_SECRET)
            .env("AZURE_AUTHORITY_HOST", &authority)
            .envs(proxy.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let unset = run(&[]);
    let exempt = run(&[
        ("HTTPS_PROXY", "http://127.0.0.1:1"),
        ("NO_PROXY", "127.0.0.1"),
    ]);
    for (child, hint) in [
        (
            unset,
            "connection failed (if your network requires a proxy, set HTTPS_PROXY: system \
             proxy settings are not read): ",
        ),
        (
            exempt,
            "connection failed (connected directly: NO_PROXY exempts this host from the proxy \
             that is set): ",
        ),
    ] {
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
        assert!(stderr.contains(hint), "{hint}\n{stderr}");
        assert!(!stderr.contains(CLIENT_SECRET), "{stderr}");
    }
}

/// A copyable example that fails prints the error as a user reads it: the chain's attempts
/// one per line, not the `CredentialError { .. }` Debug a `Result` returned from main prints.
#[test]
fn hyper_client_with_nothing_configured_prints_the_error_readably_and_exits_1() {
    // IMDS at a closed loopback port, no home with a token cache, no az or azd on PATH.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let home = tempfile::tempdir().unwrap();
    let output = Command::new(example("hyper_client"))
        .env_clear()
        .env("PATH", "/nonexistent")
        .env("HOME", home.path())
        .env(
            "AZURE_POD_IDENTITY_AUTHORITY_HOST",
            format!("http://{addr}"),
        )
        .env("RESOURCE_URL", format!("https://{addr}/items"))
        .env("SCOPE", SCOPE)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    assert!(output.stdout.is_empty(), "{}", describe(&output));
    assert!(!stderr.contains("CredentialError {"), "{stderr}");
    assert!(!stderr.contains("\\n"), "an escaped newline: {stderr}");
    assert!(
        stderr.starts_with("error: DefaultAzureCredential: "),
        "{stderr}"
    );
    assert!(
        stderr.contains("\n  1. EnvironmentCredential (unavailable)"),
        "{stderr}"
    );
}

#[test]
fn the_demo_shows_every_step_and_exits_0() {
    // Behind a proxy whose NO_PROXY leaves out loopback, the demo still runs: it talks to
    // loopback only and uses no proxy.
    let output = Command::new(example("demo"))
        .env("HTTPS_PROXY", "http://127.0.0.1:1")
        .env("HTTP_PROXY", "http://127.0.0.1:1")
        .env("ALL_PROXY", "http://127.0.0.1:1")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "demo failed: {}",
        describe(&output)
    );
    let out = String::from_utf8_lossy(&output.stdout);
    for line in [
        "EnvironmentCredential: unavailable",
        "ClientSecretCredential: answered",
        "(token acquired)",
        "(cached)",
        "(the renewed token)",
        "401 insufficient_claims → claims token → re-sent",
        "4 token requests",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    let summary = out
        .lines()
        .find(|l| l.contains("requests answered 200"))
        .expect(&out);
    let words: Vec<&str> = summary.split_whitespace().collect();
    assert_eq!(words[0], words[2], "every request answered 200: {summary}");
}

/// `distributed_cache` with the variables it requires, Redis at a closed port (it starts
/// without Redis) and no request to make unless `REQUESTS` is set again.
#[cfg(feature = "redis")]
fn distributed_cache(redis_port: u16) -> Command {
    let mut command = Command::new(example("distributed_cache"));
    command
        .env_clear()
        .env("AZURE_TENANT_ID", TENANT)
        .env("AZURE_CLIENT_ID", CLIENT_ID)
        .env("AZURE_CLIENT_SECRET", CLIENT_SECRET)
        .env("REDIS_URL", format!("redis://127.0.0.1:{redis_port}/0"))
        .env(
            "TOKEN_CACHE_KEY",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        )
        .env("API_URL", "https://127.0.0.1:1/items")
        .env("API_SCOPE", SCOPE)
        .env("REQUESTS", "0");
    command
}

/// `INTERVAL_MS=0` is refused with a message naming it (tokio's interval panics on zero).
#[cfg(feature = "redis")]
#[test]
fn distributed_cache_refuses_a_zero_interval() {
    let output = distributed_cache(1)
        .env("INTERVAL_MS", "0")
        .output()
        .unwrap();
    assert!(!output.status.success(), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("INTERVAL_MS must be at least 1"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// An empty `AZURE_AUTHORITY_HOST` is unset, as the library reads it: the example starts
/// (with nothing to request, it sends nothing anywhere).
#[cfg(feature = "redis")]
#[test]
fn distributed_cache_reads_an_empty_authority_host_as_unset() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let output = distributed_cache(port)
        .env("AZURE_AUTHORITY_HOST", "")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).starts_with("ok=0 failed=0"),
        "{}",
        describe(&output)
    );
}

/// A bound on a child's run: a hung example fails its test instead of hanging the suite.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// The loopback authority and API, and the environment that points an example at them.
struct Loopback {
    authority: Authority,
    api: Resource,
    ca_file: tempfile::NamedTempFile,
}

impl Loopback {
    async fn start() -> Loopback {
        let authority = Authority::start().await;
        let api = Resource::start().await;
        let ca_file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(ca_file.path(), authority.ca_pem()).unwrap();
        Loopback {
            authority,
            api,
            ca_file,
        }
    }

    fn resource_url(&self) -> String {
        format!("{}/items", self.api.url())
    }

    /// The example with only the variables a user sets, and nothing inherited (no proxy, no
    /// other roots, no `az` on a PATH).
    fn command(&self, name: &str) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(example(name));
        command
            .env_clear()
            .env("AZURE_TENANT_ID", TENANT)
            .env("AZURE_CLIENT_ID", CLIENT_ID)
            .env("AZURE_CLIENT_SECRET", CLIENT_SECRET)
            .env("AZURE_AUTHORITY_HOST", self.authority.url())
            // DefaultAzureCredential's own selector: the environment only, so a mistake here
            // fails the test instead of falling through to IMDS or a developer's `az`.
            .env("AZURE_TOKEN_CREDENTIALS", "EnvironmentCredential")
            .env("SSL_CERT_FILE", self.ca_file.path())
            .env("RESOURCE_URL", self.resource_url())
            .env("SCOPE", SCOPE)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    /// Runs the example to completion; it must exit 0. Returns its stdout.
    async fn run(&self, name: &str) -> String {
        self.run_with(name, self.command(name)).await
    }

    async fn run_with(&self, name: &str, mut command: tokio::process::Command) -> String {
        let output = tokio::time::timeout(RUN_LIMIT, command.output())
            .await
            .unwrap_or_else(|_| panic!("{name} still running after {RUN_LIMIT:?}"))
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "{name} failed: {}",
            describe(&output)
        );
        self.assert_no_secret(name, &output);
        stdout
    }

    /// Neither a token the authority issued nor the client secret appears in the output.
    fn assert_no_secret(&self, name: &str, output: &Output) {
        let issued = self.authority.token_posts();
        assert!(
            issued > 0,
            "{name} asked for no token: {}",
            describe(output)
        );
        // The authority's tokens are `at-<n>-<tenant>`, claims tokens with a suffix.
        let tokens = (1..=issued).map(|n| format!("at-{n}-{TENANT}"));
        for secret in tokens.chain([CLIENT_SECRET.to_owned()]) {
            for stream in [&output.stdout, &output.stderr] {
                assert!(
                    !String::from_utf8_lossy(stream).contains(&secret),
                    "{name} printed {secret:?}: {}",
                    describe(output)
                );
            }
        }
    }
}

fn describe(output: &Output) -> String {
    format!(
        "{:?}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test]
async fn hyper_client_gets_a_token_from_the_environment_and_calls_the_api() {
    let loopback = Loopback::start().await;
    let out = loopback.run("hyper_client").await;
    let url = loopback.resource_url();
    assert!(out.starts_with(&format!("GET {url} → 200 OK (")), "{out}");
    let seen = loopback.api.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].bearer(), Some("at-1-contoso"));
    let token_requests = loopback.authority.requests();
    assert_eq!(token_requests.len(), 1);
    assert_eq!(token_requests[0].tenant, TENANT);
    assert_eq!(token_requests[0].field("client_id"), Some(CLIENT_ID));
    assert_eq!(token_requests[0].field("scope"), Some(SCOPE));
}

#[tokio::test]
async fn timeout_retry_retries_a_503_with_the_same_token() {
    let loopback = Loopback::start().await;
    loopback.api.push(Answer::Status {
        status: 503,
        headers: vec![],
        body: "busy".into(),
    });
    let out = loopback.run("timeout_retry").await;
    let url = loopback.resource_url();
    assert_eq!(
        out.trim_end(),
        format!("GET {url} → 200 OK after 2 attempt(s)")
    );
    let tokens: Vec<_> = loopback
        .api
        .requests()
        .iter()
        .map(|seen| seen.bearer().unwrap_or("none").to_owned())
        .collect();
    assert_eq!(tokens, ["at-1-contoso", "at-1-contoso"]);
    assert_eq!(loopback.authority.token_posts(), 1);
}

/// The example's policy waits as the API asks, within reason: a 503 asking for an hour is
/// returned, not retried at once.
#[tokio::test]
async fn timeout_retry_returns_an_answer_asking_to_wait_too_long() {
    let loopback = Loopback::start().await;
    loopback.api.push(Answer::Status {
        status: 503,
        headers: vec![("retry-after".into(), "3600".into())],
        body: "busy".into(),
    });
    let out = loopback.run("timeout_retry").await;
    let url = loopback.resource_url();
    assert_eq!(
        out.trim_end(),
        format!("GET {url} → 503 Service Unavailable after 1 attempt(s)")
    );
    assert_eq!(loopback.api.count(), 1);
}

/// The authority's answer to a wrong client secret.
fn refused_client() -> Fault {
    Fault::Respond {
        status: 401,
        body: crate::support::authority::error_body(
            "invalid_client",
            7000215,
            "Invalid client secret provided.",
        ),
        headers: Vec::new(),
    }
}

/// A failure that would fail the same way again (the authority refusing the client) is not
/// retried.
#[tokio::test]
async fn timeout_retry_does_not_retry_a_refused_sign_in() {
    let loopback = Loopback::start().await;
    for _ in 0..3 {
        loopback.authority.push_fault(refused_client());
    }
    let output = tokio::time::timeout(RUN_LIMIT, loopback.command("timeout_retry").output())
        .await
        .unwrap()
        .unwrap();
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("invalid_client"),
        "{}",
        describe(&output)
    );
    assert_eq!(loopback.authority.token_posts(), 1);
    assert_eq!(loopback.api.count(), 0);
}

#[cfg(feature = "reqwest-middleware")]
#[tokio::test]
async fn reqwest_middleware_answers_a_claims_challenge_with_one_resend() {
    use crate::support::resource::{Mode, revocation_claims};

    let loopback = Loopback::start().await;
    loopback.api.set_mode(Mode::Cae);
    loopback.api.push(Answer::Cae {
        claims: revocation_claims(1),
    });
    let out = loopback.run("reqwest_middleware").await;
    let url = loopback.resource_url();
    assert!(out.starts_with(&format!("GET {url} → 200 OK (")), "{out}");
    let seen = loopback.api.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].bearer(), Some("at-1-contoso"));
    assert_eq!(seen[1].bearer(), Some("at-2-contoso-claims"));
    let token_requests = loopback.authority.requests();
    assert_eq!(token_requests.len(), 2);
    // CAE announced on both, the challenge's claims merged into the second.
    for request in &token_requests {
        assert!(
            request.field("claims").unwrap().contains("CP1"),
            "{request:?}"
        );
    }
    assert!(token_requests[1].field("claims").unwrap().contains("nbf"));
}

/// Starts the axum_outbound example on a free port: the child, its stdout (kept open: the
/// example must not write into a closed pipe), its first line and the base URL it listens on.
async fn start_axum_outbound(
    loopback: &Loopback,
) -> (
    tokio::process::Child,
    BufReader<tokio::process::ChildStdout>,
    String,
    String,
) {
    let mut child = loopback
        .command("axum_outbound")
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    tokio::time::timeout(RUN_LIMIT, stdout.read_line(&mut line))
        .await
        .expect("axum_outbound prints where it listens")
        .unwrap();
    let base = line
        .trim_end()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    (child, stdout, line, base)
}

#[tokio::test]
async fn axum_outbound_serves_downstream_answers_with_one_shared_token() {
    let loopback = Loopback::start().await;
    let (mut child, _stdout, line, base) = start_axum_outbound(&loopback).await;
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");

    let client = hyper_client::<Empty<Bytes>>();
    for _ in 0..2 {
        let request = http::Request::get(format!("{base}/downstream"))
            .body(Empty::new())
            .unwrap();
        let response = client.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["ok"], true, "{body}");
        assert_eq!(body["path"], "/items", "{body}");
    }
    assert_eq!(loopback.api.count(), 2);
    assert_eq!(
        loopback.authority.token_posts(),
        1,
        "handlers share one token"
    );

    child.start_kill().unwrap();
    let output = child.wait_with_output().await.unwrap();
    let mut rest = line.into_bytes();
    rest.extend_from_slice(&output.stdout);
    loopback.assert_no_secret(
        "axum_outbound",
        &Output {
            stdout: rest,
            ..output
        },
    );
}

/// A failure is logged for the operator; the remote caller gets a generic 502, not the
/// credential's error (which names the tenant, the application and the provider's answer).
#[tokio::test]
async fn axum_outbound_answers_a_failure_with_a_generic_502_and_logs_it() {
    let loopback = Loopback::start().await;
    loopback.authority.push_fault(refused_client());
    let (mut child, _stdout, _, base) = start_axum_outbound(&loopback).await;
    let request = http::Request::get(format!("{base}/downstream"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = hyper_client::<Empty<Bytes>>()
        .oneshot(request)
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"the downstream API could not be called");
    child.start_kill().unwrap();
    let output = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("AADSTS7000215"), "{stderr}");
}

#[tokio::test]
async fn get_token_prints_which_credential_answered_and_never_the_token() {
    let loopback = Loopback::start().await;
    let mut command = loopback.command("get_token");
    command.args(["--scope", SCOPE]);
    let out = loopback.run_with("get_token", command).await;
    assert!(out.contains(&format!("scopes:      {SCOPE}\n")), "{out}");
    assert!(
        out.contains("answered by: EnvironmentCredential\n"),
        "{out}"
    );
    assert!(out.contains("expires:     "), "{out}");
    assert_eq!(loopback.authority.token_posts(), 1);
}

#[tokio::test]
async fn credential_middleware_gets_a_token_through_timeout_and_retry() {
    let loopback = Loopback::start().await;
    // A transient failure first (retried by the transport before the example's policy would).
    loopback.authority.push_fault(Fault::ServerError(503));
    let mut command = loopback.command("credential_middleware");
    command.arg(SCOPE);
    let out = loopback.run_with("credential_middleware", command).await;
    assert!(
        out.starts_with("answered by: EnvironmentCredential\n"),
        "{out}"
    );
    assert!(out.contains("expires in:  "), "{out}");
    assert_eq!(loopback.authority.token_posts(), 2);
}

/// A provider asking to wait ten minutes is not waited for: the example gives up at once with
/// the throttled error instead of sleeping (before: twice, up to an hour each).
#[tokio::test]
async fn credential_middleware_gives_up_when_asked_to_wait_too_long() {
    let loopback = Loopback::start().await;
    loopback.authority.push_fault(Fault::TooManyRequests {
        retry_after: "600".into(),
    });
    let mut command = loopback.command("credential_middleware");
    command.arg(SCOPE);
    let output = tokio::time::timeout(RUN_LIMIT, command.output())
        .await
        .expect("no long sleep")
        .unwrap();
    assert!(!output.status.success(), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Throttled"), "{}", describe(&output));
    assert_eq!(loopback.authority.token_posts(), 1);
}

#[tokio::test]
async fn certificate_signs_an_assertion_with_the_certificate_from_the_environment() {
    let loopback = Loopback::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cert.pem");
    std::fs::write(&path, certs::self_signed(2048).one_file()).unwrap();
    let mut command = loopback.command("certificate");
    command
        .env_remove("AZURE_CLIENT_SECRET")
        .env("AZURE_CLIENT_CERTIFICATE_PATH", &path)
        .args(["--scope", SCOPE]);
    let out = loopback.run_with("certificate", command).await;
    assert!(
        out.starts_with(&format!("scope:   {SCOPE}\nexpires: in ")),
        "{out}"
    );
    let token_requests = loopback.authority.requests();
    assert_eq!(token_requests.len(), 1);
    assert_eq!(token_requests[0].field("client_secret"), None);
    assert_eq!(
        token_requests[0].field("client_assertion_type"),
        Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    );
    assert!(token_requests[0].field("client_assertion").is_some());
}

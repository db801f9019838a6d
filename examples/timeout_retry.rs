//! tower's `timeout` and `retry` around BearerTokenLayer. The bearer layer sits inside the
//! retry, so every attempt reads the current token (a retry after a renewal sends the new
//! one); the timeout sits outside, bounding the call with its retries.
//! Only what may pass by itself is retried (a 429 or 503, a connection that could not be
//! made, a transient token failure), twice at most, after the wait the API asks for or an
//! exponential backoff; an API asking to wait longer than 10 s gets its answer returned.
//!
//! `RESOURCE_URL` is the API to call and `SCOPE` the scope of its tokens. The token comes from
//! `DefaultAzureCredential`: a service principal from `AZURE_TENANT_ID`, `AZURE_CLIENT_ID` and
//! `AZURE_CLIENT_SECRET` (`AZURE_AUTHORITY_HOST` for another cloud), a managed identity, or
//! your `az login`. Prints the final status and how many attempts it took.
//!
//! ```text
//! RESOURCE_URL='https://management.azure.com/subscriptions?api-version=2022-12-01' \
//! SCOPE=https://management.azure.com/.default \
//!   cargo run --example timeout_retry
//! ```

use std::process::ExitCode;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::retry::Policy;
use tower::{ServiceBuilder, ServiceExt};
use tower_identity::{
    BearerTokenLayer, BoxError, CredentialError, DefaultAzureCredential, HttpClient, Roots,
};

/// The first backoff; it doubles per retry.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// The longest `Retry-After` waited for: a server asking for longer gets its answer returned.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);

/// Retries what may pass by itself — 429 and 503 answers, a connection that could not be
/// made, a token request that failed transiently — at most `left` more times, counting the
/// retries. Waits as the server asks (`Retry-After` in seconds) or backs off exponentially.
#[derive(Clone)]
struct RetryTransient {
    left: usize,
    backoff: Duration,
    retries: Arc<AtomicUsize>,
}

impl RetryTransient {
    /// The wait before retrying `result`, or `None` when it is final.
    fn wait_for<ResB>(&self, result: &Result<Response<ResB>, BoxError>) -> Option<Duration> {
        match result {
            Ok(response) => {
                let status = response.status();
                if status != StatusCode::SERVICE_UNAVAILABLE
                    && status != StatusCode::TOO_MANY_REQUESTS
                {
                    return None;
                }
                match retry_after(response.headers()) {
                    Some(wait) if wait > MAX_RETRY_AFTER => {
                        eprintln!("the API asked to wait {wait:?}; not retrying");
                        None
                    }
                    Some(wait) if !wait.is_zero() => Some(wait),
                    _ => Some(self.backoff),
                }
            }
            Err(error) => transient(error).then_some(self.backoff),
        }
    }
}

/// Whether an error may pass by itself: a credential's transient failure (timeout,
/// throttling, an unavailable provider), or a connection to the API that could not be made.
/// A refused sign-in or a bad certificate would fail the same way again.
fn transient(error: &BoxError) -> bool {
    if let Some(error) = error.downcast_ref::<CredentialError>() {
        return error.is_transient();
    }
    error
        .downcast_ref::<hyper_util::client::legacy::Error>()
        .is_some_and(hyper_util::client::legacy::Error::is_connect)
}

/// `Retry-After` in seconds (the form APIs send with 429 and 503).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse().ok().map(Duration::from_secs)
}

impl<ResB> Policy<Request<Empty<Bytes>>, Response<ResB>, BoxError> for RetryTransient {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        _request: &mut Request<Empty<Bytes>>,
        result: &mut Result<Response<ResB>, BoxError>,
    ) -> Option<Self::Future> {
        if self.left == 0 {
            return None;
        }
        let wait = self.wait_for(result)?;
        self.left -= 1;
        self.backoff = self.backoff.saturating_mul(2);
        self.retries.fetch_add(1, Ordering::Relaxed);
        Some(tokio::time::sleep(wait))
    }

    fn clone_request(&mut self, request: &Request<Empty<Bytes>>) -> Option<Request<Empty<Bytes>>> {
        let mut clone = Request::new(Empty::new());
        *clone.method_mut() = request.method().clone();
        *clone.uri_mut() = request.uri().clone();
        *clone.headers_mut() = request.headers().clone();
        Some(clone)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    // The error's Display, not the Debug a `Result` returned from main prints: a chain's
    // attempts one per line.
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            // A CredentialError's message already says what its sources say; hyper's errors
            // keep the cause (a refused connection, a certificate) in their sources.
            let mut cause: &(dyn std::error::Error + 'static) = &*error;
            while let (false, Some(next)) = (cause.is::<CredentialError>(), cause.source()) {
                eprintln!("  caused by: {next}");
                cause = next;
            }
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), BoxError> {
    let url = std::env::var("RESOURCE_URL").map_err(|_| "set RESOURCE_URL to the API to call")?;
    let scope = std::env::var("SCOPE")
        .map_err(|_| "set SCOPE, e.g. https://management.azure.com/.default")?;

    // Token requests trust Mozilla's roots and the platform's store, where IT installs the CA
    // of a TLS-inspecting proxy (on Linux, SSL_CERT_FILE or SSL_CERT_DIR name the store).
    let http = HttpClient::builder()
        .roots(Roots::BundledAndPlatform)
        .build()?;
    let credential = DefaultAzureCredential::builder()
        .http_client(http)
        .build()?;

    // The API is reached through the platform's certificate verifier, as reqwest does.
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_platform_verifier(rustls::crypto::ring::default_provider())?
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    let retries = Arc::new(AtomicUsize::new(0));
    let client = ServiceBuilder::new()
        .timeout(Duration::from_secs(30)) // the whole call, retries included
        .retry(RetryTransient {
            left: 2,
            backoff: FIRST_BACKOFF,
            retries: Arc::clone(&retries),
        })
        .layer(BearerTokenLayer::new(credential, [scope]))
        .service(Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(https));

    let response = client
        .oneshot(Request::get(&url).body(Empty::new())?)
        .await?;
    println!(
        "GET {url} → {} after {} attempt(s)",
        response.status(),
        1 + retries.load(Ordering::Relaxed)
    );
    Ok(())
}

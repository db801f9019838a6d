//! tower's `timeout` and `retry` around BearerTokenLayer. The bearer layer sits inside the
//! retry, so every attempt reads the current token (a retry after a renewal or a claims
//! challenge sends the new one); the timeout sits outside, bounding the call with its retries.
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

use std::future::{Ready, ready};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::retry::Policy;
use tower::{ServiceBuilder, ServiceExt};
use tower_identity::{BearerTokenLayer, BoxError, DefaultAzureCredential, HttpClient, Roots};

/// Retries 503 answers and errors, at most twice per request, counting the retries.
#[derive(Clone)]
struct RetryUnavailable {
    left: usize,
    retries: Arc<AtomicUsize>,
}

impl<ResB> Policy<Request<Empty<Bytes>>, Response<ResB>, BoxError> for RetryUnavailable {
    type Future = Ready<()>;

    fn retry(
        &mut self,
        _request: &mut Request<Empty<Bytes>>,
        result: &mut Result<Response<ResB>, BoxError>,
    ) -> Option<Self::Future> {
        let transient = match result {
            Ok(response) => response.status() == StatusCode::SERVICE_UNAVAILABLE,
            Err(_) => true,
        };
        if transient && self.left > 0 {
            self.left -= 1;
            self.retries.fetch_add(1, Ordering::Relaxed);
            Some(ready(()))
        } else {
            None
        }
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
async fn main() -> Result<(), BoxError> {
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
        .retry(RetryUnavailable {
            left: 2,
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

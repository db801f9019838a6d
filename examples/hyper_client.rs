//! BearerTokenLayer in front of hyper-util's client: one authenticated GET, with the credential
//! and TLS set up as an application sets them up.
//!
//! `RESOURCE_URL` is the API to call and `SCOPE` the scope of its tokens (the API's app ID URI
//! and `/.default`). The token comes from `DefaultAzureCredential`: a service principal from
//! `AZURE_TENANT_ID`, `AZURE_CLIENT_ID` and `AZURE_CLIENT_SECRET` (`AZURE_AUTHORITY_HOST` for
//! another cloud), a managed identity, or your `az login`. Prints the status and the size of
//! the answer, not the answer itself.
//!
//! ```text
//! RESOURCE_URL='https://management.azure.com/subscriptions?api-version=2022-12-01' \
//! SCOPE=https://management.azure.com/.default \
//!   cargo run --example hyper_client
//! ```

use std::process::ExitCode;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{ServiceBuilder, ServiceExt};
use tower_identity::{
    BearerTokenLayer, BoxError, CredentialError, DefaultAzureCredential, HttpClient, Roots,
};

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
    let client = ServiceBuilder::new()
        .layer(BearerTokenLayer::new(credential, [scope]))
        .service(Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(https));

    let request = http::Request::get(&url).body(Empty::new())?;
    let response = client.oneshot(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    println!("GET {url} → {status} ({} bytes)", body.len());
    Ok(())
}

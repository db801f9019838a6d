//! The bearer-token behaviour as a reqwest middleware (feature `reqwest-middleware`), with
//! Continuous Access Evaluation: a claims challenge from the API is answered with a token for
//! those claims and one re-send of the request.
//!
//! `RESOURCE_URL` is the API to call and `SCOPE` the scope of its tokens. The token comes from
//! `DefaultAzureCredential`: a service principal from `AZURE_TENANT_ID`, `AZURE_CLIENT_ID` and
//! `AZURE_CLIENT_SECRET` (`AZURE_AUTHORITY_HOST` for another cloud), a managed identity, or
//! your `az login`. Prints the status and the size of the answer, not the answer itself.
//!
//! ```text
//! RESOURCE_URL='https://graph.microsoft.com/v1.0/applications?$top=1' \
//! SCOPE=https://graph.microsoft.com/.default \
//!   cargo run --example reqwest_middleware --features reqwest-middleware
//! ```

use std::process::ExitCode;

use reqwest_middleware::ClientBuilder;
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
        .map_err(|_| "set SCOPE, e.g. https://graph.microsoft.com/.default")?;

    // Token requests trust Mozilla's roots and the platform's store, where IT installs the CA
    // of a TLS-inspecting proxy (on Linux, SSL_CERT_FILE or SSL_CERT_DIR name the store).
    let http = HttpClient::builder()
        .roots(Roots::BundledAndPlatform)
        .build()?;
    let credential = DefaultAzureCredential::builder()
        .http_client(http)
        .build()?;

    // reqwest verifies with the platform's verifier. This crate builds reqwest with
    // `rustls-no-provider` (it uses ring, not aws-lc-rs), so a crypto provider is installed;
    // with reqwest's default features this line is not needed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let bearer = BearerTokenLayer::builder(credential, [scope])
        .enable_cae(true)
        .build()
        .middleware();
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(bearer)
        .build();

    let response = client.get(&url).send().await?;
    let status = response.status();
    let body = response.bytes().await?;
    println!("GET {url} → {status} ({} bytes)", body.len());
    Ok(())
}

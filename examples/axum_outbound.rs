//! An axum service calling a downstream API through BearerTokenLayer, with the authenticated
//! client in the router's `State`: every request to `GET /downstream` calls `RESOURCE_URL`
//! and answers with what it answered. All handlers share one token, acquired on first use and
//! renewed before it expires.
//!
//! `SCOPE` is the scope of the API's tokens, `LISTEN_ADDR` where to serve (default
//! `127.0.0.1:3000`). The token comes from `DefaultAzureCredential`: a service principal from
//! `AZURE_TENANT_ID`, `AZURE_CLIENT_ID` and `AZURE_CLIENT_SECRET` (`AZURE_AUTHORITY_HOST` for
//! another cloud), a managed identity, or your `az login`.
//!
//! ```text
//! RESOURCE_URL='https://graph.microsoft.com/v1.0/applications?$top=1' \
//! SCOPE=https://graph.microsoft.com/.default \
//!   cargo run --example axum_outbound
//! curl http://127.0.0.1:3000/downstream
//! ```

use std::process::ExitCode;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower::{ServiceBuilder, ServiceExt};
use tower_identity::bearer::BearerToken;
use tower_identity::{
    BearerTokenLayer, BoxError, CredentialError, DefaultAzureCredential, HttpClient, Roots,
};

/// What handlers share: the authenticated client (cloning it shares the token) and the API.
#[derive(Clone)]
struct AppState {
    downstream: BearerToken<Client<HttpsConnector<HttpConnector>, Empty<Bytes>>>,
    url: String,
}

async fn downstream(
    State(state): State<AppState>,
) -> Result<(StatusCode, Bytes), (StatusCode, String)> {
    // The details (a sign-in refusal names the tenant and application; a connection error the
    // network) are for the operator's log, not for whoever called this service.
    let bad_gateway = |e: BoxError| {
        eprintln!("GET /downstream failed: {e}");
        (
            StatusCode::BAD_GATEWAY,
            "the downstream API could not be called".to_owned(),
        )
    };
    let request = http::Request::get(&state.url)
        .body(Empty::new())
        .map_err(|e| bad_gateway(e.into()))?;
    let response = state
        .downstream
        .oneshot(request)
        .await
        .map_err(bad_gateway)?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| bad_gateway(e.into()))?;
    Ok((status, body.to_bytes()))
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
        .map_err(|_| "set SCOPE, e.g. https://graph.microsoft.com/.default")?;
    let listen = std::env::var("LISTEN_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());

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
    let state = AppState {
        downstream: ServiceBuilder::new()
            .layer(BearerTokenLayer::new(credential, [scope]))
            .service(Client::builder(TokioExecutor::new()).build(https)),
        url,
    };
    let app = Router::new()
        .route("/downstream", get(downstream))
        .with_state(state);

    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

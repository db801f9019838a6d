//! The same behaviour as a reqwest middleware (feature `reqwest-middleware`), including a CAE
//! claims challenge answered with one re-send of the request and its body.
//!
//! ```text
//! cargo run --example reqwest_middleware --features reqwest-middleware
//! ```

#[path = "common/mod.rs"]
mod common;

use reqwest_middleware::ClientBuilder;
use tower_identity::BearerTokenLayer;

use common::resource::{Answer, revocation_claims};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let loopback = common::Loopback::start().await;
    let bearer = BearerTokenLayer::builder(loopback.credential.clone(), [common::SCOPE])
        .enable_cae(true)
        .build()
        .middleware();
    let reqwest = reqwest::Client::builder()
        .tls_backend_preconfigured(common::tls_config())
        .build()?;
    let client = ClientBuilder::new(reqwest).with(bearer).build();

    let response = client
        .get(format!("{}/items", loopback.api.url()))
        .send()
        .await?;
    println!("GET /items → {}", response.status());

    // The API's next answer is a claims challenge; the middleware answers it.
    loopback.api.push(Answer::Cae {
        claims: revocation_claims(1),
    });
    let response = client
        .post(format!("{}/items", loopback.api.url()))
        .body(r#"{"name":"widget"}"#)
        .send()
        .await?;
    println!(
        "POST /items → {} (after a claims challenge and one re-send)",
        response.status()
    );
    println!(
        "requests seen by the API: {}, token requests: {}",
        loopback.api.count(),
        loopback.authority.token_posts()
    );
    Ok(())
}

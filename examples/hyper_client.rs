//! BearerTokenLayer in front of hyper-util's client: a GET and a POST with a JSON body, with
//! the token obtained once and reused.
//!
//! ```text
//! cargo run --example hyper_client
//! ```

#[path = "common/mod.rs"]
mod common;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tower::{ServiceBuilder, ServiceExt};
use tower_identity::BearerTokenLayer;

#[tokio::main]
async fn main() -> Result<(), tower_identity::BoxError> {
    let loopback = common::Loopback::start().await;
    let client = ServiceBuilder::new()
        .layer(BearerTokenLayer::new(
            loopback.credential.clone(),
            [common::SCOPE],
        ))
        .service(common::hyper_client::<Full<Bytes>>());

    let get = http::Request::get(format!("{}/items", loopback.api.url())).body(Full::default())?;
    let post = http::Request::post(format!("{}/items", loopback.api.url()))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(br#"{"name":"widget"}"#)))?;
    for request in [get, post] {
        let line = format!("{} {}", request.method(), request.uri().path());
        let response = client.clone().oneshot(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        println!("{line} → {status}: {}", String::from_utf8_lossy(&body));
    }
    println!(
        "token requests: {} (the second call reused the token)",
        loopback.authority.token_posts()
    );
    Ok(())
}

//! An axum handler calling a downstream API through BearerTokenLayer, with the client in the
//! router's `State`. The example serves the router on loopback, calls it once, and exits.
//!
//! ```text
//! cargo run --example axum_outbound
//! ```

#[path = "common/mod.rs"]
mod common;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tower::{ServiceBuilder, ServiceExt};
use tower_identity::BearerTokenLayer;
use tower_identity::bearer::BearerToken;

/// What handlers share: the authenticated client and where the downstream API lives.
#[derive(Clone)]
struct AppState {
    downstream: BearerToken<common::HyperClient<Full<Bytes>>>,
    api_url: String,
}

async fn report(
    State(state): State<AppState>,
) -> Result<Json<serde_json::Value>, (StatusCode, String)> {
    let request = http::Request::get(format!("{}/inventory", state.api_url))
        .body(Full::default())
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    // A clone per call: the clone shares the token and starts with the original's copy of it.
    let response = state
        .downstream
        .clone()
        .oneshot(request)
        .await
        .map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string()))?;
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string()))?
        .to_bytes();
    let downstream: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string()))?;
    Ok(Json(
        serde_json::json!({ "report": "ok", "downstream": downstream }),
    ))
}

#[tokio::main]
async fn main() -> Result<(), tower_identity::BoxError> {
    let loopback = common::Loopback::start().await;
    let state = AppState {
        downstream: ServiceBuilder::new()
            .layer(BearerTokenLayer::new(
                loopback.credential.clone(),
                [common::SCOPE],
            ))
            .service(common::hyper_client()),
        api_url: loopback.api.url(),
    };
    let app = Router::new()
        .route("/report", get(report))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    // Call our own endpoint twice, as a user of this service would.
    let plain = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    for _ in 0..2 {
        let response = plain
            .request(http::Request::get(format!("http://{address}/report")).body(Full::default())?)
            .await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        println!("GET /report → {status}: {}", String::from_utf8_lossy(&body));
    }
    println!(
        "the downstream API saw {} requests; token requests: {}",
        loopback.api.count(),
        loopback.authority.token_posts()
    );
    Ok(())
}

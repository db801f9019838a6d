//! Composing tower's `timeout` and `retry` around BearerTokenLayer. The bearer layer sits
//! inside the retry, so every attempt reads the current token (a retry after a renewal or a
//! claims token uses the new one).
//!
//! ```text
//! cargo run --example timeout_retry
//! ```

#[path = "common/mod.rs"]
mod common;

use std::future::{Ready, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::retry::Policy;
use tower::{ServiceBuilder, ServiceExt};
use tower_identity::{BearerTokenLayer, BoxError};

use common::resource::Answer;

/// Retries 503 answers and errors, at most twice per request.
#[derive(Clone)]
struct RetryUnavailable {
    left: usize,
}

impl<ResB> Policy<Request<Full<Bytes>>, Response<ResB>, BoxError> for RetryUnavailable {
    type Future = Ready<()>;

    fn retry(
        &mut self,
        _request: &mut Request<Full<Bytes>>,
        result: &mut Result<Response<ResB>, BoxError>,
    ) -> Option<Self::Future> {
        let transient = match result {
            Ok(response) => response.status() == StatusCode::SERVICE_UNAVAILABLE,
            Err(_) => true,
        };
        if transient && self.left > 0 {
            self.left -= 1;
            Some(ready(()))
        } else {
            None
        }
    }

    fn clone_request(&mut self, request: &Request<Full<Bytes>>) -> Option<Request<Full<Bytes>>> {
        let mut clone = Request::new(request.body().clone());
        *clone.method_mut() = request.method().clone();
        *clone.uri_mut() = request.uri().clone();
        *clone.headers_mut() = request.headers().clone();
        Some(clone)
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let loopback = common::Loopback::start().await;
    let client = ServiceBuilder::new()
        .timeout(Duration::from_secs(2)) // the whole call, retries included
        .retry(RetryUnavailable { left: 2 })
        .layer(BearerTokenLayer::new(
            loopback.credential.clone(),
            [common::SCOPE],
        ))
        .service(common::hyper_client::<Full<Bytes>>());
    let get =
        |path: &str| Request::get(format!("{}{path}", loopback.api.url())).body(Full::default());

    loopback.api.push(Answer::Status {
        status: 503,
        headers: vec![],
        body: "busy".into(),
    });
    let response = client.clone().oneshot(get("/flaky")?).await?;
    println!("GET /flaky → {} after one retry", response.status());

    loopback.api.push(Answer::Delay(Duration::from_secs(10)));
    loopback.api.push(Answer::Delay(Duration::from_secs(10)));
    loopback.api.push(Answer::Delay(Duration::from_secs(10)));
    let error = client.clone().oneshot(get("/slow")?).await.unwrap_err();
    println!("GET /slow → error after 2 s: {error}");

    let seen = loopback.api.requests();
    let tokens: Vec<_> = seen.iter().filter_map(|s| s.bearer()).collect();
    println!(
        "{} requests reached the API, every attempt with a token ({} distinct), {} token request(s)",
        seen.len(),
        tokens
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        loopback.authority.token_posts()
    );
    Ok(())
}

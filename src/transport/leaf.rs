//! One attempt: hyper-util's client under the per-attempt timeout and the body cap.

use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::HeaderMap;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use tower_service::Service;

use super::error::{TransportError, TransportErrorKind};
use super::proxy::ProxyConnector;
use super::{HttpRequest, HttpResponse};
use crate::error::BoxError;

type HyperClient = Client<ProxyConnector, Full<Bytes>>;

/// hyper-util's client, with the timeout and the body cap.
#[derive(Clone)]
pub(super) struct HyperLeaf {
    pub(super) client: HyperClient,
    pub(super) timeout: Option<Duration>,
    pub(super) max_response_bytes: usize,
    /// Whether plain `http` is sent as well as `https`.
    pub(super) allow_http: bool,
}

impl Service<HttpRequest> for HyperLeaf {
    type Response = HttpResponse;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<HttpResponse, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The legacy client is always ready; it queues on its pool internally.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: HttpRequest) -> Self::Future {
        // hyper-rustls refuses such a URL too, but as a connection failure (retried) that
        // only says "unsupported scheme": refuse it here, finally, saying what to do.
        let sent = match request.uri().scheme_str() {
            Some("https") => true,
            Some("http") => self.allow_http,
            _ => false,
        };
        if !sent {
            let error =
                TransportError::unsupported_scheme(request.uri().scheme_str(), self.allow_http);
            return Box::pin(async move { Err(error.into()) });
        }
        let client = self.client.clone();
        let limit = self.max_response_bytes;
        let exchange = async move {
            let response = client
                .request(request)
                .await
                .map_err(TransportError::from_client)?;
            if let Some(length) = content_length(response.headers()) {
                if length > limit as u64 {
                    return Err(TransportError::too_large(limit));
                }
            }
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, limit)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        TransportError::too_large(limit)
                    } else {
                        TransportError::new(
                            TransportErrorKind::Io,
                            "reading the response body failed",
                        )
                        .with_source(e)
                    }
                })?
                .to_bytes();
            Ok(http::Response::from_parts(parts, body))
        };
        let timeout = self.timeout;
        Box::pin(async move {
            let result = match timeout {
                Some(limit) => tokio::time::timeout(limit, exchange)
                    .await
                    .unwrap_or_else(|_| Err(TransportError::timed_out(limit))),
                None => exchange.await,
            };
            result.map_err(BoxError::from)
        })
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

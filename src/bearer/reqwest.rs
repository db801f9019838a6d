//! The bearer-token behaviour as a [`reqwest_middleware::Middleware`] (feature
//! `reqwest-middleware`): the same token slot, renewal rules and claims-challenge handling as
//! [`BearerTokenLayer`], sharing the layer's token when made from it.
//!
//! ```no_run
//! use reqwest_middleware::ClientBuilder;
//! use tower_identity::{AzureCliCredential, BearerTokenLayer};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let bearer = BearerTokenLayer::builder(AzureCliCredential::new(), ["https://management.azure.com/.default"])
//!     .enable_cae(true)
//!     .build()
//!     .middleware();
//! let client = ClientBuilder::new(reqwest::Client::new()).with(bearer).build();
//! let response = client
//!     .get("https://management.azure.com/subscriptions?api-version=2022-12-01")
//!     .send()
//!     .await?;
//! # let _ = response; Ok(()) }
//! ```
//!
//! A request whose body cannot be cloned (`reqwest::Request::try_clone` says no, as for a
//! stream) is sent once and a claims challenge for it is returned as the 401, not an error.
//! Errors of the middleware are `reqwest_middleware::Error::Middleware` holding a
//! [`CredentialError`] or a [`BearerError`].

use std::future::Future;
use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::{HeaderValue, StatusCode};
use reqwest_middleware::{Error, Middleware, Next, Result};
use tokio::time::Instant;

use super::future::{Decision, Resend, answer_challenge, decide, drain};
use super::replay::NotReplayable;
use super::source::{Prepared, Source};
use super::{BearerError, BearerTokenLayer};
use crate::error::CredentialError;
use crate::refresh::{Entry, Lookup};

/// [`BearerTokenLayer`] as a reqwest middleware; made by [`BearerTokenLayer::middleware`].
pub struct BearerTokenMiddleware {
    source: Arc<Source>,
}

impl BearerTokenLayer {
    /// The same behaviour as a reqwest middleware, sharing this layer's token source (its
    /// token, renewal and claims flights) and settings.
    pub fn middleware(&self) -> BearerTokenMiddleware {
        BearerTokenMiddleware {
            source: Arc::clone(&self.source),
        }
    }
}

impl Clone for BearerTokenMiddleware {
    fn clone(&self) -> Self {
        Self {
            source: Arc::clone(&self.source),
        }
    }
}

impl std::fmt::Debug for BearerTokenMiddleware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BearerTokenMiddleware")
            .field("source", &self.source)
            .finish()
    }
}

#[async_trait::async_trait]
impl Middleware for BearerTokenMiddleware {
    async fn handle(
        &self,
        mut request: reqwest::Request,
        extensions: &mut http::Extensions,
        next: Next<'_>,
    ) -> Result<reqwest::Response> {
        let options = &self.source.options;
        if !options.allow_http && request.url().scheme() != "https" {
            let uri: http::Uri = request.url().as_str().parse().unwrap_or_default();
            return Err(Error::middleware(BearerError::insecure(&uri)));
        }
        let entry = current_token(&self.source)
            .await
            .map_err(Error::middleware)?;
        request
            .headers_mut()
            .insert(AUTHORIZATION, entry.value.header().clone());
        let retry = if options.cae {
            request.try_clone()
        } else {
            None
        };
        let response = next.clone().run(request, extensions).await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        match (decide(response.headers(), retry.is_some()), retry) {
            (Decision::Retry(claims), Some(request)) => {
                let resend = ReqwestResend {
                    request,
                    next,
                    extensions,
                };
                answer_challenge(&self.source, &claims, entry.id, response, resend).await
            }
            _ => {
                self.source.slot.invalidate(entry.id);
                Ok(response)
            }
        }
    }
}

/// The middleware's re-send: the clone of the request, down the rest of the chain.
struct ReqwestResend<'a> {
    request: reqwest::Request,
    next: Next<'a>,
    extensions: &'a mut http::Extensions,
}

impl Resend for ReqwestResend<'_> {
    type Response = reqwest::Response;
    type Error = Error;

    fn status(response: &reqwest::Response) -> StatusCode {
        response.status()
    }

    fn credential_error(error: crate::CredentialError) -> Error {
        Error::middleware(error)
    }

    fn discard(response: reqwest::Response, limit: usize) {
        drain(
            http::Response::<reqwest::Body>::from(response).into_body(),
            limit,
        );
    }

    fn again(
        mut self,
        authorization: HeaderValue,
    ) -> std::result::Result<impl Future<Output = Result<reqwest::Response>>, NotReplayable> {
        self.request
            .headers_mut()
            .insert(AUTHORIZATION, authorization);
        Ok(self.next.run(self.request, self.extensions))
    }
}

/// The current token, waiting for an acquisition only when there is no valid one (the
/// middleware has no readiness step in which to wait, unlike the layer).
async fn current_token(source: &Source) -> std::result::Result<Entry<Prepared>, CredentialError> {
    match source.lookup(Instant::now()) {
        Lookup::Use { entry, .. } => Ok(entry),
        Lookup::Wait(acquisition) => acquisition.await,
    }
}

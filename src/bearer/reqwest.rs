//! The bearer-token behaviour as a [`reqwest_middleware::Middleware`] (feature
//! `reqwest-middleware`): the same token slot, renewal rules and claims-challenge handling as
//! [`BearerTokenLayer`], sharing the layer's token when made from it.
//!
//! ```no_run
//! use reqwest_middleware::ClientBuilder;
//! use tower_identity::{AzureCliCredential, BearerTokenLayer};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let bearer = BearerTokenLayer::new(AzureCliCredential::new(), ["https://management.azure.com/.default"])
//!     .enable_cae(true)
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
//! [`CredentialError`](crate::CredentialError) or a [`BearerError`].

use std::sync::Arc;

use http::StatusCode;
use http::header::AUTHORIZATION;
use reqwest_middleware::{Error, Middleware, Next, Result};

use crate::bearer::{BearerError, BearerTokenLayer, Source};
use crate::bearer::{Decision, claims_failure, decide, drain};
use crate::credential::TokenCredential;

/// [`BearerTokenLayer`] as a reqwest middleware; made by [`BearerTokenLayer::middleware`].
pub struct BearerTokenMiddleware<C> {
    source: Arc<Source<C>>,
}

impl<C: TokenCredential> BearerTokenLayer<C> {
    /// The same behaviour as a reqwest middleware, sharing this layer's token and options.
    pub fn middleware(&self) -> BearerTokenMiddleware<C> {
        BearerTokenMiddleware {
            source: Arc::clone(self.source()),
        }
    }
}

impl<C> Clone for BearerTokenMiddleware<C> {
    fn clone(&self) -> Self {
        Self {
            source: Arc::clone(&self.source),
        }
    }
}

impl<C> std::fmt::Debug for BearerTokenMiddleware<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BearerTokenMiddleware")
            .field("source", &self.source)
            .finish()
    }
}

#[async_trait::async_trait]
impl<C: TokenCredential> Middleware for BearerTokenMiddleware<C> {
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
        let entry = self.source.token().await.map_err(Error::middleware)?;
        request
            .headers_mut()
            .insert(AUTHORIZATION, entry.value.header().clone());
        let mut retry = if options.cae {
            request.try_clone()
        } else {
            None
        };
        let response = next.clone().run(request, extensions).await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let claims = match decide(response.headers(), retry.is_some()) {
            Decision::Retry(claims) => claims,
            Decision::GiveBack => {
                self.source.slot.invalidate(entry.id);
                return Ok(response);
            }
        };
        let Some(mut retry) = retry.take() else {
            return Ok(response);
        };
        let fresh = self
            .source
            .claims_token(&claims, entry.id)
            .await
            .map_err(|e| Error::middleware(claims_failure(e)))?;
        drain(
            http::Response::<reqwest::Body>::from(response).into_body(),
            options.drain_limit,
        );
        retry
            .headers_mut()
            .insert(AUTHORIZATION, fresh.value.header().clone());
        tracing::debug!("claims challenge answered with a new token; re-sending once");
        let response = next.run(retry, extensions).await?;
        if response.status() == StatusCode::UNAUTHORIZED {
            self.source.slot.invalidate(fresh.id);
        }
        Ok(response)
    }
}

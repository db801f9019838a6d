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
//! stream) is sent once: a claims challenge for it still gets the token for its claims, for
//! the requests after it (waiting 5 s at most; the flight runs on), and then the 401 is
//! returned, whatever the credential answered (a
//! failure is logged, and kept as any failed claims request's is: see `BearerTokenLayer`). Waiting for that
//! token means a caller that retries at once sends the claims token, instead of meeting the
//! same challenge again while the credential works.
//! Errors of the middleware are `reqwest_middleware::Error::Middleware` holding a
//! [`CredentialError`] or a [`BearerError`].

use std::future::Future;
use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::{HeaderValue, StatusCode, Version};
use reqwest_middleware::{Error, Middleware, Next, Result};

use super::future::{Decision, Resend, answer_challenge, decide, drain};
use super::origin::{Origin, from_elsewhere};
use super::replay::NotReplayable;
use super::source::Source;
use super::{BearerError, BearerTokenLayer, Cached};
use crate::error::CredentialError;
use crate::refresh::TokenId;

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
        let url = request.url();
        if !options.allow_http && url.scheme() != "https" {
            // From the URL itself: `http::Uri` refuses some URLs reqwest sends (past 64 KiB).
            let refused = BearerError::insecure_at(Some(url.scheme()), url.host_str());
            return Err(Error::middleware(refused));
        }
        let (header, token_id) = current_token(&self.source)
            .await
            .map_err(Error::middleware)?;
        request.headers_mut().insert(AUTHORIZATION, header);
        let retry = if options.cae {
            request.try_clone()
        } else {
            None
        };
        let response = next.clone().run(request, extensions).await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        // reqwest follows redirects inside its client: a 401 from another origin says nothing
        // of the token (see `origin`). Known with CAE, from the clone kept for the re-send.
        let sent_to = retry
            .as_ref()
            .and_then(|request| Origin::of_url(request.url()));
        if from_elsewhere(sent_to.as_ref(), answered(&response)) {
            return Ok(response);
        }
        match decide(response.headers(), options.cae) {
            // Without a clone the claims token is still had, then the 401 returned whatever
            // the credential answered (as the tower layer does for a body it cannot replay):
            // dropping the rejected token alone would let the credential's cache hand it out
            // again, and a caller retrying at once would meet the same challenge.
            Decision::Retry(claims) => {
                let resend = ReqwestResend {
                    request: retry,
                    next,
                    extensions,
                    sent_to,
                };
                answer_challenge(&self.source, &claims, token_id, response, resend).await
            }
            Decision::GiveBack => {
                self.source.slot.invalidate(token_id);
                Ok(response)
            }
        }
    }
}

/// The middleware's re-send: the clone of the request, down the rest of the chain.
struct ReqwestResend<'a> {
    /// `None` when the request could not be cloned.
    request: Option<reqwest::Request>,
    next: Next<'a>,
    extensions: &'a mut http::Extensions,
    /// The origin `request` goes to.
    sent_to: Option<Origin>,
}

/// The origin that answered: reqwest's response URL, the last hop's, unless it is the
/// placeholder reqwest gives a response converted from an `http::Response` that named none (a
/// middleware's made-up answer), which says nothing.
fn answered(response: &reqwest::Response) -> Option<Origin> {
    let url = response.url();
    if url.as_str() == "http://no.url.provided.local/" {
        return None;
    }
    Origin::of_url(url)
}

impl Resend for ReqwestResend<'_> {
    type Response = reqwest::Response;
    type Error = Error;

    fn status(response: &reqwest::Response) -> StatusCode {
        response.status()
    }

    fn headers(response: &reqwest::Response) -> &http::HeaderMap {
        response.headers()
    }

    fn sent_to(&self) -> Option<&Origin> {
        self.sent_to.as_ref()
    }

    fn answered(response: &reqwest::Response) -> Option<Origin> {
        answered(response)
    }

    fn version(response: &reqwest::Response) -> Version {
        response.version()
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

    fn refusal(&self) -> Option<NotReplayable> {
        self.request.is_none().then(NotReplayable::not_cloneable)
    }

    fn again(
        self,
        authorization: HeaderValue,
        // A clone of the request carries its whole body, whichever the version.
        _version: Version,
    ) -> std::result::Result<impl Future<Output = Result<reqwest::Response>>, NotReplayable> {
        let mut request = self.request.ok_or_else(NotReplayable::not_cloneable)?;
        request.headers_mut().insert(AUTHORIZATION, authorization);
        Ok(self.next.run(request, self.extensions))
    }
}

/// The current token's `Authorization` value and id: the answer the layer's services and
/// middleware share while it is fresh (no lock), else a lookup, waiting for an acquisition
/// only when there is no valid token (as the layer's boxed response future does).
async fn current_token(
    source: &Source,
) -> std::result::Result<(HeaderValue, TokenId), CredentialError> {
    if let Some(found) =
        Cached::read_shared(source, |answer| (answer.header.clone(), answer.token_id))
    {
        return Ok(found);
    }
    match Cached::look_up(source) {
        Ok(shared) => Ok((shared.header, shared.token_id)),
        Err(acquisition) => {
            let entry = acquisition.await?;
            Ok((entry.value.header().clone(), entry.id))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::{Empty, Full};
    use reqwest_middleware::ClientBuilder;
    use tokio::time::Instant;
    use tower::{Layer, ServiceExt};

    use super::*;
    use crate::bearer::source::{assert_the_shared_answer_serves, lookups};
    use crate::credential::CredentialExt;
    use crate::{AccessToken, TokenRequest};

    /// The end of the chain: answers 200 with the `Authorization` value it was sent, in a
    /// header, without a socket.
    struct Echo;

    #[async_trait::async_trait]
    impl Middleware for Echo {
        async fn handle(
            &self,
            request: reqwest::Request,
            _: &mut http::Extensions,
            _: Next<'_>,
        ) -> Result<reqwest::Response> {
            let mut response = http::Response::new(reqwest::Body::from(""));
            if let Some(value) = request.headers().get(AUTHORIZATION) {
                response.headers_mut().insert("x-seen", value.clone());
            }
            Ok(response.into())
        }
    }

    /// The middleware reads the answer the layer shares, as a clone of the layer's service
    /// does: no lookup (the slot's lock and a clock read) while it is fresh, whichever of the
    /// two made it.
    #[tokio::test(start_paused = true)]
    async fn requests_use_the_shared_answer_while_it_is_fresh() {
        let credential = tower::service_fn(|_: TokenRequest| async {
            let expires = Instant::now() + Duration::from_secs(3600);
            Ok::<_, CredentialError>(AccessToken::new("token-1", expires))
        });
        let layer = BearerTokenLayer::new(credential.boxed_credential(), ["s"]);
        // Never used to connect (`Echo` answers), but reqwest needs a TLS configuration.
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let reqwest = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .build()
            .unwrap();
        let client = ClientBuilder::new(reqwest)
            .with(layer.middleware())
            .with(Echo)
            .build();
        let send = async || {
            let response = client.get("https://x.test/").send().await.unwrap();
            response.headers()["x-seen"].to_str().unwrap().to_owned()
        };

        let before = assert_the_shared_answer_serves(send).await;

        // A clone of the layer's service finds the middleware's answer too.
        let ok = tower::service_fn(|_: http::Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(http::Response::new(Empty::<Bytes>::new()))
        });
        let request = http::Request::get("https://x.test/")
            .body(Full::default())
            .unwrap();
        layer.layer(ok).oneshot(request).await.unwrap();
        assert_eq!(lookups(), before, "nor through the layer's service");

        // The token rejected: the shared answer is stale, the next request looks again.
        let id = layer.source.current.load().as_ref().unwrap().token_id;
        assert!(layer.source.slot.invalidate(id));
        send().await;
        assert!(lookups() > before);
    }
}

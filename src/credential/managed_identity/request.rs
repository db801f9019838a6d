//! What every source does alike: building the request, sending it, reading the answer.

use bytes::Bytes;
use http::header::{HeaderName, USER_AGENT};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::Full;
use tokio::time::Instant;
use tower::ServiceExt;
use url::Url;

use super::response::{MiToken, parse_answer};
use super::{ManagedIdentitySource, NAME};
use crate::entra::token_client::{USER_AGENT_VALUE, transport_failure};
use crate::error::CredentialError;
use crate::throttle::Throttle;
use crate::token::{AccessToken, Secret, unix_now};
use crate::transport::{BeforeRetry, HttpClient, HttpRequest};

/// The built-in client for the `http` sources: the default retries, plain `http` allowed,
/// no proxy.
///
/// Managed identity endpoints are never proxied, whatever `HTTPS_PROXY` or `NO_PROXY` say:
/// IMDS is link-local (`169.254.169.254`) and Microsoft's IMDS documentation says it must be
/// reached without a proxy; App Service, Arc, Cloud Shell and Service Fabric serve on
/// loopback or the local host, which a proxy cannot reach as us. azure-identity for Python
/// leaves this to `requests`, which proxies IMDS unless `NO_PROXY` lists it: its
/// troubleshooting guide says managed identity does not work behind a proxy. A client given
/// with `http_client` is used as it is.
pub(super) fn default_http() -> Result<HttpClient, String> {
    HttpClient::builder()
        .allow_http()
        .no_proxy()
        .build()
        .map_err(|e| format!("the HTTP client could not be built: {e}"))
}

/// `base` with these query pairs appended (after any it has).
pub(super) fn with_query(base: &Url, pairs: &[(&str, &str)]) -> Url {
    let mut url = base.clone();
    {
        let mut query = url.query_pairs_mut();
        for (name, value) in pairs {
            query.append_pair(name, value);
        }
    }
    url
}

/// A secret as a header value, marked sensitive; checked when the credential is built.
pub(super) fn secret_header(variable: &str, secret: &Secret) -> Result<HeaderValue, String> {
    let mut value = HeaderValue::from_str(secret.expose_secret()).map_err(|_| {
        format!("{variable} holds characters an HTTP header cannot carry; check its value")
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// A request to a managed identity endpoint; `Metadata: true` and the like come in `headers`.
pub(super) fn build(
    method: Method,
    url: &Url,
    headers: &[(HeaderName, HeaderValue)],
    body: Bytes,
) -> Result<HttpRequest, CredentialError> {
    let mut builder = http::Request::builder()
        .method(method)
        .uri(url.as_str())
        .header(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
    for (name, value) in headers {
        builder = builder.header(name, value.clone());
    }
    builder.body(Full::new(body)).map_err(|e| {
        CredentialError::invalid_request(NAME, format!("invalid request URL {url}: {e}"))
    })
}

/// `request`, its answers that the transport waits out before sending it again reported to
/// `before_retry` (the credential's throttle memory: see `Configured::acquire`).
pub(super) fn reporting(mut request: HttpRequest, before_retry: &BeforeRetry) -> HttpRequest {
    request.extensions_mut().insert(before_retry.clone());
    request
}

/// An endpoint's answer, and when the request was sent (for relative lifetimes).
pub(super) struct Answer {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
    pub(super) sent_at: Instant,
    pub(super) sent_at_unix: u64,
}

impl Answer {
    /// The token in this answer, or the endpoint's error (scrubbed of `secrets`).
    pub(super) fn parse(
        &self,
        source: ManagedIdentitySource,
        secrets: &[&str],
    ) -> Result<MiToken, CredentialError> {
        parse_answer(
            source,
            self.status,
            &self.body,
            secrets,
            self.sent_at,
            self.sent_at_unix,
        )
        .map_err(|error| match Throttle::of(self.status, &self.headers) {
            // The credential remembers it (see `Configured::acquire`).
            Some(throttle) => throttle.mark(error),
            None => error,
        })
    }
}

/// Sends `request` and reads the token from the answer: the one-request sources.
pub(super) async fn fetch(
    http: &HttpClient,
    source: ManagedIdentitySource,
    request: HttpRequest,
    secrets: &[&str],
) -> Result<AccessToken, CredentialError> {
    let answer = send(http, source, request, secrets).await?;
    Ok(answer.parse(source, secrets)?.token)
}

/// Sends `request`; a request that got no answer is an *authentication failed* error (the
/// transport's kind kept), its text scrubbed of `secrets`.
pub(super) async fn send(
    http: &HttpClient,
    source: ManagedIdentitySource,
    request: HttpRequest,
    secrets: &[&str],
) -> Result<Answer, CredentialError> {
    let url = without_query(request.uri());
    let sent_at = Instant::now();
    let sent_at_unix = unix_now();
    tracing::debug!(credential = NAME, %source, url = %url, "managed identity token request");
    let response = http.clone().oneshot(request).await.map_err(|e| {
        transport_failure(
            NAME,
            &format!("the {source} managed identity endpoint"),
            &url,
            e.as_ref(),
            secrets,
        )
    })?;
    let (parts, body) = response.into_parts();
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body,
        sent_at,
        sent_at_unix,
    })
}

/// Whether a send failure is "nobody answered": no connection, or no answer in time.
pub(super) fn no_answer(error: &CredentialError) -> bool {
    error.is_connect() || error.is_timeout()
}

/// The URL as errors quote it: the query (resource, identity) is in other parts of the message.
fn without_query(uri: &http::Uri) -> String {
    match uri.authority() {
        Some(authority) => format!(
            "{}://{}{}",
            uri.scheme_str().unwrap_or("http"),
            authority,
            uri.path()
        ),
        None => uri.path().to_owned(),
    }
}

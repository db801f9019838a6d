//! The token endpoint: the form each grant sends (`form.rs`), the POST ([`TokenClient`]),
//! reading the answer (`response.rs`) and the error when none came (`failure.rs`).
//!
//! On the wire (OAuth 2.0 as the Microsoft identity platform implements it): a `POST
//! {authority}/{tenant}/oauth2/v2.0/token` with an `application/x-www-form-urlencoded` body
//! (RFC 6749 §4.1.3, §4.4.2 and §6; a client assertion per RFC 7523 §2.2, a device code poll
//! per RFC 8628 §3.4), scopes joined by single spaces (RFC 6749 §3.3); the device
//! authorization request (RFC 8628 §3.1) goes to `…/oauth2/v2.0/devicecode` the same way. The
//! AD FS tenant `adfs` has no v2.0 paths: `{authority}/adfs/oauth2/token` and
//! `{authority}/adfs/oauth2/devicecode` (see
//! [`Authority::token_endpoint`](super::authority::Authority::token_endpoint)).
//! Every request carries a fresh `x-ms-client-request-id` (a UUID Entra records beside its
//! own correlation id) and a `User-Agent` naming this crate. A success is a JSON object (RFC
//! 6749 §5.1) whose numbers (`expires_in`, `ext_expires_in`, `refresh_in`, `expires_on`)
//! Entra sends as JSON numbers or as numeric strings (`"3599"`): both are read. An answer
//! with an `error` field (RFC 6749 §5.2) is a failure whatever its HTTP status; Entra adds its
//! AADSTS numbers (`error_codes`) and a `correlation_id`, kept in the error's provider details.

mod failure;
mod form;
mod response;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, USER_AGENT};
use http::{HeaderValue, StatusCode};
use http_body_util::Full;
use serde_json::{Map, Value};
use tokio::time::Instant;
use tower::ServiceExt;

use super::authority::Authority;
use crate::error::{Cause, CredentialError};
use crate::throttle::{Throttle, ThrottleMemory};
use crate::token::{Secret, unix_now};
use crate::transport::{Attempts, HttpClient, SingleUse, is_retryable_status};

pub(crate) use failure::transport_failure;
pub(crate) use form::{
    Form, authorization_code_form, carries_a_challenge, claims_field, client_assertion_form,
    client_credentials_form, device_authorization_form, device_code_form, refresh_token_form,
};
use response::parse_object;
pub(crate) use response::{TokenResponse, parse_response};

/// `User-Agent` of every token request.
pub(crate) const USER_AGENT_VALUE: &str = concat!("tower-identity/", env!("CARGO_PKG_VERSION"));
/// Header carrying a fresh id per request, for correlation with Entra's logs.
const CLIENT_REQUEST_ID: &str = "x-ms-client-request-id";
/// How many of the secrets a credential sent are remembered for scrubbing: its client secret
/// or assertion, its authorization code, and the refresh tokens of the last rotations.
const REMEMBERED_SECRETS: usize = 32;

/// Sends token requests to one authority, for one credential: clones share the
/// credential's throttling state and the record of what it sent.
#[derive(Clone, Debug)]
pub(crate) struct TokenClient {
    http: HttpClient,
    authority: Authority,
    memory: Arc<Memory>,
}

/// What a credential's token client remembers between requests.
#[derive(Default)]
struct Memory {
    /// The provider's last `Retry-After`: until then nothing is sent. Shared with the
    /// transport's retry loop of each request in flight, which reports a wait before it starts
    /// it.
    throttle: Arc<ThrottleMemory>,
    /// The secrets sent lately (newest last), scrubbed from everything the provider answers
    /// — also after a refresh token was rotated out. Bounded: see [`REMEMBERED_SECRETS`].
    sent: Mutex<VecDeque<Secret>>,
}

/// An answer as received, with what parsing it and explaining its errors needs.
struct Answer {
    status: StatusCode,
    body: Bytes,
    /// Every secret sent lately, to scrub from the answer.
    secrets: Vec<Secret>,
    sent_at: Instant,
    sent_at_unix: u64,
    throttle: Option<Throttle>,
    /// The transport's retries, when there were any.
    attempts: Option<String>,
}

impl Answer {
    fn secret_strs(&self) -> Vec<&str> {
        self.secrets.iter().map(Secret::expose_secret).collect()
    }

    /// An error parsed from this answer, with whether it is worth trying again, the
    /// provider's `Retry-After` and the transport's retries.
    fn decorate(&self, error: CredentialError) -> CredentialError {
        // What the built-in retries retry is what is worth trying again later.
        let transient = is_retryable_status(self.status);
        let mut error = match self.throttle {
            Some(throttle) => throttle.mark(error),
            None => error.with_cause(Cause {
                transient,
                ..Cause::default()
            }),
        };
        if let Some(attempts) = &self.attempts {
            error = error.with_message_suffix(&format!(" ({attempts})"));
        }
        error
    }
}

impl std::fmt::Debug for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memory")
            .field("throttle", &self.throttle)
            .field("sent", &lock(&self.sent).len())
            .finish()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every write is a plain assignment or push: a panic elsewhere cannot leave it torn.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl TokenClient {
    pub(crate) fn new(http: HttpClient, authority: Authority) -> Self {
        Self {
            http,
            authority,
            memory: Arc::default(),
        }
    }

    pub(crate) fn authority(&self) -> &Authority {
        &self.authority
    }

    /// POSTs `form` to the tenant's token endpoint and parses the answer. Errors are reported
    /// under `credential`'s name. While the provider's last `Retry-After` has not passed, no
    /// request is sent: the answer is a throttled error at once.
    pub(crate) async fn request(
        &self,
        credential: &'static str,
        tenant: &str,
        form: Form,
    ) -> Result<TokenResponse, CredentialError> {
        let answer = self
            .post(credential, self.authority.token_endpoint(tenant), form)
            .await?;
        let secrets = answer.secret_strs();
        parse_response(
            credential,
            answer.status,
            &answer.body,
            &secrets,
            answer.sent_at,
            answer.sent_at_unix,
        )
        .map_err(|error| answer.decorate(error))
    }

    /// POSTs `form` to the tenant's device authorization endpoint (RFC 8628 §3.1) and returns
    /// the answer's JSON object, sent at the returned instant; an error answer is parsed as the
    /// token endpoint's are.
    pub(crate) async fn device_authorization(
        &self,
        credential: &'static str,
        tenant: &str,
        form: Form,
    ) -> Result<(Map<String, Value>, Instant), CredentialError> {
        let answer = self
            .post(
                credential,
                self.authority.device_code_endpoint(tenant),
                form,
            )
            .await?;
        let secrets = answer.secret_strs();
        parse_object(credential, answer.status, &answer.body, &secrets)
            .map(|object| (object, answer.sent_at))
            .map_err(|error| answer.decorate(error))
    }

    /// Sends `form` to `url` (unless throttled) and returns the answer as received.
    async fn post(
        &self,
        credential: &'static str,
        url: String,
        form: Form,
    ) -> Result<Answer, CredentialError> {
        if let Some(error) = self.throttled(credential, &url) {
            return Err(error);
        }
        let request_id = uuid::Uuid::new_v4().to_string();
        let mut request = http::Request::post(&url)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json")
            .header(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE))
            .header(CLIENT_REQUEST_ID, request_id.as_str())
            .body(Full::new(form.encode()))
            .map_err(|e| {
                CredentialError::invalid_request(
                    credential,
                    format!("invalid token endpoint {url}: {e}"),
                )
            })?;
        if form.is_single_use() {
            request.extensions_mut().insert(SingleUse);
        }
        // A wait the endpoint asks for holds back this credential's other requests from the
        // moment it is asked, not only once this request's retries are done.
        request
            .extensions_mut()
            .insert(self.memory.throttle.before_retry(&url));
        let secrets = self.remember_sent(&form);
        let sent_at = Instant::now();
        let sent_at_unix = unix_now();
        tracing::debug!(credential, url = %url, request_id = %request_id, "token request");
        let response = self.http.clone().oneshot(request).await.map_err(|e| {
            let shown: Vec<&str> = secrets.iter().map(Secret::expose_secret).collect();
            transport_failure(credential, "Microsoft Entra ID", &url, e.as_ref(), &shown)
        })?;
        let (parts, body) = response.into_parts();
        // The wait kept, which a longer one asked earlier may outlast: the error says that one.
        let throttle = Throttle::of(parts.status, &parts.headers)
            .map(|throttle| self.memory.throttle.remember(&url, throttle));
        let attempts = parts
            .extensions
            .get::<Attempts>()
            .filter(|a| a.count > 1)
            .map(ToString::to_string);
        Ok(Answer {
            status: parts.status,
            body,
            secrets,
            sent_at,
            sent_at_unix,
            throttle,
            attempts,
        })
    }

    /// The throttled error, while the `Retry-After` the endpoint `url` gave has not passed.
    fn throttled(&self, credential: &'static str, url: &str) -> Option<CredentialError> {
        let provider = format!("Microsoft Entra ID at {}", self.authority.as_str());
        self.memory.throttle.refusal(url, credential, &provider)
    }

    /// Adds the form's secrets to those sent lately; returns all of them, to scrub answers.
    fn remember_sent(&self, form: &Form) -> Vec<Secret> {
        let mut sent = lock(&self.memory.sent);
        for secret in form.secret_values() {
            if !sent.contains(secret) {
                if sent.len() == REMEMBERED_SECRETS {
                    sent.pop_front();
                }
                sent.push_back(secret.clone());
            }
        }
        sent.iter().cloned().collect()
    }
}

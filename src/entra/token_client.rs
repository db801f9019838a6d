//! Token endpoint requests: the form per grant, the POST, and parsing of answers and errors.
//!
//! Wire facts (see `entra-protocol.md` of the design notes): `POST
//! {authority}/{tenant}/oauth2/v2.0/token`, form-encoded, a fresh `x-ms-client-request-id` per
//! request and a `User-Agent` naming this crate. Numbers in answers may be JSON numbers or
//! numeric strings. Any `error` field means failure, whatever the status.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, USER_AGENT};
use http::{HeaderValue, StatusCode};
use http_body_util::Full;
use serde_json::{Map, Value};
use tokio::time::Instant;
use tower::ServiceExt;
use zeroize::Zeroizing;

use super::authority::Authority;
use crate::encoding::{number, number_field};
use crate::error::{Cause, CredentialError, ProviderDetails};
use crate::redact::{excerpt, scrub};
use crate::throttle::{Throttle, ThrottleMemory};
use crate::token::{
    AccessToken, HALF_LIFE_THRESHOLD, Secret, clamped_lifetime, instant_after, unix_now,
};
use crate::transport::{
    Attempts, HttpClient, TransportError, TransportErrorKind, is_retryable_status,
};

/// `User-Agent` of every token request.
pub(crate) const USER_AGENT_VALUE: &str = concat!("tower-identity/", env!("CARGO_PKG_VERSION"));
/// Header carrying a fresh id per request, for correlation with Entra's logs.
const CLIENT_REQUEST_ID: &str = "x-ms-client-request-id";
/// The claims fragment that announces the CAE capability.
const CAE_CAPABILITY: &str = "CP1";
/// How many of the secrets a credential sent are remembered for scrubbing: its client secret
/// or assertion, its authorization code, and the refresh tokens of the last rotations.
const REMEMBERED_SECRETS: usize = 32;
/// Longest excerpt of an unreadable body quoted in an error.
const BODY_EXCERPT_CHARS: usize = 200;

/// A form field value; secrets stay wrapped until encoded.
pub(crate) enum FormValue {
    Plain(String),
    Secret(Secret),
}

/// An ordered `application/x-www-form-urlencoded` form.
#[derive(Default)]
pub(crate) struct Form {
    fields: Vec<(&'static str, FormValue)>,
}

impl Form {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn field(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.fields.push((name, FormValue::Plain(value.into())));
        self
    }

    pub(crate) fn secret(mut self, name: &'static str, value: &Secret) -> Self {
        self.fields.push((name, FormValue::Secret(value.clone())));
        self
    }

    pub(crate) fn optional(self, name: &'static str, value: Option<impl Into<String>>) -> Self {
        match value {
            Some(v) => self.field(name, v),
            None => self,
        }
    }

    /// The secret values, to scrub from any text the provider sends back.
    fn secret_values(&self) -> impl Iterator<Item = &Secret> {
        self.fields.iter().filter_map(|(_, v)| match v {
            FormValue::Secret(s) => Some(s),
            FormValue::Plain(_) => None,
        })
    }

    /// The encoded body, in a buffer that is zeroed when the request is dropped.
    fn encode(&self) -> Bytes {
        let mut serializer = url::form_urlencoded::Serializer::new(String::new());
        for (name, value) in &self.fields {
            let value = match value {
                FormValue::Plain(v) => v.as_str(),
                FormValue::Secret(s) => s.expose_secret(),
            };
            serializer.append_pair(name, value);
        }
        let encoded = Zeroizing::new(serializer.finish().into_bytes());
        Bytes::from_owner(encoded)
    }

    #[cfg(test)]
    pub(crate) fn names(&self) -> Vec<&'static str> {
        self.fields.iter().map(|(n, _)| *n).collect()
    }
}

/// The client-credentials grant (a service principal with a secret).
pub(crate) fn client_credentials_form(
    client_id: &str,
    secret: &Secret,
    scopes: &[String],
    claims: Option<String>,
) -> Form {
    client_credentials(client_id, scopes, claims, |form| {
        form.secret("client_secret", secret)
    })
}

/// The client-credentials grant with a signed JWT standing for the secret (RFC 7523 §2.2):
/// a federated token, such as a workload identity's service-account token.
pub(crate) fn client_assertion_form(
    client_id: &str,
    assertion: &Secret,
    scopes: &[String],
    claims: Option<String>,
) -> Form {
    client_credentials(client_id, scopes, claims, |form| {
        form.field("client_assertion_type", JWT_BEARER_ASSERTION_TYPE)
            .secret("client_assertion", assertion)
    })
}

/// `client_assertion_type` of a JWT client assertion (RFC 7523 §8.1).
const JWT_BEARER_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The client-credentials form around the fields that authenticate the client.
fn client_credentials(
    client_id: &str,
    scopes: &[String],
    claims: Option<String>,
    authenticate: impl FnOnce(Form) -> Form,
) -> Form {
    authenticate(Form::new().field("client_id", client_id))
        .field("grant_type", "client_credentials")
        .field("scope", scope_field(scopes))
        .optional("claims", claims)
}

/// The authorization-code grant (a code redeemed once).
pub(crate) fn authorization_code_form(
    client_id: &str,
    code: &Secret,
    redirect_uri: &str,
    scopes: &[String],
    claims: Option<String>,
    client_secret: Option<&Secret>,
) -> Form {
    let form = Form::new()
        .field("client_id", client_id)
        .secret("code", code)
        .field("grant_type", "authorization_code")
        .field("redirect_uri", redirect_uri)
        .field("scope", scope_field(scopes))
        .field("client_info", "1")
        .optional("claims", claims);
    match client_secret {
        Some(secret) => form.secret("client_secret", secret),
        None => form,
    }
}

/// The OpenID scopes msal adds to a user sign-in: an id token, the account's profile (for
/// `client_info`) and a refresh token.
const SIGN_IN_SCOPES: [&str; 3] = ["openid", "profile", "offline_access"];

/// The device authorization request (RFC 8628 §3.1), with the scopes msal adds.
pub(crate) fn device_authorization_form(
    client_id: &str,
    scopes: &[String],
    claims: Option<String>,
) -> Form {
    let mut all = scopes.to_vec();
    for scope in SIGN_IN_SCOPES {
        if !all.iter().any(|s| s == scope) {
            all.push(scope.to_owned());
        }
    }
    Form::new()
        .field("client_id", client_id)
        .field("scope", scope_field(&all))
        .optional("claims", claims)
}

/// `grant_type` of a device code poll (RFC 8628 §3.4).
const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// A device code poll (RFC 8628 §3.4), asking for the account's `client_info`.
pub(crate) fn device_code_form(client_id: &str, device_code: &Secret) -> Form {
    Form::new()
        .field("grant_type", DEVICE_CODE_GRANT)
        .field("client_id", client_id)
        .secret("device_code", device_code)
        .field("client_info", "1")
}

/// The refresh-token grant.
pub(crate) fn refresh_token_form(
    client_id: &str,
    refresh_token: &Secret,
    scopes: &[String],
    claims: Option<String>,
    client_secret: Option<&Secret>,
) -> Form {
    let form = Form::new()
        .field("grant_type", "refresh_token")
        .secret("refresh_token", refresh_token)
        .field("scope", scope_field(scopes))
        .field("client_id", client_id)
        .field("client_info", "1");
    let form = match client_secret {
        Some(secret) => form.secret("client_secret", secret),
        None => form,
    };
    form.optional("claims", claims)
}

/// The scopes as the `scope` field carries them: joined with single spaces.
pub(crate) fn scope_field(scopes: &[String]) -> String {
    scopes.join(" ")
}

/// The `claims` field for a request: the caller's claims (a JSON object), with the CAE
/// capability merged in when CAE is enabled. `None` when neither applies.
pub(crate) fn claims_field(
    claims: Option<&str>,
    enable_cae: bool,
) -> Result<Option<String>, String> {
    let parsed = match claims {
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => Some(map),
            _ => {
                return Err(
                    "claims must be a JSON object, such as the decoded claims of a \
                            CAE challenge: {\"access_token\":{…}}"
                        .into(),
                );
            }
        },
        None => None,
    };
    if !enable_cae {
        // Sent as given: the provider compares the JSON it asked for.
        return Ok(claims.map(str::to_owned));
    }
    let mut root = parsed.unwrap_or_default();
    let access_token = root
        .entry("access_token")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(access_token) = access_token else {
        return Err("claims: \"access_token\" must be a JSON object".into());
    };
    let xms_cc = access_token
        .entry("xms_cc")
        .or_insert_with(|| serde_json::json!({ "values": [] }));
    let values = match xms_cc {
        Value::Object(cc) => cc
            .entry("values")
            .or_insert_with(|| Value::Array(Vec::new())),
        _ => return Err("claims: \"xms_cc\" must be a JSON object".into()),
    };
    let Value::Array(values) = values else {
        return Err("claims: \"xms_cc.values\" must be a JSON array".into());
    };
    if !values.iter().any(|v| v == CAE_CAPABILITY) {
        values.push(Value::String(CAE_CAPABILITY.into()));
    }
    Ok(Some(Value::Object(root).to_string()))
}

/// A successful answer of the token endpoint.
#[derive(Debug)]
pub(crate) struct TokenResponse {
    pub(crate) token: AccessToken,
    pub(crate) refresh_token: Option<Secret>,
    pub(crate) id_token: Option<Secret>,
    pub(crate) client_info: Option<String>,
    pub(crate) foci: Option<String>,
    pub(crate) scope: Option<String>,
    /// Wall-clock timestamps (Unix seconds), for caches written to disk.
    pub(crate) cached_at: u64,
    pub(crate) expires_on: u64,
    pub(crate) extended_expires_on: u64,
    pub(crate) refresh_on: Option<u64>,
}

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
    /// The provider's last `Retry-After`: until then nothing is sent.
    throttle: ThrottleMemory,
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
        if let Some(error) = self.throttled(credential) {
            return Err(error);
        }
        let request_id = uuid::Uuid::new_v4().to_string();
        let request = http::Request::post(&url)
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
        let secrets = self.remember_sent(&form);
        let sent_at = Instant::now();
        let sent_at_unix = unix_now();
        tracing::debug!(credential, url = %url, request_id = %request_id, "token request");
        let response = self.http.clone().oneshot(request).await.map_err(|e| {
            let shown: Vec<&str> = secrets.iter().map(Secret::expose_secret).collect();
            transport_failure(credential, "Microsoft Entra ID", &url, e.as_ref(), &shown)
        })?;
        let (parts, body) = response.into_parts();
        let throttle = Throttle::of(parts.status, &parts.headers);
        if let Some(throttle) = throttle {
            self.memory.throttle.remember(throttle);
        }
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

    /// The throttled error, while the provider's `Retry-After` has not passed.
    fn throttled(&self, credential: &'static str) -> Option<CredentialError> {
        let provider = format!("Microsoft Entra ID at {}", self.authority.as_str());
        self.memory.throttle.refusal(credential, &provider)
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

/// The error for a request to `provider` that got no answer: the transport's kind (timeout,
/// connect, …) is kept, its text scrubbed.
pub(crate) fn transport_failure(
    credential: &'static str,
    provider: &str,
    url: &str,
    error: &(dyn std::error::Error + 'static),
    secrets: &[&str],
) -> CredentialError {
    let transport = std::iter::successors(Some(error), |e| e.source())
        .find_map(|e| e.downcast_ref::<TransportError>());
    let elapsed = std::iter::successors(Some(error), |e| e.source())
        .any(|e| e.is::<tower::timeout::error::Elapsed>());
    let kind = transport.map(TransportError::kind);
    let cause = Cause {
        timeout: elapsed || kind == Some(TransportErrorKind::Timeout),
        connect: kind == Some(TransportErrorKind::Connect),
        // A failure of a user's own layers is taken as transient: it is not a refusal.
        transient: !matches!(
            kind,
            Some(TransportErrorKind::Tls | TransportErrorKind::TooLarge)
        ),
        throttled_until: None,
    };
    let scrub_text = |text: &str| scrub(text, secrets);
    let reason = scrub_text(&error.to_string());
    let failure = CredentialError::authentication_failed(
        credential,
        format!("could not get a response from {provider} at {url}: {reason}"),
    )
    .with_cause(cause);
    match transport {
        Some(t) => failure.with_source(t.redacted(scrub_text)),
        None => failure.with_source(ScrubbedError(reason)),
    }
}

/// A transport failure's text, scrubbed, standing in for the original (which could quote
/// what it was sent).
#[derive(Debug)]
struct ScrubbedError(String);

impl std::fmt::Display for ScrubbedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ScrubbedError {}

/// Parses an answer of the token endpoint.
pub(crate) fn parse_response(
    credential: &'static str,
    status: StatusCode,
    body: &[u8],
    secrets: &[&str],
    sent_at: Instant,
    sent_at_unix: u64,
) -> Result<TokenResponse, CredentialError> {
    let object = parse_object(credential, status, body, secrets)?;
    parse_success(&object, sent_at, sent_at_unix).map_err(|reason| {
        CredentialError::authentication_failed(
            credential,
            format!("Unexpected response from Microsoft Entra ID: {reason}"),
        )
        .with_provider(ProviderDetails {
            status: Some(status),
            ..ProviderDetails::default()
        })
    })
}

/// The JSON object of a successful answer; an error answer (any `error` field, or a failure
/// status) or a body that is not a JSON object is the error it describes.
fn parse_object(
    credential: &'static str,
    status: StatusCode,
    body: &[u8],
    secrets: &[&str],
) -> Result<Map<String, Value>, CredentialError> {
    let Some(Value::Object(object)) = serde_json::from_slice::<Value>(body).ok() else {
        let mut message = if status.is_success() {
            "Unexpected response from Microsoft Entra ID: the body is not a JSON object".to_owned()
        } else {
            format!("Microsoft Entra ID answered HTTP {status} without an error description")
        };
        let excerpt = excerpt(body, secrets, BODY_EXCERPT_CHARS);
        if !excerpt.is_empty() {
            // Quoted as it is: the excerpt has no control characters left, and escaping it
            // again would make a JSON body unreadable (`{\"error\":…`).
            message.push_str(&format!(" (body starts: \"{excerpt}\")"));
        }
        return Err(
            CredentialError::authentication_failed(credential, message).with_provider(
                ProviderDetails {
                    status: Some(status),
                    ..ProviderDetails::default()
                },
            ),
        );
    };
    if object.contains_key("error") || !status.is_success() {
        return Err(provider_error(credential, status, &object, secrets));
    }
    Ok(object)
}

fn parse_success(
    object: &Map<String, Value>,
    sent_at: Instant,
    sent_at_unix: u64,
) -> Result<TokenResponse, String> {
    let access_token = match object.get("access_token") {
        Some(Value::String(t)) if !t.is_empty() => Secret::new(t.as_str()),
        _ => return Err("the answer has no access_token".into()),
    };
    let expires_in = number_field(object, "expires_in")?;
    let expires_on_abs = number_field(object, "expires_on")?;
    // An absolute expires_on (managed-identity style) wins over expires_in. Every number is
    // clamped to MAX_TOKEN_LIFETIME before it meets a clock: `"expires_in": 1e20` is a broken
    // provider, not a reason to overflow.
    let lifetime_secs = match (expires_on_abs, expires_in) {
        (Some(epoch), _) => epoch.saturating_sub(sent_at_unix),
        (None, Some(secs)) => secs,
        (None, None) => return Err("the answer has neither expires_in nor expires_on".into()),
    };
    let lifetime_secs = clamped_lifetime(lifetime_secs).as_secs();
    if lifetime_secs == 0 {
        return Err("the token it issued has already expired".into());
    }
    let refresh_in = match number_field(object, "refresh_in")? {
        // A refresh time past expiry means nothing more than expiry.
        Some(secs) => Some(secs.min(lifetime_secs)),
        None if Duration::from_secs(lifetime_secs) >= HALF_LIFE_THRESHOLD => {
            Some(lifetime_secs / 2)
        }
        None => None,
    };
    let ext_expires_in = number_field(object, "ext_expires_in")?
        .map_or(lifetime_secs, |secs| clamped_lifetime(secs).as_secs());
    let token_type = match object.get("token_type") {
        Some(Value::String(t)) if !t.is_empty() => t.as_str(),
        _ => "Bearer",
    };
    let token = AccessToken::new(access_token, instant_after(sent_at, lifetime_secs))
        .with_refresh_on(refresh_in.map(|s| instant_after(sent_at, s)))
        .with_token_type(token_type);
    let string = |name: &str| object.get(name).and_then(Value::as_str).map(str::to_owned);
    Ok(TokenResponse {
        token,
        refresh_token: string("refresh_token").map(Secret::new),
        id_token: string("id_token").map(Secret::new),
        client_info: string("client_info"),
        foci: string("foci"),
        scope: string("scope"),
        cached_at: sent_at_unix,
        expires_on: sent_at_unix.saturating_add(lifetime_secs),
        extended_expires_on: sent_at_unix.saturating_add(ext_expires_in),
        refresh_on: refresh_in.map(|s| sent_at_unix.saturating_add(s)),
    })
}

/// An error answer: `Microsoft Entra ID error '(code) description'`, with the details kept
/// apart and a hint for the common mistakes.
fn provider_error(
    credential: &'static str,
    status: StatusCode,
    object: &Map<String, Value>,
    secrets: &[&str],
) -> CredentialError {
    let text = |name: &str| {
        object
            .get(name)
            .and_then(Value::as_str)
            .map(|s| scrub(s, secrets))
    };
    let error = text("error");
    let codes: Vec<u32> = object
        .get("error_codes")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(number)
                .filter_map(|n| u32::try_from(n).ok())
                .collect()
        })
        .unwrap_or_default();
    let description = text("error_description").map(|d| one_line(&d));
    let mut message = match (&error, &description) {
        (Some(e), Some(d)) => format!("Microsoft Entra ID error '({e}) {d}'"),
        (Some(e), None) => format!("Microsoft Entra ID error '({e})'"),
        (None, _) => format!("Microsoft Entra ID answered HTTP {status} without an error code"),
    };
    if let Some(hint) = hint(error.as_deref(), &codes) {
        message.push_str(". ");
        message.push_str(hint);
    }
    CredentialError::authentication_failed(credential, message).with_provider(ProviderDetails {
        status: Some(status),
        error,
        error_codes: codes,
        correlation_id: text("correlation_id"),
    })
}

/// What to do about the errors people hit most.
fn hint(error: Option<&str>, codes: &[u32]) -> Option<&'static str> {
    let code = |c: u32| codes.contains(&c);
    Some(match error {
        _ if code(7000215) => {
            "Check that the client secret is the secret's value (not its id) and belongs to this app"
        }
        _ if code(7000222) => "The client secret has expired: create a new one for the app",
        _ if code(700016) => "Check the client id, and that the app is registered in this tenant",
        _ if code(90002) => "Check the tenant id: no such tenant was found",
        // Entra's codes for a federated assertion (workload identity): out of its time range,
        // or no federated credential of the app with the assertion's issuer, audience, subject.
        _ if code(700024) => {
            "The client assertion has expired or is not yet valid: the assertion source must \
             return a current one (a workload identity's token file must be the projected \
             service-account token the kubelet keeps renewing)"
        }
        _ if [70021, 700211, 700212, 700213].iter().any(|c| code(*c)) => {
            "Check the app's federated identity credential: its issuer, subject and audience \
             must equal the assertion's iss, sub and aud exactly (case-sensitive)"
        }
        Some("invalid_scope") => {
            "Check the scope; app-only tokens need a \"<resource>/.default\" scope"
        }
        Some("invalid_grant") => "Sign in again to get a new authorization code or refresh token",
        _ => return None,
    })
}

pub(crate) fn one_line(text: &str) -> String {
    text.split(['\r', '\n'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(status: u16, body: &str) -> Result<TokenResponse, CredentialError> {
        parse_response(
            "TestCredential",
            StatusCode::from_u16(status).unwrap(),
            body.as_bytes(),
            &["the-client-secret"],
            Instant::now(),
            1_700_000_000,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn numbers_may_be_json_numbers_or_numeric_strings() {
        for body in [
            r#"{"access_token":"a","expires_in":3599,"ext_expires_in":3599,"refresh_in":1800,"token_type":"Bearer"}"#,
            r#"{"access_token":"a","expires_in":"3599","ext_expires_in":"3599","refresh_in":"1800"}"#,
            r#"{"access_token":"a","expires_in":3599.0,"refresh_in":" 1800 "}"#,
        ] {
            let r = parse(200, body).unwrap();
            assert_eq!(r.token.expires_in(), Duration::from_secs(3599), "{body}");
            assert_eq!(
                r.token.refresh_on(),
                Some(Instant::now() + Duration::from_secs(1800)),
                "{body}"
            );
            assert_eq!(r.expires_on, 1_700_003_599);
            assert_eq!(r.refresh_on, Some(1_700_001_800));
            assert_eq!(r.token.token_type(), "Bearer");
        }
        let err = parse(200, r#"{"access_token":"a","expires_in":"soon"}"#).unwrap_err();
        assert!(
            err.message()
                .contains("expires_in is not a non-negative number"),
            "{err}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn refresh_on_follows_refresh_in_then_half_life_for_long_tokens() {
        let r = parse(200, r#"{"access_token":"a","expires_in":7200}"#).unwrap();
        assert_eq!(
            r.token.refresh_on(),
            Some(Instant::now() + Duration::from_secs(3600))
        );
        let r = parse(200, r#"{"access_token":"a","expires_in":7199}"#).unwrap();
        assert_eq!(r.token.refresh_on(), None);
        assert_eq!(r.refresh_on, None);
        let r = parse(
            200,
            r#"{"access_token":"a","expires_in":86400,"refresh_in":600}"#,
        )
        .unwrap();
        assert_eq!(
            r.token.refresh_on(),
            Some(Instant::now() + Duration::from_secs(600))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn absurd_numbers_are_clamped_not_a_panic() {
        let week = crate::token::MAX_TOKEN_LIFETIME;
        for body in [
            r#"{"access_token":"a","expires_in":1e20}"#,
            r#"{"access_token":"a","expires_in":18446744073709551615}"#,
            r#"{"access_token":"a","expires_in":"1e300"}"#,
            r#"{"access_token":"a","expires_on":99999999999999999999}"#,
            r#"{"access_token":"a","expires_on":"18446744073709551615"}"#,
            r#"{"access_token":"a","expires_in":3600,"expires_on":1e20}"#,
        ] {
            let r = parse(200, body).unwrap();
            assert_eq!(r.token.expires_in(), week, "{body}");
            assert_eq!(r.expires_on, 1_700_000_000 + week.as_secs(), "{body}");
        }
        let r = parse(
            200,
            r#"{"access_token":"a","expires_in":3600,"refresh_in":1e20,"ext_expires_in":18446744073709551615}"#,
        )
        .unwrap();
        // refresh_in past expiry means expiry; ext_expires_in is clamped like a lifetime.
        assert_eq!(r.token.refresh_on(), Some(r.token.expires_on()));
        assert_eq!(r.refresh_on, Some(1_700_003_600));
        assert_eq!(r.extended_expires_on, 1_700_000_000 + week.as_secs());
    }

    #[tokio::test(start_paused = true)]
    async fn absolute_expires_on_wins_over_expires_in() {
        // parse() sends at Unix time 1_700_000_000.
        let body = r#"{"access_token":"a","expires_in":3600,"expires_on":"1700001000"}"#;
        let r = parse(200, body).unwrap();
        assert_eq!(r.token.expires_in(), Duration::from_secs(1000));
        assert_eq!(r.expires_on, 1_700_001_000);
    }

    #[tokio::test(start_paused = true)]
    async fn missing_expiry_or_token_is_an_unexpected_response_without_echo() {
        let err = parse(
            200,
            r#"{"access_token":"eyJhbGciOi.payload.sig","token_type":"Bearer"}"#,
        )
        .unwrap_err();
        assert!(err.is_authentication_failed());
        assert!(
            err.message()
                .starts_with("Unexpected response from Microsoft Entra ID"),
            "{err}"
        );
        assert!(
            err.message().contains("neither expires_in nor expires_on"),
            "{err}"
        );
        assert!(!err.to_string().contains("payload"), "{err}");
        let err = parse(200, r#"{"expires_in":3600}"#).unwrap_err();
        assert!(err.message().contains("no access_token"), "{err}");
        let err = parse(200, r#"{"access_token":"a","expires_in":0}"#).unwrap_err();
        assert!(err.message().contains("already expired"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn entra_error_body_becomes_a_detailed_error() {
        let body = r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.\r\nTrace ID: t-1\r\nCorrelation ID: c-1\r\nTimestamp: 2024-05-01 00:00:00Z","error_codes":[7000215],"timestamp":"2024-05-01 00:00:00Z","trace_id":"t-1","correlation_id":"c-1"}"#;
        let err = parse(401, body).unwrap_err();
        assert!(err.is_authentication_failed());
        assert_eq!(err.status(), Some(StatusCode::UNAUTHORIZED));
        assert_eq!(err.error_code(), Some("invalid_client"));
        assert_eq!(err.error_codes(), [7000215]);
        assert_eq!(err.correlation_id(), Some("c-1"));
        let msg = err.message();
        assert!(msg.starts_with("Microsoft Entra ID error '(invalid_client) AADSTS7000215: Invalid client secret provided."), "{msg}");
        assert!(msg.contains("Trace ID: t-1 Correlation ID: c-1"), "{msg}");
        assert!(msg.contains("Check that the client secret"), "{msg}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_field_means_failure_even_with_200() {
        let err = parse(200, r#"{"error":"invalid_grant","error_description":"AADSTS54005: code redeemed","error_codes":["54005"]}"#).unwrap_err();
        assert_eq!(err.error_codes(), [54005]);
        assert!(err.message().contains("Sign in again"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn unreadable_bodies_are_quoted_scrubbed_and_short() {
        let html = format!(
            "<html>proxy says the-client-secret eyJa.b.c {}</html>",
            "x".repeat(500)
        );
        let err = parse(502, &html).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("HTTP 502"), "{msg}");
        assert!(msg.contains("<html>proxy says *** ***"), "{msg}");
        assert!(
            !msg.contains("the-client-secret") && !msg.contains("eyJa"),
            "{msg}"
        );
        assert!(msg.len() < 400, "{}", msg.len());
        let err = parse(200, "not json").unwrap_err();
        assert!(err.message().contains("not a JSON object"), "{err}");
    }

    #[test]
    fn cae_capability_is_merged_into_claims() {
        assert_eq!(claims_field(None, false).unwrap(), None);
        assert_eq!(
            claims_field(None, true).unwrap().unwrap(),
            r#"{"access_token":{"xms_cc":{"values":["CP1"]}}}"#
        );
        let challenge = r#"{"access_token":{"nbf":{"essential":true,"value":"1726077595"}}}"#;
        assert_eq!(
            claims_field(Some(challenge), false).unwrap().unwrap(),
            challenge
        );
        assert_eq!(
            claims_field(Some(challenge), true).unwrap().unwrap(),
            r#"{"access_token":{"nbf":{"essential":true,"value":"1726077595"},"xms_cc":{"values":["CP1"]}}}"#
        );
        let has_cp1 = r#"{"access_token":{"xms_cc":{"values":["CP1","X"]}},"id_token":{}}"#;
        assert_eq!(claims_field(Some(has_cp1), true).unwrap().unwrap(), has_cp1);
        assert!(claims_field(Some("[1]"), false).is_err());
        assert!(claims_field(Some(r#"{"access_token":1}"#), true).is_err());
    }

    #[test]
    fn client_credentials_forms_differ_only_in_how_the_client_proves_itself() {
        let scopes = ["https://x.test/.default".to_owned()];
        let secret = client_credentials_form("id", &Secret::new("s3cret"), &scopes, None);
        assert_eq!(
            secret.names(),
            ["client_id", "client_secret", "grant_type", "scope"]
        );
        let assertion =
            client_assertion_form("id", &Secret::new("eyJ.a.b"), &scopes, Some("{}".into()));
        assert_eq!(
            assertion.names(),
            [
                "client_id",
                "client_assertion_type",
                "client_assertion",
                "grant_type",
                "scope",
                "claims"
            ]
        );
        assert_eq!(
            &assertion.encode()[..],
            b"client_id=id&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer\
              &client_assertion=eyJ.a.b&grant_type=client_credentials&scope=https%3A%2F%2Fx.test%2F.default&claims=%7B%7D"
        );
        let secrets: Vec<&str> = assertion
            .secret_values()
            .map(Secret::expose_secret)
            .collect();
        assert_eq!(secrets, ["eyJ.a.b"]);
    }

    #[test]
    fn form_encodes_in_order_and_lists_secrets() {
        let secret = Secret::new("s p&c=");
        let form = Form::new()
            .field("client_id", "id")
            .secret("client_secret", &secret)
            .field("scope", scope_field(&["a".into(), "b c".into()]))
            .optional("claims", None::<String>);
        assert_eq!(form.names(), ["client_id", "client_secret", "scope"]);
        assert_eq!(
            &form.encode()[..],
            b"client_id=id&client_secret=s+p%26c%3D&scope=a+b+c"
        );
        let secrets: Vec<&str> = form.secret_values().map(Secret::expose_secret).collect();
        assert_eq!(secrets, ["s p&c="]);
    }
}

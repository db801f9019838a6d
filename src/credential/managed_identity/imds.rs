//! IMDS, the Instance Metadata Service of VMs, scale sets and AKS nodes:
//! `GET {base}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=…` with
//! `Metadata: true`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use tokio::time::Instant;
use url::Url;

use super::request::{self, Answer};
use super::response::{failure, provider_text};
use super::{IdParams, ManagedIdentitySource, NAME, UserAssignedId};
use crate::error::{Cause, CredentialError};
use crate::token::AccessToken;
use crate::transport::{
    Answered, BeforeRetry, HttpClient, RetryOptions, TransportErrorKind, is_imds_retryable_status,
};

const SOURCE: ManagedIdentitySource = ManagedIdentitySource::Imds;
const DEFAULT_BASE: &str = "http://169.254.169.254";
const TOKEN_PATH: &str = "/metadata/identity/oauth2/token";
const API_VERSION: &str = "2018-02-01";
/// User-assigned ids in the query (the IMDS REST spec).
const PARAMS: IdParams = IdParams {
    client_id: "client_id",
    object_id: "object_id",
    resource_id: "msi_res_id",
};
/// Connecting to IMDS gives up after this long (azure-identity's `imds.py`): it is link-local,
/// so a host that has it answers at once.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The deadline of one request over its retries: the 75 s of backoff after 410s (IMDS being
/// updated, up to 70 s) plus the attempts themselves.
const TOTAL_TIMEOUT: Duration = Duration::from_secs(90);
/// The probe's whole budget (azure-identity: 1 s, no retries).
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// The most of a probe's answer the built-in probe client reads: IMDS's is a short JSON
/// error, and a larger answer (a web page) is not IMDS's.
const PROBE_MAX_BYTES: usize = 16 * 1024;

/// The full token URL for a base URL (`AZURE_POD_IDENTITY_AUTHORITY_HOST`).
pub(super) fn token_url(base: &Url) -> Result<Url, String> {
    let base = base.as_str().trim_end_matches('/');
    Url::parse(&format!("{base}{TOKEN_PATH}"))
        .map_err(|e| format!("the IMDS URL could not be formed: {e}"))
}

/// The token URL at the link-local address.
pub(super) fn default_url() -> Result<Url, String> {
    Url::parse(DEFAULT_BASE)
        .map_err(|e| e.to_string())
        .and_then(|base| token_url(&base))
}

pub(super) struct Imds {
    pub(super) url: Url,
    pub(super) id: Option<UserAssignedId>,
    http: HttpClient,
    /// Whether a probe precedes each request: `Some` always or never, `None` when a chain
    /// asks.
    probe: Option<bool>,
    /// The probe's client: the caller's client when one was given, else built when first
    /// needed (most credentials are never asked by a chain).
    probe_http: OnceLock<HttpClient>,
    /// A token was received once: an answer that is not JSON is a failure from then on.
    succeeded: AtomicBool,
    /// IMDS answered once with JSON, as only IMDS does (a token, a JSON error such as the
    /// probe's 400 "Required metadata header"): it is there, so no more probes, and a request
    /// that gets no answer is a failure of this host's IMDS, not the sign of a host without
    /// one (which would let a chain move on to another identity). An answer that is not JSON
    /// (a captive portal's page, a proxy's refusal) does not count: on another network the
    /// same address may answer nothing. Shared with the retry loops of token requests in
    /// flight, which see the answers they retry first.
    answered: Arc<AtomicBool>,
}

impl Imds {
    pub(super) fn new(
        url: Url,
        id: Option<UserAssignedId>,
        custom: Option<HttpClient>,
        probe: Option<bool>,
    ) -> Result<Self, String> {
        let (http, probe_http) = match custom {
            // The caller's client as it is; the probe's budget is enforced around it.
            Some(client) => (client.clone(), OnceLock::from(client)),
            None => (
                built(
                    HttpClient::builder()
                        .connect_timeout(Some(CONNECT_TIMEOUT))
                        .retry(RetryOptions::imds(TOTAL_TIMEOUT)),
                )?,
                OnceLock::new(),
            ),
        };
        Ok(Self {
            url,
            id,
            http,
            probe,
            probe_http,
            succeeded: AtomicBool::new(false),
            answered: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The probe's client.
    fn probe_http(&self) -> Result<&HttpClient, CredentialError> {
        if let Some(client) = self.probe_http.get() {
            return Ok(client);
        }
        // No connect timeout of its own: a connection not made within the budget is the
        // budget's timeout (maybe a slow IMDS), not a connection failure (nothing there).
        let client = built(
            HttpClient::builder()
                .connect_timeout(None)
                .timeout(Some(PROBE_TIMEOUT))
                .max_response_bytes(PROBE_MAX_BYTES)
                .no_retry(),
        )
        .map_err(|message| CredentialError::invalid_request(NAME, message))?;
        // Two first callers may both build one: either is fine.
        Ok(self.probe_http.get_or_init(|| client))
    }

    fn query_url(&self, resource: &str) -> Url {
        let mut pairs = vec![("api-version", API_VERSION), ("resource", resource)];
        if let Some(id) = &self.id {
            pairs.push(PARAMS.pair(id));
        }
        request::with_query(&self.url, &pairs)
    }

    /// The request, with or without the `Metadata` header (the probe has none, so IMDS answers
    /// it with a quick 400 instead of issuing a token).
    fn request(
        &self,
        resource: &str,
        metadata: bool,
    ) -> Result<crate::transport::HttpRequest, CredentialError> {
        let headers: &[(HeaderName, HeaderValue)] = if metadata {
            &[(
                HeaderName::from_static("metadata"),
                HeaderValue::from_static("true"),
            )]
        } else {
            &[]
        };
        request::build(
            Method::GET,
            &self.query_url(resource),
            headers,
            Bytes::new(),
        )
    }

    /// `within_chain`: asked by a chain, which may fall back to another credential.
    pub(super) async fn acquire(
        &self,
        resource: &str,
        within_chain: bool,
        before_retry: &BeforeRetry,
    ) -> Result<AccessToken, CredentialError> {
        let in_chain = self.probe.unwrap_or(within_chain);
        let mut quick = None;
        let mut busy = None;
        if in_chain && !self.answered.load(Ordering::Acquire) {
            let probe_http = self.probe_http()?;
            let started = Instant::now();
            busy = self.probe(probe_http, resource).await?;
            // Something answered, but not with IMDS's JSON (AWS's IMDSv1 404 page, a
            // firewall's 502): the token request too gets the probe's client and what is left
            // of its budget, not IMDS's retry schedule (some 24 s of retries for a 404, 75 s
            // for a 410), so that the chain moves on within the second.
            if !self.answered.load(Ordering::Acquire) {
                quick = Some((probe_http, started));
            }
        }
        let token = self
            .token(resource, in_chain, quick, busy, before_retry)
            .await?;
        self.succeeded.store(true, Ordering::Release);
        Ok(token)
    }

    /// One token request; `in_chain`: asked by a chain that may move on; `quick`: sent
    /// through this client within what is left of the budget of the probe started then, no
    /// retries, because only something other than IMDS has answered so far; `busy`: the
    /// probe's answer, IMDS busy ([`is_busy`]), which IMDS's retry schedule starts from.
    async fn token(
        &self,
        resource: &str,
        in_chain: bool,
        quick: Option<(&HttpClient, Instant)>,
        busy: Option<Answer>,
        before_retry: &BeforeRetry,
    ) -> Result<AccessToken, CredentialError> {
        let before_token = in_chain && !self.succeeded.load(Ordering::Acquire);
        // A JSON answer the retries wait out is IMDS answering as much as one that ends them:
        // it counts (`answered`), so that a request that then gets no answer is a failure of
        // this host's IMDS, as the chain's other requests meanwhile are refused throttled by
        // the wait it asked for. Until IMDS has issued a token to a chain, an answer that is
        // not JSON is taken as no IMDS (below), not as throttling: only a JSON answer's wait
        // is reported.
        let report = if before_token || !self.answered.load(Ordering::Acquire) {
            let report = before_retry.clone();
            let answered = Arc::clone(&self.answered);
            BeforeRetry::new(move |answer| {
                let json = answer.is_some_and(|answer| is_json(answer.body()));
                if json {
                    answered.store(true, Ordering::Release);
                }
                report.call(answer.filter(|_| json || !before_token))
            })
        } else {
            before_retry.clone()
        };
        let mut answer = match quick {
            Some((http, started)) => {
                self.send(http, resource, in_chain, Some(started), None, &report)
                    .await?
            }
            None => {
                self.send(&self.http, resource, in_chain, None, busy.as_ref(), &report)
                    .await?
            }
        };
        if quick.is_some() && is_busy(&answer) {
            // IMDS after all (its JSON), busy: a 410 while it is updated, a 429, a 5xx. It is
            // there, so its whole retry schedule, as when the probe has its JSON. The schedule
            // starts from this answer, as from its own first one: a `Retry-After` is reported
            // (remembered, so the credential's other requests are refused throttled meanwhile)
            // and waited out before the request goes again, or, too long, ends it.
            self.answered.store(true, Ordering::Release);
            answer = self
                .send(&self.http, resource, in_chain, None, Some(&answer), &report)
                .await?;
        }
        if let Some(error) = docker_desktop(&answer) {
            return Err(error);
        }
        let json = is_json(&answer.body);
        if json {
            self.answered.store(true, Ordering::Release);
        }
        if let Some(error) = self.bad_request(&answer, resource) {
            return Err(error);
        }
        let status = answer.status;
        match answer.parse(SOURCE, &[]) {
            Ok(token) => Ok(token.token),
            // Until IMDS has issued a token, an answer that is not JSON at all may come from a
            // proxy, firewall or captive portal answering for the link-local address: the
            // chain moves on, as azure-identity's does. Any other JSON error (the 400s were
            // decided above: a 403 by policy, a 500 after the retries, a 200 without a token)
            // is IMDS's own, a managed identity that is there but failed: the chain stops on
            // it, as azure-identity's does, rather than run on as another identity.
            //
            // On the quick path (the probe's answer was not JSON either), a status IMDS's
            // schedule retries (404, 408, 410, 429, 5xx) may be a real IMDS stand-in that is
            // busy: aad-pod-identity's NMI answers plain-text 404s, or 503 with Retry-After,
            // while it assigns the pod's identity, and got no retries here. *Unavailable* so
            // that the chain moves on, but transient, so that `DefaultAzureCredential` only
            // chooses what answers after it for a while and asks again.
            Err(error) if before_token && !json => {
                let busy = quick.is_some() && is_imds_retryable_status(status);
                let maybe = if busy {
                    format!(
                        " (a {status} without retries here, as nothing answered with IMDS's \
                         JSON: it may also be a busy IMDS stand-in such as aad-pod-identity's \
                         NMI, so this may pass)"
                    )
                } else {
                    String::new()
                };
                Err(CredentialError::unavailable(
                    NAME,
                    format!(
                        "something answered at the IMDS address, but not with JSON, so this is \
                         taken as a host without a managed identity{maybe}: {}",
                        error.message()
                    ),
                )
                .with_cause(Cause {
                    transient: busy,
                    ..Cause::default()
                })
                .with_source(error))
            }
            Err(error) => Err(error),
        }
    }

    /// Sends the token request through `http` (when `probed`, within what is left of the
    /// budget of the probe started then; `after` an answer it already got, which the retry
    /// loop takes as its first: see [`Answered`]); a request that got no answer is an error as
    /// [`token`](Self::token) reports it.
    async fn send(
        &self,
        http: &HttpClient,
        resource: &str,
        in_chain: bool,
        probed: Option<Instant>,
        after: Option<&Answer>,
        report: &BeforeRetry,
    ) -> Result<Answer, CredentialError> {
        let mut request = request::reporting(self.request(resource, true)?, report);
        if let Some(answer) = after {
            request.extensions_mut().insert(Answered::new(
                answer.status,
                answer.headers.clone(),
                answer.body.clone(),
            ));
        }
        let sent = request::send(http, SOURCE, request, &[]);
        let sent = match probed {
            Some(started) => {
                let left = PROBE_TIMEOUT.saturating_sub(started.elapsed());
                match tokio::time::timeout(left, sent).await {
                    Ok(sent) => sent,
                    Err(_elapsed) => {
                        // The time it was given, not the probe's whole second.
                        let waited = format!(
                            "no answer to the token request within the {left:?} left of the \
                             probe's {PROBE_TIMEOUT:?}"
                        );
                        return Err(self.no_answer(out_of_time(waited), true));
                    }
                }
            }
            None => sent.await,
        };
        sent.map_err(|error| {
            if let Some(error) = misconfigured(&error) {
                return error;
            }
            // Until IMDS has answered with JSON, a chain takes any failure to get an answer
            // (a connection closed, bytes that are not HTTP) as no IMDS, as azure-identity's
            // does; outside a chain only no connection or no answer in time does.
            let before_json = in_chain && !self.answered.load(Ordering::Acquire);
            if before_json || request::no_answer(&error) {
                return self.no_answer(error, probed.is_some());
            }
            error
        })
    }

    /// A quick request without `Metadata`: no HTTP answer within [`PROBE_TIMEOUT`] means no
    /// IMDS. Its answer when it is IMDS's, busy ([`is_busy`]): the token request's retry
    /// schedule starts from it, so that a wait it asks for is remembered and waited out rather
    /// than the token request sent into it at once.
    async fn probe(
        &self,
        http: &HttpClient,
        resource: &str,
    ) -> Result<Option<Answer>, CredentialError> {
        let request = self.request(resource, false)?;
        let sent = tokio::time::timeout(PROBE_TIMEOUT, request::send(http, SOURCE, request, &[]));
        match sent.await {
            Err(_elapsed) => Err(self.absent(
                out_of_time(format!("no answer within {PROBE_TIMEOUT:?}")),
                true,
            )),
            // Not only no connection: a dropped connection, bytes that are not HTTP or a page
            // larger than the probe reads are no IMDS either (azure-identity's probe: anything
            // but an HTTP response). A client that cannot send the request at all is a mistake
            // to report, not an absent IMDS.
            Ok(Err(error)) => Err(misconfigured(&error).unwrap_or_else(|| {
                let timeout = error.is_timeout();
                self.absent(error, timeout)
            })),
            Ok(Ok(answer)) => match docker_desktop(&answer) {
                Some(error) => Err(error),
                // Any other HTTP answer lets the token request go (as azure-identity's probe
                // does); only IMDS's own, JSON (its 400 for the missing header, as a rule),
                // shows that IMDS is there. A web page may be a captive portal's: the token
                // request then goes within the probe's budget and finds no JSON either, and
                // the chain moves on.
                None => {
                    if is_json(&answer.body) {
                        self.answered.store(true, Ordering::Release);
                    }
                    Ok(is_busy(&answer).then_some(answer))
                }
            },
        }
    }

    /// A token request that got no HTTP answer: *unavailable* if IMDS never answered this
    /// credential, else the transport's *authentication failed* (timeout or connection kept):
    /// an IMDS that answered before is there, and a chain must not move on to another identity
    /// because it is slow or down for a while. `probed`: sent on the chain's quick path after a
    /// probe, where only a timeout is transient (see [`absent`](Self::absent)); elsewhere
    /// (asked alone) the transport's own mark is kept: a refused connection is transient as
    /// for any credential, so that a bearer layer does not keep it (`refresh::kept_failure`).
    fn no_answer(&self, error: CredentialError, probed: bool) -> CredentialError {
        if self.answered.load(Ordering::Acquire) {
            return error.with_message_suffix(
                "; IMDS answered this credential before, so this host has it and this is a \
                 failure of IMDS, not a host without a managed identity",
            );
        }
        let transient = if probed {
            error.is_timeout()
        } else {
            error.is_transient()
        };
        self.absent(error, transient)
    }

    /// Nobody answered with HTTP: not an Azure host with a managed identity. `transient` as
    /// the caller decides: on the chain's probe path only a timeout (this host's IMDS may be
    /// slow for a moment, so `DefaultAzureCredential` chooses what answers after it only for
    /// a while), not a refused connection or something other than IMDS answering.
    fn absent(&self, error: CredentialError, transient: bool) -> CredentialError {
        let mut url = self.url.clone();
        url.set_query(None);
        let message = format!(
            "no managed identity endpoint answered at {url}; this is not an Azure host with a \
             managed identity ({})",
            error.message()
        );
        let unavailable = CredentialError::unavailable(NAME, message).with_cause(Cause {
            timeout: error.is_timeout(),
            connect: error.is_connect(),
            transient,
            throttled_until: None,
            unfinished: false,
        });
        unavailable.with_source(error)
    }

    /// What an IMDS 400 means: `None` for any other answer, a 400 that is not JSON (a captive
    /// portal's or proxy's page, not IMDS's: the token request's not-JSON handling decides it),
    /// or a 400 the generic error describes as well as anything.
    ///
    /// For the system-assigned identity every 400 is *unavailable* (a chain moves on), with
    /// advice for the ones IMDS is known to send: "Identity not found" or no error code (the
    /// host has no identity), "Multiple user assigned identities exist" (no system-assigned
    /// identity, several user-assigned ones: give one's client id). Only `invalid_resource`
    /// (AADSTS500011, a mistyped resource) is *authentication failed* for it. For a
    /// user-assigned identity, a 400 is about what was asked for (an id not assigned to this
    /// host, a mistyped resource) and is *authentication failed*, so that a chain reports the
    /// mistake instead of running on as another identity (a developer's Azure CLI sign-in).
    /// azidentity makes every system-assigned 400 *unavailable*, `invalid_resource` included,
    /// and no user-assigned one; azure-identity makes every IMDS 400 *unavailable*. A mistyped
    /// resource is this crate's deliberate exception: a chain should report it, not answer as
    /// another identity that would get the same refusal.
    ///
    /// Once IMDS has issued this credential a token, the host has (or had) the identity: a
    /// system-assigned 400 is then *authentication failed* too, as a failure of the identity
    /// (removed from the VM, or IMDS refusing it), so a chain does not switch identity.
    fn bad_request(&self, answer: &Answer, resource: &str) -> Option<CredentialError> {
        if answer.status != StatusCode::BAD_REQUEST || !is_json(&answer.body) {
            return None;
        }
        let issued = self.succeeded.load(Ordering::Acquire);
        let said = provider_text(&answer.body, &[]);
        let text = said.text.to_ascii_lowercase();
        let not_found = text.contains("identity not found");
        let several = text.contains("multiple user assigned identities");
        let error = failure(SOURCE, answer.status, &answer.body, &[]);
        match (&self.id, said.code.as_deref()) {
            (_, Some("invalid_resource")) => Some(error.with_message_suffix(&format!(
                "; Microsoft Entra ID knows no resource \"{resource}\": check the scope asked \
                 for (the resource is the scope without \"/.default\")"
            ))),
            (None, _) if issued => Some(error.with_message_suffix(
                "; IMDS issued this credential tokens before, so this host has had its \
                 system-assigned identity: this is a failure of that identity (disabled or \
                 removed since, or IMDS refusing it), not a host without one",
            )),
            (None, _) if several => Some(error.into_unavailable().with_message_suffix(
                "; this host has no system-assigned identity but several user-assigned ones, \
                 and IMDS does not choose among them: give the client id of one of them \
                 (client_id, or AZURE_CLIENT_ID for DefaultAzureCredential), or enable the \
                 system-assigned identity",
            )),
            (None, code) if not_found || code.is_none() => {
                Some(error.into_unavailable().with_message_suffix(
                    "; this host has no system-assigned identity: enable it on the VM or \
                     scale set, give a user-assigned id, or use another credential",
                ))
            }
            (None, _) => Some(error.into_unavailable().with_message_suffix(
                "; IMDS refused the system-assigned identity, so this host is taken as having \
                 none usable: enable it on the VM or scale set, give a user-assigned id, or \
                 use another credential",
            )),
            (Some(id), _) if not_found => Some(error.with_message_suffix(&format!(
                "; the user-assigned identity with {id} is not assigned to this host: assign \
                 it to the VM, scale set or node pool, or correct the id"
            ))),
            (Some(_), _) => None,
        }
    }
}

/// A client of `builder`'s, sending plain `http` and never proxied (see
/// `request::default_http`).
fn built(builder: crate::transport::HttpClientBuilder) -> Result<HttpClient, String> {
    builder
        .allow_http()
        .no_proxy()
        .build()
        .map_err(|e| format!("the HTTP client could not be built: {e}"))
}

/// No answer within the probe's budget; `message` says how long was waited.
fn out_of_time(message: String) -> CredentialError {
    CredentialError::authentication_failed(NAME, message).with_cause(Cause {
        timeout: true,
        transient: true,
        ..Cause::default()
    })
}

/// The error for a request the client cannot send as it is set up (a client that sends https
/// only, a proxy in the way), whatever the host: *invalid request*, saying what to do. `None`
/// for any other failure.
fn misconfigured(error: &CredentialError) -> Option<CredentialError> {
    let remedy = match error.transport_kind()? {
        TransportErrorKind::Scheme => {
            "; the http_client given cannot reach IMDS, which is plain http: leave out \
             http_client to use the built-in client, or give one that sends plain http"
        }
        TransportErrorKind::Proxy => {
            "; the http_client given goes through a proxy, and IMDS must be reached directly: \
             leave out http_client to use the built-in client, or give one built with \
             no_proxy()"
        }
        _ => return None,
    };
    Some(
        CredentialError::invalid_request(NAME, format!("{}{remedy}", error.message()))
            .with_source(error.clone()),
    )
}

/// Whether `body` is a JSON object, as IMDS's every answer is (a token or an error): `0`,
/// `"OK"` or `null` from something else at the address are not IMDS answering. The values are
/// not kept.
fn is_json(body: &[u8]) -> bool {
    serde_json::from_slice::<std::collections::HashMap<String, serde::de::IgnoredAny>>(body).is_ok()
}

/// IMDS's own answer (JSON) with a status its retry schedule retries: IMDS is there but busy
/// (a 410 while it is updated, a 429, a 5xx), and the request is to go on its retry schedule,
/// starting from this answer as from its first ([`Answered`]).
fn is_busy(answer: &Answer) -> bool {
    is_json(&answer.body) && is_imds_retryable_status(answer.status)
}

/// Docker Desktop answers 403 with "A socket operation was attempted to an unreachable
/// network/host": there is no IMDS behind it (azure-identity and azidentity treat it so).
fn docker_desktop(answer: &Answer) -> Option<CredentialError> {
    let unreachable = answer.status == StatusCode::FORBIDDEN
        && String::from_utf8_lossy(&answer.body).contains("unreachable");
    unreachable.then(|| {
        CredentialError::unavailable(
            NAME,
            format!(
                "the IMDS address is unreachable from here (HTTP 403: {}); a container \
                 (Docker Desktop) has no managed identity",
                provider_text(&answer.body, &[]).text
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status: StatusCode::from_u16(status).unwrap(),
            headers: http::HeaderMap::new(),
            body: Bytes::from(body.to_owned()),
            sent_at: tokio::time::Instant::now(),
            sent_at_unix: 0,
        }
    }

    #[tokio::test]
    async fn which_400s_mean_unavailable() {
        let imds = |id| Imds::new(default_url().unwrap(), id, None, None).unwrap();
        let system = || imds(None);
        let user = || imds(Some(UserAssignedId::ClientId("cid".into())));
        let not_found = r#"{"error":"invalid_request","error_description":"Identity not found"}"#;
        let invalid_resource = r#"{"error":"invalid_resource","error_description":"AADSTS500011: The resource principal named https://vault.azure.nte was not found in the tenant"}"#;
        let bad = |imds: Imds, body: &str| {
            imds.bad_request(&answer(400, body), "https://vault.azure.nte")
                .unwrap()
        };

        // The system-assigned identity is not there: the host has none.
        let err = bad(system(), not_found);
        assert!(err.is_unavailable(), "{err}");
        assert!(
            err.message().contains("no system-assigned identity"),
            "{err}"
        );
        assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST));
        assert_eq!(err.error_code(), Some("invalid_request"));
        assert!(bad(system(), "{}").is_unavailable());
        // A 400 that is not JSON is not IMDS's (a hotel portal's page): no advice about the
        // identity.
        for body in ["", "Bad Request", "<html>Sign in</html>"] {
            assert!(
                system().bad_request(&answer(400, body), "r").is_none(),
                "{body:?}"
            );
        }

        // A user-assigned id not assigned to this host: a mistake to report.
        let err = bad(user(), not_found);
        assert!(err.is_authentication_failed(), "{err}");
        assert!(
            err.message()
                .contains("user-assigned identity with client id cid is not assigned"),
            "{err}"
        );
        assert_eq!(err.error_code(), Some("invalid_request"));

        // A mistyped resource, for either identity.
        for imds in [system(), user()] {
            let err = bad(imds, invalid_resource);
            assert!(err.is_authentication_failed(), "{err}");
            assert!(!err.message().contains("enable it"), "{err}");
            assert!(
                err.message()
                    .contains("knows no resource \"https://vault.azure.nte\""),
                "{err}"
            );
            assert_eq!(err.error_code(), Some("invalid_resource"));
            assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST));
        }

        // No system-assigned identity but several user-assigned ones: which id to give.
        let several = r#"{"error":"invalid_request","error_description":"Multiple user assigned identities exist, please specify the clientId / resourceId of the identity in the token request"}"#;
        let err = bad(system(), several);
        assert!(err.is_unavailable(), "{err}");
        assert!(
            err.message().contains("give the client id of one of them"),
            "{err}"
        );
        assert_eq!(err.error_code(), Some("invalid_request"));

        // Any other system-assigned 400 is unavailable too, as in azidentity.
        let other = r#"{"error":"invalid_request","error_description":"Required metadata header not specified"}"#;
        let err = bad(system(), other);
        assert!(err.is_unavailable(), "{err}");
        assert!(
            err.message().contains("refused the system-assigned"),
            "{err}"
        );

        // Once IMDS has issued this credential a token, the host has had the identity: every
        // system-assigned 400 is a failure of it, not an absence (a chain must not switch).
        for body in [not_found, several, other, "{}"] {
            let issued = system();
            issued.succeeded.store(true, Ordering::Release);
            let err = bad(issued, body);
            assert!(err.is_authentication_failed(), "{body}: {err}");
            assert!(
                err.message()
                    .contains("issued this credential tokens before"),
                "{err}"
            );
            assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST));
        }

        // A user-assigned 400 of another kind: the generic failure.
        assert!(user().bad_request(&answer(400, "{}"), "r").is_none());
        assert!(user().bad_request(&answer(400, several), "r").is_none());
        assert!(user().bad_request(&answer(400, other), "r").is_none());
        for (status, body) in [(403, "forbidden"), (500, "oops"), (200, "{}"), (404, "")] {
            assert!(
                system().bad_request(&answer(status, body), "r").is_none(),
                "{status}"
            );
        }
    }

    #[test]
    fn only_a_json_object_is_imds_answering() {
        for body in [
            "{}",
            r#"{"error":"invalid_request"}"#,
            r#" {"a":[1,{"b":null}]} "#,
        ] {
            assert!(is_json(body.as_bytes()), "{body}");
        }
        for body in [
            "0",
            r#""OK""#,
            "null",
            "[]",
            "true",
            "",
            "<html></html>",
            "{",
        ] {
            assert!(!is_json(body.as_bytes()), "{body}");
        }
    }

    #[test]
    fn docker_desktop_is_unavailable() {
        let docker = "A socket operation was attempted to an unreachable network";
        let err = docker_desktop(&answer(403, docker)).unwrap();
        assert!(
            err.is_unavailable() && err.message().contains("Docker"),
            "{err}"
        );
        assert!(docker_desktop(&answer(403, "forbidden")).is_none());
    }

    #[test]
    fn urls_and_queries() {
        assert_eq!(
            default_url().unwrap().as_str(),
            "http://169.254.169.254/metadata/identity/oauth2/token"
        );
        let base = Url::parse("http://127.0.0.1:8080/").unwrap();
        assert_eq!(
            token_url(&base).unwrap().as_str(),
            "http://127.0.0.1:8080/metadata/identity/oauth2/token"
        );
        let imds = |id| Imds::new(default_url().unwrap(), id, None, None).unwrap();
        assert_eq!(
            imds(None).query_url("https://vault.azure.net").query(),
            Some("api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net")
        );
        for (id, want) in [
            (UserAssignedId::ClientId("c".into()), "client_id=c"),
            (UserAssignedId::ObjectId("o".into()), "object_id=o"),
            (
                UserAssignedId::ResourceId("/s/r".into()),
                "msi_res_id=%2Fs%2Fr",
            ),
        ] {
            let q = imds(Some(id)).query_url("r").query().unwrap().to_owned();
            assert_eq!(q, format!("api-version=2018-02-01&resource=r&{want}"));
        }
        let with = imds(None).request("r", true).unwrap();
        assert_eq!(with.headers()["metadata"], "true");
        assert_eq!(with.method(), Method::GET);
        let without = imds(None).request("r", false).unwrap();
        assert!(without.headers().get("metadata").is_none());
    }
}

//! AuthorizationCodeCredential against the real oidc-provider: a real code (obtained without
//! a person), its redemption, the cached token, a refresh for another resource, a reused
//! code's real error, a revoked refresh token's invalid_grant.

use std::time::Duration;

use tower_identity::transport::HttpRequest;
use tower_identity::{
    AuthorizationCodeCredential, CredentialExt, HttpClient, TokenCachePersistenceOptions,
    TokenRequest,
};

use crate::support::oidc::{CLIENT_ID, CLIENT_SECRET, Peer, REDIRECT_URI, jwt_claims, peer};

const SIGN_IN: &str = "openid profile offline_access https://resource.test/.default";
const RESOURCE: &str = "https://resource.test/.default";
const OTHER: &str = "https://other.test/.default";

/// A credential with a fresh code. Each test uses its own tenant, so that its requests can be
/// told apart in the peer's log while other tests run.
async fn credential_for(tenant: &str, user: &str) -> (AuthorizationCodeCredential, String) {
    let peer = peer();
    let code = peer
        .authorization_code(tenant, CLIENT_ID, SIGN_IN, user)
        .await;
    let credential =
        AuthorizationCodeCredential::builder(tenant, CLIENT_ID, code.clone(), REDIRECT_URI)
            .client_secret(CLIENT_SECRET)
            .authority_host(&peer.base)
            .http_client(peer.http())
            .build()
            .unwrap();
    (credential, code)
}

fn requests_for(log: &[serde_json::Value], field: &str, value: &str) -> Vec<serde_json::Value> {
    log.iter()
        .filter(|e| e["form"][field] == value)
        .cloned()
        .collect()
}

/// This tenant's token requests, oldest first.
async fn log_of(tenant: &str) -> Vec<serde_json::Value> {
    peer()
        .token_log()
        .await
        .into_iter()
        .filter(|e| e["tenant"] == tenant)
        .collect()
}

#[tokio::test]
async fn the_code_is_redeemed_once_then_tokens_are_cached_and_refreshed_for_any_resource() {
    let tenant = "authcode-redeem";
    let (credential, code) = credential_for(tenant, "ivan@contoso.com").await;

    let first = credential.get_token([RESOURCE]).await.unwrap();
    let claims = jwt_claims(first.secret().expose_secret());
    assert_eq!(claims["aud"], "https://resource.test");
    let log = log_of(tenant).await;
    let [redeemed] = requests_for(&log, "code", &code)
        .try_into()
        .expect("one redemption");
    let mut fields: Vec<_> = redeemed["form"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "client_id",
            "client_info",
            "client_secret",
            "code",
            "grant_type",
            "redirect_uri",
            "scope"
        ]
    );
    assert_eq!(redeemed["form"]["grant_type"], "authorization_code");
    assert_eq!(redeemed["form"]["client_info"], "1");
    assert_eq!(redeemed["form"]["redirect_uri"], REDIRECT_URI);

    // Cached: no request.
    let before = log_of(tenant).await.len();
    let again = credential.get_token([RESOURCE]).await.unwrap();
    assert_eq!(again.secret(), first.secret());
    assert_eq!(log_of(tenant).await.len(), before);

    // Another resource: the refresh token serves it (not bound to the first scopes).
    let other = credential.get_token([OTHER]).await.unwrap();
    assert_eq!(
        jwt_claims(other.secret().expose_secret())["aud"],
        "https://other.test"
    );
    let log = log_of(tenant).await;
    let refresh = log.last().unwrap();
    assert_eq!(refresh["grant_type"], "refresh_token");
    let mut fields: Vec<_> = refresh["form"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "client_id",
            "client_info",
            "client_secret",
            "grant_type",
            "refresh_token",
            "scope"
        ]
    );
    assert_eq!(refresh["form"]["scope"], OTHER);
    assert_eq!(
        requests_for(&log, "code", &code).len(),
        1,
        "the code was used once"
    );

    // A CAE request later finds the refresh token too.
    let cae = credential
        .get_token_with(TokenRequest::new([OTHER]).with_cae(true))
        .await
        .unwrap();
    assert_eq!(
        jwt_claims(cae.secret().expose_secret())["aud"],
        "https://other.test"
    );
}

#[tokio::test]
async fn concurrent_first_calls_share_the_one_redemption() {
    let (credential, code) = credential_for("authcode-concurrent", "judy@contoso.com").await;
    let (a, b, c) = tokio::join!(
        credential.get_token([RESOURCE]),
        credential.get_token([OTHER]),
        credential.get_token([RESOURCE, "openid"]),
    );
    for result in [a, b, c] {
        result.unwrap();
    }
    assert_eq!(
        requests_for(&log_of("authcode-concurrent").await, "code", &code).len(),
        1
    );
}

#[tokio::test]
async fn a_reused_code_gets_the_servers_real_error() {
    let peer = peer();
    let (credential, code) = credential_for("authcode-reuse", "ken@contoso.com").await;
    credential.get_token([RESOURCE]).await.unwrap();
    let second =
        AuthorizationCodeCredential::builder("authcode-reuse", CLIENT_ID, code, REDIRECT_URI)
            .client_secret(CLIENT_SECRET)
            .authority_host(&peer.base)
            .http_client(peer.http())
            .build()
            .unwrap();
    let err = second.get_token([RESOURCE]).await.unwrap_err();
    assert!(err.is_authentication_failed());
    assert_eq!(err.error_code(), Some("invalid_grant"));
    assert_eq!(err.error_codes(), [54005]);
    assert!(err.message().contains("AADSTS54005"), "{err}");
}

#[tokio::test]
async fn a_revoked_refresh_token_gets_invalid_grant_and_a_sign_in_again_error_after() {
    // With CAE too: the capability every CAE request announces is no claims challenge, so the
    // refusal is not taken for one that concerns this request only.
    for (tenant, cae) in [("authcode-revoked", false), ("authcode-revoked-cae", true)] {
        let peer = peer();
        let (credential, _) = credential_for(tenant, "leo@contoso.com").await;
        let request = |scope: &str| TokenRequest::new([scope]).with_cae(cae);
        credential.get_token_with(request(RESOURCE)).await.unwrap();
        // The refresh token is in the credential's memory: learn it from the server's log of
        // one refresh, then revoke it.
        credential.get_token_with(request(OTHER)).await.unwrap();
        let used = log_of(tenant).await.last().unwrap()["form"]["refresh_token"]
            .as_str()
            .unwrap()
            .to_owned();
        peer.revoke_refresh_token(&used).await;
        let err = credential
            .get_token_with(request("https://third.test/.default"))
            .await
            .unwrap_err();
        assert!(err.is_authentication_failed(), "{err}");
        assert_eq!(err.error_code(), Some("invalid_grant"));
        assert_eq!(err.error_codes(), [50173]);
        // The rejected refresh token was dropped: next time there is nothing left to try.
        let before = log_of(tenant).await.len();
        let err = credential
            .get_token_with(request("https://fourth.test/.default"))
            .await
            .unwrap_err();
        assert!(err.message().contains("Sign the user in again"), "{err}");
        assert_eq!(
            log_of(tenant).await.len(),
            before,
            "nothing sent (cae: {cae})"
        );
    }
}

/// A credential with a fresh code for `user`, keeping its tokens in the cache file named
/// `name` in `dir`, over `http`.
async fn persisting(
    peer: &Peer,
    tenant: &str,
    user: &str,
    (dir, name): (&std::path::Path, &str),
    http: HttpClient,
) -> AuthorizationCodeCredential {
    let code = peer
        .authorization_code(tenant, CLIENT_ID, SIGN_IN, user)
        .await;
    AuthorizationCodeCredential::builder(tenant, CLIENT_ID, code, REDIRECT_URI)
        .client_secret(CLIENT_SECRET)
        .authority_host(&peer.base)
        .http_client(http)
        .cache_options(
            TokenCachePersistenceOptions::new()
                .name(name)
                .directory(dir)
                .allow_unencrypted_storage(true),
        )
        .build()
        .unwrap()
}

#[tokio::test]
async fn with_a_cache_file_a_rejected_refresh_token_stays_in_the_file() {
    let peer = peer();
    let tenant = "authcode-revoked-file";
    let dir = tempfile::tempdir().unwrap();
    let credential = persisting(
        peer,
        tenant,
        "nina@contoso.com",
        (dir.path(), "authcode-revoked"),
        peer.http(),
    )
    .await;
    credential.get_token([RESOURCE]).await.unwrap();
    let file = dir.path().join("authcode-revoked.nocae");
    let refresh_tokens = || {
        let doc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        doc["RefreshToken"]
            .as_object()
            .unwrap()
            .values()
            .map(|rt| rt["secret"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let [refresh_token] = refresh_tokens().try_into().expect("one refresh token");
    peer.revoke_refresh_token(&refresh_token).await;

    let err = credential.get_token([OTHER]).await.unwrap_err();
    // The file may be shared with other applications: the token stays, and is tried again.
    assert_eq!(refresh_tokens(), std::slice::from_ref(&refresh_token));
    assert!(err.is_authentication_failed(), "{err}");
    assert_eq!(err.error_code(), Some("invalid_grant"));
    assert_eq!(err.error_codes(), [50173]);
    assert!(
        err.message()
            .contains("To fix, sign the user in again to get a new authorization code"),
        "{err}"
    );
    assert!(!err.to_string().contains(&refresh_token));
    let before = log_of(tenant).await.len();
    let again = credential
        .get_token(["https://third.test/.default"])
        .await
        .unwrap_err();
    assert_eq!(again.error_code(), Some("invalid_grant"), "{again}");
    let log = log_of(tenant).await;
    assert_eq!(log.len(), before + 1);
    assert_eq!(
        log.last().unwrap()["form"]["refresh_token"],
        refresh_token.as_str()
    );
}

#[tokio::test]
async fn when_the_cache_file_cannot_be_written_the_refresh_token_still_serves_other_resources() {
    let peer = peer();
    let tenant = "authcode-unwritable";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("authcode-unwritable.nocae");
    // Not a token cache: every write fails.
    std::fs::write(&file, br#"{"AccessToken": []}"#).unwrap();
    let credential = persisting(
        peer,
        tenant,
        "omar@contoso.com",
        (dir.path(), "authcode-unwritable"),
        peer.http(),
    )
    .await;
    credential.get_token([RESOURCE]).await.unwrap();
    assert_eq!(std::fs::read(&file).unwrap(), br#"{"AccessToken": []}"#);

    // The file still cannot be read: the refresh token kept in memory serves all the same.
    let other = credential.get_token([OTHER]).await.unwrap();
    assert_eq!(
        jwt_claims(other.secret().expose_secret())["aud"],
        "https://other.test"
    );
    assert_eq!(std::fs::read(&file).unwrap(), br#"{"AccessToken": []}"#);

    std::fs::write(&file, b"{}").unwrap();
    let other = credential
        .get_token_with(TokenRequest::new([OTHER]).with_claims(r#"{"access_token":{}}"#))
        .await
        .unwrap();
    assert_eq!(
        jwt_claims(other.secret().expose_secret())["aud"],
        "https://other.test"
    );
    let log = log_of(tenant).await;
    assert_eq!(log.last().unwrap()["grant_type"], "refresh_token");
    // Written now, the refresh token is the file's.
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(
        doc["RefreshToken"].as_object().map(|s| s.len()),
        Some(1),
        "{doc:#}"
    );
}

/// Entra refusing the refresh token for one request only (here multi-factor authentication for
/// one resource, AADSTS50076) leaves the token kept in memory, the only copy when the cache
/// cannot be written, to serve the others.
#[tokio::test]
async fn a_refusal_for_one_request_only_keeps_the_refresh_token_kept_in_memory() {
    use http_body_util::BodyExt;
    let peer = peer();
    let tenant = "authcode-mfa-one";
    let dir = tempfile::tempdir().unwrap();
    // Not a token cache: every read and write fails.
    std::fs::write(
        dir.path().join("authcode-mfa.nocae"),
        br#"{"AccessToken": []}"#,
    )
    .unwrap();
    let inner = peer.http();
    let http = HttpClient::from_service(tower::service_fn(move |request: HttpRequest| {
        let inner = inner.clone();
        async move {
            let (parts, body) = request.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            if String::from_utf8_lossy(&body).contains("mfa.test") {
                let answer = serde_json::json!({
                    "error": "invalid_grant",
                    "error_description": "AADSTS50076: you must use multi-factor authentication",
                    "error_codes": [50076],
                });
                return Ok(http::Response::builder()
                    .status(400)
                    .header("content-type", "application/json")
                    .body(bytes::Bytes::from(answer.to_string()))
                    .unwrap());
            }
            let request = http::Request::from_parts(parts, http_body_util::Full::new(body));
            tower::ServiceExt::oneshot(inner, request).await
        }
    }));
    let credential = persisting(
        peer,
        tenant,
        "ines@contoso.com",
        (dir.path(), "authcode-mfa"),
        http,
    )
    .await;
    credential.get_token([RESOURCE]).await.unwrap();
    let err = credential
        .get_token(["https://mfa.test/.default"])
        .await
        .unwrap_err();
    assert_eq!(err.error_codes(), [50076], "{err}");
    let other = credential.get_token([OTHER]).await.unwrap();
    assert_eq!(
        jwt_claims(other.secret().expose_secret())["aud"],
        "https://other.test"
    );
}

#[tokio::test]
async fn with_cache_options_the_tokens_go_to_the_cache_file() {
    let peer = peer();
    let dir = tempfile::tempdir().unwrap();
    let credential = persisting(
        peer,
        "contoso",
        "mia@contoso.com",
        (dir.path(), "authcode-test"),
        peer.http(),
    )
    .await;
    credential.get_token([RESOURCE]).await.unwrap();
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("authcode-test.nocae")).unwrap())
            .unwrap();
    for section in [
        "AccessToken",
        "RefreshToken",
        "IdToken",
        "Account",
        "AppMetadata",
    ] {
        assert_eq!(
            doc[section].as_object().map(|s| s.len()),
            Some(1),
            "{section}: {doc:#}"
        );
    }
    let account = doc["Account"].as_object().unwrap().values().next().unwrap();
    assert_eq!(account["username"], "mia@contoso.com");
}

/// Builds without encrypted storage refuse plaintext that was not allowed, at once.
#[cfg(not(all(feature = "keyring", target_os = "linux")))]
#[test]
fn without_allowing_plaintext_the_cache_options_are_refused_clearly() {
    let err = AuthorizationCodeCredential::builder("contoso", CLIENT_ID, "code", REDIRECT_URI)
        .cache_options(TokenCachePersistenceOptions::new())
        .build()
        .unwrap_err();
    let message = err.message();
    assert!(
        message.contains("persistent token caching needs encrypted storage")
            && message.contains("allow_unencrypted_storage(true)"),
        "{err}"
    );
}

/// With the Secret Service built in, the same options choose it; whether it can be reached is
/// found at first use (`keyring::` tests the errors when it cannot).
#[cfg(all(feature = "keyring", target_os = "linux"))]
#[test]
fn without_allowing_plaintext_the_cache_options_choose_the_secret_service() {
    let credential =
        AuthorizationCodeCredential::builder("contoso", CLIENT_ID, "code", REDIRECT_URI)
            .cache_options(TokenCachePersistenceOptions::new())
            .build()
            .unwrap();
    let shown = format!("{credential:?}");
    assert!(shown.contains("TokenStore::Keyring"), "{shown}");
}

/// An authorization code is consumed by use: after an attempt that timed out (Entra may have
/// redeemed the code) it is not sent again, so the error is the timeout rather than the
/// retry's "code already redeemed".
#[tokio::test(start_paused = true)]
async fn a_code_whose_attempt_timed_out_is_not_sent_again() {
    use crate::support::authority::{Authority, Fault, error_body};
    use crate::support::creds::{http_builder, secs};

    let authority = Authority::start().await;
    authority.push_fault(Fault::Hang);
    authority.push_fault(Fault::Respond {
        status: 400,
        body: error_body(
            "invalid_grant",
            54005,
            "OAuth2 Authorization code was already redeemed.",
        ),
        headers: Vec::new(),
    });
    let http = http_builder(&authority)
        .timeout(Some(secs(2)))
        .build()
        .unwrap();
    let credential = AuthorizationCodeCredential::builder(
        "contoso",
        "client-id",
        "single-use-code",
        "http://localhost/redirect",
    )
    .authority_host(authority.url())
    .http_client(http)
    .build()
    .unwrap();
    let err = credential.get_token([RESOURCE]).await.unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(!err.message().contains("54005"), "{err}");
    assert_eq!(authority.token_posts(), 1);
}

/// Answers of the loopback authority for a user: `client_info` naming `uid.utid`, a refresh
/// token, and an access token living an hour whose refresh time is the moment it is issued
/// (`refresh_in: 0`, so no test waits for the wall clock).
mod loopback {
    use base64::Engine;

    use crate::support::authority::{Authority, Fault};
    use crate::support::creds;

    pub const CODE: &str = "loopback-code";
    pub const A: &str = "https://resource.test/a";
    pub const B: &str = "https://resource.test/b";

    pub fn client_info(uid: &str, utid: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(format!(r#"{{"uid":"{uid}","utid":"{utid}"}}"#))
    }

    /// A token answer: `access_token`, `refresh_token`, alice's `client_info`, an hour's
    /// lifetime due for renewal at once.
    pub fn answer(access_token: &str, refresh_token: &str) -> Fault {
        Fault::Body(
            serde_json::json!({
                "token_type": "Bearer",
                "expires_in": 3600,
                "refresh_in": 0,
                "access_token": access_token,
                "refresh_token": refresh_token,
                "client_info": client_info("alice", "contoso"),
            })
            .to_string(),
        )
    }

    /// A credential redeeming [`CODE`] at `authority`, keeping its tokens in memory.
    pub fn credential(authority: &Authority) -> tower_identity::AuthorizationCodeCredential {
        builder(authority, CODE)
            .http_client(creds::http(authority))
            .build()
            .unwrap()
    }

    /// A builder redeeming `code` at `authority`.
    pub fn builder(
        authority: &Authority,
        code: &str,
    ) -> tower_identity::credential::AuthorizationCodeCredentialBuilder {
        tower_identity::AuthorizationCodeCredential::builder(
            creds::TENANT,
            creds::CLIENT_ID,
            code,
            "http://localhost/callback",
        )
        .authority_host(authority.url())
    }

    /// `inner`, except that a token request redeeming `refused` is answered `invalid_grant`
    /// (AADSTS70008: expired), as Entra answers a dead refresh token.
    pub fn refusing(
        inner: tower_identity::HttpClient,
        refused: &'static str,
    ) -> tower_identity::HttpClient {
        use http_body_util::BodyExt;
        tower_identity::HttpClient::from_service(tower::service_fn(
            move |request: tower_identity::transport::HttpRequest| {
                let inner = inner.clone();
                async move {
                    let (parts, body) = request.into_parts();
                    let body = body.collect().await.unwrap().to_bytes();
                    let form: Vec<(String, String)> =
                        url::form_urlencoded::parse(&body).into_owned().collect();
                    if form
                        .iter()
                        .any(|(k, v)| k == "refresh_token" && v == refused)
                    {
                        let answer = crate::support::authority::error_body(
                            "invalid_grant",
                            70008,
                            "The refresh token has expired due to inactivity.",
                        );
                        return Ok(http::Response::builder()
                            .status(400)
                            .header("content-type", "application/json")
                            .body(bytes::Bytes::from(answer))
                            .unwrap());
                    }
                    let request = http::Request::from_parts(parts, http_body_util::Full::new(body));
                    tower::ServiceExt::oneshot(inner, request).await
                }
            },
        ))
    }

    /// `inner`, except that every token request to `tenant`'s endpoint (any grant) is answered
    /// 400 with `answer`, as Entra refuses an app that is not in that directory.
    pub fn refusing_tenant(
        inner: tower_identity::HttpClient,
        tenant: &'static str,
        answer: String,
    ) -> tower_identity::HttpClient {
        tower_identity::HttpClient::from_service(tower::service_fn(
            move |request: tower_identity::transport::HttpRequest| {
                let (inner, answer) = (inner.clone(), answer.clone());
                async move {
                    if request.uri().path().split('/').nth(1) == Some(tenant) {
                        return Ok(http::Response::builder()
                            .status(400)
                            .header("content-type", "application/json")
                            .body(bytes::Bytes::from(answer))
                            .unwrap());
                    }
                    tower::ServiceExt::oneshot(inner, request).await
                }
            },
        ))
    }

    /// `inner`, except that a token request whose `scope` names one of `refusals`' resources
    /// (any grant: Entra refuses that resource's refresh tokens alike) is answered 400 with
    /// its body. Every token request's `(grant_type, scope)` goes to `log`, in order.
    pub fn refusing_scopes(
        inner: tower_identity::HttpClient,
        refusals: Vec<(&'static str, String)>,
        log: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
    ) -> tower_identity::HttpClient {
        use http_body_util::BodyExt;
        let refusals = std::sync::Arc::new(refusals);
        tower_identity::HttpClient::from_service(tower::service_fn(
            move |request: tower_identity::transport::HttpRequest| {
                let (inner, refusals, log) = (inner.clone(), refusals.clone(), log.clone());
                async move {
                    let (parts, body) = request.into_parts();
                    let body = body.collect().await.unwrap().to_bytes();
                    let form: Vec<(String, String)> =
                        url::form_urlencoded::parse(&body).into_owned().collect();
                    let field = |name: &str| {
                        form.iter()
                            .find(|(k, _)| k == name)
                            .map(|(_, v)| v.clone())
                            .unwrap_or_default()
                    };
                    let scope = field("scope");
                    log.lock()
                        .unwrap()
                        .push((field("grant_type"), scope.clone()));
                    let refused = scope.split(' ').find_map(|s| {
                        refusals
                            .iter()
                            .find(|(resource, _)| s.starts_with(resource))
                            .map(|(_, answer)| answer.clone())
                    });
                    if let Some(answer) = refused {
                        return Ok(http::Response::builder()
                            .status(400)
                            .header("content-type", "application/json")
                            .body(bytes::Bytes::from(answer))
                            .unwrap());
                    }
                    let request = http::Request::from_parts(parts, http_body_util::Full::new(body));
                    tower::ServiceExt::oneshot(inner, request).await
                }
            },
        ))
    }
}

/// msal's "aging" token: past its refresh time (`refresh_in`) the refresh token is redeemed,
/// and when that fails the cached token, still valid, is returned. Before, a token read back
/// from the cache past its refresh time lost it: the slot's renewal took the same token as an
/// answer not due yet, and the refresh token was never redeemed until the last 300 s.
#[tokio::test(start_paused = true)]
async fn past_its_refresh_time_a_token_is_renewed_with_the_refresh_token_or_kept_when_that_fails() {
    use crate::support::authority::{Authority, Fault, error_body};
    use crate::support::clock::settle;
    use loopback::{A, B, answer};

    let authority = Authority::start().await;
    let credential = loopback::credential(&authority);
    authority.push_fault(answer("at-code", "rt-1"));
    let first = credential.get_token([A, B]).await.unwrap();
    assert_eq!(first.secret().expose_secret(), "at-code");

    // Due: the next call starts the renewal and is handed the current token meanwhile.
    authority.push_fault(answer("at-renewed", "rt-2"));
    let during = credential.get_token([A, B]).await.unwrap();
    assert_eq!(during.secret().expose_secret(), "at-code");
    settle().await;
    let renewed = credential.get_token([A, B]).await.unwrap();
    assert_eq!(renewed.secret().expose_secret(), "at-renewed");
    let requests = authority.requests();
    let [code, refresh] = requests.as_slice() else {
        panic!("{requests:#?}");
    };
    assert_eq!(code.field("grant_type"), Some("authorization_code"));
    assert_eq!(refresh.field("grant_type"), Some("refresh_token"));
    assert_eq!(refresh.field("refresh_token"), Some("rt-1"));

    // Another key the cached token covers, past its refresh time too: the refresh token is
    // tried first; refused, the cached token is returned.
    authority.push_fault(Fault::Respond {
        status: 400,
        body: error_body("invalid_scope", 70011, "The scope is not valid."),
        headers: vec![],
    });
    let fallback = credential.get_token([A]).await.unwrap();
    assert_eq!(fallback.secret().expose_secret(), "at-renewed");
    let requests = authority.requests();
    assert_eq!(requests.len(), 3, "{requests:#?}");
    assert_eq!(requests[2].field("refresh_token"), Some("rt-2"));
    assert_eq!(requests[2].field("scope"), Some(A));
}

/// Refresh tokens are not CAE-specific: a dead one in the CAE document (an earlier sign-in,
/// since revoked) no longer hides the fresh one in the ordinary document (the user signed in
/// again, for an ordinary request). Before, the other document was read only when this
/// request's had no refresh token, and the CAE request failed saying to sign in again.
#[tokio::test(start_paused = true)]
async fn a_dead_refresh_token_in_one_document_does_not_hide_a_fresh_one_in_the_other() {
    use crate::support::authority::Authority;
    use loopback::{A, B, answer};

    let authority = Authority::start().await;
    let dir = tempfile::tempdir().unwrap();
    let http = loopback::refusing(crate::support::creds::http(&authority), "rt-old");
    let process = |code: &str| {
        loopback::builder(&authority, code)
            .http_client(http.clone())
            .cache_options(
                TokenCachePersistenceOptions::new()
                    .directory(dir.path())
                    .allow_unencrypted_storage(true),
            )
            .build()
            .unwrap()
    };
    authority.push_fault(answer("at-1", "rt-old"));
    process("code-1")
        .get_token_with(TokenRequest::new([A]).with_cae(true))
        .await
        .unwrap();
    let again = process("code-2");
    authority.push_fault(answer("at-2", "rt-new"));
    again.get_token([A]).await.unwrap();

    authority.push_fault(answer("at-3", "rt-newer"));
    let cae = again
        .get_token_with(TokenRequest::new([B]).with_cae(true))
        .await
        .unwrap();
    assert_eq!(cae.secret().expose_secret(), "at-3");
    let requests = authority.requests();
    assert_eq!(
        requests.last().unwrap().field("refresh_token"),
        Some("rt-new"),
        "{requests:#?}"
    );
}

/// Entra refusing the code, or later the refresh token (`invalid_grant`): one thing to do,
/// this credential's. Before, a generic hint came before the credential's own advice.
#[tokio::test(start_paused = true)]
async fn an_invalid_grant_says_one_thing_to_do() {
    use crate::support::authority::{Authority, Fault, error_body};
    use loopback::{A, B, answer};

    let refused = |code: u32| Fault::Respond {
        status: 400,
        body: error_body("invalid_grant", code, "The grant is invalid."),
        headers: vec![],
    };
    let authority = Authority::start().await;
    let advice = "To fix, sign the user in again to get a new authorization code";
    authority.push_fault(refused(70008));
    let credential = loopback::credential(&authority);
    let err = credential.get_token([A]).await.unwrap_err();
    assert_eq!(
        err.message().to_lowercase().matches("again").count(),
        1,
        "{err}"
    );
    assert!(err.message().contains(advice), "{err}");

    let credential = loopback::credential(&authority);
    authority.push_fault(answer("at-1", "rt-1"));
    credential.get_token([A]).await.unwrap();
    authority.push_fault(refused(70043));
    let err = credential.get_token([B]).await.unwrap_err();
    assert_eq!(err.error_codes(), [70043]);
    assert_eq!(
        err.message().to_lowercase().matches("again").count(),
        1,
        "{err}"
    );
    assert!(err.message().contains(advice), "{err}");
}

/// A code Entra refused for good (already redeemed: AADSTS54005; expired: 70008; the PKCE
/// verifier does not match: 50148, 501481; malformed: 9002313; another redirect URI: 50011,
/// 500112) can never be redeemed: it is
/// forgotten, and later calls get the refusal, saying to sign in again for a new code,
/// without sending it. A code refused otherwise (a Conditional Access policy of its resource,
/// 53003; a scope not authorized, 70000; MFA enrollment, 50072; a code not known here) is sent
/// again by another request's call, and by the same request's after 30 s (at once, it gets
/// the same refusal without a request: a retry loop would send the code each time). Before,
/// every call sent a refused code again; then any refusal but thirteen per-request codes
/// forgot it (70000 for one scope lost the sign-in).
#[tokio::test(start_paused = true)]
async fn a_refused_code_is_not_sent_again() {
    use crate::support::authority::{Authority, Fault, error_body};
    use loopback::{A, B, answer};

    let refused = |code: u32| Fault::Respond {
        status: 400,
        body: error_body("invalid_grant", code, "The grant is invalid."),
        headers: vec![],
    };
    for code in [54005, 70008, 50148, 501481, 9002313, 50011, 500112] {
        let authority = Authority::start().await;
        let credential = loopback::credential(&authority);
        authority.push_fault(refused(code));
        let first = credential.get_token([A]).await.unwrap_err();
        assert_eq!(first.error_codes(), [code], "{first}");
        authority.push_fault(answer("at-1", "rt-1"));
        let later = credential.get_token([B]).await.unwrap_err();
        assert_eq!(later.error_codes(), [code], "{later}");
        assert!(
            later.message().contains("to get a new authorization code"),
            "{later}"
        );
        assert_eq!(authority.token_posts(), 1, "AADSTS{code}: sent again");
        let shown = format!("{credential:?}");
        assert!(shown.contains("code_refused: true"), "{shown}");
    }

    for code in [53003, 70000, 50072, 9_999_999] {
        let authority = Authority::start().await;
        let credential = loopback::credential(&authority);
        authority.push_fault(refused(code));
        credential.get_token([A]).await.unwrap_err();
        // The same request again at once: the same refusal, without sending the code.
        let again = credential.get_token([A]).await.unwrap_err();
        assert_eq!(again.error_codes(), [code], "{again}");
        assert_eq!(
            authority.token_posts(),
            1,
            "AADSTS{code}: sent again at once"
        );
        authority.push_fault(answer("at-1", "rt-1"));
        let token = credential
            .get_token([B])
            .await
            .unwrap_or_else(|e| panic!("AADSTS{code}: {e}"));
        assert_eq!(token.secret().expose_secret(), "at-1");
        let requests = authority.requests();
        assert_eq!(requests.len(), 2, "{requests:#?}");
        assert_eq!(requests[1].field("code"), Some(loopback::CODE));
    }

    // After 30 s the same request sends the code again.
    let authority = Authority::start().await;
    let credential = loopback::credential(&authority);
    authority.push_fault(refused(53003));
    credential.get_token([A]).await.unwrap_err();
    tokio::time::advance(std::time::Duration::from_secs(30)).await;
    authority.push_fault(answer("at-1", "rt-1"));
    let token = credential.get_token([A]).await.unwrap();
    assert_eq!(token.secret().expose_secret(), "at-1");
    assert_eq!(authority.token_posts(), 2);
}

/// A call that waited for another request's redemption of the code, refused for that request
/// only (AADSTS65001: no consent for its scope), sends the code for its own request and gets
/// its token; a refusal that spends the code is the waiting call's answer too, the code not
/// sent again. Before, the waiting call got the other request's refusal, telling it to sign
/// the user in again though the code was still good.
#[tokio::test(start_paused = true)]
async fn a_call_waiting_for_a_redemption_refused_for_another_request_redeems_the_code_itself() {
    use crate::support::authority::{Authority, Fault, error_body};
    use loopback::{A, B, answer};

    let refused = |code: u32| Fault::Respond {
        status: 400,
        body: error_body("invalid_grant", code, "The grant is invalid."),
        headers: vec![],
    };
    let authority = Authority::start().await;
    let credential = loopback::credential(&authority);
    authority.push_fault(refused(65001));
    authority.push_fault(answer("at-b", "rt-1"));
    let (a, b) = tokio::join!(credential.get_token([A]), credential.get_token([B]));
    let a = a.unwrap_err();
    assert_eq!(a.error_codes(), [65001], "{a}");
    let b = b.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(b.secret().expose_secret(), "at-b");
    let requests = authority.requests();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    for (request, scope) in requests.iter().zip([A, B]) {
        assert_eq!(request.field("code"), Some(loopback::CODE));
        assert!(
            request.field("scope").is_some_and(|s| s.contains(scope)),
            "{request:?}"
        );
    }

    let authority = Authority::start().await;
    let credential = loopback::credential(&authority);
    authority.push_fault(refused(54005));
    authority.push_fault(answer("at-b", "rt-1"));
    let (a, b) = tokio::join!(credential.get_token([A]), credential.get_token([B]));
    for error in [a.unwrap_err(), b.unwrap_err()] {
        assert_eq!(error.error_codes(), [54005], "{error}");
    }
    assert_eq!(authority.token_posts(), 1, "a spent code sent again");
}

/// Three concurrent first calls for different resources, two of which Entra refuses while
/// keeping the code (AADSTS65001, 50076: consent, MFA for that resource): each refused call
/// gets its own refusal, the third its token, whichever call redeems first; the code is sent
/// at most once per request. Before, a call that went on past one refusal it had waited for
/// and waited for another request's redemption got that request's refusal as its answer,
/// its own request never sent.
#[tokio::test(start_paused = true)]
async fn concurrent_calls_each_get_the_answer_for_their_own_request() {
    use crate::support::authority::{Authority, error_body};
    use loopback::{A, B, answer};
    const C: &str = "https://resource.test/c";

    for accepted in [A, B, C] {
        let refused: Vec<(&str, u32)> = [(A, 65001), (B, 50076), (C, 50079)]
            .into_iter()
            .filter(|(resource, _)| *resource != accepted)
            .collect();
        let authority = Authority::start().await;
        let log = std::sync::Arc::default();
        let http = loopback::refusing_scopes(
            crate::support::creds::http(&authority),
            refused
                .iter()
                .map(|(resource, code)| {
                    let body = error_body("invalid_grant", *code, "The grant is invalid.");
                    (*resource, body)
                })
                .collect(),
            std::sync::Arc::clone(&log),
        );
        let credential = loopback::builder(&authority, loopback::CODE)
            .http_client(http)
            .build()
            .unwrap();
        authority.push_fault(answer("at-accepted", "rt-1"));
        let (a, b, c) = tokio::join!(
            credential.get_token([A]),
            credential.get_token([B]),
            credential.get_token([C]),
        );
        for (resource, result) in [(A, a), (B, b), (C, c)] {
            match refused.iter().find(|(r, _)| *r == resource) {
                Some((_, code)) => {
                    let error = result.unwrap_err();
                    assert_eq!(
                        error.error_codes(),
                        [*code],
                        "{resource} (accepted: {accepted}): {error}"
                    );
                }
                None => {
                    let token = result.unwrap_or_else(|e| panic!("{resource}: {e}"));
                    assert_eq!(token.secret().expose_secret(), "at-accepted");
                }
            }
        }
        let log = log.lock().unwrap().clone();
        for resource in [A, B, C] {
            let sent = log
                .iter()
                .filter(|(grant, scope)| {
                    grant == "authorization_code" && scope.split(' ').any(|s| s == resource)
                })
                .count();
            assert!(
                sent <= 1,
                "the code sent {sent} times for {resource}: {log:#?}"
            );
        }
        assert_eq!(authority.token_posts(), 1, "{log:#?}");
    }
}

/// `invalid_scope` and `invalid_resource` refuse a scope or a resource of one request, not
/// the code: it is kept for another request, the same request gets the refusal again without
/// sending it, and a call for another resource that waited for that redemption sends it for
/// its own. An `invalid_client` is neither kept nor a waiting call's answer for another
/// request (see `a_call_waiting_for_another_tenants_refused_redemption_…`). Before, an
/// `invalid_scope` refusal was every waiting call's answer, and the same request sent the
/// code again at once.
#[tokio::test(start_paused = true)]
async fn a_scope_or_resource_refusal_keeps_the_code_for_another_request() {
    use crate::support::authority::{Authority, Fault, error_body};
    use loopback::{A, B, answer};

    for (error, code) in [("invalid_scope", 70011), ("invalid_resource", 500011)] {
        let refusal = || Fault::Respond {
            status: 400,
            body: error_body(error, code, "The scope or resource is not valid."),
            headers: vec![],
        };
        // One after the other.
        let authority = Authority::start().await;
        let credential = loopback::credential(&authority);
        authority.push_fault(refusal());
        let first = credential.get_token([A]).await.unwrap_err();
        assert_eq!(first.error_code(), Some(error), "{first}");
        let again = credential.get_token([A]).await.unwrap_err();
        assert_eq!(again.error_codes(), [code], "{again}");
        assert_eq!(authority.token_posts(), 1, "{error}: sent again at once");
        authority.push_fault(answer("at-b", "rt-1"));
        let token = credential
            .get_token([B])
            .await
            .unwrap_or_else(|e| panic!("{error}: {e}"));
        assert_eq!(token.secret().expose_secret(), "at-b");
        let requests = authority.requests();
        assert_eq!(requests.len(), 2, "{requests:#?}");
        assert_eq!(requests[1].field("code"), Some(loopback::CODE));

        // Concurrently: the waiting call for B sends the code for B.
        let authority = Authority::start().await;
        let credential = loopback::credential(&authority);
        authority.push_fault(refusal());
        authority.push_fault(answer("at-b", "rt-1"));
        let (a, b) = tokio::join!(credential.get_token([A]), credential.get_token([B]));
        let a = a.unwrap_err();
        assert_eq!(a.error_codes(), [code], "{a}");
        let b = b.unwrap_or_else(|e| panic!("{error}: {e}"));
        assert_eq!(b.secret().expose_secret(), "at-b");
        assert_eq!(authority.token_posts(), 2);
    }

    // A refusal of the app is not kept as an answer: the same request sends the code again.
    // A waiting call for another request sends it for its own (the app may be refused in one
    // tenant only, or refused again: that is then this call's own answer).
    let authority = Authority::start().await;
    let credential = loopback::credential(&authority);
    let refusal = || Fault::Respond {
        status: 401,
        body: error_body("invalid_client", 7000215, "Invalid client secret provided."),
        headers: vec![],
    };
    authority.push_fault(refusal());
    authority.push_fault(refusal());
    let (a, b) = tokio::join!(credential.get_token([A]), credential.get_token([B]));
    for error in [a.unwrap_err(), b.unwrap_err()] {
        assert_eq!(error.error_code(), Some("invalid_client"), "{error}");
    }
    authority.push_fault(answer("at-a", "rt-1"));
    let a = credential
        .get_token([A])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(a.secret().expose_secret(), "at-a");
    let scopes: Vec<String> = authority
        .requests()
        .iter()
        .map(|r| r.field("scope").unwrap_or_default().to_owned())
        .collect();
    assert_eq!(scopes.len(), 3, "{scopes:#?}");
    for (scope, resource) in scopes.iter().zip([A, B, A]) {
        assert!(scope.split(' ').any(|s| s == resource), "{scopes:#?}");
    }
}

/// A credential allowed two tenants, the app unknown in one (AADSTS700016: not found in the
/// directory 'fabrikam'): concurrent first calls for each get their own answer, whichever
/// redeems first. The call for contoso that waited for fabrikam's redemption sends the code
/// for its own request, to contoso, and gets its token. Before, it got fabrikam's refusal,
/// its own request never sent.
#[tokio::test(start_paused = true)]
async fn a_call_waiting_for_another_tenants_refused_redemption_redeems_the_code_itself() {
    use crate::support::authority::{Authority, error_body};
    use loopback::{A, answer};
    const FABRIKAM: &str = "fabrikam";

    for fabrikam_first in [true, false] {
        let authority = Authority::start().await;
        let http = loopback::refusing_tenant(
            crate::support::creds::http(&authority),
            FABRIKAM,
            error_body(
                "unauthorized_client",
                700016,
                "Application with identifier '11111111-2222-3333-4444-555555555555' was not \
                 found in the directory 'fabrikam'.",
            ),
        );
        let credential = loopback::builder(&authority, loopback::CODE)
            .additionally_allowed_tenants([FABRIKAM])
            .http_client(http)
            .build()
            .unwrap();
        authority.push_fault(answer("at-contoso", "rt-1"));
        let for_fabrikam =
            || credential.get_token_with(TokenRequest::new([A]).with_tenant_id(FABRIKAM));
        let (fabrikam, contoso) = if fabrikam_first {
            tokio::join!(for_fabrikam(), credential.get_token([A]))
        } else {
            let (contoso, fabrikam) = tokio::join!(credential.get_token([A]), for_fabrikam());
            (fabrikam, contoso)
        };
        let fabrikam = fabrikam.unwrap_err();
        assert_eq!(fabrikam.error_codes(), [700016], "{fabrikam}");
        let contoso = contoso.unwrap_or_else(|e| panic!("fabrikam first: {fabrikam_first}: {e}"));
        assert_eq!(contoso.secret().expose_secret(), "at-contoso");
        let requests = authority.requests();
        assert_eq!(requests.len(), 1, "{requests:#?}");
        assert_eq!(requests[0].tenant, crate::support::creds::TENANT);
        assert_eq!(requests[0].field("code"), Some(loopback::CODE));
    }
}

/// A redemption for fabrikam throttled (429, `Retry-After: 120`): a call for contoso that
/// waited for it sends the code for its own request and gets its token (Entra throttles per
/// tenant; the wait is kept per token endpoint); a call for fabrikam with other scopes that
/// waited too gets a throttled error, nothing sent to fabrikam before the wait has passed.
/// Before, both got fabrikam's throttled error.
#[tokio::test(start_paused = true)]
async fn a_throttled_redemption_holds_back_its_tenant_only() {
    use crate::support::authority::{Authority, Fault};
    use loopback::{A, B, answer};
    const FABRIKAM: &str = "fabrikam";

    let authority = Authority::start().await;
    let credential = loopback::builder(&authority, loopback::CODE)
        .additionally_allowed_tenants([FABRIKAM])
        .http_client(crate::support::creds::http(&authority))
        .build()
        .unwrap();
    authority.push_fault(Fault::TooManyRequests {
        retry_after: "120".into(),
    });
    authority.push_fault(answer("at-contoso", "rt-1"));
    let in_fabrikam = |scope| TokenRequest::new([scope]).with_tenant_id(FABRIKAM);
    let (throttled, contoso, other) = tokio::join!(
        credential.get_token_with(in_fabrikam(A)),
        credential.get_token([A]),
        credential.get_token_with(in_fabrikam(B)),
    );
    let throttled = throttled.unwrap_err();
    assert!(throttled.is_throttled(), "{throttled}");
    let contoso = contoso.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(contoso.secret().expose_secret(), "at-contoso");
    let other = other.unwrap_err();
    assert!(other.is_throttled(), "{other}");
    let tenants: Vec<String> = authority.requests().into_iter().map(|r| r.tenant).collect();
    assert_eq!(tenants, [FABRIKAM, crate::support::creds::TENANT]);
}

/// Two concurrent first calls with the same claims challenge share the one redemption: its
/// token, obtained for exactly their request (tenant, scopes, CAE, claims), answers both.
/// Before, the call that waited set it aside, as it does a token redeemed for other claims,
/// and redeemed the refresh token with the same claims: a second request.
#[tokio::test(start_paused = true)]
async fn concurrent_calls_with_the_same_claims_challenge_share_the_redemption() {
    use crate::support::authority::Authority;
    use loopback::{A, answer};

    const CHALLENGE: &str = r#"{"access_token":{"nbf":{"essential":true,"value":"1700000000"}}}"#;
    let authority = Authority::start().await;
    let credential = loopback::credential(&authority);
    authority.push_fault(answer("at-1", "rt-1"));
    authority.push_fault(answer("at-2", "rt-2"));
    let request = || TokenRequest::new([A]).with_claims(CHALLENGE);
    let (a, b) = tokio::join!(
        credential.get_token_with(request()),
        credential.get_token_with(request()),
    );
    for token in [a, b] {
        let token = token.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(token.secret().expose_secret(), "at-1");
    }
    let requests = authority.requests();
    assert_eq!(requests.len(), 1, "{requests:#?}");
}

/// How many times the code was sent for `resource`, by the token requests in `log` (see
/// [`loopback::refusing_scopes`]).
fn code_sent_for(log: &std::sync::Mutex<Vec<(String, String)>>, resource: &str) -> usize {
    log.lock()
        .unwrap()
        .iter()
        .filter(|(grant, scope)| {
            grant == "authorization_code" && scope.split(' ').any(|s| s == resource)
        })
        .count()
}

/// Two requests refused while keeping the code (AADSTS65001 for A, 50076 for B), retried in
/// turn (A, B, A, B, …) within 30 s: each call gets its own request's refusal, and the code
/// is sent once per request; 30 s after its refusal, A sends it again. Before, only the last
/// refusal was kept: B's replaced A's, so every retry sent the code again.
#[tokio::test(start_paused = true)]
async fn two_requests_refused_and_retried_in_turn_send_the_code_once_each() {
    use crate::support::authority::{Authority, error_body};
    use loopback::{A, B};

    let authority = Authority::start().await;
    let log = std::sync::Arc::default();
    let http = loopback::refusing_scopes(
        crate::support::creds::http(&authority),
        vec![
            (A, error_body("invalid_grant", 65001, "No consent.")),
            (B, error_body("invalid_grant", 50076, "MFA required.")),
        ],
        std::sync::Arc::clone(&log),
    );
    let credential = loopback::builder(&authority, loopback::CODE)
        .http_client(http)
        .build()
        .unwrap();
    for round in 0..3 {
        for (resource, code) in [(A, 65001), (B, 50076)] {
            let error = credential.get_token([resource]).await.unwrap_err();
            assert_eq!(
                error.error_codes(),
                [code],
                "round {round}, {resource}: {error}"
            );
        }
        tokio::time::advance(Duration::from_secs(5)).await;
    }
    assert_eq!(code_sent_for(&log, A), 1, "{log:#?}");
    assert_eq!(code_sent_for(&log, B), 1, "{log:#?}");

    // 30 s after the refusals, each request sends the code again, once.
    tokio::time::advance(Duration::from_secs(15)).await;
    for _ in 0..2 {
        for (resource, code) in [(A, 65001), (B, 50076)] {
            let error = credential.get_token([resource]).await.unwrap_err();
            assert_eq!(error.error_codes(), [code], "{resource}: {error}");
        }
    }
    assert_eq!(code_sent_for(&log, A), 2, "{log:#?}");
    assert_eq!(code_sent_for(&log, B), 2, "{log:#?}");
    assert_eq!(authority.token_posts(), 0);
}

/// The refusals kept are bounded: 16 requests. A 17th request's refusal replaces the oldest
/// one (that request sends the code again on its next call); the 16 newest are still
/// answered without sending it.
#[tokio::test(start_paused = true)]
async fn at_most_sixteen_refusals_are_kept_the_oldest_replaced() {
    use crate::support::authority::{Authority, error_body};

    const REFUSED: &str = "https://resource.test/refused/";
    let authority = Authority::start().await;
    let log = std::sync::Arc::default();
    let http = loopback::refusing_scopes(
        crate::support::creds::http(&authority),
        vec![(REFUSED, error_body("invalid_grant", 65001, "No consent."))],
        std::sync::Arc::clone(&log),
    );
    let credential = loopback::builder(&authority, loopback::CODE)
        .http_client(http)
        .build()
        .unwrap();
    let resources: Vec<String> = (0..17).map(|i| format!("{REFUSED}{i}")).collect();
    for resource in &resources {
        credential.get_token([resource.as_str()]).await.unwrap_err();
        tokio::time::advance(Duration::from_millis(100)).await;
    }
    // The 16 newest: answered from their kept refusals.
    for resource in &resources[1..] {
        let error = credential.get_token([resource.as_str()]).await.unwrap_err();
        assert_eq!(error.error_codes(), [65001], "{resource}: {error}");
        assert_eq!(code_sent_for(&log, resource), 1, "{resource}: {log:#?}");
    }
    // The oldest was replaced: sent again.
    let error = credential
        .get_token([resources[0].as_str()])
        .await
        .unwrap_err();
    assert_eq!(error.error_codes(), [65001], "{error}");
    assert_eq!(code_sent_for(&log, &resources[0]), 2, "{log:#?}");
}

/// A redemption that succeeded but named no account (no client_info, no id token): later
/// requests for other scopes say so, and what to ask for. Before, they said the code was
/// not redeemed.
#[tokio::test(start_paused = true)]
async fn a_redemption_that_named_no_account_says_so_later() {
    use crate::support::authority::{Authority, Fault};
    use loopback::{A, B};

    let authority = Authority::start().await;
    authority.push_fault(Fault::Body(
        serde_json::json!({
            "token_type": "Bearer",
            "expires_in": 3600,
            "access_token": "at-anonymous",
            "refresh_token": "rt-anonymous",
        })
        .to_string(),
    ));
    let credential = loopback::credential(&authority);
    let token = credential.get_token([A]).await.unwrap();
    assert_eq!(token.secret().expose_secret(), "at-anonymous");
    let err = credential.get_token([B]).await.unwrap_err();
    assert!(err.is_authentication_failed(), "{err}");
    let message = err.message();
    assert!(message.contains("was redeemed"), "{err}");
    assert!(message.contains("named no account"), "{err}");
    assert!(message.contains("openid and profile scopes"), "{err}");
    assert!(!message.contains("not redeemed"), "{err}");
    assert_eq!(authority.token_posts(), 1, "nothing more was sent");
}

/// One answer recorded in each document leaves the same refresh token in both: it is sent
/// once, not once per document, and its refusal is the answer.
#[tokio::test(start_paused = true)]
async fn a_refresh_token_in_both_documents_is_sent_once() {
    use crate::support::authority::{Authority, Fault, error_body};
    use loopback::{A, B, answer};

    let authority = Authority::start().await;
    let dir = tempfile::tempdir().unwrap();
    let credential = loopback::builder(&authority, "code-1")
        .http_client(crate::support::creds::http(&authority))
        .cache_options(
            TokenCachePersistenceOptions::new()
                .directory(dir.path())
                .allow_unencrypted_storage(true),
        )
        .build()
        .unwrap();
    authority.push_fault(answer("at-1", "rt-1"));
    credential
        .get_token_with(TokenRequest::new([A]).with_cae(true))
        .await
        .unwrap();
    std::fs::copy(
        dir.path().join("msal.cache.cae"),
        dir.path().join("msal.cache.nocae"),
    )
    .unwrap();
    for _ in 0..2 {
        authority.push_fault(Fault::Respond {
            status: 400,
            body: error_body("invalid_grant", 70043, "The refresh token has expired."),
            headers: vec![],
        });
    }
    let err = credential.get_token([B]).await.unwrap_err();
    assert_eq!(err.error_codes(), [70043], "{err}");
    let sent = authority
        .requests()
        .iter()
        .filter(|r| r.field("refresh_token") == Some("rt-1"))
        .count();
    assert_eq!(sent, 1, "{:#?}", authority.requests());
}

/// A Conditional Access refusal for one resource (device compliance, sign-in frequency …) does
/// not kill the refresh token: it still serves other scopes, as msal keeps it. Before, any
/// `invalid_grant` but five codes dropped the only refresh token, and every later request
/// failed saying to sign in again; then any but thirteen (MFA enrollment 50072, a scope not
/// authorized 70000, a failed Conditional Access policy 50131 … dropped it).
#[tokio::test(start_paused = true)]
async fn a_conditional_access_refusal_for_one_resource_keeps_the_refresh_token_for_others() {
    use crate::support::authority::{Authority, Fault, error_body};
    use loopback::{A, B, answer};

    for code in [
        53000, 53001, 70043, 50072, 70000, 50131, 50129, 50005, 65002, 50199,
    ] {
        let authority = Authority::start().await;
        let credential = loopback::credential(&authority);
        authority.push_fault(answer("at-1", "rt-1"));
        credential.get_token([A]).await.unwrap();
        authority.push_fault(Fault::Respond {
            status: 400,
            body: error_body("invalid_grant", code, "Access has been blocked by policy."),
            headers: vec![],
        });
        let err = credential.get_token([B]).await.unwrap_err();
        assert_eq!(err.error_codes(), [code], "{err}");

        authority.push_fault(answer("at-z", "rt-2"));
        let other = credential
            .get_token(["https://other.test/.default"])
            .await
            .unwrap_or_else(|e| panic!("AADSTS{code}: {e}"));
        assert_eq!(other.secret().expose_secret(), "at-z");
        let requests = authority.requests();
        assert_eq!(requests.len(), 3, "{requests:#?}");
        assert_eq!(requests[2].field("refresh_token"), Some("rt-1"));
    }
}

/// A refresh token Entra says is dead (expired: AADSTS700082) is dropped from the
/// credential's memory: the next request sends nothing and says to sign in again.
#[tokio::test(start_paused = true)]
async fn a_dead_refresh_token_is_dropped_from_memory() {
    use crate::support::authority::{Authority, Fault, error_body};
    use loopback::{A, B, answer};

    let authority = Authority::start().await;
    let credential = loopback::credential(&authority);
    authority.push_fault(answer("at-1", "rt-1"));
    credential.get_token([A]).await.unwrap();
    authority.push_fault(Fault::Respond {
        status: 400,
        body: error_body("invalid_grant", 700082, "The refresh token has expired."),
        headers: vec![],
    });
    let err = credential.get_token([B]).await.unwrap_err();
    assert_eq!(err.error_codes(), [700082], "{err}");
    let err = credential
        .get_token(["https://other.test/.default"])
        .await
        .unwrap_err();
    assert!(err.is_authentication_failed(), "{err}");
    assert_eq!(authority.token_posts(), 2, "nothing sent");
}

/// A refresh token Entra says is dead (the user disabled, AADSTS50057; the device deleted,
/// 700003) is dropped too: asking again for the same scope sends nothing. Before, only seven
/// expiry and revocation codes dropped it, and every cache miss re-sent a token Entra would
/// never accept.
#[tokio::test(start_paused = true)]
async fn a_refresh_token_refused_with_a_dead_code_is_not_sent_again() {
    use crate::support::authority::{Authority, Fault, error_body};
    use loopback::{A, B, answer};

    for code in [50057, 700003] {
        let authority = Authority::start().await;
        let credential = loopback::credential(&authority);
        authority.push_fault(answer("at-1", "rt-1"));
        credential.get_token([A]).await.unwrap();
        authority.push_fault(Fault::Respond {
            status: 400,
            body: error_body("invalid_grant", code, "The user account is disabled."),
            headers: vec![],
        });
        let err = credential.get_token([B]).await.unwrap_err();
        assert_eq!(err.error_codes(), [code], "{err}");
        let err = credential.get_token([B]).await.unwrap_err();
        assert!(err.is_authentication_failed(), "AADSTS{code}: {err}");
        assert_eq!(
            authority.token_posts(),
            2,
            "AADSTS{code}: the refused token was sent again: {:#?}",
            authority.requests()
        );
    }
}

/// A refresh token refused with a code this crate does not know is kept, as msal keeps it (it
/// may be refused for this request only, and be the account's only one), but the same request
/// with it is not sent again for 30 s: the refusal is the answer. Another request sends it;
/// after 30 s the same one does. Before, it was dropped: a per-request code missing from the
/// list lost the sign-in.
#[tokio::test(start_paused = true)]
async fn a_refresh_token_refused_with_an_unknown_code_is_kept_and_its_request_spaced() {
    use crate::support::authority::{Authority, Fault, error_body};
    use loopback::{A, B, answer};

    let refused = || Fault::Respond {
        status: 400,
        body: error_body("invalid_grant", 9_999_999, "Something new."),
        headers: vec![],
    };
    let authority = Authority::start().await;
    let credential = loopback::credential(&authority);
    authority.push_fault(answer("at-1", "rt-1"));
    credential.get_token([A]).await.unwrap();
    authority.push_fault(refused());
    let err = credential.get_token([B]).await.unwrap_err();
    assert_eq!(err.error_codes(), [9_999_999], "{err}");
    assert_eq!(authority.token_posts(), 2);

    tokio::time::advance(Duration::from_secs(29)).await;
    let again = credential.get_token([B]).await.unwrap_err();
    assert_eq!(again.error_codes(), [9_999_999], "{again}");
    assert_eq!(
        authority.token_posts(),
        2,
        "the refused request was sent again at once"
    );

    // Still the account's refresh token for other requests (answered with it, unrotated).
    authority.push_fault(answer("at-c", "rt-1"));
    let other = credential
        .get_token(["https://other.test/.default"])
        .await
        .unwrap();
    assert_eq!(other.secret().expose_secret(), "at-c");

    tokio::time::advance(Duration::from_secs(1)).await;
    authority.push_fault(answer("at-b", "rt-1"));
    let token = credential.get_token([B]).await.unwrap();
    assert_eq!(token.secret().expose_secret(), "at-b");
    let requests = authority.requests();
    assert_eq!(requests.len(), 4, "{requests:#?}");
    assert!(
        requests[1..]
            .iter()
            .all(|r| r.field("refresh_token") == Some("rt-1")),
        "{requests:#?}"
    );
}

/// Entra's token endpoint also refuses a grant with the top-level errors
/// `interaction_required` (an additional authentication step: MFA) and `consent_required`,
/// beside `invalid_grant` (the Microsoft identity platform's token endpoint errors). Each
/// refuses this request only: the same request gets the refusal again without a request for
/// 30 s, saying to sign in again, and the refresh token still serves other requests. Before,
/// neither refusal was remembered: every call for that request sent the refresh token again.
#[tokio::test(start_paused = true)]
async fn interaction_or_consent_required_refuses_the_request_only_and_is_not_sent_again_at_once() {
    use crate::support::authority::{Authority, Fault, error_body};
    use loopback::{A, B, answer};

    for (error, code) in [("interaction_required", 50076), ("consent_required", 65001)] {
        let authority = Authority::start().await;
        let credential = loopback::credential(&authority);
        authority.push_fault(answer("at-1", "rt-1"));
        credential.get_token([A]).await.unwrap();
        authority.push_fault(Fault::Respond {
            status: 400,
            body: error_body(error, code, "The user must act in a sign-in."),
            headers: vec![],
        });
        let err = credential.get_token([B]).await.unwrap_err();
        assert_eq!(err.error_code(), Some(error), "{err}");
        assert!(
            err.message().contains("To fix, sign the user in again"),
            "{error}: {err}"
        );
        let again = credential.get_token([B]).await.unwrap_err();
        assert_eq!(again.error_code(), Some(error), "{again}");
        assert_eq!(authority.token_posts(), 2, "{error}: sent again at once");

        authority.push_fault(answer("at-other", "rt-1"));
        let other = credential
            .get_token(["https://other.test/.default"])
            .await
            .unwrap_or_else(|e| panic!("{error}: {e}"));
        assert_eq!(other.secret().expose_secret(), "at-other");
        let requests = authority.requests();
        assert_eq!(requests.len(), 3, "{requests:#?}");
        assert_eq!(requests[2].field("refresh_token"), Some("rt-1"));
    }
}

/// A redemption that got no definite answer (no answer in time, the connection closed after
/// the request was sent, a server error) keeps the code, and the next call sends it again: it
/// usually was not consumed. When Entra then says it was already redeemed (AADSTS54005), the
/// error says the earlier redemption got no definite answer, and of which kind, so it may
/// have used the code. After a definite refusal (one that keeps the code), it does not.
/// Before, the error said only "already redeemed", hiding the real failure.
#[tokio::test(start_paused = true)]
async fn already_redeemed_after_a_redemption_with_no_definite_answer_says_it_may_have_used_the_code()
 {
    use crate::support::authority::{Authority, Fault, error_body};
    use crate::support::creds::{http_builder, secs};
    use loopback::{A, B};

    let redeemed = || Fault::Respond {
        status: 400,
        body: error_body(
            "invalid_grant",
            54005,
            "OAuth2 Authorization code was already redeemed.",
        ),
        headers: vec![],
    };
    let declined = Fault::Respond {
        status: 400,
        body: error_body("invalid_client", 7000215, "Invalid client secret provided."),
        headers: vec![],
    };
    for (first, kind) in [
        (Fault::Hang, Some("(no answer in time)")),
        (
            Fault::Close,
            Some("(the connection failed after the request was sent)"),
        ),
        (Fault::ServerError(500), Some("(a server error, HTTP 500)")),
        (declined, None),
    ] {
        let authority = Authority::start().await;
        let http = http_builder(&authority)
            .timeout(Some(secs(2)))
            .build()
            .unwrap();
        let credential = loopback::builder(&authority, loopback::CODE)
            .http_client(http)
            .build()
            .unwrap();
        authority.push_fault(first);
        let err = credential.get_token([A]).await.unwrap_err();
        assert!(!err.message().contains("54005"), "{kind:?}: {err}");
        authority.push_fault(redeemed());
        let err = credential.get_token([B]).await.unwrap_err();
        assert_eq!(err.error_codes(), [54005], "{kind:?}: {err}");
        assert_eq!(
            authority.token_posts(),
            2,
            "{kind:?}: the code is sent again once"
        );
        let message = err.message();
        assert!(
            message.contains("To fix, sign the user in again"),
            "{kind:?}: {err}"
        );
        assert!(!message.contains(loopback::CODE), "{kind:?}: {err}");
        match kind {
            Some(kind) => {
                assert!(
                    message.starts_with(
                        "an earlier redemption of this authorization code got no definite answer "
                    ) && message.contains(kind)
                        && message.contains("so it may have used the code: ")
                        && message.contains("AADSTS54005"),
                    "{err}"
                );
            }
            None => assert!(!message.contains("earlier redemption"), "{err}"),
        }
        // Later calls get the same refusal, without a request.
        let later = credential.get_token([A]).await.unwrap_err();
        assert_eq!(later.message(), message);
        assert_eq!(authority.token_posts(), 2);
    }
}

/// A dead token's refusal that arrives after a concurrent redemption of the same token rotated
/// its entry removes nothing: the entry holds the fresh token now. Before, the entry was
/// removed by its key, the fresh token with it.
#[tokio::test(start_paused = true)]
async fn a_refusal_arriving_after_a_rotation_keeps_the_rotated_token() {
    use std::sync::Arc;

    use http_body_util::BodyExt;
    use tokio::sync::Notify;

    use crate::support::authority::{Authority, error_body};
    use loopback::{A, B, answer};

    let authority = Authority::start().await;
    let (arrived, gate) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let inner = crate::support::creds::http(&authority);
    let http = HttpClient::from_service(tower::service_fn({
        let (arrived, gate) = (Arc::clone(&arrived), Arc::clone(&gate));
        move |request: HttpRequest| {
            let (inner, arrived, gate) = (inner.clone(), Arc::clone(&arrived), Arc::clone(&gate));
            async move {
                let (parts, body) = request.into_parts();
                let body = body.collect().await.unwrap().to_bytes();
                let form: Vec<(String, String)> =
                    url::form_urlencoded::parse(&body).into_owned().collect();
                if form.iter().any(|(k, v)| k == "scope" && v == B) {
                    // Held until the other redemption has rotated the token, then refused.
                    arrived.notify_one();
                    gate.notified().await;
                    let answer = error_body("invalid_grant", 70008, "The refresh token expired.");
                    return Ok(http::Response::builder()
                        .status(400)
                        .header("content-type", "application/json")
                        .body(bytes::Bytes::from(answer))
                        .unwrap());
                }
                let request = http::Request::from_parts(parts, http_body_util::Full::new(body));
                tower::ServiceExt::oneshot(inner, request).await
            }
        }
    }));
    let credential = loopback::builder(&authority, loopback::CODE)
        .http_client(http)
        .build()
        .unwrap();
    authority.push_fault(answer("at-1", "rt-1"));
    credential.get_token([A]).await.unwrap();

    let refused = tokio::spawn({
        let credential = credential.clone();
        async move { credential.get_token([B]).await }
    });
    arrived.notified().await;
    // Meanwhile another request redeems rt-1, and the answer's rt-2 replaces it.
    authority.push_fault(answer("at-x", "rt-2"));
    credential
        .get_token(["https://x.test/.default"])
        .await
        .unwrap();
    gate.notify_one();
    let err = refused.await.unwrap().unwrap_err();
    assert_eq!(err.error_codes(), [70008], "{err}");

    authority.push_fault(answer("at-z", "rt-3"));
    let other = credential
        .get_token(["https://other.test/.default"])
        .await
        .unwrap();
    assert_eq!(other.secret().expose_secret(), "at-z");
    assert_eq!(
        authority.requests().last().unwrap().field("refresh_token"),
        Some("rt-2")
    );
}

/// A code issued to a sign-in with PKCE (as single-page applications' and msal's sign-ins
/// are) is redeemed with its `code_verifier`, sent with the code only; without it the peer
/// refuses the code, as Entra does. The verifier never shows in `Debug` output or errors.
/// Before, there was no way to send it, so such a code could not be redeemed.
#[tokio::test]
async fn a_code_issued_with_pkce_is_redeemed_with_its_verifier() {
    use base64::Engine;

    let peer = peer();
    let tenant = "authcode-pkce";
    let verifier = "pkce-verifier-0123456789-abcdefghijklmnopqrstuvwxyz~._";
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        verifier.as_bytes(),
    ));
    let code_for = |user: &'static str| {
        let challenge = challenge.clone();
        async move {
            peer.authorization_code_with_pkce(tenant, CLIENT_ID, SIGN_IN, user, &challenge)
                .await
        }
    };
    let builder = |code: String| {
        AuthorizationCodeCredential::builder(tenant, CLIENT_ID, code, REDIRECT_URI)
            .client_secret(CLIENT_SECRET)
            .authority_host(&peer.base)
            .http_client(peer.http())
    };

    // Without the verifier: refused.
    let err = builder(code_for("pia@contoso.com").await)
        .build()
        .unwrap()
        .get_token([RESOURCE])
        .await
        .unwrap_err();
    assert_eq!(err.error_code(), Some("invalid_grant"), "{err}");

    let code = code_for("pia@contoso.com").await;
    let with_verifier = builder(code.clone()).code_verifier(verifier);
    let shown = format!("{with_verifier:?}");
    assert!(!shown.contains(verifier), "{shown}");
    let credential = with_verifier.build().unwrap();
    let token = credential.get_token([RESOURCE]).await.unwrap();
    assert_eq!(
        jwt_claims(token.secret().expose_secret())["aud"],
        "https://resource.test"
    );
    assert!(!format!("{credential:?}").contains(verifier));
    let log = log_of(tenant).await;
    let [redeemed] = requests_for(&log, "code", &code)
        .try_into()
        .expect("one redemption");
    assert_eq!(redeemed["form"]["code_verifier"], verifier);
    // Later requests redeem the refresh token, without the verifier.
    credential.get_token([OTHER]).await.unwrap();
    let refresh = log_of(tenant).await.last().unwrap().clone();
    assert_eq!(refresh["grant_type"], "refresh_token");
    assert!(refresh["form"].get("code_verifier").is_none(), "{refresh}");

    // A wrong verifier: refused. (The peer does not quote it back: see
    // `a_verifier_the_provider_quotes_is_scrubbed_from_the_error` for a provider that does.)
    let err = builder(code_for("pia@contoso.com").await)
        .code_verifier("x".repeat(43))
        .build()
        .unwrap()
        .get_token([RESOURCE])
        .await
        .unwrap_err();
    assert_eq!(err.error_code(), Some("invalid_grant"), "{err}");
    assert!(!format!("{err:?} {err}").contains(&"x".repeat(43)), "{err}");
}

/// A provider quoting the form's `code_verifier` back in its error (bare in a JSON error's
/// `error_description`, named in a body that is not JSON) does not make the credential's
/// error show it: the verifier is a secret of the request, like a client secret, and is
/// scrubbed from the provider's text.
#[tokio::test(start_paused = true)]
async fn a_verifier_the_provider_quotes_is_scrubbed_from_the_error() {
    use crate::support::authority::{Authority, Fault};
    use loopback::A;

    let verifier = "quoted-pkce-verifier-0123456789-abcdefghijklmnopqrstuvwxyz";
    let authority = Authority::start().await;
    for (body, quoted) in [
        (
            serde_json::json!({
                "error": "invalid_grant",
                "error_description": format!(
                    "AADSTS501481: The Code_Verifier '{verifier}' does not match the \
                     code_challenge supplied in the authorization request."
                ),
                "error_codes": [501481],
            })
            .to_string(),
            "does not match",
        ),
        (
            format!("bad request: code_verifier={verifier} ({verifier})"),
            "bad request",
        ),
    ] {
        authority.push_fault(Fault::Respond {
            status: 400,
            body,
            headers: vec![],
        });
        let credential = loopback::builder(&authority, loopback::CODE)
            .code_verifier(verifier)
            .http_client(crate::support::creds::http(&authority))
            .build()
            .unwrap();
        let err = credential.get_token([A]).await.unwrap_err();
        let sent = authority.requests();
        assert_eq!(
            sent.last().unwrap().field("code_verifier"),
            Some(verifier),
            "the verifier was sent"
        );
        let shown = format!("{err:?} {err}");
        assert!(
            shown.contains(quoted),
            "the provider's text is quoted: {shown}"
        );
        assert!(!shown.contains(&verifier[..16]), "{shown}");
    }
}

/// A value that cannot be a PKCE verifier is refused when building, without showing it.
#[test]
fn a_code_verifier_that_is_not_one_is_refused_at_build_without_showing_it() {
    for bad in [
        "short",
        "has space in it but is long enough to pass the length",
        &"a".repeat(129),
    ] {
        let err = AuthorizationCodeCredential::builder("contoso", CLIENT_ID, "code", REDIRECT_URI)
            .code_verifier(bad)
            .build()
            .unwrap_err();
        assert!(err.message().contains("PKCE verifier"), "{err}");
        assert!(!format!("{err:?} {err}").contains(bad), "{err}");
    }
}

/// The legacy `~/.IdentityService/msal.cache` (older azure-identity) is only ever read: while
/// it is the only file, the redemption's tokens go to `msal.cache.nocae`, created from the
/// legacy file's content, where a later azure-identity sign-in adds its account (it reads and
/// writes only `msal.cache.nocae`). Before, they went to the legacy file, which stopped being
/// read once that sign-in created `msal.cache.nocae`: the next resource failed, asking to sign
/// in again, the code spent.
#[tokio::test(start_paused = true)]
async fn with_only_the_legacy_file_the_redeemed_tokens_survive_a_later_sign_in_elsewhere() {
    use crate::support::authority::Authority;
    use loopback::{A, B, answer};

    const TWO_ACCOUNTS: &[u8] = include_bytes!("../data/msal-two-accounts.json");
    /// The entries of `doc` for the account whose `home_account_id` starts with `uid`.
    fn only_account(doc: &serde_json::Value, uid: &str) -> serde_json::Value {
        let mut doc = doc.clone();
        for section in ["AccessToken", "Account", "IdToken", "RefreshToken"] {
            doc[section]
                .as_object_mut()
                .unwrap()
                .retain(|_, entry| entry["home_account_id"].as_str().unwrap().starts_with(uid));
        }
        doc
    }

    let authority = Authority::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (legacy, current) = (
        dir.path().join("msal.cache"),
        dir.path().join("msal.cache.nocae"),
    );
    let accounts: serde_json::Value = serde_json::from_slice(TWO_ACCOUNTS).unwrap();
    let unrelated = serde_json::to_vec(&only_account(&accounts, "a8ff77e5")).unwrap();
    std::fs::write(&legacy, &unrelated).unwrap();
    let credential = loopback::builder(&authority, loopback::CODE)
        .http_client(crate::support::creds::http(&authority))
        .cache_options(
            TokenCachePersistenceOptions::new()
                .directory(dir.path())
                .allow_unencrypted_storage(true),
        )
        .build()
        .unwrap();
    authority.push_fault(answer("at-1", "rt-ours"));
    credential.get_token([A]).await.unwrap();

    // azure-identity signs another account in: msal-extensions reads msal.cache.nocae (empty
    // if missing), adds the account's entries and writes it back.
    let mut signed_in: serde_json::Value = match std::fs::read(&current) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::json!({}),
        Err(e) => panic!("{e}"),
    };
    let other = only_account(&accounts, "61ace6e2");
    for (section, entries) in other.as_object().unwrap() {
        let into = signed_in
            .as_object_mut()
            .unwrap()
            .entry(section.as_str())
            .or_insert_with(|| serde_json::json!({}));
        for (key, entry) in entries.as_object().unwrap() {
            into[key.as_str()] = entry.clone();
        }
    }
    std::fs::write(&current, serde_json::to_vec(&signed_in).unwrap()).unwrap();

    authority.push_fault(answer("at-2", "rt-2"));
    let token = credential.get_token([B]).await.unwrap();
    assert_eq!(token.secret().expose_secret(), "at-2");
    assert_eq!(
        authority.requests().last().unwrap().field("refresh_token"),
        Some("rt-ours")
    );
    assert!(
        std::fs::read(&legacy).unwrap() == unrelated,
        "the legacy file is never written"
    );
}

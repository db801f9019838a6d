//! ClientSecretCredential against the loopback authority: the wire format, caching and
//! refresh, concurrency, and every fault switch.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tower_identity::{CredentialExt, HttpClient, RetryOptions, TokenRequest};

use crate::support::authority::{Authority, Fault, TokenShape, error_body};
use crate::support::clock::settle;
use crate::support::creds::{
    CLIENT_ID, CLIENT_SECRET, SCOPE, TENANT, client_secret, client_secret_with, http_builder, secs,
};

fn shape(expires_in: u64, refresh_in: Option<u64>) -> TokenShape {
    TokenShape {
        expires_in,
        refresh_in,
        ..TokenShape::default()
    }
}

#[tokio::test]
async fn client_credentials_form_has_exactly_the_entra_fields() {
    let authority = Authority::start().await;
    let credential = client_secret(&authority);
    let token = credential
        .get_token([SCOPE, "https://other.test/.default"])
        .await
        .unwrap();
    assert_eq!(token.secret().expose_secret(), "at-1-contoso");
    assert_eq!(token.token_type(), "Bearer");

    let [request] = authority.requests().try_into().unwrap();
    assert_eq!(request.path, "/contoso/oauth2/v2.0/token");
    assert_eq!(request.method, http::Method::POST);
    assert_eq!(
        request.field_names(),
        ["client_id", "client_secret", "grant_type", "scope"]
    );
    assert_eq!(request.field("client_id"), Some(CLIENT_ID));
    assert_eq!(request.field("client_secret"), Some(CLIENT_SECRET));
    assert_eq!(request.field("grant_type"), Some("client_credentials"));
    assert_eq!(
        request.field("scope"),
        Some("https://resource.test/.default https://other.test/.default")
    );
    let header = |name: &str| {
        request
            .headers
            .get(name)
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(header("content-type"), "application/x-www-form-urlencoded");
    assert_eq!(header("accept"), "application/json");
    assert!(header("user-agent").starts_with("tower-identity/"));
    uuid::Uuid::parse_str(&header("x-ms-client-request-id")).expect("a uuid");
}

#[tokio::test]
async fn every_token_request_has_a_fresh_client_request_id() {
    let authority = Authority::start().await;
    let credential = client_secret(&authority);
    credential
        .get_token(["https://a.test/.default"])
        .await
        .unwrap();
    credential
        .get_token(["https://b.test/.default"])
        .await
        .unwrap();
    let ids: Vec<_> = authority
        .requests()
        .iter()
        .map(|r| r.headers["x-ms-client-request-id"].clone())
        .collect();
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1]);
}

#[tokio::test]
async fn tokens_are_cached_per_scope_set_regardless_of_order() {
    let authority = Authority::start().await;
    let credential = client_secret(&authority);
    let a = credential
        .get_token(["x/.default", "y/.default"])
        .await
        .unwrap();
    let b = credential
        .get_token(["y/.default", "x/.default"])
        .await
        .unwrap();
    assert_eq!(a.secret(), b.secret());
    credential.get_token(["x/.default"]).await.unwrap();
    assert_eq!(authority.token_posts(), 2);
}

#[tokio::test]
async fn claims_are_sent_verbatim_bypass_the_cache_and_replace_the_cached_token() {
    let authority = Authority::start().await;
    let credential = client_secret(&authority);
    credential.get_token([SCOPE]).await.unwrap();
    let claims = r#"{"access_token":{"nbf":{"essential":true,"value":"1726077595"}}}"#;
    let with_claims = credential
        .get_token_with(TokenRequest::new([SCOPE]).with_claims(claims))
        .await
        .unwrap();
    assert_eq!(with_claims.secret().expose_secret(), "at-2-contoso-claims");
    assert_eq!(authority.requests()[1].field("claims"), Some(claims));
    // A second claims request reaches the provider again.
    credential
        .get_token_with(TokenRequest::new([SCOPE]).with_claims(claims))
        .await
        .unwrap();
    assert_eq!(authority.token_posts(), 3);
    // Plain requests now get the token that satisfied the claims.
    let after = credential.get_token([SCOPE]).await.unwrap();
    assert_eq!(after.secret().expose_secret(), "at-3-contoso-claims");
    assert_eq!(authority.token_posts(), 3);
}

#[tokio::test]
async fn cae_requests_announce_cp1_and_are_cached_apart_from_plain_ones() {
    let authority = Authority::start().await;
    let credential = client_secret(&authority);
    let plain = credential.get_token([SCOPE]).await.unwrap();
    let cae = credential
        .get_token_with(TokenRequest::new([SCOPE]).with_cae(true))
        .await
        .unwrap();
    assert_ne!(plain.secret(), cae.secret());
    let requests = authority.requests();
    assert_eq!(requests[0].field("claims"), None);
    assert_eq!(
        requests[1].field("claims"),
        Some(r#"{"access_token":{"xms_cc":{"values":["CP1"]}}}"#)
    );
    // Each is served from its own cache entry.
    let plain_again = credential.get_token([SCOPE]).await.unwrap();
    let cae_again = credential
        .get_token_with(TokenRequest::new([SCOPE]).with_cae(true))
        .await
        .unwrap();
    assert_eq!(plain_again.secret(), plain.secret());
    assert_eq!(cae_again.secret(), cae.secret());
    assert_eq!(authority.token_posts(), 2);
}

#[tokio::test]
async fn cae_claims_challenge_keeps_its_keys_and_gains_cp1() {
    let authority = Authority::start().await;
    let credential = client_secret(&authority);
    let challenge = r#"{"access_token":{"nbf":{"essential":true,"value":"1726077595"},"xms_caeerror":{"value":"10012"}}}"#;
    credential
        .get_token_with(
            TokenRequest::new([SCOPE])
                .with_claims(challenge)
                .with_cae(true),
        )
        .await
        .unwrap();
    assert_eq!(
        authority.requests()[0].field("claims"),
        Some(
            r#"{"access_token":{"nbf":{"essential":true,"value":"1726077595"},"xms_caeerror":{"value":"10012"},"xms_cc":{"values":["CP1"]}}}"#
        )
    );
}

#[tokio::test]
async fn per_request_tenant_is_used_only_when_allowed_and_always_validated() {
    let authority = Authority::start().await;
    let strict = client_secret(&authority);
    let err = strict
        .get_token_with(TokenRequest::new([SCOPE]).with_tenant_id("fabrikam"))
        .await
        .unwrap_err();
    assert!(err.is_invalid_request());
    assert!(
        err.message()
            .contains("not configured to acquire tokens for tenant fabrikam")
    );

    let open = tower_identity::ClientSecretCredential::builder(TENANT, CLIENT_ID, CLIENT_SECRET)
        .authority_host(authority.url())
        .http_client(crate::support::creds::http(&authority))
        .additionally_allowed_tenants(["*"])
        .build()
        .unwrap();
    let err = open
        .get_token_with(TokenRequest::new([SCOPE]).with_tenant_id("../evil"))
        .await
        .unwrap_err();
    assert!(
        err.is_invalid_request() && err.message().contains("'/'"),
        "{err}"
    );
    assert_eq!(authority.token_posts(), 0);

    let token = open
        .get_token_with(TokenRequest::new([SCOPE]).with_tenant_id("fabrikam"))
        .await
        .unwrap();
    assert_eq!(token.secret().expose_secret(), "at-1-fabrikam");
    assert_eq!(authority.requests()[0].path, "/fabrikam/oauth2/v2.0/token");
}

/// EnvironmentCredential takes an allowed list too, for the credential its variables build.
#[tokio::test]
async fn environment_credential_takes_additionally_allowed_tenants() {
    let authority = Authority::start().await;
    let url = authority.url();
    let env = |allowed: &[&str]| {
        tower_identity::EnvironmentCredential::builder()
            .vars([
                ("AZURE_TENANT_ID", TENANT),
                ("AZURE_CLIENT_ID", CLIENT_ID),
                ("AZURE_CLIENT_SECRET", CLIENT_SECRET),
                ("AZURE_AUTHORITY_HOST", url.as_str()),
            ])
            .http_client(crate::support::creds::http(&authority))
            .additionally_allowed_tenants(allowed.iter().copied())
            .build()
    };
    let fabrikam = || TokenRequest::new([SCOPE]).with_tenant_id("fabrikam");
    let err = env(&["other"])
        .get_token_with(fabrikam())
        .await
        .unwrap_err();
    assert!(err.is_invalid_request(), "{err}");
    assert!(err.message().contains("tenant fabrikam"), "{err}");
    // A mistake in the list is one in code, not in the environment.
    let err = env(&["no/pe"])
        .get_token_with(fabrikam())
        .await
        .unwrap_err();
    assert!(err.is_invalid_request(), "{err}");
    assert!(
        err.message().starts_with("additionally_allowed_tenants: "),
        "{err}"
    );
    assert_eq!(authority.token_posts(), 0);

    let token = env(&["*"]).get_token_with(fabrikam()).await.unwrap();
    assert_eq!(token.secret().expose_secret(), "at-1-fabrikam");
    assert_eq!(authority.requests()[0].path, "/fabrikam/oauth2/v2.0/token");
}

#[tokio::test]
async fn a_request_without_scopes_is_rejected_before_any_network_call() {
    let authority = Authority::start().await;
    let err = client_secret(&authority)
        .get_token(Vec::<String>::new())
        .await
        .unwrap_err();
    assert!(err.is_invalid_request());
    assert_eq!(err.credential(), "ClientSecretCredential");
    assert_eq!(authority.token_posts(), 0);
}

#[tokio::test(start_paused = true)]
async fn numeric_strings_in_the_answer_are_accepted() {
    let authority = Authority::start().await;
    authority.set_response(TokenShape {
        numbers_as_strings: true,
        ..shape(3600, Some(1200))
    });
    let token = client_secret(&authority).get_token([SCOPE]).await.unwrap();
    assert_eq!(token.expires_in(), secs(3600));
    assert_eq!(token.refresh_on(), Some(Instant::now() + secs(1200)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_cold_get_token_calls_make_one_post() {
    let authority = Authority::start().await;
    // A slow answer keeps the acquisition open while every caller arrives.
    authority.push_fault(Fault::Delay(Duration::from_millis(200)));
    let credential = client_secret(&authority);
    let barrier = Arc::new(tokio::sync::Barrier::new(1000));
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let credential = credential.clone();
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                barrier.wait().await;
                credential.get_token([SCOPE]).await
            })
        })
        .collect();
    for task in tasks {
        let token = task.await.unwrap().unwrap();
        assert_eq!(token.secret().expose_secret(), "at-1-contoso");
    }
    assert_eq!(authority.token_posts(), 1);
}

#[tokio::test(start_paused = true)]
async fn throttled_request_waits_for_retry_after_then_succeeds() {
    let authority = Authority::start().await;
    authority.push_fault(Fault::TooManyRequests {
        retry_after: "7".into(),
    });
    let start = Instant::now();
    let token = client_secret(&authority).get_token([SCOPE]).await.unwrap();
    assert!(start.elapsed() >= secs(7), "waited {:?}", start.elapsed());
    assert!(start.elapsed() < secs(8), "waited {:?}", start.elapsed());
    assert_eq!(token.secret().expose_secret(), "at-1-contoso");
    assert_eq!(authority.token_posts(), 2);
}

#[tokio::test(start_paused = true)]
async fn retry_after_beyond_the_limit_is_not_waited_for() {
    let authority = Authority::start().await;
    authority.push_fault(Fault::TooManyRequests {
        retry_after: "3600".into(),
    });
    let start = Instant::now();
    let err = client_secret(&authority)
        .get_token([SCOPE])
        .await
        .unwrap_err();
    assert!(start.elapsed() < secs(1));
    assert_eq!(err.status(), Some(http::StatusCode::TOO_MANY_REQUESTS));
    assert_eq!(authority.token_posts(), 1);
}

#[tokio::test(start_paused = true)]
async fn server_errors_are_retried_with_growing_backoff_then_reported() {
    let authority = Authority::start().await;
    for _ in 0..4 {
        authority.push_fault(Fault::ServerError(503));
    }
    let start = Instant::now();
    let err = client_secret(&authority)
        .get_token([SCOPE])
        .await
        .unwrap_err();
    // Three retries: 0.8 s, 1.6 s, 3.2 s, each ±20 %.
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(4480) && waited <= Duration::from_millis(6720),
        "{waited:?}"
    );
    assert_eq!(authority.token_posts(), 4);
    assert!(err.is_authentication_failed());
    assert_eq!(err.status(), Some(http::StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(err.error_code(), Some("server_error"));
}

#[tokio::test(start_paused = true)]
async fn a_server_error_then_success_is_transparent() {
    let authority = Authority::start().await;
    authority.push_fault(Fault::ServerError(500));
    let token = client_secret(&authority).get_token([SCOPE]).await.unwrap();
    assert_eq!(token.secret().expose_secret(), "at-1-contoso");
    assert_eq!(authority.token_posts(), 2);
}

#[tokio::test(start_paused = true)]
async fn invalid_client_is_final_and_reports_the_entra_details() {
    let authority = Authority::start().await;
    authority.push_fault(Fault::Respond {
        status: 401,
        body: error_body("invalid_client", 7000215, "Invalid client secret provided."),
        headers: vec![],
    });
    let err = client_secret(&authority)
        .get_token([SCOPE])
        .await
        .unwrap_err();
    assert_eq!(authority.token_posts(), 1);
    assert!(err.is_authentication_failed());
    assert_eq!(err.status(), Some(http::StatusCode::UNAUTHORIZED));
    assert_eq!(err.error_code(), Some("invalid_client"));
    assert_eq!(err.error_codes(), [7000215]);
    assert!(err.correlation_id().is_some());
    let text = err.to_string();
    assert!(
        text.starts_with("ClientSecretCredential: Microsoft Entra ID error '(invalid_client) AADSTS7000215: Invalid client secret provided."),
        "{text}"
    );
}

/// Text the provider decoded from JSON reaches the message as one plain line: no escape
/// sequence (which would rewrite the terminal line), no bidi override (which would reverse
/// what follows), no invisible or separator character. Before, only CR and LF were replaced.
#[tokio::test(start_paused = true)]
async fn an_error_description_cannot_forge_how_the_message_reads() {
    let authority = Authority::start().await;
    let forging = "\u{1b}[2K\u{202e}\u{2028}\u{85}\u{200b}\u{2066}\u{feff}\u{e0041}\u{061c}";
    authority.push_fault(Fault::Respond {
        status: 400,
        body: error_body("invalid_request", 900144, &format!("ok{forging}liaf")),
        headers: vec![],
    });
    let err = client_secret(&authority)
        .get_token([SCOPE])
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("ok [2K liaf"), "{text:?}");
    for c in forging.chars().filter(|c| !c.is_ascii_graphic()) {
        assert!(!text.contains(c), "{c:?} in {text:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_closed_connection_is_retried() {
    let authority = Authority::start().await;
    authority.push_fault(Fault::Close);
    let token = client_secret(&authority).get_token([SCOPE]).await.unwrap();
    assert_eq!(token.secret().expose_secret(), "at-1-contoso");
    assert_eq!(authority.token_posts(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_slow_answer_times_out_and_the_retry_succeeds() {
    let authority = Authority::start().await;
    authority.push_fault(Fault::Delay(secs(60)));
    let http = http_builder(&authority)
        .timeout(Some(secs(5)))
        .build()
        .unwrap();
    let start = Instant::now();
    let token = client_secret_with(&authority, http)
        .get_token([SCOPE])
        .await
        .unwrap();
    assert!(start.elapsed() >= secs(5), "{:?}", start.elapsed());
    assert_eq!(token.secret().expose_secret(), "at-1-contoso");
    assert_eq!(authority.token_posts(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_hanging_authority_ends_in_a_timeout_error_not_a_hang() {
    let authority = Authority::start().await;
    for _ in 0..2 {
        authority.push_fault(Fault::Hang);
    }
    let http = http_builder(&authority)
        .timeout(Some(secs(5)))
        .retry(RetryOptions::default().max_retries(1))
        .build()
        .unwrap();
    let err = client_secret_with(&authority, http)
        .get_token([SCOPE])
        .await
        .unwrap_err();
    assert!(err.is_authentication_failed());
    assert!(
        err.message().contains("no complete response within 5s"),
        "{err}"
    );
    assert_eq!(authority.token_posts(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_malformed_body_is_an_unexpected_response_error_without_retry() {
    let authority = Authority::start().await;
    authority.push_fault(Fault::Body("{\"access_token\": \"half".into()));
    let err = client_secret(&authority)
        .get_token([SCOPE])
        .await
        .unwrap_err();
    assert!(
        err.message()
            .starts_with("Unexpected response from Microsoft Entra ID"),
        "{err}"
    );
    assert_eq!(authority.token_posts(), 1);
    authority.push_fault(Fault::Body("<html>gateway</html>".into()));
    let err = client_secret(&authority)
        .get_token([SCOPE])
        .await
        .unwrap_err();
    assert!(err.message().contains("<html>gateway</html>"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn an_answer_without_expiry_is_an_unexpected_response_error() {
    let authority = Authority::start().await;
    authority.set_response(TokenShape {
        omit_expiry: true,
        ..TokenShape::default()
    });
    let err = client_secret(&authority)
        .get_token([SCOPE])
        .await
        .unwrap_err();
    assert!(
        err.message().contains("neither expires_in nor expires_on"),
        "{err}"
    );
    assert!(
        !err.to_string().contains("at-1"),
        "the token is not echoed: {err}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_oversized_body_is_refused_and_not_retried() {
    let authority = Authority::start().await;
    authority.push_fault(Fault::Oversized(2 * 1024 * 1024));
    let http = http_builder(&authority)
        .max_response_bytes(64 * 1024)
        .build()
        .unwrap();
    let err = client_secret_with(&authority, http)
        .get_token([SCOPE])
        .await
        .unwrap_err();
    assert!(
        err.message().contains("larger than the 65536-byte limit"),
        "{err}"
    );
    assert_eq!(authority.token_posts(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_untrusted_certificate_fails_at_once_with_a_hint() {
    let authority = Authority::start().await;
    let start = Instant::now();
    let err = client_secret_with(
        &authority,
        HttpClient::builder()
            .timeout(None)
            .retry(RetryOptions::default().total_timeout(None))
            .build()
            .unwrap(),
    )
    .get_token([SCOPE])
    .await
    .unwrap_err();
    assert!(err.message().contains("TLS handshake failed"), "{err}");
    assert!(err.message().contains("add_root_certificates_pem"), "{err}");
    assert!(err.message().contains("UnknownIssuer"), "{err}");
    // No backoff happened: TLS failures are not retried.
    assert!(
        start.elapsed() < Duration::from_millis(100),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(authority.token_posts(), 0);
}

#[tokio::test(start_paused = true)]
async fn user_layers_wrap_the_client() {
    let authority = Authority::start().await;
    authority.push_fault(Fault::Hang);
    let http = http_builder(&authority)
        .no_retry()
        .build()
        .unwrap()
        .layer(tower::timeout::TimeoutLayer::new(secs(2)));
    let err = client_secret_with(&authority, http)
        .get_token([SCOPE])
        .await
        .unwrap_err();
    assert!(err.message().contains("request timed out"), "{err}");
}

// --- renewal, on tokio's paused clock, over real sockets ---

#[tokio::test(start_paused = true)]
async fn token_is_reused_until_five_minutes_before_expiry_then_renewed() {
    let authority = Authority::start().await;
    let credential = client_secret(&authority);
    let first = credential.get_token([SCOPE]).await.unwrap();
    tokio::time::advance(secs(3600 - 301)).await;
    assert_eq!(
        credential.get_token([SCOPE]).await.unwrap().secret(),
        first.secret()
    );
    assert_eq!(authority.token_posts(), 1);
    tokio::time::advance(secs(1)).await;
    // In the window: the current token at once, the renewal in the background.
    let current = credential.get_token([SCOPE]).await.unwrap();
    assert_eq!(current.secret(), first.secret());
    settle().await;
    assert_eq!(authority.token_posts(), 2);
    let renewed = credential.get_token([SCOPE]).await.unwrap();
    assert_eq!(renewed.secret().expose_secret(), "at-2-contoso");
}

#[tokio::test(start_paused = true)]
async fn refresh_in_from_the_answer_moves_renewal_earlier() {
    let authority = Authority::start().await;
    authority.set_response(shape(3600, Some(600)));
    let credential = client_secret(&authority);
    credential.get_token([SCOPE]).await.unwrap();
    tokio::time::advance(secs(599)).await;
    credential.get_token([SCOPE]).await.unwrap();
    settle().await;
    assert_eq!(authority.token_posts(), 1);
    tokio::time::advance(secs(1)).await;
    credential.get_token([SCOPE]).await.unwrap();
    settle().await;
    assert_eq!(authority.token_posts(), 2);
}

#[tokio::test(start_paused = true)]
async fn long_lived_tokens_are_renewed_at_half_life() {
    let authority = Authority::start().await;
    authority.set_response(shape(86_400, None));
    let credential = client_secret(&authority);
    credential.get_token([SCOPE]).await.unwrap();
    tokio::time::advance(secs(43_199)).await;
    credential.get_token([SCOPE]).await.unwrap();
    settle().await;
    assert_eq!(authority.token_posts(), 1);
    tokio::time::advance(secs(1)).await;
    credential.get_token([SCOPE]).await.unwrap();
    settle().await;
    assert_eq!(authority.token_posts(), 2);
}

#[tokio::test(start_paused = true)]
async fn failed_renewal_returns_the_valid_token_and_waits_30s_before_trying_again() {
    let authority = Authority::start().await;
    let http = http_builder(&authority).no_retry().build().unwrap();
    let credential = client_secret_with(&authority, http);
    let first = credential.get_token([SCOPE]).await.unwrap();
    tokio::time::advance(secs(3400)).await;
    authority.push_fault(Fault::ServerError(503));
    assert_eq!(
        credential.get_token([SCOPE]).await.unwrap().secret(),
        first.secret()
    );
    settle().await;
    assert_eq!(authority.token_posts(), 2);
    // The failed renewal ended 1 ms ago at most.
    tokio::time::advance(secs(29)).await;
    assert_eq!(
        credential.get_token([SCOPE]).await.unwrap().secret(),
        first.secret()
    );
    settle().await;
    assert_eq!(authority.token_posts(), 2, "no attempt within 30 s");
    tokio::time::advance(secs(1)).await;
    // The current token at once; the next attempt, which succeeds, in the background.
    assert_eq!(
        credential.get_token([SCOPE]).await.unwrap().secret(),
        first.secret()
    );
    settle().await;
    let renewed = credential.get_token([SCOPE]).await.unwrap();
    assert_eq!(renewed.secret().expose_secret(), "at-2-contoso");
    assert_eq!(authority.token_posts(), 3);
}

#[tokio::test(start_paused = true)]
async fn an_expired_token_is_never_returned() {
    let authority = Authority::start().await;
    let http = http_builder(&authority).no_retry().build().unwrap();
    let credential = client_secret_with(&authority, http);
    credential.get_token([SCOPE]).await.unwrap();
    tokio::time::advance(secs(3590)).await;
    authority.push_fault(Fault::ServerError(503));
    assert!(
        credential.get_token([SCOPE]).await.is_ok(),
        "10 s left: cached token"
    );
    tokio::time::advance(secs(10)).await;
    authority.push_fault(Fault::ServerError(503));
    let err = credential.get_token([SCOPE]).await.unwrap_err();
    assert_eq!(err.status(), Some(http::StatusCode::SERVICE_UNAVAILABLE));
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_gives_up_does_not_cancel_the_request_for_others() {
    let authority = Authority::start().await;
    authority.push_fault(Fault::Delay(secs(10)));
    let credential = client_secret(&authority);
    let impatient = tokio::time::timeout(secs(1), credential.get_token([SCOPE])).await;
    assert!(impatient.is_err());
    let patient = credential.get_token([SCOPE]).await.unwrap();
    assert_eq!(patient.secret().expose_secret(), "at-1-contoso");
    assert_eq!(authority.token_posts(), 1);
}

//! What a broken or hostile token endpoint cannot do to a credential: absurd numbers are
//! clamped (no panic), throttling is remembered, one acquisition has a deadline, and the
//! error says what kind of failure it was. All over real sockets to the loopback authority.

use std::time::Duration;

use tokio::time::Instant;
use tower_identity::{CredentialExt, HttpClient, RetryOptions};

use crate::support::authority::{Authority, Fault};
use crate::support::clock::settle;
use crate::support::creds::{SCOPE, client_secret, client_secret_with, http_builder, secs};

/// The longest lifetime the crate believes (7 days).
const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

fn respond(status: u16, headers: &[(&str, &str)]) -> Fault {
    Fault::Respond {
        status,
        body: crate::support::authority::error_body("temporarily_unavailable", 90055, "busy"),
        headers: headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

#[tokio::test(start_paused = true)]
async fn absurd_lifetimes_in_a_token_answer_are_clamped_not_a_panic() {
    let authority = Authority::start().await;
    let credential = client_secret(&authority);
    for (i, fields) in [
        r#""expires_in":1e20"#,
        r#""expires_in":18446744073709551615"#,
        r#""expires_in":"1e300""#,
        r#""expires_on":99999999999999999999"#,
        r#""expires_in":3600,"refresh_in":1e20,"ext_expires_in":18446744073709551615"#,
    ]
    .into_iter()
    .enumerate()
    {
        authority.push_fault(Fault::Body(format!(
            r#"{{"access_token":"absurd-{i}","token_type":"Bearer",{fields}}}"#
        )));
        let scope = format!("https://absurd{i}.test/.default");
        let token = credential.get_token([scope]).await.unwrap();
        assert_eq!(token.secret().expose_secret(), format!("absurd-{i}"));
        assert!(
            token.expires_in() <= WEEK,
            "{fields}: {:?}",
            token.expires_in()
        );
        assert!(token.refresh_on().is_none_or(|r| r <= token.expires_on()));
    }
}

#[tokio::test(start_paused = true)]
async fn absurd_retry_after_values_are_no_panic_and_mean_throttled_for_an_hour_at_most() {
    for (name, value) in [
        ("retry-after", "1e20"),
        ("retry-after-ms", "1e300"),
        ("x-ms-retry-after-ms", "1e25"),
        ("retry-after", "18446744073709551616"),
    ] {
        let authority = Authority::start().await;
        authority.push_fault(respond(429, &[(name, value)]));
        let err = client_secret(&authority)
            .get_token([SCOPE])
            .await
            .unwrap_err();
        assert!(err.is_throttled(), "{name}: {value}: {err}");
        let wait = err.retry_after().unwrap();
        assert!(
            wait > secs(3590) && wait <= secs(3600),
            "{name}: {value}: {wait:?}"
        );
        assert_eq!(authority.token_posts(), 1, "not retried: too long a wait");
    }
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_is_remembered_no_request_is_sent_until_it_passes() {
    let authority = Authority::start().await;
    let credential = client_secret(&authority);
    authority.push_fault(Fault::TooManyRequests {
        retry_after: "120".into(),
    });
    let err = credential.get_token([SCOPE]).await.unwrap_err();
    assert!(err.is_throttled() && err.is_transient(), "{err}");
    assert_eq!(err.retry_after(), Some(secs(120)));
    assert_eq!(err.status(), Some(http::StatusCode::TOO_MANY_REQUESTS));
    assert!(err.message().contains("Throttled"), "{err}");
    assert_eq!(authority.token_posts(), 1);

    // The next call, for any scope, fails at once with nothing sent.
    tokio::time::advance(secs(100)).await;
    let err = credential
        .get_token(["https://other.test/.default"])
        .await
        .unwrap_err();
    assert!(err.is_throttled(), "{err}");
    assert_eq!(err.retry_after(), Some(secs(20)));
    assert!(
        err.message().starts_with("throttled:") && err.message().contains("another 20 s"),
        "{err}"
    );
    assert_eq!(authority.token_posts(), 1);

    // Once it has passed, requests go out again.
    tokio::time::advance(secs(20)).await;
    let token = credential.get_token([SCOPE]).await.unwrap();
    assert_eq!(token.secret().expose_secret(), "at-1-contoso");
    assert_eq!(authority.token_posts(), 2);
}

/// A `Retry-After` the transport waits out before retrying holds back the credential's other
/// requests to that endpoint meanwhile: they are answered throttled at once, nothing sent,
/// rather than each sent into the throttle and waited out in turn.
#[tokio::test(start_paused = true)]
async fn while_a_retry_waits_out_a_retry_after_other_scopes_are_throttled_at_once() {
    let authority = Authority::start().await;
    let credential = client_secret(&authority);
    authority.push_fault(Fault::TooManyRequests {
        retry_after: "20".into(),
    });
    let started = Instant::now();
    let first = tokio::spawn({
        let credential = credential.clone();
        async move { credential.get_token([SCOPE]).await }
    });
    // The 429 has come back; the retry loop waits out its 20 s.
    settle().await;
    assert_eq!(authority.token_posts(), 1);
    assert!(!first.is_finished());

    let asked = Instant::now();
    let err = credential
        .get_token(["https://graph.test/.default"])
        .await
        .unwrap_err();
    assert_eq!(asked.elapsed(), Duration::ZERO, "answered at once");
    assert!(err.is_throttled() && err.is_transient(), "{err}");
    let wait = err.retry_after().unwrap();
    assert!(wait > secs(19) && wait <= secs(20), "{wait:?}");
    assert!(
        err.message().starts_with("throttled:") && err.message().contains("HTTP 429"),
        "{err}"
    );
    assert_eq!(authority.token_posts(), 1, "nothing sent while throttled");

    // The retry goes out once the wait has passed, and so do other requests.
    let token = first.await.unwrap().unwrap();
    assert_eq!(token.secret().expose_secret(), "at-1-contoso");
    assert_eq!(started.elapsed(), secs(20));
    assert_eq!(authority.token_posts(), 2);
    credential
        .get_token(["https://graph.test/.default"])
        .await
        .unwrap();
    assert_eq!(authority.token_posts(), 3);
}

/// A request already in its own retry loop when another is asked to wait learns of the wait
/// too: it does not send into it. B (another scope, same tenant) is in flight when A gets a
/// 429 asking for 20 s; B's own 503, 0.1 s later, asks for no wait, and its backoff (~0.8 s)
/// would have sent it again at ~0.9 s, into the throttle. It goes out at 20 s, with A's retry.
#[tokio::test(start_paused = true)]
async fn a_request_already_retrying_does_not_send_into_a_wait_another_was_asked_for() {
    use std::sync::Arc;
    let authority = Authority::start().await;
    let credential = client_secret(&authority);
    let gate = Arc::new(tokio::sync::Notify::new());
    // B's first attempt: held at the authority, then a 503 without a Retry-After.
    authority.push_fault(Fault::HoldThen(
        Arc::clone(&gate),
        Box::new(Fault::ServerError(503)),
    ));
    // A's first attempt: a 429 asking for 20 s.
    authority.push_fault(Fault::TooManyRequests {
        retry_after: "20".into(),
    });
    const B_SCOPE: &str = "https://graph.test/.default";
    let b = tokio::spawn({
        let credential = credential.clone();
        async move { credential.get_token([B_SCOPE]).await }
    });
    settle().await;
    assert_eq!(authority.token_posts(), 1, "B's request is held");
    let a = tokio::spawn({
        let credential = credential.clone();
        async move { credential.get_token([SCOPE]).await }
    });
    settle().await;
    assert_eq!(authority.token_posts(), 2, "A has its 429");
    let throttled_at = authority.requests()[1].at;

    tokio::time::advance(Duration::from_millis(100)).await;
    gate.notify_one();
    let b = b.await.unwrap().unwrap();
    let a = a.await.unwrap().unwrap();
    assert!(a.secret().expose_secret().starts_with("at-"));
    assert!(b.secret().expose_secret().starts_with("at-"));

    let b_sent: Vec<Instant> = authority
        .requests()
        .iter()
        .filter(|r| r.field("scope") == Some(B_SCOPE))
        .map(|r| r.at)
        .collect();
    assert_eq!(b_sent.len(), 2, "B's attempt and its retry");
    let resent_after = b_sent[1] - throttled_at;
    assert!(
        resent_after >= secs(20),
        "B re-sent {resent_after:?} after A's 429"
    );
    assert_eq!(authority.token_posts(), 4);
}

/// The other order: B is already sleeping out its own backoff (a 503 without a `Retry-After`,
/// ~0.8 s) when A is asked to wait 20 s. B's retry waits for the end of A's wait too. Before,
/// the loop asked about a hold only before its own sleep, and B went out at ~0.8 s, into the
/// throttle.
#[tokio::test(start_paused = true)]
async fn a_request_sleeping_out_its_backoff_does_not_send_into_a_wait_asked_for_meanwhile() {
    let authority = Authority::start().await;
    let credential = client_secret(&authority);
    authority.push_fault(Fault::ServerError(503));
    const B_SCOPE: &str = "https://graph.test/.default";
    let b = tokio::spawn({
        let credential = credential.clone();
        async move { credential.get_token([B_SCOPE]).await }
    });
    settle().await;
    assert_eq!(authority.token_posts(), 1, "B has its 503");
    authority.push_fault(Fault::TooManyRequests {
        retry_after: "20".into(),
    });
    let a = tokio::spawn({
        let credential = credential.clone();
        async move { credential.get_token([SCOPE]).await }
    });
    settle().await;
    assert_eq!(authority.token_posts(), 2, "A has its 429");
    let throttled_at = authority.requests()[1].at;
    let b = b.await.unwrap().unwrap();
    a.await.unwrap().unwrap();
    assert!(b.secret().expose_secret().starts_with("at-"));
    let b_sent: Vec<Instant> = authority
        .requests()
        .iter()
        .filter(|r| r.field("scope") == Some(B_SCOPE))
        .map(|r| r.at)
        .collect();
    assert_eq!(b_sent.len(), 2, "B's attempt and its retry");
    let resent_after = b_sent[1] - throttled_at;
    assert!(
        resent_after >= secs(20),
        "B re-sent {resent_after:?} after A's 429"
    );
}

/// Only throttling and unavailability (the statuses the transport retries) are remembered: a
/// refusal carrying a `Retry-After` stays a final, non-transient error and locks nothing out.
#[tokio::test(start_paused = true)]
async fn a_refusal_with_a_retry_after_is_not_throttling() {
    let authority = Authority::start().await;
    let credential = client_secret(&authority);
    let refusal = || Fault::Respond {
        status: 400,
        body: crate::support::authority::error_body(
            "invalid_client",
            7000215,
            "Invalid client secret provided.",
        ),
        headers: vec![("retry-after".to_owned(), "120".to_owned())],
    };
    for posts in 1..=2 {
        authority.push_fault(refusal());
        let err = credential.get_token([SCOPE]).await.unwrap_err();
        assert_eq!(err.error_code(), Some("invalid_client"), "{err}");
        assert!(!err.is_transient() && !err.is_throttled(), "{err}");
        assert_eq!(err.retry_after(), None, "{err}");
        assert_eq!(authority.token_posts(), posts);
    }
}

/// Entra throttles per application and tenant: a wait one tenant's endpoint asked for does not
/// hold back requests to another tenant.
#[tokio::test(start_paused = true)]
async fn a_wait_one_tenant_asked_for_does_not_hold_back_another() {
    use crate::support::creds::{CLIENT_ID, CLIENT_SECRET, TENANT, http};
    use tower_identity::{ClientSecretCredential, TokenRequest};
    let authority = Authority::start().await;
    let credential = ClientSecretCredential::builder(TENANT, CLIENT_ID, CLIENT_SECRET)
        .authority_host(authority.url())
        .http_client(http(&authority))
        .additionally_allowed_tenants(["fabrikam"])
        .build()
        .unwrap();
    authority.push_fault(Fault::TooManyRequests {
        retry_after: "600".into(),
    });
    let err = credential.get_token([SCOPE]).await.unwrap_err();
    assert!(err.is_throttled(), "{err}");
    let other = credential
        .get_token_with(TokenRequest::new([SCOPE]).with_tenant_id("fabrikam"))
        .await
        .unwrap();
    assert_eq!(other.secret().expose_secret(), "at-1-fabrikam");
    assert_eq!(authority.token_posts(), 2);
    // The throttled tenant still waits.
    let err = credential
        .get_token(["https://other.test/.default"])
        .await
        .unwrap_err();
    assert!(err.is_throttled(), "{err}");
    assert_eq!(authority.token_posts(), 2);
}

#[tokio::test(start_paused = true)]
async fn while_throttled_a_valid_cached_token_is_still_served() {
    let authority = Authority::start().await;
    let credential = client_secret(&authority);
    let first = credential.get_token([SCOPE]).await.unwrap();
    // In the refresh window the renewal meets a 503 asking for 10 minutes.
    tokio::time::advance(secs(3300)).await;
    authority.push_fault(respond(503, &[("retry-after", "600")]));
    let token = credential.get_token([SCOPE]).await.unwrap();
    assert_eq!(token.secret(), first.secret());
    settle().await;
    assert_eq!(authority.token_posts(), 2);
    // Every call until expiry gets the cached token; none reaches the authority.
    for _ in 0..29 {
        tokio::time::advance(secs(10)).await;
        let token = credential.get_token([SCOPE]).await.unwrap();
        assert_eq!(token.secret(), first.secret());
    }
    assert_eq!(authority.token_posts(), 2);
    // Expired and still throttled: the throttled error, at once.
    tokio::time::advance(secs(10)).await;
    let err = credential.get_token([SCOPE]).await.unwrap_err();
    assert!(err.is_throttled(), "{err}");
    assert_eq!(authority.token_posts(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_hanging_authority_costs_one_deadline_and_the_error_counts_the_attempts() {
    let authority = Authority::start().await;
    for _ in 0..10 {
        authority.push_fault(Fault::Hang);
    }
    let http = http_builder(&authority)
        .timeout(Some(secs(10)))
        .retry(RetryOptions::default().total_timeout(Some(secs(30))))
        .build()
        .unwrap();
    let started = Instant::now();
    let err = client_secret_with(&authority, http)
        .get_token([SCOPE])
        .await
        .unwrap_err();
    assert_eq!(started.elapsed(), secs(30), "the deadline, not 4 × 10 s");
    assert!(err.is_timeout() && err.is_transient(), "{err}");
    assert!(!err.is_connect());
    // 10 s, backoff ~0.8 s, 10 s, backoff ~1.6 s, then the deadline cuts the third.
    assert_eq!(authority.token_posts(), 3);
    let message = err.message();
    assert!(message.contains("total deadline of 30s"), "{message}");
    assert!(message.contains("(3 attempts over 30.0 s)"), "{message}");
}

#[tokio::test(start_paused = true)]
async fn the_default_client_has_a_total_deadline() {
    let authority = Authority::start().await;
    for _ in 0..10 {
        authority.push_fault(Fault::Hang);
    }
    // The default settings but for the test CA.
    let http = HttpClient::builder()
        .add_root_certificates_pem(authority.ca_pem())
        .build()
        .unwrap();
    let started = Instant::now();
    let err = client_secret_with(&authority, http)
        .get_token([SCOPE])
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(started.elapsed() <= secs(30), "{:?}", started.elapsed());
}

#[tokio::test(start_paused = true)]
async fn server_errors_that_outlast_the_retries_say_how_many_attempts() {
    let authority = Authority::start().await;
    for _ in 0..4 {
        authority.push_fault(Fault::ServerError(503));
    }
    let err = client_secret(&authority)
        .get_token([SCOPE])
        .await
        .unwrap_err();
    assert!(err.is_transient() && !err.is_throttled(), "{err}");
    assert!(err.message().contains("(4 attempts over"), "{err}");
}

#[tokio::test]
async fn a_refused_connection_is_a_transient_connect_error() {
    // A port nobody listens on: bind, note the port, close.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let authority = Authority::start().await;
    let credential = tower_identity::ClientSecretCredential::builder(
        crate::support::creds::TENANT,
        crate::support::creds::CLIENT_ID,
        crate::support::creds::CLIENT_SECRET,
    )
    .authority_host(format!("https://127.0.0.1:{port}"))
    .http_client(
        http_builder(&authority)
            .retry(
                RetryOptions::default()
                    .max_retries(1)
                    .initial_backoff(Duration::from_millis(1)),
            )
            .build()
            .unwrap(),
    )
    .build()
    .unwrap();
    let err = credential.get_token([SCOPE]).await.unwrap_err();
    assert!(err.is_connect() && err.is_transient(), "{err}");
    assert!(!err.is_timeout() && !err.is_throttled());
    // The transport error is reachable as the source, with its kind.
    let source = std::error::Error::source(&err)
        .and_then(|s| s.downcast_ref::<tower_identity::transport::TransportError>())
        .expect("a TransportError source");
    assert!(source.is_connect());
    assert_eq!(source.attempts(), 2);
}

#[tokio::test]
async fn an_untrusted_certificate_and_a_refusal_are_not_transient() {
    let authority = Authority::start().await;
    let untrusted = client_secret_with(&authority, HttpClient::builder().build().unwrap());
    let err = untrusted.get_token([SCOPE]).await.unwrap_err();
    assert!(
        !err.is_transient() && !err.is_timeout() && !err.is_connect(),
        "{err}"
    );
    let source = std::error::Error::source(&err)
        .and_then(|s| s.downcast_ref::<tower_identity::transport::TransportError>())
        .expect("a TransportError source");
    assert!(source.is_tls());

    authority.push_fault(Fault::Respond {
        status: 401,
        body: crate::support::authority::error_body("invalid_client", 7000215, "bad secret"),
        headers: vec![],
    });
    let err = client_secret(&authority)
        .get_token([SCOPE])
        .await
        .unwrap_err();
    assert!(!err.is_transient() && !err.is_throttled(), "{err}");
}

#[tokio::test]
async fn a_timeout_layer_of_the_users_own_is_a_timeout() {
    let authority = Authority::start().await;
    authority.push_fault(Fault::Hang);
    let http = http_builder(&authority).no_retry().build().unwrap().layer(
        tower::timeout::TimeoutLayer::new(Duration::from_millis(200)),
    );
    let err = client_secret_with(&authority, http)
        .get_token([SCOPE])
        .await
        .unwrap_err();
    assert!(err.is_timeout() && err.is_transient(), "{err}");
}

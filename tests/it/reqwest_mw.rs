//! The reqwest-middleware flavour: the same token, renewal and challenge handling as the
//! tower layer, over a real reqwest client.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::StatusCode;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use tower_identity::CredentialError;
use tower_identity::bearer::{BearerError, BearerTokenLayer};

use crate::support::authority::Authority;
use crate::support::client::reqwest_client;
use crate::support::creds::{SCOPE, client_secret, counted};
use crate::support::resource::{Answer, Resource, revocation_claims};

fn with_bearer(layer: &BearerTokenLayer) -> ClientWithMiddleware {
    ClientBuilder::new(reqwest_client())
        .with(layer.middleware())
        .build()
}

fn layer(authority: &Authority) -> BearerTokenLayer {
    BearerTokenLayer::new(client_secret(authority), [SCOPE])
}

fn cae_layer(authority: &Authority) -> BearerTokenLayer {
    BearerTokenLayer::builder(client_secret(authority), [SCOPE])
        .enable_cae(true)
        .build()
}

#[tokio::test]
async fn injects_the_token_and_shares_it_with_the_tower_layer() {
    let (authority, resource) = (Authority::start().await, Resource::start().await);
    let layer = layer(&authority);
    let client = with_bearer(&layer);
    let response = client
        .get(format!("{}/a", resource.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(resource.requests()[0].bearer(), Some("at-1-contoso"));
    // A second client from the same layer, and the layer itself, reuse the token.
    with_bearer(&layer)
        .get(format!("{}/b", resource.url()))
        .send()
        .await
        .unwrap();
    let mut tower = tower::ServiceBuilder::new().layer(layer.clone()).service(
        crate::support::client::hyper_client::<http_body_util::Full<Bytes>>(),
    );
    let request = http::Request::get(format!("{}/c", resource.url()))
        .body(http_body_util::Full::default())
        .unwrap();
    let response = tower::ServiceExt::oneshot(&mut tower, request)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(authority.token_posts(), 1);
}

#[tokio::test]
async fn a_claims_challenge_is_answered_and_the_body_sent_again() {
    let (authority, resource) = (Authority::start().await, Resource::start().await);
    resource.push(Answer::Cae {
        claims: revocation_claims(1),
    });
    let client = with_bearer(&cae_layer(&authority));
    let response = client
        .post(format!("{}/upload", resource.url()))
        .body(vec![9u8; 5000])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen = resource.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].bearer(), Some("at-2-contoso-claims"));
    assert_eq!(seen[0].body, seen[1].body);
    assert_eq!(seen[1].body.len(), 5000);
}

#[tokio::test]
async fn a_claims_challenge_the_credential_cannot_satisfy_is_its_error() {
    let (authority, resource) = (Authority::start().await, Resource::start().await);
    let client = with_bearer(&cae_layer(&authority));
    let warm = client.get(format!("{}/warm", resource.url())).send().await;
    assert_eq!(warm.unwrap().status(), StatusCode::OK);
    resource.push(Answer::Cae {
        claims: revocation_claims(1),
    });
    authority.push_fault(crate::support::authority::Fault::Respond {
        status: 400,
        body: crate::support::authority::error_body("invalid_grant", 50076, "MFA required"),
        headers: vec![],
    });
    let err = client
        .get(format!("{}/a", resource.url()))
        .send()
        .await
        .unwrap_err();
    let reqwest_middleware::Error::Middleware(err) = err else {
        panic!("a middleware error: {err}");
    };
    let err = err
        .downcast_ref::<CredentialError>()
        .expect("the credential's error");
    assert_eq!(err.error_code(), Some("invalid_grant"));
    assert!(err.message().contains("claims challenge"), "{err}");
    assert_eq!(authority.token_posts(), 2);
}

/// A streamed body cannot be cloned, so its request cannot be sent again: its 401 comes back
/// once the claims flight has ended, whatever its outcome. A credential that cannot get the
/// token makes no error of it; one that can (after 3 s here) has stored the token by then,
/// so the caller's retry right after the 401 carries it instead of meeting the challenge again.
/// The wait is bounded (5 s): a slower flight runs on for the requests after it.
#[tokio::test(start_paused = true)]
async fn a_body_that_cannot_be_cloned_gets_its_401_after_the_claims_flight_whatever_its_outcome() {
    let (authority, resource) = (Authority::start().await, Resource::start().await);
    let client = with_bearer(&cae_layer(&authority));
    let warm = client.get(format!("{}/warm", resource.url())).send().await;
    assert_eq!(warm.unwrap().status(), StatusCode::OK);
    let stream = || {
        let body = http_body_util::Full::new(Bytes::from_static(b"streamed"));
        client
            .post(format!("{}/stream", resource.url()))
            .body(reqwest::Body::wrap(body))
            .send()
    };

    // The credential fails: the 401, not its error.
    authority.push_fault(crate::support::authority::Fault::Respond {
        status: 400,
        body: crate::support::authority::error_body("invalid_grant", 50076, "MFA required"),
        headers: vec![],
    });
    resource.push(Answer::Cae {
        claims: revocation_claims(1),
    });
    let response = stream().await.expect("the 401, not the credential's error");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(authority.token_posts(), 2);
    assert_eq!(resource.count(), 2, "sent once");

    // The credential gets the token after 3 s: the 401 comes then, and the retry carries it.
    let wait = std::time::Duration::from_secs(3);
    authority.push_fault(crate::support::authority::Fault::Delay(wait));
    resource.push(Answer::Cae {
        claims: revocation_claims(2),
    });
    let start = tokio::time::Instant::now();
    let response = stream().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(start.elapsed() >= wait, "the flight was waited for");
    assert_eq!(authority.token_posts(), 3);
    let retry = stream().await.unwrap();
    assert_eq!(retry.status(), StatusCode::OK);
    let seen = resource.requests();
    assert_eq!(seen.len(), 4, "the first attempt was not sent again");
    assert_eq!(seen[3].bearer(), Some("at-2-contoso-claims"));
    assert_eq!(seen[3].body, &b"streamed"[..]);

    // The credential takes 20 s: the 401 after 5 s; the token is had later all the same.
    authority.push_fault(crate::support::authority::Fault::Delay(
        std::time::Duration::from_secs(20),
    ));
    resource.push(Answer::Cae {
        claims: revocation_claims(3),
    });
    let start = tokio::time::Instant::now();
    let response = stream().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let waited = start.elapsed();
    assert!(
        waited >= std::time::Duration::from_secs(5) && waited < std::time::Duration::from_secs(20),
        "bounded: {waited:?}"
    );
    tokio::time::sleep(std::time::Duration::from_secs(16)).await;
    assert_eq!(authority.token_posts(), 4);
}

#[tokio::test]
async fn plain_http_is_refused_and_credential_errors_come_through() {
    let (authority, resource) = (Authority::start().await, Resource::start_http().await);
    let err = with_bearer(&layer(&authority))
        .get(format!("{}/", resource.url()))
        .send()
        .await
        .unwrap_err();
    let reqwest_middleware::Error::Middleware(err) = err else {
        panic!("expected a middleware error, got {err:?}")
    };
    assert!(
        err.downcast_ref::<BearerError>()
            .is_some_and(BearerError::is_insecure),
        "{err}"
    );
    assert_eq!(resource.count(), 0);

    let https = Resource::start().await;
    authority.push_fault(crate::support::authority::Fault::Respond {
        status: 401,
        body: crate::support::authority::error_body("invalid_client", 7000215, "bad secret"),
        headers: vec![],
    });
    let err = with_bearer(&layer(&authority))
        .get(https.url())
        .send()
        .await
        .unwrap_err();
    let reqwest_middleware::Error::Middleware(err) = err else {
        panic!("expected a middleware error")
    };
    assert_eq!(
        err.downcast_ref::<CredentialError>().unwrap().error_codes(),
        [7000215]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_cold_requests_make_one_token_post() {
    let (authority, resource) = (Authority::start().await, Resource::start().await);
    authority.push_fault(crate::support::authority::Fault::Delay(
        std::time::Duration::from_millis(200),
    ));
    let client = with_bearer(&layer(&authority));
    let tasks: Vec<_> = (0..1000)
        .map(|i| {
            let request = client.get(format!("{}/r/{i}", resource.url()));
            tokio::spawn(async move { request.send().await.map(|r| r.status()) })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), StatusCode::OK);
    }
    assert_eq!(authority.token_posts(), 1);
}

/// A plain 401 is returned, and the token it rejected is dropped: the next request asks the
/// credential again (which answers from its own cache).
#[tokio::test]
async fn a_plain_401_is_returned_and_drops_the_rejected_token() {
    let (authority, resource) = (Authority::start().await, Resource::start().await);
    resource.push(Answer::Unauthorized {
        www_authenticate: Some(r#"Bearer error="invalid_token""#.into()),
        body: String::new(),
    });
    let (credential, calls) = counted(client_secret(&authority));
    let client = with_bearer(&BearerTokenLayer::new(credential, [SCOPE]));
    let send = async |path: &str| {
        let url = format!("{}{path}", resource.url());
        client.get(url).send().await.unwrap().status()
    };
    assert_eq!(send("/rejected").await, StatusCode::UNAUTHORIZED);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(send("/next").await, StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 2, "asked again");
    assert_eq!(send("/then").await, StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// With CAE, reqwest follows a 307 to another origin inside its client (dropping
/// `Authorization`), and that origin answers 401 with a claims challenge: the 401 comes back
/// untouched, no token is asked for its claims and the token stays (the next request carries
/// it, the credential not asked). Before, the middleware asked for a token with the other
/// origin's claims and re-sent to the first origin.
#[tokio::test]
async fn a_401_from_the_origin_a_redirect_led_to_is_returned_and_the_token_kept() {
    let authority = Authority::start().await;
    let (origin, other) = (Resource::start().await, Resource::start().await);
    origin.push(Answer::Status {
        status: 307,
        headers: vec![("location".into(), format!("{}/landing", other.url()))],
        body: String::new(),
    });
    other.push(Answer::Cae {
        claims: revocation_claims(1),
    });
    let (credential, calls) = counted(client_secret(&authority));
    let layer = BearerTokenLayer::builder(credential, [SCOPE])
        .enable_cae(true)
        .build();
    let client = with_bearer(&layer);
    let response = client
        .get(format!("{}/moved", origin.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(other.requests()[0].authorization, None);
    assert_eq!(origin.count(), 1, "not re-sent");
    assert_eq!(authority.token_posts(), 1, "no claims token");

    let response = client
        .get(format!("{}/next", origin.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(origin.requests()[1].bearer(), Some("at-1-contoso"));
    assert_eq!(calls.load(Ordering::SeqCst), 1, "token kept");
}

/// A URL longer than `http::Uri` takes (64 KiB): the refusal still names its scheme and host.
#[tokio::test]
async fn plain_http_refused_names_the_url_even_past_what_http_uri_parses() {
    let (authority, resource) = (Authority::start().await, Resource::start_http().await);
    let url = format!("{}/{}", resource.url(), "a".repeat(70_000));
    assert!(url.parse::<http::Uri>().is_err());
    let err = with_bearer(&layer(&authority))
        .get(url)
        .send()
        .await
        .unwrap_err();
    let reqwest_middleware::Error::Middleware(err) = err else {
        panic!("expected a middleware error, got {err:?}")
    };
    let err = err.downcast_ref::<BearerError>().expect("a BearerError");
    assert!(err.is_insecure());
    let message = err.to_string();
    assert!(message.contains("over http://127.0.0.1: "), "{message}");
    assert_eq!(resource.count(), 0);
}

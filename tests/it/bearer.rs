//! BearerTokenLayer over real sockets: a hyper-util client → the layer → the loopback
//! resource, with tokens from ClientSecretCredential and the loopback authority.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use tokio::time::Instant;
use tower::util::BoxCloneService;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_http::follow_redirect::FollowRedirectLayer;
use tower_identity::bearer::{BearerError, BearerToken, BearerTokenLayer, BearerTokenLayerBuilder};
use tower_identity::{BoxCredential, ClientSecretCredential, CredentialError};

use crate::support::authority::{Authority, Fault};
use crate::support::client::{HyperClient, h1_client, h2_client, hyper_client};
use crate::support::creds::{
    SCOPE, client_secret, client_secret_with, counted, http_builder, secs,
};
use crate::support::resource::{Answer, Mode, Resource, cae_challenge, revocation_claims};

type Bearer<B> = BearerToken<HyperClient<B>>;

/// The layer's settings for the loopback authority, without jitter.
fn settings(authority: &Authority) -> BearerTokenLayerBuilder {
    BearerTokenLayer::builder(client_secret(authority), [SCOPE]).refresh_jitter(Duration::ZERO)
}

fn layer(authority: &Authority) -> BearerTokenLayer {
    settings(authority).build()
}

fn bearer<B>(layer: &BearerTokenLayer) -> Bearer<B>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    ServiceBuilder::new()
        .layer(layer.clone())
        .service(hyper_client())
}

fn get(resource: &Resource, path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("{}{path}", resource.url()))
        .body(Full::default())
        .unwrap()
}

async fn call<B>(service: &mut Bearer<B>, request: Request<B>) -> http::Response<Bytes>
where
    B: tower_identity::bearer::RetryBody + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let response = service.ready().await.unwrap().call(request).await.unwrap();
    let (parts, body) = response.into_parts();
    http::Response::from_parts(parts, body.collect().await.unwrap().to_bytes())
}

#[tokio::test]
async fn injects_the_token_as_a_bearer_header() {
    let (authority, resource) = (Authority::start().await, Resource::start().await);
    let mut service = bearer(&layer(&authority));
    let response = call(&mut service, get(&resource, "/a")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        resource.requests()[0].authorization.as_deref(),
        Some("Bearer at-1-contoso")
    );
    assert_eq!(authority.requests()[0].field("scope"), Some(SCOPE));
    // The token is reused.
    call(&mut service, get(&resource, "/b")).await;
    assert_eq!(authority.token_posts(), 1);
}

#[tokio::test]
async fn the_authorization_header_is_marked_sensitive() {
    let authority = Authority::start().await;
    let inner = tower::service_fn(|request: Request<Full<Bytes>>| async move {
        let header = request.headers().get(http::header::AUTHORIZATION).cloned();
        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(
            if header.is_some_and(|h| h.is_sensitive()) {
                "sensitive"
            } else {
                "plain"
            },
        ))))
    });
    let service = layer(&authority).layer(inner);
    let response = service
        .oneshot(
            Request::get("https://resource.test/")
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        "sensitive"
    );
}

#[tokio::test]
async fn plain_http_is_refused_unless_explicitly_allowed() {
    let (authority, resource) = (Authority::start().await, Resource::start_http().await);
    let mut strict = bearer::<Full<Bytes>>(&layer(&authority));
    let err = strict
        .ready()
        .await
        .unwrap()
        .call(get(&resource, "/"))
        .await
        .unwrap_err();
    let err = err.downcast_ref::<BearerError>().expect("a BearerError");
    assert!(err.is_insecure());
    assert!(err.to_string().contains("allow_insecure_http"), "{err}");
    assert_eq!(
        (resource.count(), authority.token_posts()),
        (0, 0),
        "nothing was sent"
    );

    let mut relaxed =
        bearer::<Full<Bytes>>(&settings(&authority).allow_insecure_http(true).build());
    let response = call(&mut relaxed, get(&resource, "/")).await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_credential_error_reaches_the_caller_as_is() {
    let (authority, resource) = (Authority::start().await, Resource::start().await);
    authority.push_fault(Fault::Respond {
        status: 400,
        body: crate::support::authority::error_body("invalid_scope", 70011, "bad scope"),
        headers: vec![],
    });
    let mut service = bearer::<Full<Bytes>>(&layer(&authority));
    let err = service
        .ready()
        .await
        .unwrap()
        .call(get(&resource, "/"))
        .await
        .unwrap_err();
    let err = err
        .downcast_ref::<CredentialError>()
        .expect("a CredentialError");
    assert_eq!(err.error_codes(), [70011]);
    assert_eq!(resource.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_cold_requests_make_one_token_post() {
    let (authority, resource) = (Authority::start().await, Resource::start().await);
    authority.push_fault(Fault::Delay(Duration::from_millis(300)));
    let service = ServiceBuilder::new()
        .layer(layer(&authority))
        .service(h2_client::<Full<Bytes>>());
    let url = resource.url();
    let tasks: Vec<_> = (0..10_000)
        .map(|i| {
            let service = service.clone();
            let request = Request::get(format!("{url}/r/{i}"))
                .body(Full::default())
                .unwrap();
            tokio::spawn(async move {
                let response = service.oneshot(request).await?;
                let status = response.status();
                // Read the body, as a client does: a dropped stream is a reset on HTTP/2.
                response.into_body().collect().await?;
                Ok::<_, tower_identity::BoxError>(status)
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), StatusCode::OK);
    }
    assert_eq!(authority.token_posts(), 1);
    assert_eq!(resource.count(), 10_000);
    assert!(
        resource
            .accepted_tokens()
            .iter()
            .all(|t| t == "at-1-contoso")
    );
}

#[tokio::test]
async fn clones_and_services_of_one_layer_share_the_token() {
    let (authority, resource) = (Authority::start().await, Resource::start().await);
    let layer = layer(&authority);
    let mut a = bearer::<Full<Bytes>>(&layer);
    let mut b = a.clone();
    let mut c = bearer::<Full<Bytes>>(&layer);
    for service in [&mut a, &mut b, &mut c] {
        assert_eq!(
            call(service, get(&resource, "/")).await.status(),
            StatusCode::OK
        );
    }
    assert_eq!(authority.token_posts(), 1);
}

#[tokio::test]
async fn separately_built_layers_share_nothing() {
    let (authority, resource) = (Authority::start().await, Resource::start().await);
    let (credential, calls) = counted(client_secret(&authority));
    let settings = || BearerTokenLayer::builder(credential.clone(), [SCOPE]);
    let (one, other) = (settings().build(), settings().build());
    let (mut a, mut b) = (bearer::<Full<Bytes>>(&one), bearer::<Full<Bytes>>(&other));
    let (mut a2, mut b2) = (a.clone(), bearer::<Full<Bytes>>(&other.clone()));
    for service in [&mut a, &mut b, &mut a2, &mut b2] {
        assert_eq!(
            call(service, get(&resource, "/")).await.status(),
            StatusCode::OK
        );
    }
    // Each built layer asked the credential once (which answered the second from its cache).
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(authority.token_posts(), 1);
}

#[test]
fn the_response_future_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    let authority_url = "https://127.0.0.1:1";
    let credential = ClientSecretCredential::builder("t", "c", "s")
        .authority_host(authority_url)
        .build()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let layer = BearerTokenLayer::builder(credential, [SCOPE])
        .enable_cae(true)
        .build();
    let request = || {
        Request::get("https://x.test/")
            .body(Full::default())
            .unwrap()
    };
    let mut service: Bearer<Full<Bytes>> = layer.layer(hyper_client());
    let future = service.call(request());
    assert_send(&future);
    // Over an inner service that is `Send` but not `Sync`, as tower's `BoxCloneService` is.
    let mut boxed = layer.layer(BoxCloneService::new(hyper_client::<Full<Bytes>>()));
    assert_send(&boxed);
    assert_send(&boxed.call(request()));
}

// --- the refresh window, on tokio's paused clock ---

/// A token living 3600 s, renewed from 3300 s (no jitter), a credential without retries.
async fn window_setup() -> (Authority, Resource, Bearer<Full<Bytes>>) {
    let (authority, resource) = (Authority::start().await, Resource::start().await);
    let credential = client_secret_with(
        &authority,
        http_builder(&authority).no_retry().build().unwrap(),
    );
    let layer = BearerTokenLayer::builder(credential, [SCOPE])
        .refresh_jitter(Duration::ZERO)
        .build();
    let mut service = bearer(&layer);
    call(&mut service, get(&resource, "/warm")).await;
    (authority, resource, service)
}

async fn burst(service: &Bearer<Full<Bytes>>, resource: &Resource, n: usize) -> Vec<StatusCode> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let request = get(resource, &format!("/burst/{i}"));
            let service = service.clone();
            tokio::spawn(async move {
                let response = service.oneshot(request).await.unwrap();
                let status = response.status();
                response.into_body().collect().await.unwrap();
                status
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    statuses
}

#[tokio::test(start_paused = true)]
async fn in_the_refresh_window_one_renewal_runs_and_no_request_waits_for_it() {
    let (authority, resource, service) = window_setup().await;
    tokio::time::advance(secs(3300)).await;
    // The renewal hangs: any request that waited for it would never finish.
    authority.push_fault(Fault::Hang);
    let statuses = burst(&service, &resource, 200).await;
    assert!(statuses.iter().all(|s| *s == StatusCode::OK));
    assert_eq!(authority.token_posts(), 2, "exactly one renewal");
    assert_eq!(authority.in_flight(), 1, "and it is still running");
    assert!(
        resource
            .accepted_tokens()
            .iter()
            .all(|t| t == "at-1-contoso")
    );
}

/// A `refresh_window` of 600 s over a credential of this crate, whose own window is 300 s:
/// 590 s before expiry the layer renews and the credential asks the authority then, so the
/// requests after it carry the new token.
#[tokio::test(start_paused = true)]
async fn a_refresh_window_wider_than_the_credentials_renews_that_early() {
    let (authority, resource) = (Authority::start().await, Resource::start().await);
    let layer = settings(&authority)
        .refresh_window(Duration::from_secs(600))
        .build();
    let mut service = bearer(&layer);
    call(&mut service, get(&resource, "/warm")).await;
    tokio::time::advance(secs(3600 - 590)).await;
    call(&mut service, get(&resource, "/starts-the-renewal")).await;
    crate::support::clock::settle().await;
    assert_eq!(authority.token_posts(), 2, "renewed 590 s before expiry");
    call(&mut service, get(&resource, "/after")).await;
    let tokens = resource.accepted_tokens();
    assert_eq!(
        tokens.last().map(String::as_str),
        Some("at-2-contoso"),
        "{tokens:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_slow_renewal_delays_no_request_and_its_token_is_used_once_ready() {
    let (authority, resource, service) = window_setup().await;
    tokio::time::advance(secs(3300)).await;
    authority.push_fault(Fault::Delay(Duration::from_millis(500)));
    let started = Instant::now();
    let statuses = burst(&service, &resource, 100).await;
    assert!(statuses.iter().all(|s| *s == StatusCode::OK));
    // Every request of the burst used the old token: none waited for the renewal.
    assert!(
        resource
            .accepted_tokens()
            .iter()
            .all(|t| t == "at-1-contoso")
    );
    assert_eq!(authority.token_posts(), 2);
    tokio::time::sleep_until(started + Duration::from_millis(600)).await;
    burst(&service, &resource, 10).await;
    let tokens = resource.accepted_tokens();
    assert!(
        tokens[tokens.len() - 10..]
            .iter()
            .all(|t| t == "at-2-contoso"),
        "{tokens:?}"
    );
    assert_eq!(authority.token_posts(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_failing_authority_leaves_requests_on_the_old_token_until_it_expires() {
    let (authority, resource, service) = window_setup().await;
    for _ in 0..100 {
        authority.push_fault(Fault::ServerError(503));
    }
    tokio::time::advance(secs(3300)).await;
    // Through the 300 s window, a request every 10 s: all served with the old token.
    for _ in 0..30 {
        assert!(
            burst(&service, &resource, 3)
                .await
                .iter()
                .all(|s| *s == StatusCode::OK)
        );
        tokio::time::advance(secs(10)).await;
    }
    assert!(
        resource
            .accepted_tokens()
            .iter()
            .all(|t| t == "at-1-contoso")
    );
    // One attempt at 3300 s, then one per 30 s.
    assert_eq!(authority.token_posts(), 1 + 10);
    // Expired: now requests fail with the credential's error instead of an expired token.
    let mut service = service;
    let err = service
        .ready()
        .await
        .unwrap()
        .call(get(&resource, "/late"))
        .await
        .unwrap_err();
    assert!(err.downcast_ref::<CredentialError>().is_some(), "{err}");
}

// --- 401s and CAE ---

fn cae_layer(authority: &Authority) -> BearerTokenLayer {
    settings(authority).enable_cae(true).build()
}

#[tokio::test]
async fn a_claims_challenge_gets_a_claims_token_and_the_request_is_sent_again_once() {
    let (authority, resource) = (Authority::start().await, Resource::start().await);
    resource.set_mode(Mode::Cae);
    let mut service = bearer::<Full<Bytes>>(&cae_layer(&authority));
    call(&mut service, get(&resource, "/before")).await;
    resource.revoke("at-1-contoso");
    let response = call(&mut service, get(&resource, "/after")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let seen = resource.requests();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[1].bearer(), Some("at-1-contoso"));
    assert_eq!(seen[2].bearer(), Some("at-2-contoso-claims"));
    assert_eq!(seen[2].path, "/after");
    // The claims of the challenge reached the authority, with the CP1 capability.
    let claims: serde_json::Value =
        serde_json::from_str(authority.requests()[1].field("claims").unwrap()).unwrap();
    assert_eq!(claims["access_token"]["xms_cc"]["values"][0], "CP1");
    assert!(claims["access_token"]["nbf"]["value"].is_string());
    // The claims token is now the layer's token.
    call(&mut service, get(&resource, "/later")).await;
    assert_eq!(resource.requests()[3].bearer(), Some("at-2-contoso-claims"));
    assert_eq!(authority.token_posts(), 2);
}

/// The re-send rejected too: its 401 comes back, and the claims token it carried is dropped.
#[tokio::test]
async fn a_second_challenge_is_returned_to_the_caller() {
    let (authority, resource) = (Authority::start().await, Resource::start().await);
    let claims = revocation_claims(1);
    resource.push(Answer::Cae {
        claims: claims.clone(),
    });
    resource.push(Answer::Cae { claims });
    let (credential, calls) = counted(client_secret(&authority));
    let layer = BearerTokenLayer::builder(credential, [SCOPE])
        .enable_cae(true)
        .build();
    let mut service = bearer::<Full<Bytes>>(&layer);
    let response = call(&mut service, get(&resource, "/")).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resource.count(), 2, "sent twice, never three times");
    assert_eq!(authority.token_posts(), 2);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "a token, then one for the claims"
    );
    // The claims token was dropped: the next request asks the credential again.
    let response = call(&mut service, get(&resource, "/next")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_challenge_arriving_after_every_service_is_dropped_is_still_answered() {
    let (authority, resource) = (Authority::start().await, Resource::start().await);
    let mut service = bearer::<Full<Bytes>>(&cae_layer(&authority));
    call(&mut service, get(&resource, "/warm")).await;
    resource.push(Answer::Cae {
        claims: revocation_claims(1),
    });
    // As with `oneshot`: the future outlives the last service of its layer, and keeps what
    // answering the challenge needs.
    let future = service.ready().await.unwrap().call(get(&resource, "/late"));
    drop(service);
    let response = future.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(resource.count(), 3, "sent again once");
    assert_eq!(authority.token_posts(), 2, "a claims token");
}

/// The hyper-util client, marking each request it sends with its tag and counting its clones.
struct Tagged {
    client: HyperClient<Full<Bytes>>,
    tag: &'static str,
    clones: Arc<AtomicUsize>,
}

impl Clone for Tagged {
    fn clone(&self) -> Self {
        self.clones.fetch_add(1, Ordering::SeqCst);
        Self {
            client: self.client.clone(),
            tag: self.tag,
            clones: Arc::clone(&self.clones),
        }
    }
}

impl Service<Request<Full<Bytes>>> for Tagged {
    type Response = <HyperClient<Full<Bytes>> as Service<Request<Full<Bytes>>>>::Response;
    type Error = <HyperClient<Full<Bytes>> as Service<Request<Full<Bytes>>>>::Error;
    type Future = <HyperClient<Full<Bytes>> as Service<Request<Full<Bytes>>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.client.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Full<Bytes>>) -> Self::Future {
        let tag = http::HeaderValue::from_static(self.tag);
        request.headers_mut().insert("x-via", tag);
        self.client.call(request)
    }
}

#[tokio::test]
async fn with_cae_requests_do_not_clone_the_inner_service_and_a_resend_goes_through_it_as_changed()
{
    let (authority, resource) = (Authority::start().await, Resource::start().await);
    let clones = Arc::new(AtomicUsize::new(0));
    let mut service = cae_layer(&authority).layer(Tagged {
        client: hyper_client(),
        tag: "first",
        clones: Arc::clone(&clones),
    });
    let send = async |service: &mut BearerToken<Tagged>, path: &str| {
        let request = get(&resource, path);
        let response = service.ready().await.unwrap().call(request).await.unwrap();
        response.status()
    };
    for path in ["/cold", "/warm"] {
        assert_eq!(send(&mut service, path).await, StatusCode::OK);
    }
    let warm = clones.load(Ordering::SeqCst);
    for _ in 0..20 {
        send(&mut service, "/steady").await;
    }
    assert_eq!(clones.load(Ordering::SeqCst), warm, "no clone per request");

    resource.push(Answer::Cae {
        claims: revocation_claims(1),
    });
    assert_eq!(send(&mut service, "/challenged").await, StatusCode::OK);
    let resent = resource.requests().pop().unwrap();
    assert_eq!(
        (
            resent.path.as_str(),
            resent.headers["x-via"].to_str().unwrap()
        ),
        ("/challenged", "first")
    );
    assert_eq!(
        clones.load(Ordering::SeqCst),
        warm + 1,
        "one, for the re-send"
    );

    // A change made through `get_mut` reaches later re-sends.
    service.get_mut().tag = "second";
    resource.push(Answer::Cae {
        claims: revocation_claims(2),
    });
    assert_eq!(send(&mut service, "/again").await, StatusCode::OK);
    let resent = resource.requests().pop().unwrap();
    assert_eq!(
        (
            resent.path.as_str(),
            resent.headers["x-via"].to_str().unwrap()
        ),
        ("/again", "second")
    );
}

/// Each request through a fresh clone of a template that never serves one (axum's state, say):
/// the clones share one clone of the inner service for re-sends, made on the first CAE
/// request, instead of each making its own.
#[tokio::test]
async fn with_cae_clones_of_a_template_share_the_inner_service_kept_for_re_sends() {
    let (authority, resource) = (Authority::start().await, Resource::start().await);
    let clones = Arc::new(AtomicUsize::new(0));
    let template = cae_layer(&authority).layer(Tagged {
        client: hyper_client(),
        tag: "template",
        clones: Arc::clone(&clones),
    });
    let send = async |path: &str| {
        let request = get(&resource, path);
        let response = template.clone().oneshot(request).await.unwrap();
        response.status()
    };
    // The first request waits for the token (the waiting path clones the service once) and
    // makes the kept clone.
    assert_eq!(send("/cold").await, StatusCode::OK);
    let warm = clones.load(Ordering::SeqCst);
    const REQUESTS: usize = 20;
    for _ in 0..REQUESTS {
        assert_eq!(send("/each").await, StatusCode::OK);
    }
    assert_eq!(
        clones.load(Ordering::SeqCst),
        warm + REQUESTS,
        "one clone per request, the template's: none kept per request"
    );

    resource.push(Answer::Cae {
        claims: revocation_claims(1),
    });
    assert_eq!(send("/challenged").await, StatusCode::OK);
    assert_eq!(resource.requests().pop().unwrap().path, "/challenged");
    assert_eq!(
        clones.load(Ordering::SeqCst),
        warm + REQUESTS + 2,
        "the challenged request's clone, and one of the kept service for its re-send"
    );
}

#[tokio::test]
async fn without_cae_a_claims_challenge_is_returned_like_any_401() {
    let (authority, resource) = (Authority::start().await, Resource::start().await);
    resource.push(Answer::Cae {
        claims: revocation_claims(1),
    });
    let mut service = bearer::<Full<Bytes>>(&layer(&authority));
    let response = call(&mut service, get(&resource, "/")).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resource.count(), 1);
}

/// With CAE or without (the two take different paths to the slot).
#[tokio::test]
async fn a_plain_401_is_returned_untouched_and_drops_the_rejected_token() {
    for cae in [false, true] {
        let (authority, resource) = (Authority::start().await, Resource::start().await);
        resource.push(Answer::Unauthorized {
            www_authenticate: Some(
                r#"Bearer error="invalid_token", error_description="expired""#.into(),
            ),
            body: "{\"error\":\"nope\"}".into(),
        });
        let (credential, calls) = counted(client_secret(&authority));
        let layer = BearerTokenLayer::builder(credential, [SCOPE])
            .enable_cae(cae)
            .build();
        let mut service = bearer::<Full<Bytes>>(&layer);
        let response = call(&mut service, get(&resource, "/")).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.headers()["www-authenticate"],
            r#"Bearer error="invalid_token", error_description="expired""#
        );
        assert_eq!(response.body(), "{\"error\":\"nope\"}");
        assert_eq!(resource.count(), 1, "cae {cae}");
        // The layer dropped the token: the next request asks the credential again (which
        // answers from its own cache: the 401 said nothing about the token's validity for the
        // provider).
        call(&mut service, get(&resource, "/")).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2, "cae {cae}");
        call(&mut service, get(&resource, "/")).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2, "cae {cae}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_late_401_for_an_old_token_does_not_drop_the_new_one() {
    let (authority, resource) = (Authority::start().await, Resource::start().await);
    let (credential, calls) = counted(client_secret(&authority));
    let service = bearer::<Full<Bytes>>(
        &BearerTokenLayer::builder(credential, [SCOPE])
            .enable_cae(true)
            .build(),
    );
    // Request A carries at-1 and is held by the resource until B is done.
    let gate = Arc::new(tokio::sync::Notify::new());
    resource.push(Answer::Hold(Arc::clone(&gate)));
    let a = tokio::spawn(service.clone().oneshot(get(&resource, "/a")));
    while resource.in_flight() == 0 {
        tokio::task::yield_now().await;
    }
    // Meanwhile B is challenged and the layer moves to a claims token.
    resource.push(Answer::Cae {
        claims: revocation_claims(1),
    });
    let b = service.clone().oneshot(get(&resource, "/b")).await.unwrap();
    assert_eq!(b.status(), StatusCode::OK);
    // Then A's answer: at-1 was revoked meanwhile, a plain 401.
    resource.revoke("at-1-contoso");
    gate.notify_one();
    let a = a.await.unwrap().unwrap();
    assert_eq!(a.status(), StatusCode::UNAUTHORIZED);
    // The claims token is still in use; no new token was fetched.
    service.clone().oneshot(get(&resource, "/c")).await.unwrap();
    assert_eq!(
        resource.requests().last().unwrap().bearer(),
        Some("at-2-contoso-claims")
    );
    assert_eq!(authority.token_posts(), 2);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the first token and the claims token"
    );
}

#[tokio::test]
async fn an_undecodable_claims_challenge_is_returned() {
    let (authority, resource) = (Authority::start().await, Resource::start().await);
    let mut service = bearer::<Full<Bytes>>(&cae_layer(&authority));
    // Not base64; `[1]`, JSON but no object; `{"access_token":1}`, an object the token
    // request cannot merge the CAE capability into.
    for (n, claims) in ["%%%not-base64%%%", "WzFd", "eyJhY2Nlc3NfdG9rZW4iOjF9"]
        .into_iter()
        .enumerate()
    {
        resource.push(Answer::Unauthorized {
            www_authenticate: Some(format!(
                r#"Bearer error="insufficient_claims", claims="{claims}""#
            )),
            body: String::new(),
        });
        let response = call(&mut service, get(&resource, "/")).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{claims}");
        assert_eq!(resource.count(), n + 1, "{claims}: not re-sent");
    }
    // Each 401 dropped the token, which the credential's cache gave again.
    assert_eq!(authority.token_posts(), 1);
}

/// A claims challenge the credential cannot satisfy (the user must pass MFA again, say):
/// the caller gets the credential's error, not the 401 — resending would only be rejected
/// again — and the same claims are not asked for again within 30 s.
#[tokio::test(start_paused = true)]
async fn a_claims_challenge_the_credential_cannot_satisfy_is_its_error_and_is_spaced() {
    let (authority, resource) = (Authority::start().await, Resource::start().await);
    let mut service = bearer::<Full<Bytes>>(&cae_layer(&authority));
    call(&mut service, get(&resource, "/warm")).await;
    let refuse = || Fault::Respond {
        status: 400,
        body: crate::support::authority::error_body("invalid_grant", 50076, "MFA required"),
        headers: vec![],
    };
    let challenged = |service: &mut Bearer<Full<Bytes>>| {
        resource.push(Answer::Cae {
            claims: revocation_claims(1),
        });
        let request = get(&resource, "/");
        let service = service.clone();
        async move { service.oneshot(request).await }
    };
    authority.push_fault(refuse());
    let err = challenged(&mut service).await.unwrap_err();
    let err = err
        .downcast_ref::<CredentialError>()
        .expect("the credential's error");
    assert_eq!(err.error_code(), Some("invalid_grant"));
    assert_eq!(err.error_codes(), [50076]);
    assert!(err.message().contains("claims challenge"), "{err}");
    assert_eq!(authority.token_posts(), 2);
    assert_eq!(resource.count(), 2, "nothing re-sent");

    // The same challenge within 30 s: the same error, no token request.
    tokio::time::advance(secs(20)).await;
    let err = challenged(&mut service).await.unwrap_err();
    assert!(err.downcast_ref::<CredentialError>().is_some(), "{err}");
    assert_eq!(authority.token_posts(), 2);

    // After 30 s the credential is asked again (and this time it can).
    tokio::time::advance(secs(10)).await;
    let response = challenged(&mut service).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(authority.token_posts(), 3);
}

/// A credential that answers a claims request with the token the resource just rejected (one
/// that ignores claims, or IMDS answering from its cache): re-sending with it could only be
/// rejected again. It is a failed claims answer, spaced like any: one claims request within
/// 30 s, the request not re-sent.
#[tokio::test(start_paused = true)]
async fn a_claims_answer_that_is_the_rejected_token_is_a_failure_and_is_spaced() {
    let resource = Resource::start().await;
    let asked = Arc::new(std::sync::Mutex::new(Vec::<Option<String>>::new()));
    let credential = tower::service_fn({
        let asked = Arc::clone(&asked);
        move |request: tower_identity::TokenRequest| {
            asked
                .lock()
                .unwrap()
                .push(request.claims().map(str::to_owned));
            let expires = Instant::now() + secs(3600);
            async move { Ok::<_, CredentialError>(tower_identity::AccessToken::new("at-same", expires)) }
        }
    });
    let layer = BearerTokenLayer::builder(BoxCredential::named("Same", credential), [SCOPE])
        .enable_cae(true)
        .build();
    let service = bearer::<Full<Bytes>>(&layer);
    let claims_asked = || asked.lock().unwrap().iter().filter(|c| c.is_some()).count();
    let challenged = || {
        resource.push(Answer::Cae {
            claims: revocation_claims(1),
        });
        service.clone().oneshot(get(&resource, "/"))
    };
    for n in 1..=3 {
        let err = challenged().await.unwrap_err();
        let err = err
            .downcast_ref::<CredentialError>()
            .expect("a credential error");
        assert!(err.message().contains("did not apply the claims"), "{err}");
        assert_eq!(resource.count(), n, "not re-sent with the rejected token");
        assert_eq!(claims_asked(), 1, "asked once within 30 s");
        tokio::time::advance(secs(10)).await;
    }
    assert!(
        resource
            .requests()
            .iter()
            .all(|seen| seen.bearer() == Some("at-same"))
    );
    // Past the spacing the credential is asked again.
    challenged().await.unwrap_err();
    assert_eq!(claims_asked(), 2);
    // Each failure dropped the rejected token, and asked without claims the credential
    // answers it again (as one answering from a cache of its own would): a token request per
    // 401 (4 requests), none more.
    assert_eq!(
        asked.lock().unwrap().len(),
        6,
        "2 claims requests and a token request per 401"
    );
}

/// A credential without a cache of its own: a claims request fails (the user must pass MFA
/// again), a plain one gets `at-1`, `at-2` … (counted in `plain`), or fails while `down` is
/// set.
fn mfa_credential(plain: &Arc<AtomicUsize>, down: &Arc<AtomicBool>) -> BoxCredential {
    let (plain, down) = (Arc::clone(plain), Arc::clone(down));
    let credential = tower::service_fn(move |request: tower_identity::TokenRequest| {
        let answer = match request.claims() {
            Some(_) => Err(CredentialError::authentication_failed(
                "Test",
                "MFA required",
            )),
            None => {
                let n = plain.fetch_add(1, Ordering::SeqCst) + 1;
                if down.load(Ordering::SeqCst) {
                    Err(CredentialError::authentication_failed(
                        "Test",
                        "account disabled",
                    ))
                } else {
                    let expires = Instant::now() + secs(3600);
                    Ok(tower_identity::AccessToken::new(format!("at-{n}"), expires))
                }
            }
        };
        async move { answer }
    });
    BoxCredential::named("Test", credential)
}

/// The bearer tokens the resource saw, in order.
fn bearers(resource: &Resource) -> Vec<String> {
    resource
        .requests()
        .iter()
        .map(|seen| seen.bearer().unwrap_or_default().to_owned())
        .collect()
}

/// A claims challenge the credential fails drops the token the resource rejected, as a plain
/// 401 does: the requests after it do not carry it again (it would be rejected every time),
/// and 50 of them at once share one token request.
#[tokio::test(start_paused = true)]
async fn a_failed_claims_challenge_drops_the_rejected_token() {
    let resource = Resource::start().await;
    resource.set_mode(Mode::Cae);
    resource.revoke("at-1");
    let (plain, down) = Default::default();
    let layer = BearerTokenLayer::builder(mfa_credential(&plain, &down), [SCOPE])
        .enable_cae(true)
        .build();
    let service = bearer::<Full<Bytes>>(&layer);
    let err = service
        .clone()
        .oneshot(get(&resource, "/"))
        .await
        .unwrap_err();
    let err = err.downcast_ref::<CredentialError>().expect("its error");
    assert!(err.message().contains("MFA required"), "{err}");
    let requests = (0..50).map(|_| service.clone().oneshot(get(&resource, "/")));
    for response in futures_util::future::join_all(requests).await {
        assert_eq!(response.unwrap().status(), StatusCode::OK);
    }
    assert_eq!(plain.load(Ordering::SeqCst), 2, "one for the 50 requests");
    let mut expected = vec!["at-1".to_owned()];
    expected.extend(std::iter::repeat_n("at-2".to_owned(), 50));
    assert_eq!(bearers(&resource), expected);
}

/// The same, with a credential that then fails plain token requests too (the account was
/// disabled, say). The token that replaces the rejected one is asked for as a failed renewal
/// is: 50 requests at once share one token request, and its error is the answer without
/// asking for 30 s from its end. Before, every request after the first failure asked the
/// credential again: the 29 requests a second apart made 29 token requests.
#[tokio::test(start_paused = true)]
async fn after_a_failed_claims_challenge_a_failing_credential_is_asked_once_per_30_s() {
    let resource = Resource::start().await;
    resource.set_mode(Mode::Cae);
    resource.revoke("at-1");
    let (plain, down): (Arc<AtomicUsize>, Arc<AtomicBool>) = Default::default();
    let layer = BearerTokenLayer::builder(mfa_credential(&plain, &down), [SCOPE])
        .enable_cae(true)
        .build();
    let service = bearer::<Full<Bytes>>(&layer);
    let request = || service.clone().oneshot(get(&resource, "/"));
    let fails_with = |outcome: Result<http::Response<_>, tower_identity::BoxError>, what: &str| {
        let err = outcome.expect_err("no token to send");
        let err = err.downcast_ref::<CredentialError>().expect("its error");
        assert!(err.message().contains(what), "{err}");
    };
    fails_with(request().await, "MFA required");
    assert_eq!(plain.load(Ordering::SeqCst), 1);
    down.store(true, Ordering::SeqCst);

    let requests = (0..50).map(|_| request());
    for outcome in futures_util::future::join_all(requests).await {
        fails_with(outcome, "account disabled");
    }
    assert_eq!(plain.load(Ordering::SeqCst), 2, "one for the 50 requests");
    for _ in 0..29 {
        tokio::time::advance(secs(1)).await;
        fails_with(request().await, "account disabled");
    }
    assert_eq!(
        plain.load(Ordering::SeqCst),
        2,
        "none within 30 s of its end"
    );
    tokio::time::advance(secs(1)).await;
    fails_with(request().await, "account disabled");
    assert_eq!(plain.load(Ordering::SeqCst), 3, "asked again after 30 s");

    // The credential recovers: the next attempt, 30 s on, gets a token, which serves.
    down.store(false, Ordering::SeqCst);
    tokio::time::advance(secs(30)).await;
    for _ in 0..10 {
        assert_eq!(request().await.unwrap().status(), StatusCode::OK);
    }
    assert_eq!(plain.load(Ordering::SeqCst), 4);
    let mut expected = vec!["at-1".to_owned()];
    expected.extend(std::iter::repeat_n("at-4".to_owned(), 10));
    assert_eq!(bearers(&resource), expected, "the rejected token sent once");
}

/// A credential that answers its first request with `at-first` (which the resource rejects)
/// and passes the later ones to a ClientSecretCredential of the loopback authority, which has
/// no token yet: after the 401 the layer's token requests reach the authority and its faults.
fn first_then_authority(authority: &Authority) -> BoxCredential {
    let delegate = client_secret(authority);
    let first = Arc::new(AtomicBool::new(true));
    let credential = tower::service_fn(move |request: tower_identity::TokenRequest| {
        let delegate = delegate.clone();
        let first = first.swap(false, Ordering::SeqCst);
        async move {
            if first {
                let expires = Instant::now() + secs(3600);
                Ok(tower_identity::AccessToken::new("at-first", expires))
            } else {
                delegate.oneshot(request).await
            }
        }
    });
    BoxCredential::named("FirstThen", credential)
}

/// After a 401, a token request that fails for a reason that may pass by itself (503s that
/// outlasted the retries; a machine woken from suspend, its network not back, gets a
/// connection error) is not remembered: the next request asks again, and gets its token.
/// Before, the error was every request's answer for 30 s.
#[tokio::test(start_paused = true)]
async fn after_a_401_a_transient_failure_is_not_remembered() {
    let (authority, resource) = (Authority::start().await, Resource::start().await);
    resource.revoke("at-first");
    let layer = BearerTokenLayer::builder(first_then_authority(&authority), [SCOPE]).build();
    let service = bearer::<Full<Bytes>>(&layer);
    let request = || service.clone().oneshot(get(&resource, "/"));
    assert_eq!(request().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    for _ in 0..4 {
        authority.push_fault(Fault::ServerError(503));
    }
    let err = request().await.unwrap_err();
    let err = err.downcast_ref::<CredentialError>().expect("its error");
    assert!(err.is_transient() && !err.is_throttled(), "{err}");
    assert_eq!(authority.token_posts(), 4, "one token request, retried");
    tokio::time::advance(secs(1)).await;
    assert_eq!(request().await.unwrap().status(), StatusCode::OK);
    assert_eq!(authority.token_posts(), 5, "asked again");
    let seen = bearers(&resource);
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0], "at-first");
}

/// After a 401, a token request throttled for 5 s (a 429 through the retries) is remembered
/// for 30 s, as a refusal is, and the error each request gets says so: its `retry_after`
/// counts down to the moment the layer asks again. Before, it was the provider's 5 s, then
/// zero for the 25 s the layer still answered with it (a client honouring it would spin).
#[tokio::test(start_paused = true)]
async fn after_a_401_a_throttled_failure_says_when_the_layer_asks_again() {
    let (authority, resource) = (Authority::start().await, Resource::start().await);
    resource.revoke("at-first");
    let layer = BearerTokenLayer::builder(first_then_authority(&authority), [SCOPE]).build();
    let service = bearer::<Full<Bytes>>(&layer);
    let request = || service.clone().oneshot(get(&resource, "/"));
    let retry_after = |outcome: Result<http::Response<_>, tower_identity::BoxError>| {
        let err = outcome.expect_err("no token to send");
        let err = err.downcast_ref::<CredentialError>().expect("its error");
        assert!(err.is_throttled() && err.is_transient(), "{err}");
        err.retry_after().expect("a wait")
    };
    assert_eq!(request().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    for _ in 0..4 {
        authority.push_fault(Fault::TooManyRequests {
            retry_after: "5".into(),
        });
    }
    let wait = retry_after(request().await);
    assert!(wait > secs(25) && wait <= secs(30), "{wait:?}");
    assert_eq!(authority.token_posts(), 4, "one token request, retried");
    let asks_at = Instant::now() + wait;
    for _ in 0..5 {
        tokio::time::advance(secs(5)).await;
        assert_eq!(retry_after(request().await), asks_at - Instant::now());
    }
    assert_eq!(authority.token_posts(), 4, "the credential not asked");
    tokio::time::advance(asks_at - Instant::now()).await;
    assert_eq!(request().await.unwrap().status(), StatusCode::OK);
    assert_eq!(authority.token_posts(), 5, "asked again");
}

/// The reference challenge vectors (tests/data/challenge_vectors.rs) through the real layer: RETRY ones re-send with exactly the
/// decoded claims (plus CP1), NO_RETRY ones are returned.
#[tokio::test]
async fn every_reference_challenge_vector_gets_the_documented_outcome() {
    for (header, expected) in crate::support::vectors::CHALLENGES {
        let (authority, resource) = (Authority::start().await, Resource::start().await);
        resource.push(Answer::Unauthorized {
            www_authenticate: Some((*header).to_owned()),
            body: String::new(),
        });
        let mut service = bearer::<Full<Bytes>>(&cae_layer(&authority));
        let response = call(&mut service, get(&resource, "/")).await;
        match expected {
            Some(claims) => {
                assert_eq!(response.status(), StatusCode::OK, "{header}");
                let sent: serde_json::Value =
                    serde_json::from_str(authority.requests()[1].field("claims").unwrap()).unwrap();
                let mut want: serde_json::Value = serde_json::from_str(claims).unwrap();
                want["access_token"]["xms_cc"] = serde_json::json!({"values": ["CP1"]});
                assert_eq!(sent, want, "{header}");
            }
            None => {
                assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{header}");
                assert_eq!(resource.count(), 1, "{header}");
            }
        }
    }
}

// --- bodies on the re-send ---

#[tokio::test]
async fn a_full_body_is_sent_again_byte_for_byte() {
    let (authority, resource) = (Authority::start().await, Resource::start().await);
    resource.push(Answer::Cae {
        claims: revocation_claims(1),
    });
    let mut service = bearer::<Full<Bytes>>(&cae_layer(&authority));
    let body = Bytes::from(vec![7u8; 100_000]);
    let request = Request::post(format!("{}/upload", resource.url()))
        .header("content-type", "application/octet-stream")
        .body(Full::new(body.clone()))
        .unwrap();
    assert_eq!(call(&mut service, request).await.status(), StatusCode::OK);
    let seen = resource.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        (seen[0].body.clone(), seen[1].body.clone()),
        (body.clone(), body)
    );
    assert_eq!(seen[1].headers["content-type"], "application/octet-stream");
    assert_eq!(seen[1].method, http::Method::POST);
}

#[tokio::test]
async fn an_empty_body_is_sent_again() {
    let (authority, resource) = (Authority::start().await, Resource::start().await);
    resource.push(Answer::Cae {
        claims: revocation_claims(1),
    });
    let mut service = bearer::<Empty<Bytes>>(&cae_layer(&authority));
    let request = Request::delete(format!("{}/thing", resource.url()))
        .body(Empty::new())
        .unwrap();
    assert_eq!(call(&mut service, request).await.status(), StatusCode::OK);
    assert_eq!(resource.count(), 2);
}

/// A streaming body: data chunks then trailers, each frame sent when the test says so (or
/// all at once).
fn streamed(
    chunks: Vec<Bytes>,
    trailers: Option<http::HeaderMap>,
) -> (
    tokio::sync::mpsc::UnboundedSender<http_body::Frame<Bytes>>,
    http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    for chunk in chunks {
        tx.send(http_body::Frame::data(chunk)).unwrap();
    }
    if let Some(trailers) = trailers {
        tx.send(http_body::Frame::trailers(trailers)).unwrap();
    }
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|frame| (Ok(frame), rx))
    });
    (tx, http_body_util::StreamBody::new(stream).boxed())
}

type Streamed = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

fn bearer_h2(layer: &BearerTokenLayer) -> BearerToken<HyperClient<Streamed>> {
    ServiceBuilder::new()
        .layer(layer.clone())
        .service(h2_client())
}

#[tokio::test]
async fn a_streamed_body_and_its_trailers_are_replayed_within_the_limit() {
    let (authority, resource) = (Authority::start().await, Resource::start().await);
    resource.push(Answer::Cae {
        claims: revocation_claims(1),
    });
    let service = bearer_h2(&cae_layer(&authority));
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-checksum", "abc123".parse().unwrap());
    let chunks: Vec<Bytes> = (0..8).map(|i| Bytes::from(vec![i as u8; 4096])).collect();
    let (tx, body) = streamed(chunks, Some(trailers.clone()));
    drop(tx); // the stream ends after the queued frames
    let request = Request::put(format!("{}/blob", resource.url()))
        .body(body)
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen = resource.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].body.len(), 8 * 4096);
    assert_eq!(seen[0].body, seen[1].body);
    assert_eq!(seen[1].trailers.as_ref().unwrap()["x-checksum"], "abc123");
    assert_eq!(seen[1].bearer(), Some("at-2-contoso-claims"));
}

/// hyper's HTTP/1 client stops reading a body once it has written the `Content-Length` the
/// request declares: it never polls the body to its end, and the recording must not wait for
/// it.
#[tokio::test]
async fn a_streamed_body_with_content_length_over_http1_is_replayed() {
    let (authority, resource) = (Authority::start().await, Resource::start().await);
    resource.push(Answer::Cae {
        claims: revocation_claims(1),
    });
    let service: BearerToken<HyperClient<Streamed>> = ServiceBuilder::new()
        .layer(cae_layer(&authority))
        .service(h1_client());
    let chunks: Vec<Bytes> = (0..8).map(|i| Bytes::from(vec![i as u8; 4096])).collect();
    let (tx, body) = streamed(chunks, None);
    drop(tx);
    let request = Request::put(format!("{}/blob", resource.url()))
        .header("content-length", 8 * 4096)
        .body(body)
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen = resource.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].version, http::Version::HTTP_11);
    assert_eq!(seen[0].body.len(), 8 * 4096);
    assert_eq!(seen[0].body, seen[1].body);
    assert_eq!(seen[1].bearer(), Some("at-2-contoso-claims"));
}

#[tokio::test]
async fn a_streamed_body_over_the_replay_limit_gets_the_401_not_a_truncated_resend() {
    let (authority, resource) = (Authority::start().await, Resource::start().await);
    resource.push(Answer::Cae {
        claims: revocation_claims(1),
    });
    let service = bearer_h2(
        &settings(&authority)
            .enable_cae(true)
            .replay_limit(16 * 1024)
            .build(),
    );
    let chunks: Vec<Bytes> = (0..8).map(|_| Bytes::from(vec![1u8; 4096])).collect();
    let (tx, body) = streamed(chunks, None);
    drop(tx);
    let request = Request::put(format!("{}/blob", resource.url()))
        .body(body)
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resource.count(), 1);
    assert_eq!(
        resource.requests()[0].body.len(),
        32 * 1024,
        "the first attempt was sent whole"
    );
}

/// A streamed body that went past the replay limit cannot be re-sent whatever the token:
/// when the credential cannot get the token for the claims, the answer is still the 401, not
/// the credential's error.
#[tokio::test]
async fn a_streamed_body_over_the_limit_gets_the_401_when_the_claims_token_fails() {
    let (authority, resource) = (Authority::start().await, Resource::start().await);
    let service = bearer_h2(
        &settings(&authority)
            .enable_cae(true)
            .replay_limit(16 * 1024)
            .build(),
    );
    let warm = Request::get(format!("{}/warm", resource.url()))
        .body(streamed(vec![], None).1)
        .unwrap();
    assert_eq!(
        service.clone().oneshot(warm).await.unwrap().status(),
        StatusCode::OK
    );
    resource.push(Answer::Cae {
        claims: revocation_claims(1),
    });
    authority.push_fault(Fault::Respond {
        status: 400,
        body: crate::support::authority::error_body("invalid_grant", 50076, "MFA required"),
        headers: vec![],
    });
    let chunks: Vec<Bytes> = (0..8).map(|_| Bytes::from(vec![1u8; 4096])).collect();
    let (tx, body) = streamed(chunks, None);
    drop(tx);
    let request = Request::put(format!("{}/blob", resource.url()))
        .body(body)
        .unwrap();
    let response = service
        .oneshot(request)
        .await
        .expect("the 401, not an error");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(authority.token_posts(), 2, "the claims token was asked for");
    assert_eq!(resource.count(), 2);
}

/// A `String`'s clone copies it, so it is kept for the re-send only within the replay limit:
/// past it the 401 comes back, as for a streamed body over the limit.
#[tokio::test]
async fn a_string_body_is_sent_again_within_the_replay_limit_and_not_past_it() {
    let (authority, resource) = (Authority::start().await, Resource::start().await);
    let layer = settings(&authority)
        .enable_cae(true)
        .replay_limit(1024)
        .build();
    let mut service = bearer::<String>(&layer);
    let post = |body: String| {
        Request::post(format!("{}/text", resource.url()))
            .body(body)
            .unwrap()
    };

    resource.push(Answer::Cae {
        claims: revocation_claims(1),
    });
    let within = "w".repeat(1024);
    let response = call(&mut service, post(within.clone())).await;
    assert_eq!(response.status(), StatusCode::OK);
    let seen = resource.requests();
    assert_eq!(seen.len(), 2, "sent again");
    assert_eq!(seen[1].body, within.as_bytes());

    resource.clear();
    resource.push(Answer::Cae {
        claims: revocation_claims(2),
    });
    let response = call(&mut service, post("p".repeat(1025))).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resource.count(), 1, "not sent again");
    assert_eq!(
        resource.requests()[0].body.len(),
        1025,
        "the first attempt was sent whole"
    );
}

/// A `String` over the replay limit kept no copy: its request cannot be re-sent. Its 401
/// comes back once the claims flight has ended, whatever the flight's outcome: a credential
/// that fails makes no error of it (the 401 is the answer past the replay bound), and when
/// the flight succeeds the caller's own retry, right after, carries the claims token instead
/// of meeting the same challenge (and uploading the body) again. The wait is bounded (5 s): a
/// slower credential's flight runs on, and the requests after it get its token.
#[tokio::test(start_paused = true)]
async fn a_string_past_the_limit_gets_its_401_after_the_claims_flight_whatever_its_outcome() {
    let resource = Resource::start().await;
    let wait = secs(3);
    // A first token at once; a token for claims after `wait` (the third after 20 s), refused
    // the first time.
    let claims_asked = Arc::new(AtomicUsize::new(0));
    let credential = tower::service_fn({
        let claims_asked = Arc::clone(&claims_asked);
        move |request: tower_identity::TokenRequest| {
            let claims = request.claims().is_some();
            let n = if claims {
                claims_asked.fetch_add(1, Ordering::SeqCst) + 1
            } else {
                0
            };
            async move {
                let expires = Instant::now() + secs(3600);
                if !claims {
                    return Ok(tower_identity::AccessToken::new("at-plain", expires));
                }
                tokio::time::sleep(if n == 3 { secs(20) } else { wait }).await;
                if n == 1 {
                    return Err(CredentialError::authentication_failed(
                        "Slow",
                        "MFA required",
                    ));
                }
                Ok(tower_identity::AccessToken::new(
                    format!("at-claims-{n}"),
                    expires,
                ))
            }
        }
    });
    let layer = BearerTokenLayer::builder(BoxCredential::named("Slow", credential), [SCOPE])
        .enable_cae(true)
        .replay_limit(1024)
        .build();
    let mut service = bearer::<String>(&layer);
    let post = || {
        Request::post(format!("{}/text", resource.url()))
            .body("p".repeat(1025))
            .unwrap()
    };
    let get = || {
        Request::get(format!("{}/next", resource.url()))
            .body(String::new())
            .unwrap()
    };
    assert_eq!(call(&mut service, get()).await.status(), StatusCode::OK);

    // The credential fails: the 401 all the same, after its wait.
    resource.clear();
    resource.push(Answer::Cae {
        claims: revocation_claims(1),
    });
    let start = Instant::now();
    let response = service.clone().oneshot(post()).await.unwrap();
    assert!(start.elapsed() >= wait, "the flight was waited for");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resource.count(), 1, "not sent again");
    assert_eq!(claims_asked.load(Ordering::SeqCst), 1);
    assert_eq!(call(&mut service, get()).await.status(), StatusCode::OK);
    assert_eq!(resource.requests()[1].bearer(), Some("at-plain"));

    // The credential gets the token: the retry made right after the 401 carries it.
    resource.clear();
    resource.push(Answer::Cae {
        claims: revocation_claims(2),
    });
    let start = Instant::now();
    let response = service.clone().oneshot(post()).await.unwrap();
    assert!(start.elapsed() >= wait, "the flight was waited for");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(claims_asked.load(Ordering::SeqCst), 2);
    let retry = service.clone().oneshot(post()).await.unwrap();
    assert_eq!(retry.status(), StatusCode::OK);
    let seen = resource.requests();
    assert_eq!(seen.len(), 2, "the first attempt was not sent again");
    assert_eq!(seen[1].bearer(), Some("at-claims-2"));
    assert_eq!(seen[1].body.len(), 1025);

    // A credential slower than the bound: the 401 after 5 s; its token comes later.
    resource.clear();
    resource.push(Answer::Cae {
        claims: revocation_claims(3),
    });
    let start = Instant::now();
    let response = service.clone().oneshot(post()).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let waited = start.elapsed();
    assert!(
        waited >= secs(5) && waited < secs(20),
        "bounded: {waited:?}"
    );
    tokio::time::sleep(secs(16)).await;
    assert_eq!(claims_asked.load(Ordering::SeqCst), 3);
    assert_eq!(call(&mut service, get()).await.status(), StatusCode::OK);
    assert_eq!(resource.requests()[1].bearer(), Some("at-claims-3"));
}

#[tokio::test]
async fn a_401_before_the_body_was_sent_is_returned_not_resent() {
    let (authority, resource) = (Authority::start().await, Resource::start().await);
    resource.push(Answer::EarlyUnauthorized {
        claims: revocation_claims(1),
    });
    let service = bearer_h2(&cae_layer(&authority));
    // One chunk now; the rest would come later, but the answer arrives first.
    let (tx, body) = streamed(vec![Bytes::from_static(b"first chunk")], None);
    let request = Request::put(format!("{}/blob", resource.url()))
        .body(body)
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resource.count(), 1);
    drop(tx);
}

// --- redirects ---

/// A 307 from one origin to another, followed by tower-http's `FollowRedirect`. Inside the
/// layer (the order the module docs ask for), it sees the `Authorization` the layer set and
/// drops it for the other origin. Outside, it rebuilds the request from the one it was given,
/// which had no `Authorization` yet, and the layer adds the token to the redirected request as
/// to any other: the other origin gets it.
#[tokio::test]
async fn a_redirect_followed_inside_the_layer_does_not_take_the_token_to_another_origin() {
    let authority = Authority::start().await;
    let (origin, other) = (Resource::start().await, Resource::start().await);
    let layer = layer(&authority);
    let redirect = || {
        origin.clear();
        other.clear();
        origin.push(Answer::Status {
            status: 307,
            headers: vec![("location".into(), format!("{}/landing", other.url()))],
            body: String::new(),
        });
        other.push(Answer::Status {
            status: 200,
            headers: vec![],
            body: "landed".into(),
        });
    };

    redirect();
    let inside = ServiceBuilder::new()
        .layer(layer.clone())
        .layer(FollowRedirectLayer::new())
        .service(hyper_client::<Full<Bytes>>());
    let response = inside.oneshot(get(&origin, "/moved")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(origin.requests()[0].bearer(), Some("at-1-contoso"));
    let landed = other.requests();
    assert_eq!(landed.len(), 1, "the redirect was followed");
    assert_eq!(landed[0].path, "/landing");
    assert_eq!(
        landed[0].authorization, None,
        "no token for the other origin"
    );

    // Why the docs say so: outside the layer, the other origin gets the token.
    redirect();
    let outside = ServiceBuilder::new()
        .layer(FollowRedirectLayer::new())
        .layer(layer)
        .service(hyper_client::<Full<Bytes>>());
    let response = outside.oneshot(get(&origin, "/moved")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(other.requests()[0].bearer(), Some("at-1-contoso"));
}

/// A 307 to another origin whose answer is a 401 with a claims challenge, the follower inside
/// the layer: that 401 answers a request that never carried the token (the follower dropped
/// it), so it says nothing of the token. It goes back to the caller untouched, no token is
/// asked for the other origin's claims, and the token stays: the next request carries it
/// without the credential being asked. Before, the layer (with CAE) got a token with the
/// other origin's claims (a token request bypassing every cache, on every such request), made
/// it the layer's token and re-sent to the first origin. (Without CAE the layer cannot tell:
/// see the module docs.)
#[tokio::test]
async fn a_401_from_the_origin_a_redirect_led_to_is_returned_and_the_token_kept() {
    let authority = Authority::start().await;
    let (origin, other) = (Resource::start().await, Resource::start().await);
    let (credential, calls) = counted(client_secret(&authority));
    let layer = BearerTokenLayer::builder(credential, [SCOPE])
        .enable_cae(true)
        .build();
    let service = ServiceBuilder::new()
        .layer(layer)
        .layer(FollowRedirectLayer::new())
        .service(hyper_client::<Full<Bytes>>());
    origin.push(Answer::Status {
        status: 307,
        headers: vec![("location".into(), format!("{}/landing", other.url()))],
        body: String::new(),
    });
    let claims = revocation_claims(1);
    other.push(Answer::Cae {
        claims: claims.clone(),
    });
    let response = service
        .clone()
        .oneshot(get(&origin, "/moved"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        response.headers()["www-authenticate"],
        cae_challenge(&claims).as_str()
    );
    assert_eq!(other.requests()[0].authorization, None);
    assert_eq!(origin.count(), 1, "not re-sent");
    assert_eq!(authority.token_posts(), 1, "no claims token");

    let response = service.oneshot(get(&origin, "/next")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(origin.requests()[1].bearer(), Some("at-1-contoso"));
    assert_eq!(calls.load(Ordering::SeqCst), 1, "token kept");
    assert_eq!(authority.token_posts(), 1);
}

/// A redirect within the origin: its 401 is the resource's own, and drops the token it
/// rejected as any 401 does (the follower keeps `Authorization` within an origin).
#[tokio::test]
async fn a_401_after_a_redirect_within_the_origin_drops_the_token() {
    for cae in [false, true] {
        let authority = Authority::start().await;
        let origin = Resource::start().await;
        let (credential, calls) = counted(client_secret(&authority));
        let layer = BearerTokenLayer::builder(credential, [SCOPE])
            .enable_cae(cae)
            .build();
        let service = ServiceBuilder::new()
            .layer(layer)
            .layer(FollowRedirectLayer::new())
            .service(hyper_client::<Full<Bytes>>());
        origin.push(Answer::Status {
            status: 307,
            headers: vec![("location".into(), "/landing".into())],
            body: String::new(),
        });
        origin.push(Answer::Unauthorized {
            www_authenticate: Some(r#"Bearer error="invalid_token""#.into()),
            body: String::new(),
        });
        let response = service
            .clone()
            .oneshot(get(&origin, "/moved"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "cae {cae}");
        assert_eq!(
            origin.requests()[1].bearer(),
            Some("at-1-contoso"),
            "cae {cae}"
        );
        service.oneshot(get(&origin, "/next")).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2, "token dropped: cae {cae}");
    }
}

/// The re-send's 401 carries the same claims challenge just answered: the token for the claims
/// is refused too. For the next 30 s (`retry_after_failure`), requests meeting that challenge
/// get their 401 at once, with no token requested; then the claims are asked for once more.
/// Before, every such request cost a token request bypassing every cache, an acquisition of a
/// plain token and two requests to the resource.
#[tokio::test(start_paused = true)]
async fn claims_refused_again_after_the_re_send_are_not_asked_for_again_for_30_s() {
    let (authority, resource) = (Authority::start().await, Resource::start().await);
    let claims = revocation_claims(1);
    for _ in 0..40 {
        resource.push(Answer::Cae {
            claims: claims.clone(),
        });
    }
    let (credential, calls) = counted(client_secret(&authority));
    let layer = BearerTokenLayer::builder(credential, [SCOPE])
        .enable_cae(true)
        .refresh_jitter(Duration::ZERO)
        .build();
    let mut service = bearer::<Full<Bytes>>(&layer);
    let response = call(&mut service, get(&resource, "/first")).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        resource.count(),
        2,
        "sent, then re-sent with the claims token"
    );
    assert_eq!(
        authority.token_posts(),
        2,
        "a token, then one for the claims"
    );

    for n in 1..=10 {
        tokio::time::sleep(secs(2)).await;
        let response = call(&mut service, get(&resource, "/again")).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(resource.count(), 2 + n, "sent once, not re-sent");
    }
    assert_eq!(
        authority.token_posts(),
        2,
        "no claims token asked for within 30 s"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "and one plain token after the claims token was dropped"
    );

    tokio::time::sleep(secs(11)).await;
    let response = call(&mut service, get(&resource, "/later")).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resource.count(), 14, "asked for again, and re-sent");
    assert_eq!(authority.token_posts(), 3);
}

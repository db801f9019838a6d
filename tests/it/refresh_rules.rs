//! The refresh rules end to end, on tokio's paused clock: short lifetimes get a proportional
//! window (a 60 s token is reused for about 30 s), a renewal is never followed by another
//! within 30 s, and a failed renewal is retried 30 s after it ended — through a credential and
//! through the layer over that credential, with every token from the loopback authority.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{ServiceBuilder, ServiceExt};
use tower_identity::bearer::BearerTokenLayer;
use tower_identity::{BoxCredential, CredentialExt};

use crate::support::authority::{Authority, Fault, TokenShape};
use crate::support::client::hyper_client;
use crate::support::creds::{SCOPE, client_secret, client_secret_with, http_builder, secs};
use crate::support::resource::Resource;

/// Token lifetimes and the token requests ten minutes of one call per second make.
///
/// * 5 s: after a first acquisition the window (2.5 s) brings one renewal; after that each
///   window opens inside the 30 s spacing, so tokens are used until they expire and acquired
///   anew, with one renewal per 33 s: 128 requests rather than one per call.
/// * 60 s: renewed 30 s before expiry, every 30 s.
/// * 240, 299, 301 s: renewed at half-life (120, 150, 151 s with calls on whole seconds).
/// * 1 h: renewed 300 s before expiry, so not within ten minutes.
const LIFETIMES: [(u64, usize); 6] = [(5, 128), (60, 20), (240, 5), (299, 4), (301, 4), (3600, 1)];

fn shaped(authority: &Authority, lifetime: u64) {
    authority.set_response(TokenShape {
        expires_in: lifetime,
        ..TokenShape::default()
    });
}

#[tokio::test(start_paused = true)]
async fn short_lived_tokens_are_reused_through_the_credential() {
    for (lifetime, expected) in LIFETIMES {
        let authority = Authority::start().await;
        shaped(&authority, lifetime);
        let credential = client_secret(&authority);
        for _ in 0..600 {
            let token = credential.get_token([SCOPE]).await.unwrap();
            assert!(!token.is_expired());
            // Renewals run in the background: sleeping (not advancing) lets a renewal's
            // loopback exchange end before the clock moves.
            tokio::time::sleep(secs(1)).await;
        }
        assert_eq!(
            authority.token_posts(),
            expected,
            "{lifetime} s tokens over 10 minutes"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn short_lived_tokens_are_reused_through_the_layer() {
    for (lifetime, expected) in LIFETIMES {
        let (authority, resource) = (Authority::start().await, Resource::start().await);
        shaped(&authority, lifetime);
        let layer =
            BearerTokenLayer::builder(client_secret(&authority).boxed_credential(), [SCOPE])
                .refresh_jitter(Duration::ZERO)
                .build();
        let service = ServiceBuilder::new()
            .layer(layer)
            .service(hyper_client::<Full<Bytes>>());
        for i in 0..600 {
            let request = Request::get(format!("{}/r/{i}", resource.url()))
                .body(Full::default())
                .unwrap();
            let response = service.clone().oneshot(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            response.into_body().collect().await.unwrap();
            tokio::time::advance(secs(1)).await;
        }
        assert_eq!(
            authority.token_posts(),
            expected,
            "{lifetime} s tokens over 10 minutes"
        );
    }
}

/// A loopback benchmark with 240 s tokens made hundreds of token requests per second: each
/// renewal reset the spacing. Here ten requests per second for ten minutes.
#[tokio::test(start_paused = true)]
async fn a_busy_layer_with_240_s_tokens_renews_every_120_s() {
    let (authority, resource) = (Authority::start().await, Resource::start().await);
    shaped(&authority, 240);
    let layer = BearerTokenLayer::new(client_secret(&authority).boxed_credential(), [SCOPE]);
    let service = ServiceBuilder::new()
        .layer(layer)
        .service(hyper_client::<Full<Bytes>>());
    for i in 0..6000 {
        let request = Request::get(format!("{}/busy/{i}", resource.url()))
            .body(Full::default())
            .unwrap();
        let response = service.clone().oneshot(request).await.unwrap();
        response.into_body().collect().await.unwrap();
        tokio::time::advance(Duration::from_millis(100)).await;
    }
    // With the default jitter (60 s of a 300 s window is 24 s of this 120 s one): one at 0,
    // then one renewal per 120–144 s.
    let posts = authority.token_posts();
    assert!((4..=6).contains(&posts), "{posts} token requests");
}

/// The layer's renewal asks the credential, whose own attempt starts a moment later. The
/// spacing counts from the end of an attempt, so when the layer tries again 30 s later the
/// credential's spacing has passed too: it asks the authority, rather than handing back its
/// cached token (which made the layer's retry interval 60 s).
#[tokio::test(start_paused = true)]
async fn a_failed_renewal_is_retried_after_30_s_end_to_end() {
    let (authority, resource) = (Authority::start().await, Resource::start().await);
    let credential = client_secret_with(
        &authority,
        http_builder(&authority).no_retry().build().unwrap(),
    );
    // The first renewal reaches the credential 1 s late; later ones at once.
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let late_once = tower::service_fn(move |request| {
        let call = counter.fetch_add(1, Ordering::SeqCst);
        let credential = credential.clone();
        async move {
            if call == 1 {
                tokio::time::sleep(secs(1)).await;
            }
            credential.oneshot(request).await
        }
    });
    let layer = BearerTokenLayer::builder(BoxCredential::named("LateOnce", late_once), [SCOPE])
        .refresh_jitter(Duration::ZERO)
        .build();
    let service = ServiceBuilder::new()
        .layer(layer)
        .service(hyper_client::<Full<Bytes>>());
    let send = |i: u32| {
        let request = Request::get(format!("{}/f/{i}", resource.url()))
            .body(Full::default())
            .unwrap();
        let service = service.clone();
        async move {
            let response = service.oneshot(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            response.into_body().collect().await.unwrap();
        }
    };
    send(0).await;
    for _ in 0..10 {
        authority.push_fault(Fault::ServerError(503));
    }
    tokio::time::advance(secs(3300)).await;
    // One request per second for 70 s; note in which second the authority is asked.
    let mut asked_at = Vec::new();
    for second in 0..70 {
        let before = authority.token_posts();
        send(second + 1).await;
        tokio::time::sleep(secs(1)).await;
        if authority.token_posts() > before {
            asked_at.push(second);
        }
    }
    // The renewal at 3300 s ends at 3301 s; the next is due 30 s later, at 3331 s, and the
    // credential asks then — not at 3361 s.
    // (The first ask lands in second 0 or 1: it happens just as the step ends.)
    assert_eq!(asked_at.len(), 3, "{asked_at:?}");
    assert!(asked_at[0] <= 1, "{asked_at:?}");
    let gap = asked_at[1] - asked_at[0];
    assert!(
        (30..=31).contains(&gap),
        "retried after {gap} s: {asked_at:?}"
    );
}

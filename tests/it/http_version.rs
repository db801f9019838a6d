//! Which HTTP version the default client speaks, as the loopback authority saw it: HTTP/2
//! with a server whose TLS offers `h2` in ALPN, HTTP/1.1 with one that offers only
//! `http/1.1`, directly and through a proxy's CONNECT tunnel alike (one client setting, one
//! behaviour). The client's ALPN list is set by hand in `HttpClientBuilder::build`; without
//! these, dropping `h2` from it (or offering `h2` alone) passed every test.

use http::Version;
use tower_identity::{ClientSecretCredential, CredentialExt, HttpClientBuilder};

use crate::support::authority::Authority;
use crate::support::creds::{CLIENT_ID, CLIENT_SECRET, SCOPE, TENANT, http_builder};
use crate::support::proxy::{Policy, Proxy};

/// The version of the one token request a client with these settings sent to `authority`.
async fn version_seen(authority: &Authority, http: HttpClientBuilder) -> Version {
    ClientSecretCredential::builder(TENANT, CLIENT_ID, CLIENT_SECRET)
        .authority_host(authority.url())
        .http_client(http.build().expect("valid client settings"))
        .build()
        .expect("valid settings")
        .get_token([SCOPE])
        .await
        .expect("a token");
    let [received] = authority.requests().try_into().expect("one token request");
    received.version
}

#[tokio::test]
async fn http2_with_a_server_that_offers_h2() {
    let authority = Authority::start().await;
    let http = http_builder(&authority).no_proxy();
    assert_eq!(version_seen(&authority, http).await, Version::HTTP_2);
}

#[tokio::test]
async fn http1_with_a_server_that_offers_only_http1() {
    let authority = Authority::start_http1_only().await;
    let http = http_builder(&authority).no_proxy();
    assert_eq!(version_seen(&authority, http).await, Version::HTTP_11);
}

#[tokio::test]
async fn http2_through_a_proxy_with_a_server_that_offers_h2() {
    let authority = Authority::start().await;
    let proxy = Proxy::start(Policy::Open).await;
    let http = http_builder(&authority).proxy(proxy.url());
    assert_eq!(version_seen(&authority, http).await, Version::HTTP_2);
    assert_eq!(proxy.requests().len(), 1, "through the proxy's tunnel");
}

#[tokio::test]
async fn http1_through_a_proxy_with_a_server_that_offers_only_http1() {
    let authority = Authority::start_http1_only().await;
    let proxy = Proxy::start(Policy::Open).await;
    let http = http_builder(&authority).proxy(proxy.url());
    assert_eq!(version_seen(&authority, http).await, Version::HTTP_11);
    assert_eq!(proxy.requests().len(), 1, "through the proxy's tunnel");
}

//! Token requests through a real forward proxy on loopback (`support::proxy`): CONNECT to the
//! loopback authority, proxy credentials, `NO_PROXY` by domain and by CIDR, proxies that
//! refuse or cannot be reached, and proxy credentials never shown. The proxy variables are
//! given with `proxy_from_vars`: tests run in parallel threads and never set process
//! variables.

use base64::Engine;
use http::{Method, StatusCode};
use tower_identity::{ClientSecretCredential, CredentialExt, HttpClientBuilder};

use crate::support::authority::Authority;
use crate::support::creds::{CLIENT_ID, CLIENT_SECRET, Logs, SCOPE, TENANT, http_builder};
use crate::support::proxy::{Policy, Proxy};

const PROXY_USER: &str = "proxy-user-Kx7";
const PROXY_PASSWORD: &str = "proxy-pass:w0rd@Qz";
/// `PROXY_PASSWORD` percent-encoded for a URL's userinfo.
const PROXY_PASSWORD_ENCODED: &str = "proxy-pass%3Aw0rd%40Qz";

fn basic(user: &str, password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

fn credential(authority_host: &str, http: HttpClientBuilder) -> ClientSecretCredential {
    ClientSecretCredential::builder(TENANT, CLIENT_ID, CLIENT_SECRET)
        .authority_host(authority_host)
        .http_client(http.build().expect("valid client settings"))
        .build()
        .expect("valid settings")
}

/// A token from the authority at `authority_host`, through a client with these settings.
async fn get(
    authority_host: &str,
    http: HttpClientBuilder,
) -> Result<tower_identity::AccessToken, tower_identity::CredentialError> {
    credential(authority_host, http).get_token([SCOPE]).await
}

/// `https://localhost:<port>` for the authority: a name for `NO_PROXY` domain rules.
fn by_name(authority: &Authority) -> String {
    authority.url().replace("127.0.0.1", "localhost")
}

fn connect_to(authority: &Authority) -> String {
    authority.url().trim_start_matches("https://").to_owned()
}

#[tokio::test]
async fn token_request_goes_through_the_proxy_from_https_proxy() {
    let authority = Authority::start().await;
    let proxy = Proxy::start(Policy::Open).await;
    let http = http_builder(&authority).proxy_from_vars([("HTTPS_PROXY", proxy.url())]);
    let token = get(&authority.url(), http).await.unwrap();
    assert_eq!(token.secret().expose_secret(), "at-1-contoso");
    let [logged] = proxy.requests().try_into().unwrap();
    assert_eq!(logged.method, Method::CONNECT);
    assert_eq!(logged.target, connect_to(&authority));
    assert_eq!(logged.authorization, None);
    assert_eq!(authority.token_posts(), 1);
}

#[tokio::test]
async fn lower_case_wins_and_all_proxy_is_the_fallback() {
    let authority = Authority::start().await;
    let proxy = Proxy::start(Policy::Open).await;
    // Port 9 on loopback: nothing listens there, so using it would fail the request.
    let unused = "http://127.0.0.1:9";
    let http = http_builder(&authority).proxy_from_vars([
        ("HTTPS_PROXY", unused.to_owned()),
        ("https_proxy", proxy.url()),
    ]);
    get(&authority.url(), http).await.unwrap();
    let http = http_builder(&authority).proxy_from_vars([("ALL_PROXY", proxy.url())]);
    get(&authority.url(), http).await.unwrap();
    assert_eq!(proxy.requests().len(), 2);
    // HTTPS_PROXY, when set, is preferred over ALL_PROXY.
    let http = http_builder(&authority).proxy_from_vars([
        ("all_proxy", unused.to_owned()),
        ("https_proxy", proxy.url()),
    ]);
    get(&authority.url(), http).await.unwrap();
    assert_eq!(proxy.requests().len(), 3);
}

#[tokio::test]
async fn explicit_proxy_sends_basic_credentials_from_its_url() {
    let authority = Authority::start().await;
    let proxy = Proxy::start(Policy::Basic(basic(PROXY_USER, PROXY_PASSWORD))).await;
    let url = proxy.url_with(&format!("{PROXY_USER}:{PROXY_PASSWORD_ENCODED}"));
    // The explicit proxy wins over any variables.
    let http = http_builder(&authority)
        .proxy_from_vars([("HTTPS_PROXY", "http://127.0.0.1:9")])
        .proxy(url);
    get(&authority.url(), http).await.unwrap();
    let [logged] = proxy.requests().try_into().unwrap();
    assert_eq!(logged.status, StatusCode::OK);
    assert_eq!(
        logged.authorization,
        Some(basic(PROXY_USER, PROXY_PASSWORD))
    );
}

#[tokio::test]
async fn no_proxy_bypasses_by_domain_suffix_and_by_cidr() {
    let authority = Authority::start().await;
    // A proxy that refuses everything: a request through it would fail.
    let proxy = Proxy::start(Policy::Forbid).await;
    for (host, no_proxy) in [
        (by_name(&authority), "example.test, localhost"),
        (by_name(&authority), ".localhost"),
        (authority.url(), "10.0.0.0/8,127.0.0.0/8"),
        (authority.url(), "127.0.0.1"),
        (authority.url(), "*"),
    ] {
        let http = http_builder(&authority).proxy_from_vars([
            ("https_proxy", proxy.url()),
            ("no_proxy", no_proxy.to_owned()),
        ]);
        get(&host, http)
            .await
            .unwrap_or_else(|e| panic!("NO_PROXY={no_proxy} for {host}: {e}"));
    }
    assert_eq!(proxy.requests(), []);
    // Rules that do not match: through the proxy (which refuses).
    for (host, no_proxy) in [
        (by_name(&authority), "host"),
        (by_name(&authority), "notlocalhost"),
        (authority.url(), "127.0.0.2/32"),
    ] {
        let http = http_builder(&authority).proxy_from_vars([
            ("HTTPS_PROXY", proxy.url()),
            ("NO_PROXY", no_proxy.to_owned()),
        ]);
        get(&host, http).await.unwrap_err();
    }
    assert_eq!(proxy.requests().len(), 3);
}

#[tokio::test]
async fn no_proxy_setting_ignores_the_variables() {
    let authority = Authority::start().await;
    let proxy = Proxy::start(Policy::Forbid).await;
    let http = http_builder(&authority)
        .proxy_from_vars([("HTTPS_PROXY", proxy.url())])
        .no_proxy();
    get(&authority.url(), http).await.unwrap();
    assert_eq!(proxy.requests(), []);
}

#[tokio::test]
async fn proxy_demanding_credentials_is_a_final_407_naming_the_proxy() {
    let authority = Authority::start().await;
    let proxy = Proxy::start(Policy::Basic(basic(PROXY_USER, PROXY_PASSWORD))).await;

    let http = http_builder(&authority).proxy(proxy.url());
    let error = get(&authority.url(), http).await.unwrap_err();
    let text = error.to_string();
    assert!(text.contains(&proxy.address()), "{text}");
    assert!(text.contains("407 Proxy Authentication Required"), "{text}");
    assert!(
        text.contains("give its credentials in the proxy URL"),
        "{text}"
    );
    assert!(!error.is_connect(), "{text}");

    let url = proxy.url_with(&format!("{PROXY_USER}:wrong-{PROXY_PASSWORD_ENCODED}"));
    let http = http_builder(&authority).proxy(url);
    let error = get(&authority.url(), http).await.unwrap_err();
    let text = error.to_string();
    assert!(text.contains("rejected the credentials"), "{text}");
    // Not retried: a refusal is final, one CONNECT each.
    assert_eq!(proxy.requests().len(), 2);
    assert_eq!(authority.token_posts(), 0);
}

#[tokio::test]
async fn proxy_refusing_the_tunnel_says_403() {
    let authority = Authority::start().await;
    let proxy = Proxy::start(Policy::Forbid).await;
    let http = http_builder(&authority).proxy_from_vars([("https_proxy", proxy.url())]);
    let error = get(&authority.url(), http).await.unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains(&format!(
            "the proxy {} answered 403 Forbidden",
            proxy.address()
        )),
        "{text}"
    );
    assert_eq!(proxy.requests().len(), 1);
    assert_eq!(authority.token_posts(), 0);
}

#[tokio::test]
async fn unreachable_proxy_is_a_connect_error_naming_it() {
    let authority = Authority::start().await;
    // Bound, then closed: connecting to it is refused.
    let address = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let http = http_builder(&authority).no_retry().proxy(format!(
        "http://{PROXY_USER}:{PROXY_PASSWORD_ENCODED}@{address}"
    ));
    let error = get(&authority.url(), http).await.unwrap_err();
    let text = error.to_string();
    assert!(error.is_connect(), "{text}");
    assert!(
        text.contains(&format!("connecting to the proxy {address} failed")),
        "{text}"
    );
    assert!(text.to_lowercase().contains("refused"), "{text}");
    assert!(!text.contains(PROXY_USER), "{text}");
}

#[tokio::test]
async fn unusable_proxy_settings_fail_and_say_which() {
    let authority = Authority::start().await;
    let http = http_builder(&authority)
        .proxy_from_vars([("HTTPS_PROXY", "socks5://user:secret-Wq3@127.0.0.1:1080")]);
    let error = get(&authority.url(), http).await.unwrap_err();
    let text = format!("{error} {error:?}");
    assert!(
        text.contains("HTTPS_PROXY is not a usable proxy URL: SOCKS proxies are not supported"),
        "{text}"
    );
    assert!(!text.contains("secret-Wq3"), "{text}");
    assert_eq!(authority.token_posts(), 0);

    let error = http_builder(&authority)
        .proxy(format!(
            "https://{PROXY_USER}:{PROXY_PASSWORD_ENCODED}@proxy.test:3128"
        ))
        .build()
        .unwrap_err();
    let text = format!("{error} {error:?}");
    assert!(text.contains("proxy.test:3128"), "{text}");
    assert!(
        text.contains("TLS to the proxy (https://) is not supported"),
        "{text}"
    );
    assert!(
        !text.contains(PROXY_USER) && !text.contains("w0rd"),
        "{text}"
    );
}

#[tokio::test]
async fn proxy_credentials_appear_in_no_debug_error_or_log() {
    let (logs, _guard) = Logs::capture();
    let authority = Authority::start().await;
    let proxy = Proxy::start(Policy::Forbid).await;
    let url = proxy.url_with(&format!("{PROXY_USER}:{PROXY_PASSWORD_ENCODED}"));
    let header = basic(PROXY_USER, PROXY_PASSWORD);
    let header = header.trim_start_matches("Basic ");

    let explicit = http_builder(&authority).proxy(url.clone());
    let from_vars = http_builder(&authority)
        .proxy_from_vars([("HTTPS_PROXY", url.clone()), ("NO_PROXY", url.clone())]);
    let mut shown = format!("{explicit:?} {from_vars:?}");
    assert!(shown.contains(&proxy.address()), "{shown}");
    for builder in [explicit, from_vars] {
        let http = builder.build().unwrap();
        shown.push_str(&format!("{http:?}"));
        let credential = ClientSecretCredential::builder(TENANT, CLIENT_ID, CLIENT_SECRET)
            .authority_host(authority.url())
            .http_client(http)
            .build()
            .unwrap();
        shown.push_str(&format!("{credential:?}"));
        let error = credential.get_token([SCOPE]).await.unwrap_err();
        assert!(error.to_string().contains("403"), "{error}");
        shown.push_str(&format!("{error} {error:?} {error:#?}"));
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            shown.push_str(&format!("{cause} {cause:?}"));
            source = cause.source();
        }
    }
    assert_eq!(proxy.requests().len(), 2);
    shown.push_str(&logs.text());
    assert!(
        logs.text().contains(&proxy.address()),
        "the tunnel is logged"
    );
    for secret in [
        PROXY_USER,
        PROXY_PASSWORD,
        PROXY_PASSWORD_ENCODED,
        "w0rd",
        header,
    ] {
        assert!(!shown.contains(secret), "{secret} shown in: {shown}");
    }
}

//! Token requests through a real forward proxy on loopback (`support::proxy`): CONNECT to the
//! loopback authority, proxy credentials, `NO_PROXY` by domain and by CIDR, proxies that
//! refuse or cannot be reached, and proxy credentials never shown. The proxy variables are
//! given with `proxy_from_vars`: tests run in parallel threads and never set process
//! variables.

use std::time::Duration;

use base64::Engine;
use http::{Method, StatusCode};
use tokio::time::Instant;
use tower_identity::{
    AuthorizationCodeCredential, ClientSecretCredential, CredentialExt, HttpClientBuilder,
};

use crate::support::authority::{Authority, Fault};
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

/// Percent-encoded bytes that are not UTF-8 (a Latin-1 user name and password) are sent as
/// the bytes they encode, as curl and Go send them. Before, hyper-util decoded them as UTF-8,
/// lossily: U+FFFD went out for each, and the proxy rejected the credentials.
#[tokio::test]
async fn proxy_credentials_are_sent_as_the_bytes_they_percent_encode() {
    let authority = Authority::start().await;
    let credentials = base64::engine::general_purpose::STANDARD.encode(b"user-\xe9:p\xe9ss-\xff");
    let proxy = Proxy::start(Policy::Basic(format!("Basic {credentials}"))).await;
    let url = proxy.url_with("user-%E9:p%E9ss-%ff");
    for http in [
        http_builder(&authority).proxy(url.clone()),
        http_builder(&authority).proxy_from_vars([("https_proxy", url.clone())]),
    ] {
        get(&authority.url(), http).await.unwrap();
    }
    let statuses = proxy
        .requests()
        .iter()
        .map(|r| r.status)
        .collect::<Vec<_>>();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::OK]);
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
        (authority.url(), " * "),
        // Blanks separate entries as commas do.
        (by_name(&authority), "example.test localhost"),
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
        // `*` among other entries matches nothing, as in curl and Python.
        (by_name(&authority), "example.test,*"),
        (authority.url(), "*, example.test"),
    ] {
        let http = http_builder(&authority).proxy_from_vars([
            ("HTTPS_PROXY", proxy.url()),
            ("NO_PROXY", no_proxy.to_owned()),
        ]);
        get(&host, http).await.unwrap_err();
    }
    assert_eq!(proxy.requests().len(), 5);
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

/// A proxy asking only for schemes the transport cannot answer (Kerberos, NTLM): the error
/// says so, rather than asking for credentials in the URL (which would only be rejected).
#[tokio::test]
async fn proxy_demanding_another_scheme_than_basic_says_only_basic_is_supported() {
    let authority = Authority::start().await;
    let proxy = Proxy::start(Policy::Challenge(&["Negotiate", "NTLM"])).await;
    for url in [
        proxy.url(),
        proxy.url_with(&format!("{PROXY_USER}:{PROXY_PASSWORD_ENCODED}")),
    ] {
        let http = http_builder(&authority).proxy(url);
        let error = get(&authority.url(), http).await.unwrap_err();
        let text = error.to_string();
        assert!(text.contains("407 Proxy Authentication Required"), "{text}");
        assert!(
            text.contains(
                "it asks for Negotiate, NTLM authentication, and only Basic (credentials in \
                 the proxy URL) is supported"
            ),
            "{text}"
        );
        assert!(!text.contains("give its credentials"), "{text}");
        assert!(!text.contains("rejected the credentials"), "{text}");
        assert!(!error.is_connect(), "{text}");
    }
    // A comma inside a quoted value starts no challenge: `Basic` there is text, not a scheme
    // (an escaped quote does not end the value). Before, Basic was found and the error asked
    // for credentials in the URL.
    let proxy = Proxy::start(Policy::Challenge(&[
        r#"Negotiate, Digest realm="a, Basic b", nonce="x\", Basic c""#,
    ]))
    .await;
    let http = http_builder(&authority).proxy(proxy.url());
    let text = get(&authority.url(), http).await.unwrap_err().to_string();
    assert!(
        text.contains("it asks for Negotiate, Digest authentication"),
        "{text}"
    );
    // Basic offered among others: credentials in the URL can help.
    let proxy = Proxy::start(Policy::Challenge(&[
        "Negotiate",
        "NTLM, Basic realm=\"corp, Negotiate\"",
    ]))
    .await;
    let http = http_builder(&authority).proxy(proxy.url());
    let text = get(&authority.url(), http).await.unwrap_err().to_string();
    assert!(
        text.contains("give its credentials in the proxy URL"),
        "{text}"
    );
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

/// A proxy answering CONNECT with 502, 503 or 504 could not reach the server, or is
/// overloaded: nothing reached Entra, so the request is retried, as azure-core retries it (a
/// connection error). Before, such an answer was final.
#[tokio::test(start_paused = true)]
async fn a_gateway_failure_answering_connect_is_retried() {
    for status in [
        StatusCode::BAD_GATEWAY,
        StatusCode::SERVICE_UNAVAILABLE,
        StatusCode::GATEWAY_TIMEOUT,
    ] {
        let authority = Authority::start().await;
        let proxy = Proxy::start(Policy::FirstAnswer(status)).await;
        let http = http_builder(&authority).proxy_from_vars([("https_proxy", proxy.url())]);
        let token = get(&authority.url(), http)
            .await
            .unwrap_or_else(|e| panic!("{status}: {e}"));
        assert_eq!(token.secret().expose_secret(), "at-1-contoso");
        let statuses = proxy
            .requests()
            .iter()
            .map(|r| r.status)
            .collect::<Vec<_>>();
        assert_eq!(statuses, [status, StatusCode::OK]);
        assert_eq!(authority.token_posts(), 1);
    }
    // Without retries, the error says so: a connection failure, worth trying again.
    let authority = Authority::start().await;
    let proxy = Proxy::start(Policy::FirstAnswer(StatusCode::SERVICE_UNAVAILABLE)).await;
    let http = http_builder(&authority)
        .no_retry()
        .proxy_from_vars([("https_proxy", proxy.url())]);
    let error = get(&authority.url(), http).await.unwrap_err();
    let text = error.to_string();
    assert!(error.is_connect() && error.is_transient(), "{text}");
    assert!(
        text.contains(&format!(
            "the proxy could not open the tunnel: the proxy {} answered 503 Service Unavailable",
            proxy.address()
        )),
        "{text}"
    );
}

/// An authorization code is single-use, and is retried only when nothing was sent: a proxy
/// that could not open the tunnel sent nothing.
#[tokio::test(start_paused = true)]
async fn a_single_use_code_is_retried_after_a_proxy_503() {
    let authority = Authority::start().await;
    let proxy = Proxy::start(Policy::FirstAnswer(StatusCode::SERVICE_UNAVAILABLE)).await;
    let http = http_builder(&authority).proxy_from_vars([("https_proxy", proxy.url())]);
    let token = redeem_code(&authority, http).await.unwrap();
    assert_eq!(token.secret().expose_secret(), "at-code");
    assert_eq!(proxy.requests().len(), 2);
    let [redeemed] = authority.requests().try_into().unwrap();
    assert_eq!(redeemed.field("code"), Some("single-use-code"));
}

/// A refusal of the tunnel stays final: the next CONNECT would have been let through, and is
/// never sent.
#[tokio::test(start_paused = true)]
async fn a_proxy_refusing_the_first_connect_is_still_final() {
    for status in [
        StatusCode::PROXY_AUTHENTICATION_REQUIRED,
        StatusCode::FORBIDDEN,
    ] {
        let authority = Authority::start().await;
        let proxy = Proxy::start(Policy::FirstAnswer(status)).await;
        let http = http_builder(&authority).proxy_from_vars([("https_proxy", proxy.url())]);
        let error = get(&authority.url(), http).await.unwrap_err();
        let text = error.to_string();
        assert!(text.contains("the proxy refused the tunnel"), "{text}");
        assert!(text.contains(status.as_str()), "{text}");
        assert!(!error.is_connect() && !error.is_transient(), "{text}");
        assert_eq!(proxy.requests().len(), 1, "{status}");
        assert_eq!(authority.token_posts(), 0);
    }
}

/// A proxy variable that cannot be used does not fail a request `NO_PROXY` exempts: curl,
/// `requests` and Go connect directly. Before, every `https` request failed.
#[tokio::test]
async fn an_unusable_proxy_variable_does_not_fail_what_no_proxy_exempts() {
    let authority = Authority::start().await;
    for no_proxy in ["*", "127.0.0.1", "example.test, 127.0.0.0/8"] {
        let http = http_builder(&authority).proxy_from_vars([
            ("https_proxy", "https://proxy.test:443"),
            ("NO_PROXY", no_proxy),
        ]);
        get(&authority.url(), http)
            .await
            .unwrap_or_else(|e| panic!("NO_PROXY={no_proxy}: {e}"));
    }
    let http = http_builder(&authority).proxy_from_vars([
        ("https_proxy", "https://proxy.test:443"),
        ("NO_PROXY", ".example.test"),
    ]);
    let error = get(&authority.url(), http).await.unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains(
            "https_proxy is not a usable proxy URL: TLS to the proxy (https://) is not supported"
        ),
        "{text}"
    );
    assert_eq!(authority.token_posts(), 3);
}

/// A proxy that accepts the connection and never answers CONNECT fails the attempt at the
/// connect timeout, as a connection failure naming the proxy (retried, even for a single-use
/// request: nothing reached the server). Before, only the TCP connect had a limit: the attempt
/// timed out at 10 s, "no complete response", naming no proxy, and was final for an
/// authorization code.
#[tokio::test(start_paused = true)]
async fn a_proxy_that_never_answers_connect_fails_as_a_connection_naming_it() {
    let authority = Authority::start().await;
    let proxy = Proxy::start(Policy::Silent).await;
    let http = http_builder(&authority)
        .timeout(Some(Duration::from_secs(10)))
        .no_retry()
        .proxy(proxy.url());
    let started = Instant::now();
    let error = get(&authority.url(), http).await.unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_secs(8));
    let text = error.to_string();
    assert!(
        error.is_connect() && error.is_transient() && !error.is_timeout(),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "the CONNECT exchange with the proxy {} failed: no answer to CONNECT within the 8s \
             connect timeout",
            proxy.address()
        )),
        "{text}"
    );
    assert_eq!(proxy.connections(), 1);
    assert_eq!(authority.token_posts(), 0);
}

/// An authorization code's redemption whose first proxy never answered CONNECT is retried
/// through a second connection, and redeemed once.
#[tokio::test(start_paused = true)]
async fn a_single_use_code_is_retried_after_a_proxy_that_never_answered() {
    let authority = Authority::start().await;
    let proxy = Proxy::start(Policy::FirstSilent).await;
    let http = http_builder(&authority)
        .timeout(Some(Duration::from_secs(10)))
        .proxy_from_vars([("https_proxy", proxy.url())]);
    let token = redeem_code(&authority, http).await.unwrap();
    assert_eq!(token.secret().expose_secret(), "at-code");
    assert_eq!(proxy.connections(), 2);
    let [logged] = proxy.requests().try_into().unwrap();
    assert_eq!(logged.status, StatusCode::OK);
    let [redeemed] = authority.requests().try_into().unwrap();
    assert_eq!(redeemed.field("code"), Some("single-use-code"));
}

/// A tunnel through which the server never completes the TLS handshake fails at the connect
/// timeout as well, naming the proxy: the request is sent only after the handshake, so it is
/// unsent. Before, the handshake had no limit but the attempt's.
#[tokio::test(start_paused = true)]
async fn a_tls_handshake_that_never_completes_through_the_tunnel_fails_as_a_connection() {
    let authority = Authority::start().await;
    // Connections complete in the listen backlog, and nothing ever answers them.
    let mute = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mute_url = format!("https://{}", mute.local_addr().unwrap());
    let proxy = Proxy::start(Policy::Open).await;
    let http = http_builder(&authority)
        .timeout(Some(Duration::from_secs(10)))
        .no_retry()
        .proxy(proxy.url());
    let started = Instant::now();
    let error = get(&mute_url, http).await.unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_secs(8));
    let text = error.to_string();
    assert!(
        error.is_connect() && error.is_transient() && !error.is_timeout(),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "the TLS handshake through the proxy {} did not complete",
            proxy.address()
        )),
        "{text}"
    );
    assert!(text.contains("within the 8s connect timeout"), "{text}");
    let [logged] = proxy.requests().try_into().unwrap();
    assert_eq!(logged.status, StatusCode::OK);
    drop(mute);
}

/// The authorization code `single-use-code` redeemed at the authority through a client with
/// these settings (the authority answers with `at-code`).
async fn redeem_code(
    authority: &Authority,
    http: HttpClientBuilder,
) -> Result<tower_identity::AccessToken, tower_identity::CredentialError> {
    let client_info = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(r#"{"uid":"alice","utid":"contoso"}"#);
    authority.push_fault(Fault::Body(
        serde_json::json!({
            "token_type": "Bearer",
            "expires_in": 3600,
            "access_token": "at-code",
            "refresh_token": "rt-code",
            "client_info": client_info,
        })
        .to_string(),
    ));
    AuthorizationCodeCredential::builder(
        TENANT,
        CLIENT_ID,
        "single-use-code",
        "http://localhost/callback",
    )
    .authority_host(authority.url())
    .http_client(http.build().unwrap())
    .build()
    .unwrap()
    .get_token([SCOPE])
    .await
}

/// A proxy answering CONNECT with 2xx and bytes after it (in the same segment) has not opened
/// a tunnel: the server speaks only after our TLS hello. The bytes are refused, not taken for
/// the server's.
#[tokio::test]
async fn bytes_from_the_proxy_before_the_tunnel_is_used_are_refused() {
    let authority = Authority::start().await;
    let proxy = Proxy::start(Policy::Raw(
        "HTTP/1.1 200 Connection established\r\n\r\nXYZ",
    ))
    .await;
    let http = http_builder(&authority).no_retry().proxy(proxy.url());
    let error = get(&authority.url(), http).await.unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains(&format!(
            "the CONNECT exchange with the proxy {} failed: the proxy sent data before the \
             tunnel was used",
            proxy.address()
        )),
        "{text}"
    );
    assert!(error.is_connect(), "{text}");
    let [logged] = proxy.requests().try_into().unwrap();
    assert_eq!(logged.target, connect_to(&authority));
    assert_eq!(authority.token_posts(), 0);
}

/// Through the tunnel, the server's certificate must name the URL's host, not the proxy's: a
/// tunnel to a server whose certificate names other hosts (`127.0.0.1` and `localhost`) is a
/// TLS failure, final, though the proxy is `127.0.0.1`.
#[tokio::test]
async fn the_servers_certificate_is_checked_against_its_own_name_through_the_tunnel() {
    let authority = Authority::start().await;
    let port = authority.url().rsplit(':').next().unwrap().to_owned();
    let upstream = connect_to(&authority).parse().unwrap();
    let proxy = Proxy::start_to(Policy::Open, upstream).await;
    // The proxy connects every tunnel to the authority: by a name its certificate holds, the
    // token comes.
    let http = http_builder(&authority).proxy(proxy.url());
    get(&format!("https://localhost:{port}"), http)
        .await
        .unwrap();
    let http = http_builder(&authority).proxy(proxy.url());
    let error = get(&format!("https://other-name.test:{port}"), http)
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(text.contains("TLS handshake failed"), "{text}");
    assert!(text.contains("not valid for name"), "{text}");
    assert!(!error.is_connect() && !error.is_transient(), "{text}");
    let targets = proxy
        .requests()
        .into_iter()
        .map(|logged| logged.target)
        .collect::<Vec<_>>();
    assert_eq!(
        targets,
        [
            format!("localhost:{port}"),
            format!("other-name.test:{port}")
        ]
    );
    assert_eq!(authority.token_posts(), 1);
}

/// A 407 names only the schemes known as such: a proxy echoing the base64 of the credentials
/// it was sent, as its challenge, does not get them into the error (and so into logs). Before,
/// any token of up to 32 characters was quoted as a scheme.
#[tokio::test]
async fn a_407_names_only_known_schemes_never_what_the_proxy_echoes() {
    let authority = Authority::start().await;
    let proxy = Proxy::start(Policy::Echo).await;
    // 12 bytes: a base64 of 16 characters without `=` padding, a token as a scheme is.
    let url = proxy.url_with("us-Kx:pw-Qz7");
    let echoed = basic("us-Kx", "pw-Qz7");
    let echoed = echoed.trim_start_matches("Basic ");
    assert_eq!(echoed.len(), 16);
    let http = http_builder(&authority).proxy(url);
    let error = get(&authority.url(), http).await.unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains(
            "407 Proxy Authentication Required: it asks for another authentication scheme, and \
             only Basic (credentials in the proxy URL) is supported"
        ),
        "{text}"
    );
    let mut shown = format!("{error} {error:?} {error:#?}");
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        shown.push_str(&format!("{cause} {cause:?}"));
        source = cause.source();
    }
    let [logged] = proxy.requests().try_into().unwrap();
    assert_eq!(
        logged.authorization.as_deref(),
        Some(&*format!("Basic {echoed}"))
    );
    assert!(!shown.contains(echoed), "{shown}");

    // Known schemes are named as spelled here, whatever their case, and the others only as
    // such.
    let proxy = Proxy::start(Policy::Challenge(&[
        "negotiate, ntlm Zm9vYmFy",
        "X-Corp-SSO-Qw realm=\"corp\"",
    ]))
    .await;
    let http = http_builder(&authority).proxy(proxy.url());
    let text = get(&authority.url(), http).await.unwrap_err().to_string();
    assert!(
        text.contains("it asks for Negotiate, NTLM authentication or another scheme, and only"),
        "{text}"
    );
    assert!(!text.contains("Qw") && !text.contains("Zm9v"), "{text}");
}

/// A server name TLS cannot check a certificate against (a label over 63 characters) opens no
/// tunnel: it fails before any I/O, as over a direct connection, and the proxy is not told of
/// it. It is final, not a connection failure retried three more times. Before, the CONNECT
/// went out first, once per attempt.
#[tokio::test(start_paused = true)]
async fn a_name_tls_cannot_check_opens_no_tunnel() {
    let authority = Authority::start().await;
    let proxy = Proxy::start(Policy::Open).await;
    let host = format!("https://{}.test", "a".repeat(64));
    let http = http_builder(&authority).proxy(proxy.url());
    let error = get(&host, http).await.unwrap_err();
    // Final, and said so: not a connection failure retried to no end.
    assert!(
        !error.is_transient() && !error.is_connect() && !error.to_string().contains("attempts"),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .contains("not one a TLS certificate can name"),
        "{error}"
    );
    assert_eq!(proxy.connections(), 0, "{error}");
}

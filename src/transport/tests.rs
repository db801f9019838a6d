use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};

use super::error::{TransportError, TransportErrorKind};
use super::retry::{
    IMDS_GONE_BACKOFF, MAX_RETRY_AFTER, RetryOptions, RetryPolicy, imds_backoff,
    is_retryable_error, is_retryable_status, retry_after,
};
use super::{HttpClient, HttpRequest, HttpResponse};
use crate::error::BoxError;

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, v.parse().unwrap());
    }
    h
}

#[test]
fn retry_after_forms() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    assert_eq!(
        retry_after(&headers(&[("retry-after", "2")]), now),
        Some(Duration::from_secs(2))
    );
    assert_eq!(
        retry_after(&headers(&[("retry-after", "1.5")]), now),
        Some(Duration::from_millis(1500))
    );
    // azure-core's order: `Retry-After` first, the millisecond headers when it is absent or
    // unreadable.
    assert_eq!(
        retry_after(
            &headers(&[("retry-after-ms", "250"), ("retry-after", "9")]),
            now
        ),
        Some(Duration::from_secs(9))
    );
    assert_eq!(
        retry_after(
            &headers(&[("retry-after-ms", "250"), ("retry-after", "soon")]),
            now
        ),
        Some(Duration::from_millis(250))
    );
    assert_eq!(
        retry_after(&headers(&[("x-ms-retry-after-ms", "100")]), now),
        Some(Duration::from_millis(100))
    );
    let date = httpdate::fmt_http_date(now + Duration::from_secs(7));
    assert_eq!(
        retry_after(&headers(&[("retry-after", &date)]), now),
        Some(Duration::from_secs(7))
    );
    let past = httpdate::fmt_http_date(now - Duration::from_secs(7));
    assert_eq!(
        retry_after(&headers(&[("retry-after", &past)]), now),
        Some(Duration::ZERO)
    );
    assert_eq!(retry_after(&headers(&[("retry-after", "soon")]), now), None);
    assert_eq!(retry_after(&headers(&[("retry-after", "-1")]), now), None);
    assert_eq!(retry_after(&headers(&[("retry-after", "NaN")]), now), None);
    // Absurdly long waits are one hour: no overflow, no panic.
    for (name, value) in [
        ("retry-after", "1e20"),
        ("retry-after", "18446744073709551616"),
        ("retry-after", "inf"),
        ("retry-after-ms", "1e300"),
        ("x-ms-retry-after-ms", "1e25"),
        ("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT"),
    ] {
        assert_eq!(
            retry_after(&headers(&[(name, value)]), now),
            Some(MAX_RETRY_AFTER),
            "{name}: {value}"
        );
    }
    assert_eq!(retry_after(&HeaderMap::new(), now), None);
}

#[test]
fn backoff_doubles_with_bounded_jitter_and_cap() {
    let mut policy = RetryPolicy::new(RetryOptions::default().max_backoff(Duration::from_secs(3)));
    for (retries, base) in [(0u32, 0.8f64), (1, 1.6)] {
        policy.retries = retries;
        let b = policy.backoff().as_secs_f64();
        assert!(
            b >= base * 0.8 - 1e-9 && b <= base * 1.2 + 1e-9,
            "{retries}: {b}"
        );
    }
    policy.retries = 10;
    assert_eq!(policy.backoff(), Duration::from_secs(3));
    // Absurd settings are capped, not an overflow.
    let mut huge = RetryPolicy::new(
        RetryOptions::default()
            .initial_backoff(Duration::MAX)
            .max_backoff(Duration::MAX),
    );
    huge.retries = u32::MAX;
    for _ in 0..100 {
        // 0.8–1.2 × the saturated exponential: above 0.79 × Duration::MAX, or the cap.
        assert!(huge.backoff() > Duration::from_secs(u64::MAX / 100 * 79));
    }
}

#[test]
fn only_transient_statuses_are_retried() {
    for s in [408, 429, 500, 502, 503, 504] {
        assert!(is_retryable_status(StatusCode::from_u16(s).unwrap()), "{s}");
    }
    for s in [200, 400, 401, 403, 404, 501, 505] {
        assert!(
            !is_retryable_status(StatusCode::from_u16(s).unwrap()),
            "{s}"
        );
    }
}

fn answer(status: u16) -> Result<HttpResponse, BoxError> {
    Ok(http::Response::builder()
        .status(status)
        .body(Bytes::new())
        .unwrap())
}

#[test]
fn imds_schedule_is_azure_cores_without_jitter() {
    let cap = Duration::from_secs(60);
    let delays = |factor: Duration| -> Vec<f64> {
        (1..=5)
            .map(|n| imds_backoff(factor, n, cap).as_secs_f64())
            .collect()
    };
    assert_eq!(
        delays(Duration::from_millis(800)),
        [0.0, 1.6, 3.2, 6.4, 12.8]
    );
    assert_eq!(delays(IMDS_GONE_BACKOFF), [0.0, 5.0, 10.0, 20.0, 40.0]);
    // 75 s of waiting outlasts a 70 s IMDS update.
    assert_eq!(delays(IMDS_GONE_BACKOFF).iter().sum::<f64>(), 75.0);
    assert_eq!(imds_backoff(IMDS_GONE_BACKOFF, 30, cap), cap);
    assert_eq!(imds_backoff(Duration::MAX, u32::MAX, cap), cap);

    let options = RetryOptions::imds(Duration::from_secs(90));
    assert_eq!(options.max_retries, 5);
    let mut policy = RetryPolicy::new(options);
    let mut waits = Vec::new();
    for status in [500, 404, 410, 503, 429] {
        waits.push(policy.delay_for(&answer(status)).unwrap().as_secs_f64());
        policy.retries += 1;
    }
    // 0 and 1.6 s before the 410; from it on, factor 2.5 (10, 20, 40 s).
    assert_eq!(waits, [0.0, 1.6, 10.0, 20.0, 40.0]);
    // Connection failures are retried on the same schedule.
    let mut policy = RetryPolicy::new(options);
    policy.retries = 1;
    let refused: BoxError = TransportError::new(TransportErrorKind::Connect, "x").into();
    assert_eq!(
        policy.delay_for(&Err(refused)),
        Some(Duration::from_millis(1600))
    );
}

#[test]
fn imds_retries_404_410_and_every_5xx_and_honours_retry_after() {
    let mut policy = RetryPolicy::new(RetryOptions::imds(Duration::from_secs(90)));
    for s in [404, 408, 410, 429, 500, 501, 505, 599] {
        assert!(policy.delay_for(&answer(s)).is_some(), "{s}");
    }
    for s in [200, 400, 401, 403, 409] {
        assert!(policy.delay_for(&answer(s)).is_none(), "{s}");
    }
    let mut asked = answer(503).unwrap();
    asked
        .headers_mut()
        .insert("retry-after", HeaderValue::from_static("7"));
    assert_eq!(policy.delay_for(&Ok(asked)), Some(Duration::from_secs(7)));
    // `Retry-After: 0` asks for no wait: the backoff applies, as in azure-core, not an
    // immediate retry.
    let mut policy = RetryPolicy::new(RetryOptions::imds(Duration::from_secs(90)));
    policy.retries = 2;
    let mut zero = answer(503).unwrap();
    zero.headers_mut()
        .insert("retry-after", HeaderValue::from_static("0"));
    assert_eq!(
        policy.delay_for(&Ok(zero)),
        Some(Duration::from_millis(3200))
    );
    // The standard schedule is unchanged: 404 and 410 are final there.
    let mut standard = RetryPolicy::new(RetryOptions::default());
    assert!(standard.delay_for(&answer(404)).is_none());
    assert!(standard.delay_for(&answer(410)).is_none());
}

#[test]
fn tls_and_size_failures_are_not_retried() {
    let tls = TransportError::new(TransportErrorKind::Tls, "x");
    let big = TransportError::too_large(10);
    let conn = TransportError::new(TransportErrorKind::Connect, "x");
    assert!(!is_retryable_error(&tls));
    assert!(!is_retryable_error(&big));
    assert!(is_retryable_error(&conn));
    assert!(is_retryable_error(&TransportError::timed_out(
        Duration::from_secs(1)
    )));
}

#[test]
fn a_single_use_request_is_retried_only_when_it_was_never_sent() {
    let mut policy = RetryPolicy::new(RetryOptions::default());
    policy.single_use = true;
    let error =
        |kind| -> Result<HttpResponse, BoxError> { Err(TransportError::new(kind, "x").into()) };
    assert!(
        policy
            .delay_for(&error(TransportErrorKind::Connect))
            .is_some()
    );
    assert!(policy.delay_for(&error(TransportErrorKind::Io)).is_none());
    assert!(
        policy
            .delay_for(&error(TransportErrorKind::Timeout))
            .is_none()
    );
    assert!(
        policy
            .delay_for(&Err("a user layer's error".into()))
            .is_none()
    );
    for status in [500, 503] {
        assert!(policy.delay_for(&answer(status)).is_none(), "{status}");
    }
    // Throttled: not processed, so the code is still unused.
    assert!(policy.delay_for(&answer(429)).is_some());
}

/// A root PEM bundle may hold a private key too: `Debug` shows how many PEMs and their
/// lengths, never their bytes. Before, the derived `Debug` printed every byte in decimal.
#[test]
fn builder_debug_shows_pem_lengths_not_their_bytes() {
    let pem = "-----BEGIN CERTIFICATE-----\nMIIBcert-Qc\n-----END CERTIFICATE-----\n\
               -----BEGIN PRIVATE KEY-----\nMIIEkey-Qk\n-----END PRIVATE KEY-----\n";
    let builder = HttpClient::builder()
        .add_root_certificates_pem(pem)
        .add_root_certificates_pem("x");
    let text = format!("{builder:?} {builder:#?}");
    for shown in ["45, 45, 45", "PRIVATE", "MIIE", "key-Qk", "cert-Qc"] {
        assert!(!text.contains(shown), "{shown} in {text}");
    }
    assert!(
        text.contains(&format!("2 PEM(s) of [{}, 1] bytes", pem.len())),
        "{text}"
    );
    // The other fields as before.
    for field in [
        "roots: Bundled",
        "max_response_bytes: 1048576",
        "proxy: Environment",
    ] {
        assert!(text.contains(field), "{field} not in {text}");
    }
}

/// A loopback listener connecting to which hangs, and the connections that make it so: Linux
/// drops the SYNs of a listener whose accept queue is full. The queue is filled (a connect of
/// 100 ms real time that hangs marks it full). With a backlog of 0 it holds one connection,
/// made first with 10 s to complete: a loaded machine that stalls it past 100 ms must not
/// leave the queue empty.
#[cfg(target_os = "linux")]
fn full_listener() -> (tokio::net::TcpListener, Vec<std::net::TcpStream>) {
    use std::time::Duration;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let first = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10));
    let mut queued = vec![first.expect("a listener's first connection is queued")];
    while let Ok(stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
        queued.push(stream);
        assert!(queued.len() < 64, "the accept queue never filled");
    }
    (listener, queued)
}

/// A connect that neither succeeds nor fails (an address that drops packets) gives up after
/// the connect timeout, whatever the per-attempt one: hyper-util tries a name's addresses one
/// after another, so without it the first such address used up every attempt. The default
/// (8 s) is shared among a name's addresses (8 for Entra's: 1 s each); the builder sets
/// another.
#[cfg(target_os = "linux")]
#[tokio::test(start_paused = true)]
async fn a_connect_that_never_completes_gives_up_after_the_connect_timeout() {
    use tower::ServiceExt;

    let (listener, _queued) = full_listener();
    let addr = listener.local_addr().unwrap();
    // No proxy: one named in the environment would be connected to instead.
    let builder = || HttpClient::builder().timeout(None).no_retry().no_proxy();
    for (builder, limit) in [
        (builder(), Duration::from_secs(8)),
        (
            builder().connect_timeout(Some(Duration::from_secs(3))),
            Duration::from_secs(3),
        ),
        (
            builder().connect_timeout(Some(Duration::from_secs(30))),
            Duration::from_secs(30),
        ),
        // Zero gives up at once, as the per-attempt timeout does.
        (
            builder().connect_timeout(Some(Duration::ZERO)),
            Duration::ZERO,
        ),
    ] {
        let client = builder.build().unwrap();
        let request = http::Request::get(format!("https://{addr}/token"))
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap();
        let started = tokio::time::Instant::now();
        let outcome = tokio::time::timeout(Duration::from_secs(60), client.oneshot(request)).await;
        let error = outcome.expect("the connect never gave up").unwrap_err();
        let transport = error.downcast_ref::<TransportError>().unwrap();
        assert_eq!(transport.kind(), TransportErrorKind::Connect, "{transport}");
        assert_eq!(started.elapsed(), limit);
    }
    // None: only the per-attempt timeout limits connecting.
    let client = builder()
        .connect_timeout(None)
        .timeout(Some(Duration::from_secs(40)))
        .build()
        .unwrap();
    let request = http::Request::get(format!("https://{addr}/token"))
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let started = tokio::time::Instant::now();
    let error = client.oneshot(request).await.unwrap_err();
    let transport = error.downcast_ref::<TransportError>().unwrap();
    assert_eq!(transport.kind(), TransportErrorKind::Timeout, "{transport}");
    assert_eq!(started.elapsed(), Duration::from_secs(40));
    drop(listener);
}

/// With the default timeouts, a single address that drops packets fails as a connection
/// (with its proxy hint), not as the attempt's timeout: the connect timeout is the shorter,
/// though the attempt's started first (DNS). Before, both were 10 s and the attempt's won:
/// "no complete response within 10s", no hint, and a single-use grant was not retried.
#[cfg(target_os = "linux")]
#[tokio::test(start_paused = true)]
async fn with_the_defaults_an_address_that_drops_packets_fails_as_a_connection() {
    use tower::ServiceExt;

    let (listener, _queued) = full_listener();
    let addr = listener.local_addr().unwrap();
    let empty: [(&str, &str); 0] = [];
    // Given (no) proxy variables: a hint, and no proxy from the environment.
    let client = HttpClient::builder()
        .proxy_from_vars(empty)
        .no_retry()
        .build()
        .unwrap();
    let request = http::Request::get(format!("https://{addr}/token"))
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let started = tokio::time::Instant::now();
    let error = client.oneshot(request).await.unwrap_err();
    let transport = error.downcast_ref::<TransportError>().unwrap();
    assert_eq!(transport.kind(), TransportErrorKind::Connect, "{transport}");
    let text = transport.to_string();
    assert!(
        text.starts_with("connection failed (if your network requires a proxy"),
        "{text}"
    );
    assert_eq!(started.elapsed(), super::DEFAULT_CONNECT_TIMEOUT);
    assert!(super::DEFAULT_CONNECT_TIMEOUT < super::DEFAULT_TIMEOUT);
    drop(listener);
}

/// What the connect timeout's docs say of hyper-util: the time is split evenly among a
/// name's addresses, tried in turn, so one that drops packets costs only its share. Two
/// loopback addresses (a full accept queue, then a listener): the second is reached after
/// half the timeout.
#[cfg(target_os = "linux")]
#[tokio::test(start_paused = true)]
async fn the_connect_timeout_is_shared_among_a_names_addresses() {
    use std::net::SocketAddr;
    use tower::ServiceExt;

    let (full, _queued) = full_listener();
    let black_hole = full.local_addr().unwrap();
    // Any 127/8 address is loopback on Linux; hyper-util connects to the URL's port.
    let port = black_hole.port();
    let open = tokio::net::TcpListener::bind(("127.0.0.2", port))
        .await
        .unwrap();
    let open_addr = open.local_addr().unwrap();
    let resolver = tower::service_fn(move |_name| async move {
        Ok::<_, std::io::Error>(vec![black_hole, open_addr].into_iter())
    });
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new_with_resolver(resolver);
    http.set_connect_timeout(Some(super::DEFAULT_CONNECT_TIMEOUT));
    let started = tokio::time::Instant::now();
    let stream = http
        .oneshot(
            format!("http://two-addresses.test:{port}/")
                .parse()
                .unwrap(),
        )
        .await
        .unwrap();
    // The default's share of two: 4 s (of 8 addresses, 1 s).
    assert_eq!(started.elapsed(), super::DEFAULT_CONNECT_TIMEOUT / 2);
    let peer: SocketAddr = stream.inner().peer_addr().unwrap();
    assert_eq!(peer, open_addr);
    drop(full);
}

/// A connection that fails where no proxy was used says why by the route it took: no proxy
/// variable set (where to set one: the environment, or the variables given), or `NO_PROXY`
/// exempting the host; nothing for clients that read no variable. Before, a client reading
/// variables always said "set HTTPS_PROXY", also where it was set and the host exempt, and
/// to a client given its variables.
#[tokio::test]
async fn a_failed_connection_hints_at_proxies_by_the_route_taken() {
    use tower::ServiceExt;

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let env_hint = "if your network requires a proxy, set HTTPS_PROXY: system proxy settings \
                    are not read";
    let vars_hint = "if your network requires a proxy, give https_proxy in the proxy \
                     variables: system proxy settings are not read";
    let exempt_hint = "connected directly: NO_PROXY exempts this host from the proxy that is set";
    let empty: [(&str, &str); 0] = [];
    let exempt = [("https_proxy", "http://p:1"), ("no_proxy", "127.0.0.1")];
    let all_exempt = [("https_proxy", "http://p:1"), ("no_proxy", "*")];
    for (builder, hint) in [
        (
            HttpClient::builder().proxy_from_vars(empty),
            Some(vars_hint),
        ),
        (
            HttpClient::builder().proxy_from_vars(exempt),
            Some(exempt_hint),
        ),
        (
            HttpClient::builder().proxy_from_vars(all_exempt),
            Some(exempt_hint),
        ),
        (HttpClient::builder().no_proxy(), None),
        (HttpClient::builder().allow_http().no_proxy(), None),
        (
            HttpClient::builder().allow_http().proxy_from_vars(empty),
            None,
        ),
    ] {
        let client = builder.no_retry().build().unwrap();
        let request = http::Request::get(format!("https://{addr}/token"))
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap();
        let error = client.oneshot(request).await.unwrap_err();
        let transport = error.downcast_ref::<TransportError>().unwrap();
        assert_eq!(transport.kind(), TransportErrorKind::Connect, "{transport}");
        let text = transport.to_string();
        match hint {
            Some(hint) => assert!(
                text.starts_with(&format!("connection failed ({hint}): ")),
                "{text}"
            ),
            None => assert!(text.starts_with("connection failed: "), "{text}"),
        }
        assert!(
            !text.contains("set HTTPS_PROXY") || hint == Some(env_hint),
            "{text}"
        );
    }
}

/// An `https`-only client refuses a plain `http` URL at once, finally, saying what to do.
/// Before, hyper-rustls's "unsupported scheme http" was a connection failure, retried (five
/// times on IMDS's schedule).
#[tokio::test(start_paused = true)]
async fn an_http_url_through_an_https_only_client_is_final_and_says_what_to_do() {
    use tower::ServiceExt;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    for retry in [
        RetryOptions::default(),
        RetryOptions::imds(Duration::from_secs(90)),
    ] {
        let client = HttpClient::builder().retry(retry).build().unwrap();
        let request = http::Request::get(url.as_str())
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap();
        let error = client.oneshot(request).await.unwrap_err();
        let transport = error.downcast_ref::<TransportError>().unwrap();
        assert_eq!(transport.attempts(), 1, "{transport}");
        assert_eq!(transport.kind(), TransportErrorKind::Scheme);
        assert!(!is_retryable_error(transport));
        let text = transport.to_string();
        assert!(
            text.contains("its URL is http://, and this client sends https only"),
            "{text}"
        );
        assert!(text.contains("HttpClient::from_service"), "{text}");
        // A configuration mistake for the credential's error too: not worth trying again.
        let failure = crate::entra::token_client::transport_failure(
            "ManagedIdentityCredential",
            "the IMDS managed identity endpoint",
            &url,
            error.as_ref(),
            &[],
        );
        assert!(
            !failure.is_transient() && !failure.is_connect(),
            "{failure}"
        );
        assert!(
            failure.to_string().contains("sends https only"),
            "{failure}"
        );
    }
}

/// An `HttpClient` wrapped again with `from_service` keeps what it sends: a credential asks
/// whether a client sends plain http when it is built.
#[test]
fn from_service_over_an_http_client_keeps_it_https_only() {
    let built = HttpClient::new();
    assert!(built.https_only());
    assert!(HttpClient::from_service(built.clone()).https_only());
    assert!(HttpClient::from_service(HttpClient::from_service(built)).https_only());
    let own = tower::service_fn(|_: HttpRequest| async {
        Ok::<_, BoxError>(HttpResponse::new(Default::default()))
    });
    assert!(!HttpClient::from_service(own).https_only());
}

#[test]
fn bad_pem_is_a_config_error() {
    let err = HttpClient::builder()
        .add_root_certificates_pem("not a pem")
        .build()
        .unwrap_err();
    assert!(
        err.message().contains("no \"-----BEGIN CERTIFICATE-----\""),
        "{err}"
    );
}

mod proxy {
    use super::super::HttpClient;
    use super::super::proxy::{ProxySetting, Route, Routing, address, routing_from};
    use crate::token::Secret;

    fn routed(vars: &[(&str, &str)], dst: &str) -> Option<String> {
        let vars = vars
            .iter()
            .map(|(n, v)| ((*n).to_owned(), Secret::new(*v)))
            .collect();
        routed_by(&ProxySetting::Vars(vars), dst)
    }

    fn routed_by(setting: &ProxySetting, dst: &str) -> Option<String> {
        described(setting.routing(), dst)
    }

    /// Where `routing` sends `dst`: `None` directly, else the proxy's address or why the
    /// proxy cannot be used.
    fn described(routing: Routing, dst: &str) -> Option<String> {
        match routing {
            Routing::Matched(rules) => match rules.route(&dst.parse().unwrap()) {
                Route::Direct => None,
                Route::Through(proxy) => Some(address(&proxy.to_string())),
                Route::Unusable(reason) => Some(format!("invalid: {reason}")),
            },
            Routing::Direct | Routing::Exempt => None,
        }
    }

    /// A proxy variable that cannot be used fails only the requests it would carry: curl,
    /// `requests` and Go connect directly to what `NO_PROXY` exempts. Before, every `https`
    /// request failed, `NO_PROXY` unread.
    #[test]
    fn an_unusable_proxy_fails_only_destinations_no_proxy_leaves_to_it() {
        let with = |no: &'static str| [("https_proxy", "https://p:1"), ("no_proxy", no)];
        let dst = "https://login.microsoftonline.com/";
        assert_eq!(way(&with("*"), dst), "exempt");
        assert_eq!(routed(&with(".microsoftonline.com"), dst), None);
        assert_eq!(routed(&with("login.microsoftonline.com:443"), dst), None);
        let text = routed(&with(".example.com"), dst).unwrap();
        assert!(
            text.starts_with("invalid: https_proxy is not a usable proxy URL: TLS to the proxy"),
            "{text}"
        );
        assert_eq!(
            routed(&with(".example.com"), "https://a.example.com/"),
            None
        );
        // An explicit URL has no NO_PROXY: `build()` refuses it, and the routing fails all.
        let explicit = ProxySetting::Url(crate::token::Secret::new("https://p:1"));
        let text = routed_by(&explicit, dst).unwrap();
        assert!(
            text.starts_with("invalid: the proxy URL is not usable: TLS to the proxy"),
            "{text}"
        );
    }

    /// A variable that is not valid UTF-8 is set, and unusable: the requests it would carry
    /// fail, naming it and not quoting it. Before, it was read as unset (`std::env::var(..)
    /// .ok()`): `https_proxy` fell through to `all_proxy`, or to no proxy at all, and a
    /// `no_proxy` to `NO_PROXY`, or to none, proxying the hosts it meant to exempt.
    #[cfg(unix)]
    #[test]
    fn a_variable_that_is_not_utf8_is_unusable_not_unset() {
        use std::ffi::OsString;
        use std::os::unix::ffi::OsStringExt;

        let bytes = |value: &[u8]| OsString::from_vec(value.to_vec());
        let routed_os = |vars: &[(&str, OsString)], dst: &str| {
            described(
                routing_from(|name| {
                    vars.iter()
                        .find(|(n, _)| *n == name)
                        .map(|(_, v)| v.clone())
                }),
                dst,
            )
        };
        let dst = "https://login.microsoftonline.com/";
        let url = bytes(b"http://user:p\xe9ss-Qz@p:1");
        for (vars, reason) in [
            (
                vec![
                    ("https_proxy", url.clone()),
                    ("all_proxy", "http://a:2".into()),
                ],
                "https_proxy",
            ),
            (
                vec![
                    ("HTTPS_PROXY", url.clone()),
                    ("ALL_PROXY", "http://a:2".into()),
                ],
                "HTTPS_PROXY",
            ),
            (vec![("all_proxy", url.clone())], "all_proxy"),
        ] {
            let text = routed_os(&vars, dst).unwrap();
            assert_eq!(text, format!("invalid: {reason} is not valid UTF-8"));
        }
        // A `NO_PROXY` that cannot be read fails every request, also those it may exempt.
        let no = bytes(b"caf\xe9.test,login.microsoftonline.com");
        let through = OsString::from("http://p:1");
        for (vars, name) in [
            (
                vec![("https_proxy", through.clone()), ("no_proxy", no.clone())],
                "no_proxy",
            ),
            (
                vec![
                    ("https_proxy", through.clone()),
                    ("NO_PROXY", no.clone()),
                    ("no_proxy", " ".into()),
                ],
                "NO_PROXY",
            ),
        ] {
            for dst in [dst, "https://10.1.2.3/", "https://caf.test/"] {
                let text = routed_os(&vars, dst).unwrap();
                assert!(
                    text.starts_with(&format!(
                        "invalid: {name} is not valid UTF-8 (which hosts it exempts"
                    )),
                    "{dst}: {text}"
                );
            }
        }
        // The lower-case name is read first, as ever: an unreadable upper-case one beside it is
        // not read.
        let vars = [
            ("https_proxy", through.clone()),
            ("no_proxy", "login.microsoftonline.com".into()),
            ("NO_PROXY", no.clone()),
        ];
        assert_eq!(routed_os(&vars, dst), None);
        // With no proxy, `NO_PROXY` is not read.
        assert_eq!(routed_os(&[("no_proxy", no.clone())], dst), None);
        // An unreadable proxy URL is named first.
        let text = routed_os(&[("https_proxy", url), ("no_proxy", no)], dst).unwrap();
        assert_eq!(text, "invalid: https_proxy is not valid UTF-8");
        assert!(!text.contains("Qz") && !text.contains('\u{fffd}'), "{text}");
    }

    /// hyper-util reads a bracketed address as a domain name: `[::1]` used to match nothing.
    #[test]
    fn a_bracketed_ipv6_address_in_no_proxy_is_that_address() {
        let with = |no: &'static str| [("https_proxy", "http://p:1"), ("no_proxy", no)];
        assert_eq!(routed(&with("[::1]"), "https://[::1]:9443/"), None);
        assert_eq!(routed(&with(" [::1] ,x.test"), "https://[::1]/"), None);
        assert_eq!(
            routed(&with("[::1]"), "https://[::2]:9443/").as_deref(),
            Some("p:1")
        );
    }

    #[test]
    fn variables_lower_case_first_https_then_all() {
        let dst = "https://login.microsoftonline.com/x";
        let both = [
            ("HTTPS_PROXY", "http://upper:1"),
            ("https_proxy", "http://lower:2"),
        ];
        assert_eq!(routed(&both, dst).as_deref(), Some("lower:2"));
        let all = [("ALL_PROXY", "upper-all:3"), ("https_proxy", "")];
        assert_eq!(routed(&all, dst).as_deref(), Some("upper-all:3"));
        // HTTP_PROXY is for http destinations, which are never proxied.
        assert_eq!(routed(&[("HTTP_PROXY", "http://h:4")], dst), None);
        assert_eq!(
            routed(&[("ALL_PROXY", "http://a:5")], "http://169.254.169.254/"),
            None
        );
        assert_eq!(routed(&[], dst), None);
    }

    #[test]
    fn no_proxy_rules() {
        let with = |no: &'static str| [("https_proxy", "http://p:1"), ("no_proxy", no)];
        let dst = "https://login.microsoftonline.com/";
        assert_eq!(routed(&with("microsoftonline.com"), dst), None);
        assert_eq!(routed(&with(".microsoftonline.com"), dst), None);
        assert!(routed(&with("online.com"), dst).is_some());
        // Blanks separate entries as commas do.
        assert_eq!(routed(&with("other.test microsoftonline.com"), dst), None);
        assert_eq!(
            routed(&with("other.test,\tmicrosoftonline.com\n"), dst),
            None
        );
        assert_eq!(
            routed(&with("other.test\t10.1.0.0/16"), "https://10.1.2.3/"),
            None
        );
        assert_eq!(
            routed(
                &with("other.test login.test:8443"),
                "https://login.test:8443/"
            ),
            None
        );
        assert_eq!(routed(&with("10.1.0.0/16"), "https://10.1.2.3/"), None);
        assert!(routed(&with("10.1.0.0/16"), "https://10.2.0.1/").is_some());
        assert_eq!(routed(&with("::1"), "https://[::1]:8443/"), None);
        // Upper case is read when lower case is unset.
        let upper = [
            ("https_proxy", "http://p:1"),
            ("NO_PROXY", "microsoftonline.com"),
        ];
        assert_eq!(routed(&upper, dst), None);
    }

    /// How `vars` route `dst`: `direct` (no proxy set), `exempt` (`NO_PROXY` is `*`),
    /// `bypassed` (a `NO_PROXY` entry matches), or through the proxy at this address.
    fn way(vars: &[(&str, &str)], dst: &str) -> String {
        let vars = vars
            .iter()
            .map(|(n, v)| ((*n).to_owned(), Secret::new(*v)))
            .collect();
        match ProxySetting::Vars(vars).routing() {
            Routing::Direct => "direct".to_owned(),
            Routing::Exempt => "exempt".to_owned(),
            routing => described(routing, dst).unwrap_or_else(|| "bypassed".to_owned()),
        }
    }

    /// `*` exempts every host, addresses included, only as the whole value (blanks around it
    /// aside), as curl and Python have it; among other entries it matches nothing. Before,
    /// any `*` entry exempted every host (`localhost,*` proxied nothing), and a `*` handed to
    /// hyper-util would have matched every name but no address.
    #[test]
    fn no_proxy_star_alone_exempts_every_host_and_among_others_none() {
        let with = |no: &'static str| [("https_proxy", "http://p:1"), ("no_proxy", no)];
        for dst in [
            "https://login.test/",
            "https://10.1.2.3/",
            "https://[2001:db8::1]:8443/",
        ] {
            assert_eq!(way(&with("*"), dst), "exempt", "{dst}");
            assert_eq!(way(&with(" *\t"), dst), "exempt", "{dst}");
            for no in ["localhost,*", "* ,other.test", "*,*", "localhost *"] {
                assert_eq!(way(&with(no), dst), "p:1", "{no}: {dst}");
            }
            // No proxy set: direct, whatever NO_PROXY says.
            assert_eq!(way(&[("no_proxy", "localhost")], dst), "direct", "{dst}");
        }
        assert_eq!(way(&with("*,10.0.0.0/8"), "https://10.1.2.3/"), "bypassed");
        assert_eq!(
            way(&with("*,login.test"), "https://login.test/"),
            "bypassed"
        );
    }

    // hyper-util compares hosts only, so `host:port` entries used to match nothing.
    #[test]
    fn no_proxy_entries_with_a_port_bypass_that_port_only() {
        let with = |no: &'static str| [("https_proxy", "http://p:1"), ("no_proxy", no)];
        let bypassed = |no: &'static str, dst: &str| routed(&with(no), dst).is_none();
        assert!(bypassed("login.test:8443", "https://login.test:8443/t"));
        assert!(bypassed(
            "other.test, .Login.TEST:8443",
            "https://a.login.test:8443/"
        ));
        assert!(
            !bypassed("login.test:8443", "https://login.test/t"),
            "another port"
        );
        assert!(!bypassed("login.test:8443", "https://notlogin.test:8443/"));
        // A URL without a port is on 443.
        assert!(bypassed("login.test:443", "https://login.test/t"));
        assert!(bypassed("10.1.2.3:8443", "https://10.1.2.3:8443/"));
        assert!(!bypassed("10.1.2.3:8443", "https://110.1.2.3:8443/"));
        assert!(bypassed("[::1]:8443", "https://[::1]:8443/"));
        assert!(!bypassed("[::1]:8443", "https://[::1]:9443/"));
        // A bare IPv6 address has colons and no port: still hyper-util's rule.
        assert!(bypassed("::1", "https://[::1]:9443/"));
        // Entries without a port are kept beside them.
        assert!(bypassed(
            "login.test:8443, microsoftonline.com",
            "https://login.microsoftonline.com/"
        ));
        assert!(
            !bypassed("login.test:x", "https://login.test/"),
            "not a port: never matches"
        );
    }

    /// Addresses in entries with a port compare as addresses, and blocks as blocks. Before,
    /// they compared as text: `[2001:db8:0::1]:443` did not exempt `[2001:db8::1]`, and a
    /// block with a port never matched.
    #[test]
    fn no_proxy_addresses_with_a_port_compare_as_addresses() {
        let with = |no: &'static str| [("https_proxy", "http://p:1"), ("no_proxy", no)];
        let bypassed = |no: &'static str, dst: &str| routed(&with(no), dst).is_none();
        assert!(bypassed("[2001:db8:0::1]:443", "https://[2001:db8::1]/"));
        assert!(bypassed("10.0.0.0/8:443", "https://10.1.2.3/"));
        assert!(!bypassed("10.0.0.0/8:443", "https://11.1.2.3/"));
        assert!(!bypassed("10.0.0.0/8:443", "https://10.1.2.3:8443/"));
        assert!(bypassed(
            "[2001:db8::/32]:8443",
            "https://[2001:db8:5::1]:8443/"
        ));
        assert!(!bypassed(
            "[2001:db8::/32]:8443",
            "https://[2001:db9::1]:8443/"
        ));
        assert!(bypassed("0.0.0.0/0:443", "https://192.0.2.1/"));
        assert!(!bypassed("10.0.0.0/8:443", "https://[::ffff:10.1.2.3]/"));
        assert!(!bypassed("10.0.0.0/8:443", "https://ten.test/"));
    }

    #[test]
    fn surrounding_blanks_are_no_reason_to_go_direct() {
        let dst = "https://login.microsoftonline.com/";
        for value in ["http://p:1 ", "http://p:1\r", "\thttp://p:1\r\n"] {
            assert_eq!(
                routed(&[("https_proxy", value)], dst).as_deref(),
                Some("p:1"),
                "{value:?}"
            );
        }
        let explicit = ProxySetting::Url(Secret::new(" http://p:1"));
        explicit.check().unwrap();
        assert_eq!(routed_by(&explicit, dst).as_deref(), Some("p:1"));
    }

    #[test]
    fn unusable_variables_fail_without_quoting_them() {
        for (value, reason) in [
            ("socks5://u:pw-Zx@h:1", "SOCKS proxies are not supported"),
            ("https://u:pw-Zx@h:1", "TLS to the proxy"),
            ("ftp://u:pw-Zx@h:1", "only http:// proxies"),
            ("http://u:pw-Zx@", "not a URL"),
        ] {
            let text = routed(&[("all_proxy", value)], "https://a.test/").unwrap();
            assert!(
                text.starts_with("invalid: all_proxy is not a usable"),
                "{text}"
            );
            assert!(text.contains(reason), "{value}: {text}");
            assert!(!text.contains("pw-Zx"), "{text}");
        }
    }

    #[test]
    fn address_drops_credentials_and_path() {
        assert_eq!(address("http://u:p@proxy.test:3128/x"), "proxy.test:3128");
        assert_eq!(address("proxy.test"), "proxy.test:80");
        assert_eq!(address("http://[::1]:8080"), "[::1]:8080");
        assert_eq!(address("http://[::1]"), "[::1]:80");
    }

    /// An unencoded `/` in the password ends the URL's authority there, leaving `user:pa` as
    /// host and port: refused, and never shown.
    #[test]
    fn a_password_that_breaks_the_url_is_refused_and_never_shown() {
        let url = "http://user-Qa:pa/ss-Qb@proxy.test:3128";
        assert_eq!(address(url), "(unparsable URL)");
        let builder = HttpClient::builder().proxy(url);
        let text = format!("{builder:?}");
        let err = builder.build().unwrap_err().to_string();
        for shown in [&text, &err] {
            assert!(
                !shown.contains("user-Qa") && !shown.contains("pa/"),
                "{shown}"
            );
        }
        assert!(err.contains("must be percent-encoded"), "{err}");

        // A numeric start after the `/`, a user name with one, or a second `@`: each parsed
        // as another host, or split apart elsewhere than where hyper-util splits it.
        for url in [
            "http://user-Qa:2024/rest-Qb@proxy.test:3128",
            "http://apikey-Qa/part-Qb@proxy.test:3128",
            "http://user-Qa:p@ss-Qb@proxy.test:3128",
            "http://user-Qa:pass-Qb@proxy.test:3128/@",
        ] {
            assert_eq!(address(url), "(unparsable URL)", "{url}");
            let builder = HttpClient::builder().proxy(url);
            let text = format!("{builder:?}");
            let err = builder.build().unwrap_err().to_string();
            for shown in [&text, &err] {
                assert!(
                    !shown.contains("-Qa") && !shown.contains("-Qb") && !shown.contains("2024"),
                    "{url}: {shown}"
                );
            }
            assert!(err.contains("must be percent-encoded"), "{url}: {err}");
        }
    }

    #[test]
    fn builder_debug_shows_no_proxy_credentials() {
        let explicit = HttpClient::builder().proxy("http://user-Qa:pass-Qb@proxy.test:3128");
        let vars = HttpClient::builder()
            .proxy_from_vars([("HTTPS_PROXY", "http://user-Qa:pass-Qb@proxy.test:3128")]);
        let text = format!(
            "{explicit:?} {vars:?} {:?}",
            explicit.clone().build().unwrap()
        );
        assert!(text.contains("Url(proxy.test:3128)"), "{text}");
        assert!(text.contains("Vars([\"HTTPS_PROXY\"])"), "{text}");
        assert!(
            !text.contains("user-Qa") && !text.contains("pass-Qb"),
            "{text}"
        );
        assert!(HttpClient::builder().proxy("socks5://h:1").build().is_err());
    }
}

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};

use super::error::{TransportError, TransportErrorKind};
use super::retry::{
    IMDS_GONE_BACKOFF, MAX_RETRY_AFTER, RetryOptions, RetryPolicy, imds_backoff,
    is_retryable_error, is_retryable_status, retry_after,
};
use super::{HttpClient, HttpResponse};
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
    assert_eq!(
        retry_after(
            &headers(&[("retry-after-ms", "250"), ("retry-after", "9")]),
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

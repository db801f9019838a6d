//! `Retry-After` reading.

use std::time::{Duration, SystemTime};

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue};

/// The longest wait [`retry_after`](fn@retry_after) may return: the crate reads any longer `Retry-After`
/// (up to `1e300` seconds or a date in the year 9999) as this.
pub const RETRY_AFTER_BOUND: Duration = crate::transport::MAX_RETRY_AFTER;

/// The header names the retry policy reads, in the order a selector byte picks them.
const RETRY_HEADERS: [&str; 4] = [
    "retry-after",
    "retry-after-ms",
    "x-ms-retry-after-ms",
    "x-unrelated",
];

/// `Retry-After` and its millisecond variants.
///
/// Input layout: four bytes (little-endian) are "now" in seconds after the Unix epoch, then
/// `\n`-separated header lines whose first byte picks the name (`retry-after`,
/// `retry-after-ms`, `x-ms-retry-after-ms`, or an unrelated one) and whose rest is the value
/// (lines that are not valid header values are dropped).
///
/// Checks: no panic; the wait is at most [`RETRY_AFTER_BOUND`]; when the only header is
/// `retry-after` and its value is a plain number of seconds from 0 to 10⁹, the wait is that
/// number of seconds (to the millisecond), or the bound when it is larger.
pub fn retry_after(data: &[u8]) {
    let Some((now, rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(u32::from_le_bytes(*now)));
    let mut headers = HeaderMap::new();
    for line in rest.split(|&b| b == b'\n') {
        let Some((&selector, value)) = line.split_first() else {
            continue;
        };
        let name = RETRY_HEADERS[usize::from(selector) % RETRY_HEADERS.len()];
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append(HeaderName::from_static(name), value);
        }
    }
    let wait = crate::transport::retry_after(&headers, now);
    if let Some(wait) = wait {
        assert!(
            wait <= RETRY_AFTER_BOUND,
            "retry_after({headers:?}) = {wait:?}, beyond {RETRY_AFTER_BOUND:?}"
        );
    }
    let only_retry_after = headers
        .keys()
        .all(|k| k == "retry-after" || k == "x-unrelated");
    let seconds = headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| (0.0..=1e9).contains(s));
    if let (true, Some(seconds)) = (only_retry_after, seconds) {
        let wait = wait.unwrap_or_else(|| panic!("retry_after({headers:?}) ignored {seconds}"));
        let expected = seconds.min(RETRY_AFTER_BOUND.as_secs_f64());
        let diff = (wait.as_secs_f64() - expected).abs();
        assert!(
            diff < 1e-3,
            "retry_after({headers:?}) = {wait:?}, not {expected} s"
        );
    }
}

//! The answers of every managed identity source: one parser for tokens, one for errors.
//!
//! Sources disagree on types (IMDS sends every number as a string, App Service's `expires_on`
//! is a string of epoch seconds, Azure ML's may be a date such as `06/20/2019 02:57:58 +00:00`
//! or `1/16/2020 5:24:12 AM +00:00`) and on error shapes (`error`/`error_description`, Service
//! Fabric's `{"error":{"code","message"}}`, plain text), so this parser accepts them all.

use http::StatusCode;
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::{ManagedIdentitySource, NAME};
use crate::encoding::{number, number_field, string_field, token_lifetime};
use crate::error::{CredentialError, ProviderDetails};
use crate::redact::{excerpt, quoted_line};
use crate::token::{AccessToken, HALF_LIFE_THRESHOLD, Secret, clamped_lifetime, instant_after};

/// Longest provider text quoted in an error.
const PROVIDER_TEXT_CHARS: usize = 300;

/// A token answer, with the identity the endpoint says it issued the token for.
#[derive(Debug)]
pub(crate) struct MiToken {
    pub(crate) token: AccessToken,
    pub(crate) echo: Echo,
}

/// The ids of the identity an answer names, when it names them (Arc, IMDS).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Echo {
    pub(crate) client_id: Option<String>,
    pub(crate) object_id: Option<String>,
    /// `msi_res_id` or `mi_res_id`.
    pub(crate) resource_id: Option<String>,
}

/// An endpoint's answer: a token for a 2xx with one, else an *authentication failed* error
/// with the status and the endpoint's own words, scrubbed of `secrets` and token values.
pub(crate) fn parse_answer(
    source: ManagedIdentitySource,
    status: StatusCode,
    body: &[u8],
    secrets: &[&str],
    sent_at: Instant,
    sent_at_unix: u64,
) -> Result<MiToken, CredentialError> {
    let json = serde_json::from_slice::<Value>(body).ok();
    let object = json.as_ref().and_then(Value::as_object);
    let has_error = object.is_some_and(|o| o.get("error").is_some_and(|e| !e.is_null()));
    if !status.is_success() || has_error {
        return Err(failure(source, status, body, secrets));
    }
    let parsed = match object {
        Some(object) => parse_token(object, sent_at, sent_at_unix),
        None => Err(format!(
            "the body is not a JSON object (it starts: \"{}\")",
            excerpt(body, secrets, 80)
        )),
    };
    parsed.map_err(|reason| {
        CredentialError::authentication_failed(
            NAME,
            format!("unexpected answer from the {source} managed identity endpoint: {reason}"),
        )
        .with_provider(ProviderDetails {
            status: Some(status),
            ..ProviderDetails::default()
        })
    })
}

/// The error for an answer that is not a token: HTTP status and what the endpoint said.
pub(crate) fn failure(
    source: ManagedIdentitySource,
    status: StatusCode,
    body: &[u8],
    secrets: &[&str],
) -> CredentialError {
    let said = provider_text(body, secrets);
    CredentialError::authentication_failed(
        NAME,
        format!(
            "the {source} managed identity endpoint answered HTTP {status}: {}",
            said.text
        ),
    )
    .with_provider(ProviderDetails {
        status: Some(status),
        error: said.code,
        ..ProviderDetails::default()
    })
}

/// What an endpoint said in an error answer, scrubbed and short.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ProviderText {
    /// The error code, when the body has one (`invalid_request`, `SecretHeaderNotFound`).
    pub(crate) code: Option<String>,
    /// `(code) description`, the message, or the start of the body.
    pub(crate) text: String,
}

/// Reads `error`/`error_description`, `{"error":{"code","message"}}` (Service Fabric),
/// `message`/`Message`, or else the start of the body.
pub(crate) fn provider_text(body: &[u8], secrets: &[&str]) -> ProviderText {
    let json = serde_json::from_slice::<Value>(body).ok();
    // A token in an error answer is scrubbed wherever the text repeats it, not only where it
    // looks like one.
    let issued = json
        .as_ref()
        .and_then(|v| v.get("access_token"))
        .and_then(Value::as_str);
    let secrets: Vec<&str> = secrets.iter().copied().chain(issued).collect();
    let secrets = secrets.as_slice();
    let clean = |s: &str| quoted_line(s, secrets, PROVIDER_TEXT_CHARS);
    if let Some(object) = json.as_ref().and_then(Value::as_object) {
        let string =
            |o: &Map<String, Value>, name: &str| o.get(name).and_then(Value::as_str).map(&clean);
        let (code, description) = match object.get("error") {
            Some(Value::String(_)) => (
                string(object, "error"),
                string(object, "error_description").or_else(|| string(object, "message")),
            ),
            Some(Value::Object(inner)) => (string(inner, "code"), string(inner, "message")),
            _ => (
                None,
                string(object, "message").or_else(|| string(object, "Message")),
            ),
        };
        let text = match (&code, description) {
            (Some(c), Some(d)) => Some(format!("({c}) {d}")),
            (Some(c), None) => Some(format!("({c})")),
            (None, Some(d)) => Some(d),
            (None, None) => None,
        };
        if let Some(text) = text {
            return ProviderText { code, text };
        }
    }
    let start = excerpt(body, secrets, PROVIDER_TEXT_CHARS);
    ProviderText {
        code: None,
        text: if start.is_empty() {
            "(empty body)".to_owned()
        } else {
            format!("\"{start}\"")
        },
    }
}

/// A token from a success answer. Reasons never quote the token.
fn parse_token(
    object: &Map<String, Value>,
    sent_at: Instant,
    sent_at_unix: u64,
) -> Result<MiToken, String> {
    let access_token = match object.get("access_token") {
        Some(Value::String(t)) if !t.is_empty() => Secret::new(t.as_str()),
        _ => return Err("the answer has no access_token".into()),
    };
    // `expires_in` wins, `expires_on` (epoch seconds, or Azure ML's date) only without it:
    // Entra's answers are read by the same rule.
    let lifetime = token_lifetime(object, sent_at_unix, |value| {
        number(value)
            .or_else(|| value.as_str().and_then(parse_date))
            .ok_or_else(|| "expires_on is neither epoch seconds nor a date".to_owned())
    })?;
    let lifetime = clamped_lifetime(lifetime);
    if lifetime.is_zero() {
        return Err("the token it issued has already expired".into());
    }
    let lifetime = lifetime.as_secs();
    // Only a hint: one that cannot be read is as if not sent (the token is still good).
    let refresh_in = number_field(object, "refresh_in").unwrap_or_else(|reason| {
        tracing::debug!(credential = NAME, "refresh_in ignored: {reason}");
        None
    });
    let refresh_in = match refresh_in {
        Some(secs) => Some(secs.min(lifetime)),
        None if std::time::Duration::from_secs(lifetime) >= HALF_LIFE_THRESHOLD => {
            Some(lifetime / 2)
        }
        None => None,
    };
    let token_type = match object.get("token_type") {
        Some(Value::String(t)) if !t.trim().is_empty() => t.trim(),
        _ => "Bearer",
    };
    let token = AccessToken::new(access_token, instant_after(sent_at, lifetime))
        .with_refresh_on(refresh_in.map(|s| instant_after(sent_at, s)))
        .with_token_type(token_type);
    let string = |name: &str| string_field(object, name);
    Ok(MiToken {
        token,
        echo: Echo {
            client_id: string("client_id"),
            object_id: string("object_id"),
            resource_id: string("msi_res_id").or_else(|| string("mi_res_id")),
        },
    })
}

/// Azure ML's dates: `M/D/YYYY H:MM:SS [AM|PM] ±HH:MM`, as Unix seconds.
pub(crate) fn parse_date(text: &str) -> Option<u64> {
    let mut parts = text.split_whitespace();
    let date = parts.next()?;
    let time = parts.next()?;
    let (meridiem, offset) = match (parts.next()?, parts.next()) {
        (offset, None) => (None, offset),
        (meridiem, Some(offset)) => (Some(meridiem), offset),
    };
    if parts.next().is_some() {
        return None;
    }
    let mut ymd = date.split('/').map(small_number);
    let (month, day, year) = (ymd.next()??, ymd.next()??, ymd.next()??);
    let mut hms = time.split(':').map(small_number);
    let (hour, minute, second) = (hms.next()??, hms.next()??, hms.next()??);
    if ymd.next().is_some() || hms.next().is_some() {
        return None;
    }
    let hour = match meridiem.map(str::to_ascii_uppercase).as_deref() {
        None if hour < 24 => hour,
        Some("AM") if (1..=12).contains(&hour) => hour % 12,
        Some("PM") if (1..=12).contains(&hour) => (hour % 12).checked_add(12)?,
        _ => return None,
    };
    if !(1970..=9999).contains(&year) || minute > 59 || second > 59 {
        return None;
    }
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let offset_secs = parse_offset(offset)?;
    let days = days_from_civil(year, month, day)?;
    let local = days
        .checked_mul(86_400)?
        .checked_add(hour.checked_mul(3600)?)?
        .checked_add(minute.checked_mul(60)?)?
        .checked_add(second)?;
    u64::try_from(local.checked_sub(offset_secs)?).ok()
}

/// One to four ASCII digits.
fn small_number(text: &str) -> Option<i64> {
    (!text.is_empty() && text.len() <= 4 && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

/// `+HH:MM` or `-HH:MM` as seconds east of UTC.
fn parse_offset(text: &str) -> Option<i64> {
    let (sign, rest) = match text.as_bytes().first()? {
        b'+' => (1, text.get(1..)?),
        b'-' => (-1, text.get(1..)?),
        _ => return None,
    };
    let (hours, minutes) = rest.split_once(':')?;
    let (hours, minutes) = (small_number(hours)?, small_number(minutes)?);
    if hours > 14 || minutes > 59 {
        return None;
    }
    hours
        .checked_mul(3600)?
        .checked_add(minutes.checked_mul(60)?)?
        .checked_mul(sign)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> Option<i64> {
    let year = if month <= 2 {
        year.checked_sub(1)?
    } else {
        year
    };
    let era = year.checked_div(400)?;
    let year_of_era = year.checked_sub(era.checked_mul(400)?)?;
    let shifted_month = if month > 2 {
        month.checked_sub(3)?
    } else {
        month.checked_add(9)?
    };
    let day_of_year = shifted_month
        .checked_mul(153)?
        .checked_add(2)?
        .checked_div(5)?
        .checked_add(day)?
        .checked_sub(1)?;
    let day_of_era = year_of_era
        .checked_mul(365)?
        .checked_add(year_of_era.checked_div(4)?)?
        .checked_sub(year_of_era.checked_div(100)?)?
        .checked_add(day_of_year)?;
    era.checked_mul(146_097)?
        .checked_add(day_of_era)?
        .checked_sub(719_468)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const NOW: u64 = 1_700_000_000;

    fn parse(status: u16, body: &str) -> Result<MiToken, CredentialError> {
        parse_answer(
            ManagedIdentitySource::AppService,
            StatusCode::from_u16(status).unwrap(),
            body.as_bytes(),
            &["the-identity-header"],
            Instant::now(),
            NOW,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_as_number_string_or_date() {
        for body in [
            r#"{"access_token":"a","expires_in":3600}"#,
            r#"{"access_token":"a","expires_in":"3600","expires_on":"1"}"#,
            r#"{"access_token":"a","expires_on":1700003600}"#,
            r#"{"access_token":"a","expires_on":"1700003600"}"#,
            r#"{"access_token":"a","expires_on":"11/14/2023 23:13:20 +00:00"}"#,
            r#"{"access_token":"a","expires_on":"11/14/2023 11:13:20 PM +00:00"}"#,
            r#"{"access_token":"a","expires_on":"11/15/2023 1:13:20 AM +02:00"}"#,
        ] {
            let t = parse(200, body).unwrap().token;
            assert_eq!(t.expires_in(), Duration::from_secs(3600), "{body}");
            assert_eq!(t.refresh_on(), None, "{body}");
            assert_eq!(t.token_type(), "Bearer");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn expires_in_wins_so_expires_on_is_not_read_beside_it() {
        for body in [
            r#"{"access_token":"x","expires_in":3599,"expires_on":"2024-06-20T02:57:58Z"}"#,
            r#"{"access_token":"x","expires_in":"3599","expires_on":{"when":"later"}}"#,
            r#"{"access_token":"x","expires_in":3599,"expires_on":-1}"#,
        ] {
            let t = parse(200, body).unwrap().token;
            assert_eq!(t.expires_in(), Duration::from_secs(3599), "{body}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreadable_expires_in_gives_way_to_a_good_expires_on() {
        for body in [
            r#"{"access_token":"x","expires_in":"soon","expires_on":"1700003600"}"#,
            r#"{"access_token":"x","expires_in":-5,"expires_on":1700003600}"#,
            r#"{"access_token":"x","expires_in":[1],"expires_on":"11/14/2023 23:13:20 +00:00"}"#,
        ] {
            let t = parse(200, body).unwrap().token;
            assert_eq!(t.expires_in(), Duration::from_secs(3600), "{body}");
        }
        // Neither readable: both named.
        let err = parse(
            200,
            r#"{"access_token":"eyJa.b.c","expires_in":"soon","expires_on":"later"}"#,
        )
        .unwrap_err();
        assert!(
            err.message().contains("expires_in is not")
                && err.message().contains("expires_on is neither"),
            "{err}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_malformed_refresh_in_is_as_if_absent() {
        for (body, half_life) in [
            (
                r#"{"access_token":"x","expires_in":3599,"refresh_in":"soon"}"#,
                false,
            ),
            (
                r#"{"access_token":"x","expires_in":3599,"refresh_in":-5}"#,
                false,
            ),
            (
                r#"{"access_token":"x","expires_in":86400,"refresh_in":[1]}"#,
                true,
            ),
        ] {
            let t = parse(200, body).unwrap().token;
            let want = half_life.then(|| t.expires_on() - Duration::from_secs(43200));
            assert_eq!(t.refresh_on(), want, "{body}");
        }
    }

    #[test]
    fn azure_ml_dates() {
        assert_eq!(
            parse_date("06/20/2019 02:57:58 +00:00"),
            Some(1_560_999_478)
        );
        assert_eq!(
            parse_date("1/16/2020 5:24:12 AM +00:00"),
            Some(1_579_152_252)
        );
        assert_eq!(
            parse_date("1/16/2020 5:24:12 PM +00:00"),
            Some(1_579_195_452)
        );
        assert_eq!(
            parse_date("1/16/2020 12:00:00 AM +00:00"),
            Some(1_579_132_800)
        );
        assert_eq!(
            parse_date("1/16/2020 12:00:00 PM -01:30"),
            Some(1_579_181_400)
        );
        assert_eq!(parse_date("2/29/2024 00:00:00 +00:00"), Some(1_709_164_800));
        for bad in [
            "",
            "2/30/2024 00:00:00 +00:00",
            "13/1/2024 00:00:00 +00:00",
            "1/1/2024 24:00:00 +00:00",
            "1/1/2024 13:00:00 PM +00:00",
            "1/1/2024 0:00:00 AM +00:00",
            "1/1/2024 00:60:00 +00:00",
            "1/1/2024 00:00:00 +15:00",
            "1/1/2024 00:00:00 00:00",
            "1/1/2024 00:00:00 +00:00 extra",
            "1/1/1969 00:00:00 +00:00",
            "1/1/99999 00:00:00 +00:00",
            "1/1/2024T00:00:00 +00:00",
            "-1/1/2024 00:00:00 +00:00",
            "1/1/2024 00:00:00 XM +00:00",
        ] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn long_tokens_refresh_at_half_life_unless_refresh_in() {
        let t = parse(200, r#"{"access_token":"a","expires_in":"86399"}"#)
            .unwrap()
            .token;
        assert_eq!(
            t.refresh_on(),
            Some(Instant::now() + Duration::from_secs(43199))
        );
        let t = parse(
            200,
            r#"{"access_token":"a","expires_in":86400,"refresh_in":"600"}"#,
        )
        .unwrap()
        .token;
        assert_eq!(
            t.refresh_on(),
            Some(Instant::now() + Duration::from_secs(600))
        );
        let t = parse(200, r#"{"access_token":"a","expires_in":7199}"#)
            .unwrap()
            .token;
        assert_eq!(t.refresh_on(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn absurd_numbers_are_clamped() {
        let week = crate::token::MAX_TOKEN_LIFETIME;
        for body in [
            r#"{"access_token":"a","expires_in":1e300}"#,
            r#"{"access_token":"a","expires_in":"18446744073709551615"}"#,
            r#"{"access_token":"a","expires_on":99999999999999999999}"#,
            r#"{"access_token":"a","expires_on":"12/31/9999 23:59:59 -14:00"}"#,
        ] {
            let t = parse(200, body).unwrap().token;
            assert_eq!(t.expires_in(), week, "{body}");
        }
        let t = parse(
            200,
            r#"{"access_token":"a","expires_in":60,"refresh_in":1e20}"#,
        )
        .unwrap()
        .token;
        assert_eq!(t.refresh_on(), Some(t.expires_on()));
    }

    #[tokio::test(start_paused = true)]
    async fn missing_or_bad_fields_are_named_without_the_token() {
        let cases = [
            (
                r#"{"access_token":"eyJa.b.c"}"#,
                "neither expires_in nor expires_on",
            ),
            (r#"{"access_token":"","expires_in":1}"#, "no access_token"),
            (r#"{"expires_in":1}"#, "no access_token"),
            (
                r#"{"access_token":"eyJa.b.c","expires_in":-5}"#,
                "expires_in is not",
            ),
            (
                r#"{"access_token":"eyJa.b.c","expires_on":"soon"}"#,
                "neither epoch",
            ),
            (
                r#"{"access_token":"eyJa.b.c","expires_on":"1"}"#,
                "already expired",
            ),
            (
                r#"{"access_token":"eyJa.b.c","expires_in":0}"#,
                "already expired",
            ),
            ("access_token=eyJa.b.c&expires_in=5", "not a JSON object"),
        ];
        for (body, want) in cases {
            let err = parse(200, body).unwrap_err();
            assert!(err.is_authentication_failed(), "{body}");
            assert!(err.message().contains(want), "{body}: {err}");
            assert!(!err.message().contains("eyJa"), "{err}");
        }
    }

    #[test]
    fn identity_echo_and_token_type() {
        let r = parse(
            200,
            r#"{"access_token":"a","expires_in":60,"token_type":"pop","client_id":"c","object_id":"o","mi_res_id":"/r"}"#,
        )
        .unwrap();
        assert_eq!(r.token.token_type(), "pop");
        assert_eq!(
            r.echo,
            Echo {
                client_id: Some("c".into()),
                object_id: Some("o".into()),
                resource_id: Some("/r".into())
            }
        );
    }

    #[test]
    fn error_shapes() {
        let text = |body: &str| provider_text(body.as_bytes(), &["the-identity-header"]);
        assert_eq!(
            text(r#"{"error":"invalid_request","error_description":"Identity not found"}"#),
            ProviderText {
                code: Some("invalid_request".into()),
                text: "(invalid_request) Identity not found".into()
            }
        );
        assert_eq!(
            text(
                r#"{"error":{"code":"SecretHeaderNotFound","message":"Secret is not found in the request headers."}}"#
            ),
            ProviderText {
                code: Some("SecretHeaderNotFound".into()),
                text: "(SecretHeaderNotFound) Secret is not found in the request headers.".into()
            }
        );
        assert_eq!(
            text(r#"{"statusCode":500,"Message":"An error\r\noccurred"}"#).text,
            "An error occurred"
        );
        assert_eq!(
            text("Bad gateway: the-identity-header eyJa.b.c").text,
            "\"Bad gateway: *** ***\""
        );
        assert_eq!(text("").text, "(empty body)");
        let long = text(&format!(
            "{{\"error\":\"x\",\"error_description\":\"{}\"}}",
            "y".repeat(900)
        ));
        assert!(
            long.text.chars().count() < PROVIDER_TEXT_CHARS + 10,
            "{}",
            long.text
        );
    }

    #[tokio::test(start_paused = true)]
    async fn errors_carry_status_code_and_scrubbed_text() {
        let err = parse(
            500,
            r#"{"error":"server_error","error_description":"echo: the-identity-header and access_token=zzz"}"#,
        )
        .unwrap_err();
        assert!(err.is_authentication_failed());
        assert_eq!(err.status(), Some(StatusCode::INTERNAL_SERVER_ERROR));
        assert_eq!(err.error_code(), Some("server_error"));
        let shown = format!("{err} {err:?}");
        assert!(
            !shown.contains("the-identity-header") && !shown.contains("zzz"),
            "{shown}"
        );
        assert!(
            shown.contains("App Service managed identity endpoint answered HTTP 500"),
            "{shown}"
        );
        // The token of an error answer is not quoted wherever the text repeats it.
        let err = parse(
            500,
            r#"{"error":"x","error_description":"issued plainTokenValue42","access_token":"plainTokenValue42"}"#,
        )
        .unwrap_err();
        assert!(
            !format!("{err} {err:?}").contains("plainTokenValue42"),
            "{err}"
        );
        // An error field means failure even with 200.
        let err = parse(200, r#"{"error":"invalid_resource","access_token":"a"}"#).unwrap_err();
        assert_eq!(err.error_code(), Some("invalid_resource"));
    }
}

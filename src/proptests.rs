//! Property tests over the parsers that read provider, file and process input: the
//! `WWW-Authenticate` parser, the token endpoint's answers, the managed identity endpoints'
//! answers, the MSAL cache document, the Azure CLI's output, `Retry-After`, and certificates
//! (PEM, PKCS#12 and the count of a PKCS#12 archive's key derivations), the token cache
//! file's POSIX ACL as the kernel gives it (Linux); and the scrubbing of secrets out of
//! provider text. A bounded number of cases each (see [`config`]), so the set
//! stays fast in debug builds; the fuzz targets in `fuzz/` search the same parsers for
//! longer.
//!
//! Properties that found bugs keep a note of what they found.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use http::header::WWW_AUTHENTICATE;
use http::{HeaderMap, HeaderValue, StatusCode};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

use crate::bearer::claims_challenge;
use crate::bearer::www_authenticate::{parse_challenge_value, parse_challenges};
use crate::credential::ManagedIdentitySource;
use crate::credential::azure_cli::parse_output;
use crate::credential::certificate::pkcs12_work::build::{Archive, Bag, Content, Kdf};
use crate::credential::certificate::pkcs12_work::{
    self, MAX_ITERATIONS_PER_RUN, MAX_KDF_RUNS, MAX_SCRYPT_MEMORY_BYTES, MAX_TOTAL_ITERATIONS,
};
use crate::credential::managed_identity::response::parse_answer;
use crate::entra::msal_cache::{AccessTokenQuery, CacheDocument, NewTokens};
use crate::entra::token_client::parse_response;
use crate::token::{MAX_TOKEN_LIFETIME, Secret, unix_now};
use crate::transport::retry_after;

/// 256 cases per property, no regression files written into the source tree.
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Generators shared by several parsers
// ---------------------------------------------------------------------------------------------

/// RFC 9110 `token`.
fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,12}"
}

/// Visible ASCII, space and tab: what a header value can hold as text.
fn header_text(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(prop_oneof![Just(b'\t'), 0x20u8..0x7f], 0..max)
        .prop_map(|bytes| bytes.into_iter().map(char::from).collect())
}

/// A number as providers send it: a JSON number (integer, float, huge) or a numeric string
/// (decimal, exponent, padded, beyond `u64`), or something that is no number at all.
fn provider_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<u64>().prop_map(Value::from),
        (0u64..100_000).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop_oneof![
            Just("1e20"),
            Just("1e300"),
            Just("18446744073709551616"),
            Just("18446744073709551615"),
            Just("NaN"),
            Just("inf"),
            Just("-0"),
            Just("-1"),
            Just(" 3600 "),
            Just(""),
            Just("soon"),
        ]
        .prop_map(Value::from),
        any::<u64>().prop_map(|n| Value::from(n.to_string())),
        (any::<f64>()).prop_map(|f| Value::from(f.to_string())),
        Just(json!(1e20)),
        Just(json!(1.7976931348623157e308)),
        Just(Value::Null),
        Just(json!([1])),
    ]
}

/// Small, sane lifetimes in seconds as a JSON number or a numeric string.
fn sane_seconds() -> impl Strategy<Value = (u64, Value)> {
    (1u64..200_000, any::<bool>()).prop_map(|(n, as_string)| {
        let value = if as_string {
            Value::from(n.to_string())
        } else {
            Value::from(n)
        };
        (n, value)
    })
}

// ---------------------------------------------------------------------------------------------
// WWW-Authenticate
// ---------------------------------------------------------------------------------------------

fn www_authenticate(lines: &[String]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for line in lines {
        if let Ok(value) = HeaderValue::from_str(line) {
            headers.append(WWW_AUTHENTICATE, value);
        }
    }
    headers
}

/// A structured challenge: scheme and either a token68 or parameters.
#[derive(Clone, Debug)]
struct GenChallenge {
    scheme: String,
    token68: Option<String>,
    params: Vec<(String, String)>,
}

fn challenge() -> impl Strategy<Value = GenChallenge> {
    let token68 = "[A-Za-z0-9._~+/-]{1,16}={0,2}";
    let params = proptest::collection::vec((token(), header_text(24)), 0..5);
    (token(), proptest::option::of(token68), params).prop_map(|(scheme, token68, params)| {
        GenChallenge {
            params: if token68.is_some() {
                Vec::new()
            } else {
                params
            },
            scheme,
            token68,
        }
    })
}

fn quote(value: &str) -> String {
    let mut out = String::from("\"");
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

fn print(challenges: &[GenChallenge], separator: &str) -> String {
    challenges
        .iter()
        .map(|c| {
            let mut out = c.scheme.clone();
            if let Some(t) = &c.token68 {
                out.push(' ');
                out.push_str(t);
            }
            for (i, (name, value)) in c.params.iter().enumerate() {
                out.push_str(if i == 0 { " " } else { ", " });
                out.push_str(name);
                out.push('=');
                out.push_str(&quote(value));
            }
            out
        })
        .collect::<Vec<_>>()
        .join(separator)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn www_authenticate_arbitrary_lines_never_panic(
        lines in proptest::collection::vec(header_text(120), 0..4),
    ) {
        let headers = www_authenticate(&lines);
        let _ = parse_challenges(&headers);
        if let Ok(Some(claims)) = claims_challenge(&headers) {
            prop_assert!(serde_json::from_str::<Value>(&claims).is_ok(), "{claims:?}");
        }
    }

    #[test]
    fn www_authenticate_arbitrary_text_never_panics(text in any::<String>()) {
        let _ = parse_challenge_value(&text);
    }

    #[test]
    fn www_authenticate_printed_challenges_parse_back(
        challenges in proptest::collection::vec(challenge(), 1..5),
        separator in prop_oneof![Just(", "), Just(","), Just(" , ")],
    ) {
        let line = print(&challenges, separator);
        let parsed = parse_challenge_value(&line);
        prop_assert_eq!(parsed.len(), challenges.len(), "{}", line);
        for (got, want) in parsed.iter().zip(&challenges) {
            prop_assert_eq!(got.scheme(), want.scheme.as_str());
            prop_assert_eq!(got.token68(), want.token68.as_deref());
            let params: Vec<(&str, &str)> = got.params().collect();
            let wanted: Vec<(&str, &str)> =
                want.params.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            prop_assert_eq!(params, wanted, "{}", line);
        }
    }

    #[test]
    fn www_authenticate_cae_claims_decode_to_the_json_sent(
        claims in proptest::collection::btree_map("[a-z_]{1,8}", "[ -~]{0,16}", 0..4),
        engine in 0..3usize,
        before in proptest::collection::vec(challenge(), 0..3),
    ) {
        let json = json!({ "access_token": claims }).to_string();
        let encoded = match engine {
            0 => URL_SAFE_NO_PAD.encode(&json),
            1 => URL_SAFE.encode(&json),
            _ => STANDARD.encode(&json),
        };
        // Earlier challenges that are not CAE ones (the generator makes no `error` params
        // with that value, barring a 1-in-huge coincidence that is excluded here).
        let before: Vec<GenChallenge> = before
            .into_iter()
            .filter(|c| !c.params.iter().any(|(_, v)| v == "insufficient_claims"))
            .collect();
        let mut line = print(&before, ", ");
        if !line.is_empty() {
            line.push_str(", ");
        }
        line.push_str(&format!(r#"Bearer error="insufficient_claims", claims="{encoded}""#));
        let got = claims_challenge(&www_authenticate(&[line.clone()]));
        prop_assert_eq!(got, Ok(Some(json)), "{}", line);
    }
}

// ---------------------------------------------------------------------------------------------
// Token endpoint answers
// ---------------------------------------------------------------------------------------------

const SECRET_FIELDS: [&str; 4] = ["expires_in", "expires_on", "refresh_in", "ext_expires_in"];

fn parse_token_response(
    status: u16,
    body: &[u8],
    secret: &str,
) -> Result<crate::entra::token_client::TokenResponse, crate::CredentialError> {
    parse_response(
        "PropCredential",
        StatusCode::from_u16(status).expect("status in range"),
        body,
        &[secret],
        tokio::time::Instant::now(),
        unix_now(),
    )
}

/// An answer with an access token and any of the four time fields, each any number.
fn token_answer() -> impl Strategy<Value = Map<String, Value>> {
    let field = || proptest::option::of(provider_number());
    (field(), field(), field(), field()).prop_map(|(a, b, c, d)| {
        let mut map = Map::new();
        map.insert("access_token".into(), json!("at"));
        for (name, value) in SECRET_FIELDS.iter().zip([a, b, c, d]) {
            if let Some(value) = value {
                map.insert((*name).to_owned(), value);
            }
        }
        map
    })
}

/// A secret as a client sends it: printable ASCII, at least 8 characters, not all alike,
/// spaces only single and inside (the crate turns control characters into spaces).
fn client_secret() -> impl Strategy<Value = String> {
    "[!-~](?:[!-~]| [!-~]){7,24}".prop_filter("not one repeated character", |s| {
        let first = s.chars().next();
        s.chars().any(|c| Some(c) != first)
    })
}

fn encodings(secret: &str) -> Vec<String> {
    let form: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    let json = serde_json::to_string(secret).expect("string");
    vec![
        secret.to_owned(),
        form.clone(),
        form.replace('+', "%20"),
        json[1..json.len() - 1].to_owned(),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Any status, any bytes.
    #[test]
    fn token_response_arbitrary_bodies_never_panic(
        status in 100u16..1000,
        body in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let _ = parse_token_response(status, &body, "the-client-secret");
    }

    /// Sane numbers, as JSON numbers or numeric strings, are read as given.
    #[test]
    fn token_response_sane_lifetimes_are_read(
        (expires_in, expires_in_json) in sane_seconds(),
        refresh_in in proptest::option::of(sane_seconds()),
    ) {
        let mut body = json!({ "access_token": "at", "expires_in": expires_in_json });
        if let Some((_, value)) = &refresh_in {
            body["refresh_in"] = value.clone();
        }
        let sent_at = unix_now();
        let response = parse_response(
            "PropCredential",
            StatusCode::OK,
            body.to_string().as_bytes(),
            &[],
            tokio::time::Instant::now(),
            sent_at,
        )
        .expect("a sane answer parses");
        prop_assert_eq!(response.expires_on, sent_at + expires_in);
        prop_assert!(response.token.expires_in() <= Duration::from_secs(expires_in));
        if let Some((refresh_in, _)) = refresh_in {
            // A refresh time past expiry means expiry.
            prop_assert_eq!(response.refresh_on, Some(sent_at + refresh_in.min(expires_in)));
        }
    }

    /// An error answer quoting the secret, in any of its encodings, anywhere in its text
    /// fields, never shows it.
    #[test]
    fn token_response_errors_never_show_the_secret(
        secret in client_secret(),
        status in prop_oneof![Just(200u16), Just(400), Just(401), Just(500), 100u16..1000],
        which in 0..4usize,
        field in prop_oneof![
            Just("error"), Just("error_description"), Just("correlation_id"), Just("body"),
        ],
        prefix in "[ -~]{0,12}",
        suffix in "[ -~]{0,12}",
    ) {
        let encoded = &encodings(&secret)[which];
        let text = format!("{prefix}{encoded}{suffix}");
        let body = if field == "body" {
            text.clone()
        } else {
            let mut body = json!({ "error": "invalid_client", "error_description": "d" });
            body[field] = Value::from(text.clone());
            body.to_string()
        };
        // The same answer without the secret: whatever shows there is not a leak.
        let control_text = format!("{prefix}{suffix}");
        let control_body = if field == "body" {
            control_text
        } else {
            let mut control = json!({ "error": "invalid_client", "error_description": "d" });
            control[field] = Value::from(control_text);
            control.to_string()
        };
        let control = parse_token_response(status, control_body.as_bytes(), &secret)
            .err()
            .map(|e| format!("{e} {e:?} {e:#?}"))
            .unwrap_or_default();
        if let Err(error) = parse_token_response(status, body.as_bytes(), &secret) {
            for shown in [error.to_string(), format!("{error:?}"), format!("{error:#?}")] {
                for form in encodings(&secret) {
                    prop_assert!(
                        control.contains(&form) || !shown.contains(&form),
                        "secret {:?} shown as {:?} for body {:?}:\n{}", secret, form, body, shown
                    );
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(config())]

    /// Any number in any of the four time fields: no panic, and a token never lives longer
    /// than the crate believes any token can. (Huge numbers overflowed `Instant + Duration`
    /// and `sent_at_unix + lifetime`.)
    #[test]
    fn token_response_any_numbers_never_panic_and_are_clamped(answer in token_answer()) {
        let body = Value::Object(answer).to_string();
        if let Ok(response) = parse_token_response(200, body.as_bytes(), "the-client-secret") {
            prop_assert!(
                response.token.expires_in() <= MAX_TOKEN_LIFETIME,
                "{body}: {:?}", response.token.expires_in()
            );
            prop_assert!(response.expires_on >= response.cached_at, "{body}");
            prop_assert!(
                response.token.refresh_on().is_none_or(|r| r <= response.token.expires_on()),
                "{body}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Managed identity answers
// ---------------------------------------------------------------------------------------------

/// The Unix time the managed identity properties send at.
const MI_SENT_AT: u64 = 1_700_000_000;

fn parse_mi_answer(
    status: u16,
    body: &[u8],
    secret: &str,
) -> Result<crate::credential::managed_identity::response::MiToken, crate::CredentialError> {
    parse_answer(
        ManagedIdentitySource::AzureMl,
        StatusCode::from_u16(status).expect("status in range"),
        body,
        &[secret],
        tokio::time::Instant::now(),
        MI_SENT_AT,
    )
}

/// Unix seconds as Azure ML writes a date, in its 24-hour or 12-hour form, in the given
/// offset east of UTC (minutes).
fn azure_ml_date(epoch: u64, twelve_hour: bool, offset_minutes: i64) -> String {
    let local = epoch as i64 + offset_minutes * 60;
    let (days, secs) = (local.div_euclid(86_400), local.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let sign = if offset_minutes < 0 { '-' } else { '+' };
    let offset = format!(
        "{sign}{:02}:{:02}",
        offset_minutes.abs() / 60,
        offset_minutes.abs() % 60
    );
    if twelve_hour {
        let (h12, meridiem) = match h {
            0 => (12, "AM"),
            1..=11 => (h, "AM"),
            12 => (12, "PM"),
            _ => (h - 12, "PM"),
        };
        format!("{month}/{day}/{year} {h12}:{m:02}:{s:02} {meridiem} {offset}")
    } else {
        format!("{month:02}/{day:02}/{year} {h:02}:{m:02}:{s:02} {offset}")
    }
}

/// Any JSON a provider might put in a time field: numbers, dates, text, other shapes.
fn junk_json() -> impl Strategy<Value = Value> {
    prop_oneof![
        provider_number(),
        "[ -~]{0,30}".prop_map(Value::from),
        Just(json!("2024-06-20T02:57:58Z")),
        Just(json!(null)),
        Just(json!(true)),
        Just(json!([1])),
        Just(json!({"seconds": 1})),
    ]
}

/// A managed identity answer with any of its time fields, each any number or date-like text.
fn mi_answer() -> impl Strategy<Value = Map<String, Value>> {
    let number = || proptest::option::of(provider_number());
    let date = prop_oneof![
        provider_number(),
        "[0-9]{1,2}/[0-9]{1,2}/[0-9]{1,5} [0-9]{1,2}:[0-9]{1,2}:[0-9]{1,2}( AM| PM)? [+-][0-9]{2}:[0-9]{2}"
            .prop_map(Value::from),
    ];
    (number(), proptest::option::of(date), number()).prop_map(|(a, b, c)| {
        let mut map = Map::new();
        map.insert("access_token".into(), json!("at"));
        for (name, value) in ["expires_in", "expires_on", "refresh_in"]
            .iter()
            .zip([a, b, c])
        {
            if let Some(value) = value {
                map.insert((*name).to_owned(), value);
            }
        }
        map
    })
}

proptest! {
    #![proptest_config(config())]

    /// Any status, any bytes.
    #[test]
    fn mi_response_arbitrary_bodies_never_panic(
        status in 100u16..1000,
        body in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let _ = parse_mi_answer(status, &body, "the-identity-header");
    }

    /// A sane expiry is read in each form a source sends: `expires_in`, epoch `expires_on`
    /// (number or string), or an Azure ML date in either form and any offset.
    #[test]
    fn mi_response_sane_expiry_in_any_form_is_read(
        (secs, secs_json) in sane_seconds(),
        form in 0..3u8,
        twelve_hour in any::<bool>(),
        offset_minutes in -14 * 60i64..=14 * 60,
    ) {
        let epoch = MI_SENT_AT + secs;
        let body = match form {
            0 => json!({ "access_token": "at", "expires_in": secs_json }),
            1 if secs_json.is_string() => json!({ "access_token": "at", "expires_on": epoch.to_string() }),
            1 => json!({ "access_token": "at", "expires_on": epoch }),
            _ => json!({
                "access_token": "at",
                "expires_on": azure_ml_date(epoch, twelve_hour, offset_minutes),
            }),
        };
        let token = parse_mi_answer(200, body.to_string().as_bytes(), "s3cr3t-value")
            .map_err(|e| TestCaseError::fail(format!("{body}: {e}")))?
            .token;
        // The clock runs while the test does: within a second of the lifetime sent.
        let left = token.expires_in();
        prop_assert!(left <= Duration::from_secs(secs) && left + Duration::from_secs(1) >= Duration::from_secs(secs), "{body}: {left:?}");
        let half_life = secs >= crate::token::HALF_LIFE_THRESHOLD.as_secs();
        prop_assert_eq!(token.refresh_on().is_some(), half_life, "{}", body);
    }

    /// An error answer quoting the source's secret, in any of its encodings, or the token it
    /// carries, never shows either.
    #[test]
    fn mi_response_errors_never_show_the_secret_or_the_token(
        secret in client_secret(),
        token in "[A-Za-z0-9._-]{12,40}",
        status in prop_oneof![Just(200u16), Just(400), Just(403), Just(500), 100u16..1000],
        which in 0..4usize,
        field in prop_oneof![
            Just("error"), Just("error_description"), Just("message"), Just("code"), Just("body"),
        ],
        prefix in "[ -~]{0,12}",
        suffix in "[ -~]{0,12}",
    ) {
        let encoded = &encodings(&secret)[which];
        let make = |text: String| -> String {
            match field {
                "body" => text,
                // Service Fabric's shape.
                "code" => json!({ "error": { "code": text, "message": "m" }, "access_token": token }).to_string(),
                _ => {
                    let mut body = json!({ "error": "invalid_request", "error_description": "d", "access_token": token });
                    body[field] = Value::from(text);
                    body.to_string()
                }
            }
        };
        let body = make(format!("{prefix}{encoded} {token}{suffix}"));
        let control = parse_mi_answer(status, make(format!("{prefix}{suffix}")).as_bytes(), &secret)
            .err()
            .map(|e| format!("{e} {e:?} {e:#?}"))
            .unwrap_or_default();
        if let Err(error) = parse_mi_answer(status, body.as_bytes(), &secret) {
            let mut forms = encodings(&secret);
            if field != "body" {
                forms.push(token.clone());
            }
            for shown in [error.to_string(), format!("{error:?}"), format!("{error:#?}")] {
                for form in &forms {
                    prop_assert!(
                        control.contains(form.as_str()) || !shown.contains(form.as_str()),
                        "{:?} shown for body {:?}:\n{}", form, body, shown
                    );
                }
            }
        }
    }

    /// A readable `expires_in` is the lifetime whatever `expires_on` and `refresh_in` hold
    /// (`expires_in` wins, and `refresh_in` is only a hint): the answer is never refused for
    /// them.
    #[test]
    fn mi_response_a_sane_expires_in_is_read_whatever_else_is_sent(
        (secs, secs_json) in sane_seconds(),
        expires_on in proptest::option::of(junk_json()),
        refresh_in in proptest::option::of(junk_json()),
    ) {
        let mut body = json!({ "access_token": "at", "expires_in": secs_json });
        if let Some(value) = expires_on {
            body["expires_on"] = value;
        }
        if let Some(value) = refresh_in {
            body["refresh_in"] = value;
        }
        let token = parse_mi_answer(200, body.to_string().as_bytes(), "s3cr3t-value")
            .map_err(|e| TestCaseError::fail(format!("{body}: {e}")))?
            .token;
        let left = token.expires_in();
        prop_assert!(left <= Duration::from_secs(secs) && left + Duration::from_secs(1) >= Duration::from_secs(secs), "{body}: {left:?}");
        prop_assert!(token.refresh_on().is_none_or(|r| r <= token.expires_on()), "{body}");
    }

    /// An `expires_in` that cannot be read gives way to a sane epoch `expires_on`.
    #[test]
    fn mi_response_a_sane_expires_on_is_read_beside_an_unreadable_expires_in(
        (secs, secs_json) in sane_seconds(),
        expires_in in prop_oneof![
            "[a-z ]{1,20}".prop_map(Value::from),
            (1i64..1_000_000).prop_map(|n| json!(-n)),
            Just(json!(true)),
            Just(json!([1])),
            Just(json!({"seconds": 1})),
        ],
    ) {
        let epoch = MI_SENT_AT + secs;
        let expires_on = if secs_json.is_string() { json!(epoch.to_string()) } else { json!(epoch) };
        let body = json!({ "access_token": "at", "expires_in": expires_in, "expires_on": expires_on });
        let token = parse_mi_answer(200, body.to_string().as_bytes(), "s3cr3t-value")
            .map_err(|e| TestCaseError::fail(format!("{body}: {e}")))?
            .token;
        let left = token.expires_in();
        prop_assert!(left <= Duration::from_secs(secs) && left + Duration::from_secs(1) >= Duration::from_secs(secs), "{body}: {left:?}");
    }

    /// Any number or date in the time fields: no panic, a bounded lifetime, refresh before
    /// expiry.
    #[test]
    fn mi_response_any_numbers_never_panic_and_are_clamped(answer in mi_answer()) {
        let body = Value::Object(answer).to_string();
        if let Ok(answer) = parse_mi_answer(200, body.as_bytes(), "the-identity-header") {
            let token = answer.token;
            prop_assert!(token.expires_in() <= MAX_TOKEN_LIFETIME, "{body}");
            prop_assert!(token.refresh_on().is_none_or(|r| r <= token.expires_on()), "{body}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// MSAL cache document
// ---------------------------------------------------------------------------------------------

const KNOWN_SECTIONS: [&str; 5] = [
    "AccessToken",
    "RefreshToken",
    "IdToken",
    "Account",
    "AppMetadata",
];
const FIELD_NAMES: [&str; 16] = [
    "credential_type",
    "secret",
    "home_account_id",
    "environment",
    "client_id",
    "target",
    "realm",
    "token_type",
    "cached_at",
    "expires_on",
    "extended_expires_on",
    "refresh_on",
    "username",
    "local_account_id",
    "family_id",
    "last_modification_time",
];

/// A field value as the file may hold it: mostly strings, sometimes other JSON.
fn field_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => "[ -~]{0,20}".prop_map(Value::from),
        2 => any::<u64>().prop_map(|n| Value::from(n.to_string())),
        1 => any::<u64>().prop_map(Value::from),
        1 => Just(Value::Null),
        1 => Just(json!({ "nested": ["a", 1, null, { "deep": true }] })),
        1 => Just(json!([])),
    ]
}

/// An entry: a subset of the schema's fields (usually complete enough to be read).
fn entry() -> impl Strategy<Value = Value> {
    proptest::collection::btree_map(
        prop_oneof![
            8 => proptest::sample::select(&FIELD_NAMES[..]).prop_map(str::to_owned),
            1 => "[a-z_]{1,10}",
        ],
        field_value(),
        0..14,
    )
    .prop_map(|fields| Value::Object(fields.into_iter().collect()))
}

/// A document: some known sections of entries, and other sections of any JSON.
fn document() -> impl Strategy<Value = Value> {
    let known = proptest::collection::btree_map(
        proptest::sample::select(&KNOWN_SECTIONS[..]).prop_map(str::to_owned),
        proptest::collection::btree_map("[ -~]{1,24}", entry(), 0..4),
        0..5,
    );
    let other = proptest::collection::btree_map("[A-Z][a-z]{1,8}", field_value(), 0..2);
    (known, other).prop_map(|(known, other)| {
        let mut doc = Map::new();
        for (section, entries) in known {
            doc.insert(section, Value::Object(entries.into_iter().collect()));
        }
        for (name, value) in other {
            if !KNOWN_SECTIONS.contains(&name.as_str()) {
                doc.entry(name).or_insert(value);
            }
        }
        Value::Object(doc)
    })
}

/// The layout msal writes: Python's `json.dumps(doc, indent=4)`. For ASCII text this is
/// serde_json's pretty printer with a 4-space indent.
fn msal_layout(doc: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
    serde::Serialize::serialize(doc, &mut serializer).expect("serialises");
    out
}

fn all_views(doc: &CacheDocument) -> String {
    let secrets: Vec<String> = doc
        .access_tokens()
        .iter()
        .map(|t| t.secret.expose_secret().to_owned())
        .chain(
            doc.refresh_tokens()
                .iter()
                .map(|t| t.secret.expose_secret().to_owned()),
        )
        .chain(
            doc.id_tokens()
                .iter()
                .map(|t| t.secret.expose_secret().to_owned()),
        )
        .collect();
    // The keys and the fields the views leave out.
    let raw: Vec<_> = ["Account", "RefreshToken", "AccessToken"]
        .into_iter()
        .flat_map(|section| doc.raw_entries(section))
        .collect();
    format!(
        "{:?} {:?} {:?} {:?} {:?} {:?} {raw:?} {secrets:?}",
        doc.accounts(),
        doc.refresh_tokens(),
        doc.access_tokens(),
        doc.id_tokens(),
        doc.app_metadata(),
        doc.skipped(),
    )
}

/// `to_vec` re-parses to a document that reads the same and serialises the same.
fn assert_round_trip(doc: &CacheDocument) -> Result<(), TestCaseError> {
    let bytes = doc.to_vec();
    let again = CacheDocument::parse(&bytes)
        .map_err(|e| TestCaseError::fail(format!("to_vec output does not parse: {e}")))?;
    prop_assert_eq!(again.to_vec(), bytes);
    prop_assert_eq!(all_views(&again), all_views(doc));
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// A document in msal's layout comes back byte for byte, and reads the same again.
    #[test]
    fn msal_cache_documents_in_msal_layout_come_back_byte_for_byte(doc in document()) {
        let bytes = msal_layout(&doc);
        let parsed = CacheDocument::parse(&bytes).expect("a generated document parses");
        let written = parsed.to_vec();
        prop_assert_eq!(String::from_utf8_lossy(&written), String::from_utf8_lossy(&bytes));
        assert_round_trip(&parsed)?;
    }

    /// Compact or differently indented documents reach a fixed point after one round.
    #[test]
    fn msal_cache_any_layout_reaches_a_fixed_point(doc in document(), compact in any::<bool>()) {
        let bytes = if compact {
            serde_json::to_vec(&doc).expect("serialises")
        } else {
            serde_json::to_vec_pretty(&doc).expect("serialises")
        };
        let parsed = CacheDocument::parse(&bytes).expect("a generated document parses");
        assert_round_trip(&parsed)?;
    }

    /// Arbitrary bytes, and arbitrary JSON-ish text, never panic; what parses round-trips.
    #[test]
    fn msal_cache_arbitrary_input_never_panics(
        bytes in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..200),
            "[{}\\[\\]\",: a-zA-Z0-9\\\\\n]{0,120}".prop_map(String::into_bytes),
        ],
    ) {
        if let Ok(doc) = CacheDocument::parse(&bytes) {
            let _ = all_views(&doc);
            assert_round_trip(&doc)?;
        }
    }

    /// Recording an app-only answer keeps the round trip and the token is found.
    #[test]
    fn msal_cache_added_app_token_is_found(
        doc in document(),
        client_id in "[ -~]{1,16}",
        environment in "[a-zA-Z0-9.-]{1,16}",
        realm in "[ -~]{1,16}",
        scopes in proptest::collection::vec("[!-~]{1,12}", 1..4),
    ) {
        let mut parsed = CacheDocument::parse(&msal_layout(&doc)).expect("parses");
        let access_token = Secret::new("prop-access-token");
        let tokens = NewTokens {
            client_id: &client_id,
            environment: &environment,
            realm: &realm,
            scopes: &scopes,
            access_token: &access_token,
            token_type: "Bearer",
            cached_at: 1_700_000_000,
            expires_on: 1_700_003_600,
            extended_expires_on: 1_700_003_600,
            refresh_on: None,
            refresh_token: None,
            id_token: None,
            client_info: None,
            foci: None,
            replaces: None,
            replaces_read_here: false,
            user_grant: false,
        };
        prop_assert_eq!(parsed.add_token_response(&tokens), None);
        assert_round_trip(&parsed)?;
        let environments = [environment.as_str()];
        let found = parsed.find_access_tokens(&AccessTokenQuery {
            home_account_id: Some(None),
            environments: &environments,
            client_id: Some(&client_id),
            realm: Some(&realm),
            scopes: &scopes,
        });
        prop_assert!(
            found.iter().any(|t| t.secret.expose_secret() == "prop-access-token"),
            "{:?}", found
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Azure CLI output
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    /// Any `expires_on` (huge, negative, fractional, a string): no panic, and a token never
    /// lives longer than the crate believes any token can.
    #[test]
    fn az_output_any_expiry_never_panics_and_is_bounded(
        expires_on in provider_number(),
        token in "[ -~]{0,40}",
        token_type in proptest::option::of("[ -~]{0,10}"),
    ) {
        let mut out = json!({ "accessToken": token.clone(), "expires_on": expires_on });
        if let Some(t) = token_type {
            out["tokenType"] = Value::from(t);
        }
        let bytes = out.to_string().into_bytes();
        match parse_output(&bytes) {
            Ok(token) => prop_assert!(token.expires_in() <= MAX_TOKEN_LIFETIME, "{out}"),
            Err(e) if token.len() >= 8 => {
                // The same output with another token: whatever shows there is not a leak.
                let mut control = out.clone();
                control["accessToken"] = Value::from("\u{1}".repeat(token.len()));
                let control = parse_output(control.to_string().as_bytes())
                    .err()
                    .map(|e| format!("{e} {e:?} {e:#?}"))
                    .unwrap_or_default();
                let shown = format!("{e} {e:?} {e:#?}");
                prop_assert!(control.contains(&token) || !shown.contains(&token), "{shown}");
            }
            Err(_) => {}
        }
    }

    /// A future `expires_on` within the maximum lifetime is read to the second.
    #[test]
    fn az_output_sane_expiry_is_read(ahead in 60u64..86_400, as_string in any::<bool>()) {
        let epoch = unix_now() + ahead;
        let expires_on = if as_string { json!(epoch.to_string()) } else { json!(epoch) };
        let out = json!({ "accessToken": "tok", "expires_on": expires_on, "tokenType": "Bearer" });
        let token = parse_output(out.to_string().as_bytes()).expect("parses");
        let left = token.expires_in().as_secs();
        prop_assert!(left + 2 >= ahead && left <= ahead, "{left} vs {ahead}");
    }

    /// Arbitrary bytes never panic.
    #[test]
    fn az_output_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = parse_output(&bytes);
    }

    /// azd's `expiresOn`, any string (RFC 3339 or not, any year, any offset): no panic, and
    /// a token never lives longer than the crate's maximum.
    #[test]
    fn azd_output_any_expiry_never_panics_and_is_bounded(
        year in 0u32..10_000,
        rest in "(-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,12})?(Z|[+-][0-9]{2}:[0-9]{2}))?",
        junk in "[ -~]{0,30}",
        use_junk in any::<bool>(),
    ) {
        let expires_on = if use_junk { junk } else { format!("{year:04}{rest}") };
        let out = json!({ "token": "azd-token-value", "expiresOn": expires_on });
        match crate::credential::azure_developer_cli::parse_output(out.to_string().as_bytes()) {
            Ok(token) => prop_assert!(token.expires_in() <= MAX_TOKEN_LIFETIME, "{out}"),
            Err(e) => prop_assert!(!format!("{e} {e:?}").contains("azd-token-value"), "{e}"),
        }
    }

    /// Arbitrary bytes never panic in azd's parser either, nor in the reading of its error
    /// output.
    #[test]
    fn azd_output_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = crate::credential::azure_developer_cli::parse_output(&bytes);
        let _ = crate::credential::azure_developer_cli::classify_failure(&bytes, &bytes);
    }

    /// azd's error output as it writes it, JSON lines of every version mixed with text: the
    /// error quotes one line, never a token that a message carries.
    #[test]
    fn azd_error_output_quotes_one_line_and_no_token(
        lines in proptest::collection::vec((0u8..4, "[a-zA-Z0-9 :.,]{0,40}"), 1..5),
        with_token in any::<proptest::sample::Index>(),
    ) {
        const JWT: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzb21lb25lIn0.c2lnbmF0dXJlc2lnbmF0dXJl";
        let token_line = with_token.index(lines.len());
        let stderr: String = lines
            .iter()
            .enumerate()
            .map(|(i, (shape, text))| {
                let text = if i == token_line { format!("ERROR: {text} {JWT}") } else { text.clone() };
                let line = match shape {
                    0 => text,
                    1 => json!({ "type": "consoleMessage", "data": { "message": format!("\n{text}\n") } }).to_string(),
                    2 => json!({ "error": text }).to_string(),
                    _ => json!({ "type": "consoleMessage", "data": { "message": "\n" } }).to_string(),
                };
                line + "\n"
            })
            .collect();
        let error = crate::credential::azure_developer_cli::classify_failure(stderr.as_bytes(), b"");
        let shown = format!("{error} {error:?}");
        prop_assert!(!shown.contains(JWT) && !shown.contains("c2lnbmF0dXJl"), "{shown}");
        prop_assert!(!error.to_string().contains('\n'), "{error}");
    }
}

// ---------------------------------------------------------------------------------------------
// Retry-After
// ---------------------------------------------------------------------------------------------

/// The longest wait `retry_after` returns: longer ones are read as this. The fuzz target
/// uses the same bound.
const RETRY_AFTER_BOUND: Duration = crate::transport::MAX_RETRY_AFTER;

fn retry_headers(pairs: &[(&'static str, String)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.append(*name, value);
        }
    }
    headers
}

/// A header value as servers send them, huge and odd numbers included.
fn retry_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| f.to_string()),
        any::<f64>().prop_map(|f| format!("{f:e}")),
        prop_oneof![
            Just("1e20"),
            Just("1e300"),
            Just("18446744073709551616"),
            Just("NaN"),
            Just("-0"),
            Just("inf"),
            Just(" 5 "),
            Just("Wed, 21 Oct 2015 07:28:00 GMT"),
            Just("Fri, 31 Dec 9999 23:59:59 GMT"),
        ]
        .prop_map(str::to_owned),
        header_text(40),
    ]
}

fn retry_name() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("retry-after"),
        Just("retry-after-ms"),
        Just("x-ms-retry-after-ms"),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Plain numbers of seconds or milliseconds, and HTTP dates, are honoured up to the bound.
    #[test]
    fn retry_after_sane_values_are_honoured(
        millis in 0u64..10_000_000,
        name in retry_name(),
        now_secs in 0u64..4_000_000_000,
    ) {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(now_secs);
        let value = if name == "retry-after" {
            format!("{}.{:03}", millis / 1000, millis % 1000)
        } else {
            millis.to_string()
        };
        let wait = retry_after(&retry_headers(&[(name, value)]), now).expect("honoured");
        let expected = Duration::from_millis(millis).min(RETRY_AFTER_BOUND);
        prop_assert!(
            wait.as_millis().abs_diff(expected.as_millis()) <= 1,
            "{:?} vs {:?}", wait, expected
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(millis / 1000));
        let wait = retry_after(&retry_headers(&[("retry-after", date)]), now).expect("date");
        prop_assert_eq!(wait, Duration::from_secs(millis / 1000).min(RETRY_AFTER_BOUND));
    }
}

proptest! {
    #![proptest_config(config())]

    /// Any values under the three names: no panic, and the wait is bounded. (It panicked on
    /// values beyond `u64::MAX` seconds, in `Duration::from_secs_f64`.)
    #[test]
    fn retry_after_any_values_never_panic_and_are_bounded(
        pairs in proptest::collection::vec((retry_name(), retry_value()), 0..4),
        now_secs in 0u64..4_000_000_000,
    ) {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(now_secs);
        let headers = retry_headers(&pairs);
        if let Some(wait) = retry_after(&headers, now) {
            prop_assert!(wait <= RETRY_AFTER_BOUND, "{headers:?}: {wait:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Certificate loading (PEM sections, PKCS#12)
// ---------------------------------------------------------------------------------------------

/// A PEM-looking text: sections with the labels the loader reads (and others), bodies of
/// arbitrary base64 (valid or not), and noise between them.
fn pem_text() -> impl Strategy<Value = String> {
    let label = prop::sample::select(vec![
        "CERTIFICATE",
        "PRIVATE KEY",
        "RSA PRIVATE KEY",
        "EC PRIVATE KEY",
        "ENCRYPTED PRIVATE KEY",
        "PUBLIC KEY",
        "X",
    ]);
    let body = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200).prop_map(|b| STANDARD.encode(b)),
        "[A-Za-z0-9+/=!\n ]{0,120}",
    ];
    let section = (label, body, any::<bool>()).prop_map(|(label, body, closed)| {
        let end = if closed {
            format!("-----END {label}-----\n")
        } else {
            String::new()
        };
        format!("-----BEGIN {label}-----\n{body}\n{end}")
    });
    proptest::collection::vec((section, "[ -~\n]{0,20}"), 0..4)
        .prop_map(|parts| parts.into_iter().map(|(s, noise)| s + &noise).collect())
}

/// A load error names the problem without quoting the input.
fn check_load_error(message: &str) -> Result<(), TestCaseError> {
    prop_assert!(message.len() < 600, "{message}");
    prop_assert!(!message.contains('\n'), "{message}");
    prop_assert!(!message.contains("-----"), "{message}");
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn certificate_pem_arbitrary_sections_never_panic(
        text in pem_text(),
        password in proptest::option::of("[ -~]{0,12}"),
    ) {
        let source = crate::credential::certificate::CertificateSource::from_pem_with_password(
            text,
            password.map(Secret::new),
        );
        if let Err(message) = source.load(unix_now()) {
            check_load_error(&message)?;
        }
    }

    #[test]
    fn certificate_pkcs12_arbitrary_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
        password in proptest::option::of("[ -~]{0,12}"),
    ) {
        let source = crate::credential::certificate::CertificateSource::from_pkcs12(
            bytes,
            password.map(Secret::new),
        );
        match source.load(unix_now()) {
            Ok(_) => prop_assert!(false, "random bytes loaded as a certificate"),
            Err(message) => check_load_error(&message)?,
        }
    }
}

/// An iteration count: exporters' usual ones, the limits and their neighbours, anything.
fn kdf_count() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..4096,
        Just(MAX_ITERATIONS_PER_RUN),
        Just(MAX_ITERATIONS_PER_RUN + 1),
        any::<u64>(),
    ]
}

/// A key derivation: `count` its iterations, scrypt's N, r and p below `scrypt`.
fn pkcs12_kdf(count: BoxedStrategy<u64>, scrypt: (u64, u64, u64)) -> impl Strategy<Value = Kdf> {
    prop_oneof![
        count.clone().prop_map(Kdf::Pkcs12Pbe),
        count.prop_map(Kdf::Pbkdf2),
        (0..scrypt.0, 0..scrypt.1, 0..scrypt.2).prop_map(|(n, r, p)| Kdf::Scrypt(n, r, p)),
        Just(Kdf::NotPassword),
        Just(Kdf::Unreadable),
    ]
}

/// A PKCS#12 archive's layout: MAC, contents, bags, each item's key derivation.
fn pkcs12_archive(
    count: BoxedStrategy<u64>,
    scrypt: (u64, u64, u64),
) -> impl Strategy<Value = Archive> {
    let kdf = pkcs12_kdf(count.clone(), scrypt).boxed();
    let bag = prop_oneof![
        Just(Bag::Cert),
        Just(Bag::Key),
        kdf.clone().prop_map(Bag::Shrouded),
        kdf.clone().prop_map(Bag::Secret),
    ];
    let content = prop_oneof![
        proptest::collection::vec(bag, 0..4).prop_map(Content::Data),
        kdf.prop_map(Content::Encrypted),
    ];
    (
        proptest::option::of(count),
        proptest::collection::vec(content, 0..8),
    )
        .prop_map(|(mac, contents)| Archive { mac, contents })
}

proptest! {
    #![proptest_config(config())]

    /// The walk finds every derivation an archive names, and refuses exactly those over a
    /// limit.
    #[test]
    fn pkcs12_work_counts_what_an_archive_asks_for(
        archive in pkcs12_archive(kdf_count().boxed(), (1 << 21, 2048, 20)),
    ) {
        let der = archive.der();
        let work = pkcs12_work::measure(&der).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(work, archive.work());
        let within = work.scrypt_invalid_cost.is_none()
            && work.runs <= MAX_KDF_RUNS
            && work.largest_run <= MAX_ITERATIONS_PER_RUN
            && work.largest_scrypt_memory <= MAX_SCRYPT_MEMORY_BYTES
            && work.iterations <= MAX_TOTAL_ITERATIONS;
        match pkcs12_work::check(&der) {
            Ok(checked) => prop_assert!(within && checked == work, "{work:?}"),
            Err(message) => {
                prop_assert!(!within, "{work:?}: {message}");
                check_load_error(&message)?;
                prop_assert!(message.contains("openssl pkcs12 -export"), "{message}");
            }
        }
    }

    /// Damaged archives (bytes changed, cut short) are an error or a count, never a panic.
    #[test]
    fn pkcs12_work_damaged_archives_never_panic(
        archive in pkcs12_archive(kdf_count().boxed(), (1 << 21, 2048, 20)),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut der = archive.der();
        for (at, byte) in edits {
            let at = at.index(der.len());
            der[at] = byte;
        }
        for bytes in [&der[..], &der[..cut.index(der.len())]] {
            if let Err(message) = pkcs12_work::check(bytes) {
                check_load_error(&message)?;
            }
        }
    }

    /// Archives that pass the walk go on to p12-keystore: filler ciphertext is an error, never
    /// a panic or a loaded certificate (small counts keep each case fast). Found: scrypt with
    /// N = 0 panicked in `pkcs5` 0.8.1; the walk now refuses it
    /// (`fuzz/regressions/certificate/scrypt-cost-zero`).
    #[test]
    fn certificate_pkcs12_built_archives_are_refused_cleanly(
        archive in pkcs12_archive((0u64..64).boxed(), (4, 8, 3)),
        password in proptest::option::of("[ -~]{0,12}"),
    ) {
        let source = crate::credential::certificate::CertificateSource::from_pkcs12(
            archive.der(),
            password.map(Secret::new),
        );
        match source.load(unix_now()) {
            Ok(_) => prop_assert!(false, "filler loaded as a certificate"),
            Err(message) => check_load_error(&message)?,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Scrubbing secrets out of provider text
// ---------------------------------------------------------------------------------------------

/// Characters for the scrubbing properties: hex digits and what escapes are made of, what
/// they stand for, multi-byte characters; the last four are the bytes escapes start with.
const SCRUB_CHARS: [char; 20] = [
    'a', 'b', 'A', '1', '2', '5', 'e', 'u', '#', ';', '"', '/', ' ', 'é', '😀', '<', '%', '\\',
    '&', '+',
];
/// How many of [`SCRUB_CHARS`] start no escape.
const SCRUB_PLAIN: usize = 16;

/// `c` in one of the encodings `redact` reads, chosen by `form`: as it is, `%HH` (either
/// case), `+` for a space, a JSON escape (short, `\uXXXX` either case, surrogate pairs), an
/// HTML entity (named, decimal, hex).
fn encode_char(c: char, form: u8) -> String {
    let mut utf8 = [0u8; 4];
    let bytes = c.encode_utf8(&mut utf8).as_bytes();
    let mut units = [0u16; 2];
    let units = c.encode_utf16(&mut units);
    let mut forms = vec![
        c.to_string(),
        bytes.iter().map(|b| format!("%{b:02X}")).collect(),
        bytes.iter().map(|b| format!("%{b:02x}")).collect(),
        units.iter().map(|u| format!("\\u{u:04x}")).collect(),
        units.iter().map(|u| format!("\\u{u:04X}")).collect(),
        format!("&#{};", u32::from(c)),
        format!("&#x{:X};", u32::from(c)),
        format!("&#X{:x};", u32::from(c)),
    ];
    let short = match c {
        '"' => Some("\\\""),
        '\\' => Some("\\\\"),
        '/' => Some("\\/"),
        ' ' => Some("+"),
        _ => None,
    };
    let named = match c {
        '&' => Some("&amp;"),
        '<' => Some("&lt;"),
        '"' => Some("&quot;"),
        _ => None,
    };
    forms.extend(short.into_iter().chain(named).map(str::to_owned));
    forms.swap_remove(usize::from(form) % forms.len())
}

/// A secret of [`SCRUB_CHARS`] (the plain ones only, or any): random, or a short unit
/// repeated (every start of a copy matches on).
fn scrub_secret(any_char: bool) -> impl Strategy<Value = Vec<char>> {
    let count = if any_char {
        SCRUB_CHARS.len()
    } else {
        SCRUB_PLAIN
    };
    let char_ = move || (0..count).prop_map(|i| SCRUB_CHARS[i]);
    prop_oneof![
        proptest::collection::vec(char_(), 4..16),
        (proptest::collection::vec(char_(), 1..4), 2..8usize)
            .prop_map(|(unit, times)| unit.repeat(times)),
    ]
    .prop_filter("at least four bytes", |s| {
        s.iter().map(|c| c.len_utf8()).sum::<usize>() >= 4
    })
}

/// A text of pieces: single characters, any encoded, and copies of the secret, whole, cut
/// short, or from its middle, each character in an encoding of its own.
fn scrub_text(secret: Vec<char>) -> impl Strategy<Value = String> {
    let piece = (
        0u8..4,
        any::<u8>(),
        any::<u8>(),
        proptest::collection::vec(any::<u8>(), 1..8),
    );
    proptest::collection::vec(piece, 0..7).prop_map(move |pieces| {
        let mut text = String::new();
        for (kind, a, b, forms) in pieces {
            let len = secret.len();
            let (from, to) = match kind {
                0 => {
                    let c = SCRUB_CHARS[usize::from(a) % SCRUB_CHARS.len()];
                    text.push_str(&encode_char(c, b));
                    continue;
                }
                1 => (0, len),
                2 => (0, usize::from(a) % (len + 1)),
                _ => {
                    let from = usize::from(a) % len;
                    (from, from + usize::from(b) % (len - from + 1))
                }
            };
            for (i, &c) in secret[from..to].iter().enumerate() {
                text.push_str(&encode_char(c, forms[i % forms.len()]));
            }
        }
        text
    })
}

proptest! {
    #![proptest_config(config())]

    /// The linear search masks exactly what the search before it did (kept as
    /// `redact::reference`, a step per byte and character of the secret): matches in any mix
    /// of encodings, overlapping, adjacent, cut short, one or two secrets.
    #[test]
    fn scrub_masks_what_the_reference_search_does(
        (secret, text, other) in any::<bool>()
            .prop_flat_map(scrub_secret)
            .prop_flat_map(|secret| {
                (Just(secret.clone()), scrub_text(secret), proptest::option::of(scrub_secret(true)))
            }),
    ) {
        let secret: String = secret.into_iter().collect();
        let other: Option<String> = other.map(|o| o.into_iter().collect());
        let mut secrets = vec![secret.as_str()];
        secrets.extend(other.as_deref());
        prop_assert_eq!(
            crate::redact::scrub(&text, &secrets),
            crate::redact::reference::scrub(&text, &secrets),
            "text {:?}, secrets {:?}", text, secrets
        );
    }

    /// A secret in any mix of the encodings, between text that is none of its characters,
    /// leaves nothing: the text around it and `***`.
    #[test]
    fn scrub_leaves_nothing_of_a_secret_in_any_encoding(
        secret in any::<bool>().prop_flat_map(scrub_secret),
        forms in proptest::collection::vec(any::<u8>(), 1..8),
        before in "[XYZ,:]{0,6}",
        after in "[XYZ,:]{0,6}",
    ) {
        let encoded: String = secret
            .iter()
            .enumerate()
            .map(|(i, &c)| encode_char(c, forms[i % forms.len()]))
            .collect();
        let secret: String = secret.into_iter().collect();
        let text = format!("{before}{encoded}{after}");
        prop_assert_eq!(
            crate::redact::scrub(&text, &[&secret]),
            format!("{before}***{after}"),
            "secret {:?} as {:?}", secret, encoded
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The token cache file's POSIX access ACL (Linux)
// ---------------------------------------------------------------------------------------------

/// `(tag, permissions, id)` entries in the kernel's format, under the version `version`.
#[cfg(target_os = "linux")]
fn acl_bytes(version: u32, entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut bytes = version.to_le_bytes().to_vec();
    for &(tag, perm, id) in entries {
        bytes.extend(tag.to_le_bytes());
        bytes.extend(perm.to_le_bytes());
        bytes.extend(id.to_le_bytes());
    }
    bytes
}

/// An id as the kernel shows a named entry's: a small one, any, or the unmapped one.
#[cfg(target_os = "linux")]
fn acl_id() -> impl Strategy<Value = u32> + Clone {
    use crate::entra::persistence::acl::UNMAPPED;
    prop_oneof![0u32..70_000, any::<u32>(), Just(UNMAPPED)]
}

/// Almost an ACL: mostly version 2, entries of the six tags or any, permissions up to 7 or
/// any, in any order and number, or a valid ACL's entries shuffled, and sometimes a cut last
/// entry.
#[cfg(target_os = "linux")]
fn near_acl() -> impl Strategy<Value = Vec<u8>> {
    use crate::entra::persistence::acl::{GROUP, GROUP_OBJ, MASK, OTHER, USER, USER_OBJ};
    let tag = prop_oneof![
        4 => proptest::sample::select(vec![USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER]),
        1 => any::<u16>(),
    ];
    let perm = prop_oneof![4 => 0u16..8, 1 => any::<u16>()];
    let entries = prop_oneof![
        proptest::collection::vec((tag, perm, acl_id()), 0..10),
        valid_acl().prop_shuffle(),
    ];
    (
        prop_oneof![4 => Just(2u32), 1 => any::<u32>()],
        entries,
        prop_oneof![3 => Just(Vec::new()), 1 => proptest::collection::vec(any::<u8>(), 1..8)],
    )
        .prop_map(|(version, entries, tail)| {
            let mut bytes = acl_bytes(version, &entries);
            bytes.extend(tail);
            bytes
        })
}

/// Whether `bytes` are an ACL the kernel takes (`posix_acl_valid`, but for the mapping of
/// the named ids), told another way than the parser does: version 2, whole entries of the
/// six tags, permissions up to 7, the tags' ranks never falling (the owner, named users, the
/// owning group, named groups, the mask, others), one owner's, owning group's and others'
/// entry, at most one mask, and a mask if any entry is named.
#[cfg(target_os = "linux")]
fn kernel_takes(bytes: &[u8]) -> bool {
    use crate::entra::persistence::acl::{GROUP, GROUP_OBJ, MASK, OTHER, USER, USER_OBJ};
    const ORDER: [u16; 6] = [USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER];
    if bytes.len() < 4 || bytes[..4] != 2u32.to_le_bytes() || (bytes.len() - 4) % 8 != 0 {
        return false;
    }
    let entries: Vec<(u16, u16)> = bytes[4..]
        .chunks(8)
        .map(|e| {
            (
                u16::from_le_bytes([e[0], e[1]]),
                u16::from_le_bytes([e[2], e[3]]),
            )
        })
        .collect();
    let ranks: Option<Vec<usize>> = entries
        .iter()
        .map(|&(tag, perm)| ORDER.iter().position(|&t| t == tag).filter(|_| perm <= 7))
        .collect();
    let Some(ranks) = ranks else {
        return false;
    };
    let count = |tag| entries.iter().filter(|e| e.0 == tag).count();
    ranks.windows(2).all(|w| w[0] <= w[1])
        && [USER_OBJ, GROUP_OBJ, OTHER]
            .iter()
            .all(|&tag| count(tag) == 1)
        && count(MASK) <= 1
        && (count(USER) + count(GROUP) == 0 || count(MASK) == 1)
}

/// A valid ACL, in the kernel's order: the owner, named users, the owning group, named
/// groups, a mask (always with named entries), others; and its entries.
#[cfg(target_os = "linux")]
fn valid_acl() -> impl Strategy<Value = Vec<(u16, u16, u32)>> {
    valid_acl_naming(acl_id())
}

/// [`valid_acl`], its named entries' ids drawn from `id`.
#[cfg(target_os = "linux")]
fn valid_acl_naming(
    id: impl Strategy<Value = u32> + Clone,
) -> impl Strategy<Value = Vec<(u16, u16, u32)>> {
    use crate::entra::persistence::acl::{GROUP, GROUP_OBJ, MASK, OTHER, UNMAPPED, USER, USER_OBJ};
    let named = || proptest::collection::vec((0u16..8, id.clone()), 0..4);
    (
        0u16..8,
        named(),
        0u16..8,
        named(),
        proptest::option::of(0u16..8),
        0u16..8,
    )
        .prop_map(|(owner, users, group, groups, mask, other)| {
            let mut entries = vec![(USER_OBJ, owner, UNMAPPED)];
            entries.extend(users.iter().map(|&(perm, id)| (USER, perm, id)));
            entries.push((GROUP_OBJ, group, UNMAPPED));
            entries.extend(groups.iter().map(|&(perm, id)| (GROUP, perm, id)));
            let needs_mask = !users.is_empty() || !groups.is_empty();
            if let Some(mask) = mask.or(needs_mask.then_some(0o6)) {
                entries.push((MASK, mask, UNMAPPED));
            }
            entries.push((OTHER, other, UNMAPPED));
            entries
        })
}

#[cfg(target_os = "linux")]
proptest! {
    #![proptest_config(config())]

    /// Any bytes, and bytes that are almost an ACL: no panic, what parses is what the kernel
    /// takes (told apart by `kernel_takes`), and it is written back byte for byte (the new
    /// file gets the ACL the old one had).
    #[test]
    fn acl_any_bytes_never_panic_and_what_parses_round_trips(
        bytes in prop_oneof![proptest::collection::vec(any::<u8>(), 0..64), near_acl()],
    ) {
        use crate::entra::persistence::acl::Acl;
        let parsed = Acl::parse(&bytes);
        prop_assert_eq!(parsed.is_ok(), kernel_takes(&bytes), "{:?}", parsed);
        if let Ok(acl) = parsed {
            prop_assert_eq!(acl.to_bytes(), bytes);
            prop_assert!(acl.owning_group() <= 0o7);
        }
    }

    /// A valid ACL parses; what the owning group may do is its entry limited by the mask;
    /// without the unmapped named entries and with the owning group emptied, it still
    /// parses, which the parser allows only to what the kernel takes (but for unmapped ids,
    /// which are what is dropped), and holds what it should.
    #[test]
    fn acl_valid_ones_parse_and_trim_into_valid_ones(entries in valid_acl()) {
        use crate::entra::persistence::acl::{Acl, GROUP, GROUP_OBJ, MASK, UNMAPPED, USER};
        let bytes = acl_bytes(2, &entries);
        let acl = Acl::parse(&bytes).expect("a valid ACL parses");
        prop_assert_eq!(acl.to_bytes(), bytes);
        let perm = |tag| entries.iter().find(|e| e.0 == tag).map(|e| e.1);
        let mask = perm(MASK).unwrap_or(0o7);
        prop_assert_eq!(acl.owning_group(), perm(GROUP_OBJ).unwrap() & mask);
        for &(_, _, id) in entries.iter().filter(|e| e.0 == USER) {
            // The kernel checks the first entry naming the user.
            let first = entries.iter().find(|e| e.0 == USER && e.2 == id).unwrap();
            prop_assert_eq!(acl.named_user(id), Some(first.1 & mask));
        }

        let (trimmed, dropped) = acl.without_unmapped();
        let unmapped = |e: &&(u16, u16, u32)| matches!(e.0, USER | GROUP) && e.2 == UNMAPPED;
        prop_assert_eq!(dropped, entries.iter().filter(unmapped).count());
        let kept: Vec<_> = entries.iter().filter(|e| !unmapped(e)).copied().collect();
        prop_assert_eq!(Acl::parse(&trimmed.to_bytes()), Ok(trimmed.clone()));
        prop_assert_eq!(trimmed.to_bytes(), acl_bytes(2, &kept));
        prop_assert_eq!(trimmed.names_anyone(), kept.iter().any(|e| matches!(e.0, USER | GROUP)));

        let emptied = acl.owning_group_emptied();
        prop_assert_eq!(Acl::parse(&emptied.to_bytes()), Ok(emptied.clone()));
        prop_assert_eq!(emptied.owning_group(), 0);
        prop_assert_eq!(emptied.entries().len(), acl.entries().len());
        prop_assert!(emptied
            .entries()
            .iter()
            .zip(acl.entries())
            .all(|(e, a)| e.tag == a.tag && e.id == a.id && (e.tag == GROUP_OBJ || e.perm == a.perm)));
    }
}

#[cfg(target_os = "linux")]
proptest! {
    #![proptest_config(config())]

    /// A member of a file's group that may take another member's file over (in a directory
    /// setgid to that group) leaves the former owner a way back: the former owner may take
    /// the file back, with the ACL the takeover set on it (without the entries naming ids
    /// the writer cannot name) or none if that names nobody, whatever the ACL, the owner's
    /// bits and the groups either is in. An owner the writer cannot name (`None`: its
    /// entries show as unmapped ids) or whose groups it cannot look up is taken to be in the
    /// file's group, as documented; one known not to be is never taken from.
    #[test]
    fn acl_a_takeover_leaves_the_former_owner_a_way_back(
        entries in valid_acl_naming(0u32..5),
        writer_groups in proptest::collection::vec(0u32..5, 0..3),
        owner_groups in proptest::collection::vec(0u32..5, 0..3),
        owner_named in any::<bool>(),
        owner_groups_known in any::<bool>(),
        writer_in_group in proptest::bool::weighted(0.9),
        owner_in_group in any::<bool>(),
        // Read and write mostly, so that files are shared often enough to test the way back.
        shared_perms in proptest::collection::vec(prop_oneof![3 => Just(0o6u16), 1 => 0u16..8], 3),
    ) {
        use crate::entra::persistence::acl::{
            AccessAcl, Acl, GROUP_OBJ, MASK, OTHER, UNMAPPED, USER, USER_OBJ,
        };
        // The named entries name these users and groups now and then.
        const FILE_GID: u32 = 1;
        const WRITER: u32 = 2;
        const OWNER: u32 = 3;
        /// The mode of a file with the ACL `entries`: the owner's bits are its entry, the
        /// group bits the mask (the owning group's entry without one), others' theirs.
        fn mode_of(entries: &[crate::entra::persistence::acl::Entry]) -> u32 {
            let perm = |tag| entries.iter().find(|e| e.tag == tag).map(|e| u32::from(e.perm));
            let group = perm(MASK).or(perm(GROUP_OBJ)).unwrap_or(0);
            (perm(USER_OBJ).unwrap_or(0) << 6) | (group << 3) | perm(OTHER).unwrap_or(0)
        }
        // As the writer sees the file: an owner it cannot name shows as the unmapped id. The
        // owner's, owning group's and mask's permissions mostly read and write.
        let seen: Vec<_> = entries
            .iter()
            .map(|&(tag, perm, id)| match (tag, id) {
                (USER, OWNER) if !owner_named => (tag, perm, UNMAPPED),
                (USER_OBJ, _) => (tag, shared_perms[0], id),
                (GROUP_OBJ, _) => (tag, shared_perms[1], id),
                (MASK, _) => (tag, shared_perms[2], id),
                _ => (tag, perm, id),
            })
            .collect();
        let member = |in_group: bool, groups: Vec<u32>| {
            let mut groups: Vec<u32> = groups.into_iter().filter(|&gid| gid != FILE_GID).collect();
            if in_group {
                groups.push(FILE_GID);
            }
            groups
        };
        let writer_groups = member(writer_in_group, writer_groups);
        let owner_groups = member(owner_in_group, owner_groups);
        let acl = Acl::parse(&acl_bytes(2, &seen)).expect("a valid ACL parses");
        let mode = mode_of(acl.entries());
        let owner = owner_named.then_some(OWNER);
        let owner_groups_known = owner_groups_known && owner_named;
        let owner_groups = if owner_groups_known {
            owner_groups
        } else {
            // Not known: taken to be a member.
            [&[FILE_GID][..], &owner_groups].concat()
        };
        let looked_up = owner_groups_known.then_some(owner_groups.as_slice());
        let acl = AccessAcl::Present(acl);
        let shared = acl.shares_read_write(mode, FILE_GID, owner, looked_up, WRITER, &writer_groups);
        // The writer would become an owner unable to read or write it; the owner could not
        // take the file back.
        if mode & 0o600 != 0o600 || !owner_groups.contains(&FILE_GID) {
            prop_assert!(!shared);
        }
        if !shared {
            return Ok(());
        }
        // What the takeover leaves: the same mode, the writer's group given (nothing withheld).
        let (set, _) = acl.to_set(0);
        let (after, mode) = match set {
            Some(set) => {
                let mode = mode_of(set.entries());
                (AccessAcl::Present(set), mode)
            }
            None => (AccessAcl::Absent, acl.mode(mode)),
        };
        prop_assert!(
            after.shares_read_write(
                mode,
                FILE_GID,
                Some(WRITER),
                Some(&writer_groups),
                OWNER,
                &owner_groups,
            ),
            "{:?} mode {:o}",
            after,
            mode
        );
    }
}

//! The Continuous Access Evaluation (CAE) claims-challenge decision, over the parsed
//! `WWW-Authenticate` challenges of [`www_authenticate`](super::www_authenticate).
//!
//! [`claims_challenge`] makes the Continuous Access Evaluation (CAE) decision. A 401 is retried
//! with new claims only when a `Bearer` challenge (scheme compared case-insensitively) carries
//! `error="insufficient_claims"` (exact value) and a non-empty `claims` parameter. The claims
//! are base64url (padding optional; the standard `+/` alphabet is accepted too) of a UTF-8 JSON
//! object, and are returned as the decoded text, verbatim. Only the first such challenge counts: when
//! its claims do not decode, the answer is an error even if a later challenge would decode.

use std::fmt;

use super::www_authenticate::parse_challenges;
use crate::encoding::decode_base64;
use crate::entra::token_client::claims_field;

/// The CAE decision: the decoded claims JSON (as UTF-8 text, verbatim) of the first Bearer
/// challenge with `error="insufficient_claims"` and a non-empty `claims` parameter, across all
/// `WWW-Authenticate` lines.
///
/// The scheme is compared case-insensitively; the `error` value must be exactly
/// `insufficient_claims`. A `claims` value that is empty or only whitespace counts as absent.
/// Returns `Ok(None)` when there is no such challenge: no challenge, other schemes, other
/// errors, a `claims` parameter without `insufficient_claims`, an empty `claims`.
///
/// Only the **first** qualifying challenge is decided on: if its claims are bad, the result is
/// an error even when a later challenge carries good claims.
///
/// # Errors
///
/// [`ClaimsError`] when a qualifying challenge exists but its claims cannot be used: not
/// base64url (with or without padding) nor standard base64, not UTF-8, not JSON, or not a JSON
/// object a CAE token request can carry (one whose `access_token`, if any, is an object that
/// the `CP1` capability can be merged into). The caller then returns the 401 and logs the
/// reason.
///
/// [`BearerTokenLayer`](super::BearerTokenLayer) with CAE enabled makes this decision itself.
/// A client that handles its 401s on its own passes the claims to the credential:
///
/// ```
/// use http::{HeaderMap, HeaderValue, header::WWW_AUTHENTICATE};
/// use tower_identity::TokenRequest;
/// use tower_identity::bearer::claims_challenge;
///
/// // The headers of a 401 from a CAE-aware resource.
/// let mut headers = HeaderMap::new();
/// headers.append(WWW_AUTHENTICATE, HeaderValue::from_static(r#"Basic realm="files""#));
/// headers.append(
///     WWW_AUTHENTICATE,
///     HeaderValue::from_static(
///         r#"Bearer error="insufficient_claims", claims="eyJhY2Nlc3NfdG9rZW4iOnsiZm9vIjoiYmFyIn19""#,
///     ),
/// );
///
/// let claims = claims_challenge(&headers)?;
/// assert_eq!(claims.as_deref(), Some(r#"{"access_token":{"foo":"bar"}}"#));
/// if let Some(claims) = claims {
///     // Ask again with the claims (no cache answers this), then re-send the request once.
///     let request = TokenRequest::new(["https://graph.microsoft.com/.default"])
///         .with_cae(true)
///         .with_claims(claims);
///     # let _ = request;
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn claims_challenge(headers: &http::HeaderMap) -> Result<Option<String>, ClaimsError> {
    let first = parse_challenges(headers).into_iter().find_map(|challenge| {
        let qualifies = challenge.is_scheme("Bearer")
            && challenge.param("error") == Some("insufficient_claims");
        let claims = challenge.param("claims").filter(|c| !c.trim().is_empty());
        match claims {
            Some(claims) if qualifies => Some(claims.to_owned()),
            _ => None,
        }
    });
    first.as_deref().map(decode_claims).transpose()
}

/// Why a claims challenge could not be used.
///
/// `Display` says what was wrong and shows at most the first 64 characters of the raw value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimsError {
    reason: ClaimsErrorReason,
    /// Why the decoder or the JSON parser refused, as they put it.
    detail: String,
    /// The start of the raw `claims` value.
    excerpt: String,
    /// Whether `excerpt` is shorter than the raw value.
    truncated: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClaimsErrorReason {
    Base64,
    Utf8,
    Json,
}

/// How many characters of the raw claims value an error shows.
const EXCERPT_CHARS: usize = 64;

impl ClaimsError {
    fn new(reason: ClaimsErrorReason, detail: impl fmt::Display, raw: &str) -> Self {
        let mut chars = raw.chars();
        let excerpt: String = chars.by_ref().take(EXCERPT_CHARS).collect();
        ClaimsError {
            reason,
            detail: detail.to_string(),
            excerpt,
            truncated: chars.next().is_some(),
        }
    }
}

impl fmt::Display for ClaimsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.reason {
            ClaimsErrorReason::Base64 => "claims are not base64url or base64",
            ClaimsErrorReason::Utf8 => "decoded claims are not UTF-8",
            ClaimsErrorReason::Json => "claims are not a usable JSON object",
        };
        write!(
            f,
            "unusable insufficient_claims challenge: {what} ({}); claims={:?}",
            self.detail, self.excerpt
        )?;
        if self.truncated {
            f.write_str("…")?;
        }
        Ok(())
    }
}

impl std::error::Error for ClaimsError {}

/// Decodes a `claims` parameter: base64url or base64, UTF-8, a JSON object; returns the text
/// verbatim.
fn decode_claims(raw: &str) -> Result<String, ClaimsError> {
    let bytes =
        decode_base64(raw).map_err(|e| ClaimsError::new(ClaimsErrorReason::Base64, e, raw))?;
    let text = String::from_utf8(bytes)
        .map_err(|e| ClaimsError::new(ClaimsErrorReason::Utf8, e.utf8_error(), raw))?;
    let json = |e| ClaimsError::new(ClaimsErrorReason::Json, e, raw);
    serde_json::from_str::<serde_json::Value>(&text).map_err(|e| json(e.to_string()))?;
    // Checked as the token request will be (with CAE): claims it refuses would fail every
    // acquisition for this challenge, where an unusable challenge returns the 401.
    claims_field(Some(&text), true).map_err(json)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use http::{HeaderMap, HeaderValue, header::WWW_AUTHENTICATE};

    use crate::bearer::www_authenticate::tests::{CAE_CLAIMS_B64, VECTORS, headers};
    use crate::bearer::www_authenticate::{Challenge, parse_challenge_value};

    const CAE_CLAIMS_JSON: &str = r#"{"access_token":{"nbf":{"essential":true,"value":"1726077595"},"xms_caeerror":{"value":"10012"}}}"#;

    fn cae(lines: &[&str]) -> Result<Option<String>, ClaimsError> {
        claims_challenge(&headers(lines))
    }

    fn b64url(text: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
    }

    #[test]
    fn every_reference_vector_gets_the_expected_decision() {
        assert_eq!(VECTORS.len(), 9);
        for (i, (value, expected)) in VECTORS.iter().enumerate() {
            let got = cae(&[value]);
            assert_eq!(
                got,
                Ok(expected.map(str::to_owned)),
                "vector {} : {value}",
                i + 1
            );
        }
    }

    #[test]
    fn unterminated_quoted_string_drops_that_challenge_and_keeps_earlier_ones() {
        let parsed = parse_challenge_value(r#"Basic realm="x", Bearer a="y", b="unterminated"#);
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].scheme(), "Basic");
        assert_eq!(
            cae(&[&format!(
                r#"Bearer error="insufficient_claims", claims="{CAE_CLAIMS_B64}"#
            )]),
            Ok(None)
        );
    }

    #[test]
    fn a_header_line_with_bytes_outside_ascii_is_read() {
        let mut map = HeaderMap::new();
        map.append(
            WWW_AUTHENTICATE,
            HeaderValue::from_bytes(b"Bearer realm=\"\xff\xfe\"").unwrap(),
        );
        map.append(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"x\""),
        );
        let parsed = parse_challenges(&map);
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].param("realm"), Some("\u{fffd}\u{fffd}"));
        assert_eq!(parsed[1].scheme(), "Basic");

        // The CAE challenge is found beside a value in UTF-8 or in Latin-1.
        for other in [
            &b"realm=\"caf\xc3\xa9\""[..],
            b"error_description=\"caf\xe9\"",
        ] {
            let mut line = b"Bearer ".to_vec();
            line.extend_from_slice(other);
            let cae = format!(r#", error="insufficient_claims", claims="{CAE_CLAIMS_B64}""#);
            line.extend_from_slice(cae.as_bytes());
            let mut map = HeaderMap::new();
            map.append(WWW_AUTHENTICATE, HeaderValue::from_bytes(&line).unwrap());
            let got = claims_challenge(&map);
            assert_eq!(got, Ok(Some(CAE_CLAIMS_JSON.to_owned())), "{line:?}");
        }
    }

    #[test]
    fn no_header_means_no_challenge() {
        assert!(parse_challenges(&HeaderMap::new()).is_empty());
        assert_eq!(claims_challenge(&HeaderMap::new()), Ok(None));
        assert_eq!(cae(&[""]), Ok(None));
    }

    #[test]
    fn cae_scheme_and_param_names_are_case_insensitive() {
        let line = format!(r#"bearer ERROR="insufficient_claims", CLAIMS="{CAE_CLAIMS_B64}""#);
        assert_eq!(cae(&[&line]), Ok(Some(CAE_CLAIMS_JSON.to_owned())));
    }

    #[test]
    fn cae_error_value_is_case_sensitive() {
        let line = format!(r#"Bearer error="INSUFFICIENT_CLAIMS", claims="{CAE_CLAIMS_B64}""#);
        assert_eq!(cae(&[&line]), Ok(None));
    }

    #[test]
    fn cae_accepts_unquoted_error_value() {
        let line = format!(r#"Bearer error=insufficient_claims, claims="{CAE_CLAIMS_B64}""#);
        assert_eq!(cae(&[&line]), Ok(Some(CAE_CLAIMS_JSON.to_owned())));
    }

    #[test]
    fn cae_challenge_on_second_header_line_is_found() {
        let second = format!(r#"Bearer error="insufficient_claims", claims="{CAE_CLAIMS_B64}""#);
        let got = cae(&[r#"Bearer realm="", error="invalid_token""#, &second]);
        assert_eq!(got, Ok(Some(CAE_CLAIMS_JSON.to_owned())));
    }

    #[test]
    fn only_the_second_bearer_challenge_being_cae_uses_its_claims() {
        let line = format!(
            r#"Bearer realm="a", claims="{}", Bearer error="insufficient_claims", claims="{}""#,
            b64url(r#"{"first":1}"#),
            b64url(r#"{"second":2}"#),
        );
        assert_eq!(cae(&[&line]), Ok(Some(r#"{"second":2}"#.to_owned())));
    }

    #[test]
    fn first_cae_challenge_decides_even_if_it_is_bad() {
        let line = format!(
            r#"Bearer error="insufficient_claims", claims="!!!", Bearer error="insufficient_claims", claims="{CAE_CLAIMS_B64}""#
        );
        let err = cae(&[&line]).unwrap_err();
        assert_eq!(err.reason, ClaimsErrorReason::Base64);
    }

    #[test]
    fn invalid_token_error_is_no_retry() {
        let line = format!(r#"Bearer error="invalid_token", claims="{CAE_CLAIMS_B64}""#);
        assert_eq!(cae(&[&line]), Ok(None));
    }

    #[test]
    fn claims_without_insufficient_claims_is_no_retry() {
        let line = format!(r#"Bearer realm="", claims="{CAE_CLAIMS_B64}""#);
        assert_eq!(cae(&[&line]), Ok(None));
    }

    #[test]
    fn insufficient_claims_without_or_with_empty_claims_is_no_retry() {
        assert_eq!(cae(&[r#"Bearer error="insufficient_claims""#]), Ok(None));
        assert_eq!(
            cae(&[r#"Bearer error="insufficient_claims", claims="""#]),
            Ok(None)
        );
        assert_eq!(
            cae(&[r#"Bearer error="insufficient_claims", claims="  ""#]),
            Ok(None)
        );
    }

    #[test]
    fn other_schemes_with_insufficient_claims_are_no_retry() {
        assert_eq!(cae(&[r#"Basic realm="x""#]), Ok(None));
        let line = format!(r#"PoP error="insufficient_claims", claims="{CAE_CLAIMS_B64}""#);
        assert_eq!(cae(&[&line]), Ok(None));
    }

    #[test]
    fn claims_padding_may_be_present_partial_or_absent() {
        let json = r#"{"access_token":{"foo":"bar!"}}"#; // 31 bytes: needs "==" padding
        let unpadded = b64url(json);
        assert_eq!(unpadded.len() % 4, 2);
        for claims in [
            unpadded.clone(),
            format!("{unpadded}="),
            format!("{unpadded}=="),
        ] {
            let line = format!(r#"Bearer error="insufficient_claims", claims="{claims}""#);
            assert_eq!(cae(&[&line]), Ok(Some(json.to_owned())), "{claims}");
        }
    }

    #[test]
    fn claims_in_standard_and_url_safe_alphabets_decode() {
        // Chosen so that the encoding contains `+`/`/` (standard) and `-`/`_` (url-safe).
        let json = r#"{"a":"~~~???>>>"}"#;
        let standard = base64::engine::general_purpose::STANDARD.encode(json);
        let url_safe = base64::engine::general_purpose::URL_SAFE.encode(json);
        assert!(standard.contains(['+', '/']), "{standard}");
        assert!(url_safe.contains(['-', '_']), "{url_safe}");
        for claims in [standard, url_safe] {
            let line = format!(r#"Bearer error="insufficient_claims", claims="{claims}""#);
            assert_eq!(cae(&[&line]), Ok(Some(json.to_owned())), "{claims}");
        }
    }

    #[test]
    fn claims_surrounding_whitespace_is_trimmed() {
        let line = format!(r#"Bearer error="insufficient_claims", claims="  {CAE_CLAIMS_B64} ""#);
        assert_eq!(cae(&[&line]), Ok(Some(CAE_CLAIMS_JSON.to_owned())));
    }

    #[test]
    fn invalid_base64_claims_are_an_error() {
        for claims in ["not base64!", "abc-def+ghi", "a", "eyJ=e"] {
            let line = format!(r#"Bearer error="insufficient_claims", claims="{claims}""#);
            let err = cae(&[&line]).unwrap_err();
            assert_eq!(err.reason, ClaimsErrorReason::Base64, "{claims}");
            assert!(err.to_string().contains("not base64url"), "{err}");
        }
    }

    #[test]
    fn non_utf8_decoded_claims_are_an_error() {
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0xff, 0xfe, b'{']);
        let line = format!(r#"Bearer error="insufficient_claims", claims="{claims}""#);
        let err = cae(&[&line]).unwrap_err();
        assert_eq!(err.reason, ClaimsErrorReason::Utf8);
        assert!(err.to_string().contains("not UTF-8"), "{err}");
    }

    #[test]
    fn non_json_claims_are_an_error() {
        let line = format!(
            r#"Bearer error="insufficient_claims", claims="{}""#,
            b64url("{not json")
        );
        let err = cae(&[&line]).unwrap_err();
        assert_eq!(err.reason, ClaimsErrorReason::Json);
        assert!(
            err.to_string()
                .contains("claims are not a usable JSON object"),
            "{err}"
        );
    }

    #[test]
    fn claims_a_cae_token_request_cannot_carry_are_an_error() {
        // base64url of `[1]`.
        let line = r#"Bearer error="insufficient_claims", claims="WzFd""#;
        let err = cae(&[line]).unwrap_err();
        assert_eq!(err.reason, ClaimsErrorReason::Json);
        assert!(err.to_string().contains("must be a JSON object"), "{err}");
        // JSON that is not an object, and objects the CP1 capability cannot be merged into.
        for json in ["1", "null", r#""text""#, r#"{"access_token":1}"#] {
            let line = format!(
                r#"Bearer error="insufficient_claims", claims="{}""#,
                b64url(json)
            );
            let err = cae(&[&line]).unwrap_err();
            assert_eq!(err.reason, ClaimsErrorReason::Json, "{json}");
        }
        // An `xms_cc` of another shape is replaced when the token is requested.
        for json in [
            "{}",
            r#"{"id_token":{"acrs":{"essential":true}}}"#,
            r#"{"access_token":{"xms_cc":[]}}"#,
        ] {
            let line = format!(
                r#"Bearer error="insufficient_claims", claims="{}""#,
                b64url(json)
            );
            assert_eq!(cae(&[&line]), Ok(Some(json.to_owned())), "{json}");
        }
    }

    #[test]
    fn error_display_shows_at_most_64_chars_of_the_raw_value() {
        let raw = "!".repeat(1000);
        let line = format!(r#"Bearer error="insufficient_claims", claims="{raw}""#);
        let message = cae(&[&line]).unwrap_err().to_string();
        assert!(
            message.contains(&format!("\"{}\"…", "!".repeat(64))),
            "{message}"
        );
        assert!(!message.contains(&"!".repeat(65)), "{message}");
        assert!(message.len() < 300, "{message}");
    }

    #[test]
    fn garbage_inputs_do_not_panic() {
        let inputs = [
            "",
            "\"",
            ",,,",
            "=",
            "==",
            "Bearer =",
            "Bearer ==",
            "Bearer a=",
            "Bearer a=,",
            "Bearer a=\"unterminated",
            "Bearer a=\"ends with backslash\\",
            "Bearer \"x\"",
            "Bearer\"x\"",
            "a=b",
            "Bearer a=\"x\"b",
            "Bearer a=b\"c\"",
            "\\",
            " \t ",
            "Bearer é=ü, Ünïcode=\"日本\"",
            "Basic dXNl=cjpw",
        ];
        for input in inputs {
            let _ = parse_challenge_value(input);
            if let Ok(value) = HeaderValue::from_str(input) {
                let mut map = HeaderMap::new();
                map.append(WWW_AUTHENTICATE, value);
                let _ = parse_challenges(&map);
                let _ = claims_challenge(&map);
            }
        }
        assert!(parse_challenge_value("=").is_empty());
        assert!(parse_challenge_value("Bearer =").is_empty());
        assert!(parse_challenge_value("a=b").is_empty());
        assert_eq!(parse_challenge_value("Bearer é=ü"), Vec::<Challenge>::new());
    }

    #[test]
    fn random_bytes_do_not_panic() {
        // xorshift64*: small, deterministic, no dependency.
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        const PIECES: &[&[u8]] = &[
            b"Bearer ",
            b"Basic ",
            b"error=",
            b"\"insufficient_claims\"",
            b"claims=",
            b"\"eyJhIjoxfQ\"",
            b"eyJhIjoxfQ==",
            b"\"",
            b"\\",
            b",",
            b"=",
            b" ",
            b"\t",
            b"a",
            b"/",
            b"\xc3\xa9",
            b"\xff",
        ];
        for _ in 0..5000 {
            let len = (next() % 24) as usize;
            let mut bytes = Vec::new();
            for _ in 0..len {
                let r = next();
                if r % 3 == 0 {
                    bytes.push((r >> 8) as u8);
                } else {
                    bytes.extend_from_slice(PIECES[(r >> 8) as usize % PIECES.len()]);
                }
            }
            let _ = parse_challenge_value(&String::from_utf8_lossy(&bytes));
            if let Ok(value) = HeaderValue::from_bytes(&bytes) {
                let mut map = HeaderMap::new();
                map.append(WWW_AUTHENTICATE, value);
                let _ = parse_challenges(&map);
                let _ = claims_challenge(&map);
            }
        }
    }
}

//! `WWW-Authenticate` parsing: the challenges and the CAE claims decision.

use http::header::WWW_AUTHENTICATE;
use http::{HeaderMap, HeaderValue};
use serde_json::Value;

use crate::bearer::claims_challenge;
use crate::bearer::www_authenticate::{Challenge, parse_challenges};

/// Longest `Display` of a claims-challenge error: it quotes at most 64 characters of the
/// header, plus the decoder's short reason.
const CLAIMS_ERROR_MAX_CHARS: usize = 512;

/// `WWW-Authenticate` parsing. `data` is split at `\n` into header lines (lines that are not
/// valid header values are dropped, as `http` would).
///
/// Checks: [`claims_challenge`] returns claims only when they are a JSON object, and only when a
/// `Bearer` challenge with `error="insufficient_claims"` was parsed; its error is short;
/// parsed schemes and parameter names are tokens; printing the challenges canonically and
/// parsing that again gives the same challenges.
pub fn www_authenticate(data: &[u8]) {
    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        if let Ok(value) = HeaderValue::from_bytes(line) {
            headers.append(WWW_AUTHENTICATE, value);
        }
    }
    let challenges = parse_challenges(&headers);
    for challenge in &challenges {
        assert!(is_token(challenge.scheme()), "scheme {challenge:?}");
        for (name, _) in challenge.params() {
            assert!(is_token(name), "parameter name {challenge:?}");
        }
        if let Some(token68) = challenge.token68() {
            assert!(
                challenge.params().next().is_none(),
                "token68 and params: {challenge:?}"
            );
            assert!(!token68.is_empty(), "empty token68: {challenge:?}");
        }
    }

    match claims_challenge(&headers) {
        Ok(Some(claims)) => {
            match serde_json::from_str::<Value>(&claims) {
                Ok(Value::Object(_)) => {}
                Ok(_) => {
                    panic!("claims_challenge returned claims that are not an object: {claims:?}")
                }
                Err(e) => {
                    panic!("claims_challenge returned claims that are not JSON ({e}): {claims:?}")
                }
            }
            assert!(
                challenges
                    .iter()
                    .any(|c| c.is_scheme("Bearer")
                        && c.param("error") == Some("insufficient_claims")),
                "claims without an insufficient_claims Bearer challenge: {challenges:?}"
            );
        }
        Ok(None) => {}
        Err(e) => {
            let shown = e.to_string();
            assert!(
                shown.chars().count() <= CLAIMS_ERROR_MAX_CHARS,
                "claims error of {} chars",
                shown.chars().count()
            );
            let _ = format!("{e:?}");
        }
    }

    // Canonical form: one line, `scheme token68` or `scheme name="value", …`, challenges
    // joined by `, `. It must parse back to the same challenges.
    if !challenges.is_empty() {
        let line = challenges
            .iter()
            .map(print_challenge)
            .collect::<Vec<_>>()
            .join(", ");
        let mut printed = HeaderMap::new();
        let value = HeaderValue::from_str(&line)
            .unwrap_or_else(|e| panic!("canonical form is not a header value ({e}): {line:?}"));
        printed.append(WWW_AUTHENTICATE, value);
        let reparsed = parse_challenges(&printed);
        assert_eq!(reparsed, challenges, "canonical form {line:?}");
    }
}

/// RFC 9110 `token`.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A challenge as RFC 9110 writes it, every parameter value quoted.
fn print_challenge(challenge: &Challenge) -> String {
    let mut out = challenge.scheme().to_owned();
    if let Some(token68) = challenge.token68() {
        out.push(' ');
        out.push_str(token68);
        return out;
    }
    for (i, (name, value)) in challenge.params().enumerate() {
        out.push_str(if i == 0 { " " } else { ", " });
        out.push_str(name);
        out.push_str("=\"");
        for c in value.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    }
    out
}

//! Lenient readers for the encodings providers use loosely: base64 with or without padding in
//! either alphabet, and numbers sent as JSON numbers or as numeric strings. One home, so that
//! every parser accepts the same inputs.

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::{DecodeError, Engine};
use serde_json::{Map, Value};

/// Padding optional, non-zero trailing bits allowed: what lenient decoders such as Python's
/// accept.
const LENIENT: GeneralPurposeConfig = GeneralPurposeConfig::new()
    .with_decode_padding_mode(DecodePaddingMode::Indifferent)
    .with_decode_allow_trailing_bits(true);
const URL_SAFE_LENIENT: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);
/// Some servers use the standard alphabet (`+/`) where base64url is specified.
const STANDARD_LENIENT: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);

/// Decodes base64url, else standard base64, padded or not; surrounding whitespace is ignored.
/// The error is base64url's (the encoding the specifications name).
pub(crate) fn decode_base64(text: &str) -> Result<Vec<u8>, DecodeError> {
    let text = text.trim();
    URL_SAFE_LENIENT
        .decode(text)
        .or_else(|url_safe_error| STANDARD_LENIENT.decode(text).map_err(|_| url_safe_error))
}

/// A non-negative integer given as a JSON number (integer or float, truncated) or a numeric
/// string; `None` for anything else.
pub(crate) fn number(value: &Value) -> Option<u64> {
    let float = |f: f64| (f.is_finite() && f >= 0.0).then_some(f as u64);
    match value {
        Value::Number(n) => n.as_u64().or_else(|| n.as_f64().and_then(float)),
        Value::String(s) => {
            let s = s.trim();
            s.parse::<u64>()
                .ok()
                .or_else(|| s.parse::<f64>().ok().and_then(float))
        }
        _ => None,
    }
}

/// The field `name` as a [`number`]: absent or `null` is `None`, anything else that is not a
/// number is an error naming the field.
pub(crate) fn number_field(object: &Map<String, Value>, name: &str) -> Result<Option<u64>, String> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => number(value)
            .map(Some)
            .ok_or_else(|| format!("{name} is not a non-negative number")),
    }
}

/// How long an answer's token lives, in seconds from `sent_at_unix` (not clamped): its
/// relative `expires_in` or, only when that is absent or unreadable, its absolute
/// `expires_on` as `read_expires_on` reads it (its error says what it takes). The relative
/// lifetime wins: it is immune to a skewed local clock, where an `expires_on` taken from a
/// host clock ahead by more than the lifetime reads as already expired. So `expires_on` is
/// not even read beside a good `expires_in` (a form a parser does not know must not fail a
/// token that arrived). One rule for every token answer, Entra's and managed identity's.
pub(crate) fn token_lifetime(
    object: &Map<String, Value>,
    sent_at_unix: u64,
    read_expires_on: impl Fn(&Value) -> Result<u64, String>,
) -> Result<u64, String> {
    let unreadable = match number_field(object, "expires_in") {
        Ok(Some(secs)) => return Ok(secs),
        Ok(None) => None,
        Err(reason) => Some(reason),
    };
    let expires_on = match object.get("expires_on") {
        None | Some(Value::Null) => None,
        Some(value) => Some(read_expires_on(value)),
    };
    match (unreadable, expires_on) {
        (unreadable, Some(Ok(epoch))) => {
            if let Some(reason) = unreadable {
                tracing::debug!("token answer: {reason}: expires_on used instead");
            }
            Ok(epoch.saturating_sub(sent_at_unix))
        }
        (Some(reason), Some(Err(also))) => Err(format!("{reason}, and {also}")),
        (Some(reason), None) | (None, Some(Err(reason))) => Err(reason),
        (None, None) => Err("the answer has neither expires_in nor expires_on".into()),
    }
}

/// The field `name` as a string; an empty one is no value (msal skips empty values too: an
/// empty refresh token stored in place of the redeemed one would fail the next renewal).
pub(crate) fn string_field(object: &Map<String, Value>, name: &str) -> Option<String> {
    object
        .get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn base64_either_alphabet_padded_or_not() {
        for text in ["-_8", "-_8=", "+/8", "+/8=", " +/8= "] {
            assert_eq!(decode_base64(text).unwrap(), vec![0xfb, 0xff], "{text}");
        }
        assert!(decode_base64("!!").is_err());
    }

    #[test]
    fn numbers_as_numbers_or_strings() {
        assert_eq!(number(&json!(3600)), Some(3600));
        assert_eq!(number(&json!(3600.9)), Some(3600));
        assert_eq!(number(&json!(" 3600 ")), Some(3600));
        assert_eq!(number(&json!("1e3")), Some(1000));
        for bad in [json!(-1), json!("-1"), json!("x"), json!(true), json!(null)] {
            assert_eq!(number(&bad), None, "{bad}");
        }
        let object = json!({"a": "5", "b": null, "c": "x"});
        let object = object.as_object().unwrap();
        assert_eq!(number_field(object, "a"), Ok(Some(5)));
        assert_eq!(number_field(object, "b"), Ok(None));
        assert_eq!(number_field(object, "missing"), Ok(None));
        assert_eq!(
            number_field(object, "c"),
            Err("c is not a non-negative number".to_owned())
        );
    }
}

//! The token endpoint's answer parser.

use http::StatusCode;

use crate::entra::token_client::parse_response;
use crate::token::unix_now;

use super::{assert_no_leak, fill_template, renderings, secret_from};

/// The token endpoint's answer parser.
///
/// Input layout: byte 0 chooses the secret's length (8 to 40), the next bytes are the secret
/// (printable ASCII; a space only between two other characters, and at least three
/// distinct characters), the next two the HTTP status (100 to 999),
/// and the rest is a body template in which the bytes `0x01`..=`0x06` stand for the secret
/// raw, form-urlencoded (`+`), percent-encoded with `%20`, JSON-escaped, `%XX` for every byte,
/// and `\uXXXX` for every character. The secret is passed to the parser as the request's
/// secret.
///
/// Checks: no panic for any status and body; an error's `Display`, `Debug` and `{:#?}` show
/// none of those encodings of the secret (nor its `{:?}` form), nor of a prefix of it that
/// `redact` promises to mask, unless they also show it for the same template with the
/// placeholders removed.
pub fn token_response(data: &[u8]) {
    let Some((&len, rest)) = data.split_first() else {
        return;
    };
    let len = 8 + usize::from(len) % 33;
    if rest.len() < len + 2 {
        return;
    }
    let (secret, rest) = rest.split_at(len);
    let Some(secret) = secret_from(secret) else {
        return;
    };
    let status = 100 + u16::from_le_bytes([rest[0], rest[1]]) % 900;
    let template = &rest[2..];
    let Ok(status) = StatusCode::from_u16(status) else {
        return;
    };

    let body = fill_template(template, &secret, true);
    let outcome = run_token_response(status, &body, &secret);
    let Err(found) = outcome else {
        return;
    };
    let control_body = fill_template(template, &secret, false);
    let control = run_token_response(status, &control_body, &secret)
        .err()
        .unwrap_or_default();
    assert_no_leak(
        "a token endpoint error",
        &secret,
        &found,
        &control.into_iter().collect::<Vec<_>>(),
    );
}

/// Parses `body`; for an error, its three renderings.
fn run_token_response(status: StatusCode, body: &[u8], secret: &str) -> Result<(), [String; 3]> {
    let sent_at_unix = unix_now();
    match parse_response(
        "FuzzCredential",
        status,
        body,
        &[secret],
        tokio::time::Instant::now(),
        sent_at_unix,
    ) {
        Ok(response) => {
            let _ = format!("{response:?}");
            Ok(())
        }
        Err(error) => Err(renderings(&error)),
    }
}

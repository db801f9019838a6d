//! Scrubbing secrets out of text that came from outside: a provider's error answer, a proxy's
//! error page, a program's output. Every error message built from such text goes through here.
//!
//! Three rules, applied in turn:
//!
//! 1. **Known secrets** (what the credential sent: client secret, authorization code, client
//!    assertion, refresh tokens) are found in every encoding they come back in: raw,
//!    percent-encoded (upper- or lower-case hex, `+` or `%20` for a space, fully or partly
//!    encoded), JSON-escaped (`\"`, `\\`, `\/`, `\uXXXX`, surrogate pairs included) and
//!    HTML-escaped (`&amp;`, `&lt;`, …), as well as any mix of these — an IdP that echoes the
//!    form body in a JSON `error_description` produces exactly such a mix. A server that
//!    echoes a request cut short leaves a *prefix* of a secret: one of at least
//!    [`MIN_PREFIX_CHARS`] characters and half the secret is masked too. A secret with a `\`
//!    is also looked for as a JSON decoder reads it: a server that pastes it unescaped into a
//!    JSON string (`"…xc\"y…"`) has its backslashes read as escapes by the time we see the text.
//! 2. **JWT-shaped runs** (`eyJ…` with a dot): access tokens, id tokens, assertions we did not
//!    send.
//! 3. **Values of `…_token` fields**, JSON (`"refresh_token": "…"`) or form style
//!    (`access_token=…`).
//!
//! Matches become `***`. Secrets shorter than [`MIN_SECRET_LEN`] bytes are not searched for:
//! they would match ordinary text.

/// Secrets shorter than this are not searched for.
pub(crate) const MIN_SECRET_LEN: usize = 4;
/// The shortest prefix of a secret that is masked on its own (and at least half the secret):
/// shorter ones would match ordinary text.
pub(crate) const MIN_PREFIX_CHARS: usize = 8;
/// What a match becomes.
const MASK: &str = "***";

/// `text` with secrets and token values replaced by `***` (see the module docs).
pub(crate) fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_owned();
    for secret in secrets.iter().filter(|s| s.len() >= MIN_SECRET_LEN) {
        out = mask_encoded(&out, secret);
        if let Some(read) = json_read(secret).filter(|r| r.len() >= MIN_SECRET_LEN) {
            out = mask_encoded(&out, &read);
        }
    }
    scrub_token_fields(&scrub_jwts(&out))
}

/// The start of a body that could not be read as expected: lossily decoded, scrubbed, control
/// characters replaced by spaces, at most `max_chars` characters, trimmed.
///
/// The whole body is scrubbed before it is cut: cutting first could split a secret (masked
/// copies before it shrink, so a byte window says nothing about where the shown text ends).
/// Bodies reaching here are bounded already (the transport's response cap, a helper program's
/// output cap).
pub(crate) fn excerpt(body: &[u8], secrets: &[&str], max_chars: usize) -> String {
    let text = String::from_utf8_lossy(body);
    scrub(&text, secrets)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max_chars)
        .collect::<String>()
        .trim()
        .to_owned()
}

/// At most `max_chars` characters of `text`, with `…` when it was cut.
pub(crate) fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// `secret` as a JSON decoder reads it inside a string (`\"` → `"`, `\\` → `\`, `\uXXXX` →
/// the character, …), when that differs from the secret; escapes JSON does not know stay.
fn json_read(secret: &str) -> Option<String> {
    if !secret.contains('\\') {
        return None;
    }
    let mut out = String::with_capacity(secret.len());
    let mut chars = secret.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let mut ahead = chars.clone();
        let read = match ahead.next() {
            Some('"') => Some('"'),
            Some('\\') => Some('\\'),
            Some('/') => Some('/'),
            Some('b') => Some('\u{8}'),
            Some('f') => Some('\u{c}'),
            Some('n') => Some('\n'),
            Some('r') => Some('\r'),
            Some('t') => Some('\t'),
            Some('u') => {
                let hex: String = ahead.by_ref().take(4).collect();
                u32::from_str_radix(&hex, 16)
                    .ok()
                    .filter(|_| hex.len() == 4)
                    .and_then(char::from_u32)
            }
            _ => None,
        };
        match read {
            Some(decoded) => {
                out.push(decoded);
                chars = ahead;
            }
            None => out.push(c),
        }
    }
    (out != secret).then_some(out)
}

/// Replaces every occurrence of `secret`, in any mix of the encodings of the module docs.
///
/// Every position is tried, also inside a match, and the union of all matches is masked: a
/// match taken longest (a trailing `\` read as the escape `\\`) may swallow the first bytes
/// of a copy right behind it, which must still be found.
fn mask_encoded(text: &str, secret: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    // The masked run being built, if one is open: where it starts and ends.
    let mut run: Option<(usize, usize)> = None;
    for at in 0..bytes.len() {
        if let Some((start, end)) = run {
            if at > end {
                out.push_str(text.get(copied..start).unwrap_or_default());
                out.push_str(MASK);
                copied = end;
                run = None;
            }
        }
        // A match starts and ends on character boundaries: it consumes whole encodings of
        // whole characters, each ASCII or the character itself.
        if !text.is_char_boundary(at) {
            continue;
        }
        if let Some(end) = match_at(bytes, at, secret).filter(|&e| text.is_char_boundary(e)) {
            run = Some(match run {
                Some((start, open)) => (start, open.max(end)),
                None => (at, end),
            });
        }
    }
    if let Some((start, end)) = run {
        out.push_str(text.get(copied..start).unwrap_or_default());
        out.push_str(MASK);
        copied = end;
    }
    out.push_str(text.get(copied..).unwrap_or_default());
    out
}

/// If `secret` (encoded in any way), or a long enough prefix of it (see the module docs),
/// starts at `text[at]`, where its longest match ends.
///
/// Some characters have encodings that start alike (`\\` raw or as `\\\\`, `%` raw or as
/// `%25`, `&` raw or as `&amp;`), so every position a prefix can end at is kept, not only the
/// first found.
fn match_at(text: &[u8], at: usize, secret: &str) -> Option<usize> {
    let chars = secret.chars().count();
    let min_prefix = MIN_PREFIX_CHARS.max(chars.div_ceil(2)).min(chars);
    let mut positions = vec![at];
    let mut next = Vec::new();
    let mut matched = None;
    for (count, c) in (1usize..).zip(secret.chars()) {
        next.clear();
        for &pos in &positions {
            char_ends(text, pos, c, &mut next);
        }
        next.sort_unstable();
        next.dedup();
        let Some(&furthest) = next.last() else {
            break;
        };
        if count >= min_prefix {
            matched = Some(furthest);
        }
        std::mem::swap(&mut positions, &mut next);
    }
    matched
}

/// Every position where an encoding of `c` that starts at `text[pos]` ends.
fn char_ends(text: &[u8], pos: usize, c: char, ends: &mut Vec<usize>) {
    let Some(rest) = text.get(pos..) else {
        return;
    };
    let mut utf8 = [0u8; 4];
    let raw = c.encode_utf8(&mut utf8).as_bytes();
    let raw_len = rest.starts_with(raw).then_some(raw.len());
    let plus = (c == ' ' && rest.first() == Some(&b'+')).then_some(1);
    for len in [
        raw_len,
        plus,
        match_percent(rest, raw),
        match_json_escape(rest, c),
        match_html_escape(rest, c),
    ]
    .into_iter()
    .flatten()
    {
        ends.push(pos.saturating_add(len));
    }
}

/// Every byte of the character as `%HH` (either case).
fn match_percent(rest: &[u8], raw: &[u8]) -> Option<usize> {
    let mut escapes = rest.chunks(3);
    for &b in raw {
        match escapes.next()? {
            [b'%', hi, lo] if hex_pair(*hi, *lo) == Some(b) => {}
            _ => return None,
        }
    }
    raw.len().checked_mul(3)
}

fn match_json_escape(rest: &[u8], c: char) -> Option<usize> {
    if rest.first() != Some(&b'\\') {
        return None;
    }
    let short = match c {
        '"' => Some(b'"'),
        '\\' => Some(b'\\'),
        '/' => Some(b'/'),
        '\n' => Some(b'n'),
        '\r' => Some(b'r'),
        '\t' => Some(b't'),
        '\u{8}' => Some(b'b'),
        '\u{c}' => Some(b'f'),
        _ => None,
    };
    if short.is_some() && rest.get(1).copied() == short {
        return Some(2);
    }
    let mut units = [0u16; 2];
    let units = c.encode_utf16(&mut units);
    let mut escapes = rest.chunks(6);
    for unit in units.iter() {
        match escapes.next()? {
            [b'\\', b'u', hex @ ..] if hex.len() == 4 && hex_u16(hex) == Some(*unit) => {}
            _ => return None,
        }
    }
    units.len().checked_mul(6)
}

fn match_html_escape(rest: &[u8], c: char) -> Option<usize> {
    if rest.first() != Some(&b'&') {
        return None;
    }
    let named: &[&[u8]] = match c {
        '&' => &[b"&amp;"],
        '<' => &[b"&lt;"],
        '>' => &[b"&gt;"],
        '"' => &[b"&quot;"],
        '\'' => &[b"&apos;"],
        _ => &[],
    };
    if let Some(entity) = named.iter().find(|e| rest.starts_with(e)) {
        return Some(entity.len());
    }
    // Numeric: &#DDD; or &#xHH;
    let body = rest.strip_prefix(b"&#")?;
    let semi = body.iter().take(10).position(|&b| b == b';')?;
    let digits = std::str::from_utf8(body.get(..semi)?).ok()?;
    let value = match digits.strip_prefix(['x', 'X']) {
        Some(hex) => u32::from_str_radix(hex, 16).ok()?,
        None => digits.parse::<u32>().ok()?,
    };
    // `&#`, the digits, `;`.
    (value == c as u32).then(|| semi.checked_add(3)).flatten()
}

fn hex_digit(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

fn hex_pair(hi: u8, lo: u8) -> Option<u8> {
    Some(hex_digit(hi)? << 4 | hex_digit(lo)?)
}

fn hex_u16(digits: &[u8]) -> Option<u16> {
    digits
        .iter()
        .try_fold(0u16, |acc, &d| Some(acc << 4 | u16::from(hex_digit(d)?)))
}

fn is_jwt_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '=' | '+' | '/')
}

/// `eyJ…` runs that contain a dot: JWT/JWS/JWE compact serialisations.
fn scrub_jwts(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("eyJ") {
        out.push_str(&rest[..at]);
        let candidate = &rest[at..];
        let len = candidate
            .find(|c| !is_jwt_char(c))
            .unwrap_or(candidate.len());
        if candidate[..len].contains('.') {
            out.push_str(MASK);
        } else {
            out.push_str(&candidate[..len]);
        }
        rest = &candidate[len..];
    }
    out.push_str(rest);
    out
}

/// Values of `access_token`, `refresh_token`, `id_token` (any `…_token` name) after `":"` or `=`.
fn scrub_token_fields(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("_token") {
        let Some((head, tail)) = rest.split_at_checked(at.saturating_add("_token".len())) else {
            break;
        };
        out.push_str(head);
        // Skip a closing quote, spaces and the separator, then an opening quote.
        let after_name = tail.trim_start_matches(['"', '\\']).trim_start();
        let Some(after_sep) = after_name
            .strip_prefix(':')
            .or_else(|| after_name.strip_prefix('='))
        else {
            rest = tail;
            continue;
        };
        let after_sep = after_sep.trim_start();
        let quote = after_sep
            .strip_prefix("\\\"")
            .map(|_| "\\\"")
            .or_else(|| after_sep.starts_with('"').then_some("\""));
        let value_start = match quote {
            Some(q) => after_sep.get(q.len()..).unwrap_or_default(),
            None => after_sep,
        };
        let end = match quote {
            Some(q) => value_start.find(q),
            None => value_start.find(['&', ',', '}', ' ', '\r', '\n']),
        }
        .unwrap_or(value_start.len());
        if end == 0 {
            rest = tail;
            continue;
        }
        let separator = tail.len().saturating_sub(value_start.len());
        out.push_str(tail.get(..separator).unwrap_or_default());
        out.push_str(MASK);
        rest = value_start.get(end..).unwrap_or_default();
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_removes_known_secrets_jwts_and_token_fields() {
        let text = r#"secret=abcd1234 jwt=eyJhbGc.eyJzdWIi.sig {"refresh_token": "opaque-rt", "id_token":"x"} access_token=opaque&next=1 eyJnotajwt"#;
        let out = scrub(text, &["abcd1234"]);
        assert_eq!(
            out,
            r#"secret=*** jwt=*** {"refresh_token": "***", "id_token":"***"} access_token=***&next=1 eyJnotajwt"#
        );
    }

    #[test]
    fn every_encoding_of_a_secret_is_found() {
        let secret = "Lk8Q~a b/c\"d&e+f\\gé😀";
        let form: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
        let json = serde_json::to_string(secret).unwrap();
        let json = &json[1..json.len() - 1];
        let ascii_json: String = secret
            .encode_utf16()
            .map(|u| format!("\\u{u:04x}"))
            .collect();
        let encodings = [
            secret.to_owned(),
            form.clone(),
            form.replace('+', "%20"),
            form.to_lowercase().replace("lk8q", "Lk8Q"),
            json.to_owned(),
            json.replace('/', "\\/"),
            ascii_json,
            "Lk8Q%7Ea+b/c&quot;d&amp;e%2Bf\\\\g%C3%A9%F0%9F%98%80".to_owned(),
            "Lk8Q&#126;a b&#x2F;c\"d&e+f\\gé😀".to_owned(),
        ];
        for encoded in encodings {
            let text = format!("client_secret={encoded}&scope=x");
            let out = scrub(&text, &[secret]);
            assert_eq!(out, "client_secret=***&scope=x", "{encoded}");
        }
    }

    #[test]
    fn near_misses_are_kept_and_text_around_matches_survives() {
        let out = scrub("abcd123 xabcd1234y abcd%31234", &["abcd1234"]);
        assert_eq!(out, "abcd123 x***y ***");
        // Short secrets are not searched for.
        assert_eq!(scrub("a b c", &["b"]), "a b c");
        // Multi-byte text around a secret.
        assert_eq!(scrub("é-s3cret-é", &["s3cret"]), "é-***-é");
    }

    #[test]
    fn json_escaped_token_fields_are_scrubbed() {
        let out = scrub(r#"{\"refresh_token\":\"opaque\",\"x\":1}"#, &[]);
        assert_eq!(out, r#"{\"refresh_token\":\"***\",\"x\":1}"#);
    }

    #[test]
    fn adjacent_copies_are_all_masked() {
        // Found by the token_response fuzz target: the first copy's longest match (a trailing
        // `\` read as an escaped backslash, `%` as `%25`) swallowed the start of the next.
        for secret in ["\\abcdefgh\\", "25abcdefghij%"] {
            let text = format!("{secret}{secret} end");
            assert_eq!(scrub(&text, &[secret]), "*** end", "{secret}");
            let text = format!("a {secret}{secret}{secret}");
            assert_eq!(scrub(&text, &[secret]), "a ***", "{secret}");
        }
    }

    #[test]
    fn a_long_enough_prefix_of_a_secret_is_masked() {
        // A server echoing the first bytes of the request body cuts the secret short.
        let secret = "Lk8Q~abcdefghij0123456789";
        let form: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
        let cut = &form[..form.len() - 8];
        assert_eq!(
            scrub(&format!("body: client_secret={cut}"), &[secret]),
            "body: client_secret=***"
        );
        // Half the secret (13 of 25 characters) and more is masked; less is ordinary text.
        assert_eq!(scrub("x Lk8Q~abcdefgh y", &[secret]), "x *** y");
        assert_eq!(scrub("x Lk8Q~abcdefg y", &[secret]), "x Lk8Q~abcdefg y");
        assert_eq!(scrub("x Lk8Q~abc y", &[secret]), "x Lk8Q~abc y");
        let short = "abcdefghij";
        assert_eq!(scrub("abcdefgh.", &[short]), "***.");
        assert_eq!(scrub("abcdefg.", &[short]), "abcdefg.");
    }

    #[test]
    fn a_secret_pasted_unescaped_into_json_is_found_as_a_decoder_reads_it() {
        // Found by the token_response fuzz target: `\"` in the secret became `"` once the
        // answer's JSON was decoded, so the description showed all but one character of it.
        let secret = r#"s p&=xc\"y/~"#;
        let body = format!(r#"{{"error_description":"client_secret={secret} AADSTS7000215"}}"#);
        let decoded: serde_json::Value = serde_json::from_str(&body).unwrap();
        let description = decoded["error_description"].as_str().unwrap();
        assert_eq!(description, r#"client_secret=s p&=xc"y/~ AADSTS7000215"#);
        assert_eq!(
            scrub(description, &[secret]),
            "client_secret=*** AADSTS7000215"
        );
        assert_eq!(json_read(r"a\u00e9\q\\"), Some(r"aé\q\".to_owned()));
        assert_eq!(json_read("plain"), None);
    }

    #[test]
    fn an_excerpt_never_cuts_through_a_secret() {
        // Found by the token_response fuzz target: 17 percent-encoded copies shrank to `***`,
        // so a byte window cut before scrubbing split the raw copy after them.
        let secret = "Abcdefghijklmnopqrs9";
        let encoded: String = secret.bytes().map(|b| format!("%{b:02X}")).collect();
        let body = format!("{}xxxx{secret}", encoded.repeat(17));
        let shown = excerpt(body.as_bytes(), &[secret], 200);
        assert!(!shown.contains("Abcdefghijklmno"), "{shown}");
        assert!(shown.ends_with("xxxx***"), "{shown}");
    }

    #[test]
    fn excerpt_is_bounded_and_clean() {
        let body = format!("<p>\r\nsecret-value {}</p>", "x".repeat(10_000));
        let e = excerpt(body.as_bytes(), &["secret-value"], 20);
        assert_eq!(e, "<p>  *** xxxxxxxxxxx");
        assert_eq!(truncate("héllo", 2), "hé…");
        assert_eq!(truncate("hé", 2), "hé");
    }
}

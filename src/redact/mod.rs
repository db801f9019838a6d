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
//! 3. **Values of secret fields**, JSON (`"refresh_token": "…"`), form style
//!    (`client_secret=…`), Python or JavaScript (`'refreshToken': '…'`) or JSON pasted into a
//!    page (`&quot;password&quot;:&quot;…&quot;`): any name ending in `_token` (or
//!    `Token`), `client_secret`, `client_assertion`, `device_code`, `code_verifier` or
//!    `password`, whatever its case and with or without `_` or `-` (`accessToken`,
//!    `Password`). A quoted name is a key (a bare `token` too: azd's `{"token": …}`); an
//!    unquoted one counts before `=` (a bare `token` too: Python's `token='…'`), before `:`
//!    with no space (`ClientSecret:…` in a Go struct dump), and before `: ` unless a
//!    sentence follows (`Password: must be 8+ characters` is prose; a snake_case name
//!    starting its line is a YAML setting, and so is a lower-case one on a line where no
//!    sentence ends: `password: correct horse battery staple`). A
//!    page that echoes a form body cut short leaves less than rule 1's prefix of a secret;
//!    its field name still gives it away.
//!
//! Matches become `***`. Secrets shorter than [`MIN_SECRET_LEN`] bytes are not searched for:
//! they would match ordinary text.
//!
//! The search for a secret takes time linear in the text and the secret, whatever either
//! holds (a text or secret chosen by the provider included): see [`mask_encoded`].

/// Secrets shorter than this are not searched for.
pub(crate) const MIN_SECRET_LEN: usize = 4;
/// The shortest prefix of a secret that is masked on its own (and at least half the secret):
/// shorter ones would match ordinary text.
pub(crate) const MIN_PREFIX_CHARS: usize = 8;
/// The most characters of a text we did not write (a helper program's stderr, a callback's or
/// a middleware's error, a panic message) that an error quotes, once scrubbed.
pub(crate) const MAX_QUOTED_CHARS: usize = 300;
/// What a match becomes.
const MASK: &str = "***";

/// `text` with secrets and token values replaced by `***` (see the module docs).
pub(crate) fn scrub(text: &str, secrets: &[&str]) -> String {
    scrub_with(text, secrets, mask_encoded)
}

/// [`scrub`], each secret masked by `mask` (the tests' `reference` passes the old search).
fn scrub_with(text: &str, secrets: &[&str], mask: fn(&str, &str) -> String) -> String {
    let mut out = text.to_owned();
    for secret in secrets.iter().filter(|s| s.len() >= MIN_SECRET_LEN) {
        out = mask(&out, secret);
        if let Some(read) = json_read(secret).filter(|r| r.len() >= MIN_SECRET_LEN) {
            out = mask(&out, &read);
        }
    }
    scrub_fields(&scrub_jwts(&out))
}

/// Provider text as one line: its parts between [disruptive](is_disruptive)
/// characters (line breaks, escape sequences, bidi controls, …) trimmed and joined by spaces.
pub(crate) fn one_line(text: &str) -> String {
    text.split(is_disruptive)
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Provider text quoted in an error: scrubbed, on [one line](one_line), scrubbed again
/// (joining its parts can join a secret field's name to its value: `client_secret\0=abc`),
/// at most `max_chars` characters.
pub(crate) fn quoted_line(text: &str, secrets: &[&str], max_chars: usize) -> String {
    let line = one_line(&scrub(text, secrets));
    truncate(&scrub(&line, secrets), max_chars)
}

/// The start of a body that could not be read as expected: lossily decoded, scrubbed,
/// [disruptive](is_disruptive) characters replaced by spaces, at most `max_chars`
/// characters, trimmed.
///
/// The whole body is scrubbed before it is cut: cutting first could split a secret (masked
/// copies before it shrink, so a byte window says nothing about where the shown text ends).
/// Bodies reaching here are bounded already (the transport's response cap, a helper program's
/// output cap).
pub(crate) fn excerpt(body: &[u8], secrets: &[&str], max_chars: usize) -> String {
    let text = String::from_utf8_lossy(body);
    // Scrubbed again once control characters are spaces: a NUL where the secret has a space
    // would otherwise turn a harmless near-copy into the secret.
    let spaced = sanitize_quoted(&scrub(&text, secrets));
    scrub(&spaced, secrets)
        .chars()
        .take(max_chars)
        .collect::<String>()
        .trim()
        .to_owned()
}

/// Whether `c` would let quoted text change how a message or log reads: control characters
/// (new lines, escape sequences, NEL), Unicode's line and paragraph separators, the bidi
/// controls that reorder the text shown around them, invisible characters that hide text or
/// split a word unseen (zero-width space, soft hyphen, word joiner, invisible operators,
/// combining grapheme joiner, Mongolian vowel separator, interlinear annotation marks,
/// variation selectors, Hangul fillers, Khmer inherent vowels, musical formatting
/// characters) and tag characters (invisible text). Not the zero-width non-joiner and joiner (U+200C,
/// U+200D): Persian and other scripts need them in ordinary words, and emoji sequences
/// are built with the joiner. Every place that quotes text from outside replaces these, with
/// [`sanitize_quoted`] or by this test.
pub(crate) fn is_disruptive(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{034F}'
                | '\u{061C}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{17B4}'
                | '\u{17B5}'
                | '\u{180E}'
                | '\u{200B}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{2069}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0000}'..='\u{E007F}'
                | '\u{E0100}'..='\u{E01EF}'
        )
}

/// `text` with every [disruptive](is_disruptive) character replaced by a space.
pub(crate) fn sanitize_quoted(text: &str) -> String {
    text.chars()
        .map(|c| if is_disruptive(c) { ' ' } else { c })
        .collect()
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

mod readings;
#[cfg(test)]
pub(crate) mod reference;
mod search;
#[cfg(test)]
mod tests;

use search::mask_encoded;
#[cfg(test)]
use search::mask_encoded_counted;

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

/// Field names whose values are masked (rule 3), as they are compared: the end of a name, in
/// ASCII lower case and without `_` or `-`, so that `refresh_token`, `refreshToken`,
/// `Refresh-Token` and `Password` all count (`token` only after something: `id_token`, not
/// `token`, unless a key: see [`is_secret_field`]). Not `code`: error answers carry `"code": "…"`
/// fields worth reading, and an authorization code is one of rule 1's secrets.
const SECRET_FIELDS: [&str; 6] = [
    "token",
    "clientsecret",
    "clientassertion",
    "devicecode",
    "codeverifier",
    "password",
];

/// What a field name is made of (`-`: header and command-line style names).
fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-')
}

/// Whether the field name `name` ends in one of [`SECRET_FIELDS`], ignoring ASCII case, `_`
/// and `-`; a bare `token` only when `key` (quoted, as azd's `{"token": …}`, or before `=`).
fn is_secret_field(name: &str, key: bool) -> bool {
    SECRET_FIELDS.iter().any(|field| {
        let mut letters = name
            .bytes()
            .rev()
            .filter(|b| !matches!(b, b'_' | b'-'))
            .map(|b| b.to_ascii_lowercase());
        field.bytes().rev().all(|f| letters.next() == Some(f))
            // A bare `token` is prose as often as a name ("fetching token: failed to …"):
            // only a kind of token (`access_token`, `refreshToken`) counts, or a key.
            && (*field != "token" || key || letters.next().is_some())
    })
}

/// A quote around a name or a value, as text may write it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Quote {
    /// `"` or `'` after this many backslashes (JSON escaping, once per level of nesting).
    Plain { quote: u8, backslashes: usize },
    /// `"` or `'` as a character reference (JSON pasted into a page: `&quot;`, `&#34;`,
    /// `&#034;`, `&#X22;`, `&QUOT;`, `&apos;`, `&#39;`, …), a JSON `\u0022`/`\u0027`
    /// escape (System.Text.Json writes quotes so) or percent-encoded (`%22`, `%27`): any such
    /// form closes any other.
    Encoded(u8),
}

/// The quote `text` starts with, and its length in bytes.
fn quote_at(text: &str) -> Option<(Quote, usize)> {
    let bytes = text.as_bytes();
    let backslashes = bytes.iter().take_while(|&&b| b == b'\\').count();
    let after = backslashes.checked_add(1)?;
    match bytes.get(backslashes)? {
        &quote @ (b'"' | b'\'') => Some((Quote::Plain { quote, backslashes }, after)),
        b'u' if backslashes > 0 => {
            let hex = text.get(after..after.checked_add(4)?)?;
            let quote = hex
                .bytes()
                .all(|b| b.is_ascii_hexdigit())
                .then(|| u32::from_str_radix(hex, 16).ok())
                .flatten()
                .and_then(quote_byte)?;
            Some((Quote::Encoded(quote), after.checked_add(4)?))
        }
        b'&' if backslashes == 0 => html_quote(text),
        // Percent-encoded (a JSON body inside a URL or form value).
        b'%' if backslashes == 0 => match text.get(1..3)? {
            "22" => Some((Quote::Encoded(b'"'), 3)),
            "27" => Some((Quote::Encoded(b'\''), 3)),
            _ => None,
        },
        _ => None,
    }
}

/// The quote `"` or `'` whose code point is `code`.
fn quote_byte(code: u32) -> Option<u8> {
    match code {
        0x22 => Some(b'"'),
        0x27 => Some(b'\''),
        _ => None,
    }
}

/// The HTML character reference to a quote that `text` starts with (`&quot;`, `&QUOT;`,
/// `&apos;`, `&#34;`, `&#034;`, `&#x22;`, `&#X0022;`, …), and its length in bytes.
fn html_quote(text: &str) -> Option<(Quote, usize)> {
    let body = text.strip_prefix('&')?;
    // Bounded: a reference to a quote is short, whatever its leading zeros.
    let end = body.bytes().take(16).position(|b| b == b';')?;
    let name = body.get(..end)?;
    let quote = if name.eq_ignore_ascii_case("quot") {
        b'"'
    } else if name.eq_ignore_ascii_case("apos") {
        b'\''
    } else {
        let number = name.strip_prefix('#')?;
        let (digits, radix) = match number.strip_prefix(['x', 'X']) {
            Some(hex) => (hex, 16),
            None => (number, 10),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        quote_byte(u32::from_str_radix(digits, radix).ok()?)?
    };
    Some((Quote::Encoded(quote), end.checked_add(2)?))
}

/// Values of fields whose name ends in one of [`SECRET_FIELDS`] (`…_token`: `access_token`,
/// `refreshToken`, …), after `:` or `=`, quoted (`"`, `\"`, `'`, `&quot;`, …) or not. One
/// pass: each name is looked at once, and what follows it only up to its value's end.
fn scrub_fields(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(is_name_char) {
        let (before, from_name) = rest.split_at_checked(start).unwrap_or((rest, ""));
        let len = from_name
            .find(|c| !is_name_char(c))
            .unwrap_or(from_name.len());
        let (name, tail) = from_name.split_at_checked(len).unwrap_or((from_name, ""));
        let line_start = starts_line(before, &out);
        out.push_str(before);
        out.push_str(name);
        rest = tail;
        let Some((value_at, value_len)) = field_value(name, tail, line_start) else {
            continue;
        };
        out.push_str(tail.get(..value_at).unwrap_or_default());
        out.push_str(MASK);
        rest = tail
            .get(value_at.saturating_add(value_len)..)
            .unwrap_or_default();
    }
    out.push_str(rest);
    out
}

/// Whether a name after `before` (the text since the previous name, `out` what was written
/// before that) starts its line, blanks aside.
fn starts_line(before: &str, out: &str) -> bool {
    match before.trim_end_matches([' ', '\t']) {
        "" => out.is_empty() || out.ends_with(['\r', '\n']),
        text => text.ends_with(['\r', '\n']),
    }
}

/// Where the value of the secret field `name` starts in `tail` (what follows the name) and its
/// length in bytes, when a separator and a non-empty value follow; `line_start`: the name
/// starts its line.
///
/// A quoted name is a key, whatever follows (bare `token` included). An unquoted one counts
/// before `=` (form bodies, `--client-secret=`), and before `:` (see [`colon_value_len`])
/// unless a space and a sentence follow (`Password: must be 8+ characters`,
/// `Get-AzAccessToken: Run Connect-AzAccount`).
fn field_value(name: &str, tail: &str, line_start: bool) -> Option<(usize, usize)> {
    // Skip a closing quote, spaces and the separator (`:`, `=`, Ruby's `=>`), then spaces.
    let (after_name, quoted) = match quote_at(tail) {
        Some((_, len)) => (tail.get(len..).unwrap_or_default(), true),
        None => (tail, false),
    };
    // A bare `token` before `=` is a name (Python's `AccessTokenInfo(token='…')`, a URL's
    // `?token=…`); before `:` it is prose as often as not.
    let key = quoted || after_name.trim_start().starts_with('=');
    if !is_secret_field(name, key) {
        return None;
    }
    let after_sep = after_name.trim_start();
    let colon = after_sep.starts_with(':');
    // `%3D` or `%3A`: a URL or form body inside a form value or URL (`?x=…%3Frefresh_token%3D…`).
    let encoded_sep = after_sep
        .get(..3)
        .filter(|sep| sep.eq_ignore_ascii_case("%3D") || sep.eq_ignore_ascii_case("%3A"))
        .and_then(|_| after_sep.get(3..));
    if let Some(value) = encoded_sep {
        let (value, len) = match quote_at(value) {
            Some((quote, len)) => {
                let value = value.get(len..).unwrap_or_default();
                (value, closing(value, quote))
            }
            None => (value, encoded_value_len(value)),
        };
        return (len > 0).then(|| (tail.len().saturating_sub(value.len()), len));
    }
    let after_sep = after_sep
        .strip_prefix("=>")
        .or_else(|| after_sep.strip_prefix([':', '=']))?;
    let spaced = after_sep.starts_with(char::is_whitespace);
    let after_sep = after_sep.trim_start();
    let (value, len) = if let Some((quote, len)) = quote_at(without_string_prefix(after_sep)) {
        let value = without_string_prefix(after_sep)
            .get(len..)
            .unwrap_or_default();
        (value, closing(value, quote))
    } else if after_sep.starts_with(['{', '[']) {
        (after_sep, structure_len(after_sep))
    } else if colon {
        let read = match (spaced && !quoted, line_start) {
            (false, _) => ColonValue::Field,
            (true, true) if is_snake_case(name) => ColonValue::Setting,
            (true, true) if is_lower_case(name) => ColonValue::SettingUnlessSentence,
            (true, _) => ColonValue::MaybeProse,
        };
        (after_sep, colon_value_len(after_sep, read)?)
    } else {
        let len = after_sep
            .find(['&', ',', ';', '}', '<', '"', '\'', ' ', '\t', '\r', '\n'])
            .unwrap_or(after_sep.len());
        count_work(len);
        (after_sep, len)
    };
    (len > 0).then(|| (tail.len().saturating_sub(value.len()), len))
}

/// The length of an unquoted value after a percent-encoded separator: up to a character that
/// ends a form value, or a percent-encoded `&` or quote (`%26`, `%22`, `%27`), which end it
/// at that level of encoding. (After a plain `=`, `%26` is part of the value: an `&` in it.)
fn encoded_value_len(value: &str) -> usize {
    // One pass that stops at whichever ends the value first: a search for the plain
    // delimiters first scanned past the value to the next one (the text's end, in a body of
    // `%3D…%26` pairs), once per name: quadratic.
    let bytes = value.as_bytes();
    let end = bytes
        .iter()
        .enumerate()
        .position(|(at, &b)| {
            matches!(
                b,
                b'&' | b',' | b';' | b'}' | b'<' | b'"' | b'\'' | b' ' | b'\t' | b'\r' | b'\n'
            ) || (b == b'%'
                && matches!(
                    bytes.get(at.saturating_add(1)..at.saturating_add(3)),
                    Some(b"26" | b"22" | b"27")
                ))
        })
        .unwrap_or(bytes.len());
    count_work(end);
    end
}

/// How an unquoted value after `:` is read (see [`colon_value_len`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum ColonValue {
    /// No space after the colon, or a quoted name: a field whatever follows.
    Field,
    /// A space after an unquoted name inside a line: prose when a word follows the first.
    MaybeProse,
    /// A snake_case name starting its line: a setting to the line's end.
    Setting,
    /// A lower-case name starting its line: as [`ColonValue::MaybeProse`], but where that
    /// finds prose, a setting to the line's end unless a sentence ends on the line.
    SettingUnlessSentence,
}

/// The length of an unquoted value after `:`, `None` when it is prose.
///
/// * No space after the colon (`ClientSecret:s3cr3t`, Go's `%+v` struct dumps): a field
///   whatever follows.
/// * A space after an unquoted name ([`ColonValue::MaybeProse`]): prose when a word follows
///   the first one (`getToken: request failed`); a field when the first word ends its line
///   or an item (`password: hunter2, next`) or punctuation follows it
///   (`password: hunter2 (rotated)`).
/// * A snake_case name starting its line ([`ColonValue::Setting`]: `client_secret: abc
///   def`): a YAML or `.env`-like setting, whose value runs to the line's end, spaces
///   included.
/// * A lower-case name starting its line ([`ColonValue::SettingUnlessSentence`]:
///   `password: correct horse battery staple`): YAML keys are written so, a heading or a
///   function's name in prose is not (`Password: must be 8+ characters`,
///   `getToken: request failed` stay prose). Where a word follows the first, a setting to
///   the line's end, unless a sentence ends on the line (`. `, or a final `.`): then prose.
///
/// The value runs to whitespace or a tag (see [`starts_tag`]: the markup of a page around
/// it): a secret may hold `,`, `;`, `&`, quotes or a `<` that starts no tag. Closing
/// punctuation at its very end (`,;)]}"'`) is left out, so that `{password: hunter2}` and
/// `password: hunter2, next` keep their structure; a secret ending in such a character
/// leaves that character shown.
///
/// Looks only at the first word and what starts the next, or at the line of a name starting
/// it: when the value is prose, what was looked at is one word, and each name inside it (no
/// space there) is a field whose value is consumed, or a line looked at once (one name
/// starts it) — the whole scrub stays linear.
fn colon_value_len(value: &str, read: ColonValue) -> Option<usize> {
    let word = value
        .char_indices()
        .find(|&(at, c)| c.is_whitespace() || starts_tag(value, at))
        .map_or(value.len(), |(at, _)| at);
    let after = value.get(word..).unwrap_or_default();
    let next = after.trim_start_matches([' ', '\t']);
    count_work(word.saturating_add(after.len().saturating_sub(next.len())));
    let first = value.get(..word).unwrap_or_default();
    // A word holding what may start a tag (`hunter2<span class="e">`: a tag with attributes
    // does not end the word) is a value followed by markup, never prose.
    let markup = first
        .as_bytes()
        .windows(2)
        .any(|w| matches!(w, [b'<', c] if c.is_ascii_alphabetic() || matches!(c, b'/' | b'!')));
    let prose = read != ColonValue::Field
        && next.starts_with(char::is_alphabetic)
        && !markup
        && !first.ends_with([',', ';']);
    let end = match read {
        ColonValue::Setting => line_len(value, false)?,
        ColonValue::SettingUnlessSentence if prose => line_len(value, true)?,
        _ if prose => return None,
        _ => word,
    };
    let shown = value.get(..end).unwrap_or_default();
    Some(
        shown
            .trim_end_matches([',', ';', ')', ']', '}', '"', '\''])
            .len(),
    )
}

/// The length of `value` up to its line's end or a tag (see [`starts_tag`]), trailing blanks
/// left out; `None` when `unless_sentence` and a sentence ends on the line (`. `, or a final
/// `.`). Looks at each byte up to where it stops once.
fn line_len(value: &str, unless_sentence: bool) -> Option<usize> {
    let bytes = value.as_bytes();
    let mut at = 0usize;
    while let Some(&b) = bytes.get(at) {
        if matches!(b, b'\r' | b'\n') || starts_tag(value, at) {
            break;
        }
        if unless_sentence
            && b == b'.'
            && matches!(bytes.get(at.saturating_add(1)), Some(b' ' | b'\t'))
        {
            count_work(at.saturating_add(2));
            return None;
        }
        at = at.saturating_add(1);
    }
    count_work(at);
    let line = value.get(..at).unwrap_or_default().trim_end();
    (!(unless_sentence && line.ends_with('.'))).then_some(line.len())
}

/// Whether a tag starts at `at` in `value`: `</` and a letter, or `<`, a letter, at most 15
/// letters or digits, and `>` or `/` (`<br>`, `<br/>`). Anything else (`ab<cd`, `a<3`) is
/// part of a value. Looks at a bounded number of bytes.
fn starts_tag(value: &str, at: usize) -> bool {
    let bytes = value.as_bytes();
    if bytes.get(at) != Some(&b'<') {
        return false;
    }
    let after = bytes.get(at.saturating_add(1)..).unwrap_or_default();
    let closing = after.first() == Some(&b'/');
    let name = after.get(usize::from(closing)..).unwrap_or_default();
    let len = name
        .iter()
        .take(16)
        .take_while(|b| b.is_ascii_alphanumeric())
        .count();
    count_work(len.saturating_add(2));
    name.first().is_some_and(u8::is_ascii_alphabetic)
        && (closing || matches!(name.get(len), Some(b'>' | b'/')))
}

/// Whether `name` is snake_case: a `_` between two letters or digits (`client_secret`,
/// `CLIENT_SECRET`), as YAML and `.env` settings are written.
fn is_snake_case(name: &str) -> bool {
    name.as_bytes().windows(3).any(
        |w| matches!(w, [a, b'_', c] if a.is_ascii_alphanumeric() && c.is_ascii_alphanumeric()),
    )
}

/// Whether `name` has letters and none of them upper-case (`password`, `client-secret`), as
/// YAML keys are written.
fn is_lower_case(name: &str) -> bool {
    name.bytes().any(|b| b.is_ascii_alphabetic()) && !name.bytes().any(|b| b.is_ascii_uppercase())
}

/// Counts bytes the field scrubbing looked at, for the tests' bound on its work.
#[cfg(test)]
fn count_work(bytes: usize) {
    FIELD_WORK.with(|work| work.set(work.get().saturating_add(bytes)));
}
#[cfg(not(test))]
fn count_work(_bytes: usize) {}

#[cfg(test)]
thread_local! {
    static FIELD_WORK: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// [`scrub_fields`] and the bytes it looked at after names.
#[cfg(test)]
fn scrub_fields_counted(text: &str) -> (String, usize) {
    FIELD_WORK.with(|work| work.set(0));
    let out = scrub_fields(text);
    (out, FIELD_WORK.with(std::cell::Cell::get))
}

/// `value` without a Python string prefix (`b'…'`, `u'…'`, `r'…'`, `rb'…'`, `f'…'`) before its
/// quote; `value` itself when it has none.
fn without_string_prefix(value: &str) -> &str {
    let letters = value
        .bytes()
        .take(3)
        .take_while(|b| matches!(b.to_ascii_lowercase(), b'b' | b'u' | b'r' | b'f'))
        .count();
    match value.get(letters..) {
        Some(rest) if (1..=2).contains(&letters) && rest.starts_with(['"', '\'']) => rest,
        _ => value,
    }
}

/// Where in `value` the quote `open` that opened it closes, else its length.
fn closing(value: &str, open: Quote) -> usize {
    let wanted = match open {
        Quote::Plain { quote, backslashes } => return closing_quote(value, quote, backslashes),
        Quote::Encoded(quote) => quote,
    };
    let bytes = value.as_bytes();
    let mut previous = None;
    for (at, &byte) in bytes.iter().enumerate() {
        // A run of backslashes is read from its start only: each byte is looked at a bounded
        // number of times.
        let starts = matches!(byte, b'&' | b'%') || (byte == b'\\' && previous != Some(b'\\'));
        previous = Some(byte);
        if !starts {
            continue;
        }
        let found = value.get(at..).and_then(quote_at);
        if let Some((Quote::Encoded(quote), _)) = found {
            if quote == wanted {
                return at;
            }
        }
    }
    value.len()
}

/// The length of the object or array `value` starts with, up to its matching close however
/// far (each byte is looked at a bounded number of times, and all of them are masked), else
/// all of `value`, as an unclosed quoted value is: all of it is masked, whatever it holds
/// (`"clientSecret": {"value": "…"}`). Brackets inside strings do not count, a string being
/// quoted as names and values are (`"`, `\"` in JSON inside a JSON string, `&quot;`, …: see
/// [`quote_at`]) and closed by its opening quote's form.
fn structure_len(value: &str) -> usize {
    let bytes = value.as_bytes();
    let mut depth = 0usize;
    let mut at = 0usize;
    let mut previous = None;
    while let Some(&byte) = bytes.get(at) {
        // A run of backslashes is read from its start only, as in `closing`.
        let starts = matches!(byte, b'"' | b'\'' | b'&' | b'%')
            || (byte == b'\\' && previous != Some(b'\\'));
        if let Some((quote, len)) = value.get(at..).filter(|_| starts).and_then(quote_at) {
            let inner = value.get(at.saturating_add(len)..).unwrap_or_default();
            let close = closing(inner, quote);
            let close_len = inner
                .get(close..)
                .and_then(quote_at)
                .map_or(0, |(_, len)| len);
            at = at
                .saturating_add(len)
                .saturating_add(close)
                .saturating_add(close_len);
            previous = None;
            continue;
        }
        match byte {
            b'{' | b'[' => depth = depth.saturating_add(1),
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return at.saturating_add(1);
                }
            }
            _ => {}
        }
        previous = Some(byte);
        at = at.saturating_add(1);
    }
    value.len()
}

/// Where in `value` the quote that opened it (`quote` after `backslashes` backslashes: `"`,
/// or `\"` in JSON inside a JSON string) closes, else its length. A quote escaped once more
/// is part of the value: JSON escaping doubles each backslash and adds one, so the closing
/// quote is the first whose run of backslashes is `backslashes` long modulo
/// `2 × (backslashes + 1)` (an even run for a plain `"`).
fn closing_quote(value: &str, quote: u8, backslashes: usize) -> usize {
    let period = backslashes.saturating_add(1).saturating_mul(2);
    let mut run = 0usize;
    for (at, &byte) in value.as_bytes().iter().enumerate() {
        if byte == quote && run.checked_rem(period) == Some(backslashes) {
            return at.saturating_sub(backslashes);
        }
        run = if byte == b'\\' {
            run.saturating_add(1)
        } else {
            0
        };
    }
    value.len()
}

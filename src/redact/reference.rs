//! The search as it was before it was made linear: each start read by following every
//! reading, character by character, at a cost of the text times the secret (times the
//! readings kept). The property tests hold [`mask_encoded`] and [`scrub`] to it.

use super::readings::{hex_pair, hex_u16};
use super::{MASK, MIN_PREFIX_CHARS};

/// [`super::scrub`] with this module's search.
pub(crate) fn scrub(text: &str, secrets: &[&str]) -> String {
    super::scrub_with(text, secrets, mask_encoded)
}

/// Replaces every occurrence of `secret`, in any mix of the encodings of the module docs.
///
/// Every position is tried, also inside a match, and the union of all matches is masked: a
/// match taken longest (a trailing `\` read as the escape `\\`) may swallow the first bytes
/// of a copy right behind it, which must still be found.
pub(crate) fn mask_encoded(text: &str, secret: &str) -> String {
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

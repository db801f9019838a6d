//! The readings of a position of the text: the character there, raw or escaped.

/// A character read at a position of the text, and the bytes its encoding there takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Read {
    pub(super) c: char,
    pub(super) len: usize,
}

/// The character at `pos` as it is (`pos` a character boundary).
pub(super) fn raw_read(text: &str, pos: usize) -> Option<Read> {
    let c = text.get(pos..)?.chars().next()?;
    Some(Read {
        c,
        len: c.len_utf8(),
    })
}

/// The readings at `pos`: the character as it is, and an escape starting there.
pub(super) fn readings(text: &str, pos: usize) -> (Option<Read>, Option<Read>) {
    match text.as_bytes().get(pos) {
        // Most bytes: ASCII that starts no escape.
        Some(&b) if b.is_ascii() && !matches!(b, b'+' | b'%' | b'\\' | b'&') => (
            Some(Read {
                c: char::from(b),
                len: 1,
            }),
            None,
        ),
        _ => (
            raw_read(text, pos),
            text.as_bytes().get(pos..).and_then(escape_read),
        ),
    }
}

/// The character an escape at the start of `rest` stands for: `+` (a space), `%HH` (as many
/// as the character's UTF-8 takes, hex digits of either case), a JSON escape, an HTML entity.
/// At most one: each kind starts with its own byte, and reads one way.
fn escape_read(rest: &[u8]) -> Option<Read> {
    match rest.first()? {
        b'+' => Some(Read { c: ' ', len: 1 }),
        b'%' => percent_read(rest),
        b'\\' => json_escape_read(rest),
        b'&' => html_escape_read(rest),
        _ => None,
    }
}

fn percent_read(rest: &[u8]) -> Option<Read> {
    let byte = |chunk: &[u8]| match chunk {
        [b'%', hi, lo] => hex_pair(*hi, *lo),
        _ => None,
    };
    let mut escapes = rest.chunks(3);
    let lead = byte(escapes.next()?)?;
    let len = match lead {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf7 => 4,
        _ => return None,
    };
    let mut utf8 = [lead, 0, 0, 0];
    for slot in utf8.iter_mut().take(len).skip(1) {
        *slot = byte(escapes.next()?)?;
    }
    // Valid UTF-8 of the length its lead byte announces is exactly one character.
    let c = std::str::from_utf8(utf8.get(..len)?).ok()?.chars().next()?;
    Some(Read {
        c,
        len: len.checked_mul(3)?,
    })
}

fn json_escape_read(rest: &[u8]) -> Option<Read> {
    let c = match rest.get(1)? {
        b'"' => '"',
        b'\\' => '\\',
        b'/' => '/',
        b'n' => '\n',
        b'r' => '\r',
        b't' => '\t',
        b'b' => '\u{8}',
        b'f' => '\u{c}',
        b'u' => return json_unicode_read(rest),
        _ => return None,
    };
    Some(Read { c, len: 2 })
}

/// `\uXXXX`, or a surrogate pair `\uD83D\uDE00`.
fn json_unicode_read(rest: &[u8]) -> Option<Read> {
    let unit = |chunk: &[u8]| match chunk {
        [b'\\', b'u', hex @ ..] if hex.len() == 4 => hex_u16(hex),
        _ => None,
    };
    let mut escapes = rest.chunks(6);
    let first = unit(escapes.next()?)?;
    if !(0xd800..=0xdbff).contains(&first) {
        // A lone low surrogate is no character.
        let c = char::from_u32(first.into())?;
        return Some(Read { c, len: 6 });
    }
    let second = unit(escapes.next()?)?;
    let c = char::decode_utf16([first, second]).next()?.ok()?;
    Some(Read { c, len: 12 })
}

fn html_escape_read(rest: &[u8]) -> Option<Read> {
    const NAMED: [(&[u8], char); 5] = [
        (b"&amp;", '&'),
        (b"&lt;", '<'),
        (b"&gt;", '>'),
        (b"&quot;", '"'),
        (b"&apos;", '\''),
    ];
    if let Some(&(entity, c)) = NAMED.iter().find(|(e, _)| rest.starts_with(e)) {
        return Some(Read {
            c,
            len: entity.len(),
        });
    }
    // Numeric: &#DDD; or &#xHH;
    let body = rest.strip_prefix(b"&#")?;
    let semi = body.iter().take(10).position(|&b| b == b';')?;
    let digits = std::str::from_utf8(body.get(..semi)?).ok()?;
    let value = match digits.strip_prefix(['x', 'X']) {
        Some(hex) => u32::from_str_radix(hex, 16).ok()?,
        None => digits.parse::<u32>().ok()?,
    };
    Some(Read {
        c: char::from_u32(value)?,
        // `&#`, the digits, `;`.
        len: semi.checked_add(3)?,
    })
}

fn hex_digit(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

pub(super) fn hex_pair(hi: u8, lo: u8) -> Option<u8> {
    Some(hex_digit(hi)? << 4 | hex_digit(lo)?)
}

pub(super) fn hex_u16(digits: &[u8]) -> Option<u16> {
    digits
        .iter()
        .try_fold(0u16, |acc, &d| Some(acc << 4 | u16::from(hex_digit(d)?)))
}

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
//!
//! The search for a secret takes time linear in the text and the secret, whatever either
//! holds (a text or secret chosen by the provider included): see [`mask_encoded`].

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
/// What is masked: from every start (a character boundary), the longest prefix of the secret
/// that some reading of the text spells there, when it is long enough (see the module docs),
/// up to the furthest position a reading of that prefix ends at. The union of these spans is
/// masked, each run of it one `***`. Every start counts, also one inside another match: a
/// match taken longest (a trailing `\` read as the escape `\\`) may swallow the first bytes of
/// a copy right behind it, which must still be found.
///
/// The work is linear in the text and the secret ([`forest_spans`]); a text where a position
/// has two readings the secret could use is searched start by start ([`frontier_spans`])
/// within a budget no honest text comes near, past which the rest of the text is masked whole:
/// masking too much is safe, taking minutes on a worker is not.
fn mask_encoded(text: &str, secret: &str) -> String {
    mask_encoded_counted(text, secret).0
}

/// [`mask_encoded`], and the work it took (steps of a reading, entries of a table).
fn mask_encoded_counted(text: &str, secret: &str) -> (String, usize) {
    let pattern: Vec<char> = secret.chars().collect();
    let min_prefix = MIN_PREFIX_CHARS
        .max(pattern.len().div_ceil(2))
        .min(pattern.len());
    let mut masker = Masker::new(text);
    // Every character takes at least a byte: a text shorter than the shortest match has none.
    let work = if min_prefix == 0 || min_prefix > text.len() {
        0
    } else {
        match forest_spans(text, &pattern, min_prefix, &mut masker) {
            Ok(work) => work,
            Err(TwoReadings) => {
                masker = Masker::new(text);
                frontier_spans(text, &pattern, min_prefix, &mut masker)
            }
        }
    };
    (masker.finish(), work)
}

/// Steps [`forest_spans`] may take a byte of the text and the secret: it needs fewer than
/// half as many (a step a start, at most 11 to rejoin the chain, two table entries a
/// character for each of at most 12 tables); more would be a flaw of this module's.
const FOREST_STEPS: usize = 32;
/// Steps [`frontier_spans`] may take a byte of the text and the secret: a glance at most
/// starts and a few steps a copy of the secret. A text that needs more (`\\\\…` for a
/// secret of backslashes: every start keeps a growing set of positions) is an attack.
const FRONTIER_STEPS: usize = 2;

/// The work allowed for one secret in one text: `factor` steps a byte of either, and some.
fn budget(text: &str, pattern: &[char], factor: usize) -> usize {
    text.len()
        .saturating_add(pattern.len())
        .saturating_mul(factor)
        .saturating_add(1 << 16)
}

/// Builds the masked text from spans given in the order of their starts.
struct Masker<'t> {
    text: &'t str,
    out: String,
    /// How much of `text` is in `out` (or masked).
    copied: usize,
    /// The masked run being built, if one is open: where it starts and ends.
    run: Option<(usize, usize)>,
}

impl<'t> Masker<'t> {
    fn new(text: &'t str) -> Self {
        Masker {
            text,
            out: String::new(),
            copied: 0,
            run: None,
        }
    }

    /// Masks `text[start..end]`; `start` is at least that of every span added before.
    /// Overlapping and touching spans make one run.
    fn add(&mut self, start: usize, end: usize) {
        if self.run.is_some_and(|(_, open)| start > open) {
            self.flush();
        }
        self.run = Some(match self.run {
            Some((first, open)) => (first, open.max(end)),
            None => (start, end),
        });
    }

    fn flush(&mut self) {
        if let Some((start, end)) = self.run.take() {
            if self.out.capacity() == 0 {
                self.out.reserve(self.text.len());
            }
            self.out
                .push_str(self.text.get(self.copied..start).unwrap_or_default());
            self.out.push_str(MASK);
            self.copied = end;
        }
    }

    fn finish(mut self) -> String {
        self.flush();
        if self.copied == 0 {
            return self.text.to_owned();
        }
        self.out
            .push_str(self.text.get(self.copied..).unwrap_or_default());
        self.out
    }
}

/// A character read at a position of the text, and the bytes its encoding there takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Read {
    c: char,
    len: usize,
}

/// The character at `pos` as it is (`pos` a character boundary).
fn raw_read(text: &str, pos: usize) -> Option<Read> {
    let c = text.get(pos..)?.chars().next()?;
    Some(Read {
        c,
        len: c.len_utf8(),
    })
}

/// The readings at `pos`: the character as it is, and an escape starting there.
fn readings(text: &str, pos: usize) -> (Option<Read>, Option<Read>) {
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

fn index(value: u32) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}

/// A position where both readings could take part in a match: the raw character and the
/// escape starting there are both in the secret (only where the secret holds `%`, `\`, `&`
/// or `+`: `%25`, `\\`, `&amp;`, or an escape of another of its characters).
struct TwoReadings;

/// The text as the secret can read it where every position has at most one reading whose
/// character is in the secret: each position leads to one next position, the positions form
/// a forest whose edges go forward, and a match from a start is the path up from it.
struct Forest<'t> {
    text: &'t str,
    /// The secret's characters, sorted.
    alphabet: Vec<char>,
}

impl Forest<'_> {
    /// The one reading at `pos` that can take part in a match, if any.
    fn read(&self, pos: usize) -> Result<Option<Read>, TwoReadings> {
        let in_secret = |c: char| self.alphabet.binary_search(&c).is_ok();
        match readings(self.text, pos) {
            (raw, Some(escape)) if in_secret(escape.c) => match raw {
                Some(raw) if in_secret(raw.c) => Err(TwoReadings),
                _ => Ok(Some(escape)),
            },
            (raw, _) => Ok(raw),
        }
    }

    /// Where the reading at `pos` goes if it gives `c`.
    fn step(&self, pos: usize, c: char) -> Result<Option<usize>, TwoReadings> {
        Ok(self
            .read(pos)?
            .filter(|read| read.c == c)
            .map(|read| pos.saturating_add(read.len)))
    }
}

/// The match reaching furthest so far, as far as its path is kept: the positions
/// `nodes[base..]`, where, at the first, `first_index` characters of the secret have been
/// read; `matched` in all at the last, its end.
struct Chain {
    nodes: Vec<usize>,
    base: usize,
    first_index: usize,
    matched: usize,
}

impl Chain {
    fn end(&self) -> usize {
        self.nodes.last().copied().unwrap_or(0)
    }
}

/// How far from `start` the next byte is that `can_start` says can start a match.
fn next_start(bytes: &[u8], start: usize, can_start: &[bool; 256]) -> Option<usize> {
    bytes
        .get(start..)?
        .iter()
        .position(|&b| can_start.get(usize::from(b)).copied().unwrap_or(false))
}

/// Which first bytes can start a reading of `c`: its own, and those escapes start with.
fn first_bytes(c: char) -> [bool; 256] {
    let mut can = [false; 256];
    let mut utf8 = [0u8; 4];
    let own = c.encode_utf8(&mut utf8).as_bytes().first().copied();
    let plus = (c == ' ').then_some(b'+');
    for b in [own, plus, Some(b'%'), Some(b'\\'), Some(b'&')]
        .into_iter()
        .flatten()
    {
        if let Some(slot) = can.get_mut(usize::from(b)) {
            *slot = true;
        }
    }
    can
}

/// The spans of the matches of `pattern` in a [`Forest`], in linear time: the Z algorithm,
/// on the forest's paths. A start whose byte starts no reading of the secret's first
/// character costs a glance.
///
/// Starts are taken in order. A start beyond the furthest match so far is read on, char by
/// char, and its match becomes the chain. A start within the chain is either on it, at
/// index `j`, or inside one of its escapes, whence its reading rejoins the chain after `t`
/// characters (at most 11: an escape's inner bytes are hex digits, `#`, `x`, `u`, a letter,
/// `;`, `+`, or a `%` or `\` that starts no escape of a character: a continuation byte, a
/// low surrogate) at some index `j`; `t` = 0 on it. From there it reads what the chain does,
/// `pattern[j..matched]`, where it needs `pattern[t..]`: the common prefix of these two
/// (a table per `t`, built once in linear time) says how far it matches, unless it reaches
/// the chain's end, where reading goes on from there and extends the chain. Every step read
/// past the chain's end moves it on: linear in all.
///
/// A position with two readings makes the forest none: [`frontier_spans`] searches then.
fn forest_spans(
    text: &str,
    pattern: &[char],
    min_prefix: usize,
    masker: &mut Masker<'_>,
) -> Result<usize, TwoReadings> {
    let Some(&first) = pattern.first() else {
        return Ok(0);
    };
    let mut alphabet = pattern.to_vec();
    alphabet.sort_unstable();
    alphabet.dedup();
    let forest = Forest { text, alphabet };
    let can_start = first_bytes(first);
    let bytes = text.as_bytes();
    let len = text.len();
    let budget = budget(text, pattern, FOREST_STEPS);
    let mut chain = Chain {
        nodes: Vec::new(),
        base: 0,
        first_index: 0,
        matched: 0,
    };
    // The first of the chain's nodes at or after the start.
    let mut cursor = 0usize;
    let mut common = CommonPrefixes::new(pattern);
    let mut work = 0usize;
    let mut starts = 0..len;
    while let Some(mut start) = starts.next() {
        if work > budget {
            masker.add(start, len);
            return Ok(work);
        }
        let (matched, end) = if start >= chain.end() {
            let Some(skip) = next_start(bytes, start, &can_start) else {
                break;
            };
            if skip > 0 {
                start = start.saturating_add(skip);
                starts = start.saturating_add(1)..len;
            }
            if forest.step(start, first)?.is_none() {
                continue;
            }
            chain.nodes.clear();
            chain.nodes.push(start);
            (chain.base, chain.first_index, cursor) = (0, 0, 0);
            let (matched, end) = read_on(&forest, pattern, start, 0, &mut chain.nodes, &mut work)?;
            chain.matched = matched;
            (matched, end)
        } else {
            cursor = cursor.max(chain.base);
            while chain.nodes.get(cursor).is_some_and(|&node| node < start) {
                cursor = cursor.saturating_add(1);
            }
            // Read up to the chain.
            let mut pos = start;
            let mut read = 0usize;
            let mut node = cursor;
            let joined = loop {
                while chain.nodes.get(node).is_some_and(|&n| n < pos) {
                    node = node.saturating_add(1);
                }
                if chain.nodes.get(node) == Some(&pos) {
                    break true;
                }
                let Some(&c) = pattern.get(read) else {
                    break false;
                };
                let Some(to) = forest.step(pos, c)? else {
                    break false;
                };
                pos = to;
                read = read.saturating_add(1);
                work = work.saturating_add(1);
            };
            if !joined {
                if read >= min_prefix && text.is_char_boundary(pos) {
                    masker.add(start, pos);
                }
                continue;
            }
            let at = chain
                .first_index
                .saturating_add(node.saturating_sub(chain.base));
            let chain_rest = chain.matched.saturating_sub(at);
            let same = common.get(read, at, &mut work);
            if same < chain_rest {
                let end = chain
                    .nodes
                    .get(node.saturating_add(same))
                    .copied()
                    .unwrap_or(pos);
                (read.saturating_add(same), end)
            } else {
                let chain_end = chain.end();
                let (matched, end) = read_on(
                    &forest,
                    pattern,
                    chain_end,
                    read.saturating_add(chain_rest),
                    &mut chain.nodes,
                    &mut work,
                )?;
                if end != chain_end {
                    // This match reaches furthest now: it is the chain.
                    (chain.base, chain.first_index, chain.matched) = (node, read, matched);
                    if chain.base > 4096 && chain.base > chain.nodes.len() / 2 {
                        chain.nodes.drain(..chain.base);
                        cursor = cursor.saturating_sub(chain.base);
                        chain.base = 0;
                    }
                }
                (matched, end)
            }
        };
        if matched >= min_prefix && text.is_char_boundary(end) {
            masker.add(start, end);
        }
    }
    Ok(work)
}

/// Reads on from `pos`, where `pattern[..read]` has been read, while the text spells the
/// pattern, adding each position reached to `nodes`. How much is read then, and where.
fn read_on(
    forest: &Forest<'_>,
    pattern: &[char],
    mut pos: usize,
    mut read: usize,
    nodes: &mut Vec<usize>,
    work: &mut usize,
) -> Result<(usize, usize), TwoReadings> {
    while let Some(&c) = pattern.get(read) {
        let Some(to) = forest.step(pos, c)? else {
            break;
        };
        pos = to;
        read = read.saturating_add(1);
        *work = work.saturating_add(1);
        nodes.push(pos);
    }
    Ok((read, pos))
}

/// The longest common prefix of `pattern[t..]` and `pattern[j..]`, from a table per `t`
/// built when first asked for.
struct CommonPrefixes<'p> {
    pattern: &'p [char],
    tables: Vec<Option<Vec<u32>>>,
}

impl<'p> CommonPrefixes<'p> {
    fn new(pattern: &'p [char]) -> Self {
        CommonPrefixes {
            pattern,
            tables: Vec::new(),
        }
    }

    fn get(&mut self, t: usize, j: usize, work: &mut usize) -> usize {
        if let Some(Some(table)) = self.tables.get(t) {
            return table.get(j).map_or(0, |&same| index(same));
        }
        if self.tables.len() <= t {
            self.tables.resize_with(t.saturating_add(1), || None);
        }
        let Some(slot) = self.tables.get_mut(t) else {
            return 0;
        };
        let pattern = self.pattern;
        let table = slot.get_or_insert_with(|| {
            *work = work.saturating_add(pattern.len().saturating_mul(2));
            let suffix = pattern.get(t..).unwrap_or_default();
            z_against(suffix, &z_function(suffix), pattern)
        });
        table.get(j).copied().map_or(0, index)
    }
}

/// `z[i]`: the longest common prefix of `s` and `s[i..]` (`z[0]` = `s.len()`).
fn z_function(s: &[char]) -> Vec<u32> {
    let len = s.len();
    let mut z = vec![0u32; len];
    if let Some(first) = z.first_mut() {
        *first = u32::try_from(len).unwrap_or(u32::MAX);
    }
    // The match reaching furthest: `s[left..right]` = `s[..right - left]`.
    let (mut left, mut right) = (0usize, 0usize);
    for i in 1..len {
        let mut k = if i < right {
            let known = z.get(i.saturating_sub(left)).copied().map_or(0, index);
            known.min(right.saturating_sub(i))
        } else {
            0
        };
        while s
            .get(k)
            .is_some_and(|c| s.get(i.saturating_add(k)) == Some(c))
        {
            k = k.saturating_add(1);
        }
        if let Some(slot) = z.get_mut(i) {
            *slot = u32::try_from(k).unwrap_or(u32::MAX);
        }
        if i.saturating_add(k) > right {
            (left, right) = (i, i.saturating_add(k));
        }
    }
    z
}

/// `out[j]`: the longest common prefix of `p` and `text[j..]`, for `j` in `0..=text.len()`,
/// given `pz` = [`z_function`]`(p)`.
fn z_against(p: &[char], pz: &[u32], text: &[char]) -> Vec<u32> {
    let len = text.len();
    let mut out = vec![0u32; len.saturating_add(1)];
    // The match reaching furthest: `text[left..right]` = `p[..right - left]`.
    let (mut left, mut right) = (0usize, 0usize);
    for (j, slot) in out.iter_mut().enumerate() {
        let mut k = if j < right {
            let known = pz.get(j.saturating_sub(left)).copied().map_or(0, index);
            known.min(right.saturating_sub(j))
        } else {
            0
        };
        while p
            .get(k)
            .is_some_and(|c| text.get(j.saturating_add(k)) == Some(c))
        {
            k = k.saturating_add(1);
        }
        *slot = u32::try_from(k).unwrap_or(u32::MAX);
        if j.saturating_add(k) > right {
            (left, right) = (j, j.saturating_add(k));
        }
    }
    out
}

/// The spans of the matches of `pattern`, start by start, following every reading (the
/// search of [`mask_encoded`] for texts that are no [`Forest`]). Some characters have
/// readings that start alike (`\\` raw or as `\\\\`, `%` raw or as `%25`, `&` raw or as
/// `&amp;`), so every position a prefix can end at is kept, not only the first found.
///
/// A start costs a step a position kept a character; past the budget ([`FRONTIER_STEPS`] a
/// byte, far more than honest text takes) the rest of the text is masked.
fn frontier_spans(
    text: &str,
    pattern: &[char],
    min_prefix: usize,
    masker: &mut Masker<'_>,
) -> usize {
    let budget = budget(text, pattern, FRONTIER_STEPS);
    let can_start = pattern.first().map_or([false; 256], |&c| first_bytes(c));
    let bytes = text.as_bytes();
    let mut positions = Vec::new();
    let mut next = Vec::new();
    let mut work = 0usize;
    let mut starts = 0..bytes.len();
    while let Some(start) = starts.next() {
        let Some(skip) = next_start(bytes, start, &can_start) else {
            break;
        };
        let start = start.saturating_add(skip);
        starts = start.saturating_add(1)..bytes.len();
        // A match starts and ends on character boundaries: it consumes whole encodings of
        // whole characters, each ASCII or the character itself.
        if !text.is_char_boundary(start) {
            continue;
        }
        positions.clear();
        positions.push(start);
        let mut matched = None;
        for (count, &c) in (1usize..).zip(pattern) {
            work = work.saturating_add(positions.len());
            if work > budget {
                masker.add(start, text.len());
                return work;
            }
            next.clear();
            for &pos in &positions {
                let (raw, escape) = readings(text, pos);
                for read in [raw, escape].into_iter().flatten() {
                    if read.c == c {
                        next.push(pos.saturating_add(read.len));
                    }
                }
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
        if let Some(end) = matched.filter(|&e| text.is_char_boundary(e)) {
            masker.add(start, end);
        }
    }
    work
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

/// The search as it was before it was made linear: each start read by following every
/// reading, character by character, at a cost of the text times the secret (times the
/// readings kept). The property tests hold [`mask_encoded`] and [`scrub`] to it.
#[cfg(test)]
pub(crate) mod reference {
    use super::{
        MASK, MIN_PREFIX_CHARS, MIN_SECRET_LEN, hex_pair, hex_u16, json_read, scrub_jwts,
        scrub_token_fields,
    };

    /// [`super::scrub`] with this module's search.
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

    /// Texts and secrets that repeat themselves, where every start matches and reads on far;
    /// and what they become.
    fn repetitive_cases(len: usize, secret_len: usize) -> Vec<(String, String, String)> {
        let a = "a".repeat(secret_len);
        let case =
            |text: String, secret: &str, masked: &str| (text, secret.to_owned(), masked.to_owned());
        vec![
            case("a".repeat(len), &a, "***"),
            case(format!("{}|tail a", "a".repeat(len)), &a, "***|tail a"),
            case(
                format!("b{}b", "a".repeat(len)),
                &format!("b{a}"),
                &format!("***{}b", "a".repeat(len - secret_len)),
            ),
            case("%61".repeat(len / 3), &a, "***"),
            // Every `1` inside an escape starts a match that reads on through the escapes
            // after it: starts off the chain, joining it.
            case(
                format!("1{}", "%61".repeat(len / 3)),
                &format!("1{a}"),
                "***",
            ),
            case(
                format!("1{}x", "%61".repeat(len / 3)),
                &format!("1{a}"),
                "***x",
            ),
            case("ab".repeat(len / 2), &"ab".repeat(secret_len / 2), "***"),
            case("a\\u0061".repeat(len / 7), &a, "***"),
            case(
                format!("{}é", "aé".repeat(len / 3)),
                &"aé".repeat(secret_len / 3),
                "***é",
            ),
        ]
    }

    #[test]
    fn the_case_found_in_review_takes_linear_work() {
        // The search read the secret on from every byte: 10^11 steps, hours. Now a step a
        // byte of the text and two a character of the secret.
        let (text, secret) = ("a".repeat(1 << 20), "a".repeat(100_000));
        let (out, work) = mask_encoded_counted(&text, &secret);
        assert_eq!(out, "***");
        assert!(work <= text.len() + 2 * secret.len(), "{work}");
    }

    #[test]
    fn repetitive_texts_take_linear_work() {
        for (text, secret, masked) in repetitive_cases(1 << 16, 10_000) {
            let (out, work) = mask_encoded_counted(&text, &secret);
            let bound = 3 * (text.len() + secret.len());
            let name: String = secret.chars().take(8).collect();
            assert!(work <= bound, "{work} > {bound} for {name}");
            assert!(out == masked, "{name}: {}", out.len());
        }
        // As exactly as the reference, where that finishes.
        for (text, secret, masked) in repetitive_cases(600, 60) {
            assert_eq!(mask_encoded(&text, &secret), masked, "{secret}");
            assert_eq!(reference::mask_encoded(&text, &secret), masked, "{secret}");
        }
    }

    #[test]
    fn a_text_with_two_readings_is_searched_within_a_budget() {
        // `\\` is two backslashes raw or one escaped: every start keeps a growing set of
        // positions. Searched start by start, the work is cut off at the budget and the rest
        // of the text masked (fail closed): here the whole text, as it should be.
        let (text, secret) = ("\\".repeat(1 << 14), "\\".repeat(2000));
        let (out, work) = mask_encoded_counted(&text, &secret);
        assert_eq!(out, "***");
        assert!(
            work <= budget_of(&text, &secret) + 2 * secret.len(),
            "{work}"
        );
        // Cut off, the rest of the text is masked whole, more than the reference does.
        let text = format!("{text} and the rest");
        assert_eq!(mask_encoded(&text, &secret), "***");
        // Where it finishes, the same as the reference.
        for (text, secret) in [
            ("\\".repeat(100), "\\".repeat(20)),
            (format!("x{}y\\", "\\".repeat(100)), "\\".repeat(20)),
            (format!("x{}y", "%25".repeat(200)), "%".repeat(30)),
            (format!("{}z", "&amp;&".repeat(100)), "&".repeat(25)),
            (format!("{}z", "%2B+".repeat(100)), "+ ".repeat(10)),
        ] {
            let (out, work) = mask_encoded_counted(&text, &secret);
            assert!(work < budget_of(&text, &secret), "{secret}");
            assert_eq!(out, reference::mask_encoded(&text, &secret), "{secret}");
        }
    }

    fn budget_of(text: &str, secret: &str) -> usize {
        budget(text, &secret.chars().collect::<Vec<_>>(), FRONTIER_STEPS)
    }

    #[test]
    fn starts_inside_escapes_match_as_the_reference_finds() {
        // Starts inside an escape, reading its inner bytes, then the escapes after it; found
        // by breaking the search on purpose and letting the property tests find what broke.
        for (text, secret) in [
            ("&#59;&#97;&#97;&#97;aaa", ";aaa"),
            ("%32b2%622b%32b22b", "2b2b2b2b2b2b"),
            ("%35%75%35%75%35%75%35%75%35%75%35%75u", "5u5u5u5u5u5u"),
            ("\\u0031a\\u0031a1a1a1a1a", "1a1a1a1a1a"),
            ("%611%611%611%611%611", "1a1a1a1a1a1a"),
            ("aaabaaab", "aaab"),
            ("///é1", "//é1"),
        ] {
            assert_eq!(
                mask_encoded(text, secret),
                reference::mask_encoded(text, secret),
                "{text} {secret}"
            );
        }
    }

    #[test]
    fn both_searches_find_the_same() {
        // The same secrets and texts through the forest and start by start.
        let cases = repetitive_cases(120, 20)
            .into_iter()
            .map(|(t, s, _)| (t, s));
        for (text, secret) in cases.chain([
            ("Lk8Q~a%20b x Lk8Q~a+b".to_owned(), "Lk8Q~a b".to_owned()),
            ("\\u00e9t\\u00E9s&#233;&#xe9;".to_owned(), "étés".to_owned()),
            (
                "%F0%9F%98%80%C3%A9😀é\\ud83d\\ude00".to_owned(),
                "😀é😀é".to_owned(),
            ),
        ]) {
            let pattern: Vec<char> = secret.chars().collect();
            let min_prefix = MIN_PREFIX_CHARS
                .max(pattern.len().div_ceil(2))
                .min(pattern.len());
            let mut by_forest = Masker::new(&text);
            let forest = forest_spans(&text, &pattern, min_prefix, &mut by_forest);
            assert!(forest.is_ok(), "one reading a position");
            let mut by_start = Masker::new(&text);
            frontier_spans(&text, &pattern, min_prefix, &mut by_start);
            assert_eq!(by_forest.finish(), by_start.finish(), "{secret}");
        }
    }

    #[test]
    #[ignore = "a timing for the record: cargo test --release --lib redact -- --ignored --nocapture"]
    fn timing_before_and_after() {
        use std::time::Instant;
        for (len, secret_len) in [(1 << 14, 1 << 11), (1 << 16, 6_250), (1 << 20, 100_000)] {
            let text = "a".repeat(len);
            let secret = "a".repeat(secret_len);
            let started = Instant::now();
            let out = scrub(&text, &[&secret]);
            let now = started.elapsed();
            assert_eq!(out, "***");
            let before = (len * secret_len <= 1 << 29).then(|| {
                let started = Instant::now();
                assert_eq!(reference::scrub(&text, &[&secret]), "***");
                started.elapsed()
            });
            println!("text {len} B, secret {secret_len} B: {now:?} (before: {before:?})");
        }
        // 32 secrets of 100 000 bytes, each searched in the whole 1 MiB text (`scrub` would
        // search the later ones in `***`), every start reading on.
        let text = "a".repeat(1 << 20);
        let secrets: Vec<String> = (0..32).map(|i| "a".repeat(100_000 + i)).collect();
        let started = Instant::now();
        for secret in &secrets {
            assert_eq!(mask_encoded(&text, secret), "***");
        }
        println!(
            "text 1 MiB, 32 secrets of 100 000 B, each on all of it: {:?}",
            started.elapsed()
        );
        // Two readings a position: searched start by start up to the budget, then masked.
        let text = "\\".repeat(1 << 20);
        let secrets: Vec<String> = (0..32).map(|i| "\\".repeat(100_000 + i)).collect();
        let started = Instant::now();
        for secret in &secrets {
            assert_eq!(mask_encoded(&text, secret), "***");
        }
        println!(
            "text 1 MiB of `\\`, 32 secrets of 100 000 B, each on all of it: {:?}",
            started.elapsed()
        );
        // An ordinary text: 1 MiB of base64 and JSON escapes, 32 secrets of 1 000 bytes, two
        // of them in it.
        let mut rng = fastrand::Rng::with_seed(7);
        let alphabet: Vec<char> = ('A'..='Z').chain('a'..='z').chain('0'..='9').collect();
        let mut random = |len: usize| -> String {
            (0..len)
                .map(|_| alphabet[rng.usize(..alphabet.len())])
                .collect()
        };
        let secrets: Vec<String> = (0..32).map(|_| random(1000)).collect();
        let mut text = String::new();
        while text.len() < 1 << 20 {
            text.push_str(&random(200));
            text.push_str("\\\"\\u00e9%20&amp;");
        }
        text.insert_str(1000, &secrets[3]);
        text.insert_str(500_000, &secrets[30].replace('a', "%61"));
        let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
        let started = Instant::now();
        let out = scrub(&text, &secrets);
        println!(
            "text 1 MiB of base64, 32 secrets of 1 000 B: {:?}",
            started.elapsed()
        );
        assert_eq!(out.matches(MASK).count(), 2);
        if text.len() * 1000 * 32 <= 1 << 35 {
            let started = Instant::now();
            assert_eq!(reference::scrub(&text, &secrets), out);
            println!("(before: {:?})", started.elapsed());
        }
    }
}

//! The search for one secret in every mix of its encodings, in time linear in the text and
//! the secret.

use super::readings::{Read, readings};
use super::{MASK, MIN_PREFIX_CHARS};

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
pub(super) fn mask_encoded(text: &str, secret: &str) -> String {
    mask_encoded_counted(text, secret).0
}

/// [`mask_encoded`], and the work it took (steps of a reading, entries of a table).
pub(super) fn mask_encoded_counted(text: &str, secret: &str) -> (String, usize) {
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
pub(super) const FRONTIER_STEPS: usize = 2;

/// The work allowed for one secret in one text: `factor` steps a byte of either, and some.
pub(super) fn budget(text: &str, pattern: &[char], factor: usize) -> usize {
    text.len()
        .saturating_add(pattern.len())
        .saturating_mul(factor)
        .saturating_add(1 << 16)
}

/// Builds the masked text from spans given in the order of their starts.
pub(super) struct Masker<'t> {
    text: &'t str,
    out: String,
    /// How much of `text` is in `out` (or masked).
    copied: usize,
    /// The masked run being built, if one is open: where it starts and ends.
    run: Option<(usize, usize)>,
}

impl<'t> Masker<'t> {
    pub(super) fn new(text: &'t str) -> Self {
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

    pub(super) fn finish(mut self) -> String {
        self.flush();
        if self.copied == 0 {
            return self.text.to_owned();
        }
        self.out
            .push_str(self.text.get(self.copied..).unwrap_or_default());
        self.out
    }
}

fn index(value: u32) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}

/// A position where both readings could take part in a match: the raw character and the
/// escape starting there are both in the secret (only where the secret holds `%`, `\`, `&`
/// or `+`: `%25`, `\\`, `&amp;`, or an escape of another of its characters).
pub(super) struct TwoReadings;

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
pub(super) fn forest_spans(
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
pub(super) fn frontier_spans(
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

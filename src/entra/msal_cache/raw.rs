//! The raw JSON layer: sections, entries and fields kept as the exact text they had, and the
//! scan that reads them out of a validated document.

use std::borrow::Cow;
use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use zeroize::Zeroize as _;

use super::error::{DocumentError, ErrorKind};
use super::work;
use super::writer::py_json_string;

/// One JSON value kept as the exact text it had (or as the text we wrote for it). Zeroed on
/// drop: any field may hold a token.
#[derive(Clone)]
pub(super) struct RawJson(pub(super) Box<RawValue>);

impl RawJson {
    /// A value from JSON text known to be valid; `null` if it is not (never happens for the
    /// callers, which pass slices of a validated document or text this module produced).
    pub(super) fn from_text(text: String) -> Self {
        match RawValue::from_string(text) {
            Ok(raw) => Self(raw),
            Err(_) => Self::null(),
        }
    }

    /// JSON `null`.
    pub(super) fn null() -> Self {
        Self(RawValue::NULL.to_owned())
    }

    /// A JSON string, escaped as Python's `json.dumps` does.
    pub(super) fn string(value: &str) -> Self {
        Self::from_text(py_json_string(value))
    }

    /// The raw text.
    pub(super) fn text(&self) -> &str {
        self.0.get()
    }
}

impl Drop for RawJson {
    fn drop(&mut self) {
        let raw = std::mem::replace(&mut self.0, RawValue::NULL.to_owned());
        let mut text = Box::<str>::from(raw).into_string();
        text.zeroize();
    }
}

/// An object key: the exact JSON text it is written as, and its decoded text (for lookups).
#[derive(Clone)]
pub(super) struct Name {
    /// The key as a JSON string literal, quotes included.
    pub(super) raw: Cow<'static, str>,
    /// The decoded key, when it is not simply the text between the quotes (escapes).
    decoded: Option<String>,
}

/// Keys msal writes in every entry (and the section names), shared rather than allocated for
/// each of the thousands of entries of a large file.
const COMMON_KEYS: [&str; 23] = [
    "\"credential_type\"",
    "\"secret\"",
    "\"home_account_id\"",
    "\"environment\"",
    "\"client_id\"",
    "\"target\"",
    "\"realm\"",
    "\"token_type\"",
    "\"cached_at\"",
    "\"expires_on\"",
    "\"extended_expires_on\"",
    "\"refresh_on\"",
    "\"last_modification_time\"",
    "\"family_id\"",
    "\"local_account_id\"",
    "\"username\"",
    "\"authority_type\"",
    "\"account_source\"",
    "\"AccessToken\"",
    "\"RefreshToken\"",
    "\"IdToken\"",
    "\"Account\"",
    "\"AppMetadata\"",
];

impl Name {
    /// A key we create, written as Python would.
    pub(super) fn new(text: impl Into<String>) -> Self {
        let text = text.into();
        let raw = py_json_string(&text);
        let plain = raw
            .get(1..raw.len().saturating_sub(1))
            .is_some_and(|inner| inner == text);
        Self {
            raw: Cow::Owned(raw),
            decoded: (!plain).then_some(text),
        }
    }

    /// A key read from a document. A key that does not decode (a lone surrogate escape, which
    /// Python accepts) is looked up by its raw text; it never equals a key we build.
    pub(super) fn from_raw(raw: &str) -> Self {
        // Without a backslash the decoded text is what lies between the quotes (serde_json
        // validated the string): no JSON parser per key.
        let decoded = raw
            .contains('\\')
            .then(|| serde_json::from_str::<String>(raw).unwrap_or_else(|_| raw.to_owned()));
        let raw = match COMMON_KEYS.iter().find(|common| **common == raw) {
            Some(common) => Cow::Borrowed(*common),
            None => Cow::Owned(raw.to_owned()),
        };
        Self { raw, decoded }
    }

    /// The decoded key.
    pub(super) fn text(&self) -> &str {
        match &self.decoded {
            Some(decoded) => decoded,
            None => self
                .raw
                .get(1..self.raw.len().saturating_sub(1))
                .unwrap_or_default(),
        }
    }
}

/// An entry of a known section: its fields in document order.
#[derive(Clone, Default)]
pub(super) struct Entry {
    /// Field names and raw values.
    pub(super) fields: Vec<(Name, RawJson)>,
}

impl Entry {
    /// An entry with the given fields, in this order.
    pub(super) fn with_fields(fields: Vec<(&str, RawJson)>) -> Self {
        Self {
            fields: fields
                .into_iter()
                .map(|(name, value)| (Name::new(name), value))
                .collect(),
        }
    }

    /// The raw value of a field.
    pub(super) fn raw(&self, name: &str) -> Option<&RawJson> {
        self.fields
            .iter()
            .find(|(n, _)| {
                work::add(1);
                n.text() == name
            })
            .map(|(_, v)| v)
    }

    /// Replaces a field's value at its position, or appends the field.
    pub(super) fn set(&mut self, name: &str, value: RawJson) {
        match self.fields.iter_mut().find(|(n, _)| n.text() == name) {
            Some((_, v)) => *v = value,
            None => self.fields.push((Name::new(name), value)),
        }
    }
}

/// The body of a top-level section.
#[derive(Clone)]
pub(super) enum Body {
    /// A known section: its entries in document order.
    Entries(Vec<(Name, Entry)>),
    /// Any other section, verbatim.
    Raw(RawJson),
}

/// Appends `(name, value)`, or, when the name is already there, replaces that value in place
/// (Python's `json.loads`: last value wins, first position). A linear scan: for one insertion
/// into an existing list; parsing uses [`Members`].
pub(super) fn push_dedup<T>(list: &mut Vec<(Name, T)>, name: Name, value: T) {
    match list.iter_mut().find(|(n, _)| {
        work::add(1);
        n.text() == name.text()
    }) {
        Some((_, v)) => *v = value,
        None => list.push((name, value)),
    }
}

/// Up to this many members, [`Members`] finds duplicates by scanning: cheaper than hashing for
/// the ten or so fields of an entry.
pub(super) const SCAN_LIMIT: usize = 16;

/// The members of one JSON object as they are read, with [`push_dedup`]'s rule (last value
/// wins, first position) in linear time: a file with many members (thousands of entries, or a
/// hostile one with thousands of fields or sections) must not cost a scan per member.
pub(super) struct Members<T, S = RandomState> {
    /// The members so far, in document order.
    list: Vec<(Name, T)>,
    /// Once `list` outgrows [`SCAN_LIMIT`]: the position of the first member with each hash of
    /// a name (randomly keyed by default, so a file cannot choose collisions).
    index: Option<(S, HashMap<u64, usize>)>,
}

impl<T, S: BuildHasher + Default> Members<T, S> {
    /// An empty list with room for `capacity` members.
    pub(super) fn with_capacity(capacity: usize) -> Self {
        Self {
            list: Vec::with_capacity(capacity),
            index: None,
        }
    }

    /// Adds a member, or replaces the value of the one with the same name.
    pub(super) fn push(&mut self, name: Name, value: T) {
        if self.index.is_none() && self.list.len() >= SCAN_LIMIT {
            work::add(self.list.len());
            let hasher = S::default();
            let mut positions = HashMap::with_capacity(self.list.capacity());
            for (i, (n, _)) in self.list.iter().enumerate() {
                positions.entry(hasher.hash_one(n.text())).or_insert(i);
            }
            self.index = Some((hasher, positions));
        }
        let Some((hasher, positions)) = &mut self.index else {
            push_dedup(&mut self.list, name, value);
            return;
        };
        work::add(1);
        let hash = hasher.hash_one(name.text());
        match positions.get(&hash).copied() {
            None => {
                positions.insert(hash, self.list.len());
                self.list.push((name, value));
            }
            Some(i) => match self.list.get_mut(i) {
                Some((n, v)) if n.text() == name.text() => *v = value,
                // Two names with one 64-bit hash: a scan settles it.
                _ => push_dedup(&mut self.list, name, value),
            },
        }
    }

    /// The members, in document order.
    pub(super) fn into_list(self) -> Vec<(Name, T)> {
        self.list
    }
}

/// The members of a JSON object, key and value each borrowed from the text exactly as written
/// (the key with its quotes and escapes). serde_json validates the object and skips over the
/// values at the speed of its own scanner, without copying them.
pub(super) struct RawMembers<'a>(pub(super) Vec<(&'a RawValue, &'a RawValue)>);

impl<'de> Deserialize<'de> for RawMembers<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// Collects the members of a map.
        struct ObjectVisitor;

        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = RawMembers<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(key) = map.next_key::<&'de RawValue>()? {
                    members.push((key, map.next_value::<&'de RawValue>()?));
                }
                Ok(RawMembers(members))
            }
        }

        deserializer.deserialize_map(ObjectVisitor)
    }
}

/// The members of a value of the validated document; `None` when it is not an object.
pub(super) fn object_members(value: &RawValue) -> Option<Vec<(&RawValue, &RawValue)>> {
    let text = value.get();
    if !text.starts_with('{') {
        return None;
    }
    serde_json::from_str::<RawMembers<'_>>(text)
        .ok()
        .map(|members| members.0)
}

/// 1-based line and column (in bytes) of `value` in `src`, for errors.
pub(super) fn position_of(src: &str, value: &RawValue) -> (usize, usize) {
    let text = value.get();
    let offset = (text.as_ptr() as usize)
        .checked_sub(src.as_ptr() as usize)
        .filter(|&start| start <= src.len())
        .unwrap_or(0);
    line_col(src, offset)
}

/// 1-based line and column (in bytes) of a byte offset.
pub(super) fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let before = src.as_bytes().get(..offset).unwrap_or(src.as_bytes());
    work::add(before.len());
    let line = before
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        .saturating_add(1);
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i.saturating_add(1));
    (
        line,
        before.len().saturating_sub(line_start).saturating_add(1),
    )
}

/// The error for a document serde_json refused: a syntax error, or a top level that is not an
/// object. A document that is both reports its syntax error, as a full validation would.
pub(super) fn top_level_error(src: &str, error: &serde_json::Error) -> DocumentError {
    let syntax = |e: &serde_json::Error| DocumentError {
        kind: ErrorKind::Syntax(e.to_string()),
    };
    if !error.is_data() {
        return syntax(error);
    }
    match serde_json::from_str::<IgnoredAny>(src) {
        Err(e) => syntax(&e),
        Ok(_) => DocumentError {
            kind: ErrorKind::TopLevelNotObject,
        },
    }
}

/// Parses a known section's value into entries.
pub(super) fn parse_entries(
    src: &str,
    section: &str,
    value: &RawValue,
) -> Result<Vec<(Name, Entry)>, DocumentError> {
    // Positions are worked out only for errors: each costs a pass over the text before it, and
    // a file may repeat a section thousands of times.
    let members = object_members(value).ok_or_else(|| {
        let (line, column) = position_of(src, value);
        DocumentError {
            kind: ErrorKind::SectionNotObject {
                section: section.to_owned(),
                line,
                column,
            },
        }
    })?;
    let mut entries = Members::<_>::with_capacity(members.len());
    for (key, value) in members {
        let name = Name::from_raw(key.get());
        let Some(fields) = object_members(value) else {
            let (line, column) = position_of(src, value);
            return Err(DocumentError {
                kind: ErrorKind::EntryNotObject {
                    section: section.to_owned(),
                    entry: name.text().to_owned(),
                    line,
                    column,
                },
            });
        };
        let mut entry_fields = Members::<_>::with_capacity(fields.len());
        for (key, value) in fields {
            entry_fields.push(Name::from_raw(key.get()), RawJson(value.to_owned()));
        }
        let entry = Entry {
            fields: entry_fields.into_list(),
        };
        entries.push(name, entry);
    }
    Ok(entries.into_list())
}

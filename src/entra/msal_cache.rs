//! The MSAL token-cache document: the JSON file that Azure CLI, MSAL (Python, .NET, JS) and
//! azure-identity share (`~/.IdentityService/msal.cache*`), read and written so that our
//! credentials and those tools see each other's tokens.
//!
//! # Exact preservation
//!
//! A read-modify-write keeps everything it does not touch exactly as it was. The document is
//! held as raw JSON at the granularity of the things we may change:
//!
//! * the top level is an ordered list of sections; the five sections we know (`AccessToken`,
//!   `RefreshToken`, `IdToken`, `Account`, `AppMetadata`) are split into ordered entries, any
//!   other section is one [`RawValue`] kept verbatim;
//! * an entry is an ordered list of fields, each a [`RawValue`]; the typed views parse the
//!   fields they need on demand, and a change replaces only the fields it sets;
//! * every object key (section, entry, field) keeps the exact text it had in the file, escapes
//!   included; keys we create are written the way Python's `json` writes them.
//!
//! Serialization reproduces `json.dumps(doc, indent=4)`, which is how msal writes the file:
//! 4-space indentation, `": "` after keys, `,` + newline between items, `{}` for empty
//! objects, strings we write escaped like `ensure_ascii=True` (`\u00e9`, surrogate pairs for
//! astral characters), no trailing newline. Raw values are written verbatim: a multi-line raw
//! value (an unknown section, a nested unknown field) was indented for its depth in the file it
//! came from, and since we write it back at the same depth with the same indentation, its text
//! stays right. A document msal wrote therefore comes back byte for byte
//! (`parse(bytes)?.to_vec() == bytes`).
//!
//! Duplicate keys are resolved as Python's `json` does (the last value wins, at the position of
//! the first), which is what every other reader of the file sees.
//!
//! # What is written, and how it differs from msal
//!
//! [`CacheDocument::add_token_response`] records a token endpoint answer as msal 1.39 does
//! (`TokenCache.add`): same keys, same fields in the same order, same section order, an entry
//! with an existing key replaced at its position. Differences, all deliberate:
//!
//! * no `account_source` is written on new Account entries; fields of an existing Account
//!   entry that we do not set (`account_source` among them) are left as they are;
//! * we do not copy azure-identity's habit of recording an account without a username: when the
//!   answer yields no username (no id token, e.g. a refresh without `openid`) and an Account
//!   with the same `home_account_id` exists in any realm, no Account entry is written (that
//!   empty-username entry would shadow the real one for msal's and azure-identity's
//!   `username` filters);
//! * `local_account_id` falls back to the client_info `uid` when the id token has neither
//!   `oid` nor `sub` (msal writes `null`), and the username falls back to the `email` claim;
//! * an answer carrying `client_info` or an id token from which no account id can be read is
//!   not cached at all (apart from AppMetadata): its access token must not pass for an
//!   app-only one.
//!
//! Secrets: token values are handed out as [`Secret`]s, and every raw value this module holds
//! is zeroed when it is dropped. [`CacheDocument::to_vec`] returns the document, secrets
//! included, for the caller to write to the file. No error or `Debug` output contains a secret.

// The whole schema is modelled (five entry kinds, every field msal writes) and tested here;
// the credentials read only part of it.
#![allow(dead_code)]

use std::borrow::Cow;
use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fmt::Write as _;
use std::hash::BuildHasher;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use zeroize::Zeroize as _;

use crate::encoding::decode_base64;
use crate::token::Secret;

/// Section of access tokens.
const ACCESS_TOKEN: &str = "AccessToken";
/// Section of refresh tokens.
const REFRESH_TOKEN: &str = "RefreshToken";
/// Section of id tokens.
const ID_TOKEN: &str = "IdToken";
/// Section of accounts.
const ACCOUNT: &str = "Account";
/// Section of per-application metadata.
const APP_METADATA: &str = "AppMetadata";
/// The sections parsed into entries; any other section is kept as one raw value.
const KNOWN_SECTIONS: [&str; 5] = [ACCESS_TOKEN, REFRESH_TOKEN, ID_TOKEN, ACCOUNT, APP_METADATA];

// ---------------------------------------------------------------------------------------------
// Raw storage
// ---------------------------------------------------------------------------------------------

/// One JSON value kept as the exact text it had (or as the text we wrote for it). Zeroed on
/// drop: any field may hold a token.
#[derive(Clone)]
struct RawJson(Box<RawValue>);

impl RawJson {
    /// A value from JSON text known to be valid; `null` if it is not (never happens for the
    /// callers, which pass slices of a validated document or text this module produced).
    fn from_text(text: String) -> Self {
        match RawValue::from_string(text) {
            Ok(raw) => Self(raw),
            Err(_) => Self::null(),
        }
    }

    /// JSON `null`.
    fn null() -> Self {
        Self(RawValue::NULL.to_owned())
    }

    /// A JSON string, escaped as Python's `json.dumps` does.
    fn string(value: &str) -> Self {
        Self::from_text(py_json_string(value))
    }

    /// The raw text.
    fn text(&self) -> &str {
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
struct Name {
    /// The key as a JSON string literal, quotes included.
    raw: Cow<'static, str>,
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
    fn new(text: impl Into<String>) -> Self {
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
    fn from_raw(raw: &str) -> Self {
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
    fn text(&self) -> &str {
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
struct Entry {
    /// Field names and raw values.
    fields: Vec<(Name, RawJson)>,
}

impl Entry {
    /// An entry with the given fields, in this order.
    fn with_fields(fields: Vec<(&str, RawJson)>) -> Self {
        Self {
            fields: fields
                .into_iter()
                .map(|(name, value)| (Name::new(name), value))
                .collect(),
        }
    }

    /// The raw value of a field.
    fn raw(&self, name: &str) -> Option<&RawJson> {
        self.fields
            .iter()
            .find(|(n, _)| {
                work::add(1);
                n.text() == name
            })
            .map(|(_, v)| v)
    }

    /// Replaces a field's value at its position, or appends the field.
    fn set(&mut self, name: &str, value: RawJson) {
        match self.fields.iter_mut().find(|(n, _)| n.text() == name) {
            Some((_, v)) => *v = value,
            None => self.fields.push((Name::new(name), value)),
        }
    }

    /// A field that must be a string.
    fn req_str(&self, name: &'static str) -> Result<String, FieldProblem> {
        match self.opt_str(name)? {
            Some(s) => Ok(s),
            None => Err(FieldProblem::new(name, Problem::Missing)),
        }
    }

    /// A field that may be missing or `null`, else a string.
    fn opt_str(&self, name: &'static str) -> Result<Option<String>, FieldProblem> {
        let Some(raw) = self.raw(name) else {
            return Ok(None);
        };
        match serde_json::from_str::<Option<String>>(raw.text()) {
            Ok(v) => Ok(v),
            Err(_) => Err(FieldProblem::new(name, Problem::NotString)),
        }
    }

    /// An optional, informational string field: anything but a string reads as `None`.
    fn lenient_str(&self, name: &str) -> Option<String> {
        self.raw(name)
            .and_then(|raw| serde_json::from_str::<String>(raw.text()).ok())
    }

    /// A secret field (required string).
    fn secret(&self) -> Result<Secret, FieldProblem> {
        self.req_str("secret").map(Secret::new)
    }

    /// A required timestamp: a decimal string, or a JSON number (some tools write numbers).
    fn req_time(&self, name: &'static str) -> Result<u64, FieldProblem> {
        let Some(raw) = self.raw(name) else {
            return Err(FieldProblem::new(name, Problem::Missing));
        };
        parse_time(raw.text()).map_err(|p| FieldProblem::new(name, p))
    }

    /// An optional, informational timestamp: missing, `null` or malformed reads as `None`.
    fn lenient_time(&self, name: &str) -> Option<u64> {
        self.raw(name).and_then(|raw| parse_time(raw.text()).ok())
    }
}

/// Reads a timestamp: a decimal string of Unix seconds, or a non-negative JSON number.
fn parse_time(text: &str) -> Result<u64, Problem> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::String(s)) => {
            let digits = s.trim_matches(|c: char| c.is_ascii_whitespace());
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Problem::NotDecimal);
            }
            digits.parse::<u64>().map_err(|_| Problem::OutOfRange)
        }
        Ok(Value::Number(n)) => {
            if let Some(v) = n.as_u64() {
                return Ok(v);
            }
            match n.as_f64() {
                // Below 2^64, so the truncating conversion is exact to the second.
                Some(f) if f.is_finite() && (0.0..18_446_744_073_709_551_616.0).contains(&f) => {
                    Ok(f as u64)
                }
                _ => Err(Problem::OutOfRange),
            }
        }
        // A number too large for f64 (`1e400`; Python reads it as infinity), which serde_json
        // validates as JSON but will not read.
        Err(_) if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) => {
            Err(Problem::OutOfRange)
        }
        _ => Err(Problem::NotDecimal),
    }
}

/// The body of a top-level section.
#[derive(Clone)]
enum Body {
    /// A known section: its entries in document order.
    Entries(Vec<(Name, Entry)>),
    /// Any other section, verbatim.
    Raw(RawJson),
}

/// Appends `(name, value)`, or, when the name is already there, replaces that value in place
/// (Python's `json.loads`: last value wins, first position). A linear scan: for one insertion
/// into an existing list; parsing uses [`Members`].
fn push_dedup<T>(list: &mut Vec<(Name, T)>, name: Name, value: T) {
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
const SCAN_LIMIT: usize = 16;

/// The members of one JSON object as they are read, with [`push_dedup`]'s rule (last value
/// wins, first position) in linear time: a file with many members (thousands of entries, or a
/// hostile one with thousands of fields or sections) must not cost a scan per member.
struct Members<T, S = RandomState> {
    /// The members so far, in document order.
    list: Vec<(Name, T)>,
    /// Once `list` outgrows [`SCAN_LIMIT`]: the position of the first member with each hash of
    /// a name (randomly keyed by default, so a file cannot choose collisions).
    index: Option<(S, HashMap<u64, usize>)>,
}

impl<T, S: BuildHasher + Default> Members<T, S> {
    /// An empty list with room for `capacity` members.
    fn with_capacity(capacity: usize) -> Self {
        Self {
            list: Vec::with_capacity(capacity),
            index: None,
        }
    }

    /// Adds a member, or replaces the value of the one with the same name.
    fn push(&mut self, name: Name, value: T) {
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
    fn into_list(self) -> Vec<(Name, T)> {
        self.list
    }
}

/// Counts the steps of name lookups and position reports, so that tests can prove the work of
/// a read grows linearly with the document (a time limit would be flaky). Nothing outside
/// tests.
#[cfg(test)]
mod work {
    use std::cell::Cell;

    thread_local! {
        /// Steps counted on this thread since the last [`take`].
        static STEPS: Cell<u64> = const { Cell::new(0) };
    }

    /// Counts `n` steps.
    pub(super) fn add(n: usize) {
        let n = u64::try_from(n).unwrap_or(u64::MAX);
        STEPS.with(|steps| steps.set(steps.get().saturating_add(n)));
    }

    /// The steps counted on this thread since the last call.
    pub(super) fn take() -> u64 {
        STEPS.with(|steps| steps.replace(0))
    }
}

/// Outside tests, counting steps is free.
#[cfg(not(test))]
mod work {
    /// Nothing to count.
    #[inline(always)]
    pub(super) fn add(_: usize) {}
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why a document could not be read, or (from [`CacheDocument::skipped`]) why an entry is
/// ignored by the typed views. The text says what and where, never a value from the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DocumentError {
    /// What went wrong.
    kind: ErrorKind,
}

/// The kinds of [`DocumentError`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum ErrorKind {
    /// The bytes are not UTF-8.
    NotUtf8 {
        /// Byte offset of the first invalid byte.
        offset: usize,
    },
    /// The text is not JSON; serde_json's message, which carries line and column and no input.
    Syntax(String),
    /// The top-level value is not an object.
    TopLevelNotObject,
    /// A known section is not an object.
    SectionNotObject {
        /// The section.
        section: String,
        /// 1-based line of the value.
        line: usize,
        /// 1-based column (bytes) of the value.
        column: usize,
    },
    /// An entry of a known section is not an object.
    EntryNotObject {
        /// The section.
        section: String,
        /// The entry's key.
        entry: String,
        /// 1-based line of the value.
        line: usize,
        /// 1-based column (bytes) of the value.
        column: usize,
    },
    /// An entry lacks a field the views need, or the field is malformed.
    Field {
        /// The section.
        section: String,
        /// The entry's key.
        entry: String,
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        problem: Problem,
    },
}

/// What is wrong with a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Problem {
    /// Not there (or `null` where a value is needed).
    Missing,
    /// Not a string.
    NotString,
    /// Not a decimal string (nor a JSON number).
    NotDecimal,
    /// A number that is negative, fractional beyond range, or too large.
    OutOfRange,
}

impl Problem {
    /// The message fragment.
    fn as_str(self) -> &'static str {
        match self {
            Problem::Missing => "is missing",
            Problem::NotString => "is not a string",
            Problem::NotDecimal => "is not a decimal string",
            Problem::OutOfRange => "is out of range",
        }
    }
}

/// A field problem before it is placed in a section and entry.
#[derive(Debug, Clone, Copy)]
struct FieldProblem {
    /// The field.
    field: &'static str,
    /// What is wrong.
    problem: Problem,
}

impl FieldProblem {
    /// A problem with `field`.
    fn new(field: &'static str, problem: Problem) -> Self {
        Self { field, problem }
    }
}

impl DocumentError {
    /// The error for a field problem of an entry.
    fn field(section: &str, entry: &str, p: FieldProblem) -> Self {
        Self {
            kind: ErrorKind::Field {
                section: section.to_owned(),
                entry: entry.to_owned(),
                field: p.field,
                problem: p.problem,
            },
        }
    }
}

impl fmt::Display for DocumentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ErrorKind::NotUtf8 { offset } => {
                write!(
                    f,
                    "the token cache is not UTF-8 text (invalid byte at offset {offset})"
                )
            }
            ErrorKind::Syntax(msg) => write!(f, "the token cache is not valid JSON: {msg}"),
            ErrorKind::TopLevelNotObject => f.write_str("the top level is not a JSON object"),
            ErrorKind::SectionNotObject {
                section,
                line,
                column,
            } => write!(
                f,
                "section {section:?} is not a JSON object of entries (line {line} column {column})"
            ),
            ErrorKind::EntryNotObject {
                section,
                entry,
                line,
                column,
            } => write!(
                f,
                "section {section:?} entry {entry:?}: not a JSON object (line {line} column {column})"
            ),
            ErrorKind::Field {
                section,
                entry,
                field,
                problem,
            } => write!(
                f,
                "section {section:?} entry {entry:?}: field {field:?} {}",
                problem.as_str()
            ),
        }
    }
}

impl std::error::Error for DocumentError {}

// ---------------------------------------------------------------------------------------------
// Scanning a validated document
// ---------------------------------------------------------------------------------------------

/// The members of a JSON object, key and value each borrowed from the text exactly as written
/// (the key with its quotes and escapes). serde_json validates the object and skips over the
/// values at the speed of its own scanner, without copying them.
struct RawMembers<'a>(Vec<(&'a RawValue, &'a RawValue)>);

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
fn object_members(value: &RawValue) -> Option<Vec<(&RawValue, &RawValue)>> {
    let text = value.get();
    if !text.starts_with('{') {
        return None;
    }
    serde_json::from_str::<RawMembers<'_>>(text)
        .ok()
        .map(|members| members.0)
}

/// 1-based line and column (in bytes) of `value` in `src`, for errors.
fn position_of(src: &str, value: &RawValue) -> (usize, usize) {
    let text = value.get();
    let offset = (text.as_ptr() as usize)
        .checked_sub(src.as_ptr() as usize)
        .filter(|&start| start <= src.len())
        .unwrap_or(0);
    line_col(src, offset)
}

/// 1-based line and column (in bytes) of a byte offset.
fn line_col(src: &str, offset: usize) -> (usize, usize) {
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

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

/// `s` as a JSON string literal, escaped as Python's `json.dumps(ensure_ascii=True)` does:
/// `\"`, `\\`, `\n`, `\r`, `\t`, `\b`, `\f`, every other character outside `' '..='~'` as
/// `\uXXXX` (lower-case hex, UTF-16 surrogate pairs above U+FFFF); `/` is not escaped.
fn py_json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len().saturating_add(2));
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
    out
}

/// Appends a newline and `depth` levels of 4-space indentation.
fn newline(out: &mut String, depth: usize) {
    out.push('\n');
    for _ in 0..depth {
        out.push_str("    ");
    }
}

/// Writes an object of `items` at `depth` in `json.dumps(indent=4)` layout.
fn write_object<T>(
    out: &mut String,
    depth: usize,
    items: &[(Name, T)],
    mut write_value: impl FnMut(&mut String, &T),
) {
    if items.is_empty() {
        out.push_str("{}");
        return;
    }
    out.push('{');
    for (i, (name, value)) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        newline(out, depth.saturating_add(1));
        out.push_str(&name.raw);
        out.push_str(": ");
        write_value(out, value);
    }
    newline(out, depth);
    out.push('}');
}

// ---------------------------------------------------------------------------------------------
// Typed views
// ---------------------------------------------------------------------------------------------

/// An `Account` entry: a person signed in at an authority (environment) and tenant (realm).
#[derive(Debug, Clone)]
pub(crate) struct Account {
    /// The entry's key in the document.
    pub(crate) key: String,
    /// `uid.utid` from the sign-in's client_info.
    pub(crate) home_account_id: String,
    /// Authority host.
    pub(crate) environment: String,
    /// Tenant path segment used at sign-in.
    pub(crate) realm: String,
    /// The object id in the tenant; `None` when the file has `null` (azure-identity writes
    /// that after a refresh without id token) or anything but a string.
    pub(crate) local_account_id: Option<String>,
    /// The user name (`""` when unknown: missing, `null`, or written empty).
    pub(crate) username: String,
    /// `MSSTS` or `ADFS` (`""` when missing).
    pub(crate) authority_type: String,
}

/// A `RefreshToken` entry.
#[derive(Debug, Clone)]
pub(crate) struct RefreshToken {
    /// The entry's key in the document.
    pub(crate) key: String,
    /// The account (`""` when missing or `null`).
    pub(crate) home_account_id: String,
    /// Authority host.
    pub(crate) environment: String,
    /// The application the token was issued to.
    pub(crate) client_id: String,
    /// Scopes of the grant that produced it (informational: Entra refresh tokens are scope
    /// independent; `""` when missing).
    pub(crate) target: String,
    /// The refresh token.
    pub(crate) secret: Secret,
    /// The family (FOCI) id, e.g. `"1"`, when the token is a family refresh token.
    pub(crate) family_id: Option<String>,
    /// When it was written (Unix seconds), if recorded and readable.
    pub(crate) last_modification_time: Option<u64>,
}

/// An `AccessToken` entry.
#[derive(Debug, Clone)]
pub(crate) struct CachedAccessToken {
    /// The entry's key in the document.
    pub(crate) key: String,
    /// The account; `None` for app-only tokens (JSON `null`, missing, or `""`).
    pub(crate) home_account_id: Option<String>,
    /// Authority host.
    pub(crate) environment: String,
    /// The application the token was issued to.
    pub(crate) client_id: String,
    /// Tenant path segment of the request.
    pub(crate) realm: String,
    /// The scopes it covers, space-separated.
    pub(crate) target: String,
    /// The access token.
    pub(crate) secret: Secret,
    /// `Bearer` (or `pop`, `ssh-cert` for other msal flows); `Bearer` when missing.
    pub(crate) token_type: String,
    /// When it was obtained (Unix seconds).
    pub(crate) cached_at: u64,
    /// When it expires (Unix seconds).
    pub(crate) expires_on: u64,
    /// Extended expiry (Unix seconds), if recorded and readable.
    pub(crate) extended_expires_on: Option<u64>,
    /// When to refresh it proactively (Unix seconds), if recorded and readable.
    pub(crate) refresh_on: Option<u64>,
}

/// An `IdToken` entry.
#[derive(Debug, Clone)]
pub(crate) struct IdToken {
    /// The entry's key in the document.
    pub(crate) key: String,
    /// The account (`""` when missing or `null`).
    pub(crate) home_account_id: String,
    /// Authority host.
    pub(crate) environment: String,
    /// Tenant path segment of the request.
    pub(crate) realm: String,
    /// The application the token was issued to.
    pub(crate) client_id: String,
    /// The id token (a JWT).
    pub(crate) secret: Secret,
}

/// An `AppMetadata` entry.
#[derive(Debug, Clone)]
pub(crate) struct AppMetadata {
    /// The entry's key in the document.
    pub(crate) key: String,
    /// The application.
    pub(crate) client_id: String,
    /// Authority host.
    pub(crate) environment: String,
    /// The application's family (FOCI) id, if it is in one.
    pub(crate) family_id: Option<String>,
}

/// Reads an `Account` entry.
fn account_view(key: &str, e: &Entry) -> Result<Account, FieldProblem> {
    Ok(Account {
        key: key.to_owned(),
        home_account_id: e.req_str("home_account_id")?,
        environment: e.req_str("environment")?,
        realm: e.req_str("realm")?,
        local_account_id: e.lenient_str("local_account_id"),
        username: e.opt_str("username")?.unwrap_or_default(),
        authority_type: e.opt_str("authority_type")?.unwrap_or_default(),
    })
}

/// Reads a `RefreshToken` entry.
fn refresh_token_view(key: &str, e: &Entry) -> Result<RefreshToken, FieldProblem> {
    Ok(RefreshToken {
        key: key.to_owned(),
        secret: e.secret()?,
        home_account_id: e.opt_str("home_account_id")?.unwrap_or_default(),
        environment: e.req_str("environment")?,
        client_id: e.req_str("client_id")?,
        target: e.opt_str("target")?.unwrap_or_default(),
        family_id: e.lenient_str("family_id"),
        last_modification_time: e.lenient_time("last_modification_time"),
    })
}

/// Reads an `AccessToken` entry.
fn access_token_view(key: &str, e: &Entry) -> Result<CachedAccessToken, FieldProblem> {
    Ok(CachedAccessToken {
        key: key.to_owned(),
        secret: e.secret()?,
        home_account_id: e.opt_str("home_account_id")?.filter(|h| !h.is_empty()),
        environment: e.req_str("environment")?,
        client_id: e.req_str("client_id")?,
        realm: e.req_str("realm")?,
        target: e.req_str("target")?,
        token_type: e
            .opt_str("token_type")?
            .unwrap_or_else(|| "Bearer".to_owned()),
        cached_at: e.req_time("cached_at")?,
        expires_on: e.req_time("expires_on")?,
        extended_expires_on: e.lenient_time("extended_expires_on"),
        refresh_on: e.lenient_time("refresh_on"),
    })
}

/// Reads an `IdToken` entry.
fn id_token_view(key: &str, e: &Entry) -> Result<IdToken, FieldProblem> {
    Ok(IdToken {
        key: key.to_owned(),
        secret: e.secret()?,
        home_account_id: e.opt_str("home_account_id")?.unwrap_or_default(),
        environment: e.req_str("environment")?,
        realm: e.req_str("realm")?,
        client_id: e.req_str("client_id")?,
    })
}

/// Reads an `AppMetadata` entry.
fn app_metadata_view(key: &str, e: &Entry) -> Result<AppMetadata, FieldProblem> {
    Ok(AppMetadata {
        key: key.to_owned(),
        client_id: e.req_str("client_id")?,
        environment: e.req_str("environment")?,
        family_id: e.lenient_str("family_id"),
    })
}

// ---------------------------------------------------------------------------------------------
// Queries and inputs
// ---------------------------------------------------------------------------------------------

/// What [`CacheDocument::find_access_tokens`] looks for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AccessTokenQuery<'a> {
    /// `None`: any; `Some(None)`: app-only tokens only (`home_account_id` null, missing or
    /// empty); `Some(Some(id))`: that account's tokens only.
    pub(crate) home_account_id: Option<Option<&'a str>>,
    /// Accepted authority hosts (aliases of one cloud), compared ASCII-case-insensitively. An
    /// empty list matches nothing.
    pub(crate) environments: &'a [&'a str],
    /// The application, if it matters (exact).
    pub(crate) client_id: Option<&'a str>,
    /// The tenant path segment, if it matters (ASCII-case-insensitive).
    pub(crate) realm: Option<&'a str>,
    /// Scopes the token must cover; empty matches any target.
    pub(crate) scopes: &'a [String],
}

/// What [`CacheDocument::find_refresh_tokens`] looks for. Targets are not compared: Entra
/// refresh tokens are scope independent.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RefreshTokenQuery<'a> {
    /// The account (exact).
    pub(crate) home_account_id: &'a str,
    /// Accepted authority hosts, compared ASCII-case-insensitively. Empty matches nothing.
    pub(crate) environments: &'a [&'a str],
    /// The application, if it matters (exact).
    pub(crate) client_id: Option<&'a str>,
    /// Only family (FOCI) refresh tokens: entries with a non-empty `family_id`.
    pub(crate) family_only: bool,
}

/// A successful token endpoint answer, to record with [`CacheDocument::add_token_response`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct NewTokens<'a> {
    /// The application that asked.
    pub(crate) client_id: &'a str,
    /// Authority host, without port.
    pub(crate) environment: &'a str,
    /// Tenant path segment used for the request.
    pub(crate) realm: &'a str,
    /// What the answer covers: its `scope` split on spaces if present, else the requested
    /// scopes. Recorded sorted, as msal does.
    pub(crate) scopes: &'a [String],
    /// The access token.
    pub(crate) access_token: &'a Secret,
    /// The answer's `token_type` (`Bearer` if it had none).
    pub(crate) token_type: &'a str,
    /// When the request was made (Unix seconds).
    pub(crate) cached_at: u64,
    /// Expiry (Unix seconds).
    pub(crate) expires_on: u64,
    /// Extended expiry (Unix seconds; the expiry when the answer has no `ext_expires_in`).
    pub(crate) extended_expires_on: u64,
    /// Proactive refresh time (Unix seconds), if any.
    pub(crate) refresh_on: Option<u64>,
    /// The answer's refresh token, if any.
    pub(crate) refresh_token: Option<&'a Secret>,
    /// The answer's id token, if any.
    pub(crate) id_token: Option<&'a Secret>,
    /// The answer's `client_info` (base64url JSON `{"uid", "utid"}`), if any.
    pub(crate) client_info: Option<&'a str>,
    /// The answer's `foci` (family id), if any.
    pub(crate) foci: Option<&'a str>,
    /// Key of the refresh-token entry that was redeemed for this answer, if any.
    pub(crate) replaces: Option<&'a str>,
}

// ---------------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------------

/// Key of an AccessToken entry (`home_account_id` empty for app-only tokens).
fn access_token_key(
    home_account_id: &str,
    environment: &str,
    client_id: &str,
    realm: &str,
    target: &str,
) -> String {
    [
        home_account_id,
        environment,
        "accesstoken",
        client_id,
        realm,
        target,
    ]
    .join("-")
    .to_lowercase()
}

/// Key of a RefreshToken entry (realm empty: refresh tokens cross tenants).
fn refresh_token_key(
    home_account_id: &str,
    environment: &str,
    client_id: &str,
    target: &str,
) -> String {
    [
        home_account_id,
        environment,
        "refreshtoken",
        client_id,
        "",
        target,
    ]
    .join("-")
    .to_lowercase()
}

/// Key of an IdToken entry (the trailing empty target is part of the schema).
fn id_token_key(home_account_id: &str, environment: &str, client_id: &str, realm: &str) -> String {
    [
        home_account_id,
        environment,
        "idtoken",
        client_id,
        realm,
        "",
    ]
    .join("-")
    .to_lowercase()
}

/// Key of an Account entry.
fn account_key(home_account_id: &str, environment: &str, realm: &str) -> String {
    [home_account_id, environment, realm]
        .join("-")
        .to_lowercase()
}

/// Key of an AppMetadata entry (not lower-cased).
fn app_metadata_key(environment: &str, client_id: &str) -> String {
    format!("appmetadata-{environment}-{client_id}")
}

// ---------------------------------------------------------------------------------------------
// Decoding client_info and id tokens
// ---------------------------------------------------------------------------------------------

/// A base64(url) JSON object; `None` for anything else.
fn decode_json_object(part: &str) -> Option<Map<String, Value>> {
    let bytes = decode_base64(part).ok()?;
    match serde_json::from_slice::<Value>(&bytes).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

/// The claims of a JWT, unverified (they only name the account).
fn jwt_claims(jwt: &str) -> Option<Map<String, Value>> {
    let mut parts = jwt.split('.');
    let _header = parts.next()?;
    decode_json_object(parts.next()?)
}

/// A non-empty string claim.
fn claim<'m>(claims: &'m Map<String, Value>, name: &str) -> Option<&'m str> {
    claims
        .get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// `(uid, utid)` from client_info.
fn client_info_ids(client_info: &str) -> Option<(String, String)> {
    let map = decode_json_object(client_info)?;
    Some((
        claim(&map, "uid")?.to_owned(),
        claim(&map, "utid")?.to_owned(),
    ))
}

// ---------------------------------------------------------------------------------------------
// The document
// ---------------------------------------------------------------------------------------------

/// A parsed MSAL token cache. See the [module documentation](self) for how it is kept and
/// written.
#[derive(Clone, Default)]
pub(crate) struct CacheDocument {
    /// The top-level sections (name and body) in document order.
    sections: Vec<(Name, Body)>,
}

impl fmt::Debug for CacheDocument {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (name, body) in &self.sections {
            match body {
                Body::Entries(entries) => {
                    m.entry(&name.text(), &format_args!("{} entries", entries.len()))
                }
                Body::Raw(_) => m.entry(&name.text(), &format_args!("(kept verbatim)")),
            };
        }
        m.finish()
    }
}

impl CacheDocument {
    /// A document with no sections (written as `{}`).
    pub(crate) fn empty() -> Self {
        Self::default()
    }

    /// Reads a document. Empty or whitespace-only input is an empty document. Errors: not
    /// UTF-8, not JSON, a top level that is not an object, a known section that is not an
    /// object of objects. Entries lacking fields are not errors here: the views skip them.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self, DocumentError> {
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        let src = std::str::from_utf8(bytes).map_err(|e| DocumentError {
            kind: ErrorKind::NotUtf8 {
                offset: e.valid_up_to(),
            },
        })?;
        if src.trim_matches([' ', '\t', '\n', '\r']).is_empty() {
            return Ok(Self::empty());
        }
        let top =
            serde_json::from_str::<RawMembers<'_>>(src).map_err(|e| top_level_error(src, &e))?;
        let mut sections = Members::<_>::with_capacity(top.0.len());
        for (key, value) in top.0 {
            let name = Name::from_raw(key.get());
            let body = if KNOWN_SECTIONS.contains(&name.text()) {
                Body::Entries(parse_entries(src, name.text(), value)?)
            } else {
                Body::Raw(RawJson(value.to_owned()))
            };
            sections.push(name, body);
        }
        Ok(Self {
            sections: sections.into_list(),
        })
    }

    /// The document as msal writes it (`json.dumps(doc, indent=4)` layout). It contains the
    /// secrets: write it to the cache file and drop it.
    pub(crate) fn to_vec(&self) -> Vec<u8> {
        let mut out = String::new();
        write_object(&mut out, 0, &self.sections, |out, body| match body {
            Body::Raw(raw) => out.push_str(raw.text()),
            Body::Entries(entries) => write_object(out, 1, entries, |out, entry| {
                write_object(out, 2, &entry.fields, |out, value| {
                    out.push_str(value.text())
                });
            }),
        });
        out.into_bytes()
    }

    /// No entries in the known sections and no other sections.
    pub(crate) fn is_empty(&self) -> bool {
        self.sections.iter().all(|(_, body)| match body {
            Body::Entries(entries) => entries.is_empty(),
            Body::Raw(_) => false,
        })
    }

    /// The entries of a known section (none if it is absent).
    fn entries(&self, section: &str) -> &[(Name, Entry)] {
        self.sections
            .iter()
            .find(|(name, _)| {
                work::add(1);
                name.text() == section
            })
            .and_then(|(_, body)| match body {
                Body::Entries(entries) => Some(entries.as_slice()),
                Body::Raw(_) => None,
            })
            .unwrap_or(&[])
    }

    /// The entries of a known section, creating the section at the end if absent (as msal's
    /// `setdefault` does).
    fn entries_mut(&mut self, section: &str) -> Option<&mut Vec<(Name, Entry)>> {
        let index = match self
            .sections
            .iter()
            .position(|(name, _)| name.text() == section)
        {
            Some(i) => i,
            None => {
                self.sections
                    .push((Name::new(section), Body::Entries(Vec::new())));
                self.sections.len().saturating_sub(1)
            }
        };
        match &mut self.sections.get_mut(index)?.1 {
            Body::Entries(entries) => Some(entries),
            // Known sections are always parsed into entries.
            Body::Raw(_) => None,
        }
    }

    /// Inserts an entry, replacing (at its position) an entry with the same key.
    fn put_entry(&mut self, section: &str, key: String, entry: Entry) {
        if let Some(entries) = self.entries_mut(section) {
            push_dedup(entries, Name::new(key), entry);
        }
    }

    /// Removes the entry with `key` from a known section.
    fn remove_entry(&mut self, section: &str, key: &str) -> bool {
        let Some((_, Body::Entries(entries))) = self
            .sections
            .iter_mut()
            .find(|(name, _)| name.text() == section)
        else {
            return false;
        };
        let before = entries.len();
        entries.retain(|(name, _)| name.text() != key);
        entries.len() != before
    }

    /// Applies a view to every entry of a section, keeping the readable ones.
    fn view<T>(&self, section: &str, read: fn(&str, &Entry) -> Result<T, FieldProblem>) -> Vec<T> {
        self.entries(section)
            .iter()
            .filter_map(|(name, entry)| read(name.text(), entry).ok())
            .collect()
    }

    /// Account entries the view can read.
    pub(crate) fn accounts(&self) -> Vec<Account> {
        self.view(ACCOUNT, account_view)
    }

    /// RefreshToken entries the view can read.
    pub(crate) fn refresh_tokens(&self) -> Vec<RefreshToken> {
        self.view(REFRESH_TOKEN, refresh_token_view)
    }

    /// AccessToken entries the view can read (any token type, expired ones included).
    pub(crate) fn access_tokens(&self) -> Vec<CachedAccessToken> {
        self.view(ACCESS_TOKEN, access_token_view)
    }

    /// IdToken entries the view can read.
    pub(crate) fn id_tokens(&self) -> Vec<IdToken> {
        self.view(ID_TOKEN, id_token_view)
    }

    /// AppMetadata entries the view can read.
    pub(crate) fn app_metadata(&self) -> Vec<AppMetadata> {
        self.view(APP_METADATA, app_metadata_view)
    }

    /// Why each entry the views ignore is ignored (for diagnostics; no values included).
    pub(crate) fn skipped(&self) -> Vec<DocumentError> {
        /// Collects the problems of one section.
        fn collect<T>(
            doc: &CacheDocument,
            section: &str,
            read: fn(&str, &Entry) -> Result<T, FieldProblem>,
            out: &mut Vec<DocumentError>,
        ) {
            for (name, entry) in doc.entries(section) {
                if let Err(p) = read(name.text(), entry) {
                    out.push(DocumentError::field(section, name.text(), p));
                }
            }
        }
        let mut out = Vec::new();
        for (name, _) in &self.sections {
            match name.text() {
                ACCESS_TOKEN => collect(self, ACCESS_TOKEN, access_token_view, &mut out),
                REFRESH_TOKEN => collect(self, REFRESH_TOKEN, refresh_token_view, &mut out),
                ID_TOKEN => collect(self, ID_TOKEN, id_token_view, &mut out),
                ACCOUNT => collect(self, ACCOUNT, account_view, &mut out),
                APP_METADATA => collect(self, APP_METADATA, app_metadata_view, &mut out),
                _ => {}
            }
        }
        out
    }

    /// Bearer access tokens matching every given field, whose target covers the requested
    /// scopes: each requested scope, compared ASCII-case-insensitively, is one of the entry's
    /// space-separated target scopes. Entries whose `token_type` is not `Bearer` (msal's PoP
    /// and SSH-certificate tokens) are never returned. Expired tokens are returned too (the
    /// caller judges lifetimes; see [`remove_expired_access_tokens`]). Document order.
    ///
    /// [`remove_expired_access_tokens`]: CacheDocument::remove_expired_access_tokens
    pub(crate) fn find_access_tokens(&self, q: &AccessTokenQuery<'_>) -> Vec<CachedAccessToken> {
        // Entries of other accounts are passed over before their view (and secret) is built.
        let wanted_account = |e: &Entry| match q.home_account_id {
            None => true,
            Some(wanted) => {
                e.lenient_str("home_account_id")
                    .filter(|h| !h.is_empty())
                    .as_deref()
                    == wanted
            }
        };
        self.entries(ACCESS_TOKEN)
            .iter()
            .filter(|(_, e)| wanted_account(e))
            .filter_map(|(name, e)| access_token_view(name.text(), e).ok())
            .filter(|at| {
                at.token_type.eq_ignore_ascii_case("Bearer")
                    && match q.home_account_id {
                        None => true,
                        Some(wanted) => at.home_account_id.as_deref() == wanted,
                    }
                    && env_matches(q.environments, &at.environment)
                    && q.client_id.is_none_or(|c| at.client_id == c)
                    && q.realm.is_none_or(|r| at.realm.eq_ignore_ascii_case(r))
                    && q.scopes.iter().all(|wanted| {
                        at.target
                            .split_whitespace()
                            .any(|have| have.eq_ignore_ascii_case(wanted))
                    })
            })
            .collect()
    }

    /// Refresh tokens of an account at the given hosts, optionally of one client and
    /// optionally family tokens only. Document order.
    pub(crate) fn find_refresh_tokens(&self, q: &RefreshTokenQuery<'_>) -> Vec<RefreshToken> {
        // Entries of other accounts are passed over before their view (and secret) is built.
        self.entries(REFRESH_TOKEN)
            .iter()
            .filter(|(_, e)| {
                e.lenient_str("home_account_id").unwrap_or_default() == q.home_account_id
            })
            .filter_map(|(name, e)| refresh_token_view(name.text(), e).ok())
            .filter(|rt| {
                rt.home_account_id == q.home_account_id
                    && env_matches(q.environments, &rt.environment)
                    && q.client_id.is_none_or(|c| rt.client_id == c)
                    && (!q.family_only || rt.family_id.as_deref().is_some_and(|f| !f.is_empty()))
            })
            .collect()
    }

    /// The accounts that have a family (FOCI) refresh token: `Account` entries at one of
    /// `environments` with a family refresh token of the same `home_account_id` at one of
    /// `environments`, one per `home_account_id` (the first in document order). What
    /// SharedTokenCacheCredential chooses from. Linear in the document: one pass over the
    /// refresh tokens, one over the accounts.
    pub(crate) fn accounts_with_family_refresh_tokens(
        &self,
        environments: &[&str],
    ) -> Vec<Account> {
        let holders: HashSet<String> = self
            .entries(REFRESH_TOKEN)
            .iter()
            .filter_map(|(name, e)| refresh_token_view(name.text(), e).ok())
            .filter(|rt| {
                env_matches(environments, &rt.environment)
                    && rt.family_id.as_deref().is_some_and(|f| !f.is_empty())
            })
            .map(|rt| rt.home_account_id)
            .collect();
        let mut seen = HashSet::new();
        self.accounts()
            .into_iter()
            .filter(|a| {
                env_matches(environments, &a.environment)
                    && holders.contains(&a.home_account_id)
                    && seen.insert(a.home_account_id.clone())
            })
            .collect()
    }

    /// Records a token endpoint answer the way msal does, and returns the account's
    /// `home_account_id` (`None` for app-only answers, and for answers that name an account
    /// we cannot read — those are not cached).
    ///
    /// * The account: `uid.utid` from `client_info`; without client_info, the id token's `sub`
    ///   (msal's ADFS rule). Neither client_info nor id token: app-only.
    /// * **AccessToken**: a new entry replacing, whole and at its position, any entry with the
    ///   same key (msal replaces the whole entry: unknown fields of the old one are dropped).
    ///   `home_account_id` is `null` for app-only tokens. `target` is the scopes sorted and
    ///   space-joined (msal sorts them).
    /// * **Account** (not for app-only): `username` from the id token's `preferred_username`,
    ///   else `upn`, else `email`, else `""`; `local_account_id` from `oid`, else `sub`, else
    ///   the client_info `uid`; `authority_type` `ADFS` for realm `adfs`, else `MSSTS`. An
    ///   existing entry with the same key gets these six fields and keeps its others
    ///   (`account_source`). When the username would be `""` and an Account with the same
    ///   `home_account_id` exists in any realm, nothing is written (see the module docs).
    /// * **IdToken** (if the answer has one, not for app-only): replaces the same key.
    /// * **RefreshToken** (if the answer has one, not for app-only — a refresh token without
    ///   an account could never be found again, so it is not recorded): when `replaces` names
    ///   an existing entry of the same account, that entry is updated in place as msal does on
    ///   rotation — new `secret`, `last_modification_time`, and `family_id` if the answer has
    ///   `foci`; its key, `target` and other fields stay — and no other entry is written.
    ///   Otherwise (no `replaces`, or its entry is gone) a new entry replaces the one with the
    ///   same key; a `replaces` entry of another account is removed.
    /// * **AppMetadata**: always, replacing the same key; `family_id` when `foci` is present.
    pub(crate) fn add_token_response(&mut self, r: &NewTokens<'_>) -> Option<String> {
        let claims = r.id_token.and_then(|t| jwt_claims(t.expose_secret()));
        let ids = r.client_info.and_then(client_info_ids);
        let (home_account_id, uid) = match (&ids, &claims) {
            (Some((uid, utid)), _) => (Some(format!("{uid}.{utid}")), Some(uid.clone())),
            (None, Some(c)) => match claim(c, "sub") {
                Some(sub) => (Some(sub.to_owned()), Some(sub.to_owned())),
                None => (None, None),
            },
            (None, None) => (None, None),
        };
        let app_only = r.client_info.is_none() && r.id_token.is_none();
        let cacheable = app_only || home_account_id.is_some();

        let mut scopes: Vec<&str> = r.scopes.iter().map(String::as_str).collect();
        scopes.sort_unstable();
        let target = scopes.join(" ");
        let now = r.cached_at.to_string();

        if cacheable {
            let mut fields = vec![
                ("credential_type", RawJson::string("AccessToken")),
                ("secret", RawJson::string(r.access_token.expose_secret())),
                (
                    "home_account_id",
                    home_account_id
                        .as_deref()
                        .map_or_else(RawJson::null, RawJson::string),
                ),
                ("environment", RawJson::string(r.environment)),
                ("client_id", RawJson::string(r.client_id)),
                ("target", RawJson::string(&target)),
                ("realm", RawJson::string(r.realm)),
                ("token_type", RawJson::string(r.token_type)),
                ("cached_at", RawJson::string(&now)),
                ("expires_on", RawJson::string(&r.expires_on.to_string())),
                (
                    "extended_expires_on",
                    RawJson::string(&r.extended_expires_on.to_string()),
                ),
            ];
            if let Some(refresh_on) = r.refresh_on {
                fields.push(("refresh_on", RawJson::string(&refresh_on.to_string())));
            }
            let key = access_token_key(
                home_account_id.as_deref().unwrap_or(""),
                r.environment,
                r.client_id,
                r.realm,
                &target,
            );
            self.put_entry(ACCESS_TOKEN, key, Entry::with_fields(fields));
        }

        if let (Some(hid), Some(uid)) = (home_account_id.as_deref(), uid.as_deref()) {
            self.add_account(r, hid, uid, claims.as_ref());
            if let Some(id_token) = r.id_token {
                let entry = Entry::with_fields(vec![
                    ("credential_type", RawJson::string("IdToken")),
                    ("secret", RawJson::string(id_token.expose_secret())),
                    ("home_account_id", RawJson::string(hid)),
                    ("environment", RawJson::string(r.environment)),
                    ("realm", RawJson::string(r.realm)),
                    ("client_id", RawJson::string(r.client_id)),
                ]);
                let key = id_token_key(hid, r.environment, r.client_id, r.realm);
                self.put_entry(ID_TOKEN, key, entry);
            }
            if let Some(refresh_token) = r.refresh_token {
                self.add_refresh_token(r, hid, refresh_token, &target, &now);
            }
        }

        let mut fields = vec![
            ("client_id", RawJson::string(r.client_id)),
            ("environment", RawJson::string(r.environment)),
        ];
        if let Some(foci) = r.foci {
            fields.push(("family_id", RawJson::string(foci)));
        }
        let key = app_metadata_key(r.environment, r.client_id);
        self.put_entry(APP_METADATA, key, Entry::with_fields(fields));

        if cacheable { home_account_id } else { None }
    }

    /// The Account part of [`add_token_response`](Self::add_token_response).
    fn add_account(
        &mut self,
        r: &NewTokens<'_>,
        hid: &str,
        uid: &str,
        claims: Option<&Map<String, Value>>,
    ) {
        let username = claims
            .and_then(|c| {
                claim(c, "preferred_username")
                    .or_else(|| claim(c, "upn"))
                    .or_else(|| claim(c, "email"))
            })
            .unwrap_or("");
        if username.is_empty()
            && self
                .entries(ACCOUNT)
                .iter()
                .any(|(_, e)| e.lenient_str("home_account_id").as_deref() == Some(hid))
        {
            return;
        }
        let local_account_id = claims
            .and_then(|c| claim(c, "oid").or_else(|| claim(c, "sub")))
            .unwrap_or(uid);
        let authority_type = if r.realm.eq_ignore_ascii_case("adfs") {
            "ADFS"
        } else {
            "MSSTS"
        };
        let fields = [
            ("home_account_id", hid),
            ("environment", r.environment),
            ("realm", r.realm),
            ("local_account_id", local_account_id),
            ("username", username),
            ("authority_type", authority_type),
        ];
        let key = account_key(hid, r.environment, r.realm);
        let Some(entries) = self.entries_mut(ACCOUNT) else {
            return;
        };
        match entries.iter_mut().find(|(name, _)| name.text() == key) {
            Some((_, existing)) => {
                for (name, value) in fields {
                    existing.set(name, RawJson::string(value));
                }
            }
            None => entries.push((
                Name::new(key),
                Entry::with_fields(
                    fields
                        .into_iter()
                        .map(|(n, v)| (n, RawJson::string(v)))
                        .collect(),
                ),
            )),
        }
    }

    /// The RefreshToken part of [`add_token_response`](Self::add_token_response).
    fn add_refresh_token(
        &mut self,
        r: &NewTokens<'_>,
        hid: &str,
        refresh_token: &Secret,
        target: &str,
        now: &str,
    ) {
        if let Some(old_key) = r.replaces {
            let Some(entries) = self.entries_mut(REFRESH_TOKEN) else {
                return;
            };
            if let Some(i) = entries.iter().position(|(name, _)| name.text() == old_key) {
                let same_account = entries
                    .get(i)
                    .and_then(|(_, e)| e.lenient_str("home_account_id"))
                    .is_some_and(|h| h == hid);
                if same_account {
                    if let Some((_, entry)) = entries.get_mut(i) {
                        entry.set("secret", RawJson::string(refresh_token.expose_secret()));
                        entry.set("last_modification_time", RawJson::string(now));
                        if let Some(foci) = r.foci {
                            entry.set("family_id", RawJson::string(foci));
                        }
                    }
                    return;
                }
                entries.remove(i);
            }
        }
        let mut fields = vec![
            ("credential_type", RawJson::string("RefreshToken")),
            ("secret", RawJson::string(refresh_token.expose_secret())),
            ("home_account_id", RawJson::string(hid)),
            ("environment", RawJson::string(r.environment)),
            ("client_id", RawJson::string(r.client_id)),
            ("target", RawJson::string(target)),
            ("last_modification_time", RawJson::string(now)),
        ];
        if let Some(foci) = r.foci {
            fields.push(("family_id", RawJson::string(foci)));
        }
        let key = refresh_token_key(hid, r.environment, r.client_id, target);
        self.put_entry(REFRESH_TOKEN, key, Entry::with_fields(fields));
    }

    /// Removes a refresh token (after `invalid_grant`). Whether it was there.
    pub(crate) fn remove_refresh_token(&mut self, key: &str) -> bool {
        self.remove_entry(REFRESH_TOKEN, key)
    }

    /// Removes an access token. Whether it was there.
    pub(crate) fn remove_access_token(&mut self, key: &str) -> bool {
        self.remove_entry(ACCESS_TOKEN, key)
    }

    /// Removes the access tokens whose `expires_on` is at or before `now_unix`; entries whose
    /// `expires_on` cannot be read are left alone. Returns how many were removed.
    pub(crate) fn remove_expired_access_tokens(&mut self, now_unix: u64) -> usize {
        let Some((_, Body::Entries(entries))) = self
            .sections
            .iter_mut()
            .find(|(name, _)| name.text() == ACCESS_TOKEN)
        else {
            return 0;
        };
        let before = entries.len();
        entries.retain(|(_, e)| e.req_time("expires_on").map_or(true, |t| t > now_unix));
        before.saturating_sub(entries.len())
    }
}

/// Whether `environment` is one of `accepted` (ASCII-case-insensitive).
fn env_matches(accepted: &[&str], environment: &str) -> bool {
    accepted.iter().any(|e| e.eq_ignore_ascii_case(environment))
}

/// The error for a document serde_json refused: a syntax error, or a top level that is not an
/// object. A document that is both reports its syntax error, as a full validation would.
fn top_level_error(src: &str, error: &serde_json::Error) -> DocumentError {
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
fn parse_entries(
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

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    const SAMPLE: &[u8] = include_bytes!("../../tests/data/msal-cache-sample.json");
    const TWO_ACCOUNTS: &[u8] = include_bytes!("../../tests/data/msal-two-accounts.json");
    const APP_ONLY: &[u8] = include_bytes!("../../tests/data/msal-app-only.json");
    const AZID_AFTER_REFRESH: &[u8] = include_bytes!("../../tests/data/azid-after-refresh.json");

    const CLI: &str = "04b07795-8ddb-461a-bbee-02f9e1bf7b46";
    const ALICE_UID: &str = "a8ff77e5-b945-5754-a190-f18b6df68148";
    const ALICE_UTID: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
    const ALICE: &str = "a8ff77e5-b945-5754-a190-f18b6df68148.72f988bf-86f1-41af-91ab-2d7cd011db47";
    const BOB_UID: &str = "61ace6e2-511c-512d-9718-ced2ee5434fb";
    const BOB_UTID: &str = "f8cdef31-a31e-4b4a-93e4-5f571e91255a";
    const PUBLIC: &[&str] = &[
        "login.microsoftonline.com",
        "login.windows.net",
        "login.microsoft.com",
        "sts.windows.net",
    ];

    fn text(doc: &CacheDocument) -> String {
        String::from_utf8(doc.to_vec()).expect("utf-8")
    }

    fn parse(s: &str) -> CacheDocument {
        CacheDocument::parse(s.as_bytes()).expect("parses")
    }

    fn client_info(uid: &str, utid: &str) -> String {
        URL_SAFE_NO_PAD.encode(format!(r#"{{"uid":"{uid}","utid":"{utid}"}}"#))
    }

    fn jwt(claims: &Value) -> Secret {
        Secret::new(format!(
            "eyJhbGciOiJub25lIn0.{}.sig",
            URL_SAFE_NO_PAD.encode(claims.to_string())
        ))
    }

    fn scopes(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| (*s).to_owned()).collect()
    }

    /// Owns what a `NewTokens` borrows.
    struct Answer {
        client_id: String,
        environment: String,
        realm: String,
        scopes: Vec<String>,
        access_token: Secret,
        token_type: String,
        cached_at: u64,
        lifetime: u64,
        refresh_on: Option<u64>,
        refresh_token: Option<Secret>,
        id_token: Option<Secret>,
        client_info: Option<String>,
        foci: Option<String>,
        replaces: Option<String>,
    }

    impl Answer {
        fn app(client_id: &str, environment: &str, realm: &str, scope: &[&str]) -> Self {
            Self {
                client_id: client_id.to_owned(),
                environment: environment.to_owned(),
                realm: realm.to_owned(),
                scopes: scopes(scope),
                access_token: Secret::new("SECRET-app-access-token"),
                token_type: "Bearer".to_owned(),
                cached_at: 1_795_324_128,
                lifetime: 3600,
                refresh_on: None,
                refresh_token: None,
                id_token: None,
                client_info: None,
                foci: None,
                replaces: None,
            }
        }

        fn user(
            (uid, utid): (&str, &str),
            username: &str,
            environment: &str,
            realm: &str,
            scope: &[&str],
        ) -> Self {
            let mut a = Self::app(CLI, environment, realm, scope);
            a.access_token = Secret::new("SECRET-user-access-token");
            a.refresh_token = Some(Secret::new("SECRET-user-refresh-token"));
            a.id_token = Some(jwt(&serde_json::json!({
                "sub": uid, "oid": uid, "tid": utid, "preferred_username": username,
            })));
            a.client_info = Some(client_info(uid, utid));
            a.foci = Some("1".to_owned());
            a
        }

        fn tokens(&self) -> NewTokens<'_> {
            NewTokens {
                client_id: &self.client_id,
                environment: &self.environment,
                realm: &self.realm,
                scopes: &self.scopes,
                access_token: &self.access_token,
                token_type: &self.token_type,
                cached_at: self.cached_at,
                expires_on: self.cached_at + self.lifetime,
                extended_expires_on: self.cached_at + self.lifetime,
                refresh_on: self.refresh_on,
                refresh_token: self.refresh_token.as_ref(),
                id_token: self.id_token.as_ref(),
                client_info: self.client_info.as_deref(),
                foci: self.foci.as_deref(),
                replaces: self.replaces.as_deref(),
            }
        }
    }

    fn at_by_key(doc: &CacheDocument, key: &str) -> CachedAccessToken {
        doc.access_tokens()
            .into_iter()
            .find(|t| t.key == key)
            .expect("access token")
    }

    fn rt_by_key(doc: &CacheDocument, key: &str) -> RefreshToken {
        doc.refresh_tokens()
            .into_iter()
            .find(|t| t.key == key)
            .expect("refresh token")
    }

    /// The text of the entry `key` (its key line to its closing brace) as it appears in `doc`.
    fn entry_text<'a>(doc: &'a str, key: &str) -> &'a str {
        let start = doc.find(&format!("        \"{key}\": {{")).expect("entry");
        let end = start + doc[start..].find("\n        }").expect("end of entry") + 10;
        &doc[start..end]
    }

    // ---- round trips ------------------------------------------------------------------------

    #[test]
    fn round_trip_of_the_design_sample_is_byte_for_byte() {
        assert_eq!(CacheDocument::parse(SAMPLE).unwrap().to_vec(), SAMPLE);
    }

    #[test]
    fn round_trip_of_msal_two_accounts_is_byte_for_byte() {
        assert_eq!(
            CacheDocument::parse(TWO_ACCOUNTS).unwrap().to_vec(),
            TWO_ACCOUNTS
        );
    }

    #[test]
    fn round_trip_of_msal_app_only_is_byte_for_byte() {
        assert_eq!(CacheDocument::parse(APP_ONLY).unwrap().to_vec(), APP_ONLY);
    }

    #[test]
    fn round_trip_of_azure_identity_after_refresh_is_byte_for_byte() {
        let doc = CacheDocument::parse(AZID_AFTER_REFRESH).unwrap();
        assert_eq!(doc.to_vec(), AZID_AFTER_REFRESH);
        assert!(doc.skipped().is_empty(), "{:?}", doc.skipped());
    }

    #[test]
    fn empty_and_whitespace_input_is_an_empty_document_written_as_braces() {
        for input in [&b""[..], b"  \n\t ", b"{}", b"\xEF\xBB\xBF{}"] {
            let doc = CacheDocument::parse(input).unwrap();
            assert!(doc.is_empty());
            assert_eq!(doc.to_vec(), b"{}");
        }
        assert_eq!(CacheDocument::empty().to_vec(), b"{}");
        let doc = parse("{\n    \"AccessToken\": {},\n    \"Other\": {}\n}");
        assert!(!doc.is_empty(), "an unknown section is content");
        assert_eq!(
            text(&doc),
            "{\n    \"AccessToken\": {},\n    \"Other\": {}\n}"
        );
    }

    #[test]
    fn keys_keep_their_escapes_and_known_sections_their_position() {
        let src = "{\n    \"Extra\\u00e9\": 1,\n    \"AppMetadata\": {\n        \"appmetadata-h\\/x-c\": {\n            \"client_id\": \"c\",\n            \"environment\": \"h\\/x\",\n            \"n\": -0\n        }\n    },\n    \"zz\": [\n        1\n    ]\n}";
        let doc = parse(src);
        assert_eq!(text(&doc), src);
        let md = doc.app_metadata();
        assert_eq!(md.len(), 1);
        assert_eq!(md[0].key, "appmetadata-h/x-c");
        assert_eq!(md[0].environment, "h/x");
    }

    #[test]
    fn compact_documents_are_rewritten_in_msal_layout() {
        let doc = parse(
            r#"{"AppMetadata":{"appmetadata-e-c":{"client_id":"c","environment":"e","x":{"a":[1,2]}}},"Other":{"k":true}}"#,
        );
        assert_eq!(
            text(&doc),
            "{\n    \"AppMetadata\": {\n        \"appmetadata-e-c\": {\n            \"client_id\": \"c\",\n            \"environment\": \"e\",\n            \"x\": {\"a\":[1,2]}\n        }\n    },\n    \"Other\": {\"k\":true}\n}"
        );
    }

    #[test]
    fn duplicate_keys_resolve_like_python_last_value_first_position() {
        let doc = parse(
            r#"{"AppMetadata": {"k": {"client_id": "a", "environment": "e"}, "j": {"client_id": "j", "environment": "e"}, "k": {"client_id": "b", "environment": "e"}}}"#,
        );
        let md = doc.app_metadata();
        assert_eq!(md.len(), 2);
        assert_eq!((md[0].key.as_str(), md[0].client_id.as_str()), ("k", "b"));
        assert_eq!(md[1].key, "j");
    }

    // ---- exact preservation across a change ------------------------------------------------

    const WITH_UNKNOWNS: &str = r#"{
    "AccessToken": {
        "k1": {
            "credential_type": "AccessToken",
            "secret": "SECRET-k1",
            "home_account_id": null,
            "environment": "login.microsoftonline.com",
            "client_id": "c",
            "target": "https://x/.default",
            "realm": "contoso",
            "token_type": "Bearer",
            "cached_at": "100",
            "x_ext": {
                "note": "caf\u00e9 \ud83d\ude00 café 😀 \/",
                "numbers": [1.0e3, -0, 123456789012345678901234567890, 1E-7, -0.0],
                "deep": {"compact":true,"nested":[{}, [ ]]},
                "empty": {}
            },
            "expires_on": 9999999999,
            "extended_expires_on": "9999999999"
        }
    },
    "Extra": {
        "ext-entry": {
            "b": [
                1,
                2.50
            ],
            "t": "\u00fc\/ü"
        }
    },
    "AppMetadata": {}
}"#;

    #[test]
    fn unknown_sections_fields_and_entries_survive_add_token_response_byte_for_byte() {
        let mut doc = parse(WITH_UNKNOWNS);
        assert_eq!(text(&doc), WITH_UNKNOWNS, "round trip first");
        let answer = Answer::user(
            (ALICE_UID, ALICE_UTID),
            "alice@contoso.com",
            "login.microsoftonline.com",
            "contoso",
            &["https://y/.default"],
        );
        assert_eq!(
            doc.add_token_response(&answer.tokens()).as_deref(),
            Some(ALICE)
        );
        let out = text(&doc);

        // the untouched entry (with its nested unknown field) and the unknown section,
        // byte for byte
        assert!(out.contains(entry_text(WITH_UNKNOWNS, "k1")));
        let extra_start = WITH_UNKNOWNS.find("    \"Extra\": {").unwrap();
        let extra_end = WITH_UNKNOWNS.find("    \"AppMetadata\"").unwrap();
        let extra = &WITH_UNKNOWNS[extra_start..extra_end];
        assert!(out.contains(extra), "{out}");
        // the unknown field is still readable by the views and the entry still typed
        assert_eq!(at_by_key(&doc, "k1").expires_on, 9_999_999_999);

        // section order: existing ones in place, new ones appended as msal does
        let order: Vec<usize> = [
            "\"AccessToken\"",
            "\"Extra\"",
            "\"AppMetadata\"",
            "\"Account\"",
            "\"IdToken\"",
            "\"RefreshToken\"",
        ]
        .iter()
        .map(|s| out.find(&format!("\n    {s}: ")).expect(s))
        .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{out}");

        // the result reads back to the same bytes
        assert_eq!(text(&parse(&out)), out);
    }

    #[test]
    fn removing_an_entry_keeps_its_neighbours_byte_for_byte() {
        let src = std::str::from_utf8(TWO_ACCOUNTS).unwrap();
        let mut doc = parse(src);
        let bob_at = doc.access_tokens()[1].key.clone();
        let alice_at = doc.access_tokens()[0].key.clone();
        assert!(doc.remove_access_token(&bob_at));
        assert!(!doc.remove_access_token(&bob_at));
        let out = text(&doc);
        let expected = src.replacen(&format!(",\n{}", entry_text(src, &bob_at)), "", 1);
        assert_eq!(out, expected);
        assert!(out.contains(entry_text(src, &alice_at)));
    }

    // ---- malformed documents ---------------------------------------------------------------

    fn parse_error(input: &[u8]) -> String {
        CacheDocument::parse(input)
            .expect_err("must not parse")
            .to_string()
    }

    #[test]
    fn malformed_documents_give_errors_that_name_the_problem_without_secrets() {
        let not_json = parse_error(b"{\"AccessToken\": SECRET-bare}");
        assert!(
            not_json.starts_with("the token cache is not valid JSON: "),
            "{not_json}"
        );
        assert!(not_json.contains("line 1 column"), "{not_json}");

        let array = parse_error(b"[{\"secret\": \"SECRET-in-array\"}]");
        assert_eq!(array, "the top level is not a JSON object");
        assert_eq!(
            parse_error(b"\"SECRET-top\""),
            "the top level is not a JSON object"
        );

        let string = parse_error(b"{\n    \"AccessToken\": \"SECRET-string\"\n}");
        assert_eq!(
            string,
            "section \"AccessToken\" is not a JSON object of entries (line 2 column 20)"
        );
        let null = parse_error(b"{\"RefreshToken\": null}");
        assert!(
            null.starts_with("section \"RefreshToken\" is not a JSON object"),
            "{null}"
        );

        let number = parse_error(b"{\"IdToken\": {\"k-1\": 42, \"k-2\": \"SECRET-x\"}}");
        assert_eq!(
            number,
            "section \"IdToken\" entry \"k-1\": not a JSON object (line 1 column 21)"
        );

        let truncated = parse_error(&SAMPLE[..SAMPLE.len() / 2]);
        assert!(truncated.contains("EOF while parsing"), "{truncated}");
        assert!(truncated.contains("line "), "{truncated}");

        let not_utf8 = parse_error(b"{\"a\": \"\xff\"}");
        assert_eq!(
            not_utf8,
            "the token cache is not UTF-8 text (invalid byte at offset 7)"
        );

        for message in [&not_json, &array, &string, &null, &number, &truncated] {
            assert!(!message.contains("SECRET"), "{message}");
            assert!(!message.contains("fake-"), "{message}");
        }
    }

    #[test]
    fn parse_never_panics_on_truncated_or_mutated_documents() {
        for end in 0..=SAMPLE.len() {
            let _ = CacheDocument::parse(&SAMPLE[..end]);
        }
        const SMALL: &[u8] = br#"{"AccessToken": {"k": {"secret": "s", "home_account_id": null, "environment": "e", "client_id": "c", "realm": "r", "target": "t", "cached_at": "1", "expires_on": 2}}, "X": [{"y": "\u00e9"}], "Account": {"a": {"home_account_id": "h", "environment": "e", "realm": "r"}}, "IdToken": {}, "RefreshToken": {"r": {"secret": "s", "home_account_id": "h", "environment": "e", "client_id": "c", "family_id": "1"}}, "AppMetadata": {"m": {"client_id": "c", "environment": "e"}}}"#;
        assert_eq!(CacheDocument::parse(SMALL).unwrap().skipped(), []);
        for i in 0..SMALL.len() {
            for b in [
                b'{', b'}', b'[', b'"', b'\\', b',', b':', b'1', b' ', 0xff, 0,
            ] {
                let mut bytes = SMALL.to_vec();
                bytes[i] = b;
                if let Ok(doc) = CacheDocument::parse(&bytes) {
                    let out = doc.to_vec();
                    let again = CacheDocument::parse(&out).expect("our output parses");
                    assert_eq!(again.to_vec(), out);
                    let _ = (doc.accounts(), doc.access_tokens(), doc.refresh_tokens());
                    let _ = (doc.id_tokens(), doc.app_metadata(), doc.skipped());
                }
            }
        }
    }

    // ---- views -------------------------------------------------------------------------------

    #[test]
    fn views_read_the_real_files() {
        let doc = CacheDocument::parse(AZID_AFTER_REFRESH).unwrap();
        let accounts = doc.accounts();
        assert_eq!(accounts.len(), 3);
        assert_eq!(accounts[0].username, "alice@contoso.com");
        assert_eq!(accounts[0].local_account_id.as_deref(), Some(ALICE_UID));
        assert_eq!(accounts[2].realm, "organizations");
        assert_eq!(accounts[2].username, "");
        assert_eq!(accounts[2].local_account_id, None);
        let rts = doc.refresh_tokens();
        assert_eq!(rts.len(), 2);
        assert_eq!(rts[0].family_id.as_deref(), Some("1"));
        assert_eq!(rts[0].last_modification_time, Some(1_795_324_146));
        assert_eq!(rts[0].target, "https://resource.test/.default");
        assert_eq!(doc.access_tokens().len(), 3);
        assert_eq!(doc.id_tokens().len(), 2);
        assert_eq!(doc.app_metadata()[0].family_id.as_deref(), Some("1"));

        let app = CacheDocument::parse(APP_ONLY).unwrap();
        let at = &app.access_tokens()[0];
        assert_eq!(at.home_account_id, None);
        assert_eq!(at.expires_on, 1_795_327_728);
        assert_eq!(at.extended_expires_on, Some(1_795_327_728));
        assert_eq!(at.refresh_on, None);
        assert_eq!(app.app_metadata()[0].family_id, None);
    }

    #[test]
    fn views_skip_odd_entries_and_report_why() {
        let doc = parse(
            r#"{
    "AccessToken": {
        "good-number-times": {"secret": "SECRET-1", "home_account_id": "", "environment": "e", "client_id": "c", "realm": "r", "target": "t", "cached_at": 10, "expires_on": 20.0, "refresh_on": "soon"},
        "no-expiry": {"secret": "SECRET-2", "environment": "e", "client_id": "c", "realm": "r", "target": "t", "cached_at": "10"},
        "word-expiry": {"secret": "SECRET-3", "environment": "e", "client_id": "c", "realm": "r", "target": "t", "cached_at": "10", "expires_on": "SECRET-soon"},
        "negative": {"secret": "SECRET-4", "environment": "e", "client_id": "c", "realm": "r", "target": "t", "cached_at": "10", "expires_on": -5}
    },
    "RefreshToken": {
        "numeric-secret": {"secret": 12345, "home_account_id": "h", "environment": "e", "client_id": "c"},
        "minimal": {"secret": "SECRET-5", "home_account_id": null, "environment": "e", "client_id": "c", "family_id": 1, "last_modification_time": "x"}
    },
    "Account": {
        "no-hid": {"environment": "e", "realm": "r", "username": "u"},
        "ok": {"home_account_id": "h", "environment": "e", "realm": "r"}
    },
    "IdToken": {"array": {"secret": ["SECRET-6"], "environment": "e", "realm": "r", "client_id": "c"}},
    "AppMetadata": {"ok": {"client_id": "c", "environment": "e", "family_id": null}}
}"#,
        );
        let ats = doc.access_tokens();
        assert_eq!(ats.len(), 1);
        assert_eq!(ats[0].key, "good-number-times");
        assert_eq!((ats[0].cached_at, ats[0].expires_on), (10, 20));
        assert_eq!(ats[0].home_account_id, None, "empty id = app-only");
        assert_eq!(ats[0].token_type, "Bearer");
        assert_eq!(
            ats[0].refresh_on, None,
            "a malformed optional time is ignored"
        );

        let rts = doc.refresh_tokens();
        assert_eq!(rts.len(), 1);
        assert_eq!(rts[0].home_account_id, "");
        assert_eq!(
            (rts[0].family_id.clone(), rts[0].last_modification_time),
            (None, None)
        );
        assert_eq!(rts[0].target, "");

        let accounts = doc.accounts();
        assert_eq!(accounts.len(), 1);
        assert_eq!(
            (
                accounts[0].username.as_str(),
                accounts[0].local_account_id.clone()
            ),
            ("", None)
        );
        assert!(doc.id_tokens().is_empty());
        assert_eq!(doc.app_metadata().len(), 1);

        let skipped: Vec<String> = doc.skipped().iter().map(ToString::to_string).collect();
        assert_eq!(
            skipped,
            [
                "section \"AccessToken\" entry \"no-expiry\": field \"expires_on\" is missing",
                "section \"AccessToken\" entry \"word-expiry\": field \"expires_on\" is not a decimal string",
                "section \"AccessToken\" entry \"negative\": field \"expires_on\" is out of range",
                "section \"RefreshToken\" entry \"numeric-secret\": field \"secret\" is not a string",
                "section \"Account\" entry \"no-hid\": field \"home_account_id\" is missing",
                "section \"IdToken\" entry \"array\": field \"secret\" is not a string",
            ]
        );
        assert!(skipped.iter().all(|s| !s.contains("SECRET")));
    }

    #[test]
    fn debug_of_every_view_and_of_the_document_contains_no_secret() {
        let mut doc = CacheDocument::parse(TWO_ACCOUNTS).unwrap();
        let answer = Answer::app("app", "login.microsoftonline.com", "t", &["s"]);
        doc.add_token_response(&answer.tokens());
        let debug = format!(
            "{:?} {:?} {:?} {:?} {:?} {:?} {:?}",
            doc,
            doc.accounts(),
            doc.refresh_tokens(),
            doc.access_tokens(),
            doc.id_tokens(),
            doc.app_metadata(),
            answer.tokens(),
        );
        assert!(debug.contains("Secret(***)"));
        assert!(!debug.contains("SECRET"), "{debug}");
        assert!(!debug.contains("eyJ"), "{debug}");
        assert!(
            !debug.contains("_b4gnrSzAKjeOq77H6kItP_VAkEARwYTwzYAQMmB9Vv"),
            "{debug}"
        );
    }

    // ---- searches ----------------------------------------------------------------------------

    fn search_fixture() -> CacheDocument {
        let mut doc = CacheDocument::empty();
        let alice = (ALICE_UID, ALICE_UTID);
        for answer in [
            Answer::user(
                alice,
                "alice@contoso.com",
                "login.microsoftonline.com",
                "contoso",
                &[
                    "https://graph.microsoft.com/User.Read",
                    "https://graph.microsoft.com/Mail.Read",
                ],
            ),
            Answer::app(
                "app-1",
                "login.windows.net",
                "contoso",
                &["https://graph.microsoft.com/.default"],
            ),
            Answer::app(
                "app-1",
                "login.windows.net",
                "contoso",
                &["https://graph.microsoft.com/User.Read"],
            ),
            Answer::user(
                alice,
                "alice@contoso.com",
                "login.chinacloudapi.cn",
                "contoso",
                &["https://graph.microsoft.com/User.Read"],
            ),
            {
                let mut pop = Answer::app(
                    "app-1",
                    "login.windows.net",
                    "contoso",
                    &["https://pop/.default"],
                );
                pop.token_type = "pop".to_owned();
                pop
            },
        ] {
            doc.add_token_response(&answer.tokens());
        }
        assert_eq!(doc.access_tokens().len(), 5);
        doc
    }

    fn find(doc: &CacheDocument, q: &AccessTokenQuery<'_>) -> Vec<String> {
        doc.find_access_tokens(q)
            .into_iter()
            .map(|t| format!("{}|{}|{}", t.environment, t.client_id, t.target))
            .collect()
    }

    #[test]
    fn find_access_tokens_matches_requested_scopes_as_a_case_insensitive_subset() {
        let doc = search_fixture();
        let mut q = AccessTokenQuery {
            home_account_id: Some(Some(ALICE)),
            environments: PUBLIC,
            client_id: Some(CLI),
            realm: Some("CONTOSO"),
            scopes: &scopes(&["https://graph.microsoft.com/user.read"]),
        };
        let both = "login.microsoftonline.com|04b07795-8ddb-461a-bbee-02f9e1bf7b46|https://graph.microsoft.com/Mail.Read https://graph.microsoft.com/User.Read";
        assert_eq!(find(&doc, &q), [both]);
        let s = scopes(&[
            "HTTPS://GRAPH.MICROSOFT.COM/MAIL.READ",
            "https://graph.microsoft.com/User.Read",
        ]);
        q.scopes = &s;
        assert_eq!(find(&doc, &q), [both]);
        let s = scopes(&[
            "https://graph.microsoft.com/User.Read",
            "https://graph.microsoft.com/Files.Read",
        ]);
        q.scopes = &s;
        assert!(find(&doc, &q).is_empty());
        let s = scopes(&["https://graph.microsoft.com/User"]);
        q.scopes = &s;
        assert!(find(&doc, &q).is_empty(), "whole scopes only, no prefixes");
        q.scopes = &[];
        assert_eq!(find(&doc, &q), [both], "no scopes: any target");
    }

    #[test]
    fn find_access_tokens_separates_app_only_and_account_tokens() {
        let doc = search_fixture();
        let s = scopes(&["https://graph.microsoft.com/User.Read"]);
        let mut q = AccessTokenQuery {
            home_account_id: Some(None),
            environments: PUBLIC,
            client_id: None,
            realm: None,
            scopes: &s,
        };
        assert_eq!(
            find(&doc, &q),
            ["login.windows.net|app-1|https://graph.microsoft.com/User.Read"]
        );
        q.home_account_id = Some(Some(ALICE));
        assert_eq!(find(&doc, &q).len(), 1);
        assert!(find(&doc, &q)[0].starts_with("login.microsoftonline.com|04b07795"));
        q.home_account_id = Some(Some("someone.else"));
        assert!(find(&doc, &q).is_empty());
        q.home_account_id = None;
        assert_eq!(find(&doc, &q).len(), 2);
        q.client_id = Some("app-1");
        assert_eq!(find(&doc, &q).len(), 1);
        q.realm = Some("fabrikam");
        assert!(find(&doc, &q).is_empty());
    }

    #[test]
    fn find_access_tokens_accepts_host_aliases_and_skips_non_bearer_tokens() {
        let doc = search_fixture();
        let mut q = AccessTokenQuery {
            home_account_id: None,
            environments: &["LOGIN.WINDOWS.NET"],
            client_id: Some("app-1"),
            realm: Some("contoso"),
            scopes: &[],
        };
        assert_eq!(find(&doc, &q).len(), 2, "pop token excluded");
        q.environments = &["login.chinacloudapi.cn", "login.partner.microsoftonline.cn"];
        q.client_id = None;
        assert_eq!(
            find(&doc, &q),
            [
                "login.chinacloudapi.cn|04b07795-8ddb-461a-bbee-02f9e1bf7b46|https://graph.microsoft.com/User.Read"
            ]
        );
        q.environments = &[];
        assert!(find(&doc, &q).is_empty(), "no accepted host, no match");
        assert_eq!(
            doc.access_tokens()
                .iter()
                .filter(|t| t.token_type == "pop")
                .count(),
            1,
            "the view still shows it"
        );
    }

    #[test]
    fn find_refresh_tokens_filters_family_tokens_clients_and_hosts_but_not_targets() {
        let mut doc = CacheDocument::empty();
        let alice = (ALICE_UID, ALICE_UTID);
        let foci = Answer::user(
            alice,
            "a@c",
            "login.microsoftonline.com",
            "contoso",
            &["https://a/.default"],
        );
        let mut own = Answer::user(
            alice,
            "a@c",
            "login.windows.net",
            "contoso",
            &["https://b/.default"],
        );
        own.client_id = "own-app".to_owned();
        own.foci = None;
        let mut bob = Answer::user(
            (BOB_UID, BOB_UTID),
            "b@f",
            "login.microsoftonline.com",
            "fabrikam",
            &["https://a/.default"],
        );
        bob.client_id = "own-app".to_owned();
        for a in [&foci, &own, &bob] {
            doc.add_token_response(&a.tokens());
        }
        let mut q = RefreshTokenQuery {
            home_account_id: ALICE,
            environments: PUBLIC,
            client_id: None,
            family_only: false,
        };
        let clients = |doc: &CacheDocument, q: &RefreshTokenQuery<'_>| -> Vec<String> {
            doc.find_refresh_tokens(q)
                .into_iter()
                .map(|t| t.client_id)
                .collect()
        };
        assert_eq!(clients(&doc, &q), [CLI, "own-app"]);
        q.family_only = true;
        assert_eq!(clients(&doc, &q), [CLI]);
        q.family_only = false;
        q.client_id = Some("own-app");
        assert_eq!(clients(&doc, &q), ["own-app"]);
        q.environments = &["login.microsoftonline.com"];
        assert!(clients(&doc, &q).is_empty());
        q.home_account_id = "nobody";
        q.client_id = None;
        assert!(clients(&doc, &q).is_empty());
    }

    // ---- recording answers -----------------------------------------------------------------

    /// The secrets of an msal file, so that our writer can be compared with msal's.
    fn secrets_of(doc: &CacheDocument, hid: &str) -> (Secret, Secret, Secret) {
        let at = doc
            .access_tokens()
            .into_iter()
            .find(|t| t.home_account_id.as_deref() == Some(hid))
            .unwrap();
        let rt = doc
            .refresh_tokens()
            .into_iter()
            .find(|t| t.home_account_id == hid)
            .unwrap();
        let idt = doc
            .id_tokens()
            .into_iter()
            .find(|t| t.home_account_id == hid)
            .unwrap();
        (at.secret, rt.secret, idt.secret)
    }

    #[test]
    fn a_user_grant_writes_what_msal_writes_apart_from_account_source() {
        let msal = CacheDocument::parse(TWO_ACCOUNTS).unwrap();
        let mut doc = CacheDocument::empty();
        for ((uid, utid), realm, cached_at) in [
            ((ALICE_UID, ALICE_UTID), "contoso", 1_795_324_123),
            ((BOB_UID, BOB_UTID), "fabrikam", 1_795_324_124),
        ] {
            let hid = format!("{uid}.{utid}");
            let (at, rt, idt) = secrets_of(&msal, &hid);
            let mut answer = Answer::user(
                (uid, utid),
                "unused",
                "127.0.0.1",
                realm,
                &["https://resource.test/.default"],
            );
            answer.access_token = at;
            answer.refresh_token = Some(rt);
            answer.id_token = Some(idt);
            answer.cached_at = cached_at;
            assert_eq!(doc.add_token_response(&answer.tokens()), Some(hid));
        }
        let expected = std::str::from_utf8(TWO_ACCOUNTS).unwrap().replace(
            ",\n            \"account_source\": \"authorization_code\"",
            "",
        );
        assert_eq!(text(&doc), expected);
    }

    #[test]
    fn an_app_only_grant_writes_exactly_what_msal_writes() {
        let msal = CacheDocument::parse(APP_ONLY).unwrap();
        let mut answer = Answer::app(
            "11111111-1111-1111-1111-111111111111",
            "127.0.0.1",
            "contoso",
            &["https://resource.test/.default"],
        );
        answer.access_token = msal.access_tokens()[0].secret.clone();
        let mut doc = CacheDocument::empty();
        assert_eq!(doc.add_token_response(&answer.tokens()), None);
        assert_eq!(doc.to_vec(), APP_ONLY);
    }

    #[test]
    fn a_refresh_without_id_token_updates_the_redeemed_token_in_place_and_adds_no_empty_account() {
        // What azure-identity did to msal-two-accounts.json (see azid-after-refresh.json),
        // minus its empty-username Account.
        let before = std::str::from_utf8(TWO_ACCOUNTS).unwrap();
        let azid = std::str::from_utf8(AZID_AFTER_REFRESH).unwrap();
        let azid_doc = parse(azid);
        let org_at_key = format!(
            "{ALICE}-127.0.0.1-accesstoken-{CLI}-organizations-https://other.test/.default"
        );
        let rt_key =
            format!("{ALICE}-127.0.0.1-refreshtoken-{CLI}--https://resource.test/.default");

        let mut doc = parse(before);
        let mut answer = Answer::user(
            (ALICE_UID, ALICE_UTID),
            "",
            "127.0.0.1",
            "organizations",
            &["https://other.test/.default"],
        );
        answer.access_token = at_by_key(&azid_doc, &org_at_key).secret;
        answer.refresh_token = Some(rt_by_key(&azid_doc, &rt_key).secret);
        answer.id_token = None;
        answer.cached_at = 1_795_324_146;
        answer.replaces = Some(rt_key.clone());
        assert_eq!(
            doc.add_token_response(&answer.tokens()).as_deref(),
            Some(ALICE)
        );

        let bob_at_key = doc.access_tokens()[1].key.clone();
        let bob_at = entry_text(before, &bob_at_key);
        let old_rt = rt_by_key(&parse(before), &rt_key);
        let expected = before
            .replacen(
                bob_at,
                &format!("{bob_at},\n{}", entry_text(azid, &org_at_key)),
                1,
            )
            .replacen(
                old_rt.secret.expose_secret(),
                rt_by_key(&azid_doc, &rt_key).secret.expose_secret(),
                1,
            )
            .replacen(
                "\"last_modification_time\": \"1795324123\"",
                "\"last_modification_time\": \"1795324146\"",
                1,
            );
        assert_eq!(text(&doc), expected);
        assert_eq!(doc.accounts().len(), 2);
        assert_eq!(doc.refresh_tokens().len(), 2);
    }

    #[test]
    fn rotation_with_the_same_key_updates_in_place_keeping_target_and_unknown_fields() {
        let src = std::str::from_utf8(TWO_ACCOUNTS).unwrap().replacen(
            "\"target\": \"https://resource.test/.default\",\n            \"last_modification_time\": \"1795324123\"",
            "\"target\": \"https://Resource.test/.default\",\n            \"x_custom\": [1, 2],\n            \"last_modification_time\": \"1795324123\"",
            1,
        );
        let rt_key =
            format!("{ALICE}-127.0.0.1-refreshtoken-{CLI}--https://resource.test/.default");
        let mut doc = parse(&src);
        let mut answer = Answer::user(
            (ALICE_UID, ALICE_UTID),
            "alice@contoso.com",
            "127.0.0.1",
            "contoso",
            &["https://resource.test/.default"],
        );
        answer.refresh_token = Some(Secret::new("SECRET-rotated"));
        answer.replaces = Some(rt_key.clone());
        answer.cached_at = 1_795_330_000;
        doc.add_token_response(&answer.tokens());
        let out = text(&doc);
        let entry = entry_text(&out, &rt_key);
        assert!(entry.contains("\"target\": \"https://Resource.test/.default\",\n            \"x_custom\": [1, 2],\n            \"last_modification_time\": \"1795330000\""), "{entry}");
        assert!(entry.contains("\"secret\": \"SECRET-rotated\""));
        assert_eq!(doc.refresh_tokens().len(), 2);
        assert_eq!(doc.refresh_tokens()[0].key, rt_key, "same position");
    }

    #[test]
    fn rotation_with_a_different_key_leaves_a_single_refresh_token_holding_the_new_secret() {
        let rt_key =
            format!("{ALICE}-127.0.0.1-refreshtoken-{CLI}--https://resource.test/.default");
        let mut doc = CacheDocument::parse(TWO_ACCOUNTS).unwrap();
        let old_secret = rt_by_key(&doc, &rt_key).secret;
        let mut answer = Answer::user(
            (ALICE_UID, ALICE_UTID),
            "alice@contoso.com",
            "127.0.0.1",
            "contoso",
            &["https://other.test/.default"],
        );
        answer.refresh_token = Some(Secret::new("SECRET-rotated"));
        answer.replaces = Some(rt_key.clone());
        doc.add_token_response(&answer.tokens());
        let alice_rts = doc.find_refresh_tokens(&RefreshTokenQuery {
            home_account_id: ALICE,
            environments: &["127.0.0.1"],
            client_id: None,
            family_only: false,
        });
        assert_eq!(alice_rts.len(), 1);
        assert_eq!(alice_rts[0].secret.expose_secret(), "SECRET-rotated");
        assert_eq!(alice_rts[0].key, rt_key, "updated in place, as msal does");
        assert_eq!(alice_rts[0].target, "https://resource.test/.default");
        assert!(!text(&doc).contains(old_secret.expose_secret()));
    }

    #[test]
    fn rotation_writes_a_new_entry_when_the_redeemed_one_is_gone_or_of_another_account() {
        let bob_rt = format!(
            "{BOB_UID}.{BOB_UTID}-127.0.0.1-refreshtoken-{CLI}--https://resource.test/.default"
        );
        let alice_rt =
            format!("{ALICE}-127.0.0.1-refreshtoken-{CLI}--https://resource.test/.default");
        let new_key = format!("{ALICE}-127.0.0.1-refreshtoken-{CLI}--https://other.test/.default");

        let mut doc = CacheDocument::parse(TWO_ACCOUNTS).unwrap();
        assert!(doc.remove_refresh_token(&alice_rt));
        assert!(!doc.remove_refresh_token(&alice_rt));
        let mut answer = Answer::user(
            (ALICE_UID, ALICE_UTID),
            "alice@contoso.com",
            "127.0.0.1",
            "contoso",
            &["https://other.test/.default"],
        );
        answer.replaces = Some(alice_rt.clone());
        doc.add_token_response(&answer.tokens());
        let keys: Vec<String> = doc.refresh_tokens().into_iter().map(|t| t.key).collect();
        assert_eq!(keys, [bob_rt.clone(), new_key.clone()]);

        let mut doc = CacheDocument::parse(TWO_ACCOUNTS).unwrap();
        answer.replaces = Some(bob_rt);
        doc.add_token_response(&answer.tokens());
        let keys: Vec<String> = doc.refresh_tokens().into_iter().map(|t| t.key).collect();
        assert_eq!(
            keys,
            [alice_rt, new_key],
            "another account's entry is removed, not hijacked"
        );
    }

    #[test]
    fn a_new_sign_in_replaces_the_refresh_token_with_the_same_key_whole() {
        let src = std::str::from_utf8(TWO_ACCOUNTS).unwrap().replacen(
            "\"last_modification_time\": \"1795324123\",",
            "\"last_modification_time\": \"1795324123\",\n            \"x_custom\": 1,",
            1,
        );
        let mut doc = parse(&src);
        let answer = Answer::user(
            (ALICE_UID, ALICE_UTID),
            "alice@contoso.com",
            "127.0.0.1",
            "contoso",
            &["https://resource.test/.default"],
        );
        doc.add_token_response(&answer.tokens());
        let out = text(&doc);
        assert!(!out.contains("x_custom"));
        assert_eq!(
            doc.refresh_tokens()[0].secret.expose_secret(),
            "SECRET-user-refresh-token"
        );
        assert_eq!(doc.refresh_tokens().len(), 2);
    }

    #[test]
    fn foci_sets_family_id_on_the_refresh_token_and_app_metadata() {
        let alice = (ALICE_UID, ALICE_UTID);
        let mut doc = CacheDocument::empty();
        let mut answer = Answer::user(alice, "a@c", "login.microsoftonline.com", "contoso", &["s"]);
        answer.foci = None;
        doc.add_token_response(&answer.tokens());
        assert_eq!(doc.refresh_tokens()[0].family_id, None);
        assert_eq!(doc.app_metadata()[0].family_id, None);
        assert!(!text(&doc).contains("family_id"));

        // a rotation whose answer has foci marks the redeemed entry as a family token
        answer.foci = Some("1".to_owned());
        answer.replaces = Some(doc.refresh_tokens()[0].key.clone());
        doc.add_token_response(&answer.tokens());
        assert_eq!(doc.refresh_tokens()[0].family_id.as_deref(), Some("1"));
        assert_eq!(doc.app_metadata()[0].family_id.as_deref(), Some("1"));
        assert!(text(&doc).ends_with(
            "\"environment\": \"login.microsoftonline.com\",\n            \"family_id\": \"1\"\n        }\n    }\n}"
        ));
    }

    #[test]
    fn an_existing_account_keeps_its_other_fields_when_signed_in_again() {
        let mut doc = CacheDocument::parse(TWO_ACCOUNTS).unwrap();
        let answer = Answer::user(
            (ALICE_UID, ALICE_UTID),
            "alice.new@contoso.com",
            "127.0.0.1",
            "contoso",
            &["https://resource.test/.default"],
        );
        doc.add_token_response(&answer.tokens());
        let out = text(&doc);
        assert!(out.contains("\"username\": \"alice.new@contoso.com\",\n            \"authority_type\": \"MSSTS\",\n            \"account_source\": \"authorization_code\""));
        assert_eq!(doc.accounts().len(), 2);
    }

    #[test]
    fn an_answer_without_id_token_creates_an_account_only_when_none_exists() {
        let mut doc = CacheDocument::empty();
        let mut answer = Answer::user(
            (ALICE_UID, ALICE_UTID),
            "",
            "login.microsoftonline.com",
            "organizations",
            &["s"],
        );
        answer.id_token = None;
        doc.add_token_response(&answer.tokens());
        let accounts = doc.accounts();
        assert_eq!(accounts.len(), 1);
        assert_eq!(accounts[0].username, "");
        assert_eq!(accounts[0].local_account_id.as_deref(), Some(ALICE_UID));
        assert!(doc.id_tokens().is_empty());
        // a second one in another realm does not add another empty account
        answer.realm = "contoso".to_owned();
        doc.add_token_response(&answer.tokens());
        assert_eq!(doc.accounts().len(), 1);
        assert_eq!(doc.access_tokens().len(), 2);
    }

    #[test]
    fn undecodable_client_info_and_id_tokens_never_panic_and_never_pass_for_app_only() {
        for client_info in [
            "",
            "!!!",
            "bm90IGpzb24",
            "WzFd",
            "eyJ1aWQiOjF9",
            "eyJ1aWQiOiJhIn0",
        ] {
            let mut doc = CacheDocument::empty();
            let mut answer = Answer::app(CLI, "login.microsoftonline.com", "contoso", &["s"]);
            answer.client_info = Some(client_info.to_owned());
            answer.refresh_token = Some(Secret::new("SECRET-rt"));
            assert_eq!(
                doc.add_token_response(&answer.tokens()),
                None,
                "{client_info}"
            );
            assert!(doc.access_tokens().is_empty(), "{client_info}");
            assert!(doc.refresh_tokens().is_empty());
            assert_eq!(doc.app_metadata().len(), 1);
        }
        for id_token in [
            "",
            "garbage",
            "a.b.c",
            "a.WzFd.c",
            "a.eyJzdWIiOjF9.c",
            ".....",
        ] {
            let mut doc = CacheDocument::empty();
            let mut answer = Answer::user(
                (ALICE_UID, ALICE_UTID),
                "x",
                "login.microsoftonline.com",
                "contoso",
                &["s"],
            );
            answer.id_token = Some(Secret::new(id_token));
            assert_eq!(
                doc.add_token_response(&answer.tokens()).as_deref(),
                Some(ALICE)
            );
            let accounts = doc.accounts();
            assert_eq!(
                (
                    accounts[0].username.as_str(),
                    accounts[0].local_account_id.as_deref()
                ),
                ("", Some(ALICE_UID))
            );
            assert_eq!(doc.id_tokens().len(), 1);
        }
        // without client_info the id token's sub names the account (msal's ADFS rule)
        let mut doc = CacheDocument::empty();
        let mut answer = Answer::user(
            ("sub-1", "ignored"),
            "adfs-user",
            "adfs.contoso.com",
            "adfs",
            &["s"],
        );
        answer.client_info = None;
        assert_eq!(
            doc.add_token_response(&answer.tokens()).as_deref(),
            Some("sub-1")
        );
        assert_eq!(doc.accounts()[0].authority_type, "ADFS");
        assert_eq!(doc.accounts()[0].key, "sub-1-adfs.contoso.com-adfs");
    }

    #[test]
    fn keys_are_lower_cased_and_targets_sorted_except_app_metadata() {
        let mut doc = CacheDocument::empty();
        let mut answer = Answer::user(
            ("UID", "UTID"),
            "u@x",
            "Login.Microsoftonline.com",
            "Contoso",
            &["https://b/Z", "https://a/Y", "offline_access"],
        );
        answer.client_id = "App-ID".to_owned();
        answer.refresh_on = Some(1_795_326_000);
        doc.add_token_response(&answer.tokens());
        let at = &doc.access_tokens()[0];
        assert_eq!(
            at.key,
            "uid.utid-login.microsoftonline.com-accesstoken-app-id-contoso-https://a/y https://b/z offline_access"
        );
        assert_eq!(at.target, "https://a/Y https://b/Z offline_access");
        assert_eq!(at.refresh_on, Some(1_795_326_000));
        assert_eq!(
            doc.refresh_tokens()[0].key,
            "uid.utid-login.microsoftonline.com-refreshtoken-app-id--https://a/y https://b/z offline_access"
        );
        assert_eq!(
            doc.id_tokens()[0].key,
            "uid.utid-login.microsoftonline.com-idtoken-app-id-contoso-"
        );
        assert_eq!(
            doc.accounts()[0].key,
            "uid.utid-login.microsoftonline.com-contoso"
        );
        assert_eq!(
            doc.app_metadata()[0].key,
            "appmetadata-Login.Microsoftonline.com-App-ID"
        );
        assert!(text(&doc).contains(
            "\"extended_expires_on\": \"1795327728\",\n            \"refresh_on\": \"1795326000\"\n"
        ));
    }

    #[test]
    fn non_ascii_is_written_as_python_escapes() {
        let mut doc = CacheDocument::empty();
        let answer = Answer::user(
            (ALICE_UID, ALICE_UTID),
            "jürgen@例え.jp😀",
            "login.microsoftonline.com",
            "contoso",
            &["s"],
        );
        doc.add_token_response(&answer.tokens());
        let out = text(&doc);
        assert!(out.is_ascii());
        // json.dumps({"username": "jürgen@例え.jp😀"}) in Python
        assert!(
            out.contains(r#""username": "j\u00fcrgen@\u4f8b\u3048.jp\ud83d\ude00""#),
            "{out}"
        );
        assert_eq!(doc.accounts()[0].username, "jürgen@例え.jp😀");
        assert_eq!(
            py_json_string("\u{7f}\u{0}\u{1f}\u{8}\u{c}\n\r\t\"\\/<>&+"),
            r#""\u007f\u0000\u001f\b\f\n\r\t\"\\/<>&+""#
        );
        assert_eq!(text(&parse(&out)), out);
    }

    #[test]
    fn replacing_an_access_token_with_the_same_key_replaces_the_whole_entry_in_place() {
        let src = WITH_UNKNOWNS.replace(
            "\"k1\"",
            "\"-login.microsoftonline.com-accesstoken-c-contoso-https://x/.default\"",
        );
        let mut doc = parse(&src);
        let answer = Answer::app(
            "c",
            "login.microsoftonline.com",
            "contoso",
            &["https://x/.default"],
        );
        doc.add_token_response(&answer.tokens());
        let out = text(&doc);
        assert!(!out.contains("x_ext"), "msal replaces the whole entry");
        assert!(out.contains("\"Extra\""));
        let ats = doc.access_tokens();
        assert_eq!(ats.len(), 1);
        assert_eq!(ats[0].secret.expose_secret(), "SECRET-app-access-token");
        assert!(out.find("\"AccessToken\"").unwrap() < out.find("\"Extra\"").unwrap());
    }

    #[test]
    fn remove_expired_access_tokens_removes_only_readable_expired_entries() {
        let mut doc = CacheDocument::empty();
        for (i, lifetime) in [100u64, 200, 300].into_iter().enumerate() {
            let mut a = Answer::app("c", "e", "r", &[&format!("s{i}")]);
            a.cached_at = 0;
            a.lifetime = lifetime;
            doc.add_token_response(&a.tokens());
        }
        let out = text(&doc).replacen("\"expires_on\": \"300\"", "\"expires_on\": \"later\"", 1);
        let mut doc = parse(&out);
        assert_eq!(doc.remove_expired_access_tokens(200), 2);
        assert_eq!(doc.remove_expired_access_tokens(200), 0);
        assert_eq!(
            doc.remove_expired_access_tokens(u64::MAX),
            0,
            "the unreadable entry stays"
        );
        assert!(text(&doc).contains("\"later\""));
        assert_eq!(CacheDocument::empty().remove_expired_access_tokens(1), 0);
    }

    // ---- cost of a read ----------------------------------------------------------------------

    /// A document of `people` accounts, each with a family refresh token and an access token,
    /// in msal's entry shapes (compact).
    fn many_accounts(people: usize) -> String {
        let (mut ats, mut rts, mut accounts) = (Vec::new(), Vec::new(), Vec::new());
        for p in 0..people {
            let hid = format!("uid-{p}.utid");
            ats.push(format!(
                r#""{hid}-login.microsoftonline.com-accesstoken-{CLI}-contoso-s": {{"credential_type": "AccessToken", "secret": "at-{p}", "home_account_id": "{hid}", "environment": "login.microsoftonline.com", "client_id": "{CLI}", "target": "s", "realm": "contoso", "token_type": "Bearer", "cached_at": "1", "expires_on": "2", "extended_expires_on": "2"}}"#
            ));
            rts.push(format!(
                r#""{hid}-login.microsoftonline.com-refreshtoken-{CLI}--s": {{"credential_type": "RefreshToken", "secret": "rt-{p}", "home_account_id": "{hid}", "environment": "login.microsoftonline.com", "client_id": "{CLI}", "target": "s", "last_modification_time": "1", "family_id": "1"}}"#
            ));
            accounts.push(format!(
                r#""{hid}-login.microsoftonline.com-contoso": {{"home_account_id": "{hid}", "environment": "login.microsoftonline.com", "realm": "contoso", "local_account_id": "uid-{p}", "username": "user{p}@contoso.com", "authority_type": "MSSTS"}}"#
            ));
        }
        format!(
            r#"{{"AccessToken": {{{}}}, "RefreshToken": {{{}}}, "Account": {{{}}}}}"#,
            ats.join(", "),
            rts.join(", "),
            accounts.join(", ")
        )
    }

    /// The steps (name comparisons, bytes scanned for positions) of parsing `text` and making
    /// every query the credentials make.
    fn read_steps(text: &str) -> u64 {
        work::take();
        let doc = parse(text);
        let _ = (doc.accounts(), doc.refresh_tokens(), doc.access_tokens());
        let _ = (doc.id_tokens(), doc.app_metadata(), doc.skipped());
        let _ = doc.find_access_tokens(&AccessTokenQuery {
            home_account_id: Some(Some("uid-7.utid")),
            environments: PUBLIC,
            client_id: None,
            realm: None,
            scopes: &scopes(&["s"]),
        });
        let _ = doc.find_refresh_tokens(&RefreshTokenQuery {
            home_account_id: "uid-7.utid",
            environments: PUBLIC,
            client_id: None,
            family_only: true,
        });
        let _ = doc.accounts_with_family_refresh_tokens(PUBLIC);
        work::take()
    }

    #[test]
    fn reading_takes_steps_linear_in_the_size_of_the_document() {
        /// A name, and a document of that shape with `n` members.
        type Shape = (&'static str, fn(usize) -> String);
        let shapes: [Shape; 5] = [
            ("accounts with tokens", many_accounts),
            ("fields of one entry", |n| {
                let fields: Vec<String> = (0..n).map(|i| format!(r#""f{i}": {i}"#)).collect();
                format!(r#"{{"AccessToken": {{"k": {{{}}}}}}}"#, fields.join(", "))
            }),
            ("unknown sections", |n| {
                let sections: Vec<String> = (0..n).map(|i| format!(r#""S{i}": [{i}]"#)).collect();
                format!("{{{}}}", sections.join(", "))
            }),
            ("entries with 100 distinct keys", |n| {
                let entries: Vec<String> = (0..n)
                    .map(|i| {
                        format!(
                            r#""k{}": {{"client_id": "c{i}", "environment": "e"}}"#,
                            i % 100
                        )
                    })
                    .collect();
                format!(r#"{{"AppMetadata": {{{}}}}}"#, entries.join(", "))
            }),
            ("a known section repeated", |n| {
                let sections = vec![r#""AccessToken": {}"#; n];
                format!("{{{}}}", sections.join(",\n"))
            }),
        ];
        for (shape, make) in shapes {
            let small = read_steps(&make(1_000));
            let large = read_steps(&make(4_000));
            // Four times the input: about four times the steps if linear, sixteen if not.
            assert!(
                large <= small * 5,
                "{shape}: {small} steps for 1 000, {large} for 4 000"
            );
        }
    }

    #[test]
    fn accounts_with_family_refresh_tokens_are_those_the_reference_selects() {
        let doc = parse(&many_accounts(3));
        let hids: Vec<String> = doc
            .accounts_with_family_refresh_tokens(PUBLIC)
            .into_iter()
            .map(|a| a.home_account_id)
            .collect();
        assert_eq!(hids, ["uid-0.utid", "uid-1.utid", "uid-2.utid"]);
        assert!(
            doc.accounts_with_family_refresh_tokens(&["other.host"])
                .is_empty()
        );

        // a: no family id; b: its family token at another cloud; c: two accounts, the family
        // token at an alias (one row, the first); d: its account at another cloud.
        let doc = parse(
            r#"{
    "RefreshToken": {
        "rt-a": {"secret": "s", "home_account_id": "a", "environment": "login.microsoftonline.com", "client_id": "x", "family_id": ""},
        "rt-b": {"secret": "s", "home_account_id": "b", "environment": "login.chinacloudapi.cn", "client_id": "x", "family_id": "1"},
        "rt-c": {"secret": "s", "home_account_id": "c", "environment": "login.windows.net", "client_id": "x", "family_id": "1"},
        "rt-d": {"secret": "s", "home_account_id": "d", "environment": "login.microsoftonline.com", "client_id": "x", "family_id": "1"}
    },
    "Account": {
        "a": {"home_account_id": "a", "environment": "login.microsoftonline.com", "realm": "r"},
        "b": {"home_account_id": "b", "environment": "login.microsoftonline.com", "realm": "r"},
        "c-1": {"home_account_id": "c", "environment": "login.microsoftonline.com", "realm": "first"},
        "c-2": {"home_account_id": "c", "environment": "login.windows.net", "realm": "second"},
        "d": {"home_account_id": "d", "environment": "login.chinacloudapi.cn", "realm": "r"}
    }
}"#,
        );
        let selected: Vec<String> = doc
            .accounts_with_family_refresh_tokens(PUBLIC)
            .into_iter()
            .map(|a| a.key)
            .collect();
        assert_eq!(selected, ["c-1"]);
        assert!(
            doc.accounts_with_family_refresh_tokens(&["login.chinacloudapi.cn"])
                .is_empty()
        );
    }

    #[test]
    fn duplicate_keys_in_large_objects_resolve_like_python() {
        // Past the scan limit duplicates are found through an index: the same rule applies,
        // and the first spelling of a key is the one written back.
        let n = SCAN_LIMIT * 3;
        let mut entries: Vec<String> = (0..n)
            .map(|i| format!(r#""k{i}": {{"client_id": "c{i}", "environment": "e"}}"#))
            .collect();
        entries.push(
            r#""k3": {"client_id": "late", "environment": "e", "client_id": "latest"}"#.to_owned(),
        );
        entries.push(r#""\u006b0": {"client_id": "escaped", "environment": "e"}"#.to_owned());
        let mut fields: Vec<String> = (0..n).map(|i| format!(r#""f{i}": {i}"#)).collect();
        fields.push(r#""f5": "last""#.to_owned());
        let mut sections: Vec<String> = (0..n).map(|i| format!(r#""S{i}": {i}"#)).collect();
        sections.push(r#""S7": "last""#.to_owned());
        let src = format!(
            r#"{{"AppMetadata": {{{}}}, "Wide": {{"k": {{{}}}}}, {}, "AppMetadata": {{{}}}}}"#,
            entries.join(", "),
            fields.join(", "),
            sections.join(", "),
            entries.join(", "),
        );
        let doc = parse(&src);
        let md = doc.app_metadata();
        assert_eq!(md.len(), n);
        assert_eq!(
            (md[0].key.as_str(), md[0].client_id.as_str()),
            ("k0", "escaped")
        );
        assert_eq!(
            (md[3].key.as_str(), md[3].client_id.as_str()),
            ("k3", "latest")
        );
        assert_eq!(md[n - 1].key, format!("k{}", n - 1));

        let out = text(&doc);
        assert!(
            out.starts_with("{\n    \"AppMetadata\": {\n        \"k0\": {"),
            "first position, first spelling"
        );
        assert!(
            out.contains("\n    \"S7\": \"last\",\n    \"S8\": 8,"),
            "last value, first position"
        );
        assert_eq!(out.matches("\"S7\"").count(), 1);
        assert_eq!(text(&parse(&out)), out);
    }

    #[test]
    fn names_sharing_a_hash_are_still_told_apart() {
        /// Every name hashes alike: each lookup past the scan limit meets a collision.
        #[derive(Default)]
        struct Collide;
        impl std::hash::Hasher for Collide {
            fn finish(&self) -> u64 {
                0
            }
            fn write(&mut self, _: &[u8]) {}
        }
        let mut members =
            Members::<usize, std::hash::BuildHasherDefault<Collide>>::with_capacity(0);
        let keys: Vec<usize> = (0..SCAN_LIMIT * 3).chain([0, 5, SCAN_LIMIT * 2]).collect();
        for (i, k) in keys.iter().enumerate() {
            members.push(Name::new(format!("k{k}")), i);
        }
        let list: Vec<(String, usize)> = members
            .into_list()
            .into_iter()
            .map(|(n, v)| (n.text().to_owned(), v))
            .collect();
        let mut expected: Vec<(String, usize)> =
            (0..SCAN_LIMIT * 3).map(|k| (format!("k{k}"), k)).collect();
        expected[0].1 = SCAN_LIMIT * 3;
        expected[5].1 = SCAN_LIMIT * 3 + 1;
        expected[SCAN_LIMIT * 2].1 = SCAN_LIMIT * 3 + 2;
        assert_eq!(list, expected);
    }

    // ---- timestamps from the file -------------------------------------------------------------

    #[test]
    fn absurd_timestamps_never_panic_and_read_as_out_of_range_or_as_written() {
        let values = [
            r#""99999999999999999999""#,
            "99999999999999999999",
            r#""18446744073709551615""#,
            "18446744073709551615",
            r#""18446744073709551616""#,
            "18446744073709551616",
            "-1",
            r#""-1""#,
            "-9223372036854775809",
            "1.5",
            "-0.0",
            "1e19",
            "1.8446744073709552e19",
            "1e308",
            "-1e308",
            "1e400",
            r#""""#,
            r#"" 12 ""#,
            r#""1e9""#,
            "null",
            "true",
            "{}",
            "[]",
        ];
        for value in values {
            let src = format!(
                r#"{{
    "AccessToken": {{
        "at": {{
            "secret": "SECRET-at",
            "home_account_id": "h",
            "environment": "login.microsoftonline.com",
            "client_id": "c",
            "target": "s",
            "realm": "r",
            "cached_at": {value},
            "expires_on": {value},
            "extended_expires_on": {value},
            "refresh_on": {value}
        }}
    }},
    "RefreshToken": {{
        "rt": {{
            "secret": "SECRET-rt",
            "home_account_id": "h",
            "environment": "login.microsoftonline.com",
            "client_id": "c",
            "last_modification_time": {value}
        }}
    }}
}}"#
            );
            let mut doc = parse(&src);
            assert_eq!(text(&doc), src, "{value}: written back as it was");
            let ats = doc.access_tokens();
            let _ = (doc.skipped(), doc.refresh_tokens());
            let _ = doc.find_access_tokens(&AccessTokenQuery {
                home_account_id: None,
                environments: PUBLIC,
                client_id: None,
                realm: None,
                scopes: &[],
            });
            let at_zero = ats.iter().filter(|at| at.expires_on == 0).count();
            assert_eq!(doc.remove_expired_access_tokens(0), at_zero, "{value}");
            assert_eq!(
                doc.remove_expired_access_tokens(u64::MAX),
                ats.len() - at_zero,
                "{value}"
            );
        }

        let read = |value: &str| {
            let src = format!(
                r#"{{"AccessToken": {{"at": {{"secret": "s", "environment": "e", "client_id": "c", "target": "t", "realm": "r", "cached_at": "1", "expires_on": {value}}}}}}}"#
            );
            let doc = parse(&src);
            match doc.access_tokens().first() {
                Some(at) => Ok(at.expires_on),
                None => Err(doc.skipped()[0].to_string()),
            }
        };
        let out_of_range = Err(
            "section \"AccessToken\" entry \"at\": field \"expires_on\" is out of range".to_owned(),
        );
        let not_decimal = Err(
            "section \"AccessToken\" entry \"at\": field \"expires_on\" is not a decimal string"
                .to_owned(),
        );
        assert_eq!(read(r#""99999999999999999999""#), out_of_range);
        assert_eq!(read("99999999999999999999"), out_of_range);
        assert_eq!(read(r#""18446744073709551616""#), out_of_range);
        assert_eq!(read("-1"), out_of_range);
        assert_eq!(read("1e308"), out_of_range);
        assert_eq!(read(r#""-1""#), not_decimal);
        assert_eq!(read(r#""1e9""#), not_decimal);
        assert_eq!(read(r#""18446744073709551615""#), Ok(u64::MAX));
        assert_eq!(read("18446744073709551615"), Ok(u64::MAX));
        assert_eq!(read("1e19"), Ok(10_000_000_000_000_000_000));
        assert_eq!(read("1.5"), Ok(1));
        assert_eq!(read(r#"" 12 ""#), Ok(12));
        assert_eq!(read("1e400"), out_of_range, "beyond f64");
        assert_eq!(read("-1e400"), out_of_range);
    }

    #[test]
    fn an_answer_with_extreme_times_is_written_and_read_back() {
        let mut doc = CacheDocument::empty();
        let mut answer = Answer::app("c", "login.microsoftonline.com", "contoso", &["s"]);
        answer.cached_at = u64::MAX;
        answer.lifetime = 0;
        answer.refresh_on = Some(u64::MAX);
        doc.add_token_response(&answer.tokens());
        let at = &doc.access_tokens()[0];
        assert_eq!(
            (at.cached_at, at.expires_on, at.refresh_on),
            (u64::MAX, u64::MAX, Some(u64::MAX))
        );
        assert_eq!(doc.remove_expired_access_tokens(u64::MAX - 1), 0);
        assert_eq!(doc.remove_expired_access_tokens(u64::MAX), 1);
    }
}

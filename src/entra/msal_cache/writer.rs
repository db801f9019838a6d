//! The Python-compatible writer: msal's `json.dumps(doc, indent=4)` layout.

use std::fmt::Write as _;

use super::CacheDocument;
use super::raw::{Body, Name};

/// `s` as a JSON string literal, escaped as Python's `json.dumps(ensure_ascii=True)` does:
/// `\"`, `\\`, `\n`, `\r`, `\t`, `\b`, `\f`, every other character outside `' '..='~'` as
/// `\uXXXX` (lower-case hex, UTF-16 surrogate pairs above U+FFFF); `/` is not escaped.
pub(super) fn py_json_string(s: &str) -> String {
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
pub(super) fn newline(out: &mut String, depth: usize) {
    out.push('\n');
    for _ in 0..depth {
        out.push_str("    ");
    }
}

/// Writes an object of `items` at `depth` in `json.dumps(indent=4)` layout.
pub(super) fn write_object<T>(
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

impl CacheDocument {
    /// The document as msal writes it (`json.dumps(doc, indent=4)` layout). It contains the
    /// secrets: write it to the cache file and drop it.
    pub fn to_vec(&self) -> Vec<u8> {
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
}

//! Why a document cannot be read, or an entry is skipped: messages that say what and where,
//! never a value from the document.

use std::fmt;

/// Why a document could not be read, or (from `CacheDocument::skipped`) why an entry is
/// ignored by the typed views. The text says what and where, never a value from the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentError {
    /// What went wrong.
    pub(super) kind: ErrorKind,
}

/// The kinds of [`DocumentError`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ErrorKind {
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
    /// An entry lacks a field the views need, or the field is malformed: the entry is
    /// skipped, and this says why.
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
pub(super) enum Problem {
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
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Problem::Missing => "is missing",
            Problem::NotString => "is not a string",
            Problem::NotDecimal => "is not a decimal string",
            Problem::OutOfRange => "is out of range",
        }
    }
}

/// Why a view cannot read an entry: which field, and what is wrong with it. The entry is
/// skipped; [`DocumentError::field`] says where.
#[derive(Debug, Clone, Copy)]
pub(super) struct FieldProblem {
    /// The field.
    pub(super) field: &'static str,
    /// What is wrong.
    pub(super) problem: Problem,
}

impl FieldProblem {
    /// A problem with `field`.
    pub(super) fn new(field: &'static str, problem: Problem) -> Self {
        Self { field, problem }
    }
}

impl DocumentError {
    /// The error for a field problem of an entry.
    pub(super) fn field(section: &str, entry: &str, p: FieldProblem) -> Self {
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

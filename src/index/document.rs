//! What a document must be before the index takes it: the one check of names (collection
//! names, document ids, metadata keys) with one limit, and the check of a document's fields.

use super::error::{IndexError, Result};
use super::types::NewDocument;

/// Longest name (collection name, document id, metadata key), in bytes.
pub const MAX_NAME_BYTES: usize = 512;

/// Generated external ids start with this; user ids may not.
pub(crate) const GENERATED_ID_PREFIX: char = '#';

/// Checks what a document carries, whatever its collection or index: its size against
/// `max_document_bytes`, its text, id and metadata keys (callers check a batch with it before
/// they create anything).
pub fn check_document_fields(doc: &NewDocument<'_>, max_document_bytes: usize) -> Result<()> {
    let id_for_errors = doc.id.clone().unwrap_or_else(|| "(new)".into());
    if doc.text.len() > max_document_bytes {
        return Err(IndexError::TooLarge {
            id: id_for_errors,
            bytes: doc.text.len(),
            limit: max_document_bytes,
        });
    }
    if doc.text.trim().is_empty() {
        return Err(IndexError::InvalidInput(format!(
            "document `{id_for_errors}` is empty"
        )));
    }
    if let Some(id) = &doc.id {
        check_named("document id", id)?;
        if id.starts_with(GENERATED_ID_PREFIX) {
            return Err(IndexError::InvalidInput(format!(
                "document id `{id}` starts with `{GENERATED_ID_PREFIX}`, which is kept for generated ids"
            )));
        }
    }
    for (k, _) in &doc.meta {
        check_named("metadata key", k)?;
    }
    Ok(())
}

/// What is wrong with a name (a collection name, document id or metadata key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameProblem {
    /// It has no bytes.
    #[error("is empty")]
    Empty,
    /// It is longer than [`MAX_NAME_BYTES`].
    #[error("has {bytes} bytes, over the limit of {MAX_NAME_BYTES}")]
    TooLong {
        /// Its length.
        bytes: usize,
    },
    /// It holds a control character (a newline, say).
    #[error("contains control characters")]
    ControlCharacters,
    /// It holds a character that is invisible or turns the text's direction: two names
    /// that look the same would differ, or one would look like another.
    #[error("contains the invisible or direction-changing character U+{:04X}", u32::from(*.0))]
    Invisible(char),
    /// It is only whitespace, or starts or ends with whitespace (`' c1 '` would differ
    /// from `c1`).
    #[error("starts or ends with whitespace")]
    Whitespace,
}

/// Returns whether `c` is invisible or changes the direction of the text around it: the
/// bidirectional embeddings, overrides and isolates (U+202A-202E, U+2066-2069), the marks
/// (U+200E, U+200F), the zero-width characters (U+200B-200D, U+2060) and the BOM (U+FEFF).
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}'
    )
}

/// Checks a name: 1 to [`MAX_NAME_BYTES`] bytes, no control, invisible or
/// direction-changing characters, no whitespace at either end. Every layer that takes names
/// (the index, the daemon's request checks) checks them here.
pub fn check_name(name: &str) -> std::result::Result<(), NameProblem> {
    if name.is_empty() {
        Err(NameProblem::Empty)
    } else if name.len() > MAX_NAME_BYTES {
        Err(NameProblem::TooLong { bytes: name.len() })
    } else if name.chars().any(char::is_control) {
        Err(NameProblem::ControlCharacters)
    } else if let Some(c) = name.chars().find(|&c| is_invisible(c)) {
        Err(NameProblem::Invisible(c))
    } else if name.trim() != name {
        Err(NameProblem::Whitespace)
    } else {
        Ok(())
    }
}

/// Checks a name of the given kind (`collection name`, `document id`, ...) as
/// [`check_name`] does, refusing it as invalid input that names the kind.
pub(crate) fn check_named(kind: &str, name: &str) -> Result<()> {
    check_name(name).map_err(|problem| {
        // What is wrong cannot be seen: the name is quoted escaped.
        let shown = match problem {
            NameProblem::ControlCharacters
            | NameProblem::Invisible(_)
            | NameProblem::Whitespace => {
                format!(" {name:?}")
            }
            _ => String::new(),
        };
        IndexError::InvalidInput(format!("the {kind}{shown} {problem}"))
    })
}

/// The type of a metadata key in a collection, fixed by the first value it is given there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MetaType {
    /// A finite decimal number (`2020`, `-1.5`, `3e2`).
    Number,
    /// An RFC 3339 date-time (`2024-01-31T12:00:00Z`) or full date (`2024-01-31`, midnight UTC).
    Date,
    /// Anything else.
    String,
}

/// A metadata value read as its key's type; values of one type compare with each other.
#[derive(Debug, Clone, PartialEq, PartialOrd)]
pub enum MetaValue {
    /// A number.
    Number(f64),
    /// A date, as nanoseconds since the Unix epoch (UTC).
    Date(i128),
    /// A string, compared byte for byte.
    String(String),
}

impl MetaType {
    /// Returns the type a value has on its own: a number if it parses as one, else a date if it
    /// parses as one, else a string.
    pub fn of(value: &str) -> Self {
        if parse_number(value).is_some() {
            Self::Number
        } else if parse_date(value).is_some() {
            Self::Date
        } else {
            Self::String
        }
    }

    /// Returns `value` read as this type, or `None` when it does not parse as one.
    pub fn read(self, value: &str) -> Option<MetaValue> {
        match self {
            Self::Number => parse_number(value).map(MetaValue::Number),
            Self::Date => parse_date(value).map(MetaValue::Date),
            Self::String => Some(MetaValue::String(value.to_string())),
        }
    }

    /// Returns the one-byte code the store keeps.
    pub(crate) fn code(self) -> u8 {
        match self {
            Self::Number => b'n',
            Self::Date => b'd',
            Self::String => b's',
        }
    }

    /// Returns the type of a stored code.
    pub(crate) fn from_code(code: u8) -> Option<Self> {
        match code {
            b'n' => Some(Self::Number),
            b'd' => Some(Self::Date),
            b's' => Some(Self::String),
            _ => None,
        }
    }
}

impl std::fmt::Display for MetaType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Number => "number",
            Self::Date => "date",
            Self::String => "string",
        })
    }
}

/// Returns a finite number written in decimal (Rust's float grammar without `inf` and `nan`,
/// which read as strings), with no whitespace around it.
fn parse_number(value: &str) -> Option<f64> {
    if value.trim() != value
        || value
            .chars()
            .any(|c| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
    {
        return None;
    }
    value.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// Returns an RFC 3339 date-time, or a full date at midnight UTC, as Unix nanoseconds.
pub(crate) fn parse_date(value: &str) -> Option<i128> {
    use time::format_description::well_known::Rfc3339;
    let at = if value.len() == 10 {
        time::OffsetDateTime::parse(&format!("{value}T00:00:00Z"), &Rfc3339)
    } else {
        time::OffsetDateTime::parse(value, &Rfc3339)
    };
    at.ok().map(time::OffsetDateTime::unix_timestamp_nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_once_with_one_limit() {
        assert_eq!(check_name("notes"), Ok(()));
        assert_eq!(check_name(&"x".repeat(MAX_NAME_BYTES)), Ok(()));
        assert_eq!(check_name(""), Err(NameProblem::Empty));
        assert_eq!(
            check_name(&"x".repeat(MAX_NAME_BYTES + 1)),
            Err(NameProblem::TooLong { bytes: 513 })
        );
        assert_eq!(check_name("a\nb"), Err(NameProblem::ControlCharacters));
        let e = check_named("collection name", "a\nb").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid input: the collection name \"a\\nb\" contains control characters"
        );
        for (name, c) in [
            ("c\u{202E}1", '\u{202E}'),
            ("\u{FEFF}c1", '\u{FEFF}'),
            ("c\u{200B}1", '\u{200B}'),
            ("c\u{2066}", '\u{2066}'),
        ] {
            assert_eq!(check_name(name), Err(NameProblem::Invisible(c)), "{name:?}");
        }
        for name in [" c1 ", "c1 ", "\u{3000}c1", "   "] {
            assert_eq!(check_name(name), Err(NameProblem::Whitespace), "{name:?}");
        }
        assert_eq!(check_name("notes of 2024"), Ok(()));
        assert_eq!(check_name("北京 notes"), Ok(()));
        let e = check_named("collection name", "c\u{202E}1").unwrap_err();
        assert!(e.to_string().ends_with("character U+202E"), "{e}");
        let e = check_named("document id", &"x".repeat(600)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid input: the document id has 600 bytes, over the limit of 512"
        );
    }
    #[test]
    fn metadata_values_are_typed_by_parsing() {
        for v in ["2020", "-1.5", "3e2", "0.25"] {
            assert_eq!(MetaType::of(v), MetaType::Number, "{v}");
        }
        for v in [
            "2024-01-31",
            "2024-01-31T12:00:00Z",
            "2024-01-31T12:00:00.5+02:00",
        ] {
            assert_eq!(MetaType::of(v), MetaType::Date, "{v}");
        }
        for v in [
            "acme",
            "inf",
            "NaN",
            " 12",
            "12 ",
            "2024-13-01",
            "2024-01-31 12:00",
            "",
        ] {
            assert_eq!(MetaType::of(v), MetaType::String, "{v:?}");
        }
        assert_eq!(
            MetaType::Number.read("2020.0"),
            MetaType::Number.read("2020")
        );
        assert_eq!(MetaType::Number.read("acme"), None);
        // The same instant in two offsets is one date.
        assert_eq!(
            MetaType::Date.read("2024-01-01T02:00:00+02:00"),
            MetaType::Date.read("2024-01-01")
        );
        assert!(MetaType::Date.read("2023-12-31") < MetaType::Date.read("2024-01-01"));
        for t in [MetaType::Number, MetaType::Date, MetaType::String] {
            assert_eq!(MetaType::from_code(t.code()), Some(t));
        }
    }
}

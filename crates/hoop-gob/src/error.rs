//! The crate's error type, [`GobError`].
//!
//! It deliberately never carries decoded values: messages may name struct
//! fields, map keys and type names, which are not secrets, but never a
//! string's content, since env var values and credentials pass through here.

/// Why a gob stream could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GobError {
    /// The input has no bytes at all.
    #[error("empty gob stream")]
    Empty,
    /// The input ends before the value is complete (or before any value).
    #[error("truncated gob stream")]
    Truncated,
    /// A value refers to a type id the stream never defined.
    #[error("type id {0} not defined")]
    UndefinedType(i64),
    /// The stream defines the same type id twice.
    #[error("type id {0} defined twice")]
    DuplicateType(i64),
    /// A type-definition message is malformed.
    #[error("invalid definition of type id {id}: {reason}")]
    BadTypeDefinition {
        /// The id being defined.
        id: i64,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The stream's type for a value is not the one expected (Go would refuse it too).
    #[error("{context}: wire type {found}, expected {expected}")]
    TypeMismatch {
        /// Where: `string slice`, `field ConnectionName`, ...
        context: String,
        /// The type the stream sent, described Go-style.
        found: String,
        /// The type this crate decodes there.
        expected: &'static str,
    },
    /// A `map[string]any` entry holds something other than a Go string.
    #[error("field {field}: key {key:?}: interface value of type {found}, expected string")]
    InterfaceNotString {
        /// The Go field (`EnvVars`).
        field: &'static str,
        /// The map key whose value is wrong.
        key: String,
        /// The registered Go name of the value's type (`int`, `main.Foo`, ...).
        found: String,
    },
    /// A `map[string]any` entry holds a nil interface.
    #[error("field {field}: key {key:?}: nil interface value, expected string")]
    NilInterface {
        /// The Go field (`EnvVars`).
        field: &'static str,
        /// The map key whose value is nil.
        key: String,
    },
    /// A Go string is not valid UTF-8 (strings are rejected, never altered).
    #[error("invalid utf-8 in {context}")]
    InvalidUtf8 {
        /// Where the string was (field and element or key), never its content.
        context: String,
    },
    /// An element count is larger than the input that is left.
    #[error("element count {0} exceeds the remaining input")]
    CountTooLarge(usize),
    /// Values nest deeper than this crate accepts.
    #[error("gob value nested deeper than {0} levels")]
    TooDeep(usize),
    /// Any other malformation.
    #[error("corrupt gob stream: {0}")]
    Corrupt(&'static str),
}

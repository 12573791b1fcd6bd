//! Gob's type system as it appears on the wire: the built-in type ids, the
//! per-stream table of type definitions ([`TypeTable`]), parsing of the
//! `wireType` messages that define user types, and writing the definitions
//! this crate's encoder sends.
//!
//! It deliberately does not decode or skip values (`decode.rs` does) and does
//! not keep any process-global state: every stream carries its own ids, which
//! need not start at 65.

use std::collections::BTreeMap;
use std::rc::Rc;

use crate::GobError;
use crate::wire::{Reader, put_bytes, put_int, put_len, put_uint};

/// Built-in type ids (Go `encoding/gob`, type.go `bootstrapType`).
pub(crate) mod ids {
    pub(crate) const BOOL: i64 = 1;
    pub(crate) const INT: i64 = 2;
    pub(crate) const UINT: i64 = 3;
    pub(crate) const FLOAT: i64 = 4;
    pub(crate) const BYTES: i64 = 5;
    pub(crate) const STRING: i64 = 6;
    pub(crate) const COMPLEX: i64 = 7;
    pub(crate) const INTERFACE: i64 = 8;
    /// Ids below this are reserved; a stream may not define them.
    pub(crate) const FIRST_USER: i64 = 64;
}

/// Longest type or field name kept verbatim in error messages.
const NAME_SHOWN_IN_ERRORS: usize = 64;

/// One field of a struct definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WireField {
    pub(crate) name: String,
    pub(crate) id: i64,
}

/// A user type definition (Go's `wireType`). Element ids are resolved when a
/// value is read, because Go sends a struct before its fields' types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WireType {
    Array {
        elem: i64,
        len: i64,
    },
    Slice {
        elem: i64,
    },
    Struct {
        name: String,
        fields: Vec<WireField>,
    },
    Map {
        key: i64,
        elem: i64,
    },
    /// `GobEncoder`, `BinaryMarshaler` or `TextMarshaler`: the value is a byte string.
    Marshaler,
}

/// The type definitions received so far in one stream.
#[derive(Debug, Default)]
pub(crate) struct TypeTable {
    defs: BTreeMap<i64, Rc<WireType>>,
}

impl TypeTable {
    pub(crate) fn define(&mut self, id: i64, wire: WireType) -> Result<(), GobError> {
        if id < ids::FIRST_USER {
            return Err(GobError::BadTypeDefinition {
                id,
                reason: "id is reserved for built-in types",
            });
        }
        if self.defs.contains_key(&id) {
            return Err(GobError::DuplicateType(id));
        }
        self.defs.insert(id, Rc::new(wire));
        Ok(())
    }

    pub(crate) fn get(&self, id: i64) -> Option<Rc<WireType>> {
        self.defs.get(&id).cloned()
    }

    /// True for built-in ids and ids this stream defined.
    pub(crate) fn is_known(&self, id: i64) -> bool {
        builtin_name(id).is_some() || self.defs.contains_key(&id)
    }

    pub(crate) fn is_struct(&self, id: i64) -> bool {
        matches!(
            self.defs.get(&id).map(|t| &**t),
            Some(WireType::Struct { .. })
        )
    }

    /// A short name for a type, for error messages (one level deep).
    fn short_name(&self, id: i64) -> String {
        if let Some(name) = builtin_name(id) {
            return name.to_owned();
        }
        match self.defs.get(&id).map(|t| &**t) {
            Some(WireType::Struct { name, .. }) if !name.is_empty() => shorten(name),
            Some(WireType::Struct { .. }) => "struct".to_owned(),
            Some(WireType::Slice { .. }) => "slice".to_owned(),
            Some(WireType::Array { .. }) => "array".to_owned(),
            Some(WireType::Map { .. }) => "map".to_owned(),
            Some(WireType::Marshaler) => "marshaled bytes".to_owned(),
            None => format!("undefined type id {id}"),
        }
    }

    /// A Go-like description of a type, for error messages.
    pub(crate) fn describe(&self, id: i64) -> String {
        match self.defs.get(&id).map(|t| &**t) {
            Some(WireType::Slice { elem }) => format!("[]{}", self.short_name(*elem)),
            Some(WireType::Array { elem, len }) => format!("[{len}]{}", self.short_name(*elem)),
            Some(WireType::Map { key, elem }) => {
                format!("map[{}]{}", self.short_name(*key), self.short_name(*elem))
            }
            _ => self.short_name(id),
        }
    }
}

fn builtin_name(id: i64) -> Option<&'static str> {
    Some(match id {
        ids::BOOL => "bool",
        ids::INT => "int",
        ids::UINT => "uint",
        ids::FLOAT => "float",
        ids::BYTES => "[]byte",
        ids::STRING => "string",
        ids::COMPLEX => "complex",
        ids::INTERFACE => "interface {}",
        _ => return None,
    })
}

/// Lossy, length-limited rendering of wire bytes for error messages.
pub(crate) fn shorten(s: &str) -> String {
    if s.chars().count() <= NAME_SHOWN_IN_ERRORS {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(NAME_SHOWN_IN_ERRORS).collect();
    out.push('…');
    out
}

/// Walks the field deltas of an encoded struct up to its terminating zero.
#[derive(Debug, Default)]
pub(crate) struct FieldCursor {
    /// Index a delta of 1 refers to (one past the previous field).
    next: usize,
}

impl FieldCursor {
    /// The next field index, or `None` at the end of the struct.
    pub(crate) fn next(
        &mut self,
        r: &mut Reader<'_>,
        field_count: usize,
    ) -> Result<Option<usize>, GobError> {
        let delta = r.read_uint()?;
        if delta == 0 {
            return Ok(None);
        }
        let index = usize::try_from(delta)
            .ok()
            .and_then(|d| d.checked_sub(1))
            .and_then(|d| self.next.checked_add(d))
            .filter(|i| *i < field_count)
            .ok_or(GobError::Corrupt("field number out of range"))?;
        self.next = index.saturating_add(1);
        Ok(Some(index))
    }
}

fn read_name(r: &mut Reader<'_>) -> Result<String, GobError> {
    Ok(String::from_utf8_lossy(r.read_bytes()?).into_owned())
}

/// `CommonType{Name string; Id typeId}`; returns the name.
fn parse_common(r: &mut Reader<'_>) -> Result<String, GobError> {
    let mut name = String::new();
    let mut cursor = FieldCursor::default();
    while let Some(i) = cursor.next(r, 2)? {
        if i == 0 {
            name = read_name(r)?;
        } else {
            r.read_int()?;
        }
    }
    Ok(name)
}

/// Parses a `wireType` (Go type.go) defining type `id`.
pub(crate) fn parse_wire_type(r: &mut Reader<'_>, id: i64) -> Result<WireType, GobError> {
    let bad = |reason| GobError::BadTypeDefinition { id, reason };
    let mut result = None;
    let mut cursor = FieldCursor::default();
    // wireType{ArrayT, SliceT, StructT, MapT, GobEncoderT, BinaryMarshalerT, TextMarshalerT}
    while let Some(kind) = cursor.next(r, 7)? {
        let wire = match kind {
            0 => parse_array(r)?,
            1 => parse_slice(r)?,
            2 => parse_struct(r)?,
            3 => parse_map(r)?,
            _ => parse_marshaler(r)?,
        };
        if result.replace(wire).is_some() {
            return Err(bad("more than one kind"));
        }
    }
    result.ok_or_else(|| bad("no kind"))
}

fn parse_array(r: &mut Reader<'_>) -> Result<WireType, GobError> {
    let (mut elem, mut len) = (0, 0);
    let mut cursor = FieldCursor::default();
    while let Some(i) = cursor.next(r, 3)? {
        match i {
            0 => drop(parse_common(r)?),
            1 => elem = r.read_int()?,
            _ => len = r.read_int()?,
        }
    }
    Ok(WireType::Array { elem, len })
}

/// `gobEncoderType{CommonType}` (also used for the two marshaler kinds).
fn parse_marshaler(r: &mut Reader<'_>) -> Result<WireType, GobError> {
    let mut cursor = FieldCursor::default();
    while cursor.next(r, 1)?.is_some() {
        parse_common(r)?;
    }
    Ok(WireType::Marshaler)
}

fn parse_slice(r: &mut Reader<'_>) -> Result<WireType, GobError> {
    let mut elem = 0;
    let mut cursor = FieldCursor::default();
    while let Some(i) = cursor.next(r, 2)? {
        match i {
            0 => drop(parse_common(r)?),
            _ => elem = r.read_int()?,
        }
    }
    Ok(WireType::Slice { elem })
}

fn parse_map(r: &mut Reader<'_>) -> Result<WireType, GobError> {
    let (mut key, mut elem) = (0, 0);
    let mut cursor = FieldCursor::default();
    while let Some(i) = cursor.next(r, 3)? {
        match i {
            0 => drop(parse_common(r)?),
            1 => key = r.read_int()?,
            _ => elem = r.read_int()?,
        }
    }
    Ok(WireType::Map { key, elem })
}

fn parse_struct(r: &mut Reader<'_>) -> Result<WireType, GobError> {
    let mut name = String::new();
    let mut fields = Vec::new();
    let mut cursor = FieldCursor::default();
    while let Some(i) = cursor.next(r, 2)? {
        if i == 0 {
            name = parse_common(r)?;
            continue;
        }
        let count = r.read_count()?;
        fields.clear();
        for _ in 0..count {
            let mut field = WireField {
                name: String::new(),
                id: 0,
            };
            let mut fc = FieldCursor::default();
            while let Some(j) = fc.next(r, 2)? {
                if j == 0 {
                    field.name = read_name(r)?;
                } else {
                    field.id = r.read_int()?;
                }
            }
            fields.push(field);
        }
    }
    Ok(WireType::Struct { name, fields })
}

// ---- writing definitions (the encoder's side) ----

fn put_common(out: &mut Vec<u8>, name: &str, id: i64) {
    if name.is_empty() {
        put_uint(out, 2); // Name omitted (zero), straight to Id.
    } else {
        put_uint(out, 1);
        put_bytes(out, name.as_bytes());
        put_uint(out, 1);
    }
    put_int(out, id);
    put_uint(out, 0);
}

/// One type-definition message body: `-id` then the `wireType`.
fn definition(id: i64, kind: u64, body: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::new();
    put_int(&mut out, id.saturating_neg());
    put_uint(&mut out, kind);
    body(&mut out);
    put_uint(&mut out, 0); // end of the kind's struct
    put_uint(&mut out, 0); // end of wireType
    out
}

pub(crate) fn slice_definition(id: i64, name: &str, elem: i64) -> Vec<u8> {
    definition(id, 2, |out| {
        put_uint(out, 1);
        put_common(out, name, id);
        put_uint(out, 1);
        put_int(out, elem);
    })
}

pub(crate) fn map_definition(id: i64, name: &str, key: i64, elem: i64) -> Vec<u8> {
    definition(id, 4, |out| {
        put_uint(out, 1);
        put_common(out, name, id);
        put_uint(out, 1);
        put_int(out, key);
        put_uint(out, 1);
        put_int(out, elem);
    })
}

pub(crate) fn struct_definition(id: i64, name: &str, fields: &[(&str, i64)]) -> Vec<u8> {
    definition(id, 3, |out| {
        put_uint(out, 1);
        put_common(out, name, id);
        put_uint(out, 1);
        put_len(out, fields.len());
        for (field, field_id) in fields {
            put_uint(out, 1);
            put_bytes(out, field.as_bytes());
            put_uint(out, 1);
            put_int(out, *field_id);
            put_uint(out, 0);
        }
    })
}

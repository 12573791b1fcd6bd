//! Decoding one self-contained gob stream (type definitions, then one value)
//! into `[]string`, `map[string]string` or hoop's `AgentConnectionParams`,
//! plus skipping any value of any wire type (unknown struct fields).
//!
//! It deliberately does not decode arbitrary values into a dynamic model,
//! does not need Go's `gob.Register` names (interfaces are only accepted as
//! `EnvVars` strings, and skipped elsewhere), and ignores anything after the
//! first value, as Go's `Decoder.Decode` does.

use std::collections::BTreeMap;
use std::rc::Rc;

use crate::GobError;
use crate::params::{AI_FIELD_NAMES, AgentConnectionParams, AiSessionAnalyzerParams};
use crate::types::{FieldCursor, TypeTable, WireField, WireType, ids, parse_wire_type, shorten};
use crate::wire::Reader;

/// Deepest nesting of values (and of interface values inside them) accepted.
/// hoop's own values nest three deep.
pub(crate) const MAX_DEPTH: usize = 100;

/// Longest interface type name Go accepts (decode.go, `decodeInterface`).
const MAX_INTERFACE_NAME: usize = 1024;

pub(crate) struct Decoder<'a> {
    r: Reader<'a>,
    types: TypeTable,
}

impl std::fmt::Debug for Decoder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The reader holds wire bytes that may be secrets; do not print them.
        f.debug_struct("Decoder").finish_non_exhaustive()
    }
}

fn next_depth(depth: usize) -> Result<usize, GobError> {
    let next = depth.saturating_add(1);
    if next > MAX_DEPTH {
        return Err(GobError::TooDeep(MAX_DEPTH));
    }
    Ok(next)
}

impl<'a> Decoder<'a> {
    /// Reads the type-definition messages and the id that opens the value
    /// message; the reader is left at the start of the value.
    pub(crate) fn start(data: &'a [u8]) -> Result<(Self, i64), GobError> {
        if data.is_empty() {
            return Err(GobError::Empty);
        }
        let mut d = Self {
            r: Reader::new(data),
            types: TypeTable::default(),
        };
        loop {
            d.r.next_message()?;
            let id = d.r.read_int()?;
            if id >= 0 {
                return Ok((d, id));
            }
            let id = id
                .checked_neg()
                .ok_or(GobError::Corrupt("invalid type id"))?;
            let wire = parse_wire_type(&mut d.r, id)?;
            if !d.r.at_message_end() {
                return Err(GobError::Corrupt("extra data after type definition"));
            }
            d.types.define(id, wire)?;
        }
    }

    fn user_type(&self, id: i64) -> Result<Rc<WireType>, GobError> {
        self.types.get(id).ok_or(GobError::UndefinedType(id))
    }

    /// The error for a value of type `id` where `expected` was wanted; an
    /// undefined id is reported as such rather than as a mismatch.
    fn mismatch(&self, context: &str, id: i64, expected: &'static str) -> GobError {
        if !self.types.is_known(id) {
            return GobError::UndefinedType(id);
        }
        GobError::TypeMismatch {
            context: context.to_owned(),
            found: self.types.describe(id),
            expected,
        }
    }

    /// A non-struct value at top level or inside an interface starts with a zero delta.
    fn singleton(&mut self) -> Result<(), GobError> {
        if self.r.read_uint()? != 0 {
            return Err(GobError::Corrupt("non-zero delta for singleton value"));
        }
        Ok(())
    }

    fn string(&mut self, context: impl FnOnce() -> String) -> Result<String, GobError> {
        let bytes = self.r.read_bytes()?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(GobError::InvalidUtf8 { context: context() }),
        }
    }

    // ---- skipping ----

    /// Skips one value of wire type `id` by parsing it (never by trusting a
    /// byte count, which Go's encoder gets wrong for nested interfaces).
    fn skip(&mut self, id: i64, depth: usize) -> Result<(), GobError> {
        let depth = next_depth(depth)?;
        match id {
            ids::BOOL | ids::INT | ids::UINT | ids::FLOAT => drop(self.r.read_uint()?),
            ids::COMPLEX => {
                self.r.read_uint()?;
                self.r.read_uint()?;
            }
            ids::BYTES | ids::STRING => drop(self.r.read_bytes()?),
            ids::INTERFACE => self.skip_interface(depth)?,
            _ => match &*self.user_type(id)? {
                WireType::Array { elem, len } => {
                    let n = self.r.read_count()?;
                    if i64::try_from(n).ok() != Some(*len) {
                        return Err(GobError::Corrupt("array length mismatch"));
                    }
                    for _ in 0..n {
                        self.skip(*elem, depth)?;
                    }
                }
                WireType::Slice { elem } => {
                    for _ in 0..self.r.read_count()? {
                        self.skip(*elem, depth)?;
                    }
                }
                WireType::Map { key, elem } => {
                    for _ in 0..self.r.read_count()? {
                        self.skip(*key, depth)?;
                        self.skip(*elem, depth)?;
                    }
                }
                WireType::Struct { fields, .. } => self.skip_struct(fields, depth)?,
                WireType::Marshaler => drop(self.r.read_bytes()?),
            },
        }
        Ok(())
    }

    fn skip_struct(&mut self, fields: &[WireField], depth: usize) -> Result<(), GobError> {
        let mut cursor = FieldCursor::default();
        while let Some(i) = cursor.next(&mut self.r, fields.len())? {
            let field_id = fields
                .get(i)
                .map(|f| f.id)
                .ok_or(GobError::Corrupt("field number out of range"))?;
            self.skip(field_id, depth)?;
        }
        Ok(())
    }

    /// Reads an interface's concrete type name and its type sequence (Go's
    /// `decodeTypeSequence(true)`): definitions may precede the concrete id,
    /// inline or in the next message. `None` for a nil interface.
    fn interface_header(&mut self) -> Result<Option<(&'a [u8], i64)>, GobError> {
        let name = self.r.read_bytes()?;
        if name.is_empty() {
            return Ok(None);
        }
        if name.len() > MAX_INTERFACE_NAME {
            return Err(GobError::Corrupt("interface type name too long"));
        }
        loop {
            if self.r.at_message_end() {
                self.r.next_message()?;
            }
            let id = self.r.read_int()?;
            if id >= 0 {
                return Ok(Some((name, id)));
            }
            let id = id
                .checked_neg()
                .ok_or(GobError::Corrupt("invalid type id"))?;
            let wire = parse_wire_type(&mut self.r, id)?;
            self.types.define(id, wire)?;
            if !self.r.at_message_end() {
                // Go: "after a type there may be a DelimitedValue still in the
                // buffer. Skip its count."
                self.r.read_uint()?;
            }
        }
    }

    fn skip_interface(&mut self, depth: usize) -> Result<(), GobError> {
        let Some((_, id)) = self.interface_header()? else {
            return Ok(());
        };
        self.r.read_uint()?; // byte count of the value; see `skip`
        if !self.types.is_struct(id) {
            self.singleton()?;
        }
        self.skip(id, depth)
    }

    // ---- typed values ----

    fn string_slice(
        &mut self,
        id: i64,
        context: &str,
        top_level: bool,
    ) -> Result<Vec<String>, GobError> {
        if !matches!(
            self.types.get(id).as_deref(),
            Some(WireType::Slice { elem: ids::STRING })
        ) {
            return Err(self.mismatch(context, id, "[]string"));
        }
        if top_level {
            self.singleton()?;
        }
        let n = self.r.read_count()?;
        let mut out = Vec::with_capacity(n.min(1024));
        for i in 0..n {
            out.push(self.string(|| format!("{context} element {i}"))?);
        }
        Ok(out)
    }

    fn string_map(&mut self, id: i64) -> Result<BTreeMap<String, String>, GobError> {
        let context = "string map";
        if !matches!(
            self.types.get(id).as_deref(),
            Some(WireType::Map {
                key: ids::STRING,
                elem: ids::STRING
            })
        ) {
            return Err(self.mismatch(context, id, "map[string]string"));
        }
        self.singleton()?;
        let mut out = BTreeMap::new();
        for _ in 0..self.r.read_count()? {
            let key = self.string(|| format!("{context} key"))?;
            let value = self.string(|| format!("{context} value of key {:?}", shorten(&key)))?;
            out.insert(key, value);
        }
        Ok(out)
    }

    fn string_field(&mut self, field: &WireField) -> Result<String, GobError> {
        if field.id != ids::STRING {
            return Err(self.mismatch(&format!("field {}", field.name), field.id, "string"));
        }
        self.string(|| format!("field {}", field.name))
    }

    fn bytes_field(&mut self, field: &WireField) -> Result<Vec<u8>, GobError> {
        if field.id != ids::BYTES {
            return Err(self.mismatch(&format!("field {}", field.name), field.id, "[]byte"));
        }
        Ok(self.r.read_bytes()?.to_vec())
    }

    /// `EnvVars map[string]any` whose values must be Go strings.
    fn env_vars(&mut self, id: i64) -> Result<BTreeMap<String, String>, GobError> {
        const FIELD: &str = "EnvVars";
        if !matches!(
            self.types.get(id).as_deref(),
            Some(WireType::Map {
                key: ids::STRING,
                elem: ids::INTERFACE
            })
        ) {
            return Err(self.mismatch("field EnvVars", id, "map[string]interface {}"));
        }
        let mut out = BTreeMap::new();
        for _ in 0..self.r.read_count()? {
            let key = self.string(|| "field EnvVars key".to_owned())?;
            let Some((name, concrete)) = self.interface_header()? else {
                return Err(GobError::NilInterface {
                    field: FIELD,
                    key: shorten(&key),
                });
            };
            if concrete != ids::STRING {
                return Err(GobError::InterfaceNotString {
                    field: FIELD,
                    key: shorten(&key),
                    found: shorten(&String::from_utf8_lossy(name)),
                });
            }
            self.r.read_uint()?; // byte count of the value
            self.singleton()?;
            let value =
                self.string(|| format!("field EnvVars value of key {:?}", shorten(&key)))?;
            out.insert(key, value);
        }
        Ok(out)
    }

    fn struct_fields(&self, id: i64, context: &str) -> Result<Rc<WireType>, GobError> {
        let wire = self
            .user_type(id)
            .map_err(|_| self.mismatch(context, id, "struct"))?;
        if !matches!(*wire, WireType::Struct { .. }) {
            return Err(self.mismatch(context, id, "struct"));
        }
        Ok(wire)
    }

    fn ai_session_analyzer(&mut self, id: i64) -> Result<AiSessionAnalyzerParams, GobError> {
        let wire = self.struct_fields(id, "field AISessionAnalyzer")?;
        let WireType::Struct { fields, .. } = &*wire else {
            return Err(self.mismatch("field AISessionAnalyzer", id, "struct"));
        };
        let mut out = AiSessionAnalyzerParams::default();
        let mut cursor = FieldCursor::default();
        while let Some(i) = cursor.next(&mut self.r, fields.len())? {
            let field = fields
                .get(i)
                .ok_or(GobError::Corrupt("field number out of range"))?;
            let slot = AI_FIELD_NAMES
                .iter()
                .position(|name| *name == field.name)
                .and_then(|pos| out.fields_mut().into_iter().nth(pos));
            match slot {
                Some(slot) => *slot = self.string_field(field)?,
                None => self.skip(field.id, 1)?,
            }
        }
        Ok(out)
    }

    fn connection_params(&mut self, id: i64) -> Result<AgentConnectionParams, GobError> {
        let wire = self.struct_fields(id, "AgentConnectionParams")?;
        let WireType::Struct { fields, .. } = &*wire else {
            return Err(self.mismatch("AgentConnectionParams", id, "struct"));
        };
        let mut p = AgentConnectionParams::default();
        let mut cursor = FieldCursor::default();
        while let Some(i) = cursor.next(&mut self.r, fields.len())? {
            let f = fields
                .get(i)
                .ok_or(GobError::Corrupt("field number out of range"))?;
            match f.name.as_str() {
                "ConnectionName" => p.connection_name = self.string_field(f)?,
                "ConnectionType" => p.connection_type = self.string_field(f)?,
                "ConnectionSubType" => p.connection_sub_type = self.string_field(f)?,
                "UserID" => p.user_id = self.string_field(f)?,
                "UserEmail" => p.user_email = self.string_field(f)?,
                "EnvVars" => p.env_vars = self.env_vars(f.id)?,
                "CmdList" => p.cmd_list = self.string_slice(f.id, "field CmdList", false)?,
                "ClientArgs" => {
                    p.client_args = self.string_slice(f.id, "field ClientArgs", false)?;
                }
                "ClientVerb" => p.client_verb = self.string_field(f)?,
                "ClientOrigin" => p.client_origin = self.string_field(f)?,
                "DlpProvider" => p.dlp_provider = self.string_field(f)?,
                "DlpMode" => p.dlp_mode = self.string_field(f)?,
                "DLPInfoTypes" => {
                    p.dlp_info_types = self.string_slice(f.id, "field DLPInfoTypes", false)?;
                }
                "DlpGcpRawCredentialsJSON" => {
                    p.dlp_gcp_raw_credentials_json = self.string_field(f)?
                }
                "DlpPresidioAnalyzerURL" => p.dlp_presidio_analyzer_url = self.string_field(f)?,
                "DlpPresidioAnonymizerURL" => {
                    p.dlp_presidio_anonymizer_url = self.string_field(f)?;
                }
                "DataMaskingEntityTypesData" => {
                    p.data_masking_entity_types_data = self.bytes_field(f)?;
                }
                "GuardRailRules" => p.guard_rail_rules = self.bytes_field(f)?,
                "AnalyzerMetricsRules" => p.analyzer_metrics_rules = self.bytes_field(f)?,
                "AISessionAnalyzer" => {
                    p.ai_session_analyzer = Some(self.ai_session_analyzer(f.id)?);
                }
                _ => self.skip(f.id, 0)?,
            }
        }
        Ok(p)
    }
}

pub(crate) fn string_slice(data: &[u8]) -> Result<Vec<String>, GobError> {
    let (mut d, id) = Decoder::start(data)?;
    d.string_slice(id, "string slice", true)
}

pub(crate) fn string_map(data: &[u8]) -> Result<BTreeMap<String, String>, GobError> {
    let (mut d, id) = Decoder::start(data)?;
    d.string_map(id)
}

pub(crate) fn connection_params(data: &[u8]) -> Result<AgentConnectionParams, GobError> {
    let (mut d, id) = Decoder::start(data)?;
    d.connection_params(id)
}

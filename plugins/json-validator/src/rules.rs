//! The validation core: the plugin's configuration ([`Rules::from_config`]) and the check of one
//! request body ([`Rules::check`]), with no gateway API in sight.
//!
//! A body is checked in three steps; the first one that fails gives the answer:
//!
//! 1. **Presence and size**: an empty body (or one of JSON whitespace only) is refused, and so
//!    is one over `max_bytes`.
//! 2. **Depth**: one pass over the raw bytes, before any parsing, finds the first container (object
//!    or array) nested deeper than `max_depth`. It follows the structure only (brackets, commas,
//!    colons, where strings begin and end); when that structure is broken it stops and leaves the
//!    syntax error to step 3. A hostile document thousands of levels deep is thus refused without
//!    being parsed and without recursion.
//! 3. **Syntax and schema**: one streaming pass of `serde_json` over the body, with no
//!    [`serde_json::Value`] built. It stops at the first error in document order, a syntax error or
//!    a schema error, whichever it reads first; a missing required field is noticed at the
//!    closing `}` of its object, so errors inside the object's members come first. Characters
//!    after the document are a syntax error.

use std::fmt::{self, Write as _};

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// `max_depth` when the configuration does not set it.
pub const DEFAULT_MAX_DEPTH: usize = 32;

/// The largest `max_depth` a configuration may set.
pub const MAX_DEPTH_LIMIT: usize = 64;

/// The keywords of a schema.
const KEYWORDS: [&str; 8] = [
    "type",
    "required",
    "properties",
    "items",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
];

/// Why a body was refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    /// Where: `$` for the whole document, then `.name` for a member whose name is an identifier
    /// (`[A-Za-z_][A-Za-z0-9_]*`), `["a b"]` (a JSON string) for any other member name, and `[2]`
    /// for an array element: `$.items[2].sku`.
    pub path: String,
    /// What, as a short sentence without the path: `expected string, found number`.
    pub message: String,
    /// The body is over `max_bytes` (answered `413`, not `400`).
    pub too_large: bool,
}

impl Invalid {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Invalid {
            path: path.into(),
            message: message.into(),
            too_large: false,
        }
    }
}

impl fmt::Display for Invalid {
    /// `<path>: <message>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl std::error::Error for Invalid {}

/// The configured checks of one plugin use.
#[derive(Debug, Clone)]
pub struct Rules {
    max_depth: usize,
    /// Largest body checked; a larger one is refused unread.
    max_bytes: Option<usize>,
    /// `None` when there is no schema or the schema checks nothing (`{}`).
    schema: Option<Schema>,
    /// Upper-case methods whose requests are checked.
    methods: Vec<String>,
}

/// `methods` when the configuration does not set it: the methods whose requests carry a
/// document.
pub const DEFAULT_METHODS: [&str; 3] = ["POST", "PUT", "PATCH"];

impl Default for Rules {
    /// Depth at most [`DEFAULT_MAX_DEPTH`], no schema: any JSON document passes.
    fn default() -> Self {
        Rules {
            max_depth: DEFAULT_MAX_DEPTH,
            max_bytes: None,
            schema: None,
            methods: DEFAULT_METHODS.map(String::from).to_vec(),
        }
    }
}

impl Rules {
    /// Reads the plugin's configuration (`null` or `{}` give the defaults):
    ///
    /// - `methods`: the methods whose requests are checked, default `[POST, PUT, PATCH]`;
    ///   requests with other methods pass unchecked.
    /// - `max_depth`: an integer in `1..=64`, default 32. Each object or array level counts
    ///   one: `{}` is 1 deep, `{"a":[1]}` 2, a lone scalar 0.
    /// - `max_bytes`: the largest body, a positive integer (default: the plugin use's
    ///   `body_limit`, which the gateway enforces before the plugin runs); a larger one is
    ///   answered `413`.
    /// - `schema`: a subset of JSON Schema with the keywords `type` (one of `object`, `array`,
    ///   `string`, `number`, `integer`, `boolean`, `null`, or a list of them), `required` (field
    ///   names; they need not be listed in `properties`), `properties` (field name to schema),
    ///   `items` (the schema of every element of an array), `minLength` and `maxLength` (of a
    ///   string, in Unicode characters), `minimum` and `maximum` (of a number, inclusive). As in
    ///   JSON Schema, `required` and `properties` apply only to objects, `items` only to
    ///   arrays, the lengths only to strings and the bounds only to numbers.
    ///
    /// Any other key or keyword is refused. The error is the first problem found, with its place:
    /// `schema.properties.items.items: unsupported keyword "pattern" (supported: type,
    /// required, properties, items, minLength, maxLength, minimum, maximum)`.
    pub fn from_config(config: &Value) -> Result<Rules, String> {
        let map = match config {
            Value::Null => return Ok(Rules::default()),
            Value::Object(map) => map,
            other => {
                return Err(format!(
                    "the configuration must be a mapping, found {}",
                    kind_of(other)
                ))
            }
        };
        if let Some(key) = map
            .keys()
            .find(|k| !["max_depth", "max_bytes", "schema", "methods"].contains(&k.as_str()))
        {
            return Err(format!(
                "unknown key {} (supported: max_depth, max_bytes, schema, methods)",
                quoted(key)
            ));
        }
        let methods = match map.get("methods") {
            None => DEFAULT_METHODS.map(String::from).to_vec(),
            Some(Value::Array(list)) if !list.is_empty() => {
                let mut methods = Vec::new();
                for (i, m) in list.iter().enumerate() {
                    match m.as_str() {
                        Some(m) if !m.is_empty() && m.bytes().all(|b| b.is_ascii_alphabetic()) => {
                            methods.push(m.to_ascii_uppercase())
                        }
                        _ => {
                            return Err(format!(
                                "methods[{i}]: must be a method name such as POST, found {}",
                                described(m)
                            ))
                        }
                    }
                }
                methods
            }
            Some(other) => {
                return Err(format!(
                    "methods: must be a non-empty list of method names, found {}",
                    described(other)
                ))
            }
        };
        let max_depth = match map.get("max_depth") {
            None => DEFAULT_MAX_DEPTH,
            Some(value) => match value.as_u64() {
                Some(n @ 1..=64) => n as usize,
                _ => {
                    return Err(format!(
                        "max_depth: must be an integer in 1..={MAX_DEPTH_LIMIT}, found {}",
                        described(value)
                    ))
                }
            },
        };
        let max_bytes = match map.get("max_bytes") {
            None => None,
            Some(value) => match value.as_u64() {
                Some(n) if n > 0 => Some(usize::try_from(n).unwrap_or(usize::MAX)),
                _ => {
                    return Err(format!(
                        "max_bytes: must be a positive integer, found {}",
                        described(value)
                    ))
                }
            },
        };
        let schema = match map.get("schema") {
            None => None,
            Some(value) => Schema::from_config(value, "schema", 0)?,
        };
        Ok(Rules {
            max_depth,
            max_bytes,
            schema,
            methods,
        })
    }

    /// Whether requests with `method` are checked.
    pub fn applies_to(&self, method: &str) -> bool {
        self.methods.iter().any(|m| m == method)
    }

    /// The deepest nesting a body may have.
    pub fn max_depth(&self) -> usize {
        self.max_depth
    }

    /// Checks one body; see the [module documentation](self) for the order of the checks.
    ///
    /// Messages:
    ///
    /// - `the body is empty; a JSON document is required` (path `$`);
    /// - `nested deeper than N levels` (path of the first container too deep);
    /// - `not valid JSON: <serde_json's message, with line and column>` (path `$`);
    /// - `expected <types>, found <type>`, e.g. `expected string or null, found number`, and
    ///   for a number where an integer was expected, the number when short:
    ///   `expected integer, found number 1.5`. String values are never repeated;
    /// - `missing required field "sku"` (path of the object);
    /// - `expected at most 8 characters, found 12`, `expected at least 1, found -3` (lengths and
    ///   bounds; string values are never repeated);
    /// - `the body is 2048 bytes, over the limit of 1024 bytes` (path `$`, `too_large`).
    pub fn check(&self, body: &[u8]) -> Result<(), Invalid> {
        if let Some(limit) = self.max_bytes.filter(|limit| body.len() > *limit) {
            return Err(Invalid {
                too_large: true,
                ..Invalid::new(
                    "$",
                    format!(
                        "the body is {} bytes, over the limit of {limit} bytes",
                        body.len()
                    ),
                )
            });
        }
        if body.iter().all(|&b| is_whitespace(b)) {
            return Err(Invalid::new(
                "$",
                "the body is empty; a JSON document is required",
            ));
        }
        scan_depth(body, self.max_depth)?;

        let mut de = serde_json::Deserializer::from_slice(body);
        let mut walk = Walk {
            path: String::from("$"),
            invalid: None,
        };
        let result = match &self.schema {
            Some(schema) => ValueSeed {
                schema,
                walk: &mut walk,
            }
            .deserialize(&mut de),
            None => Skip.deserialize(&mut de),
        };
        match result.and_then(|()| de.end()) {
            Ok(()) => Ok(()),
            Err(err) => Err(walk
                .invalid
                .take()
                .unwrap_or_else(|| Invalid::new("$", format!("not valid JSON: {err}")))),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration

/// The set of types a schema allows, one bit per name of [`TYPE_NAMES`]; empty allows any.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Types(u8);

const TYPE_NAMES: [&str; 7] = [
    "object", "array", "string", "number", "integer", "boolean", "null",
];

impl Types {
    const OBJECT: u8 = 1 << 0;
    const ARRAY: u8 = 1 << 1;
    const STRING: u8 = 1 << 2;
    const NUMBER: u8 = 1 << 3;
    const INTEGER: u8 = 1 << 4;
    const BOOLEAN: u8 = 1 << 5;
    const NULL: u8 = 1 << 6;

    fn any(self) -> bool {
        self.0 == 0
    }

    fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }

    /// Whether a value of this kind passes (`any` or the kind is listed).
    fn allows(self, bit: u8) -> bool {
        self.any() || self.has(bit)
    }

    /// `string`, `string or null`, `object, array or null`.
    fn describe(self) -> String {
        let names: Vec<&str> = TYPE_NAMES
            .iter()
            .enumerate()
            .filter(|(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, name)| *name)
            .collect();
        match names.split_last() {
            None => "any value".to_string(),
            Some((last, [])) => (*last).to_string(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        }
    }
}

/// One schema of the configuration.
#[derive(Debug, Clone, Default)]
struct Schema {
    types: Types,
    /// The fields named by `properties` or `required`, sorted by name (binary search).
    fields: Vec<Field>,
    /// `required`, in the configuration's order: the first missing one is reported.
    required: Vec<String>,
    /// `items`, unless absent or checking nothing.
    items: Option<Box<Schema>>,
    /// `minLength` and `maxLength` of a string, in characters.
    min_length: Option<u64>,
    max_length: Option<u64>,
    /// `minimum` and `maximum` of a number, inclusive.
    minimum: Option<f64>,
    maximum: Option<f64>,
}

#[derive(Debug, Clone)]
struct Field {
    name: String,
    /// Its schema under `properties`, unless absent or checking nothing.
    schema: Option<Schema>,
    /// Its index in [`Schema::required`].
    required: Option<usize>,
}

impl Schema {
    /// Whether the schema bounds a string's length or a number.
    fn has_bounds(&self) -> bool {
        self.min_length.is_some()
            || self.max_length.is_some()
            || self.minimum.is_some()
            || self.maximum.is_some()
    }

    /// Reads the schema at `path` (`schema`, `schema.properties.name`, ...), `level` schemas
    /// below the root one. `None` for a schema that checks nothing.
    fn from_config(value: &Value, path: &str, level: usize) -> Result<Option<Schema>, String> {
        let map = match value {
            Value::Object(map) => map,
            other => {
                return Err(format!(
                    "{path}: a schema must be a mapping, found {}",
                    kind_of(other)
                ))
            }
        };
        // A schema deeper than this applies to no document that passes the depth check; the
        // limit also bounds this recursion.
        if level > MAX_DEPTH_LIMIT {
            return Err(format!(
                "{path}: nested deeper than {MAX_DEPTH_LIMIT} levels, deeper than any document may be"
            ));
        }
        if let Some(key) = map.keys().find(|k| !KEYWORDS.contains(&k.as_str())) {
            return Err(format!(
                "{path}: unsupported keyword {} (supported: {})",
                quoted(key),
                KEYWORDS.join(", ")
            ));
        }
        let types = match map.get("type") {
            None => Types::default(),
            Some(value) => parse_types(value, &format!("{path}.type"))?,
        };
        let required = match map.get("required") {
            None => Vec::new(),
            Some(value) => parse_required(value, &format!("{path}.required"))?,
        };
        let mut fields = match map.get("properties") {
            None => Vec::new(),
            Some(value) => parse_properties(value, &format!("{path}.properties"), level)?,
        };
        let items = match map.get("items") {
            None => None,
            Some(Value::Array(_)) => {
                return Err(format!(
                    "{path}.items: must be a schema (a mapping); the list form of items is not supported"
                ))
            }
            Some(value) => Schema::from_config(value, &format!("{path}.items"), level + 1)?,
        };

        let length = |key: &str| -> Result<Option<u64>, String> {
            match map.get(key) {
                None => Ok(None),
                Some(value) => value.as_u64().map(Some).ok_or_else(|| {
                    format!(
                        "{path}.{key}: must be a non-negative integer, found {}",
                        described(value)
                    )
                }),
            }
        };
        let (min_length, max_length) = (length("minLength")?, length("maxLength")?);
        let bound = |key: &str| -> Result<Option<f64>, String> {
            match map.get(key) {
                None => Ok(None),
                Some(value) => value.as_f64().map(Some).ok_or_else(|| {
                    format!("{path}.{key}: must be a number, found {}", kind_of(value))
                }),
            }
        };
        let (minimum, maximum) = (bound("minimum")?, bound("maximum")?);
        if let (Some(min), Some(max)) = (min_length, max_length) {
            if min > max {
                return Err(format!(
                    "{path}: minLength {min} is over maxLength {max}: no string has such a length"
                ));
            }
        }
        if let (Some(min), Some(max)) = (minimum, maximum) {
            if min > max {
                return Err(format!(
                    "{path}: minimum {min} is over maximum {max}: no number is in that range"
                ));
            }
        }

        if !types.any() {
            if (min_length.is_some() || max_length.is_some()) && !types.has(Types::STRING) {
                return Err(format!(
                    "{path}: keywords \"minLength\" and \"maxLength\" apply to strings only, but type does not allow string"
                ));
            }
            if (minimum.is_some() || maximum.is_some())
                && !types.has(Types::NUMBER)
                && !types.has(Types::INTEGER)
            {
                return Err(format!(
                    "{path}: keywords \"minimum\" and \"maximum\" apply to numbers only, but type allows neither number nor integer"
                ));
            }
            let object_keyword = if map.contains_key("required") {
                Some("required")
            } else if map.contains_key("properties") {
                Some("properties")
            } else {
                None
            };
            if let Some(keyword) = object_keyword.filter(|_| !types.has(Types::OBJECT)) {
                return Err(format!(
                    "{path}: keyword \"{keyword}\" applies to objects only, but type does not allow object"
                ));
            }
            if map.contains_key("items") && !types.has(Types::ARRAY) {
                return Err(format!(
                    "{path}: keyword \"items\" applies to arrays only, but type does not allow array"
                ));
            }
        }

        for (index, name) in required.iter().enumerate() {
            match fields.binary_search_by(|f| f.name.as_str().cmp(name)) {
                Ok(at) => fields[at].required = Some(index),
                Err(at) => fields.insert(
                    at,
                    Field {
                        name: name.clone(),
                        schema: None,
                        required: Some(index),
                    },
                ),
            }
        }

        let schema = Schema {
            types,
            fields,
            required,
            items: items.map(Box::new),
            min_length,
            max_length,
            minimum,
            maximum,
        };
        // A field without a schema is there only to be required.
        let checks_nothing = schema.types.any()
            && schema.required.is_empty()
            && schema.items.is_none()
            && schema.fields.iter().all(|f| f.schema.is_none())
            && !schema.has_bounds();
        Ok(if checks_nothing { None } else { Some(schema) })
    }
}

fn parse_types(value: &Value, path: &str) -> Result<Types, String> {
    fn one(name: &str, path: &str) -> Result<u8, String> {
        match TYPE_NAMES.iter().position(|t| *t == name) {
            Some(i) => Ok(1 << i),
            None => Err(format!(
                "{path}: unknown type {} (known: {})",
                quoted(name),
                TYPE_NAMES.join(", ")
            )),
        }
    }
    match value {
        Value::String(name) => Ok(Types(one(name, path)?)),
        Value::Array(list) if list.is_empty() => Err(format!("{path}: the list of types is empty")),
        Value::Array(list) => {
            let mut bits = 0;
            for (i, item) in list.iter().enumerate() {
                let item_path = format!("{path}[{i}]");
                match item {
                    Value::String(name) => bits |= one(name, &item_path)?,
                    other => {
                        return Err(format!(
                            "{item_path}: must be a type name, found {}",
                            found_for_type(other)
                        ))
                    }
                }
            }
            Ok(Types(bits))
        }
        other => Err(format!(
            "{path}: must be a type name or a list of type names, found {}",
            found_for_type(other)
        )),
    }
}

/// What was found instead of a type name; YAML reads an unquoted `null` as the null value.
fn found_for_type(value: &Value) -> &'static str {
    match value {
        Value::Null => r#"null (write "null", quoted, for the null type)"#,
        other => kind_of(other),
    }
}

fn parse_required(value: &Value, path: &str) -> Result<Vec<String>, String> {
    let Value::Array(list) = value else {
        return Err(format!(
            "{path}: must be a list of field names, found {}",
            kind_of(value)
        ));
    };
    let mut names: Vec<String> = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let Value::String(name) = item else {
            return Err(format!(
                "{path}[{i}]: must be a field name (a string), found {}",
                kind_of(item)
            ));
        };
        if names.contains(name) {
            return Err(format!("{path}[{i}]: {} is listed twice", quoted(name)));
        }
        names.push(name.clone());
    }
    Ok(names)
}

fn parse_properties(value: &Value, path: &str, level: usize) -> Result<Vec<Field>, String> {
    let Value::Object(map) = value else {
        return Err(format!(
            "{path}: must be a mapping of field names to schemas, found {}",
            kind_of(value)
        ));
    };
    parse_fields(map, path, level)
}

fn parse_fields(map: &Map<String, Value>, path: &str, level: usize) -> Result<Vec<Field>, String> {
    let mut fields = Vec::with_capacity(map.len());
    for (name, value) in map {
        let mut field_path = path.to_string();
        push_key(&mut field_path, name);
        fields.push(Field {
            name: name.clone(),
            schema: Schema::from_config(value, &field_path, level + 1)?,
            required: None,
        });
    }
    // serde_json's map is sorted by key without its `preserve_order` feature; sort anyway.
    fields.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(fields)
}

/// `string`, `number 3`, ... for configuration messages (short values only).
fn described(value: &Value) -> String {
    match value {
        Value::Number(n) => {
            let text = n.to_string();
            if text.len() <= 24 {
                text
            } else {
                "number".to_string()
            }
        }
        other => kind_of(other).to_string(),
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "mapping",
    }
}

// ---------------------------------------------------------------------------------------------
// Paths

/// Whether `key` is written `.key` in a path (else `["key"]`).
fn is_identifier(key: &str) -> bool {
    let mut bytes = key.bytes();
    matches!(bytes.next(), Some(b'A'..=b'Z' | b'a'..=b'z' | b'_'))
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Appends the path segment of member `key`: `.key` or `["key"]`.
fn push_key(path: &mut String, key: &str) {
    if is_identifier(key) {
        path.push('.');
        path.push_str(key);
    } else {
        path.push('[');
        push_quoted(path, key);
        path.push(']');
    }
}

/// Appends `s` as a JSON string, escaped as `serde_json` does.
fn push_quoted(out: &mut String, s: &str) {
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
            c if c < ' ' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    push_quoted(&mut out, s);
    out
}

// ---------------------------------------------------------------------------------------------
// Depth pre-scan

fn is_whitespace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// What the scanner may meet next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A value: the root, after `:`, after `,` in an array.
    Value,
    /// A value or `]`: right after `[`.
    ValueOrClose,
    /// A key: after `,` in an object.
    Key,
    /// A key or `}`: right after `{`.
    KeyOrClose,
    Colon,
    CommaOrClose,
    /// Nothing but whitespace: after the root value.
    End,
}

/// One open container.
#[derive(Debug, Clone, Copy)]
struct Level {
    object: bool,
    /// The current key of an object, as its raw bytes with the quotes.
    key: (usize, usize),
    /// The current element of an array.
    index: usize,
}

/// Finds the first container nested deeper than `max_depth`, in one pass and without recursion.
/// Broken structure stops the scan with `Ok`: the parser then reports the syntax error, which
/// comes before any depth problem.
fn scan_depth(body: &[u8], max_depth: usize) -> Result<(), Invalid> {
    let max_depth = max_depth.min(MAX_DEPTH_LIMIT);
    let mut stack = [Level {
        object: false,
        key: (0, 0),
        index: 0,
    }; MAX_DEPTH_LIMIT];
    let mut depth = 0;
    let mut expect = Expect::Value;
    let after_value = |depth: usize| {
        if depth == 0 {
            Expect::End
        } else {
            Expect::CommaOrClose
        }
    };
    // Whether the previous byte belongs to a scalar (number, true, false, null).
    let mut in_scalar = false;
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        let was_scalar = std::mem::replace(&mut in_scalar, false);
        match b {
            b' ' | b'\t' | b'\n' | b'\r' => {}
            b'"' => {
                let Some(end) = string_end(body, i) else {
                    return Ok(());
                };
                match expect {
                    Expect::Key | Expect::KeyOrClose => {
                        stack[depth - 1].key = (i, end + 1);
                        expect = Expect::Colon;
                    }
                    Expect::Value | Expect::ValueOrClose => expect = after_value(depth),
                    _ => return Ok(()),
                }
                i = end;
            }
            b':' if expect == Expect::Colon => expect = Expect::Value,
            b',' if expect == Expect::CommaOrClose => {
                let top = &mut stack[depth - 1];
                if top.object {
                    expect = Expect::Key;
                } else {
                    top.index += 1;
                    expect = Expect::Value;
                }
            }
            b'{' | b'[' if matches!(expect, Expect::Value | Expect::ValueOrClose) => {
                if depth >= max_depth {
                    return match path_of(body, &stack[..depth]) {
                        Some(path) => Err(Invalid::new(path, too_deep(max_depth))),
                        None => Ok(()), // a key with a bad escape: a syntax error
                    };
                }
                let object = b == b'{';
                stack[depth] = Level {
                    object,
                    key: (0, 0),
                    index: 0,
                };
                depth += 1;
                expect = if object {
                    Expect::KeyOrClose
                } else {
                    Expect::ValueOrClose
                };
            }
            b'}' | b']' => {
                let closes = depth > 0
                    && stack[depth - 1].object == (b == b'}')
                    && matches!(
                        expect,
                        Expect::KeyOrClose | Expect::ValueOrClose | Expect::CommaOrClose
                    );
                if !closes {
                    return Ok(());
                }
                depth -= 1;
                expect = after_value(depth);
            }
            b':' | b',' | b'{' | b'[' => return Ok(()),
            _ => {
                if !was_scalar {
                    if !matches!(expect, Expect::Value | Expect::ValueOrClose) {
                        return Ok(());
                    }
                    expect = after_value(depth);
                }
                in_scalar = true;
            }
        }
        i += 1;
    }
    Ok(())
}

/// The index of the quote that closes the string opening at `start`.
fn string_end(body: &[u8], start: usize) -> Option<usize> {
    let mut j = start + 1;
    while j < body.len() {
        match body[j] {
            b'"' => return Some(j),
            b'\\' => j += 2,
            _ => j += 1,
        }
    }
    None
}

/// The path of the value at the current position of the open containers `levels`.
fn path_of(body: &[u8], levels: &[Level]) -> Option<String> {
    let mut path = String::from("$");
    for level in levels {
        if level.object {
            let key: String = serde_json::from_slice(&body[level.key.0..level.key.1]).ok()?;
            push_key(&mut path, &key);
        } else {
            let _ = write!(path, "[{}]", level.index);
        }
    }
    Some(path)
}

fn too_deep(max_depth: usize) -> String {
    if max_depth == 1 {
        "nested deeper than 1 level".to_string()
    } else {
        format!("nested deeper than {max_depth} levels")
    }
}

// ---------------------------------------------------------------------------------------------
// Schema check, streaming

/// The state of one check: where we are, and the schema error that stopped it.
struct Walk {
    path: String,
    invalid: Option<Invalid>,
}

/// A value read with `deserialize_any`, checked against `schema`.
struct ValueSeed<'a> {
    schema: &'a Schema,
    walk: &'a mut Walk,
}

/// A number as `serde_json` hands it over.
#[derive(Clone, Copy)]
enum Num {
    I(i64),
    U(u64),
    F(f64),
}

impl Num {
    /// Whether this is an integer for `"type": "integer"`: any JSON number without a fractional
    /// part, as JSON Schema (draft 6 and later) defines it. So `2`, `-7` and `2.0`, `1e3` are
    /// integers, and so are integers too large for 64 bits (`1e20`, read as floating point);
    /// `1.5` is not.
    fn is_integer(self) -> bool {
        match self {
            Num::I(_) | Num::U(_) => true,
            Num::F(f) => f.is_finite() && f.fract() == 0.0,
        }
    }

    fn as_f64(self) -> f64 {
        match self {
            Num::I(n) => n as f64,
            Num::U(n) => n as f64,
            Num::F(f) => f,
        }
    }

    /// The number as `serde_json` writes it (`1.5`, `1e300`), if at most 24 characters.
    fn short_text(self) -> Option<String> {
        let text = match self {
            Num::I(n) => n.to_string(),
            Num::U(n) => n.to_string(),
            Num::F(f) => serde_json::Number::from_f64(f)?.to_string(),
        };
        (text.len() <= 24).then_some(text)
    }
}

impl ValueSeed<'_> {
    /// Records the error at the current path and stops the parse.
    fn fail<E: de::Error>(self, message: String) -> Result<(), E> {
        self.walk.invalid = Some(Invalid::new(self.walk.path.as_str(), message));
        Err(E::custom("invalid body"))
    }

    fn mismatch<E: de::Error>(self, found: &str) -> Result<(), E> {
        let message = format!("expected {}, found {found}", self.schema.types.describe());
        self.fail(message)
    }

    fn scalar<E: de::Error>(self, bit: u8, found: &str) -> Result<(), E> {
        if self.schema.types.allows(bit) {
            Ok(())
        } else {
            self.mismatch(found)
        }
    }

    fn number<E: de::Error>(self, n: Num) -> Result<(), E> {
        let types = self.schema.types;
        if types.allows(Types::NUMBER) || (types.has(Types::INTEGER) && n.is_integer()) {
            return self.in_range(n);
        }
        match n.short_text().filter(|_| types.has(Types::INTEGER)) {
            Some(text) => self.mismatch(&format!("number {text}")),
            None => self.mismatch("number"),
        }
    }
}

impl ValueSeed<'_> {
    /// Checks `minimum` and `maximum` (compared as 64-bit floating point).
    fn in_range<E: de::Error>(self, n: Num) -> Result<(), E> {
        let value = n.as_f64();
        let found = || n.short_text().unwrap_or_else(|| "a number".to_owned());
        if let Some(min) = self.schema.minimum.filter(|min| value < *min) {
            let message = format!("expected at least {}, found {}", bound_text(min), found());
            return self.fail(message);
        }
        if let Some(max) = self.schema.maximum.filter(|max| value > *max) {
            let message = format!("expected at most {}, found {}", bound_text(max), found());
            return self.fail(message);
        }
        Ok(())
    }

    /// Checks `minLength` and `maxLength`, counting Unicode characters.
    fn length<E: de::Error>(self, s: &str) -> Result<(), E> {
        let (min, max) = (self.schema.min_length, self.schema.max_length);
        if min.is_none() && max.is_none() {
            return Ok(());
        }
        let chars = s.chars().count() as u64;
        let plural = |n: u64| if n == 1 { "" } else { "s" };
        if let Some(min) = min.filter(|min| chars < *min) {
            let message = format!(
                "expected at least {min} character{}, found {chars}",
                plural(min)
            );
            return self.fail(message);
        }
        if let Some(max) = max.filter(|max| chars > *max) {
            let message = format!(
                "expected at most {max} character{}, found {chars}",
                plural(max)
            );
            return self.fail(message);
        }
        Ok(())
    }
}

/// A bound as the configuration wrote it, near enough: `0`, `2.5`, `100000`.
fn bound_text(bound: f64) -> String {
    if bound.fract() == 0.0 && bound.abs() < 1e15 {
        return (bound as i64).to_string();
    }
    serde_json::Number::from_f64(bound).map_or_else(|| bound.to_string(), |n| n.to_string())
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.scalar(Types::BOOLEAN, "boolean")
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<(), E> {
        self.number(Num::I(n))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<(), E> {
        self.number(Num::U(n))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<(), E> {
        self.number(Num::F(n))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<(), E> {
        if !self.schema.types.allows(Types::STRING) {
            return self.mismatch("string");
        }
        self.length(s)
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.scalar(Types::NULL, "null")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if !self.schema.types.allows(Types::ARRAY) {
            return self.mismatch("array");
        }
        let Some(items) = &self.schema.items else {
            while seq.next_element_seed(Skip)?.is_some() {}
            return Ok(());
        };
        let base = self.walk.path.len();
        for index in 0usize.. {
            let _ = write!(self.walk.path, "[{index}]");
            let seed = ValueSeed {
                schema: items,
                walk: &mut *self.walk,
            };
            let more = seq.next_element_seed(seed)?;
            self.walk.path.truncate(base);
            if more.is_none() {
                break;
            }
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let schema = self.schema;
        if !schema.types.allows(Types::OBJECT) {
            return self.mismatch("object");
        }
        if schema.fields.is_empty() {
            while map.next_key_seed(Skip)?.is_some() {
                map.next_value_seed(Skip)?;
            }
            return Ok(());
        }
        let mut seen = Seen::new(schema.required.len());
        let base = self.walk.path.len();
        loop {
            let key = KeySeed {
                fields: &schema.fields,
                path: &mut self.walk.path,
            };
            let Some(found) = map.next_key_seed(key)? else {
                break;
            };
            let Some(field) = found.map(|at| &schema.fields[at]) else {
                map.next_value_seed(Skip)?;
                continue;
            };
            if let Some(index) = field.required {
                seen.set(index);
            }
            match &field.schema {
                Some(field_schema) => {
                    let seed = ValueSeed {
                        schema: field_schema,
                        walk: &mut *self.walk,
                    };
                    map.next_value_seed(seed)?;
                    self.walk.path.truncate(base);
                }
                None => {
                    map.next_value_seed(Skip)?;
                }
            }
        }
        match seen.first_missing() {
            Some(index) => {
                let message = format!("missing required field {}", quoted(&schema.required[index]));
                self.fail(message)
            }
            None => Ok(()),
        }
    }
}

/// Reads a member name and looks it up among the schema's fields, without allocating; when the
/// field has a schema, appends the member's segment to the path.
struct KeySeed<'a> {
    fields: &'a [Field],
    path: &'a mut String,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<usize>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        let found = self
            .fields
            .binary_search_by(|f| f.name.as_str().cmp(key))
            .ok();
        if let Some(at) = found {
            if self.fields[at].schema.is_some() {
                push_key(self.path, key);
            }
        }
        Ok(found)
    }
}

/// A value checked for syntax only. Unlike `serde::de::IgnoredAny`, with which `serde_json` skips
/// strings without looking inside them, this reads every string and number as the parse of a
/// `serde_json::Value` does, so that bad UTF-8, lone surrogate escapes (`"\ud800"`) and numbers
/// out of range are refused wherever they are.
struct Skip;

impl<'de> DeserializeSeed<'de> for Skip {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Skip {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Skip)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key_seed(Skip)?.is_some() {
            map.next_value_seed(Skip)?;
        }
        Ok(())
    }
}

/// Which required fields an object has shown so far.
enum Seen {
    Few { count: usize, bits: u64 },
    Many(Vec<bool>),
}

impl Seen {
    fn new(count: usize) -> Self {
        if count <= 64 {
            Seen::Few { count, bits: 0 }
        } else {
            Seen::Many(vec![false; count])
        }
    }

    fn set(&mut self, index: usize) {
        match self {
            Seen::Few { bits, .. } => *bits |= 1 << index,
            Seen::Many(seen) => seen[index] = true,
        }
    }

    fn first_missing(&self) -> Option<usize> {
        match self {
            Seen::Few { count, bits } => {
                let all = if *count == 64 {
                    u64::MAX
                } else {
                    (1u64 << count) - 1
                };
                let missing = !bits & all;
                (missing != 0).then(|| missing.trailing_zeros() as usize)
            }
            Seen::Many(seen) => seen.iter().position(|s| !s),
        }
    }
}

// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::{Duration, Instant};

    fn rules(config: Value) -> Rules {
        Rules::from_config(&config).unwrap_or_else(|e| panic!("config refused: {e}"))
    }

    fn config_error(config: Value) -> String {
        match Rules::from_config(&config) {
            Ok(_) => panic!("config accepted: {config}"),
            Err(e) => e,
        }
    }

    fn schema(schema: Value) -> Rules {
        rules(json!({ "schema": schema }))
    }

    fn invalid(rules: &Rules, body: &str) -> (String, String) {
        match rules.check(body.as_bytes()) {
            Ok(()) => panic!("body accepted: {body}"),
            Err(Invalid { path, message, .. }) => (path, message),
        }
    }

    fn err(path: &str, message: &str) -> (String, String) {
        (path.to_string(), message.to_string())
    }

    fn order_schema() -> Rules {
        schema(json!({
            "type": "object",
            "required": ["name", "items"],
            "properties": {
                "name": { "type": "string" },
                "items": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["sku"],
                        "properties": { "sku": { "type": "string" }, "qty": { "type": "integer" } }
                    }
                }
            }
        }))
    }

    // --- configuration ---------------------------------------------------------------------

    #[test]
    fn config_defaults() {
        for config in [json!(null), json!({})] {
            let r = rules(config);
            assert_eq!(r.max_depth(), DEFAULT_MAX_DEPTH);
            assert!(r.schema.is_none());
        }
        assert_eq!(rules(json!({ "max_depth": 1 })).max_depth(), 1);
        assert_eq!(rules(json!({ "max_depth": 64 })).max_depth(), 64);
        // A schema that checks nothing is dropped.
        assert!(schema(json!({})).schema.is_none());
        assert!(schema(json!({ "properties": { "a": {} } }))
            .schema
            .is_none());
    }

    #[test]
    fn string_lengths_count_characters() {
        let r = schema(json!({ "type": "object", "properties": {
            "code": { "type": "string", "minLength": 2, "maxLength": 4 } } }));
        assert!(r.check(br#"{"code":"ab"}"#).is_ok());
        // four characters, eight bytes
        assert!(r
            .check("{\"code\":\"\u{e9}\u{e9}\u{e9}\u{e9}\"}".as_bytes())
            .is_ok());
        assert_eq!(
            invalid(&r, r#"{"code":"a"}"#),
            (
                "$.code".into(),
                "expected at least 2 characters, found 1".into()
            )
        );
        assert_eq!(
            invalid(&r, r#"{"code":"abcde"}"#),
            (
                "$.code".into(),
                "expected at most 4 characters, found 5".into()
            )
        );
    }

    #[test]
    fn number_ranges_are_inclusive() {
        let r = schema(json!({ "type": "array", "items": {
            "type": "number", "minimum": 0, "maximum": 2.5 } }));
        assert!(r.check(b"[0, 1, 2.5, 0.0]").is_ok());
        assert_eq!(
            invalid(&r, "[1, -3]"),
            ("$[1]".into(), "expected at least 0, found -3".into())
        );
        assert_eq!(
            invalid(&r, "[2.51]"),
            ("$[0]".into(), "expected at most 2.5, found 2.51".into())
        );
        // a bound needs a type that can have it
        assert_eq!(
            config_error(json!({ "schema": { "type": "string", "minimum": 1 } })),
            r#"schema: keywords "minimum" and "maximum" apply to numbers only, but type allows neither number nor integer"#
        );
        assert_eq!(
            config_error(json!({ "schema": { "minLength": 3, "maxLength": 2 } })),
            "schema: minLength 3 is over maxLength 2: no string has such a length"
        );
        assert_eq!(
            config_error(json!({ "schema": { "maxLength": -1 } })),
            "schema.maxLength: must be a non-negative integer, found -1"
        );
    }

    #[test]
    fn a_body_over_max_bytes_is_refused_unread() {
        let r = rules(json!({ "max_bytes": 8 }));
        assert!(r.check(br#"{"a":1}"#).is_ok());
        let e = r.check(br#"{"a":12345}"#).unwrap_err();
        assert!(e.too_large);
        assert_eq!(
            e.to_string(),
            "$: the body is 11 bytes, over the limit of 8 bytes"
        );
        assert_eq!(
            config_error(json!({ "max_bytes": 0 })),
            "max_bytes: must be a positive integer, found 0"
        );
    }

    #[test]
    fn config_top_level_errors() {
        assert_eq!(
            config_error(json!([])),
            "the configuration must be a mapping, found list"
        );
        assert_eq!(
            config_error(json!({ "max_depht": 3 })),
            r#"unknown key "max_depht" (supported: max_depth, max_bytes, schema, methods)"#
        );
        for (value, found) in [
            (json!(0), "0"),
            (json!(65), "65"),
            (json!(-1), "-1"),
            (json!(1.5), "1.5"),
            (json!("32"), "string"),
            (json!(null), "null"),
        ] {
            assert_eq!(
                config_error(json!({ "max_depth": value })),
                format!("max_depth: must be an integer in 1..=64, found {found}")
            );
        }
        assert_eq!(
            config_error(json!({ "schema": "object" })),
            "schema: a schema must be a mapping, found string"
        );
    }

    #[test]
    fn config_unsupported_keyword_names_it_and_its_place() {
        let config = json!({ "schema": {
            "type": "object",
            "properties": { "items": { "type": "array", "items": { "type": "string", "pattern": "^a" } } }
        }});
        assert_eq!(
            config_error(config),
            r#"schema.properties.items.items: unsupported keyword "pattern" (supported: type, required, properties, items, minLength, maxLength, minimum, maximum)"#
        );
        assert_eq!(
            config_error(json!({ "schema": { "$ref": "#/a" } })),
            r##"schema: unsupported keyword "$ref" (supported: type, required, properties, items, minLength, maxLength, minimum, maximum)"##
        );
        assert_eq!(
            config_error(
                json!({ "schema": { "properties": { "a b": { "additionalProperties": false } } } })
            ),
            r#"schema.properties["a b"]: unsupported keyword "additionalProperties" (supported: type, required, properties, items, minLength, maxLength, minimum, maximum)"#
        );
    }

    #[test]
    fn config_shape_errors() {
        let cases = [
            (
                json!({ "type": "strng" }),
                r#"schema.type: unknown type "strng" (known: object, array, string, number, integer, boolean, null)"#,
            ),
            (
                json!({ "type": 3 }),
                "schema.type: must be a type name or a list of type names, found number",
            ),
            (json!({ "type": [] }), "schema.type: the list of types is empty"),
            (
                json!({ "type": null }),
                r#"schema.type: must be a type name or a list of type names, found null (write "null", quoted, for the null type)"#,
            ),
            (
                json!({ "type": ["string", null] }),
                r#"schema.type[1]: must be a type name, found null (write "null", quoted, for the null type)"#,
            ),
            (
                json!({ "type": ["string", true] }),
                "schema.type[1]: must be a type name, found boolean",
            ),
            (
                json!({ "type": ["string", "float"] }),
                r#"schema.type[1]: unknown type "float" (known: object, array, string, number, integer, boolean, null)"#,
            ),
            (
                json!({ "required": "name" }),
                "schema.required: must be a list of field names, found string",
            ),
            (
                json!({ "required": ["a", 1] }),
                "schema.required[1]: must be a field name (a string), found number",
            ),
            (
                json!({ "required": ["a", "b", "a"] }),
                r#"schema.required[2]: "a" is listed twice"#,
            ),
            (
                json!({ "properties": ["a"] }),
                "schema.properties: must be a mapping of field names to schemas, found list",
            ),
            (
                json!({ "properties": { "a": "string" } }),
                "schema.properties.a: a schema must be a mapping, found string",
            ),
            (
                json!({ "items": [{ "type": "string" }] }),
                "schema.items: must be a schema (a mapping); the list form of items is not supported",
            ),
            (
                json!({ "items": true }),
                "schema.items: a schema must be a mapping, found boolean",
            ),
            (
                json!({ "type": "string", "required": ["a"] }),
                r#"schema: keyword "required" applies to objects only, but type does not allow object"#,
            ),
            (
                json!({ "type": "array", "properties": { "a": {} } }),
                r#"schema: keyword "properties" applies to objects only, but type does not allow object"#,
            ),
            (
                json!({ "properties": { "list": { "type": ["object", "null"], "items": {} } } }),
                r#"schema.properties.list: keyword "items" applies to arrays only, but type does not allow array"#,
            ),
        ];
        for (schema, expected) in cases {
            assert_eq!(config_error(json!({ "schema": schema })), expected);
        }
    }

    #[test]
    fn config_schema_nesting_is_bounded() {
        let mut deep = json!({ "type": "array" });
        for _ in 0..MAX_DEPTH_LIMIT {
            deep = json!({ "type": "array", "items": deep });
        }
        assert!(Rules::from_config(&json!({ "schema": deep.clone() })).is_ok());
        let deeper = json!({ "schema": { "items": deep } });
        let message = config_error(deeper);
        assert!(
            message.ends_with(": nested deeper than 64 levels, deeper than any document may be"),
            "{message}"
        );
    }

    #[test]
    fn required_field_need_not_be_in_properties() {
        let r =
            schema(json!({ "required": ["id"], "properties": { "name": { "type": "string" } } }));
        assert_eq!(r.check(br#"{"id":null}"#), Ok(()));
        assert_eq!(
            invalid(&r, r#"{"name":"x"}"#),
            err("$", r#"missing required field "id""#)
        );
    }

    // --- presence, syntax ------------------------------------------------------------------

    #[test]
    fn empty_body() {
        let r = Rules::default();
        for body in ["", "  \r\n\t"] {
            assert_eq!(
                invalid(&r, body),
                err("$", "the body is empty; a JSON document is required")
            );
        }
    }

    #[test]
    fn invalid_json_has_line_and_column() {
        for r in [Rules::default(), order_schema()] {
            let (path, message) =
                invalid(&r, "{\"name\": \"x\",\n  \"items\": [{\"sku\": \"a\"} 2]}");
            assert_eq!(path, "$");
            assert_eq!(
                message,
                "not valid JSON: expected `,` or `]` at line 2 column 26"
            );
            assert_eq!(
                invalid(&r, "nope").1,
                "not valid JSON: expected ident at line 1 column 2"
            );
            assert_eq!(
                invalid(&r, "{\"a\":1,}").1,
                "not valid JSON: trailing comma at line 1 column 8"
            );
        }
    }

    #[test]
    fn bad_strings_and_numbers_are_refused_where_no_schema_looks() {
        let lenient = schema(json!({ "properties": { "a": { "type": "string" } } }));
        for r in [Rules::default(), lenient] {
            let (path, message) = invalid(&r, "{\"b\":\"\u{1}\"}");
            assert_eq!(path, "$");
            assert!(message.starts_with("not valid JSON: "), "{message}");
            let mut bad_utf8 = b"{\"b\":[\"x".to_vec();
            bad_utf8.extend_from_slice(&[0xC3, 0x28]);
            bad_utf8.extend_from_slice(b"\"]}");
            let invalid_utf8 = r.check(&bad_utf8).unwrap_err();
            assert_eq!(
                invalid_utf8.message,
                "not valid JSON: invalid unicode code point at line 1 column 9"
            );
            for body in [
                r#"{"b":["\ud800"]}"#,
                r#"{"\ud800":1}"#,
                r#"{"b":"\ude00x"}"#,
            ] {
                let (path, message) = invalid(&r, body);
                assert_eq!(path, "$");
                assert!(
                    message.starts_with("not valid JSON: ") && message.contains("escape"),
                    "{body}: {message}"
                );
            }
            assert_eq!(
                invalid(&r, r#"{"b":[1e400]}"#).1,
                "not valid JSON: number out of range at line 1 column 11"
            );
        }
    }

    #[test]
    fn trailing_garbage() {
        for r in [Rules::default(), schema(json!({ "type": "object" }))] {
            assert_eq!(
                invalid(&r, "{} x"),
                err(
                    "$",
                    "not valid JSON: trailing characters at line 1 column 4"
                )
            );
            assert_eq!(
                invalid(&r, "{}{}"),
                err(
                    "$",
                    "not valid JSON: trailing characters at line 1 column 3"
                )
            );
            assert_eq!(r.check(b" {} \n"), Ok(()));
        }
    }

    #[test]
    fn without_schema_any_document_passes() {
        let r = Rules::default();
        for body in [
            "1",
            "\"s\"",
            "null",
            "[]",
            "{\"a\":[1,{\"b\":null}]}",
            "-0.5e3",
        ] {
            assert_eq!(r.check(body.as_bytes()), Ok(()), "{body}");
        }
    }

    // --- types -----------------------------------------------------------------------------

    #[test]
    fn each_type() {
        let bodies = [
            ("object", "{}"),
            ("array", "[]"),
            ("string", "\"s\""),
            ("number", "1.5"),
            ("boolean", "true"),
            ("null", "null"),
        ];
        for (name, _) in bodies {
            let r = schema(json!({ "type": name }));
            for (found, body) in bodies {
                let result = r.check(body.as_bytes());
                if found == name {
                    assert_eq!(result, Ok(()), "{name} {body}");
                } else {
                    assert_eq!(
                        result,
                        Err(Invalid::new("$", format!("expected {name}, found {found}"))),
                    );
                }
            }
        }
    }

    #[test]
    fn integer_and_number() {
        let integer = schema(json!({ "type": "integer" }));
        let number = schema(json!({ "type": "number" }));
        for body in [
            "0",
            "-7",
            "2.0",
            "1e3",
            "-0",
            "18446744073709551615",
            "-9223372036854775808",
            "1e20",
            "123456789012345678901234567890",
        ] {
            assert_eq!(integer.check(body.as_bytes()), Ok(()), "{body}");
            assert_eq!(number.check(body.as_bytes()), Ok(()), "{body}");
        }
        for (body, shown) in [
            ("1.5", "1.5"),
            ("-0.25", "-0.25"),
            ("1e-7", "1e-7"),
            ("2.5E-1", "0.25"),
        ] {
            assert_eq!(number.check(body.as_bytes()), Ok(()));
            assert_eq!(
                invalid(&integer, body),
                err("$", &format!("expected integer, found number {shown}"))
            );
        }
        assert_eq!(
            invalid(&integer, "\"3\""),
            err("$", "expected integer, found string")
        );
        assert_eq!(
            invalid(&schema(json!({ "type": "string" })), "3"),
            err("$", "expected string, found number")
        );
    }

    #[test]
    fn type_lists() {
        let r = schema(json!({ "type": ["string", "null"] }));
        assert_eq!(r.check(b"null"), Ok(()));
        assert_eq!(r.check(b"\"x\""), Ok(()));
        assert_eq!(
            invalid(&r, "1"),
            err("$", "expected string or null, found number")
        );
        let r = schema(json!({ "type": ["null", "integer", "object", "array"] }));
        assert_eq!(
            invalid(&r, "0.5"),
            err(
                "$",
                "expected object, array, integer or null, found number 0.5"
            )
        );
        assert_eq!(r.check(b"[1]"), Ok(()));
    }

    #[test]
    fn string_values_are_never_echoed() {
        let r = schema(json!({ "properties": { "n": { "type": "number" } } }));
        let long = "x".repeat(10_000);
        let body = format!("{{\"n\":\"{long}\"}}");
        let (path, message) = invalid(&r, &body);
        assert_eq!(path, "$.n");
        assert_eq!(message, "expected number, found string");
    }

    // --- structure, paths, order -----------------------------------------------------------

    #[test]
    fn nested_schema_and_paths() {
        let r = order_schema();
        let ok =
            r#"{"name":"a","items":[{"sku":"1","qty":2},{"sku":"2","extra":[1,{}]}],"other":{}}"#;
        assert_eq!(r.check(ok.as_bytes()), Ok(()));
        let cases = [
            (
                r#"{"name":1,"items":[]}"#,
                "$.name",
                "expected string, found number",
            ),
            (r#"{"name":"a"}"#, "$", r#"missing required field "items""#),
            (r#"{"items":[]}"#, "$", r#"missing required field "name""#),
            (
                r#"{"name":"a","items":{}}"#,
                "$.items",
                "expected array, found object",
            ),
            (
                r#"{"name":"a","items":[{"sku":"1"},{"sku":"2"},{"qty":1}]}"#,
                "$.items[2]",
                r#"missing required field "sku""#,
            ),
            (
                r#"{"name":"a","items":[{"sku":"1"},{"sku":"2"},{"sku":false}]}"#,
                "$.items[2].sku",
                "expected string, found boolean",
            ),
            (
                r#"{"name":"a","items":[{"sku":"1","qty":1.25}]}"#,
                "$.items[0].qty",
                "expected integer, found number 1.25",
            ),
            (
                r#"{"name":"a","items":[null]}"#,
                "$.items[0]",
                "expected object, found null",
            ),
            ("[]", "$", "expected object, found array"),
        ];
        for (body, path, message) in cases {
            assert_eq!(invalid(&r, body), err(path, message), "{body}");
        }
    }

    #[test]
    fn first_error_in_document_order() {
        let r = order_schema();
        // Two wrong members: the first one written is reported, whatever the names' order.
        assert_eq!(
            invalid(&r, r#"{"items":5,"name":5}"#),
            err("$.items", "expected array, found number")
        );
        assert_eq!(
            invalid(&r, r#"{"name":5,"items":5}"#),
            err("$.name", "expected string, found number")
        );
        // A missing field is noticed at the closing brace, after the members' errors.
        assert_eq!(
            invalid(&r, r#"{"items":[{"sku":1}]}"#),
            err("$.items[0].sku", "expected string, found number")
        );
        assert_eq!(
            invalid(&r, r#"{"items":[{"qty":1}, {"sku":1}]}"#),
            err("$.items[0]", r#"missing required field "sku""#)
        );
        // The first missing field in the order of `required`.
        assert_eq!(
            invalid(&r, "{}"),
            err("$", r#"missing required field "name""#)
        );
        // A schema error before a syntax error stops the check there.
        assert_eq!(
            invalid(&r, r#"{"name":5,"items":[}"#),
            err("$.name", "expected string, found number")
        );
        // A syntax error before a schema error is the answer.
        assert_eq!(
            invalid(&r, r#"{"name":"a" "items":5}"#).1,
            "not valid JSON: expected `,` or `}` at line 1 column 13"
        );
        // A repeated member is checked each time.
        assert_eq!(
            invalid(&r, r#"{"name":"a","items":[],"name":1}"#),
            err("$.name", "expected string, found number")
        );
    }

    #[test]
    fn odd_keys_in_paths() {
        let r = schema(json!({ "properties": {
            "a b": { "type": "string" },
            "say \"hi\"": { "type": "string" },
            "café": { "type": "string" },
            "Abc": { "type": "string" },
            "_x9": { "type": "string" },
            "9x": { "type": "string" },
            "": { "type": "string" },
            "\u{1}\n\\": { "type": "string" },
            "😀": { "type": "string" }
        }}));
        let cases = [
            (r#"{"a b":1}"#, r#"$["a b"]"#),
            (r#"{"say \"hi\"":1}"#, r#"$["say \"hi\""]"#),
            (r#"{"caf\u00e9":1}"#, r#"$["café"]"#),
            (r#"{"café":1}"#, r#"$["café"]"#),
            (r#"{"\u0041bc":1}"#, "$.Abc"),
            (r#"{"_x9":1}"#, "$._x9"),
            (r#"{"9x":1}"#, r#"$["9x"]"#),
            (r#"{"":1}"#, r#"$[""]"#),
            (r#"{"\u0001\n\\":1}"#, r#"$["\u0001\n\\"]"#),
            (r#"{"\ud83d\ude00":1}"#, r#"$["😀"]"#),
        ];
        for (body, path) in cases {
            assert_eq!(
                invalid(&r, body),
                err(path, "expected string, found number"),
                "{body}"
            );
        }
    }

    #[test]
    fn many_required_fields() {
        let names: Vec<String> = (0..100).map(|i| format!("f{i}")).collect();
        let r = schema(json!({ "required": names }));
        let all: Map<String, Value> = names.iter().map(|n| (n.clone(), json!(1))).collect();
        assert_eq!(
            r.check(Value::Object(all.clone()).to_string().as_bytes()),
            Ok(())
        );
        let mut some = all;
        some.remove("f70");
        some.remove("f80");
        assert_eq!(
            invalid(&r, &Value::Object(some).to_string()),
            err("$", r#"missing required field "f70""#)
        );
        let r = schema(json!({ "required": names[..64] }));
        let mut some: Map<String, Value> =
            names[..64].iter().map(|n| (n.clone(), json!(1))).collect();
        assert_eq!(
            r.check(Value::Object(some.clone()).to_string().as_bytes()),
            Ok(())
        );
        some.remove("f63");
        assert_eq!(
            invalid(&r, &Value::Object(some).to_string()),
            err("$", r#"missing required field "f63""#)
        );
    }

    #[test]
    fn invalid_displays_path_and_message() {
        let e = Invalid::new("$.a", "expected string, found number");
        assert_eq!(e.to_string(), "$.a: expected string, found number");
    }

    // --- depth -----------------------------------------------------------------------------

    fn nested_arrays(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn depth_counts_containers() {
        let one = rules(json!({ "max_depth": 1 }));
        for body in [
            "1",
            "\"[[[\"",
            "{}",
            "[]",
            "[1,2,\"]]\"]",
            r#"{"a":1,"b":"{["}"#,
        ] {
            assert_eq!(one.check(body.as_bytes()), Ok(()), "{body}");
        }
        assert_eq!(
            invalid(&one, r#"{"a":[1]}"#),
            err("$.a", "nested deeper than 1 level")
        );
        let two = rules(json!({ "max_depth": 2 }));
        assert_eq!(two.check(br#"{"a":[1]}"#), Ok(()));
    }

    #[test]
    fn depth_at_the_limit_passes_one_deeper_fails() {
        for max in [1, 2, 5, 32, 64] {
            let r = rules(json!({ "max_depth": max }));
            assert_eq!(r.check(nested_arrays(max).as_bytes()), Ok(()), "{max}");
            let (path, message) = invalid(&r, &nested_arrays(max + 1));
            assert_eq!(path, format!("${}", "[0]".repeat(max)));
            assert_eq!(message, too_deep(max));
        }
        // The default is 32.
        let r = Rules::default();
        assert_eq!(r.check(nested_arrays(32).as_bytes()), Ok(()));
        assert_eq!(
            invalid(&r, &nested_arrays(33)).1,
            "nested deeper than 32 levels"
        );
    }

    #[test]
    fn depth_error_path_follows_keys_and_indexes() {
        let r = rules(json!({ "max_depth": 3 }));
        let body = r#"{"a":[1,"x]",{"b":1},{"c d":1,"e\"\u0066":{"g":[[]]}}]}"#;
        // $ (1) .a (2) [3] (3) ["e\"f"] (4): too deep.
        assert_eq!(
            invalid(&r, body),
            err(r#"$.a[3]["e\"f"]"#, "nested deeper than 3 levels")
        );
        let body = "{ \"k\" : [ 0 , [ ] , { } , \"\\\\\" , [ [ 1 ] ] ] }";
        assert_eq!(
            invalid(&r, body),
            err("$.k[4][0]", "nested deeper than 3 levels")
        );
        let r = rules(json!({ "max_depth": 2 }));
        assert_eq!(
            invalid(&r, r#"{"\u0041":{"\ud83d\ude00":{}}}"#),
            err(r#"$.A["😀"]"#, "nested deeper than 2 levels")
        );
    }

    #[test]
    fn depth_is_checked_before_the_schema() {
        let r = rules(json!({ "max_depth": 2, "schema": { "type": "string" } }));
        assert_eq!(
            invalid(&r, "[[[]]]"),
            err("$[0][0]", "nested deeper than 2 levels")
        );
        assert_eq!(
            invalid(&r, "[[]]"),
            err("$", "expected string, found array")
        );
    }

    #[test]
    fn broken_structure_before_the_depth_error_is_a_syntax_error() {
        let r = rules(json!({ "max_depth": 2 }));
        for body in [
            "{[[[[[]]]]]}",
            "[1 2 [[[[]]]]]",
            "[1,,[[[]]]]",
            "{\"a\" [[[[]]]]}",
            "{\"a\":1 \"b\":[[[]]]}",
            "[}[[[[]]]]",
            "[] [[[[]]]]",
            "\"unterminated [[[[",
            r#"{"\x":[[[]]]}"#,
        ] {
            let (path, message) = invalid(&r, body);
            assert_eq!(path, "$");
            assert!(message.starts_with("not valid JSON: "), "{body}: {message}");
        }
    }

    #[test]
    fn very_deep_documents_fail_fast() {
        let started = Instant::now();
        let r = Rules::default();
        let expected_arrays = format!("${}", "[0]".repeat(32));
        for body in [
            "[".repeat(10_000),
            nested_arrays(10_000),
            format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000)),
        ] {
            assert_eq!(
                invalid(&r, &body),
                err(&expected_arrays, "nested deeper than 32 levels")
            );
        }
        let objects = format!("{}{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
        let expected_objects = format!("${}", ".a".repeat(32));
        assert_eq!(
            invalid(&r, &objects),
            err(&expected_objects, "nested deeper than 32 levels")
        );
        let r = rules(json!({ "max_depth": 64, "schema": { "items": { "items": {} } } }));
        let (path, _) = invalid(&r, &"[".repeat(10_000));
        assert_eq!(path, format!("${}", "[0]".repeat(64)));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    // --- property-style tests ----------------------------------------------------------------

    /// xorshift64*.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn chance(&mut self, percent: usize) -> bool {
            self.below(100) < percent
        }
    }

    /// A generated document, kept with its structure to know the expected depth error.
    struct Gen {
        text: String,
        /// Path of the first container at each depth, in document order: `firsts[d]` is the
        /// first container `d + 1` deep.
        firsts: Vec<String>,
    }

    const KEY_PIECES: [(&str, &str); 12] = [
        ("a", "a"),
        ("sku", "sku"),
        ("qty", "qty"),
        ("name", "name"),
        ("items", "items"),
        (" ", " "),
        ("\\\"", "\""),
        ("\\\\", "\\"),
        ("\\n", "\n"),
        ("\\u00e9", "é"),
        ("\\ud83d\\ude00", "😀"),
        ("\\/", "/"),
    ];

    fn ws(rng: &mut Rng, out: &mut String) {
        if rng.chance(20) {
            out.push_str([" ", "\n", "\t", "\r\n  "][rng.below(4)]);
        }
    }

    fn gen_value(rng: &mut Rng, g: &mut Gen, path: &mut String, depth: usize, budget: &mut usize) {
        ws(rng, &mut g.text);
        let container = *budget > 0 && depth < 70 && rng.chance(if depth < 8 { 60 } else { 45 });
        if !container {
            let scalars = [
                "1",
                "-2.5",
                "0",
                "1e3",
                "2.0",
                "true",
                "false",
                "null",
                "\"s\"",
                "\"[{\\\"\"",
                "123456",
            ];
            g.text.push_str(scalars[rng.below(scalars.len())]);
            ws(rng, &mut g.text);
            return;
        }
        *budget -= 1;
        if g.firsts.len() == depth {
            g.firsts.push(path.clone());
        }
        let n = rng.below(5);
        let base = path.len();
        if rng.chance(50) {
            g.text.push('[');
            for i in 0..n {
                if i > 0 {
                    g.text.push(',');
                }
                let _ = write!(path, "[{i}]");
                gen_value(rng, g, path, depth + 1, budget);
                path.truncate(base);
            }
            ws(rng, &mut g.text);
            g.text.push(']');
        } else {
            g.text.push('{');
            let mut used: Vec<String> = Vec::new();
            for i in 0..n {
                if i > 0 {
                    g.text.push(',');
                }
                let (mut raw, mut key) = (String::new(), String::new());
                for _ in 0..rng.below(3) + 1 {
                    let (r, k) = KEY_PIECES[rng.below(KEY_PIECES.len())];
                    raw.push_str(r);
                    key.push_str(k);
                }
                while used.contains(&key) {
                    raw.push('z');
                    key.push('z');
                }
                used.push(key.clone());
                ws(rng, &mut g.text);
                let _ = write!(g.text, "\"{raw}\"");
                ws(rng, &mut g.text);
                g.text.push(':');
                push_key(path, &key);
                gen_value(rng, g, path, depth + 1, budget);
                path.truncate(base);
            }
            ws(rng, &mut g.text);
            g.text.push('}');
        }
        ws(rng, &mut g.text);
    }

    fn generate(rng: &mut Rng) -> Gen {
        let mut g = Gen {
            text: String::new(),
            firsts: Vec::new(),
        };
        let mut budget = 20 + rng.below(120);
        gen_value(rng, &mut g, &mut String::from("$"), 0, &mut budget);
        g
    }

    /// The nesting depth of a parsed document, without recursion.
    fn value_depth(value: &Value) -> usize {
        let mut deepest = 0;
        let mut stack = vec![(value, 0)];
        while let Some((v, d)) = stack.pop() {
            match v {
                Value::Array(items) => {
                    deepest = deepest.max(d + 1);
                    stack.extend(items.iter().map(|i| (i, d + 1)));
                }
                Value::Object(map) => {
                    deepest = deepest.max(d + 1);
                    stack.extend(map.values().map(|i| (i, d + 1)));
                }
                _ => {}
            }
        }
        deepest
    }

    #[test]
    fn prescan_agrees_with_the_parsed_depth() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut refused = 0;
        for _ in 0..4000 {
            let g = generate(&mut rng);
            let value: Value = serde_json::from_str(&g.text)
                .unwrap_or_else(|e| panic!("generated bad JSON ({e}): {}", g.text));
            let depth = value_depth(&value);
            assert_eq!(depth, g.firsts.len(), "{}", g.text);
            // Limits around the document's depth, and one anywhere.
            let near = depth.clamp(1, MAX_DEPTH_LIMIT);
            for max in [
                near.saturating_sub(1).max(1),
                near,
                (near + 1).min(64),
                1 + rng.below(64),
            ] {
                let verdict = scan_depth(g.text.as_bytes(), max);
                if depth > max {
                    refused += 1;
                    assert_eq!(
                        verdict,
                        Err(Invalid::new(g.firsts[max].as_str(), too_deep(max))),
                        "max {max}: {}",
                        g.text
                    );
                } else {
                    assert_eq!(verdict, Ok(()), "max {max}: {}", g.text);
                }
            }
        }
        assert!(refused > 1000, "too few deep documents: {refused}");
    }

    /// A reference validator over a parsed document (keys unique, so order does not matter for
    /// the verdict).
    fn reference_valid(schema: Option<&Schema>, value: &Value) -> bool {
        let Some(schema) = schema else { return true };
        let t = schema.types;
        let type_ok = match value {
            Value::Null => t.allows(Types::NULL),
            Value::Bool(_) => t.allows(Types::BOOLEAN),
            Value::String(_) => t.allows(Types::STRING),
            Value::Array(_) => t.allows(Types::ARRAY),
            Value::Object(_) => t.allows(Types::OBJECT),
            Value::Number(n) => {
                t.allows(Types::NUMBER)
                    || (t.has(Types::INTEGER)
                        && (n.is_i64()
                            || n.is_u64()
                            || n.as_f64().is_some_and(|f| f.fract() == 0.0)))
            }
        };
        type_ok
            && match value {
                Value::Array(items) => items
                    .iter()
                    .all(|i| reference_valid(schema.items.as_deref(), i)),
                Value::Object(map) => {
                    schema.required.iter().all(|r| map.contains_key(r))
                        && map.iter().all(|(k, v)| {
                            match schema.fields.iter().find(|f| &f.name == k) {
                                Some(f) => reference_valid(f.schema.as_ref(), v),
                                None => true,
                            }
                        })
                }
                _ => true,
            }
    }

    #[test]
    fn streaming_check_agrees_with_a_reference_on_generated_documents() {
        let schemas = [
            order_schema(),
            schema(
                json!({ "type": ["object", "array"], "items": { "type": ["integer", "array", "object"], "items": { "type": ["number", "string", "boolean", "null", "array", "object"] } } }),
            ),
            schema(
                json!({ "properties": { "a": { "type": ["array", "object", "null"], "properties": { "a": { "type": "object" } } }, "name": { "type": "number" } } }),
            ),
            schema(json!({ "required": ["a"], "properties": { "sku": { "required": ["qty"] } } })),
        ];
        let mut rng = Rng(0x1234_5678_9ABC_DEF1);
        let (mut passed, mut failed) = (0, 0);
        for _ in 0..3000 {
            let g = generate(&mut rng);
            let value: Value = serde_json::from_str(&g.text).unwrap();
            let depth = value_depth(&value);
            for r in &schemas {
                let expected = depth <= r.max_depth && reference_valid(r.schema.as_ref(), &value);
                let got = r.check(g.text.as_bytes());
                assert_eq!(got.is_ok(), expected, "{got:?}: {}", g.text);
                if expected {
                    passed += 1;
                } else {
                    failed += 1;
                }
            }
        }
        assert!(
            passed > 500 && failed > 500,
            "passed {passed}, failed {failed}"
        );
    }

    #[test]
    fn mutated_documents_never_panic_and_are_judged_soundly() {
        let rule_sets = [
            Rules::default(),
            order_schema(),
            rules(json!({ "max_depth": 3 })),
        ];
        let noise = b"[]{},:\"\\ 0a-e.\x00\xff\xc3";
        let mut rng = Rng(0xDEAD_BEEF_CAFE_F00D);
        for _ in 0..3000 {
            let mut body = generate(&mut rng).text.into_bytes();
            for _ in 0..1 + rng.below(3) {
                let at = rng.below(body.len() + 1);
                match rng.below(4) {
                    0 if at < body.len() => body[at] = noise[rng.below(noise.len())],
                    1 if at < body.len() => {
                        body.remove(at);
                    }
                    2 => body.insert(at, noise[rng.below(noise.len())]),
                    _ => body.truncate(at),
                }
            }
            let parsed = serde_json::from_slice::<Value>(&body);
            for r in &rule_sets {
                let verdict = r.check(&body);
                match &parsed {
                    // Not JSON: always refused.
                    Err(_) => assert!(verdict.is_err(), "{:?}", String::from_utf8_lossy(&body)),
                    // JSON too deep: refused (duplicate keys can only hide depth from `Value`).
                    Ok(value) if value_depth(value) > r.max_depth => {
                        assert!(verdict.is_err(), "{:?}", String::from_utf8_lossy(&body))
                    }
                    Ok(_) => {}
                }
                if let Err(e) = verdict {
                    assert!(e.path.starts_with('$'));
                    assert!(!e.message.is_empty());
                }
            }
        }
    }

    #[test]
    fn lengths_and_bounds_agree_with_an_oracle_on_generated_documents() {
        let r = schema(json!({ "type": "array", "items": {
            "minLength": 1, "maxLength": 5, "minimum": -10, "maximum": 10 } }));
        let pieces = ["a", "\\u00e9", "\u{1F600}", "\\n", "z"];
        let mut rng = Rng(0x0123_4567_89AB_CDEF);
        for _ in 0..3000 {
            let mut text = String::from("[");
            let mut expected_ok = true;
            for i in 0..rng.below(6) {
                if i > 0 {
                    text.push(',');
                }
                match rng.below(4) {
                    0 => {
                        // a string of 0 to 7 characters, some escaped, some outside the BMP
                        let n = rng.below(8);
                        text.push('"');
                        for _ in 0..n {
                            text.push_str(pieces[rng.below(pieces.len())]);
                        }
                        text.push('"');
                        expected_ok &= (1..=5).contains(&n);
                    }
                    1 => {
                        let n = rng.below(41) as i64 - 20;
                        text.push_str(&n.to_string());
                        expected_ok &= (-10..=10).contains(&n);
                    }
                    2 => {
                        let f = (rng.below(4001) as f64 - 2000.0) / 100.0;
                        text.push_str(&format!("{f:?}"));
                        expected_ok &= (-10.0..=10.0).contains(&f);
                    }
                    _ => text.push_str(["true", "null", "{}", "[]"][rng.below(4)]),
                }
            }
            text.push(']');
            let verdict = r.check(text.as_bytes());
            assert_eq!(verdict.is_ok(), expected_ok, "{text}: {verdict:?}");
        }
    }
}

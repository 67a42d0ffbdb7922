//! A YAML tree in which every node knows its line and column.
//!
//! TOSCA is too dynamic for fixed serde structs (`get_input` may stand
//! anywhere, types inherit properties, templates expand), so the compiler walks
//! this generic tree instead, and every diagnostic can point at the source.
//! Parsing goes through serde-saphyr with a [`Budget`], which bounds nesting
//! depth, node count and alias expansion: hostile input fails fast.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{Budget, Options, Spanned};

/// Largest ADT accepted, in bytes. Real ADTs are a few KiB.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// Deepest nesting accepted. Real ADTs nest fewer than 12 levels.
pub const MAX_DEPTH: usize = 48;
/// Most YAML nodes (scalars, sequences, mappings) accepted.
pub const MAX_NODES: usize = 100_000;
/// Most alias references accepted; expansion itself is bounded by the budget.
pub const MAX_ALIASES: usize = 1_000;

/// A 1-based source position. `0:0` means "not from the document" (defaults
/// from the type library, submit-time parameters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Pos {
    pub line: u32,
    pub column: u32,
}

impl Pos {
    pub const UNKNOWN: Pos = Pos { line: 0, column: 0 };

    pub fn is_known(&self) -> bool {
        self.line > 0
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

impl From<serde_saphyr::Location> for Pos {
    fn from(l: serde_saphyr::Location) -> Self {
        Pos {
            line: u32::try_from(l.line()).unwrap_or(u32::MAX),
            column: u32::try_from(l.column()).unwrap_or(u32::MAX),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Entries in document order; keys are scalars rendered as text.
    Map(Vec<(Key, Node)>),
    /// Stands where a value could not be computed (an unresolvable
    /// `get_input`). That problem is reported once; later checks stay quiet.
    Invalid,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Key {
    pub name: String,
    pub pos: Pos,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub value: Value,
    pub pos: Pos,
}

impl Node {
    pub fn new(value: Value, pos: Pos) -> Self {
        Node { value, pos }
    }

    pub fn null() -> Self {
        Node::new(Value::Null, Pos::UNKNOWN)
    }

    pub fn invalid(pos: Pos) -> Self {
        Node::new(Value::Invalid, pos)
    }

    pub fn is_invalid(&self) -> bool {
        matches!(self.value, Value::Invalid)
    }

    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    pub fn as_map(&self) -> Option<&[(Key, Node)]> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.value {
            Value::Seq(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value of `key` if this is a mapping that has it.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.name == key)
            .map(|(_, v)| v)
    }

    /// A scalar as text (numbers and booleans too), the way TOSCA string
    /// properties accept `8080` or `true`.
    pub fn scalar_text(&self) -> Option<String> {
        match &self.value {
            Value::Str(s) => Some(s.clone()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// What kind of YAML value this is, for "expected X, found Y" messages.
    pub fn kind(&self) -> &'static str {
        match self.value {
            Value::Null => "nothing (null)",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
            Value::Invalid => "an invalid value",
        }
    }

    /// Converts to JSON, for the plan's free-form parts (probes, interfaces).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null | Value::Invalid => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::Str(s) => J::String(s.clone()),
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.name.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }
}

/// A YAML document that could not be read at all.
#[derive(Clone, Debug, PartialEq)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// Parses one YAML document into a positioned tree, within the limits above.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(SyntaxError {
            pos: Pos::UNKNOWN,
            message: format!(
                "document is {} bytes, larger than the {} byte limit for an ADT",
                text.len(),
                MAX_DOCUMENT_BYTES
            ),
        });
    }
    let mut budget = Budget::default();
    budget.max_depth = MAX_DEPTH;
    budget.max_nodes = MAX_NODES;
    budget.max_aliases = MAX_ALIASES;
    budget.max_documents = 1;
    budget.max_total_scalar_bytes = MAX_DOCUMENT_BYTES;
    let mut options = Options::default();
    options.budget = Some(budget);
    options.with_snippet = false;
    // YAML 1.2 core booleans: `on`, `y` and `no` stay strings; boolean
    // properties accept them explicitly where that makes sense.
    options.strict_booleans = true;

    match serde_saphyr::from_str_with_options::<Node>(text, options) {
        // An empty file deserializes as null with no position.
        Ok(node) => Ok(node),
        Err(e) => Err(SyntaxError {
            pos: e.location().map(Pos::from).unwrap_or(Pos::UNKNOWN),
            message: clean_parser_message(&e.to_string()),
        }),
    }
}

/// serde-saphyr appends its own "at line X column Y"; we print positions
/// ourselves, so keep only the first line of its message.
fn clean_parser_message(message: &str) -> String {
    let first = message.lines().next().unwrap_or(message).trim();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    match first.find(" at line ") {
        Some(i) => first[..i].to_string(),
        None => first.to_string(),
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spanned: Spanned<Value> = Spanned::deserialize(d)?;
        Ok(Node {
            value: spanned.value,
            pos: Pos::from(spanned.referenced),
        })
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(i64::try_from(v).map_or(Value::Float(v as f64), Value::Int))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Value, E> {
        Ok(i64::try_from(v).map_or(Value::Float(v as f64), Value::Int))
    }
    fn visit_u128<E>(self, v: u128) -> Result<Value, E> {
        Ok(i64::try_from(v).map_or(Value::Float(v as f64), Value::Int))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Value, E> {
        Err(E::custom("binary values are not supported in an ADT"))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Node>()? {
            items.push(item);
        }
        Ok(Value::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<KeyText>>()? {
            let value = map.next_value::<Node>()?;
            entries.push((
                Key {
                    name: key.value.0,
                    pos: Pos::from(key.referenced),
                },
                value,
            ));
        }
        Ok(Value::Map(entries))
    }
}

/// A mapping key: any scalar, kept as its text.
struct KeyText(String);

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Ask for a string so that keys keep their spelling (`y`, `on`, `80`).
        match d.deserialize_string(ValueVisitor)? {
            Value::Str(s) => Ok(KeyText(s)),
            Value::Int(i) => Ok(KeyText(i.to_string())),
            Value::Float(f) => Ok(KeyText(f.to_string())),
            Value::Bool(b) => Ok(KeyText(b.to_string())),
            Value::Null => Ok(KeyText("null".to_string())),
            Value::Seq(_) | Value::Map(_) | Value::Invalid => Err(de::Error::custom(
                "mapping keys must be plain scalars, not lists or mappings",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_line_and_column() {
        let doc = parse("a:\n  b: [1, two]\n  c: {d: true}\n").unwrap();
        let a = doc.get("a").unwrap();
        let b = a.get("b").unwrap();
        assert_eq!(b.pos, Pos { line: 2, column: 6 });
        let items = b.as_seq().unwrap();
        assert_eq!(items[0].value, Value::Int(1));
        assert_eq!(items[1].value, Value::Str("two".into()));
        assert_eq!(items[1].pos, Pos { line: 2, column: 10 });
        assert_eq!(a.get("c").unwrap().get("d").unwrap().value, Value::Bool(true));
        let (key, _) = &a.as_map().unwrap()[1];
        assert_eq!(key.pos, Pos { line: 3, column: 3 });
    }

    #[test]
    fn anchors_and_aliases_resolve() {
        let doc = parse("x: &r {cpu: 1}\ny: *r\n").unwrap();
        assert_eq!(doc.get("y").unwrap().get("cpu").unwrap().value, Value::Int(1));
        let doc = parse("on: no\n80: y\n").unwrap();
        assert_eq!(doc.get("on").unwrap().value, Value::Str("no".into()));
        assert_eq!(doc.get("80").unwrap().value, Value::Str("y".into()));
    }

    #[test]
    fn syntax_error_has_position() {
        let err = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.pos.is_known(), "{err:?}");
        assert!(!err.message.contains(" at line "), "{}", err.message);
    }

    #[test]
    fn duplicate_keys_are_rejected() {
        let err = parse("a: 1\na: 2\n").unwrap_err();
        assert!(err.message.to_lowercase().contains("duplicate"), "{}", err.message);
    }

    #[test]
    fn alias_bomb_is_refused_quickly() {
        let mut doc = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let p = i - 1;
            doc.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let started = std::time::Instant::now();
        assert!(parse(&doc).is_err());
        assert!(started.elapsed().as_secs() < 5);
    }

    #[test]
    fn deep_nesting_is_refused() {
        let doc = "[".repeat(10_000) + &"]".repeat(10_000);
        assert!(parse(&doc).is_err());
        let doc: String = (0..200).map(|i| format!("{}k:\n", "  ".repeat(i))).collect();
        assert!(parse(&doc).is_err());
    }

    #[test]
    fn oversized_document_is_refused() {
        let doc = "a: 1\n".repeat(MAX_DOCUMENT_BYTES / 4);
        let err = parse(&doc).unwrap_err();
        assert!(err.message.contains("limit"), "{}", err.message);
    }
}

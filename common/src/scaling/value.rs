//! JSON values to and from the rule VM's objects.
//!
//! Inputs arrive as JSON (constants, query results, alerts, the `m_*`
//! variables) and outputs leave as JSON (they cross a process boundary and
//! `m_userdata` is stored between runs), so this is the only place that knows
//! how the two line up:
//!
//! | JSON | Python |
//! | --- | --- |
//! | `null` | `None` |
//! | `true` / `false` | `True` / `False` |
//! | integer | `int` (above `i64::MAX`: `float`) |
//! | number with a fraction or exponent | `float` |
//! | string | `str` |
//! | array | `list` (tuples, sets and named tuples come back as arrays) |
//! | object | `dict` with `str` keys |
//!
//! A dict's keys reach the rule in the order the JSON map keeps them:
//! sorted, as serde_json's map is here (its `preserve_order` feature is off),
//! so `str(d)` may list keys in another order than the ADT wrote them.
//!
//! Going back, dict keys that are not strings become strings the way
//! Python's `json.dumps` writes them (`1` → `"1"`, `True` → `"true"`,
//! `None` → `"null"`); an int too big for 64 bits becomes a float; a float
//! that is NaN or infinite becomes `null` (JSON has no such numbers; the rule
//! engine refuses them as top-level outputs before they get here). Anything
//! else (functions, classes, bytes, dates) is refused with a
//! [`ConversionError`] naming it.

use monty_types::MontyObject;
use serde_json::{Map, Number, Value};

/// How deep an output may nest. Below serde_json's own parse limit (128),
/// with room for the envelope the worker wraps outputs in, so whatever is
/// produced here can be read back.
pub const MAX_DEPTH: usize = 100;

/// A rule value that has no JSON form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConversionError {
    /// What was found, e.g. "a function" or "a dict key of type tuple".
    pub message: String,
}

impl std::fmt::Display for ConversionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConversionError {}

/// A JSON value as the object a rule sees.
pub fn json_to_monty(value: &Value) -> MontyObject {
    match value {
        Value::Null => MontyObject::None,
        Value::Bool(b) => MontyObject::Bool(*b),
        Value::Number(n) => number_to_monty(n),
        Value::String(s) => MontyObject::String(s.clone()),
        Value::Array(items) => MontyObject::List(items.iter().map(json_to_monty).collect()),
        Value::Object(map) => MontyObject::dict(
            map.iter().map(|(k, v)| (MontyObject::String(k.clone()), json_to_monty(v))).collect::<Vec<_>>(),
        ),
    }
}

fn number_to_monty(n: &Number) -> MontyObject {
    if let Some(i) = n.as_i64() {
        return MontyObject::Int(i);
    }
    // u64 above i64::MAX, or a number written with a fraction or exponent.
    MontyObject::Float(n.as_f64().unwrap_or(f64::NAN))
}

/// A rule value as JSON, or why it has none.
pub fn monty_to_json(value: &MontyObject) -> Result<Value, ConversionError> {
    to_json(value, 0)
}

fn refuse(message: impl Into<String>) -> ConversionError {
    ConversionError { message: message.into() }
}

fn to_json(value: &MontyObject, depth: usize) -> Result<Value, ConversionError> {
    if depth > MAX_DEPTH {
        return Err(refuse(format!("a value nested deeper than {MAX_DEPTH} levels")));
    }
    let list = |items: &[MontyObject]| -> Result<Value, ConversionError> {
        items.iter().map(|v| to_json(v, depth + 1)).collect::<Result<Vec<_>, _>>().map(Value::Array)
    };
    Ok(match value {
        MontyObject::None => Value::Null,
        MontyObject::Bool(b) => Value::Bool(*b),
        MontyObject::Int(i) => Value::Number((*i).into()),
        MontyObject::BigInt(big) => big_int_to_json(&big.to_string()),
        MontyObject::Float(f) => float_to_json(*f),
        MontyObject::String(s) => Value::String(s.clone()),
        MontyObject::List(items)
        | MontyObject::Tuple(items)
        | MontyObject::Set(items)
        | MontyObject::FrozenSet(items) => list(items)?,
        MontyObject::NamedTuple { values, .. } => list(values)?,
        MontyObject::Dict(pairs) => {
            let mut map = Map::new();
            for (k, v) in pairs {
                map.insert(dict_key(k)?, to_json(v, depth + 1)?);
            }
            Value::Object(map)
        }
        MontyObject::Cycle(..) => return Err(refuse("a list or dict that contains itself")),
        other => return Err(refuse(describe(other))),
    })
}

/// Ints past 64 bits: exact while they fit u64, else the nearest float.
fn big_int_to_json(decimal: &str) -> Value {
    if let Ok(u) = decimal.parse::<u64>() {
        return Value::Number(u.into());
    }
    float_to_json(decimal.parse::<f64>().unwrap_or(f64::NAN))
}

fn float_to_json(f: f64) -> Value {
    Number::from_f64(f).map_or(Value::Null, Value::Number)
}

/// Dict keys as Python's `json.dumps` writes them.
fn dict_key(key: &MontyObject) -> Result<String, ConversionError> {
    Ok(match key {
        MontyObject::String(s) => s.clone(),
        MontyObject::Int(i) => i.to_string(),
        MontyObject::BigInt(big) => big.to_string(),
        MontyObject::Bool(true) => "true".to_owned(),
        MontyObject::Bool(false) => "false".to_owned(),
        MontyObject::None => "null".to_owned(),
        MontyObject::Float(f) => match float_to_json(*f) {
            Value::Number(n) => n.to_string(),
            _ if f.is_nan() => "NaN".to_owned(),
            _ if *f > 0.0 => "Infinity".to_owned(),
            _ => "-Infinity".to_owned(),
        },
        other => return Err(refuse(format!("a dict key that is {}", describe(other)))),
    })
}

/// "a function", "a bytes value", ...: what a value is, for messages.
pub fn describe(value: &MontyObject) -> String {
    if let MontyObject::Repr(text) = value {
        // An object monty could not convert (e.g. a rule's own function).
        let short: String = text.chars().take(60).collect();
        return format!("an object that is not data: {short}");
    }
    let what = match value {
        MontyObject::Ellipsis => "Ellipsis",
        MontyObject::NotImplemented => "NotImplemented",
        MontyObject::None => "None",
        MontyObject::Bool(_) => "a bool",
        MontyObject::Int(_) | MontyObject::BigInt(_) => "an int",
        MontyObject::Float(_) => "a float",
        MontyObject::String(_) => "a str",
        MontyObject::Bytes(_) => "a bytes value",
        MontyObject::List(_) => "a list",
        MontyObject::Tuple(_) | MontyObject::NamedTuple { .. } => "a tuple",
        MontyObject::Dict(_) => "a dict",
        MontyObject::Set(_) | MontyObject::FrozenSet(_) => "a set",
        MontyObject::Date(_)
        | MontyObject::DateTime(_)
        | MontyObject::Time(_)
        | MontyObject::TimeDelta(_)
        | MontyObject::TimeZone(_) => "a datetime value",
        MontyObject::Exception { .. } => "an exception",
        MontyObject::Type(_) => "a type",
        MontyObject::BuiltinFunction(_) | MontyObject::Function { .. } => "a function",
        MontyObject::Path(_) | MontyObject::FileHandle(_) => "a file",
        MontyObject::ClassInstance(_) => "an instance of a class",
        MontyObject::Repr(_) | MontyObject::Cycle(..) => "an object",
    };
    what.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trip_keeps_ints_floats_and_nesting() {
        let v = json!({"i": 3, "f": 3.0, "s": "x", "n": null, "b": true, "l": [1, [2.5, {"k": []}]]});
        let back = monty_to_json(&json_to_monty(&v)).expect("converts");
        assert_eq!(back, v);
        assert!(back["f"].is_f64());
        assert!(back["i"].is_i64());
    }

    #[test]
    fn python_only_values_map_or_refuse() {
        let obj = MontyObject::dict(vec![
            (MontyObject::Int(1), MontyObject::Tuple(vec![MontyObject::Float(f64::NAN), MontyObject::Float(1.5)])),
            (MontyObject::Bool(true), MontyObject::None),
            (MontyObject::None, MontyObject::Set(vec![MontyObject::Int(2)])),
        ]);
        assert_eq!(monty_to_json(&obj).expect("converts"), json!({"1": [null, 1.5], "true": null, "null": [2]}));
        let f = MontyObject::Function { name: "f".into(), docstring: None };
        assert_eq!(monty_to_json(&MontyObject::List(vec![f])).expect_err("refused").message, "a function");
        let key = MontyObject::dict(vec![(MontyObject::Tuple(vec![]), MontyObject::None)]);
        assert_eq!(monty_to_json(&key).expect_err("refused").message, "a dict key that is a tuple");
    }

    #[test]
    fn too_deep_is_refused() {
        let mut v = MontyObject::List(vec![]);
        for _ in 0..=MAX_DEPTH {
            v = MontyObject::List(vec![v]);
        }
        assert!(monty_to_json(&v).is_err());
    }
}

//! The `fogmesh` command line: one module per command group.

pub mod adt;
pub mod table;

/// Splits `NAME=VALUE` arguments (`--param`); the value may contain `=`.
pub fn parse_key_value(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("expected NAME=VALUE, got '{arg}'")),
    }
}

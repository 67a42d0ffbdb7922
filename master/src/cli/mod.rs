//! The `fogmesh` command line: one module per command group.

use std::time::Duration;

use clap::ValueEnum;
use fogmesh_common::adt::quantity::parse_duration_seconds;

pub mod adt;
pub mod app;
pub mod client;
pub mod metrics;
pub mod node;
pub mod policy;
pub mod table;
pub mod token;

/// Output format of listing commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// Splits `NAME=VALUE` arguments (`--param`); the value may contain `=`.
pub fn parse_key_value(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("expected NAME=VALUE, got '{arg}'")),
    }
}

/// `30s`, `5m`, `1h` as a clap value.
pub fn duration_arg(text: &str) -> Result<Duration, String> {
    parse_duration_seconds(text)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("'{text}' is not a duration like 30s, 5m or 1h"))
}

/// "3s ago" for a unix-millisecond time.
pub fn ago(ms: u64) -> String {
    let secs = crate::model::now_ms().saturating_sub(ms) / 1000;
    match secs {
        0..=119 => format!("{secs}s ago"),
        120..=7199 => format!("{}m ago", secs / 60),
        _ => format!("{}h ago", secs / 3600),
    }
}

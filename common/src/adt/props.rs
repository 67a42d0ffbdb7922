//! Typed reads of resolved YAML values. Each reports a positioned
//! "expected X, found Y" diagnostic and returns `None` when the value does
//! not fit, so the caller carries on and finds the next problem too.

use indexmap::IndexMap;

use super::diagnostics::Diagnostics;
use super::yaml::{Node, Value};

/// Reads values for one subject (`node 'web'`), recording problems in `diags`.
pub struct Reader<'d> {
    pub subject: String,
    pub diags: &'d mut Diagnostics,
}

impl Reader<'_> {
    /// Records a problem with `node`, unless `node` stands for a value whose
    /// problem was already reported.
    pub fn problem(&mut self, node: &Node, message: impl Into<String>) {
        if node.is_invalid() {
            return;
        }
        self.diags.push(node.pos, self.subject.clone(), message);
    }

    /// Records a problem at a position (e.g. a mapping key).
    pub fn problem_at(&mut self, pos: super::yaml::Pos, message: impl Into<String>) {
        self.diags.push(pos, self.subject.clone(), message);
    }

    /// Records a warning about `node` (the ADT still compiles).
    pub fn warn(&mut self, node: &Node, message: impl Into<String>) {
        if node.is_invalid() {
            return;
        }
        self.diags.warn(node.pos, self.subject.clone(), message);
    }

    /// Records a warning at a position inside a value (e.g. a rule's line).
    pub fn warn_at(&mut self, pos: super::yaml::Pos, message: impl Into<String>) {
        self.diags.warn(pos, self.subject.clone(), message);
    }

    /// A scalar as text; numbers and booleans are accepted as their spelling.
    pub fn text(&mut self, node: &Node, what: &str) -> Option<String> {
        let text = node.scalar_text();
        if text.is_none() {
            self.problem(node, format!("{what} must be a string, found {}", node.kind()));
        }
        text
    }

    /// A list of scalars; a single scalar counts as a one-item list.
    pub fn text_list(&mut self, node: &Node, what: &str) -> Vec<String> {
        match &node.value {
            Value::Null => Vec::new(),
            Value::Seq(items) => items.iter().filter_map(|i| self.text(i, what)).collect(),
            _ => self.text(node, what).into_iter().collect(),
        }
    }

    /// `true`/`false`, and the YAML 1.1 spellings real ADTs still use.
    pub fn boolean(&mut self, node: &Node, what: &str) -> Option<bool> {
        let b = match &node.value {
            Value::Bool(b) => Some(*b),
            Value::Str(s) => match s.to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" => Some(true),
                "false" | "no" | "off" => Some(false),
                _ => None,
            },
            _ => None,
        };
        if b.is_none() {
            self.problem(node, format!("{what} must be true or false, found {}", describe(node)));
        }
        b
    }

    /// A whole number, also written as a numeric string (`'3'`).
    pub fn integer(&mut self, node: &Node, what: &str) -> Option<i64> {
        let n = match &node.value {
            Value::Int(i) => Some(*i),
            Value::Str(s) => s.trim().parse().ok(),
            _ => None,
        };
        if n.is_none() {
            self.problem(node, format!("{what} must be a whole number, found {}", describe(node)));
        }
        n
    }

    /// A count from 0 up to `max`.
    pub fn count(&mut self, node: &Node, what: &str, max: u32) -> Option<u32> {
        let n = self.integer(node, what)?;
        match u32::try_from(n) {
            Ok(n) if n <= max => Some(n),
            _ => {
                self.problem(node, format!("{what} {n} is out of range 0-{max}"));
                None
            }
        }
    }

    /// A TCP/UDP port number, 1-65535.
    pub fn port(&mut self, node: &Node) -> Option<u16> {
        let n = self.integer(node, "port")?;
        match u16::try_from(n) {
            Ok(p) if p > 0 => Some(p),
            _ => {
                self.problem(node, format!("port {n} is out of range 1-65535"));
                None
            }
        }
    }

    pub fn mapping<'n>(&mut self, node: &'n Node, what: &str) -> &'n [(super::yaml::Key, Node)] {
        match &node.value {
            Value::Map(entries) => entries,
            Value::Null => &[],
            _ => {
                self.problem(node, format!("{what} must be a mapping, found {}", node.kind()));
                &[]
            }
        }
    }

    /// A mapping of names to scalar text (labels, ConfigMap data).
    pub fn text_map(&mut self, node: &Node, what: &str) -> IndexMap<String, String> {
        let mut out = IndexMap::new();
        for (k, v) in self.mapping(node, what) {
            if let Some(t) = self.text(v, &format!("{what} '{}'", k.name)) {
                out.insert(k.name.clone(), t);
            }
        }
        out
    }

    /// A list of items; reports anything else.
    pub fn list<'n>(&mut self, node: &'n Node, what: &str) -> &'n [Node] {
        match &node.value {
            Value::Seq(items) => items,
            Value::Null => &[],
            _ => {
                self.problem(node, format!("{what} must be a list, found {}", node.kind()));
                &[]
            }
        }
    }
}

/// `"12xb"` for scalars, the kind for anything else: for messages.
pub fn describe(node: &Node) -> String {
    match &node.value {
        Value::Str(s) => format!("\"{s}\""),
        Value::Int(_) | Value::Float(_) | Value::Bool(_) => node.scalar_text().unwrap_or_default(),
        _ => node.kind().to_string(),
    }
}

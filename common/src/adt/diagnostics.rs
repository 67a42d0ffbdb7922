//! Problems found in an ADT, each with where it is and what was expected.
//!
//! The compiler never stops at the first problem: every pass records what it
//! finds here and carries on, so a user fixes a whole file in one round.
//! Errors stop the ADT; warnings (placeholders, removed types, constants
//! defined nowhere) let it compile and travel with the plan.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::yaml::Pos;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

/// One problem in an ADT.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub pos: Pos,
    /// What the problem belongs to: `node 'fog-processor'`, `policy 'scale'`,
    /// `input 'fog_ip'`, or `document`.
    pub subject: String,
    pub message: String,
}

impl Diagnostic {
    /// `FILE:LINE:COL: error: SUBJECT: MESSAGE`, compiler-style.
    pub fn render(&self, file: &str) -> String {
        let severity = self.severity.as_str();
        if self.pos.is_known() {
            format!("{file}:{}: {severity}: {}: {}", self.pos, self.subject, self.message)
        } else {
            format!("{file}: {severity}: {}: {}", self.subject, self.message)
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.pos.is_known() {
            write!(f, "{}: {}: {}", self.pos, self.subject, self.message)
        } else {
            write!(f, "{}: {}", self.subject, self.message)
        }
    }
}

/// Every problem found in one ADT, in document order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diagnostics(Vec<Diagnostic>);

impl Diagnostics {
    /// Records an error.
    pub fn push(&mut self, pos: Pos, subject: impl Into<String>, message: impl Into<String>) {
        self.add(Severity::Error, pos, subject.into(), message.into());
    }

    /// Records a warning: the ADT still compiles.
    pub fn warn(&mut self, pos: Pos, subject: impl Into<String>, message: impl Into<String>) {
        self.add(Severity::Warning, pos, subject.into(), message.into());
    }

    fn add(&mut self, severity: Severity, pos: Pos, subject: String, message: String) {
        let d = Diagnostic { severity, pos, subject, message };
        // One mistake can be seen by two passes (e.g. a copy per instance);
        // report it once.
        if !self.0.contains(&d) {
            self.0.push(d);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn has_errors(&self) -> bool {
        self.0.iter().any(|d| d.severity == Severity::Error)
    }

    /// Errors and warnings apart, each sorted by position.
    pub fn split(self) -> (Vec<Diagnostic>, Vec<Diagnostic>) {
        self.into_sorted().into_iter().partition(|d| d.severity == Severity::Error)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter()
    }

    /// Sorted by position; problems without a position come first.
    pub fn into_sorted(mut self) -> Vec<Diagnostic> {
        self.0.sort_by_key(|d| d.pos);
        self.0
    }
}

/// An ADT that did not compile: every error found, and the warnings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileError {
    pub problems: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
}

impl CompileError {
    /// Renders errors and warnings compiler-style in document order,
    /// `FILE:LINE:COL: error: ...`, one a line.
    pub fn render(&self, file: &str) -> String {
        let mut all: Vec<&Diagnostic> = self.problems.iter().chain(&self.warnings).collect();
        all.sort_by_key(|d| (d.pos, d.severity));
        all.iter().map(|d| format!("{}\n", d.render(file))).collect()
    }
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(f, "{n} problem{} in the ADT", if n == 1 { "" } else { "s" })?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for CompileError {}

/// " (did you mean a, b?)" for the known names closest to `wanted`, or "".
pub fn did_you_mean<'a>(wanted: &str, known: impl IntoIterator<Item = &'a str>) -> String {
    let mut scored: Vec<(f64, &str)> = known
        .into_iter()
        .map(|k| (strsim::jaro_winkler(wanted, k), k))
        .filter(|(score, _)| *score > 0.8)
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
    let close: Vec<&str> = scored.iter().take(3).map(|(_, k)| *k).collect();
    if close.is_empty() {
        String::new()
    } else {
        format!("; did you mean {}?", close.join(", "))
    }
}

/// "a, b, c" of known names, for messages that list what is available.
pub fn list_names<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.into_iter().collect();
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_pick_close_names() {
        let known = ["fog-node", "camera-node", "cloud-node"];
        assert_eq!(did_you_mean("fog-nod", known), "; did you mean fog-node?");
        assert_eq!(did_you_mean("zzzz", known), "");
    }

    #[test]
    fn render_is_compiler_style() {
        let mut d = Diagnostics::default();
        d.push(Pos { line: 3, column: 5 }, "node 'web'", "bad");
        d.push(Pos { line: 1, column: 1 }, "document", "worse");
        d.warn(Pos { line: 2, column: 1 }, "node 'db'", "looks like a placeholder");
        let (problems, warnings) = d.split();
        let e = CompileError { problems, warnings };
        assert_eq!(
            e.render("a.yaml"),
            "a.yaml:1:1: error: document: worse\na.yaml:2:1: warning: node 'db': looks like a placeholder\na.yaml:3:5: error: node 'web': bad\n"
        );
    }
}

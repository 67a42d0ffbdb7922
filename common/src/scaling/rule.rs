//! One scaling rule, prepared and run in the monty VM.
//!
//! A rule is run as one Python program made of three parts:
//!
//! 1. the prelude: the names MiCADO's policy keeper gives rules that monty
//!    lacks: the `math` functions as globals ([`MATH_NAMES`]: `ceil`,
//!    `floor`, ...), a `time` object ([`TIME_PRELUDE`]: `time.time()` is the
//!    request's `now_unix`; `strptime`, `mktime`, `gmtime`, `localtime` and
//!    `strftime` are done on the host in UTC) and `m_opt_advice()`
//!    ([`ADVICE_PRELUDE`]; the optimizer is not part of fogmesh). Only the
//!    names the rule's text mentions are defined: a name a rule never writes
//!    cannot be reached, and the `time` class alone costs more to compile
//!    than a typical rule;
//! 2. the rule as written, except for Python 2 `print X` statements, which
//!    become `print(X)` on the same line ([`rewrite_py2_prints`]);
//! 3. a final expression, a dict of the four outputs, whose value is the
//!    result.
//!
//! Inputs are globals set before the prelude runs. Error lines are given in
//! the rule as written: the prelude's lines are subtracted.
//!
//! Differences from CPython that rules may notice: `/` is Python 3 true
//! division (a Python 2 era rule dividing ints, e.g. `reqconts/4`, gets a
//! float where Python 2 truncated); `time` is UTC
//! (`mktime` reads its tuple as UTC, `localtime` is `gmtime`); `import time`
//! fails (`time` is already there); `print >>f, x` is not rewritten.

use std::borrow::Cow;
use std::time::Duration;

use monty::{MontyRun, RunProgress};
use monty_types::{
    CompileOptions, ExcType, ExtFunctionResult, MontyException, MontyObject, NameLookupResult, PrintWriter,
    PrintWriterCallback, ResourceLimits, ResourceTracker,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::value;

/// The names a rule's result is read from, in this order.
pub const OUTPUT_NAMES: [&str; 4] = ["m_container_count", "m_node_count", "m_nodes_todrop", "m_userdata"];

/// A rule longer than this is refused before parsing.
pub const MAX_SOURCE_BYTES: usize = 256 * 1024;

/// Host calls (and undefined-name lookups) one evaluation may make: the VM's
/// clock stops while the host answers, so this bounds a loop made of them.
const MAX_SUSPENSIONS: usize = 10_000;

/// The deepest recursion limit accepted, whatever a request asks.
const MAX_RECURSION_CEILING: u32 = 5_000;

/// What the prelude calls on the host for `time.*`.
const TIME_HOST_FN: &str = "_fm_time";
/// The input holding `time.time()`.
const NOW_INPUT: &str = "_fm_now";
/// Inputs with this prefix are the engine's own; callers' are ignored.
const RESERVED_PREFIX: &str = "_fm_";

/// `math` names that are globals in MiCADO rules (its asteval symbol table),
/// as far as monty's `math` has them.
pub const MATH_NAMES: [&str; 34] = [
    "ceil",
    "floor",
    "trunc",
    "sqrt",
    "exp",
    "log",
    "log10",
    "log1p",
    "fabs",
    "fmod",
    "modf",
    "frexp",
    "ldexp",
    "copysign",
    "isnan",
    "isinf",
    "factorial",
    "degrees",
    "radians",
    "sin",
    "cos",
    "tan",
    "asin",
    "acos",
    "atan",
    "atan2",
    "sinh",
    "cosh",
    "tanh",
    "asinh",
    "acosh",
    "atanh",
    "pi",
    "e",
];

/// `time`, for rules that mention it.
pub const TIME_PRELUDE: &str = "\
class _FmTime:
    def time(self):
        return _fm_now
    def strptime(self, string, format='%a %b %d %H:%M:%S %Y'):
        return _fm_time('strptime', string, format)
    def mktime(self, t):
        return _fm_time('mktime', t)
    def gmtime(self, secs=None):
        return _fm_time('gmtime', _fm_now if secs is None else secs)
    def localtime(self, secs=None):
        return _fm_time('gmtime', _fm_now if secs is None else secs)
    def strftime(self, format, t=None):
        return _fm_time('strftime', format, _fm_time('gmtime', _fm_now) if t is None else t)
time = _FmTime()
";

/// `m_opt_advice()`, for rules that mention it.
pub const ADVICE_PRELUDE: &str = "\
def m_opt_advice():
    return {'valid': False, 'phase': 'disabled', 'vmnumber': 0, 'confident': False, 'errmsg': 'optimizer not enabled in fogmesh'}
";

/// The last line of the program: its value is the result.
const OUTPUTS_EXPR: &str = "{'m_container_count': m_container_count, 'm_node_count': m_node_count, \
'm_nodes_todrop': m_nodes_todrop, 'm_userdata': m_userdata}\n";

/// One evaluation: the rule, its inputs and its limits.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RuleRequest {
    /// The rule as written in the ADT.
    pub source: String,
    /// Every input by name: constants, query results, alerts and the `m_*`
    /// variables. Names that are not Python identifiers cannot be used by a
    /// rule and are skipped; the four outputs default to `None`.
    pub inputs: Map<String, Value>,
    /// What `time.time()` returns (seconds since the Unix epoch).
    pub now_unix: f64,
    pub limits: RuleLimits,
}

/// What one evaluation may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RuleLimits {
    /// VM time (time spent in host calls is not counted).
    pub max_duration_ms: u64,
    /// Heap the rule may use; enforced only in a worker process
    /// (monty-alloc as the global allocator).
    pub max_memory_bytes: u64,
    /// Python call depth (at most 5000 is used).
    pub max_recursion: u32,
    /// Bytes of `print` output kept; the rest is dropped and marked.
    pub max_output_bytes: u32,
}

impl Default for RuleLimits {
    fn default() -> Self {
        RuleLimits { max_duration_ms: 200, max_memory_bytes: 32 << 20, max_recursion: 200, max_output_bytes: 64 << 10 }
    }
}

/// What a rule decided.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RuleOutcome {
    /// Exactly `m_container_count`, `m_node_count`, `m_nodes_todrop` and
    /// `m_userdata`, as the rule left them.
    pub outputs: Map<String, Value>,
    /// Printed lines, without their newlines.
    pub printed: Vec<String>,
}

/// Why a rule gave no outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RuleErrorKind {
    /// The rule does not parse (or uses syntax monty refuses).
    Syntax,
    /// The rule raised an exception, or its outputs cannot be stored.
    Runtime,
    /// Over `max_duration_ms`.
    Timeout,
    /// Over `max_memory_bytes`.
    Memory,
    /// Over `max_recursion`.
    Recursion,
    /// The worker process died (other than for memory).
    Crashed,
    /// The engine itself failed (could not start a worker, bad request...).
    Internal,
}

/// A rule's failure, with the line in the rule as written where known.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RuleError {
    pub kind: RuleErrorKind,
    /// 1-based line in the rule as written.
    pub line: Option<u32>,
    /// e.g. "NameError: name 'TIME' is not defined".
    pub message: String,
    /// What the rule printed before failing.
    pub printed: Vec<String>,
}

impl RuleError {
    /// An error without a line or printed output.
    pub fn new(kind: RuleErrorKind, message: impl Into<String>) -> Self {
        RuleError { kind, line: None, message: message.into(), printed: Vec::new() }
    }
}

impl std::fmt::Display for RuleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for RuleError {}

/// The program built from a rule.
struct Prepared {
    program: String,
    /// Program line = rule line + prelude lines.
    prelude_lines: u32,
    /// Lines of the rule as written.
    rule_lines: u32,
}

/// The prelude for a rule: only what its code mentions.
fn prelude_for(rule: &str) -> String {
    let words = code_words(rule);
    let mut prelude = String::new();
    let math: Vec<&str> = MATH_NAMES.iter().copied().filter(|n| words.contains(n)).collect();
    if !math.is_empty() {
        prelude.push_str("from math import ");
        prelude.push_str(&math.join(", "));
        prelude.push('\n');
    }
    if words.contains("time") {
        prelude.push_str(TIME_PRELUDE);
    }
    if words.contains("m_opt_advice") {
        prelude.push_str(ADVICE_PRELUDE);
    }
    prelude
}

fn prepare(source: &str) -> Result<Prepared, RuleError> {
    if source.len() > MAX_SOURCE_BYTES {
        return Err(RuleError::new(
            RuleErrorKind::Syntax,
            format!("the rule is {} bytes long; at most {MAX_SOURCE_BYTES} are accepted", source.len()),
        ));
    }
    // One newline convention, so the line count here is the parser's.
    let normalized = source.replace("\r\n", "\n").replace('\r', "\n");
    let (rule, rewritten) = rewrite_py2_prints(&normalized);
    if rewritten > 0 {
        tracing::debug!(statements = rewritten, "rewrote Python 2 print statements");
    }
    let mut rule_lines = rule.bytes().filter(|b| *b == b'\n').count() as u32;
    let prelude = prelude_for(&rule);
    let prelude_lines = prelude.bytes().filter(|b| *b == b'\n').count() as u32;
    let mut program = String::with_capacity(prelude.len() + rule.len() + OUTPUTS_EXPR.len() + 1);
    program.push_str(&prelude);
    program.push_str(&rule);
    if !rule.is_empty() && !rule.ends_with('\n') {
        program.push('\n');
        rule_lines += 1;
    }
    program.push_str(OUTPUTS_EXPR);
    Ok(Prepared { program, prelude_lines, rule_lines })
}

impl Prepared {
    /// A program line as a line of the rule, if it is one.
    fn rule_line(&self, program_line: u32) -> Option<u32> {
        let line = program_line.checked_sub(self.prelude_lines)?;
        (1..=self.rule_lines).contains(&line).then_some(line)
    }
}

/// Parses a rule (with the same preparation as a run) without running it.
/// Safe in-process: the parser limits nesting and nothing is executed.
pub fn check_syntax(source: &str) -> Result<(), RuleError> {
    let prepared = prepare(source)?;
    let names = vec![NOW_INPUT.to_owned(), TIME_HOST_FN.to_owned()];
    match MontyRun::new(prepared.program.clone(), "rule.py", names, CompileOptions::default()) {
        Ok(_) => Ok(()),
        Err(e) => Err(compile_error(&prepared, &e)),
    }
}

/// Runs a rule in this process.
///
/// Only call this inside a worker process ([`super::worker::serve_worker`]):
/// the memory limit needs monty-alloc as the global allocator, and without it
/// an allocation bomb such as `[0] * 10**10` aborts the whole process.
pub fn evaluate_in_process(req: &RuleRequest) -> Result<RuleOutcome, RuleError> {
    let prepared = prepare(&req.source)?;
    let (names, values) = inputs(req);
    let runner = MontyRun::new(prepared.program.clone(), "rule.py", names, CompileOptions::default())
        .map_err(|e| compile_error(&prepared, &e))?;

    let limits = req.limits;
    let resources = ResourceLimits {
        max_duration: Some(Duration::from_millis(limits.max_duration_ms.max(1))),
        max_memory: Some(usize::try_from(limits.max_memory_bytes).unwrap_or(usize::MAX)),
        gc_interval: None,
        max_recursion_depth: limits.max_recursion.clamp(1, MAX_RECURSION_CEILING) as usize,
        max_suspensions: MAX_SUSPENSIONS,
    };
    let mut out = Collector::new(limits.max_output_bytes as usize);
    let mut suspensions = 0usize;
    let mut progress = runner.start(values, ResourceTracker::new(resources), PrintWriter::Callback(&mut out));
    let result = loop {
        let step = match progress {
            Ok(step) => step,
            Err(e) => break Err(run_error(&prepared, &e, &limits)),
        };
        if !matches!(step, RunProgress::Complete(_)) {
            suspensions += 1;
            if suspensions > MAX_SUSPENSIONS {
                break Err(RuleError::new(
                    RuleErrorKind::Timeout,
                    format!(
                        "the rule called time functions or looked up undefined names more than {MAX_SUSPENSIONS} times"
                    ),
                ));
            }
        }
        progress = match step {
            RunProgress::Complete(result) => break Ok(result),
            RunProgress::FunctionCall(call) => {
                let answer = if call.object_id.is_some() || !call.kwargs.is_empty() {
                    ExtFunctionResult::Error(MontyException::new(
                        ExcType::TypeError,
                        Some(format!("{}() takes no keyword arguments here", call.function_name)),
                    ))
                } else {
                    host_call(&call.function_name, &call.args)
                };
                call.resume(answer, PrintWriter::Callback(&mut out))
            }
            // An undefined name: a NameError the rule may catch, as in Python.
            RunProgress::NameLookup(lookup) => {
                lookup.resume(NameLookupResult::Undefined, PrintWriter::Callback(&mut out))
            }
            RunProgress::OsCall(call) => call.resume(
                ExtFunctionResult::Error(MontyException::new(
                    ExcType::PermissionError,
                    Some("scaling rules have no access to files, the network or the environment".to_owned()),
                )),
                PrintWriter::Callback(&mut out),
            ),
            RunProgress::ResolveFutures(_) => {
                break Err(RuleError::new(RuleErrorKind::Runtime, "async code is not supported in scaling rules"))
            }
        };
    };
    let printed = out.lines();
    match result.and_then(outputs) {
        Ok(outputs) => Ok(RuleOutcome { outputs, printed }),
        Err(mut e) => {
            e.printed = printed;
            Err(e)
        }
    }
}

/// Input names and values in the order monty takes them.
fn inputs(req: &RuleRequest) -> (Vec<String>, Vec<MontyObject>) {
    let mut names = Vec::with_capacity(req.inputs.len() + 6);
    let mut values = Vec::with_capacity(req.inputs.len() + 6);
    for (name, v) in &req.inputs {
        if name.starts_with(RESERVED_PREFIX) || !is_identifier(name) {
            tracing::debug!(input = %name, "input skipped: not a name a rule can use");
            continue;
        }
        names.push(name.clone());
        values.push(value::json_to_monty(v));
    }
    for output in OUTPUT_NAMES {
        if !req.inputs.contains_key(output) {
            names.push(output.to_owned());
            values.push(MontyObject::None);
        }
    }
    names.push(NOW_INPUT.to_owned());
    values.push(MontyObject::Float(req.now_unix));
    names.push(TIME_HOST_FN.to_owned());
    values.push(MontyObject::Function { name: TIME_HOST_FN.to_owned(), docstring: None });
    (names, values)
}

const KEYWORDS: [&str; 35] = [
    "False", "None", "True", "and", "as", "assert", "async", "await", "break", "class", "continue", "def", "del",
    "elif", "else", "except", "finally", "for", "from", "global", "if", "import", "in", "is", "lambda", "nonlocal",
    "not", "or", "pass", "raise", "return", "try", "while", "with", "yield",
];

/// ASCII Python identifiers that are not keywords (ADT names are ASCII).
fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    let Some(first) = chars.next() else { return false };
    (first == '_' || first.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
        && !KEYWORDS.contains(&name)
}

/// The final dict as JSON outputs.
fn outputs(result: MontyObject) -> Result<Map<String, Value>, RuleError> {
    let MontyObject::Dict(pairs) = result else {
        return Err(RuleError::new(RuleErrorKind::Internal, "the outputs expression did not give a dict"));
    };
    let mut outputs = Map::new();
    for (key, v) in &pairs {
        let MontyObject::String(name) = key else { continue };
        if let MontyObject::Float(f) = v {
            if !f.is_finite() {
                return Err(RuleError::new(
                    RuleErrorKind::Runtime,
                    format!("{name} is {}; an output must be a finite number", python_float(*f)),
                ));
            }
        }
        let json = value::monty_to_json(v)
            .map_err(|e| RuleError::new(RuleErrorKind::Runtime, format!("{name} cannot be kept: it contains {e}")))?;
        outputs.insert(name.clone(), json);
    }
    Ok(outputs)
}

fn python_float(f: f64) -> &'static str {
    if f.is_nan() {
        "nan"
    } else if f > 0.0 {
        "inf"
    } else {
        "-inf"
    }
}

/// A parse (or compile) failure as a Syntax error at its rule line.
fn compile_error(prepared: &Prepared, e: &MontyException) -> RuleError {
    let program_line = e.traceback().last().map(|frame| frame.start.line);
    // Past the rule's end means "the rule ended too early" (an open block
    // or bracket): point at its last line.
    let line = program_line.and_then(|l| {
        prepared
            .rule_line(l)
            .or_else(|| (l > prepared.prelude_lines && prepared.rule_lines > 0).then_some(prepared.rule_lines))
    });
    RuleError { kind: RuleErrorKind::Syntax, line, message: e.summary(), printed: Vec::new() }
}

/// A run failure, classified, at the innermost frame that is in the rule.
fn run_error(prepared: &Prepared, e: &MontyException, limits: &RuleLimits) -> RuleError {
    let line = e.traceback().iter().rev().find_map(|frame| prepared.rule_line(frame.start.line));
    let message = e.message().unwrap_or("");
    let (kind, message) = match e.exc_type() {
        ExcType::TimeoutError if message.starts_with("time limit exceeded") => (
            RuleErrorKind::Timeout,
            format!("TimeoutError: the rule ran longer than {} ms", limits.max_duration_ms.max(1)),
        ),
        ExcType::MemoryError if message.starts_with("memory limit exceeded") => {
            (RuleErrorKind::Memory, format!("MemoryError: the rule used more than {} bytes", limits.max_memory_bytes))
        }
        ExcType::RecursionError if message.starts_with("maximum recursion depth exceeded") => (
            RuleErrorKind::Recursion,
            format!(
                "RecursionError: maximum recursion depth exceeded (limit {})",
                limits.max_recursion.clamp(1, MAX_RECURSION_CEILING)
            ),
        ),
        _ => (RuleErrorKind::Runtime, e.summary()),
    };
    RuleError { kind, line, message, printed: Vec::new() }
}

fn host_call(name: &str, args: &[MontyObject]) -> ExtFunctionResult {
    if name != TIME_HOST_FN {
        // monty leaves some builtins (e.g. dir) to the host.
        return ExtFunctionResult::Error(MontyException::new(
            ExcType::NotImplementedError,
            Some(format!("{name}() is not available in scaling rules")),
        ));
    }
    match pytime::call(args) {
        Ok(v) => ExtFunctionResult::Return(v),
        Err(e) => ExtFunctionResult::Error(e),
    }
}

/// `print` output up to a byte limit; the rest is dropped and marked.
struct Collector {
    text: String,
    limit: usize,
    truncated: bool,
}

impl Collector {
    fn new(limit: usize) -> Self {
        Collector { text: String::new(), limit, truncated: false }
    }

    fn push(&mut self, s: &str) {
        if self.truncated {
            return;
        }
        let room = self.limit.saturating_sub(self.text.len());
        if s.len() <= room {
            self.text.push_str(s);
            return;
        }
        let mut cut = room;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        self.text.push_str(&s[..cut]);
        self.truncated = true;
    }

    fn lines(self) -> Vec<String> {
        let body = self.text.strip_suffix('\n').unwrap_or(&self.text);
        let mut lines: Vec<String> =
            if self.text.is_empty() { Vec::new() } else { body.split('\n').map(str::to_owned).collect() };
        if self.truncated {
            lines.push(format!("[output truncated: the rule printed more than {} bytes]", self.limit));
        }
        lines
    }
}

impl PrintWriterCallback for Collector {
    fn stdout_write(&mut self, output: Cow<'_, str>) -> Result<(), MontyException> {
        self.push(&output);
        Ok(())
    }

    fn stdout_push(&mut self, end: char) -> Result<(), MontyException> {
        let mut buf = [0u8; 4];
        self.push(end.encode_utf8(&mut buf));
        Ok(())
    }
}

/// The words of a rule's code: outside comments and plain strings (inside
/// f-strings too, whose braces hold code).
fn code_words(rule: &str) -> std::collections::HashSet<&str> {
    let b = rule.as_bytes();
    let mut words = std::collections::HashSet::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\'' | b'"' => i = skip_string(b, i),
            b'#' => i = line_end(b, i),
            c if c == b'_' || c.is_ascii_alphanumeric() => {
                let start = i;
                while i < b.len() && (b[i] == b'_' || b[i].is_ascii_alphanumeric()) {
                    i += 1;
                }
                let word = &rule[start..i];
                let f_prefix = word.len() <= 2 && word.bytes().any(|c| c == b'f' || c == b'F');
                words.insert(word);
                if f_prefix && matches!(b.get(i), Some(b'\'' | b'"')) {
                    // An f-string: read its contents as code too.
                    let end = skip_string(b, i);
                    words.extend(code_words(&rule[i + 1..end]));
                    i = end;
                }
            }
            _ => i += 1,
        }
    }
    words
}

/// Rewrites Python 2 `print X` statements to `print(X)`, returning the text
/// and how many statements changed.
///
/// A rewrite of the statement keyword only: where a statement starts (a
/// line's first token, or after `;` or a block's `:`), `print` followed by an
/// expression gets parentheses around that expression, up to the end of the
/// statement (a comment, `;` or the end of the logical line). Nothing else
/// moves, so line numbers stay the same and trailing comments stay. `print`
/// alone becomes `print()`, a trailing comma becomes `end=" "`, and
/// `print(...)` that is already a whole call is left alone; `print >>f, x`
/// is not rewritten.
pub fn rewrite_py2_prints(src: &str) -> (String, usize) {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len() + 16);
    let mut copied = 0;
    let mut count = 0;
    let mut depth = 0usize;
    let mut stmt_start = true;
    let mut i = 0;
    while i < b.len() {
        if stmt_start {
            stmt_start = false;
            i = skip_blanks(b, i);
            if let Some((end, replacement)) = py2_print_at(src, i) {
                out.push_str(&src[copied..i]);
                out.push_str(&replacement);
                copied = end;
                i = end;
                count += 1;
            }
            continue;
        }
        match b[i] {
            b'\'' | b'"' => i = skip_string(b, i),
            b'#' => i = line_end(b, i),
            b'\\' if b.get(i + 1) == Some(&b'\n') => i += 2,
            b'\n' => {
                i += 1;
                stmt_start = depth == 0;
            }
            b';' | b':' if depth == 0 => {
                i += 1;
                stmt_start = true;
            }
            b'(' | b'[' | b'{' => {
                depth += 1;
                i += 1;
            }
            b')' | b']' | b'}' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            _ => i += 1,
        }
    }
    out.push_str(&src[copied..]);
    (out, count)
}

fn skip_blanks(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\x0c') {
        i += 1;
    }
    i
}

fn line_end(b: &[u8], i: usize) -> usize {
    b[i..].iter().position(|c| *c == b'\n').map_or(b.len(), |p| i + p)
}

/// From an opening quote to just after the closing one. A single-quoted
/// string left open stops at the end of its line (the parser reports it).
fn skip_string(b: &[u8], i: usize) -> usize {
    let q = b[i];
    let triple = b.get(i + 1) == Some(&q) && b.get(i + 2) == Some(&q);
    let mut j = if triple { i + 3 } else { i + 1 };
    while j < b.len() {
        match b[j] {
            b'\\' => j += 2,
            c if c == q => {
                if !triple {
                    return j + 1;
                }
                if b.get(j + 1) == Some(&q) && b.get(j + 2) == Some(&q) {
                    return j + 3;
                }
                j += 1;
            }
            b'\n' if !triple => return j,
            _ => j += 1,
        }
    }
    b.len()
}

/// Where the statement starting at `i` ends, trailing blanks excluded.
fn statement_end(b: &[u8], start: usize) -> usize {
    let mut depth = 0usize;
    let mut i = start;
    while i < b.len() {
        match b[i] {
            b'\'' | b'"' => i = skip_string(b, i),
            b'#' if depth == 0 => break,
            b'#' => i = line_end(b, i),
            b'\\' if b.get(i + 1) == Some(&b'\n') => i += 2,
            b'\n' | b';' if depth == 0 => break,
            b'(' | b'[' | b'{' => {
                depth += 1;
                i += 1;
            }
            b')' | b']' | b'}' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            _ => i += 1,
        }
    }
    let mut end = i.min(b.len());
    while end > start && matches!(b[end - 1], b' ' | b'\t' | b'\x0c') {
        end -= 1;
    }
    end
}

/// The bracket closing the one at `open`, if the text closes it.
fn matching_close(b: &[u8], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = open;
    while i < b.len() {
        match b[i] {
            b'\'' | b'"' => {
                i = skip_string(b, i);
                continue;
            }
            b'#' => {
                i = line_end(b, i);
                continue;
            }
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// A Python 2 print statement at `i`: where it ends and its Python 3 form.
fn py2_print_at(src: &str, i: usize) -> Option<(usize, String)> {
    let b = src.as_bytes();
    if !b[i..].starts_with(b"print") {
        return None;
    }
    let after = i + 5;
    if b.get(after).is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c >= 0x80) {
        return None; // a longer name, e.g. printer
    }
    let e = skip_blanks(b, after);
    let spaced = e > after;
    let next = b.get(e).copied();
    let next2 = b.get(e + 1).copied();
    match next {
        None | Some(b'\n' | b'#' | b';') => return Some((after, "print()".to_owned())),
        Some(b'(') => {
            // Already a call when the parenthesised group is the whole statement.
            let close = matching_close(b, e)?;
            if close + 1 >= statement_end(b, e) {
                return None;
            }
        }
        Some(b'\'' | b'"') => {}
        // `print.x`, `print[0]`, `print=...`: the name, not the statement.
        Some(_) if !spaced => return None,
        Some(b'=') if next2 != Some(b'=') => return None,
        Some(b'+' | b'-' | b'*' | b'/' | b'%' | b'&' | b'|' | b'^' | b'@') if next2 == Some(b'=') => return None,
        Some(b'*' | b'/' | b'<' | b'>') if next2 == next && b.get(e + 2) == Some(&b'=') => return None,
        Some(b'>') if next2 == Some(b'>') => return None,
        Some(b',' | b')' | b']' | b'}' | b':' | b'.' | b'=' | b'<' | b'>' | b'!') => return None,
        Some(_) => {}
    }
    let end = statement_end(b, e);
    let body = &src[e..end];
    let replacement = match body.strip_suffix(',') {
        Some(rest) => format!("print({}, end=\" \")", rest.trim_end()),
        None => format!("print({body})"),
    };
    Some((end, replacement))
}

/// The host side of the prelude's `time` object, in UTC.
mod pytime {
    use std::fmt::Write as _;

    use chrono::format::{parse, Parsed, StrftimeItems};
    use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, Timelike};
    use monty_types::{ExcType, MontyException, MontyObject};

    const FIELDS: [&str; 9] =
        ["tm_year", "tm_mon", "tm_mday", "tm_hour", "tm_min", "tm_sec", "tm_wday", "tm_yday", "tm_isdst"];

    fn error(kind: ExcType, message: impl Into<String>) -> MontyException {
        MontyException::new(kind, Some(message.into()))
    }

    /// `_fm_time(op, ...)` from the prelude.
    pub(super) fn call(args: &[MontyObject]) -> Result<MontyObject, MontyException> {
        match args {
            [MontyObject::String(op), MontyObject::String(text), MontyObject::String(fmt)] if op == "strptime" => {
                strptime(text, fmt)
            }
            [MontyObject::String(op), t] if op == "mktime" => mktime(t),
            [MontyObject::String(op), secs] if op == "gmtime" => gmtime(secs),
            [MontyObject::String(op), MontyObject::String(fmt), t] if op == "strftime" => strftime(fmt, t),
            [MontyObject::String(op), ..] if op == "strptime" || op == "strftime" => {
                Err(error(ExcType::TypeError, format!("{op}() arguments must be str")))
            }
            _ => Err(error(ExcType::TypeError, "bad arguments to a time function")),
        }
    }

    /// Python's repr of a str, for messages.
    fn repr(s: &str) -> String {
        format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
    }

    /// A Python time format in chrono's syntax: only the directives both
    /// read the same way.
    fn translate(fmt: &str, func: &str) -> Result<String, MontyException> {
        let mut out = String::with_capacity(fmt.len() + 4);
        let mut chars = fmt.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some(d @ ('a' | 'A' | 'b' | 'B' | 'd' | 'H' | 'I' | 'j' | 'm' | 'M' | 'p' | 'S' | 'w' | 'y' | 'Y')) => {
                    out.push('%');
                    out.push(d);
                }
                Some('z') if func == "strptime" => out.push_str("%z"),
                Some('%') => out.push_str("%%"),
                Some(d @ ('f' | 'Z' | 'z' | 'U' | 'W' | 'c' | 'x' | 'X' | 'G' | 'u' | 'V')) => {
                    return Err(error(ExcType::ValueError, format!("time.{func}: %{d} is not supported in fogmesh")));
                }
                Some(d) => {
                    return Err(error(ExcType::ValueError, format!("'{d}' is a bad directive in format {}", repr(fmt))))
                }
                None => return Err(error(ExcType::ValueError, format!("stray % in format {}", repr(fmt)))),
            }
        }
        Ok(out)
    }

    fn strptime(text: &str, fmt: &str) -> Result<MontyObject, MontyException> {
        let chrono_fmt = translate(fmt, "strptime")?;
        let mismatch =
            || error(ExcType::ValueError, format!("time data {} does not match format {}", repr(text), repr(fmt)));
        let mut p = Parsed::new();
        parse(&mut p, text, StrftimeItems::new(&chrono_fmt)).map_err(|_| mismatch())?;
        // Python's defaults for what the format leaves out: 1900-01-01 00:00:00,
        // and two-digit years 69-99 in the 1900s.
        let filled = (|| {
            if p.year().is_none() {
                match (p.year_div_100(), p.year_mod_100()) {
                    (None, Some(y)) => p.set_year_div_100(if y < 69 { 20 } else { 19 })?,
                    (None, None) => p.set_year(1900)?,
                    _ => {}
                }
            }
            if p.ordinal().is_none() {
                if p.month().is_none() {
                    p.set_month(1)?;
                }
                if p.day().is_none() {
                    p.set_day(1)?;
                }
            }
            match (p.hour_div_12(), p.hour_mod_12()) {
                (None, Some(_)) => p.set_ampm(false)?,
                (None, None) => p.set_hour(0)?,
                (Some(_), None) => p.set_hour12(12)?,
                _ => {}
            }
            if p.minute().is_none() {
                p.set_minute(0)?;
            }
            if p.second().is_none() {
                p.set_second(0)?;
            }
            p.to_naive_datetime_with_offset(0)
        })();
        let dt = filled.map_err(|_| mismatch())?;
        Ok(struct_time(&dt, -1))
    }

    fn struct_time(dt: &NaiveDateTime, isdst: i64) -> MontyObject {
        // chrono keeps a leap second in the nanoseconds.
        let second = dt.second() as i64 + i64::from(dt.nanosecond() >= 1_000_000_000);
        let values = [
            dt.year() as i64,
            dt.month() as i64,
            dt.day() as i64,
            dt.hour() as i64,
            dt.minute() as i64,
            second,
            dt.weekday().num_days_from_monday() as i64,
            dt.ordinal() as i64,
            isdst,
        ];
        MontyObject::NamedTuple {
            type_name: "time.struct_time".to_owned(),
            field_names: FIELDS.iter().map(|f| (*f).to_owned()).collect(),
            values: values.into_iter().map(MontyObject::Int).collect(),
        }
    }

    /// The nine ints of a struct_time (or any 9-item tuple or list).
    fn fields(t: &MontyObject, func: &str) -> Result<[i64; 9], MontyException> {
        let items = match t {
            MontyObject::NamedTuple { values, .. } => values,
            MontyObject::Tuple(items) | MontyObject::List(items) => items,
            _ => return Err(error(ExcType::TypeError, format!("Tuple or struct_time argument required by {func}()"))),
        };
        if items.len() != 9 {
            return Err(error(ExcType::TypeError, format!("{func}(): illegal time tuple argument")));
        }
        let mut out = [0i64; 9];
        for (slot, item) in out.iter_mut().zip(items) {
            *slot = match item {
                MontyObject::Int(i) => *i,
                MontyObject::Bool(b) => i64::from(*b),
                _ => return Err(error(ExcType::TypeError, format!("{func}(): time tuple items must be ints"))),
            };
        }
        Ok(out)
    }

    /// Seconds since the epoch of a time tuple read as UTC. Out-of-range
    /// fields carry over as C's mktime does (month 13 is next January).
    fn mktime(t: &MontyObject) -> Result<MontyObject, MontyException> {
        let [year, mon, mday, hour, min, sec, ..] = fields(t, "mktime")?;
        let overflow = || error(ExcType::OverflowError, "mktime argument out of range");
        let months = mon.checked_sub(1).ok_or_else(overflow)?;
        let year = year.checked_add(months.div_euclid(12)).ok_or_else(overflow)?;
        let month = months.rem_euclid(12) + 1;
        let first =
            i32::try_from(year).ok().and_then(|y| NaiveDate::from_ymd_opt(y, month as u32, 1)).ok_or_else(overflow)?;
        let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).ok_or_else(overflow)?;
        let days = first.signed_duration_since(epoch).num_days();
        let secs = [(days, 86_400), (mday - 1, 86_400), (hour, 3_600), (min, 60), (sec, 1)]
            .iter()
            .try_fold(0i64, |acc, (n, unit)| n.checked_mul(*unit).and_then(|v| acc.checked_add(v)))
            .ok_or_else(overflow)?;
        Ok(MontyObject::Float(secs as f64))
    }

    fn gmtime(secs: &MontyObject) -> Result<MontyObject, MontyException> {
        let secs = match secs {
            MontyObject::Int(i) => *i,
            MontyObject::Bool(b) => i64::from(*b),
            MontyObject::Float(f) if f.is_finite() && f.abs() < 1e17 => f.floor() as i64,
            MontyObject::Float(_) => {
                return Err(error(ExcType::OverflowError, "timestamp out of range for platform time_t"))
            }
            _ => return Err(error(ExcType::TypeError, "an int or float is required")),
        };
        let dt = DateTime::from_timestamp(secs, 0)
            .ok_or_else(|| error(ExcType::OverflowError, "timestamp out of range for platform time_t"))?;
        Ok(struct_time(&dt.naive_utc(), 0))
    }

    fn strftime(fmt: &str, t: &MontyObject) -> Result<MontyObject, MontyException> {
        let [year, mon, mday, hour, min, sec, ..] = fields(t, "strftime")?;
        let dt = i32::try_from(year)
            .ok()
            .and_then(|y| NaiveDate::from_ymd_opt(y, u32::try_from(mon).ok()?, u32::try_from(mday).ok()?))
            .and_then(|d| {
                d.and_hms_opt(u32::try_from(hour).ok()?, u32::try_from(min).ok()?, u32::try_from(sec.min(59)).ok()?)
            })
            .ok_or_else(|| error(ExcType::ValueError, "strftime(): time tuple field out of range"))?;
        let chrono_fmt = translate(fmt, "strftime")?;
        let mut text = String::new();
        write!(text, "{}", dt.format_with_items(StrftimeItems::new(&chrono_fmt)))
            .map_err(|_| error(ExcType::ValueError, format!("strftime(): cannot format {}", repr(fmt))))?;
        Ok(MontyObject::String(text))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn s(v: &str) -> MontyObject {
            MontyObject::String(v.to_owned())
        }

        fn ints(t: &MontyObject) -> Vec<i64> {
            let MontyObject::NamedTuple { values, .. } = t else { panic!("not a struct_time: {t:?}") };
            values.iter().map(|v| if let MontyObject::Int(i) = v { *i } else { panic!("{v:?}") }).collect()
        }

        #[test]
        fn strptime_mktime_round_trip() {
            let t = call(&[s("strptime"), s("01-01-2024 00:00:00"), s("%d-%m-%Y %H:%M:%S")]).expect("parses");
            assert_eq!(ints(&t), vec![2024, 1, 1, 0, 0, 0, 0, 1, -1]);
            assert_eq!(call(&[s("mktime"), t]).expect("mktime"), MontyObject::Float(1_704_067_200.0));
        }

        #[test]
        fn python_defaults_and_pivots() {
            let t = call(&[s("strptime"), s("5:07 PM"), s("%I:%M %p")]).expect("parses");
            assert_eq!(ints(&t)[..6], [1900, 1, 1, 17, 7, 0]);
            let t = call(&[s("strptime"), s("68 69"), s("%y %H")]);
            assert!(t.is_err(), "hour 69 is out of range");
            let t = call(&[s("strptime"), s("69"), s("%y")]).expect("parses");
            assert_eq!(ints(&t)[0], 1969);
            let t = call(&[s("strptime"), s("68"), s("%y")]).expect("parses");
            assert_eq!(ints(&t)[0], 2068);
        }

        #[test]
        fn mismatches_and_unsupported_directives_are_value_errors() {
            let e = call(&[s("strptime"), s("2024"), s("%d-%m")]).expect_err("mismatch");
            assert_eq!(e.summary(), "ValueError: time data '2024' does not match format '%d-%m'");
            let e = call(&[s("strptime"), s("1"), s("%f")]).expect_err("unsupported");
            assert_eq!(e.exc_type(), ExcType::ValueError);
        }

        #[test]
        fn gmtime_strftime_and_carry() {
            let t = call(&[s("gmtime"), MontyObject::Float(1_704_067_199.9)]).expect("gmtime");
            assert_eq!(ints(&t), vec![2023, 12, 31, 23, 59, 59, 6, 365, 0]);
            let text = call(&[s("strftime"), s("%Y-%m-%d %H:%M:%S %a %b"), t]).expect("strftime");
            assert_eq!(text, s("2023-12-31 23:59:59 Sun Dec"));
            let month13 = MontyObject::Tuple([2023, 13, 1, 0, 0, 0, 0, 0, -1].map(MontyObject::Int).to_vec());
            assert_eq!(call(&[s("mktime"), month13]).expect("mktime"), MontyObject::Float(1_704_067_200.0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rw(s: &str) -> String {
        rewrite_py2_prints(s).0
    }

    #[test]
    fn py2_prints_become_calls_on_the_same_line() {
        assert_eq!(rw("print \"a\", b\n"), "print(\"a\", b)\n");
        assert_eq!(rw("  print \"a\" + str(b)   # note\nx = 1\n"), "  print(\"a\" + str(b))   # note\nx = 1\n");
        assert_eq!(rw("print 'x'; y = 2"), "print('x'); y = 2");
        assert_eq!(rw("if x: print x"), "if x: print(x)");
        assert_eq!(rw("print\n"), "print()\n");
        assert_eq!(rw("print 'a',\n"), "print('a', end=\" \")\n");
        assert_eq!(rw("print 'a', (1,\n 2)\nz"), "print('a', (1,\n 2))\nz");
        assert_eq!(rw("print (a), b\n"), "print((a), b)\n");
        assert_eq!(rw("print'#'  # c\n"), "print('#')  # c\n");
    }

    #[test]
    fn python3_and_other_uses_of_print_are_left_alone() {
        for s in [
            "print('a', b)\n",
            "print ('a')  # c\n",
            "print = 3\n",
            "print += 1\n",
            "x = print\n",
            "printer 'a'\n",
            "s = 'print \"a\"'\n",
            "s = \"\"\"\nprint 'a'\n\"\"\"\n",
            "f(\n  print)\n",
            "# print 'a'\n",
            "print >>f, 'a'\n",
        ] {
            assert_eq!(rw(s), s, "{s:?}");
        }
    }

    #[test]
    fn syntax_errors_carry_the_rule_line() {
        let e = check_syntax("x = 1\ny = (\nz = 3\n").expect_err("bad");
        assert_eq!((e.kind, e.line), (RuleErrorKind::Syntax, Some(3)));
        let e = check_syntax("x = 1\nif x:\n").expect_err("bad");
        assert_eq!((e.kind, e.line), (RuleErrorKind::Syntax, Some(2)));
        check_syntax("print \"a\", 1\nm_node_count = ceil(time.time())").expect("parses");
        check_syntax("").expect("empty rule parses");
    }

    #[test]
    fn the_prelude_has_what_the_code_mentions() {
        assert_eq!(prelude_for("x = 1"), "");
        assert_eq!(prelude_for("x = ceil(floor(2.5))"), "from math import ceil, floor\n");
        assert_eq!(prelude_for("d['time'] = 1  # time, ceil"), "");
        assert!(prelude_for("t = time.time()").contains("class _FmTime"));
        assert!(prelude_for("print(f'{time.time()}')").contains("class _FmTime"));
        assert_eq!(prelude_for("x = f'{a}' + str(ceil(b))"), "from math import ceil\n");
        assert_eq!(prelude_for("x = f\"{d['k']}\" + 'pi'"), "");
        assert!(prelude_for("a = m_opt_advice()").starts_with("def m_opt_advice"));
        assert_eq!(prelude_for("m_time_since_node_count_changed > 60"), "");
    }

    #[test]
    fn identifiers() {
        assert!(is_identifier("MAX_NODES") && is_identifier("_x1"));
        assert!(!is_identifier("1x") && !is_identifier("a-b") && !is_identifier("None") && !is_identifier(""));
    }
}

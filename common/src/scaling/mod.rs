//! Scaling rules: the Python `scaling_rule` text of MiCADO scaling policies,
//! run unchanged in a sandbox.
//!
//! ```text
//! RuleRequest (rule, inputs, now, limits)
//!   └─▶ RuleWorker.evaluate ──pipe──▶ child process: serve_worker
//!                                       └─▶ rule::evaluate_in_process
//!                                             prelude + rule (py2 prints rewritten) + outputs dict
//!                                             └─▶ monty VM (time, memory, recursion limits)
//!   ◀── RuleOutcome (m_container_count, m_node_count, m_nodes_todrop, m_userdata, printed lines)
//!       or RuleError (Syntax / Runtime / Timeout / Memory / Recursion / Crashed / Internal, rule line)
//! ```
//!
//! | module | one job |
//! | --- | --- |
//! | `rule` | the request and answer types; preparing a rule (Python 2 print rewrite, prelude, outputs expression); running it in monty; `check_syntax` |
//! | `value` | JSON values to and from the VM's objects |
//! | `worker` | `RuleWorker` (host: one child process, deadline, restart after a crash) and `serve_worker` (child) |
//!
//! The engine is monty (pydantic's Python VM in Rust): it runs the real
//! MiCADO rules unchanged, where Starlark would refuse `is None` and
//! chained comparisons. A rule only ever runs in a worker process, because
//! monty's memory limit needs monty-alloc as the process's allocator and an
//! allocation bomb would otherwise abort the caller.

pub mod round;
pub mod rule;
pub mod value;
pub mod worker;

pub use rule::{
    check_syntax, evaluate_in_process, RuleError, RuleErrorKind, RuleLimits, RuleOutcome, RuleRequest, OUTPUT_NAMES,
};
pub use worker::{serve_worker, RuleWorker};

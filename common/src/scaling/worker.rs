//! Rules run in a child process, so no rule can take the caller down.
//!
//! ```text
//! RuleWorker (host, async) ──one JSON RuleRequest per line──▶ serve_worker (child)
//!            ◀──────── one JSON Result<RuleOutcome, RuleError> per line ─┘
//! ```
//!
//! The child arms monty-alloc's memory limit for each request; an allocation
//! past it ends the child with [`monty_types::OOM_EXIT_CODE`]. The host gives
//! each request the rule's time limit plus 2 s, then kills the child. A child
//! that died (or was killed, or was abandoned mid-request by a cancelled
//! caller) is replaced on the next request.
//!
//! The child starts with an empty environment (the parent's can hold a join
//! token or API token) and lowered limits: no file written, no core dump,
//! [`CHILD_MAX_OPEN_FILES`] descriptors, [`CHILD_MAX_ADDRESS_SPACE`].

use std::collections::VecDeque;
use std::io::{BufRead, Read, Write};
use std::path::PathBuf;
use std::process::{ExitCode, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStdin, ChildStdout};
use tokio::task::JoinHandle;
use tokio::time::{timeout, timeout_at, Instant};

use super::rule::{evaluate_in_process, RuleError, RuleErrorKind, RuleOutcome, RuleRequest};

/// The largest request line a worker reads.
pub const MAX_REQUEST_BYTES: usize = 64 << 20;
/// The largest answer line: outputs plus printed lines.
pub const MAX_RESPONSE_BYTES: usize = 16 << 20;
/// Beyond the rule's own time limit, what the host waits for an answer.
const HOST_GRACE: Duration = Duration::from_secs(2);
/// Lines of the child's stderr kept to explain a crash.
const STDERR_TAIL_LINES: usize = 4;
const STDERR_LINE_BYTES: usize = 1024;

/// The child's descriptors: stdin, stdout, stderr and a margin.
pub const CHILD_MAX_OPEN_FILES: u64 = 64;
/// The child's address space: a backstop under monty-alloc (heap per rule,
/// 32 MiB by default; a request line up to 64 MiB), room for the program's
/// own mappings. Soft = hard for every limit, so the child cannot raise it.
/// No core dumps and no file writes (pipes are not limited by that). Not
/// RLIMIT_NPROC: it counts all of the user's processes (the master's own
/// threads too) and root ignores it; monty cannot fork anyway.
pub const CHILD_MAX_ADDRESS_SPACE: u64 = 1 << 30;

type Response = Result<RuleOutcome, RuleError>;

/// Runs rules in one long-lived child process, one request at a time.
///
/// Cheap to share in an `Arc`; the child is started on first use.
pub struct RuleWorker {
    program: PathBuf,
    args: Vec<String>,
    child: tokio::sync::Mutex<Option<Child>>,
}

struct Child {
    process: tokio::process::Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    stderr_task: JoinHandle<()>,
    /// A request was sent and its answer not read: its caller gave up, and
    /// the late answer must not be taken for the next request's.
    busy: bool,
}

impl std::fmt::Debug for RuleWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleWorker").field("program", &self.program).field("args", &self.args).finish()
    }
}

impl RuleWorker {
    /// The process to run rules in: `program args...` must call
    /// [`serve_worker`]. Nothing starts until the first evaluation.
    pub fn new(program: PathBuf, args: Vec<String>) -> RuleWorker {
        RuleWorker { program, args, child: tokio::sync::Mutex::new(None) }
    }

    /// Evaluates one rule in the worker. Never panics and never takes the
    /// caller down: a worker that hangs, runs out of memory or crashes gives
    /// a `Timeout`, `Memory` or `Crashed` error and is replaced next time.
    pub async fn evaluate(&self, req: RuleRequest) -> Result<RuleOutcome, RuleError> {
        let mut line = serde_json::to_vec(&req)
            .map_err(|e| RuleError::new(RuleErrorKind::Internal, format!("cannot encode the rule request: {e}")))?;
        line.push(b'\n');
        if line.len() > MAX_REQUEST_BYTES {
            return Err(RuleError::new(
                RuleErrorKind::Internal,
                format!("the rule's inputs take {} bytes; at most {MAX_REQUEST_BYTES} are accepted", line.len()),
            ));
        }
        let wait = Duration::from_millis(req.limits.max_duration_ms).saturating_add(HOST_GRACE);
        let mut slot = self.child.lock().await;

        if let Some(child) = slot.as_mut() {
            let exited = !matches!(child.process.try_wait(), Ok(None));
            if child.busy || exited {
                tracing::debug!(busy = child.busy, exited, "replacing the rule worker");
                if let Some(old) = slot.take() {
                    stop(old, true).await;
                }
            }
        }

        for attempt in 0..2 {
            if slot.is_none() {
                *slot = Some(self.spawn()?);
            }
            let Some(child) = slot.as_mut() else {
                return Err(RuleError::new(RuleErrorKind::Internal, "no rule worker"));
            };
            let now = Instant::now();
            let deadline = now.checked_add(wait).unwrap_or(now + Duration::from_secs(86_400));
            child.busy = true;
            let sent = timeout_at(deadline, async {
                child.stdin.write_all(&line).await?;
                child.stdin.flush().await
            })
            .await;
            match sent {
                Ok(Ok(())) => {}
                // The worker died before reading: nothing ran, so send again once.
                Ok(Err(e)) if attempt == 0 => {
                    tracing::warn!(error = %e, "rule worker gone before the request; starting another");
                    if let Some(old) = slot.take() {
                        stop(old, true).await;
                    }
                    continue;
                }
                Ok(Err(_)) => return Err(self.died(slot.take(), &req).await),
                Err(_) => return Err(self.timed_out(slot.take(), &req).await),
            }
            let answer = timeout_at(deadline, read_line_capped(&mut child.stdout, MAX_RESPONSE_BYTES)).await;
            return match answer {
                Err(_) => Err(self.timed_out(slot.take(), &req).await),
                Ok(Ok(Some(bytes))) => match serde_json::from_slice::<Response>(&bytes) {
                    Ok(response) => {
                        child.busy = false;
                        response
                    }
                    Err(e) => {
                        if let Some(old) = slot.take() {
                            stop(old, true).await;
                        }
                        Err(RuleError::new(
                            RuleErrorKind::Internal,
                            format!("unreadable answer from the rule worker: {e}"),
                        ))
                    }
                },
                Ok(Ok(None)) => Err(self.died(slot.take(), &req).await),
                Ok(Err(e)) => {
                    if let Some(old) = slot.take() {
                        stop(old, true).await;
                    }
                    Err(RuleError::new(RuleErrorKind::Internal, format!("reading the rule worker's answer: {e}")))
                }
            };
        }
        Err(RuleError::new(RuleErrorKind::Crashed, "the rule worker exits as soon as it starts"))
    }

    fn spawn(&self) -> Result<Child, RuleError> {
        let mut command = tokio::process::Command::new(&self.program);
        command
            .args(&self.args)
            // Nothing of the parent's environment: it may hold secrets, and
            // the worker needs none of it (not PATH: it is started by path).
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // SAFETY: set_child_limits only calls setrlimit, which is
        // async-signal-safe, and allocates nothing (it runs between fork and exec).
        #[cfg(target_os = "linux")]
        unsafe {
            command.pre_exec(set_child_limits);
        }
        let mut process = command
            .spawn()
            .map_err(|e| {
                RuleError::new(
                    RuleErrorKind::Internal,
                    format!("cannot start the rule worker {}: {e}", self.program.display()),
                )
            })?;
        let missing = || RuleError::new(RuleErrorKind::Internal, "the rule worker's pipes are missing");
        let stdin = process.stdin.take().ok_or_else(missing)?;
        let stdout = BufReader::new(process.stdout.take().ok_or_else(missing)?);
        let stderr = process.stderr.take().ok_or_else(missing)?;
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        let stderr_task = tokio::spawn(forward_stderr(BufReader::new(stderr), stderr_tail.clone(), process.id()));
        tracing::debug!(pid = process.id(), program = %self.program.display(), "rule worker started");
        Ok(Child { process, stdin, stdout, stderr_tail, stderr_task, busy: false })
    }

    async fn timed_out(&self, child: Option<Child>, req: &RuleRequest) -> RuleError {
        if let Some(child) = child {
            tracing::warn!(pid = child.process.id(), "rule worker did not answer in time; killing it");
            stop(child, true).await;
        }
        RuleError::new(
            RuleErrorKind::Timeout,
            format!(
                "TimeoutError: the rule ran longer than {} ms (its worker was stopped)",
                req.limits.max_duration_ms
            ),
        )
    }

    /// The error for a worker that stopped answering: out of memory or crashed.
    async fn died(&self, child: Option<Child>, req: &RuleRequest) -> RuleError {
        let Some(child) = child else {
            return RuleError::new(RuleErrorKind::Crashed, "the rule worker is gone");
        };
        let (status, tail) = stop(child, false).await;
        let error = death_error(status, &tail, req.limits.max_memory_bytes);
        tracing::warn!(status = ?status, error = %error.message, "rule worker died");
        error
    }
}

/// Runs in the child between fork and exec: lowers its limits.
#[cfg(target_os = "linux")]
fn set_child_limits() -> std::io::Result<()> {
    // A macro: the resource's type differs between glibc and musl.
    macro_rules! limit {
        ($resource:expr, $value:expr) => {{
            let limit = libc::rlimit { rlim_cur: $value as libc::rlim_t, rlim_max: $value as libc::rlim_t };
            // SAFETY: a plain system call with a pointer to a live local.
            if unsafe { libc::setrlimit($resource, &limit) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }};
    }
    limit!(libc::RLIMIT_NOFILE, CHILD_MAX_OPEN_FILES);
    limit!(libc::RLIMIT_CORE, 0);
    limit!(libc::RLIMIT_FSIZE, 0);
    limit!(libc::RLIMIT_AS, CHILD_MAX_ADDRESS_SPACE);
    Ok(())
}

/// Ends a child (killing it if asked, or if it does not exit by itself soon)
/// and returns how it ended and the last lines of its stderr.
async fn stop(mut child: Child, kill: bool) -> (Option<ExitStatus>, Vec<String>) {
    if kill {
        let _ = child.process.start_kill();
    }
    let status = match timeout(Duration::from_secs(5), child.process.wait()).await {
        Ok(Ok(status)) => Some(status),
        _ => {
            let _ = child.process.start_kill();
            child.process.wait().await.ok()
        }
    };
    // Its stderr ends with it; let the last lines arrive.
    let _ = timeout(Duration::from_secs(1), &mut child.stderr_task).await;
    child.stderr_task.abort();
    let tail = match child.stderr_tail.lock() {
        Ok(lines) => lines.iter().cloned().collect(),
        Err(poisoned) => poisoned.into_inner().iter().cloned().collect(),
    };
    (status, tail)
}

fn death_error(status: Option<ExitStatus>, stderr_tail: &[String], max_memory: u64) -> RuleError {
    let detail = if stderr_tail.is_empty() { String::new() } else { format!(": {}", stderr_tail.join("; ")) };
    if status.and_then(|s| s.code()) == Some(monty_types::OOM_EXIT_CODE) {
        return RuleError::new(
            RuleErrorKind::Memory,
            format!("MemoryError: the rule used more than {max_memory} bytes (its worker was stopped)"),
        );
    }
    let how = match status {
        None => "the rule worker died".to_owned(),
        Some(s) => match (s.code(), signal_of(&s)) {
            (Some(code), _) => format!("the rule worker exited with status {code}"),
            (None, Some(sig)) => format!("the rule worker was killed by signal {sig}{}", signal_name(sig)),
            (None, None) => "the rule worker died".to_owned(),
        },
    };
    RuleError::new(RuleErrorKind::Crashed, format!("{how}{detail}"))
}

#[cfg(unix)]
fn signal_of(status: &ExitStatus) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    status.signal()
}

#[cfg(not(unix))]
fn signal_of(_: &ExitStatus) -> Option<i32> {
    None
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        6 => " (SIGABRT; a stack overflow ends this way)",
        9 => " (SIGKILL)",
        11 => " (SIGSEGV)",
        _ => "",
    }
}

/// Logs the child's stderr and keeps its last lines for crash messages.
async fn forward_stderr<R: AsyncBufRead + Unpin>(mut reader: R, tail: Arc<Mutex<VecDeque<String>>>, pid: Option<u32>) {
    loop {
        match read_line_capped(&mut reader, STDERR_LINE_BYTES).await {
            Ok(Some(bytes)) => {
                let line = String::from_utf8_lossy(&bytes).trim_end().to_owned();
                if line.is_empty() {
                    continue;
                }
                tracing::warn!(pid, "rule worker: {line}");
                let mut lines = match tail.lock() {
                    Ok(lines) => lines,
                    Err(poisoned) => poisoned.into_inner(),
                };
                if lines.len() == STDERR_TAIL_LINES {
                    lines.pop_front();
                }
                lines.push_back(line);
            }
            // A long line: keep reading its rest as more lines.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => continue,
            Ok(None) | Err(_) => return,
        }
    }
}

/// One line (newline included) of at most `cap` bytes; `None` at the end of
/// the stream (a partial last line too); `InvalidData` for a longer line, of
/// which `cap + 1` bytes are consumed.
async fn read_line_capped<R: AsyncBufRead + Unpin>(reader: &mut R, cap: usize) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    (&mut *reader).take(cap as u64 + 1).read_until(b'\n', &mut buf).await?;
    if buf.ends_with(b"\n") {
        return Ok(Some(buf));
    }
    if buf.len() > cap {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("a line longer than {cap} bytes")));
    }
    Ok(None)
}

/// The child's side: reads one JSON [`RuleRequest`] per line on stdin,
/// answers one JSON `Result<RuleOutcome, RuleError>` per line on stdout, and
/// returns at the end of stdin.
///
/// The binary calling it must have `monty_alloc::LimitedAllocator` as its
/// `#[global_allocator]` (it refuses to run rules otherwise: their memory
/// limit would not hold) and call it from `main`, outside any async runtime.
pub fn serve_worker() -> ExitCode {
    if let Err(e) = monty_alloc::set_limit(None, false) {
        refuse(&format!("cannot run scaling rules without a memory limit: {e}"));
        return ExitCode::FAILURE;
    }
    let mut stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    loop {
        let mut line = Vec::new();
        match (&mut stdin).take(MAX_REQUEST_BYTES as u64 + 1).read_until(b'\n', &mut line) {
            Ok(0) => return ExitCode::SUCCESS,
            Ok(_) => {}
            Err(e) => {
                refuse(&format!("reading a request: {e}"));
                return ExitCode::FAILURE;
            }
        }
        let too_long = line.len() > MAX_REQUEST_BYTES;
        let response = if too_long {
            Err(RuleError::new(RuleErrorKind::Internal, format!("a request longer than {MAX_REQUEST_BYTES} bytes")))
        } else {
            match serde_json::from_slice::<RuleRequest>(&line) {
                Ok(req) => {
                    drop(line);
                    run_one(&req)
                }
                Err(e) => Err(RuleError::new(RuleErrorKind::Internal, format!("unreadable rule request: {e}"))),
            }
        };
        // Lift the limit: the answer may be as large as what the rule built.
        let _ = monty_alloc::set_limit(None, false);
        if !answer(&mut stdout, &response) {
            return ExitCode::FAILURE;
        }
        if too_long {
            // The rest of that line is still unread: start afresh.
            return ExitCode::FAILURE;
        }
    }
}

fn run_one(req: &RuleRequest) -> Response {
    let budget = usize::try_from(req.limits.max_memory_bytes).unwrap_or(usize::MAX);
    if let Err(e) = monty_alloc::set_limit(Some(budget), false) {
        return Err(RuleError::new(RuleErrorKind::Internal, format!("cannot set the memory limit: {e}")));
    }
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| evaluate_in_process(req))).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(RuleError::new(RuleErrorKind::Crashed, format!("the rule engine failed: {what}")))
    })
}

/// Writes one answer line; false when the host is gone.
fn answer(stdout: &mut impl Write, response: &Response) -> bool {
    let mut bytes = serde_json::to_vec(response).unwrap_or_default();
    if bytes.is_empty() || bytes.len() >= MAX_RESPONSE_BYTES {
        let printed = response.as_ref().map_or_else(|e| e.printed.clone(), |o| o.printed.clone());
        // Keep what it printed unless that is what made the answer too big.
        let printed_bytes: usize = printed.iter().map(|l| l.len() + 8).sum();
        let printed = if printed_bytes < MAX_RESPONSE_BYTES / 2 { printed } else { Vec::new() };
        let error: Response = Err(RuleError {
            kind: RuleErrorKind::Memory,
            line: None,
            message: format!("MemoryError: the rule's outputs take more than {MAX_RESPONSE_BYTES} bytes"),
            printed,
        });
        bytes = serde_json::to_vec(&error).unwrap_or_default();
    }
    bytes.push(b'\n');
    stdout.write_all(&bytes).and_then(|()| stdout.flush()).is_ok()
}

/// Why the worker stops, for its host: it reads the worker's stderr (a
/// worker process has no log subscriber of its own).
fn refuse(message: &str) {
    tracing::error!("{message}");
    let _ = writeln!(std::io::stderr(), "fogmesh rule worker: {message}");
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The child as `spawn` starts it, seen from /proc: no variable of the
    /// parent (here a join token) and the lowered limits.
    #[tokio::test]
    async fn the_child_gets_no_environment_and_lowered_limits() {
        std::env::set_var("FOGMESH_JOIN_TOKEN", "fmj1.test.secret.hash");
        let worker = RuleWorker::new(PathBuf::from("/bin/sleep"), vec!["30".into()]);
        let child = worker.spawn().expect("the child starts");
        let pid = child.process.id().expect("the child runs");
        let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("its environment");
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("its limits");
        stop(child, true).await;

        assert!(environ.is_empty(), "the child's environment: {:?}", String::from_utf8_lossy(&environ));
        let address_space = CHILD_MAX_ADDRESS_SPACE.to_string();
        let open_files = CHILD_MAX_OPEN_FILES.to_string();
        for (name, value) in [
            ("Max open files", open_files.as_str()),
            ("Max core file size", "0"),
            ("Max file size", "0"),
            ("Max address space", address_space.as_str()),
        ] {
            let line = limits.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in\n{limits}"));
            let soft_hard: Vec<&str> = line[name.len()..].split_whitespace().take(2).collect();
            assert_eq!(soft_hard, [value, value], "{line}");
        }
    }
}

//! What a master operation can fail with, mapped to HTTP statuses by the API.

use std::fmt;

#[derive(Debug)]
pub enum Failure {
    /// The request itself is wrong (HTTP 400).
    BadRequest(String),
    /// An ADT did not compile; one line per problem (HTTP 422).
    Invalid { message: String, problems: Vec<String> },
    NotFound(String),
    /// Conflicts with existing state, e.g. a name in use (HTTP 409).
    Conflict(String),
    /// The app changed since the revision the client named (HTTP 412).
    StaleRevision(String),
    /// The request or what it would make is over a size limit (HTTP 413).
    TooLarge(String),
    /// Our fault: the store or the CA failed (HTTP 500).
    Internal(anyhow::Error),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::BadRequest(m)
            | Failure::NotFound(m)
            | Failure::Conflict(m)
            | Failure::StaleRevision(m)
            | Failure::TooLarge(m) => f.write_str(m),
            Failure::Invalid { message, .. } => f.write_str(message),
            Failure::Internal(e) => write!(f, "internal error: {e:#}"),
        }
    }
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::Internal(e.into())
    }
}

/// Names of nodes and apps: what Docker, DNS and shells accept without quoting.
pub fn check_name(kind: &str, name: &str) -> Result<(), Failure> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Failure::BadRequest(format!(
            "{kind} name '{name}' is not valid: use 1-63 lowercase letters, digits and '-', not at the ends"
        )))
    }
}

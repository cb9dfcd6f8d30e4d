//! The engine's error type. Every variant says what failed and where; personal data and
//! secrets are removed before an error is displayed (see [`crate::mask`] and
//! [`crate::secret`]).

use std::path::PathBuf;

use crate::config::yaml::Problem;

/// Result alias used across the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can stop a pipeline or a command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// One or more problems in a configuration file; all of them are listed.
    #[error("{}", format_problems(file, problems))]
    Config {
        /// The file that holds the problems.
        file: PathBuf,
        /// Every problem found, in file order.
        problems: Vec<Problem>,
    },
    /// A file could not be read or written.
    #[error("{action} `{}`: {source}", path.display())]
    Io {
        /// What snodo was doing ("reading", "creating", ...).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// A database statement or connection failed.
    #[error("{context}: {message}")]
    Database {
        /// What snodo was doing, e.g. "writing batch 12 to table `persona`".
        context: String,
        /// The database's message, secrets removed.
        message: String,
    },
    /// The input data violates something that is not a per-record problem
    /// (e.g. the CSV header is missing a configured column).
    #[error("{0}")]
    Input(String),
    /// The run stopped because the reject policy was exceeded.
    #[error(
        "reject limit exceeded: {rejected} of {read} records rejected (limit {limit}); \
         see `snodo rejects {run_id}`"
    )]
    RejectLimit {
        /// Rejected so far.
        rejected: u64,
        /// Read so far.
        read: u64,
        /// The configured limit, as written.
        limit: String,
        /// The run that stopped.
        run_id: String,
    },
    /// The flow log failed verification.
    #[error("flow log verification failed: {0}")]
    Tampered(String),
    /// Anything else, with context.
    #[error("{0}")]
    Other(String),
    /// Several independent errors (one per file checked), all reported at once.
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Several(Vec<Error>),
}

impl Error {
    /// Builds a [`Error::Database`] from any displayable database error, removing secrets.
    pub fn db(context: impl Into<String>, err: impl std::fmt::Display) -> Self {
        Error::Database {
            context: context.into(),
            message: crate::mask::redact_text(&err.to_string()),
        }
    }

    /// Builds a [`Error::Io`].
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// The process exit code documented in the README for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config { .. } => 3,
            Error::RejectLimit { .. } => 4,
            Error::Tampered(_) => 5,
            Error::Several(all) => all.first().map_or(1, Error::exit_code),
            _ => 1,
        }
    }
}

fn format_problems(file: &std::path::Path, problems: &[Problem]) -> String {
    let mut out = String::new();
    for (i, p) in problems.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&format_problem(file, p));
    }
    out
}

/// Formats one problem as `file:line:column: path: message`, the shape editors and CI
/// annotators recognise.
pub fn format_problem(file: &std::path::Path, p: &Problem) -> String {
    let path = if p.path.is_empty() {
        String::new()
    } else {
        format!("{}: ", p.path)
    };
    format!(
        "{}:{}:{}: {}{}",
        file.display(),
        p.location.line,
        p.location.column,
        path,
        p.message
    )
}

//! The error type at the `newt-runtime` boundary.
//!
//! A function failing (non-zero exit, trap, deadline) is *not* an error here: it is a
//! [`CallOutcome`](crate::CallOutcome) and gets recorded like any other call. `Error`
//! is for what stops the host from running the call at all; the host maps each variant
//! to one HTTP status in one place.

use std::path::PathBuf;

/// Why the engine could not deploy or run a function.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The uploaded bundle is not something this runtime can run (not wasm, does not
    /// compile, imports what we do not provide, unsafe archive entry...).
    #[error("invalid bundle: {0}")]
    InvalidBundle(String),

    /// No executor is registered for the function's runtime.
    #[error("no executor handles runtime `{0}`")]
    UnknownRuntime(String),

    /// A container runtime definition is unusable (bad name, missing image...).
    #[error("invalid runtime: {0}")]
    InvalidRuntime(String),

    /// A preload policy is out of range or malformed.
    #[error("invalid policy: {0}")]
    InvalidPolicy(String),

    /// The limits given for a function are out of range.
    #[error("invalid limits: {0}")]
    InvalidLimits(String),

    /// A backend the function needs is not reachable (e.g. no Docker engine).
    #[error("{backend} unavailable: {reason}")]
    Unavailable {
        /// Which backend (`wasm`, `docker`).
        backend: &'static str,
        /// What went wrong, for the caller.
        reason: String,
    },

    /// An instance could not be started or could not load the function (a container
    /// that exits at once, an import error in the handler module...).
    #[error("the function's instance could not start: {0}")]
    InstanceStart(String),

    /// The call's deadline passed before its instance was ready (a wasm start
    /// function that runs too long, a container or agent slow to start).
    #[error("{0}")]
    Deadline(String),

    /// Every instance slot is taken and the wait queue is full.
    #[error("function `{function}` is at capacity: {reason}")]
    AtCapacity {
        /// The function whose pool is full.
        function: String,
        /// What limit was hit.
        reason: String,
    },

    /// A host-wide queue is full (image builds): retry shortly.
    #[error("{0}")]
    Busy(String),

    /// A bundle the store should hold is missing.
    #[error("bundle {digest} is missing from the content store")]
    MissingBundle {
        /// The sha256 of the missing bundle.
        digest: String,
    },

    /// Reading or writing newt's own files failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What we were doing (`writing`, `reading`...).
        action: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },

    /// Anything else that went wrong inside the engine.
    #[error("internal error: {0:#}")]
    Internal(#[from] anyhow::Error),
}

impl Error {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// Shorthand for results at the runtime boundary.
pub type Result<T, E = Error> = std::result::Result<T, E>;

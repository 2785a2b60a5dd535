//! What the store holds, as plain Rust values: call records, function versions and
//! their statuses. Nothing here knows how or where they are stored.

use std::fmt;
use std::str::FromStr;

use newt_runtime::StartKind;
use serde::{Deserialize, Serialize};

/// Status of a call. Stored as lowercase text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallStatus {
    /// Accepted (async) but not started yet.
    Pending,
    /// Running on an instance.
    Running,
    /// Finished and returned output.
    Done,
    /// Finished with an error (guest error, trap, limit, host restart).
    Failed,
    /// Ran past its deadline and was stopped.
    Timeout,
    /// The caller went away before the call finished; its instance was destroyed.
    Cancelled,
}

impl CallStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [CallStatus; 6] = [
        CallStatus::Pending,
        CallStatus::Running,
        CallStatus::Done,
        CallStatus::Failed,
        CallStatus::Timeout,
        CallStatus::Cancelled,
    ];

    /// The lowercase name stored in the database and used on the wire.
    pub fn as_str(&self) -> &'static str {
        match self {
            CallStatus::Pending => "pending",
            CallStatus::Running => "running",
            CallStatus::Done => "done",
            CallStatus::Failed => "failed",
            CallStatus::Timeout => "timeout",
            CallStatus::Cancelled => "cancelled",
        }
    }
}

impl From<&newt_runtime::CallResult> for CallStatus {
    fn from(result: &newt_runtime::CallResult) -> Self {
        match result {
            newt_runtime::CallResult::Done => CallStatus::Done,
            newt_runtime::CallResult::Failed(_) => CallStatus::Failed,
            newt_runtime::CallResult::Timeout(_) => CallStatus::Timeout,
        }
    }
}

impl fmt::Display for CallStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CallStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CallStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| unknown("call status", s, CallStatus::ALL.map(|c| c.as_str())))
    }
}

/// Where a function version is in its life. Stored as lowercase text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VersionStatus {
    /// A container function version whose image is being built.
    Pending,
    /// A version that calls can run.
    Ready,
    /// A version whose build failed; `status_message` says why.
    Failed,
}

impl VersionStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [VersionStatus; 3] = [
        VersionStatus::Pending,
        VersionStatus::Ready,
        VersionStatus::Failed,
    ];

    /// The lowercase name stored in the database and used on the wire.
    pub fn as_str(&self) -> &'static str {
        match self {
            VersionStatus::Pending => "pending",
            VersionStatus::Ready => "ready",
            VersionStatus::Failed => "failed",
        }
    }
}

impl fmt::Display for VersionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for VersionStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        VersionStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| unknown("version status", s, VersionStatus::ALL.map(|v| v.as_str())))
    }
}

/// The error for a name that is none of `known`.
fn unknown<const N: usize>(what: &str, s: &str, known: [&str; N]) -> String {
    format!(
        "unknown {what} {s:?}; expected one of: {}",
        known.join(", ")
    )
}

/// One invocation of a function, as recorded in the store.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CallRecord {
    /// Unique id (UUID v7 text), chosen by the caller.
    pub id: String,
    /// Per-host increasing call number (the seed platform's `callNum`), from
    /// [`Store::next_call_num`](super::Store::next_call_num).
    pub num: i64,
    /// Name of the function called.
    pub function: String,
    /// Version of the function that ran (or will run).
    pub version: i64,
    /// Where the call is in its lifecycle.
    pub status: CallStatus,
    /// Whether the caller asked for an async call (answered 202 with the id).
    pub is_async: bool,
    /// Request body.
    pub input: Vec<u8>,
    /// Response body, once done.
    pub output: Option<Vec<u8>>,
    /// What went wrong, for failed and timed-out calls.
    pub error: Option<String>,
    /// What the function wrote to stdout/stderr (possibly truncated by the caller).
    pub logs: Vec<u8>,
    /// How the instance was obtained; `None` until one was.
    pub start: Option<StartKind>,
    /// Microseconds spent waiting for an instance.
    pub queue_us: Option<i64>,
    /// Microseconds spent initialising the instance (0 when warm).
    pub init_us: Option<i64>,
    /// Microseconds the handler ran.
    pub exec_us: Option<i64>,
    /// When the call was accepted, unix milliseconds.
    pub created_at: i64,
    /// When it started running, unix milliseconds.
    pub started_at: Option<i64>,
    /// When it reached a final status, unix milliseconds.
    pub finished_at: Option<i64>,
    /// The name of the invoke token the call came with; `None` for the admin token or
    /// a server without tokens.
    pub caller: Option<String>,
    /// Which attempt this is: 1 for every call, more for an async call that a host
    /// restart interrupted while it was running and that ran again (async calls are
    /// at-least-once across crashes; this says how many times one was started).
    pub attempts: u32,
}

/// One deployed version of a function.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FunctionVersion {
    /// Function name.
    pub name: String,
    /// 1, 2, 3, ... assigned by the store; never reused for a name, even after delete.
    pub version: i64,
    /// Backend that runs it (`"wasm"` or a container runtime's name).
    pub runtime: String,
    /// sha256 hex of the bundle: its key in the content store.
    pub digest: String,
    /// Bundle size in bytes.
    pub size: i64,
    /// Limits, policy, environment and allow-list as JSON; opaque to the store.
    pub config: serde_json::Value,
    /// The function's secrets, sealed (encrypted) by the host: names and ciphertexts,
    /// opaque to the store, kept apart from `config` so no view of the config can
    /// carry them. Never serialized with the version.
    #[serde(skip)]
    pub secrets: SealedSecrets,
    /// Whether calls can run it.
    pub status: VersionStatus,
    /// Why the status is what it is (e.g. the compile error), if anything to say.
    pub status_message: Option<String>,
    /// When the version was added, unix milliseconds.
    pub created_at: i64,
}

/// A function version's secrets as the store keeps them: each name with its value
/// sealed by the host's key (see `crate::secrets`). Its `Debug` shows names only.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SealedSecrets(pub std::collections::BTreeMap<String, String>);

impl fmt::Debug for SealedSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl SealedSecrets {
    /// The secrets' names, in order.
    pub fn names(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Which call records [`Store::list_calls`](super::Store::list_calls) returns.
#[derive(Clone, Debug, Default)]
pub struct CallFilter {
    /// Only calls of this function.
    pub function: Option<String>,
    /// Only calls in this status.
    pub status: Option<CallStatus>,
    /// Most records returned; 0 means no limit. The caller clamps user input.
    pub limit: usize,
    /// For paging: only calls with `num` below this.
    pub before_num: Option<i64>,
    /// Only calls made with this invoke token (by its name).
    pub caller: Option<String>,
    /// Also read input, output and logs (up to megabytes each). Lists leave them out:
    /// their records have them empty, and `error` cut to [`SUMMARY_ERROR_CHARS`].
    pub with_payloads: bool,
}

/// How much of a call's error a summary (a listed call) carries.
pub const SUMMARY_ERROR_CHARS: usize = 1000;

/// How many times an async call may be started before a host restart during it
/// fails it for good: a call that keeps the host from staying up (or that was simply
/// unlucky three times) stops being retried.
pub const MAX_ASYNC_ATTEMPTS: u32 = 3;

/// What [`Store::recover`](super::Store::recover) found and fixed after a restart.
#[derive(Clone, Debug, PartialEq)]
pub struct Recovery {
    /// Synchronous calls the previous process left unfinished (`running`, or
    /// `pending`): their client is gone, so they are now `failed` with error "host
    /// restarted".
    pub interrupted: usize,
    /// Async calls left `running` that went back to `pending` with one more attempt,
    /// to run again (they are in `pending` too).
    pub retried: usize,
    /// Async calls left `running` on their last attempt ([`MAX_ASYNC_ATTEMPTS`]): now
    /// `failed`, with an error naming the attempts.
    pub exhausted: usize,
    /// Accepted async calls to run, oldest first: those that never started and those
    /// retried.
    pub pending: Vec<CallRecord>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_status_text_round_trips_and_rejects_unknown() {
        for status in CallStatus::ALL {
            assert_eq!(status.as_str().parse::<CallStatus>(), Ok(status));
            assert_eq!(
                serde_json::to_string(&status).unwrap(),
                format!("\"{}\"", status.as_str())
            );
        }
        let err = "finished".parse::<CallStatus>().unwrap_err();
        assert!(
            err.contains("\"finished\"") && err.contains("timeout"),
            "{err}"
        );
    }

    #[test]
    fn version_status_text_round_trips_and_rejects_unknown() {
        for status in VersionStatus::ALL {
            assert_eq!(status.as_str().parse::<VersionStatus>(), Ok(status));
            assert_eq!(
                serde_json::to_string(&status).unwrap(),
                format!("\"{}\"", status.as_str())
            );
        }
        let err = "building".parse::<VersionStatus>().unwrap_err();
        assert!(
            err.contains("\"building\"") && err.contains("ready"),
            "{err}"
        );
    }
}

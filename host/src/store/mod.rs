//! The host's durable state, behind the [`Store`] trait.
//!
//! The store holds four things:
//! - **function versions**: every deployed version of every function, with its bundle
//!   digest, config (limits, policy, environment and allow-list: opaque JSON), its
//!   sealed secrets (in their own column) and build status. Deleting a function hides
//!   its versions and erases their secrets; their numbers are never reused for that
//!   name.
//! - **runtimes**: the container runtimes registered through the API (and saved
//!   runtime policies), as their JSON definition.
//! - **call records**: one per invocation, updated as the call moves from accepted to
//!   running to a final status, and kept after the function is deleted.
//! - **routes**: HTTP path prefixes served by a function ([`StoredRoute`]).
//! - **aliases and rollbacks**: named pointers to versions, possibly a weighted split
//!   ([`StoredAlias`]), and the versions rollbacks set aside.
//!
//! SQL stays behind the trait: callers see only plain values ([`FunctionVersion`],
//! [`CallRecord`], ...), never a connection, row or SQL type, so a second
//! implementation (PostgreSQL, for several hosts sharing one database) can stand beside
//! [`SqliteStore`] without touching them.
//!
//! Who writes what: the API's deploy, patch and delete handlers write function
//! versions (one at a time, under the server's deploy lock), and a container build
//! writes its version's status when it ends; the runtime handlers write runtimes; the call paths write call records, write-behind
//! and so never waiting on the disk, except for an async call's acceptance, which must
//! be durable before its 202, and its start, durable before it runs (so a restart
//! knows it ran and counts the attempt). At start, [`Store::recover`] repairs the
//! calls a dead process left unfinished. Reading happens mostly at start (functions and runtimes
//! are then served from memory), for a function's version history, and for the
//! call-record endpoints.

mod sqlite;
mod types;

use std::sync::Arc;

use anyhow::Result;

pub use sqlite::SqliteStore;
pub(crate) use sqlite::is_sqlite_full;
pub use types::{
    CallFilter, CallRecord, CallStatus, FunctionVersion, MAX_ASYNC_ATTEMPTS, Recovery,
    SealedSecrets, VersionStatus,
};

/// An HTTP route as stored: requests under `path` (a prefix, whole segments) go to
/// `function` when their method is in `methods` (empty: any method).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredRoute {
    /// The path prefix, starting with `/`, without a trailing `/` (except `/` itself).
    pub path: String,
    /// The function that serves it.
    pub function: String,
    /// Upper-case methods; empty: any.
    pub methods: Vec<String>,
    /// When it was added (Unix ms).
    pub created_at: i64,
}

/// An alias of a function as stored: calls of `function:alias` run one of
/// `targets`' versions, picked at random by weight.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredAlias {
    /// The function.
    pub function: String,
    /// The alias's name (a function name that is not a number).
    pub alias: String,
    /// The versions and their weights (whole percents summing to 100), by version.
    pub targets: Vec<AliasTarget>,
    /// When it was last set (Unix ms).
    pub updated_at: i64,
}

/// One version an alias points at, with its share of the calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AliasTarget {
    /// The version.
    pub version: i64,
    /// Its share of the alias's calls, in percent.
    pub weight: u32,
}

/// A function version as retention sees it: what it runs from and whether it may
/// still run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionRef {
    /// The function's name.
    pub name: String,
    /// The version's number.
    pub version: i64,
    /// Its runtime (`wasm` or a container runtime).
    pub runtime: String,
    /// Its bundle's digest.
    pub digest: String,
    /// Its build status.
    pub status: VersionStatus,
    /// Whether its function was deleted.
    pub deleted: bool,
}

/// Which finished call records retention deletes: those created before
/// `created_before_ms` (Unix ms), and those beyond their function's newest
/// `keep_per_function`. Calls `pending` or `running` are never deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallRetention {
    /// Records created before this (Unix ms) go.
    pub created_before_ms: i64,
    /// Each function keeps at most its newest this many records (at least 1).
    pub keep_per_function: usize,
}

/// Call records counted (or deleted) by retention, and their payload bytes (input,
/// output, logs, error).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrunableCalls {
    /// How many records.
    pub count: u64,
    /// Their payload bytes.
    pub bytes: u64,
}

/// What the store holds, for `GET /v1/status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreCounts {
    /// Live functions.
    pub functions: u64,
    /// Their versions (deleted functions' not counted).
    pub versions: u64,
    /// Call records.
    pub calls: u64,
}

/// The store as the server holds it.
pub type SharedStore = Arc<dyn Store>;

/// Durable state of a host: function versions, runtimes and call records.
///
/// Function and runtime writes are durable when they return. Call records may be
/// written behind ([`Store::record_call`]); every read of calls first makes the
/// caller's earlier writes visible.
#[async_trait::async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Adds a version of function `name` (creating the function if it is new or was
    /// deleted) and makes it the current one. Its number is one more than any version
    /// the name ever had. `secrets` are stored as given (sealed by the caller).
    #[allow(clippy::too_many_arguments)]
    async fn add_version(
        &self,
        name: &str,
        runtime: &str,
        digest: &str,
        size: i64,
        config: &serde_json::Value,
        secrets: &SealedSecrets,
        status: VersionStatus,
    ) -> Result<FunctionVersion>;

    /// Sets the status (and message, cleared when `None`) of one version. Fails if the
    /// version does not exist.
    async fn set_version_status(
        &self,
        name: &str,
        version: i64,
        status: VersionStatus,
        message: Option<&str>,
    ) -> Result<()>;

    /// Replaces the config (limits, policy overrides) of one version. Fails if the
    /// version does not exist.
    async fn set_version_config(
        &self,
        name: &str,
        version: i64,
        config: &serde_json::Value,
    ) -> Result<()>;

    /// The current (newest) version of every live function, sorted by name.
    async fn current_versions(&self) -> Result<Vec<FunctionVersion>>;

    /// All versions of live function `name` since it was last (re)created, newest
    /// first; empty if there is no such function.
    async fn versions(&self, name: &str) -> Result<Vec<FunctionVersion>>;

    /// Deletes function `name`: its versions are hidden (their numbers stay taken),
    /// their sealed secrets erased, its aliases and rollbacks forgotten, and its call
    /// records kept. Returns `false` if there was no such live function.
    async fn delete_function(&self, name: &str) -> Result<bool>;

    /// Saves a container runtime's definition under `name`, replacing an older one.
    async fn put_runtime(&self, name: &str, definition: &serde_json::Value) -> Result<()>;

    /// Every saved runtime definition, by name.
    async fn runtimes(&self) -> Result<Vec<serde_json::Value>>;

    /// Removes a saved runtime; `false` if there was none.
    async fn delete_runtime(&self, name: &str) -> Result<bool>;

    /// Saves an HTTP route, replacing the one at the same path; `true` if the path
    /// had none.
    async fn put_route(&self, route: &StoredRoute) -> Result<bool>;

    /// Every HTTP route, by path.
    async fn routes(&self) -> Result<Vec<StoredRoute>>;

    /// Removes the HTTP route at `path`; `false` if there was none.
    async fn delete_route(&self, path: &str) -> Result<bool>;

    /// Saves an alias, replacing the function's alias of the same name; `true` if it
    /// had none. Aliases go with their function ([`Store::delete_function`]).
    async fn put_alias(&self, alias: &StoredAlias) -> Result<bool>;

    /// Every alias of every live function, by function and alias.
    async fn aliases(&self) -> Result<Vec<StoredAlias>>;

    /// Removes an alias; `false` if there was none.
    async fn delete_alias(&self, function: &str, alias: &str) -> Result<bool>;

    /// The versions rollbacks set aside, as `(function, version)`: calls of a
    /// function run its newest ready version that is not one of them.
    async fn rolled_back(&self) -> Result<Vec<(String, i64)>>;

    /// Records a rollback of `function` to `version`, at once: `version` is no longer
    /// set aside and each of `set_aside` is.
    async fn roll_back(&self, function: &str, version: i64, set_aside: &[i64]) -> Result<()>;

    /// The next call number: strictly increasing, above every number already recorded.
    fn next_call_num(&self) -> i64;

    /// Queues `record` for writing (upsert by id) and returns without waiting for the
    /// disk. Waits only while the queue is full; never drops a record, except after
    /// [`Store::close`], when it logs a warning.
    async fn record_call(&self, record: CallRecord);

    /// Queues `record` like [`Store::record_call`] and waits until it is committed.
    async fn record_call_durable(&self, record: CallRecord) -> Result<()>;

    /// Waits until every record queued before this call is committed. Fails if the
    /// batch that held them failed to commit or the store is closed.
    async fn flush(&self) -> Result<()>;

    /// The call with this id, after flushing so the caller sees its own writes.
    async fn get_call(&self, id: &str) -> Result<Option<CallRecord>>;

    /// The call with this number, after flushing so the caller sees its own writes.
    async fn get_call_by_num(&self, num: i64) -> Result<Option<CallRecord>>;

    /// Calls matching `filter`, newest (highest `num`) first, after flushing.
    async fn list_calls(&self, filter: CallFilter) -> Result<Vec<CallRecord>>;

    /// The versions whose bundles, compiled artifacts and images retention must keep,
    /// as far as the store knows (the engine adds the versions it runs now): of every
    /// live function, its versions being built, its newest `keep_ready` ready
    /// versions (rollback targets; at least 1), its serving version (after a rollback,
    /// an older one) and its aliases' targets. A new kind of reference belongs here.
    async fn referenced_versions(&self, keep_ready: usize) -> Result<Vec<VersionRef>>;

    /// Every version ever stored, deleted functions' included, by name and version:
    /// what retention reads to say why an unreferenced bundle goes.
    async fn all_versions(&self) -> Result<Vec<VersionRef>>;

    /// How many finished call records `rule` would delete, and their bytes.
    async fn prunable_calls(&self, rule: &CallRetention) -> Result<PrunableCalls>;

    /// Deletes at most `batch` call records `rule` lets go (oldest first) in one short
    /// transaction, behind the records already queued, so calls never wait on it.
    /// Returns what it deleted; fewer than `batch` means nothing more is due.
    async fn prune_calls(&self, rule: &CallRetention, batch: usize) -> Result<PrunableCalls>;

    /// Counts of functions, versions and call records.
    async fn counts(&self) -> Result<StoreCounts>;

    /// Repairs what a previous process left behind; call once at startup, before
    /// serving (it does not see records still queued). Synchronous calls left
    /// `running` or `pending` become `failed` with error "host restarted" (their
    /// client already got an error). Async calls left `running` go back to `pending`
    /// with one more attempt, up to [`MAX_ASYNC_ATTEMPTS`]; on their last attempt they
    /// become `failed` with an error naming the attempts. Every `pending` async call
    /// is returned, to be run.
    async fn recover(&self) -> Result<Recovery>;

    /// How many call records were queued but not written since the start (their batch
    /// could not commit, say on a full disk): the calls ran and answered, their
    /// records are missing or stale. `/metrics` shows it.
    fn records_lost(&self) -> u64 {
        0
    }

    /// Writes everything queued and stops accepting call records; for graceful
    /// shutdown. Later `record_call`s are dropped with a warning, later durable writes,
    /// flushes and reads of calls fail. Function and runtime reads and writes keep
    /// working.
    async fn close(&self);
}

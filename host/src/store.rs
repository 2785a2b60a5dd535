//! The host's durable state: functions with their versions, and call records, in one
//! SQLite database (WAL mode).
//!
//! Function writes are rare and must be durable, so they run synchronously. Call
//! records are written on every invocation, so they go through a **write-behind
//! queue**: one writer thread owns the write connection and commits whatever has queued
//! up in a single transaction. An HTTP response therefore never waits on an fsync, and
//! a burst of calls costs one commit per batch instead of one per call. Callers that
//! need durability (accepting an async call) use [`Store::record_call_durable`], which
//! goes through the same queue, so it stays ordered with later updates of that call,
//! and waits for its batch to commit. Reads use separate connections, which WAL lets
//! run beside the writer, and flush the queue first so a caller sees its own writes.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, Value, ValueRef};
use rusqlite::{Connection, OptionalExtension, Row, ToSql, TransactionBehavior, params};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

/// Records the write-behind queue holds before `record_call` waits (backpressure: a
/// slow disk slows callers down rather than dropping records or growing memory).
const QUEUE_CAPACITY: usize = 16 * 1024;

/// Most records committed in one transaction, so one batch never holds the write lock
/// for long and durable waiters in a burst are answered in bounded time.
const MAX_BATCH: usize = 512;

/// Idle read connections kept open; more are opened on demand and closed after use.
const MAX_IDLE_READERS: usize = 4;

/// How long a connection waits for another one's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Schema migrations, applied in order; `PRAGMA user_version` counts how many ran.
/// Append new steps, never edit a released one.
const MIGRATIONS: &[&str] = &[
    // 1: functions (soft-deleted per version, so version numbers never repeat for a
    // name and old call records stay unambiguous) and calls.
    "CREATE TABLE IF NOT EXISTS function_versions (
        name           TEXT    NOT NULL,
        version        INTEGER NOT NULL,
        runtime        TEXT    NOT NULL,
        digest         TEXT    NOT NULL,
        size           INTEGER NOT NULL,
        config         TEXT    NOT NULL,
        status         TEXT    NOT NULL,
        status_message TEXT,
        created_at     INTEGER NOT NULL,
        deleted_at     INTEGER,
        PRIMARY KEY (name, version)
    );
    CREATE TABLE IF NOT EXISTS calls (
        id          TEXT    PRIMARY KEY,
        num         INTEGER NOT NULL,
        function    TEXT    NOT NULL,
        version     INTEGER NOT NULL,
        status      TEXT    NOT NULL,
        is_async    INTEGER NOT NULL,
        input       BLOB    NOT NULL,
        output      BLOB,
        error       TEXT,
        logs        BLOB    NOT NULL,
        start       TEXT,
        queue_us    INTEGER,
        init_us     INTEGER,
        exec_us     INTEGER,
        created_at  INTEGER NOT NULL,
        started_at  INTEGER,
        finished_at INTEGER
    );
    CREATE INDEX IF NOT EXISTS calls_function_num ON calls (function, num);
    CREATE INDEX IF NOT EXISTS calls_status ON calls (status);
    CREATE UNIQUE INDEX IF NOT EXISTS calls_num ON calls (num);",
    // 2: container runtimes registered through the API, as their JSON definition.
    "CREATE TABLE IF NOT EXISTS runtimes (
        name       TEXT    PRIMARY KEY,
        definition TEXT    NOT NULL,
        created_at INTEGER NOT NULL
    );",
];

const CALL_COLUMNS: &str = "id, num, function, version, status, is_async, input, output, \
     error, logs, start, queue_us, init_us, exec_us, created_at, started_at, finished_at";

const VERSION_COLUMNS: &str =
    "name, version, runtime, digest, size, config, status, status_message, created_at";

/// Later records for the same call id replace earlier ones, column by column.
const UPSERT_CALL: &str = "INSERT INTO calls (id, num, function, version, status, is_async, \
     input, output, error, logs, start, queue_us, init_us, exec_us, created_at, started_at, \
     finished_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)
     ON CONFLICT (id) DO UPDATE SET num = excluded.num, function = excluded.function, \
     version = excluded.version, status = excluded.status, is_async = excluded.is_async, \
     input = excluded.input, output = excluded.output, error = excluded.error, \
     logs = excluded.logs, start = excluded.start, queue_us = excluded.queue_us, \
     init_us = excluded.init_us, exec_us = excluded.exec_us, created_at = excluded.created_at, \
     started_at = excluded.started_at, finished_at = excluded.finished_at";

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
}

impl CallStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [CallStatus; 5] = [
        CallStatus::Pending,
        CallStatus::Running,
        CallStatus::Done,
        CallStatus::Failed,
        CallStatus::Timeout,
    ];

    /// The lowercase name stored in the database and used on the wire.
    pub fn as_str(&self) -> &'static str {
        match self {
            CallStatus::Pending => "pending",
            CallStatus::Running => "running",
            CallStatus::Done => "done",
            CallStatus::Failed => "failed",
            CallStatus::Timeout => "timeout",
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
            .ok_or_else(|| {
                format!(
                    "unknown call status {s:?}; expected one of: pending, running, done, failed, timeout"
                )
            })
    }
}

impl ToSql for CallStatus {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(self.as_str().into())
    }
}

impl FromSql for CallStatus {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        value
            .as_str()?
            .parse()
            .map_err(|message: String| FromSqlError::Other(message.into()))
    }
}

/// One invocation of a function, as recorded in the store.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CallRecord {
    /// Unique id (UUID v7 text), chosen by the caller.
    pub id: String,
    /// Per-host increasing call number (the seed platform's `callNum`), from
    /// [`Store::next_call_num`].
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
    /// How the instance was obtained: `"cold"`, `"prewarmed"` or `"warm"`.
    pub start: Option<String>,
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
}

/// One deployed version of a function.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FunctionVersion {
    /// Function name.
    pub name: String,
    /// 1, 2, 3, ... assigned by the store; never reused for a name, even after delete.
    pub version: i64,
    /// Backend that runs it (`"wasm"` for now).
    pub runtime: String,
    /// sha256 hex of the bundle: its key in the content store.
    pub digest: String,
    /// Bundle size in bytes.
    pub size: i64,
    /// Limits and policy as JSON; opaque to the store.
    pub config: serde_json::Value,
    /// `"ready"`, `"pending"` or `"failed"`.
    pub status: String,
    /// Why the status is what it is (e.g. the compile error), if anything to say.
    pub status_message: Option<String>,
    /// When the version was added, unix milliseconds.
    pub created_at: i64,
}

/// Which call records [`Store::list_calls`] returns.
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
}

/// What [`Store::recover`] found and fixed after a restart.
#[derive(Clone, Debug, PartialEq)]
pub struct Recovery {
    /// Calls the previous process left unfinished that nobody can resume: `running`
    /// ones and synchronous `pending` ones (their client is gone). They are now
    /// `failed` with error "host restarted".
    pub interrupted: usize,
    /// Accepted async calls that never started, oldest first, to be run again.
    pub pending: Vec<CallRecord>,
}

/// Handle to the store. Cheap to clone; all clones share one writer thread and one
/// read pool.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// The write-behind queue to the writer thread.
    queue: mpsc::Sender<WriterMsg>,
    /// Synchronous writes (functions, recovery). SQLite serialises it with the writer
    /// thread's connection through the busy timeout; such writes are rare.
    admin: Mutex<Connection>,
    /// Idle read connections.
    readers: Mutex<Vec<Connection>>,
    /// The last call number handed out.
    last_call_num: AtomicI64,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

/// Answer to a waiter on the writer thread: `Err` carries the failure as text, since
/// one commit error may go to many waiters.
type Ack = oneshot::Sender<Result<(), String>>;

enum WriterMsg {
    /// Upsert a record; answer `ack`, if any, once its batch committed.
    Record {
        record: Box<CallRecord>,
        ack: Option<Ack>,
    },
    /// Answer once everything queued before it is committed.
    Flush(Ack),
    /// Stop accepting records, write what is queued, close, then answer.
    Close(oneshot::Sender<()>),
}

impl Store {
    /// Opens (or creates) the database at `path`, creating its parent directory,
    /// bringing the schema up to date and starting the writer thread.
    pub fn open(path: &Path) -> Result<Store> {
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating database directory {}", parent.display()))?;
        }
        let mut admin = open_connection(path)?;
        let journal_mode: String = admin
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .with_context(|| format!("enabling WAL on {}", path.display()))?;
        if !journal_mode.eq_ignore_ascii_case("wal") {
            bail!(
                "database {} does not support WAL (journal mode is {journal_mode})",
                path.display()
            );
        }
        migrate(&mut admin).with_context(|| format!("migrating database {}", path.display()))?;
        let last_call_num: i64 = admin
            .query_row("SELECT COALESCE(MAX(num), 0) FROM calls", [], |row| {
                row.get(0)
            })
            .context("reading the last call number")?;

        let writer = open_connection(path)?;
        let (queue, receiver) = mpsc::channel(QUEUE_CAPACITY);
        std::thread::Builder::new()
            .name("newt-store-writer".into())
            .spawn(move || run_writer(writer, receiver))
            .context("starting the store writer thread")?;

        Ok(Store {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                queue,
                admin: Mutex::new(admin),
                readers: Mutex::new(Vec::new()),
                last_call_num: AtomicI64::new(last_call_num),
            }),
        })
    }

    /// Adds a version of function `name` (creating the function if it is new or was
    /// deleted) and makes it the current one. Its number is one more than any version
    /// the name ever had. Blocking.
    pub fn add_version(
        &self,
        name: &str,
        runtime: &str,
        digest: &str,
        size: i64,
        config: &serde_json::Value,
        status: &str,
    ) -> Result<FunctionVersion> {
        let config_text = serde_json::to_string(config).context("encoding function config")?;
        let created_at = now_ms();
        let mut conn = self.inner.admin();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .context("starting a transaction to add a function version")?;
        let version: i64 = tx
            .query_row(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM function_versions WHERE name = ?1",
                [name],
                |row| row.get(0),
            )
            .with_context(|| format!("reading the last version of function {name}"))?;
        tx.execute(
            "INSERT INTO function_versions (name, version, runtime, digest, size, config, \
             status, status_message, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, ?8)",
            params![
                name,
                version,
                runtime,
                digest,
                size,
                config_text,
                status,
                created_at
            ],
        )
        .with_context(|| format!("inserting version {version} of function {name}"))?;
        tx.commit()
            .with_context(|| format!("committing version {version} of function {name}"))?;
        Ok(FunctionVersion {
            name: name.to_owned(),
            version,
            runtime: runtime.to_owned(),
            digest: digest.to_owned(),
            size,
            config: config.clone(),
            status: status.to_owned(),
            status_message: None,
            created_at,
        })
    }

    /// Sets the status (and message, cleared when `None`) of one version. Fails if the
    /// version does not exist. Blocking.
    #[allow(
        dead_code,
        reason = "container deploys turn pending versions ready or failed"
    )]
    pub fn set_version_status(
        &self,
        name: &str,
        version: i64,
        status: &str,
        message: Option<&str>,
    ) -> Result<()> {
        let changed = self
            .inner
            .admin()
            .execute(
                "UPDATE function_versions SET status = ?3, status_message = ?4 \
                 WHERE name = ?1 AND version = ?2",
                params![name, version, status, message],
            )
            .with_context(|| format!("setting the status of {name} version {version}"))?;
        if changed == 0 {
            bail!("function {name} has no version {version}");
        }
        Ok(())
    }

    /// Replaces the config (limits, policy overrides) of one version. Blocking.
    pub fn set_version_config(
        &self,
        name: &str,
        version: i64,
        config: &serde_json::Value,
    ) -> Result<()> {
        let changed = self
            .inner
            .admin()
            .execute(
                "UPDATE function_versions SET config = ?3 WHERE name = ?1 AND version = ?2",
                params![name, version, config.to_string()],
            )
            .with_context(|| format!("setting the config of {name} version {version}"))?;
        if changed == 0 {
            bail!("function {name} has no version {version}");
        }
        Ok(())
    }

    /// The current (newest) version of every live function, sorted by name. Blocking.
    pub fn current_versions(&self) -> Result<Vec<FunctionVersion>> {
        self.inner
            .read_blocking(|conn| {
                let sql = format!(
                    "SELECT {VERSION_COLUMNS} FROM function_versions AS v \
                 WHERE deleted_at IS NULL AND version = (SELECT MAX(version) \
                 FROM function_versions WHERE name = v.name AND deleted_at IS NULL) \
                 ORDER BY name"
                );
                let mut stmt = conn.prepare_cached(&sql)?;
                let rows = stmt.query_map([], version_from_row)?;
                Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
            })
            .context("listing current function versions")
    }

    /// All versions of live function `name` since it was last (re)created, newest
    /// first; empty if there is no such function. Blocking.
    pub fn versions(&self, name: &str) -> Result<Vec<FunctionVersion>> {
        self.inner
            .read_blocking(|conn| {
                let sql = format!(
                    "SELECT {VERSION_COLUMNS} FROM function_versions \
                     WHERE name = ?1 AND deleted_at IS NULL ORDER BY version DESC"
                );
                let mut stmt = conn.prepare_cached(&sql)?;
                let rows = stmt.query_map([name], version_from_row)?;
                Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
            })
            .with_context(|| format!("listing versions of function {name}"))
    }

    /// Saves a container runtime's definition under `name`, replacing an older one.
    /// Blocking.
    pub fn put_runtime(&self, name: &str, definition: &serde_json::Value) -> Result<()> {
        self.inner
            .admin()
            .execute(
                "INSERT INTO runtimes (name, definition, created_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT(name) DO UPDATE SET definition = excluded.definition",
                params![name, definition.to_string(), now_ms()],
            )
            .with_context(|| format!("saving runtime {name}"))?;
        Ok(())
    }

    /// Every saved runtime definition, by name. Blocking.
    pub fn runtimes(&self) -> Result<Vec<serde_json::Value>> {
        self.inner
            .read_blocking(|conn| {
                let mut stmt =
                    conn.prepare_cached("SELECT definition FROM runtimes ORDER BY name")?;
                let rows = stmt.query_map([], |row| row.get::<_, String>(0))?;
                let mut out = Vec::new();
                for text in rows {
                    out.push(serde_json::from_str(&text?)?);
                }
                Ok(out)
            })
            .context("listing runtimes")
    }

    /// Removes a saved runtime; `false` if there was none. Blocking.
    pub fn delete_runtime(&self, name: &str) -> Result<bool> {
        let changed = self
            .inner
            .admin()
            .execute("DELETE FROM runtimes WHERE name = ?1", [name])
            .with_context(|| format!("deleting runtime {name}"))?;
        Ok(changed > 0)
    }

    /// Deletes function `name`: its versions are hidden (their numbers stay taken) and
    /// its call records kept. Returns `false` if there was no such live function.
    /// Blocking.
    pub fn delete_function(&self, name: &str) -> Result<bool> {
        let changed = self
            .inner
            .admin()
            .execute(
                "UPDATE function_versions SET deleted_at = ?2 \
                 WHERE name = ?1 AND deleted_at IS NULL",
                params![name, now_ms()],
            )
            .with_context(|| format!("deleting function {name}"))?;
        Ok(changed > 0)
    }

    /// The next call number: strictly increasing, starting after the largest number
    /// recorded when the store was opened.
    pub fn next_call_num(&self) -> i64 {
        self.inner.last_call_num.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Queues `record` for writing (upsert by id) and returns without waiting for the
    /// disk. Waits only while the queue is full; never drops a record, except after
    /// [`Store::close`], when it logs a warning.
    pub async fn record_call(&self, record: CallRecord) {
        let msg = WriterMsg::Record {
            record: Box::new(record),
            ack: None,
        };
        if let Err(mpsc::error::SendError(msg)) = self.inner.queue.send(msg).await
            && let WriterMsg::Record { record, .. } = msg
        {
            tracing::warn!(call = %record.id, "call store is closed; call record dropped");
        }
    }

    /// Queues `record` like [`Store::record_call`] and waits until it is committed.
    pub async fn record_call_durable(&self, record: CallRecord) -> Result<()> {
        let id = record.id.clone();
        let (ack, committed) = oneshot::channel();
        let msg = WriterMsg::Record {
            record: Box::new(record),
            ack: Some(ack),
        };
        self.inner
            .queue
            .send(msg)
            .await
            .map_err(|_| anyhow!("recording call {id}: the call store is closed"))?;
        committed
            .await
            .map_err(|_| anyhow!("recording call {id}: the store writer stopped"))?
            .map_err(|message| anyhow!("recording call {id}: {message}"))
    }

    /// Waits until every record queued before this call is committed. Fails if the
    /// batch that held them failed to commit or the store is closed.
    pub async fn flush(&self) -> Result<()> {
        let (ack, committed) = oneshot::channel();
        self.inner
            .queue
            .send(WriterMsg::Flush(ack))
            .await
            .map_err(|_| anyhow!("flushing call records: the call store is closed"))?;
        committed
            .await
            .map_err(|_| anyhow!("flushing call records: the store writer stopped"))?
            .map_err(|message| anyhow!("flushing call records: {message}"))
    }

    /// The call with this id, after flushing so the caller sees its own writes.
    pub async fn get_call(&self, id: &str) -> Result<Option<CallRecord>> {
        self.flush().await?;
        let id = id.to_owned();
        let context = format!("reading call {id}");
        self.inner
            .read(move |conn| {
                let sql = format!("SELECT {CALL_COLUMNS} FROM calls WHERE id = ?1");
                Ok(conn
                    .prepare_cached(&sql)?
                    .query_row([&id], call_from_row)
                    .optional()?)
            })
            .await
            .context(context)
    }

    /// The call with this number, after flushing so the caller sees its own writes.
    pub async fn get_call_by_num(&self, num: i64) -> Result<Option<CallRecord>> {
        self.flush().await?;
        self.inner
            .read(move |conn| {
                let sql = format!("SELECT {CALL_COLUMNS} FROM calls WHERE num = ?1");
                Ok(conn
                    .prepare_cached(&sql)?
                    .query_row([num], call_from_row)
                    .optional()?)
            })
            .await
            .with_context(|| format!("reading call number {num}"))
    }

    /// Calls matching `filter`, newest (highest `num`) first, after flushing.
    pub async fn list_calls(&self, filter: CallFilter) -> Result<Vec<CallRecord>> {
        self.flush().await?;
        // Built per filter rather than `(?1 IS NULL OR ...)` so SQLite can use the
        // (function, num) index.
        let mut conditions = Vec::new();
        let mut values = Vec::new();
        if let Some(function) = filter.function {
            values.push(Value::Text(function));
            conditions.push(format!("function = ?{}", values.len()));
        }
        if let Some(status) = filter.status {
            values.push(Value::Text(status.as_str().to_owned()));
            conditions.push(format!("status = ?{}", values.len()));
        }
        if let Some(before) = filter.before_num {
            values.push(Value::Integer(before));
            conditions.push(format!("num < ?{}", values.len()));
        }
        let mut sql = format!("SELECT {CALL_COLUMNS} FROM calls");
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        sql.push_str(" ORDER BY num DESC");
        if filter.limit > 0 {
            values.push(Value::Integer(
                i64::try_from(filter.limit).unwrap_or(i64::MAX),
            ));
            sql.push_str(&format!(" LIMIT ?{}", values.len()));
        }
        self.inner
            .read(move |conn| {
                let mut stmt = conn.prepare_cached(&sql)?;
                let rows = stmt.query_map(rusqlite::params_from_iter(values), call_from_row)?;
                Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
            })
            .await
            .context("listing calls")
    }

    /// Repairs what a previous process left behind; call once at startup, before
    /// serving (it does not see records still in the queue). Calls left `running`, and
    /// synchronous calls left `pending`, become `failed` with error "host restarted";
    /// accepted async calls that never started are returned for re-running. Blocking.
    pub fn recover(&self) -> Result<Recovery> {
        let mut conn = self.inner.admin();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .context("starting the recovery transaction")?;
        let interrupted = tx
            .execute(
                "UPDATE calls SET status = ?1, error = 'host restarted', finished_at = ?2 \
                 WHERE status = ?3 OR (status = ?4 AND is_async = 0)",
                params![
                    CallStatus::Failed,
                    now_ms(),
                    CallStatus::Running,
                    CallStatus::Pending
                ],
            )
            .context("failing calls interrupted by the restart")?;
        let pending = {
            let sql = format!(
                "SELECT {CALL_COLUMNS} FROM calls WHERE status = ?1 AND is_async = 1 \
                 ORDER BY num"
            );
            let mut stmt = tx
                .prepare(&sql)
                .context("preparing the pending-call query")?;
            let rows = stmt
                .query_map([CallStatus::Pending], call_from_row)
                .context("reading pending async calls")?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .context("reading pending async calls")?
        };
        tx.commit().context("committing recovery")?;
        Ok(Recovery {
            interrupted,
            pending,
        })
    }

    /// Writes everything queued and stops the writer thread; for graceful shutdown.
    /// Later `record_call`s are dropped with a warning, later durable writes, flushes
    /// and reads of calls fail. Function reads and writes keep working.
    pub async fn close(&self) {
        let (ack, closed) = oneshot::channel();
        if self.inner.queue.send(WriterMsg::Close(ack)).await.is_ok() && closed.await.is_err() {
            tracing::error!("the store writer thread stopped before closing cleanly");
        }
    }
}

impl Inner {
    /// The synchronous-write connection. A panic while holding it cannot leave a
    /// transaction open (rusqlite rolls back on drop), so a poisoned lock is usable.
    fn admin(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.admin.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on a pooled read connection on the blocking thread pool.
    async fn read<T, F>(self: &Arc<Self>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let inner = Arc::clone(self);
        tokio::task::spawn_blocking(move || inner.read_blocking(f))
            .await
            .context("store read task failed")?
    }

    /// Runs `f` on a pooled read connection on this thread.
    fn read_blocking<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let pooled = self
            .readers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let conn = match pooled {
            Some(conn) => conn,
            None => {
                let conn = open_connection(&self.path)?;
                // Guards against a read path ever writing behind the queue's back.
                conn.pragma_update(None, "query_only", true)
                    .context("making a read connection read-only")?;
                conn
            }
        };
        let result = f(&conn);
        let mut idle = self.readers.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
        result
    }
}

/// Opens a connection with the settings every connection needs.
fn open_connection(path: &Path) -> Result<Connection> {
    let conn =
        Connection::open(path).with_context(|| format!("opening database {}", path.display()))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .context("setting the busy timeout")?;
    // NORMAL is durable against process crashes in WAL mode; only an OS crash or power
    // loss can lose the last commits, which is the usual trade for a local service.
    conn.pragma_update(None, "synchronous", "NORMAL")
        .context("setting synchronous=NORMAL")?;
    conn.pragma_update(None, "foreign_keys", true)
        .context("enabling foreign keys")?;
    Ok(conn)
}

/// Applies the migrations this database has not seen yet, each in its own transaction.
fn migrate(conn: &mut Connection) -> Result<()> {
    for (index, sql) in MIGRATIONS.iter().enumerate() {
        let target = i64::try_from(index + 1).context("too many migrations")?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Read inside the transaction: another process may have migrated meanwhile.
        let current: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
        let known = i64::try_from(MIGRATIONS.len()).context("too many migrations")?;
        if current > known {
            bail!("database schema version {current} is newer than this newt knows ({known})");
        }
        if current >= target {
            continue;
        }
        tx.execute_batch(sql)
            .with_context(|| format!("applying schema migration {target}"))?;
        tx.pragma_update(None, "user_version", target)?;
        tx.commit()
            .with_context(|| format!("committing schema migration {target}"))?;
    }
    Ok(())
}

/// The writer thread: commits queued records in batches until the queue closes.
/// How long a batch of write-behind records may wait for company before its commit.
const LINGER: std::time::Duration = std::time::Duration::from_millis(2);

fn run_writer(mut conn: Connection, mut queue: mpsc::Receiver<WriterMsg>) {
    let mut close_acks = Vec::new();
    while let Some(first) = queue.blocking_recv() {
        let mut records: Vec<(Box<CallRecord>, Option<Ack>)> = Vec::new();
        let mut flushes = Vec::new();
        let mut lingered = false;
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                WriterMsg::Record { record, ack } => records.push((record, ack)),
                WriterMsg::Flush(ack) => flushes.push(ack),
                WriterMsg::Close(ack) => {
                    close_acks.push(ack);
                    // Refuse new messages; those already queued are still written, and
                    // the loop ends once they are drained.
                    queue.close();
                }
            }
            if records.len() < MAX_BATCH {
                next = queue.try_recv().ok();
                // Nobody waits on a batch of plain write-behind records: give it a
                // moment to grow, so a busy host commits many calls per transaction
                // (one WAL write each) instead of one or two per call.
                if next.is_none()
                    && !lingered
                    && flushes.is_empty()
                    && close_acks.is_empty()
                    && records.iter().all(|(_, ack)| ack.is_none())
                {
                    lingered = true;
                    std::thread::sleep(LINGER);
                    next = queue.try_recv().ok();
                }
            }
        }

        let outcome = if records.is_empty() {
            Ok(Vec::new())
        } else {
            let batch: Vec<&CallRecord> = records.iter().map(|(record, _)| &**record).collect();
            write_batch(&mut conn, &batch)
        };
        match outcome {
            Ok(failures) => {
                for ((_, ack), failure) in records.into_iter().zip(failures) {
                    if let Some(ack) = ack {
                        let _ = ack.send(failure.map_or(Ok(()), Err));
                    }
                }
                for ack in flushes {
                    let _ = ack.send(Ok(()));
                }
            }
            Err(err) => {
                // The records are lost; say so loudly and tell whoever waits. Keep
                // running: the next batch may well succeed (e.g. disk space freed).
                tracing::error!(
                    error = %err,
                    records = records.len(),
                    "committing a batch of call records failed; records lost"
                );
                let message = format!("committing call records failed: {err}");
                let acks = records.into_iter().filter_map(|(_, ack)| ack);
                for ack in acks.chain(flushes) {
                    let _ = ack.send(Err(message.clone()));
                }
            }
        }
    }
    drop(conn);
    for ack in close_acks {
        let _ = ack.send(());
    }
}

/// Upserts `records` in one transaction. A record that fails on its own (e.g. a
/// duplicate `num`) is skipped and reported in the returned list, one entry per record.
///
/// Each record is a whole row, so only the last record of a call in the batch is
/// written: a call that starts and finishes within one batch (most sync calls) costs
/// one row write instead of two. Records it superseded share its result.
fn write_batch(
    conn: &mut Connection,
    records: &[&CallRecord],
) -> rusqlite::Result<Vec<Option<String>>> {
    let last: HashMap<&str, usize> = records
        .iter()
        .enumerate()
        .map(|(i, record)| (record.id.as_str(), i))
        .collect();
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut failures = vec![None; records.len()];
    {
        let mut upsert = tx.prepare_cached(UPSERT_CALL)?;
        for (i, record) in records.iter().enumerate() {
            if last[record.id.as_str()] != i {
                continue;
            }
            let result = upsert.execute(params![
                record.id,
                record.num,
                record.function,
                record.version,
                record.status,
                record.is_async,
                record.input,
                record.output,
                record.error,
                record.logs,
                record.start,
                record.queue_us,
                record.init_us,
                record.exec_us,
                record.created_at,
                record.started_at,
                record.finished_at,
            ]);
            if let Err(err) = result {
                tracing::error!(call = %record.id, num = record.num, error = %err,
                    "writing call record failed; record skipped");
                failures[i] = Some(err.to_string());
            }
        }
    }
    tx.commit()?;
    for (i, record) in records.iter().enumerate() {
        failures[i] = failures[last[record.id.as_str()]].clone();
    }
    Ok(failures)
}

fn call_from_row(row: &Row<'_>) -> rusqlite::Result<CallRecord> {
    Ok(CallRecord {
        id: row.get(0)?,
        num: row.get(1)?,
        function: row.get(2)?,
        version: row.get(3)?,
        status: row.get(4)?,
        is_async: row.get(5)?,
        input: row.get(6)?,
        output: row.get(7)?,
        error: row.get(8)?,
        logs: row.get(9)?,
        start: row.get(10)?,
        queue_us: row.get(11)?,
        init_us: row.get(12)?,
        exec_us: row.get(13)?,
        created_at: row.get(14)?,
        started_at: row.get(15)?,
        finished_at: row.get(16)?,
    })
}

fn version_from_row(row: &Row<'_>) -> rusqlite::Result<FunctionVersion> {
    let config: String = row.get(5)?;
    Ok(FunctionVersion {
        name: row.get(0)?,
        version: row.get(1)?,
        runtime: row.get(2)?,
        digest: row.get(3)?,
        size: row.get(4)?,
        config: serde_json::from_str(&config).map_err(|err| {
            rusqlite::Error::FromSqlConversionFailure(5, rusqlite::types::Type::Text, err.into())
        })?,
        status: row.get(6)?,
        status_message: row.get(7)?,
        created_at: row.get(8)?,
    })
}

/// Current time in unix milliseconds (0 if the clock is before 1970).
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn call(num: i64, function: &str, status: CallStatus, is_async: bool) -> CallRecord {
        CallRecord {
            id: uuid::Uuid::now_v7().to_string(),
            num,
            function: function.to_owned(),
            version: 1,
            status,
            is_async,
            input: format!("input {num}").into_bytes(),
            output: None,
            error: None,
            logs: Vec::new(),
            start: None,
            queue_us: None,
            init_us: None,
            exec_us: None,
            created_at: 1_700_000_000_000 + num,
            started_at: None,
            finished_at: None,
        }
    }

    fn open_temp() -> (tempfile::TempDir, PathBuf, Store) {
        let dir = tempfile::tempdir().unwrap();
        // A missing parent directory must be created by `open`.
        let path = dir.path().join("home").join("newt.db");
        let store = Store::open(&path).unwrap();
        (dir, path, store)
    }

    fn nums(calls: &[CallRecord]) -> Vec<i64> {
        calls.iter().map(|call| call.num).collect()
    }

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

    #[tokio::test]
    async fn versions_increase_and_delete_hides_function_but_keeps_calls() {
        let (_dir, _path, store) = open_temp();
        let config = json!({"memory_mb": 64});
        let v1 = store
            .add_version("hello", "wasm", "aa", 10, &config, "ready")
            .unwrap();
        let v2 = store
            .add_version("hello", "wasm", "bb", 20, &json!({}), "pending")
            .unwrap();
        store
            .add_version("dice", "wasm", "cc", 30, &config, "ready")
            .unwrap();
        assert_eq!((v1.version, v2.version), (1, 2));
        store
            .set_version_status("hello", 2, "failed", Some("bad module"))
            .unwrap();
        assert!(store.set_version_status("hello", 9, "ready", None).is_err());

        let current = store.current_versions().unwrap();
        let summary: Vec<_> = current
            .iter()
            .map(|v| (v.name.as_str(), v.version, v.status.as_str()))
            .collect();
        assert_eq!(summary, [("dice", 1, "ready"), ("hello", 2, "failed")]);
        assert_eq!(current[1].status_message.as_deref(), Some("bad module"));
        let versions = store.versions("hello").unwrap();
        assert_eq!(versions[1], v1, "stored version reads back unchanged");
        assert_eq!(
            versions.iter().map(|v| v.version).collect::<Vec<_>>(),
            [2, 1]
        );

        let record = call(store.next_call_num(), "hello", CallStatus::Done, false);
        store.record_call_durable(record.clone()).await.unwrap();

        assert!(store.delete_function("hello").unwrap());
        assert!(!store.delete_function("hello").unwrap());
        assert!(!store.delete_function("nobody").unwrap());
        let names: Vec<_> = store
            .current_versions()
            .unwrap()
            .into_iter()
            .map(|v| v.name)
            .collect();
        assert_eq!(names, ["dice"]);
        assert!(store.versions("hello").unwrap().is_empty());
        assert_eq!(store.get_call(&record.id).await.unwrap(), Some(record));

        let v3 = store
            .add_version("hello", "wasm", "dd", 40, &config, "ready")
            .unwrap();
        assert_eq!(
            v3.version, 3,
            "redeploy continues after the deleted versions"
        );
        assert_eq!(store.versions("hello").unwrap(), [v3]);
    }

    #[tokio::test]
    async fn write_behind_records_are_visible_after_flush_and_upserts_replace() {
        let (_dir, _path, store) = open_temp();
        let mut records = Vec::new();
        for _ in 0..1000 {
            let record = call(store.next_call_num(), "hello", CallStatus::Running, false);
            store.record_call(record.clone()).await;
            records.push(record);
        }
        let last = records.last().unwrap().clone();
        assert_eq!(store.get_call(&last.id).await.unwrap(), Some(last.clone()));
        let all = store.list_calls(CallFilter::default()).await.unwrap();
        assert_eq!(all.len(), 1000);
        assert_eq!(all[0], last, "newest first");
        assert_eq!(all[999], records[0]);

        let mut finished = records[10].clone();
        finished.status = CallStatus::Done;
        finished.output = Some(b"42".to_vec());
        finished.logs = b"log line\n".to_vec();
        finished.start = Some("warm".into());
        finished.exec_us = Some(17);
        finished.finished_at = Some(finished.created_at + 5);
        store.record_call(finished.clone()).await;
        assert_eq!(
            store.get_call_by_num(finished.num).await.unwrap(),
            Some(finished)
        );
        assert_eq!(
            store.list_calls(CallFilter::default()).await.unwrap().len(),
            1000
        );
        assert_eq!(store.get_call("no-such-id").await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_failing_record_is_skipped_without_losing_its_batch() {
        let (_dir, path, store) = open_temp();
        let first = call(1, "hello", CallStatus::Done, false);
        // Same num, different id: violates the unique num index.
        let clash = call(1, "hello", CallStatus::Done, false);
        let after = call(2, "hello", CallStatus::Done, false);
        // Drive one batch directly, so all three are surely in the same transaction.
        let mut conn = open_connection(&path).unwrap();
        let failures = write_batch(&mut conn, &[&first, &clash, &after]).unwrap();
        assert!(
            failures[0].is_none() && failures[2].is_none(),
            "{failures:?}"
        );
        assert!(
            failures[1].as_deref().unwrap().contains("UNIQUE"),
            "{failures:?}"
        );
        assert_eq!(store.get_call(&clash.id).await.unwrap(), None);
        assert_eq!(store.get_call(&first.id).await.unwrap(), Some(first));
        assert_eq!(store.get_call(&after.id).await.unwrap(), Some(after));

        // Through the queue, the durable writer hears about its own failure.
        let err = store.record_call_durable(clash.clone()).await.unwrap_err();
        assert!(err.to_string().contains(&clash.id), "{err}");
        store.flush().await.unwrap();
    }

    #[tokio::test]
    async fn a_batch_writes_the_last_record_of_each_call() {
        let (_dir, path, store) = open_temp();
        let mut running = call(1, "hello", CallStatus::Running, false);
        running.output = None;
        let mut done = running.clone();
        done.status = CallStatus::Done;
        done.output = Some(b"42".to_vec());
        let other = call(2, "hello", CallStatus::Running, false);
        let mut conn = open_connection(&path).unwrap();
        let failures = write_batch(&mut conn, &[&running, &other, &done]).unwrap();
        assert_eq!(failures, vec![None, None, None]);
        assert_eq!(store.get_call(&done.id).await.unwrap(), Some(done.clone()));
        assert_eq!(store.get_call(&other.id).await.unwrap(), Some(other));

        // A superseded record shares the failure of the record that replaced it.
        let mut clash = done.clone();
        clash.num = 2; // taken by `other`
        let failures = write_batch(&mut conn, &[&done, &clash]).unwrap();
        assert!(
            failures
                .iter()
                .all(|f| f.as_deref().is_some_and(|e| e.contains("UNIQUE")))
        );
        assert_eq!(store.get_call(&done.id).await.unwrap(), Some(done));
    }

    #[tokio::test]
    async fn durable_record_survives_a_crash() {
        let (_dir, path, store) = open_temp();
        let record = call(store.next_call_num(), "hello", CallStatus::Pending, true);
        store.record_call_durable(record.clone()).await.unwrap();
        // Simulate a crash: the writer thread keeps its queue open and never drains or
        // commits anything more, so only what was committed before is on disk.
        std::mem::forget(store);

        let reopened = Store::open(&path).unwrap();
        assert_eq!(reopened.get_call(&record.id).await.unwrap(), Some(record));
    }

    #[tokio::test]
    async fn recover_fails_interrupted_calls_and_returns_pending_async_ones() {
        let (_dir, path, store) = open_temp();
        let running = call(1, "hello", CallStatus::Running, false);
        let pending_old = call(2, "hello", CallStatus::Pending, true);
        let mut done = call(3, "hello", CallStatus::Done, false);
        done.output = Some(b"ok".to_vec());
        done.finished_at = Some(done.created_at + 1);
        let pending_sync = call(4, "hello", CallStatus::Pending, false);
        let pending_new = call(5, "dice", CallStatus::Pending, true);
        for record in [&pending_new, &running, &pending_old, &done, &pending_sync] {
            store.record_call(record.clone()).await;
        }
        store.close().await;
        assert!(store.flush().await.is_err(), "closed store refuses flushes");

        let store = Store::open(&path).unwrap();
        let recovery = store.recover().unwrap();
        assert_eq!(recovery.interrupted, 2);
        assert_eq!(recovery.pending, [pending_old, pending_new]);

        for interrupted in [&running, &pending_sync] {
            let after = store.get_call(&interrupted.id).await.unwrap().unwrap();
            assert_eq!(after.status, CallStatus::Failed);
            assert_eq!(after.error.as_deref(), Some("host restarted"));
            assert!(after.finished_at.is_some());
        }
        assert_eq!(store.get_call(&done.id).await.unwrap(), Some(done));
        assert_eq!(
            store.recover().unwrap(),
            Recovery {
                interrupted: 0,
                pending: recovery.pending,
            },
            "recovery is idempotent"
        );
    }

    #[tokio::test]
    async fn call_numbers_keep_increasing_across_reopen() {
        let (_dir, path, store) = open_temp();
        assert_eq!(store.next_call_num(), 1);
        assert_eq!(store.next_call_num(), 2);
        let num = store.next_call_num();
        store
            .record_call(call(num, "hello", CallStatus::Done, false))
            .await;
        store.close().await;

        let store = Store::open(&path).unwrap();
        let next = store.next_call_num();
        assert!(next > num, "{next} should be above {num}");
        assert!(store.next_call_num() > next);
    }

    #[tokio::test]
    async fn list_calls_filters_limits_and_pages() {
        let (_dir, _path, store) = open_temp();
        let statuses = [CallStatus::Done, CallStatus::Failed];
        for num in 1..=10 {
            let function = if num % 2 == 0 { "even" } else { "odd" };
            let status = statuses[usize::from(num > 5)];
            store.record_call(call(num, function, status, false)).await;
        }
        let list = |function: Option<&str>, status, limit, before_num| {
            let filter = CallFilter {
                function: function.map(str::to_owned),
                status,
                limit,
                before_num,
            };
            let store = store.clone();
            async move { nums(&store.list_calls(filter).await.unwrap()) }
        };
        assert_eq!(list(Some("even"), None, 0, None).await, [10, 8, 6, 4, 2]);
        assert_eq!(
            list(None, Some(CallStatus::Failed), 0, None).await,
            [10, 9, 8, 7, 6]
        );
        assert_eq!(list(None, None, 3, None).await, [10, 9, 8]);
        assert_eq!(list(None, None, 3, Some(8)).await, [7, 6, 5]);
        assert_eq!(
            list(Some("odd"), Some(CallStatus::Done), 2, Some(5)).await,
            [3, 1]
        );
        assert!(list(Some("nobody"), None, 0, None).await.is_empty());
    }
    #[tokio::test]
    async fn runtimes_are_saved_replaced_listed_and_deleted_across_reopen() {
        let (_dir, path, store) = open_temp();
        let first = serde_json::json!({"name": "py", "image": "a", "run": "python3 x.py"});
        let second = serde_json::json!({"name": "py", "image": "b", "run": "python3 x.py"});
        store.put_runtime("py", &first).unwrap();
        store.put_runtime("py", &second).unwrap();
        store
            .put_runtime("alpha", &serde_json::json!({"name": "alpha"}))
            .unwrap();
        store.close().await;

        let store = Store::open(&path).unwrap();
        let all = store.runtimes().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0]["name"], "alpha");
        assert_eq!(all[1]["image"], "b");
        assert!(store.delete_runtime("py").unwrap());
        assert!(!store.delete_runtime("py").unwrap());
        assert_eq!(store.runtimes().unwrap().len(), 1);
    }
}

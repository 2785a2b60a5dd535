//! [`SqliteStore`]: the store in one SQLite database (WAL mode), with its connections:
//! one for function, runtime and recovery writes, a pool for reads, and the writer
//! thread's for call records.
//!
//! Function and runtime writes are rare and must be durable, so they commit before
//! they return, on the blocking thread pool. Call records go through the write-behind
//! queue of [`writer`]. Reads use separate connections, which WAL lets run beside the
//! writer; reads of calls flush the queue first so a caller sees its own writes.

mod aliases;
mod calls;
mod retention;
mod routes;
mod runtimes;
mod schema;
mod versions;
mod writer;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use rusqlite::Connection;

use super::{
    CallFilter, CallRecord, FunctionVersion, Recovery, SealedSecrets, Store, StoredAlias,
    StoredRoute, VersionStatus,
};
use super::{CallRetention, PrunableCalls, StoreCounts, VersionRef};
use writer::Writer;
pub(crate) use writer::is_sqlite_full;

/// Idle read connections kept open; more are opened on demand and closed after use.
const MAX_IDLE_READERS: usize = 4;

/// How long a connection waits for another one's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The store over a SQLite database. Cheap to clone; all clones share one writer
/// thread and one read pool.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// The write-behind queue to the writer thread.
    writer: Writer,
    /// Synchronous writes (functions, runtimes, recovery). SQLite serialises it with
    /// the writer thread's connection through the busy timeout; such writes are rare.
    admin: Mutex<Connection>,
    /// Idle read connections.
    readers: Mutex<Vec<Connection>>,
    /// The last call number handed out.
    last_call_num: AtomicI64,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (or creates) the database at `path`, creating its parent directory,
    /// bringing the schema up to date and starting the writer thread.
    pub fn open(path: &Path) -> Result<SqliteStore> {
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
        schema::migrate(&mut admin)
            .with_context(|| format!("migrating database {}", path.display()))?;
        let last_call_num = calls::last_num(&admin).context("reading the last call number")?;
        let writer = Writer::start(open_connection(path)?)?;

        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                writer,
                admin: Mutex::new(admin),
                readers: Mutex::new(Vec::new()),
                last_call_num: AtomicI64::new(last_call_num),
            }),
        })
    }

    /// Runs `f` on the synchronous-write connection on the blocking thread pool.
    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&mut inner.admin()))
            .await
            .context("store write task failed")?
    }

    /// Runs `f` on a pooled read connection on the blocking thread pool.
    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.read_blocking(f))
            .await
            .context("store read task failed")?
    }
}

impl Inner {
    /// The synchronous-write connection. A panic while holding it cannot leave a
    /// transaction open (rusqlite rolls back on drop), so a poisoned lock is usable.
    fn admin(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.admin.lock().unwrap_or_else(PoisonError::into_inner)
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

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn add_version(
        &self,
        name: &str,
        runtime: &str,
        digest: &str,
        size: i64,
        config: &serde_json::Value,
        secrets: &SealedSecrets,
        status: VersionStatus,
    ) -> Result<FunctionVersion> {
        let new = versions::NewVersion {
            name: name.to_owned(),
            runtime: runtime.to_owned(),
            digest: digest.to_owned(),
            size,
            config: config.clone(),
            secrets: secrets.clone(),
            status,
        };
        self.write(move |conn| versions::add(conn, new)).await
    }

    async fn set_version_status(
        &self,
        name: &str,
        version: i64,
        status: VersionStatus,
        message: Option<&str>,
    ) -> Result<()> {
        let (name, message) = (name.to_owned(), message.map(str::to_owned));
        self.write(move |conn| {
            versions::set_status(conn, &name, version, status, message.as_deref())
        })
        .await
    }

    async fn set_version_config(
        &self,
        name: &str,
        version: i64,
        config: &serde_json::Value,
    ) -> Result<()> {
        let (name, config) = (name.to_owned(), config.clone());
        self.write(move |conn| versions::set_config(conn, &name, version, &config))
            .await
    }

    async fn current_versions(&self) -> Result<Vec<FunctionVersion>> {
        self.read(versions::current).await
    }

    async fn versions(&self, name: &str) -> Result<Vec<FunctionVersion>> {
        let name = name.to_owned();
        self.read(move |conn| versions::of_function(conn, &name))
            .await
    }

    async fn delete_function(&self, name: &str) -> Result<bool> {
        let name = name.to_owned();
        // One transaction: a function's aliases and rollbacks never outlive it.
        self.write(move |conn| {
            let tx = conn.transaction()?;
            let existed = versions::delete_function(&tx, &name)?;
            aliases::delete_function(&tx, &name)?;
            tx.commit()
                .with_context(|| format!("committing the delete of function {name}"))?;
            Ok(existed)
        })
        .await
    }

    async fn put_runtime(&self, name: &str, definition: &serde_json::Value) -> Result<()> {
        let (name, definition) = (name.to_owned(), definition.clone());
        self.write(move |conn| runtimes::put(conn, &name, &definition))
            .await
    }

    async fn runtimes(&self) -> Result<Vec<serde_json::Value>> {
        self.read(runtimes::all).await
    }

    async fn delete_runtime(&self, name: &str) -> Result<bool> {
        let name = name.to_owned();
        self.write(move |conn| runtimes::delete(conn, &name)).await
    }

    async fn put_route(&self, route: &StoredRoute) -> Result<bool> {
        let route = route.clone();
        self.write(move |conn| routes::put(conn, &route)).await
    }

    async fn routes(&self) -> Result<Vec<StoredRoute>> {
        self.read(routes::all).await
    }

    async fn delete_route(&self, path: &str) -> Result<bool> {
        let path = path.to_owned();
        self.write(move |conn| routes::delete(conn, &path)).await
    }

    async fn put_alias(&self, alias: &StoredAlias) -> Result<bool> {
        let alias = alias.clone();
        self.write(move |conn| aliases::put(conn, &alias)).await
    }

    async fn aliases(&self) -> Result<Vec<StoredAlias>> {
        self.read(aliases::all).await
    }

    async fn delete_alias(&self, function: &str, alias: &str) -> Result<bool> {
        let (function, alias) = (function.to_owned(), alias.to_owned());
        self.write(move |conn| aliases::delete(conn, &function, &alias))
            .await
    }

    async fn rolled_back(&self) -> Result<Vec<(String, i64)>> {
        self.read(aliases::rolled_back).await
    }

    async fn roll_back(&self, function: &str, version: i64, set_aside: &[i64]) -> Result<()> {
        let (function, set_aside) = (function.to_owned(), set_aside.to_vec());
        self.write(move |conn| aliases::roll_back(conn, &function, version, &set_aside))
            .await
    }

    fn next_call_num(&self) -> i64 {
        self.inner.last_call_num.fetch_add(1, Ordering::Relaxed) + 1
    }

    async fn record_call(&self, record: CallRecord) {
        self.inner.writer.record(record).await;
    }

    async fn record_call_durable(&self, record: CallRecord) -> Result<()> {
        self.inner.writer.record_durable(record).await
    }

    async fn flush(&self) -> Result<()> {
        self.inner.writer.flush().await
    }

    fn records_lost(&self) -> u64 {
        self.inner.writer.records_lost()
    }

    async fn get_call(&self, id: &str) -> Result<Option<CallRecord>> {
        self.flush().await?;
        let id = id.to_owned();
        self.read(move |conn| calls::by_id(conn, &id)).await
    }

    async fn get_call_by_num(&self, num: i64) -> Result<Option<CallRecord>> {
        self.flush().await?;
        self.read(move |conn| calls::by_num(conn, num)).await
    }

    async fn list_calls(&self, filter: CallFilter) -> Result<Vec<CallRecord>> {
        self.flush().await?;
        self.read(move |conn| calls::list(conn, filter)).await
    }

    async fn recover(&self) -> Result<Recovery> {
        self.write(calls::recover).await
    }

    async fn referenced_versions(&self, keep_ready: usize) -> Result<Vec<VersionRef>> {
        self.read(move |conn| retention::referenced(conn, keep_ready))
            .await
    }

    async fn all_versions(&self) -> Result<Vec<VersionRef>> {
        self.read(retention::all).await
    }

    async fn prunable_calls(&self, rule: &CallRetention) -> Result<PrunableCalls> {
        self.flush().await?;
        let rule = rule.clone();
        self.read(move |conn| retention::prunable(conn, &rule))
            .await
    }

    async fn prune_calls(&self, rule: &CallRetention, batch: usize) -> Result<PrunableCalls> {
        let rule = rule.clone();
        self.inner
            .writer
            .run(move |conn| retention::prune_batch(conn, &rule, batch))
            .await
    }

    async fn counts(&self) -> Result<StoreCounts> {
        self.flush().await?;
        self.read(retention::counts).await
    }

    async fn close(&self) {
        self.inner.writer.close().await;
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

/// Current time in unix milliseconds (0 if the clock is before 1970).
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

/// What the tests of every part of the store start from.
#[cfg(test)]
mod testing {
    use super::*;
    use crate::store::CallStatus;

    /// A call record with made-up but distinct contents.
    pub(super) fn call(num: i64, function: &str, status: CallStatus, is_async: bool) -> CallRecord {
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
            caller: None,
            attempts: 1,
        }
    }

    /// A new store in a temporary directory, with the database's path.
    pub(super) fn open_temp() -> (tempfile::TempDir, PathBuf, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        // A missing parent directory must be created by `open`.
        let path = dir.path().join("home").join("newt.db");
        let store = SqliteStore::open(&path).unwrap();
        (dir, path, store)
    }

    /// The numbers of `calls`, in order.
    pub(super) fn nums(calls: &[CallRecord]) -> Vec<i64> {
        calls.iter().map(|call| call.num).collect()
    }
}

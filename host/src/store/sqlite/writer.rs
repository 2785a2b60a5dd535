//! The write-behind queue for call records: one writer thread owns a connection and
//! commits whatever has queued up in a single transaction.
//!
//! An HTTP response therefore never waits on an fsync, and a burst of calls costs one
//! commit per batch instead of one per call. Durable writes (accepting an async call)
//! go through the same queue, so they stay ordered with later updates of that call,
//! and wait for their batch to commit.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use super::calls;
use crate::store::CallRecord;

/// Records the write-behind queue holds before `record` waits (backpressure: a slow
/// disk slows callers down rather than dropping records or growing memory).
const QUEUE_CAPACITY: usize = 16 * 1024;

/// Bytes of records (input, output, logs, error) the queue holds before `record`
/// waits: the count above alone would let 16 384 records of megabytes each pile up.
const QUEUE_BYTES: usize = 64 << 20;

/// The unit the byte budget is counted in (a semaphore counts permits, not bytes).
const BUDGET_UNIT: usize = 1024;

/// How long accepting an async call waits for room in the queue before it is refused
/// (the caller gets 503 and retries), rather than holding its connection open.
const DURABLE_WAIT: Duration = Duration::from_secs(2);

/// Most records committed in one transaction, so one batch never holds the write lock
/// for long and durable waiters in a burst are answered in bounded time.
const MAX_BATCH: usize = 512;

/// How long a batch of write-behind records may wait for company before its commit.
const LINGER: Duration = Duration::from_millis(5);

/// Answer to a waiter on the writer thread: one commit error may go to many waiters,
/// so each gets a [`Failure`] rather than the error itself.
type Ack = oneshot::Sender<Result<(), Failure>>;

/// A failed write as a waiter receives it: the message, and SQLite's error code when
/// SQLite said why, so a full disk (`SQLITE_FULL`) is still told apart from the rest
/// once it reaches the HTTP layer (507 rather than 500 or 503).
#[derive(Clone, Debug)]
struct Failure {
    code: Option<rusqlite::ffi::Error>,
    message: String,
}

impl Failure {
    fn of(err: &rusqlite::Error) -> Failure {
        Failure {
            code: match err {
                rusqlite::Error::SqliteFailure(code, _) => Some(*code),
                _ => None,
            },
            message: err.to_string(),
        }
    }

    /// The failure as an error whose chain holds SQLite's error, if it had one.
    fn into_error(self) -> anyhow::Error {
        match self.code {
            Some(code) => rusqlite::Error::SqliteFailure(code, Some(self.message)).into(),
            None => anyhow!(self.message),
        }
    }
}

/// Whether `error` is SQLite saying the disk (or the filesystem's quota) is full:
/// `SQLITE_FULL`, or `SQLITE_IOERR_SHMSIZE`, which is how a full disk shows when the
/// WAL index (`newt.db-shm`) cannot grow.
pub(crate) fn is_sqlite_full(error: &(dyn std::error::Error + 'static)) -> bool {
    match error.downcast_ref::<rusqlite::Error>() {
        Some(rusqlite::Error::SqliteFailure(code, _)) => {
            code.code == rusqlite::ErrorCode::DiskFull
                || code.extended_code == rusqlite::ffi::SQLITE_IOERR_SHMSIZE
        }
        _ => false,
    }
}

enum WriterMsg {
    /// Upsert a record; answer `ack`, if any, once its batch committed.
    Record {
        record: Box<CallRecord>,
        ack: Option<Ack>,
        /// The record's share of the byte budget, given back once it is written.
        _room: OwnedSemaphorePermit,
    },
    /// Answer once everything queued before it is committed.
    Flush(Ack),
    /// Stop accepting records, write what is queued, close, then answer.
    Close(oneshot::Sender<()>),
    /// Run a short maintenance step (retention's deletes) on the writer's connection,
    /// after the records queued before it are written, so it never races them for
    /// SQLite's write lock and calls never wait on it.
    Task(Box<dyn FnOnce(&mut Connection) + Send>),
}

/// The sending end of the queue; the writer thread stops when it is closed.
pub(super) struct Writer {
    queue: mpsc::Sender<WriterMsg>,
    room: Arc<Semaphore>,
    /// Records whose write failed (see [`Writer::records_lost`]).
    lost: Arc<AtomicU64>,
}

/// A record's share of the queue's byte budget, in [`BUDGET_UNIT`]s.
fn units_of(record: &CallRecord) -> u32 {
    let bytes = record.input.len()
        + record.output.as_ref().map_or(0, Vec::len)
        + record.logs.len()
        + record.error.as_ref().map_or(0, String::len)
        + 512;
    // A record larger than the whole budget waits for an empty queue.
    (bytes.div_ceil(BUDGET_UNIT)).min(QUEUE_BYTES / BUDGET_UNIT) as u32
}

impl Writer {
    /// Starts the writer thread on `conn`.
    pub(super) fn start(conn: Connection) -> Result<Writer> {
        let (queue, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let lost = Arc::new(AtomicU64::new(0));
        let counted = lost.clone();
        std::thread::Builder::new()
            .name("newt-store-writer".into())
            .spawn(move || run_writer(conn, receiver, &counted))
            .context("starting the store writer thread")?;
        Ok(Writer {
            queue,
            room: Arc::new(Semaphore::new(QUEUE_BYTES / BUDGET_UNIT)),
            lost,
        })
    }

    /// How many queued records were not written since the start: their batch could
    /// not commit (a full disk, an I/O error) or the record was refused on its own.
    /// The calls themselves ran and answered; their records are missing or stale.
    pub(super) fn records_lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// Room in the queue for `record`, waiting while the queue is full (back-pressure
    /// by bytes). `None` once the store is closed.
    async fn room_for(&self, record: &CallRecord) -> Option<OwnedSemaphorePermit> {
        self.room
            .clone()
            .acquire_many_owned(units_of(record))
            .await
            .ok()
    }

    /// Queues `record` without waiting for the disk; drops it with a warning once
    /// the queue is closed.
    pub(super) async fn record(&self, record: CallRecord) {
        let Some(room) = self.room_for(&record).await else {
            tracing::warn!(call = %record.id, "call store is closed; call record dropped");
            return;
        };
        let msg = WriterMsg::Record {
            record: Box::new(record),
            ack: None,
            _room: room,
        };
        if let Err(mpsc::error::SendError(msg)) = self.queue.send(msg).await
            && let WriterMsg::Record { record, .. } = msg
        {
            tracing::warn!(call = %record.id, "call store is closed; call record dropped");
        }
    }

    /// Queues `record` and waits until it is committed.
    pub(super) async fn record_durable(&self, record: CallRecord) -> Result<()> {
        let id = record.id.clone();
        let room = tokio::time::timeout(DURABLE_WAIT, self.room_for(&record))
            .await
            .map_err(|_| {
                anyhow!(
                    "recording call {id}: the call store's queue is full (the disk is \
                     slower than the calls): retry shortly"
                )
            })?
            .ok_or_else(|| anyhow!("recording call {id}: the call store is closed"))?;
        let (ack, committed) = oneshot::channel();
        let msg = WriterMsg::Record {
            record: Box::new(record),
            ack: Some(ack),
            _room: room,
        };
        self.queue
            .send(msg)
            .await
            .map_err(|_| anyhow!("recording call {id}: the call store is closed"))?;
        committed
            .await
            .map_err(|_| anyhow!("recording call {id}: the store writer stopped"))?
            .map_err(|failure| failure.into_error().context(format!("recording call {id}")))
    }

    /// Waits until every record queued before this call is committed.
    pub(super) async fn flush(&self) -> Result<()> {
        let (ack, committed) = oneshot::channel();
        self.queue
            .send(WriterMsg::Flush(ack))
            .await
            .map_err(|_| anyhow!("flushing call records: the call store is closed"))?;
        committed
            .await
            .map_err(|_| anyhow!("flushing call records: the store writer stopped"))?
            .map_err(|failure| failure.into_error().context("flushing call records"))
    }

    /// Runs `task` on the writer thread's connection once the records queued before it
    /// are written, and returns its result. Keep it short (one small transaction):
    /// records queued behind it wait for it.
    pub(super) async fn run<T, F>(&self, task: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let (done, result) = oneshot::channel();
        let task = Box::new(move |conn: &mut Connection| {
            let _ = done.send(task(conn));
        });
        self.queue
            .send(WriterMsg::Task(task))
            .await
            .map_err(|_| anyhow!("the call store is closed"))?;
        result
            .await
            .map_err(|_| anyhow!("the store writer stopped"))?
    }

    /// Writes everything queued, closes the queue and stops the thread.
    pub(super) async fn close(&self) {
        let (ack, closed) = oneshot::channel();
        if self.queue.send(WriterMsg::Close(ack)).await.is_ok() && closed.await.is_err() {
            tracing::error!("the store writer thread stopped before closing cleanly");
        }
    }
}

/// The writer thread: commits queued records in batches until the queue closes.
fn run_writer(mut conn: Connection, mut queue: mpsc::Receiver<WriterMsg>, lost: &AtomicU64) {
    let mut close_acks = Vec::new();
    while let Some(first) = queue.blocking_recv() {
        let mut records: Vec<(Box<CallRecord>, Option<Ack>, OwnedSemaphorePermit)> = Vec::new();
        let mut flushes = Vec::new();
        let mut tasks = Vec::new();
        let mut lingered = false;
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                WriterMsg::Record { record, ack, _room } => records.push((record, ack, _room)),
                WriterMsg::Flush(ack) => flushes.push(ack),
                WriterMsg::Task(task) => tasks.push(task),
                WriterMsg::Close(ack) => {
                    close_acks.push(ack);
                    // Refuse new messages; those already queued are still written, and
                    // the loop ends once they are drained.
                    queue.close();
                }
            }
            // A task runs right after this batch: what comes after it waits for it.
            if records.len() < MAX_BATCH && tasks.is_empty() {
                next = queue.try_recv().ok();
                // Nobody waits on a batch of plain write-behind records: give it a
                // moment to grow, so a busy host commits many calls per transaction
                // (one WAL write each) instead of one or two per call.
                if next.is_none()
                    && !lingered
                    && flushes.is_empty()
                    && close_acks.is_empty()
                    && records.iter().all(|(_, ack, _)| ack.is_none())
                {
                    lingered = true;
                    std::thread::sleep(LINGER);
                    next = queue.try_recv().ok();
                }
            }
        }

        // Someone waits on this batch to answer "accepted" (202): its commit must
        // reach the disk, not only the OS (WAL with synchronous=NORMAL syncs at
        // checkpoints). Plain write-behind batches keep the cheaper setting.
        let durable = records.iter().any(|(_, ack, _)| ack.is_some());
        let outcome = if records.is_empty() {
            Ok(Vec::new())
        } else {
            let batch: Vec<&CallRecord> = records.iter().map(|(record, _, _)| &**record).collect();
            if durable {
                set_synchronous(&conn, "FULL");
            }
            let written = write_batch(&mut conn, &batch);
            if durable {
                set_synchronous(&conn, "NORMAL");
            }
            written
        };
        match outcome {
            Ok(failures) => {
                let refused = failures.iter().filter(|f| f.is_some()).count();
                lost.fetch_add(refused as u64, Ordering::Relaxed);
                for ((_, ack, _), failure) in records.into_iter().zip(failures) {
                    if let Some(ack) = ack {
                        let failure = failure.map(|message| Failure {
                            code: None,
                            message,
                        });
                        let _ = ack.send(failure.map_or(Ok(()), Err));
                    }
                }
                for ack in flushes {
                    let _ = ack.send(Ok(()));
                }
            }
            Err(err) => {
                // The records are lost (the transaction rolled back: nothing of the
                // batch is visible); count them, say so loudly and tell whoever waits.
                // Keep running: the next batch may well succeed (e.g. disk space
                // freed). Holding failed batches for a retry instead would fill the
                // queue and then block every call on a disk that may stay full.
                let total =
                    lost.fetch_add(records.len() as u64, Ordering::Relaxed) + records.len() as u64;
                tracing::error!(
                    error = %err,
                    records = records.len(),
                    lost_since_start = total,
                    disk_full = is_sqlite_full(&err),
                    "committing a batch of call records failed; records lost"
                );
                let failure = Failure::of(&err);
                let failure = Failure {
                    message: format!("committing call records failed: {}", failure.message),
                    ..failure
                };
                let acks = records.into_iter().filter_map(|(_, ack, _)| ack);
                for ack in acks.chain(flushes) {
                    let _ = ack.send(Err(failure.clone()));
                }
            }
        }
        for task in tasks {
            task(&mut conn);
        }
    }
    drop(conn);
    for ack in close_acks {
        let _ = ack.send(());
    }
}

/// Sets how hard commits sync; a failure only costs durability of one batch, so it is
/// logged rather than stopping the writer.
fn set_synchronous(conn: &Connection, level: &str) {
    if let Err(e) = conn.pragma_update(None, "synchronous", level) {
        tracing::error!("setting synchronous={level}: {e}");
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
        let mut upsert = tx.prepare_cached(calls::UPSERT_CALL)?;
        for (i, record) in records.iter().enumerate() {
            if last[record.id.as_str()] != i {
                continue;
            }
            if let Err(err) = calls::upsert(&mut upsert, record) {
                // SQLite may have rolled the whole transaction back (a full disk, an
                // I/O error): then nothing of the batch will commit, so the batch
                // fails as a whole, with that error, rather than "committing" nothing.
                if is_sqlite_full(&err) || tx.is_autocommit() {
                    return Err(err);
                }
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

#[cfg(test)]
mod tests {
    use super::super::testing::{call, open_temp};
    use super::super::{SqliteStore, open_connection};
    use super::{Writer, write_batch};
    use crate::store::{CallFilter, CallStatus, Store};
    use newt_runtime::StartKind;

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
        let everything = CallFilter {
            with_payloads: true,
            ..CallFilter::default()
        };
        let all = store.list_calls(everything.clone()).await.unwrap();
        assert_eq!(all.len(), 1000);
        assert_eq!(all[0], last, "newest first");
        assert_eq!(all[999], records[0]);

        let mut finished = records[10].clone();
        finished.status = CallStatus::Done;
        finished.output = Some(b"42".to_vec());
        finished.logs = b"log line\n".to_vec();
        finished.start = Some(StartKind::Warm);
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

    /// A database that cannot grow (SQLite's `max_page_count`, standing in for a full
    /// disk: both are SQLITE_FULL): the durable writer's error still says "disk full"
    /// to the HTTP layer (507), the lost records are counted, and nothing of the
    /// failed batch is visible, while records that fit keep being written.
    #[tokio::test]
    async fn a_full_database_fails_the_batch_as_disk_full_and_counts_the_loss() {
        let (_dir, path, store) = open_temp();
        let conn = open_connection(&path).unwrap();
        let pages: i64 = conn
            .query_row("PRAGMA page_count", [], |row| row.get(0))
            .unwrap();
        let _: i64 = conn
            .query_row(
                &format!("PRAGMA max_page_count = {}", pages + 2),
                [],
                |row| row.get(0),
            )
            .unwrap();
        let writer = Writer::start(conn).unwrap();

        let small = call(1, "hello", CallStatus::Pending, true);
        writer.record_durable(small.clone()).await.unwrap();
        let mut big = call(2, "hello", CallStatus::Pending, true);
        big.input = vec![7; 64 * 1024];
        let err = writer.record_durable(big.clone()).await.unwrap_err();
        assert!(
            crate::api::error::is_disk_full(err.as_ref()),
            "not told apart as a full disk: {err:#}"
        );
        assert!(err.to_string().contains(&big.id), "{err:#}");
        assert_eq!(writer.records_lost(), 1);

        // A write-behind record in a failing batch is lost and counted too.
        let mut behind = call(3, "hello", CallStatus::Done, false);
        behind.output = Some(vec![1; 64 * 1024]);
        writer.record(behind.clone()).await;
        let flushed = writer.flush().await;
        assert!(flushed.is_err() || writer.records_lost() == 2);
        writer.flush().await.unwrap();
        assert_eq!(writer.records_lost(), 2);

        assert_eq!(store.get_call(&small.id).await.unwrap(), Some(small));
        assert_eq!(store.get_call(&big.id).await.unwrap(), None);
        assert_eq!(store.get_call(&behind.id).await.unwrap(), None);
        let after = call(4, "hello", CallStatus::Done, false);
        writer.record_durable(after.clone()).await.unwrap();
        assert_eq!(store.get_call(&after.id).await.unwrap(), Some(after));
        writer.close().await;
    }

    #[tokio::test]
    async fn durable_record_survives_a_crash() {
        let (_dir, path, store) = open_temp();
        let record = call(store.next_call_num(), "hello", CallStatus::Pending, true);
        store.record_call_durable(record.clone()).await.unwrap();
        // Simulate a crash: the writer thread keeps its queue open and never drains or
        // commits anything more, so only what was committed before is on disk.
        std::mem::forget(store);

        let reopened = SqliteStore::open(&path).unwrap();
        assert_eq!(reopened.get_call(&record.id).await.unwrap(), Some(record));
    }
}

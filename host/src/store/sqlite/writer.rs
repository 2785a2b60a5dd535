//! The write-behind queue for call records: one writer thread owns a connection and
//! commits whatever has queued up in a single transaction.
//!
//! An HTTP response therefore never waits on an fsync, and a burst of calls costs one
//! commit per batch instead of one per call. Durable writes (accepting an async call)
//! go through the same queue, so they stay ordered with later updates of that call,
//! and wait for their batch to commit.

use std::collections::HashMap;
use std::sync::Arc;
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
const LINGER: Duration = Duration::from_millis(2);

/// Answer to a waiter on the writer thread: `Err` carries the failure as text, since
/// one commit error may go to many waiters.
type Ack = oneshot::Sender<Result<(), String>>;

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
}

/// The sending end of the queue; the writer thread stops when it is closed.
pub(super) struct Writer {
    queue: mpsc::Sender<WriterMsg>,
    room: Arc<Semaphore>,
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
        std::thread::Builder::new()
            .name("newt-store-writer".into())
            .spawn(move || run_writer(conn, receiver))
            .context("starting the store writer thread")?;
        Ok(Writer {
            queue,
            room: Arc::new(Semaphore::new(QUEUE_BYTES / BUDGET_UNIT)),
        })
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
            .map_err(|message| anyhow!("recording call {id}: {message}"))
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
            .map_err(|message| anyhow!("flushing call records: {message}"))
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
fn run_writer(mut conn: Connection, mut queue: mpsc::Receiver<WriterMsg>) {
    let mut close_acks = Vec::new();
    while let Some(first) = queue.blocking_recv() {
        let mut records: Vec<(Box<CallRecord>, Option<Ack>, OwnedSemaphorePermit)> = Vec::new();
        let mut flushes = Vec::new();
        let mut lingered = false;
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                WriterMsg::Record { record, ack, _room } => records.push((record, ack, _room)),
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
                for ((_, ack, _), failure) in records.into_iter().zip(failures) {
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
                let acks = records.into_iter().filter_map(|(_, ack, _)| ack);
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
    use super::write_batch;
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

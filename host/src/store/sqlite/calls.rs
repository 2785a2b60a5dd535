//! Call records in SQLite: their columns and how typed fields are stored, reading and
//! listing them, and the repair of unfinished calls after a restart.

use anyhow::{Context, Result};
use newt_runtime::StartKind;
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, Type, Value, ValueRef};
use rusqlite::{CachedStatement, Connection, OptionalExtension, Row, ToSql, TransactionBehavior};
use rusqlite::{params, params_from_iter};
use serde::Deserialize;
use serde::de::IntoDeserializer;

use super::now_ms;
use crate::store::{CallFilter, CallRecord, CallStatus, MAX_ASYNC_ATTEMPTS, Recovery};

const CALL_COLUMNS: &str = "id, num, function, version, status, is_async, input, output, \
     error, logs, start, queue_us, init_us, exec_us, created_at, started_at, finished_at, \
     caller, attempts";

/// The same columns for a listed call: no input, output or logs, and the error cut
/// short, so a list of a thousand calls reads kilobytes, not gigabytes.
fn summary_columns() -> String {
    format!(
        "id, num, function, version, status, is_async, x'', NULL, \
         substr(error, 1, {}), x'', start, queue_us, init_us, exec_us, created_at, \
         started_at, finished_at, caller, attempts",
        crate::store::types::SUMMARY_ERROR_CHARS
    )
}

/// Later records for the same call id replace earlier ones, column by column.
/// The condition of the partial index `calls_unfinished` (schema migration 8), in
/// the words a query must use for SQLite to pick that index.
const UNFINISHED: &str = "status IN ('pending', 'running')";

pub(super) const UPSERT_CALL: &str = "INSERT INTO calls (id, num, function, version, status, \
     is_async, input, output, error, logs, start, queue_us, init_us, exec_us, created_at, \
     started_at, finished_at, caller, attempts) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, \
     ?19)
     ON CONFLICT (id) DO UPDATE SET num = excluded.num, function = excluded.function, \
     version = excluded.version, status = excluded.status, is_async = excluded.is_async, \
     input = excluded.input, output = excluded.output, error = excluded.error, \
     logs = excluded.logs, start = excluded.start, queue_us = excluded.queue_us, \
     init_us = excluded.init_us, exec_us = excluded.exec_us, created_at = excluded.created_at, \
     started_at = excluded.started_at, finished_at = excluded.finished_at, \
     caller = excluded.caller, attempts = excluded.attempts";

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

/// Writes `record` with a statement prepared from [`UPSERT_CALL`].
pub(super) fn upsert(stmt: &mut CachedStatement<'_>, record: &CallRecord) -> rusqlite::Result<()> {
    stmt.execute(params![
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
        record.start.map(StartKind::as_str),
        record.queue_us,
        record.init_us,
        record.exec_us,
        record.created_at,
        record.started_at,
        record.finished_at,
        record.caller,
        record.attempts,
    ])?;
    Ok(())
}

/// The largest call number recorded, 0 if none.
pub(super) fn last_num(conn: &Connection) -> Result<i64> {
    Ok(
        conn.query_row("SELECT COALESCE(MAX(num), 0) FROM calls", [], |row| {
            row.get(0)
        })?,
    )
}

/// The call with this id.
pub(super) fn by_id(conn: &Connection, id: &str) -> Result<Option<CallRecord>> {
    let sql = format!("SELECT {CALL_COLUMNS} FROM calls WHERE id = ?1");
    let read = || {
        conn.prepare_cached(&sql)?
            .query_row([id], call_from_row)
            .optional()
    };
    read().with_context(|| format!("reading call {id}"))
}

/// The call with this number.
pub(super) fn by_num(conn: &Connection, num: i64) -> Result<Option<CallRecord>> {
    let sql = format!("SELECT {CALL_COLUMNS} FROM calls WHERE num = ?1");
    let read = || {
        conn.prepare_cached(&sql)?
            .query_row([num], call_from_row)
            .optional()
    };
    read().with_context(|| format!("reading call number {num}"))
}

/// Calls matching `filter`, newest (highest `num`) first.
pub(super) fn list(conn: &Connection, filter: CallFilter) -> Result<Vec<CallRecord>> {
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
        // Spelled out so SQLite can use the partial index of unfinished calls.
        if matches!(status, CallStatus::Pending | CallStatus::Running) {
            conditions.push(UNFINISHED.to_string());
        }
    }
    if let Some(caller) = filter.caller {
        values.push(Value::Text(caller));
        conditions.push(format!("caller = ?{}", values.len()));
    }
    if let Some(before) = filter.before_num {
        values.push(Value::Integer(before));
        conditions.push(format!("num < ?{}", values.len()));
    }
    let columns = if filter.with_payloads {
        CALL_COLUMNS.to_string()
    } else {
        summary_columns()
    };
    let mut sql = format!("SELECT {columns} FROM calls");
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
    let read = || -> rusqlite::Result<Vec<CallRecord>> {
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(params_from_iter(values), call_from_row)?;
        rows.collect()
    };
    read().context("listing calls")
}

/// Repairs the calls a previous process left unfinished: fails the synchronous ones
/// (their client is gone), puts async ones left `running` back to `pending` with one
/// more attempt (or fails them on their last), and returns every pending async call,
/// oldest first. One transaction: a crash during recovery leaves it undone, not half
/// done.
pub(super) fn recover(conn: &mut Connection) -> Result<Recovery> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .context("starting the recovery transaction")?;
    let now = now_ms();
    let interrupted = tx
        .execute(
            "UPDATE calls SET status = ?1, error = 'host restarted', finished_at = ?2 \
             WHERE is_async = 0 AND status IN (?3, ?4) AND status IN ('pending', 'running')",
            params![
                CallStatus::Failed,
                now,
                CallStatus::Running,
                CallStatus::Pending
            ],
        )
        .context("failing sync calls interrupted by the restart")?;
    let exhausted = tx
        .execute(
            "UPDATE calls SET status = ?1, error = 'host restarted during each of ' || \
             attempts || ' attempts', finished_at = ?2 \
             WHERE is_async = 1 AND status = ?3 AND attempts >= ?4 \
             AND status IN ('pending', 'running')",
            params![
                CallStatus::Failed,
                now,
                CallStatus::Running,
                MAX_ASYNC_ATTEMPTS
            ],
        )
        .context("failing async calls interrupted on their last attempt")?;
    // What the interrupted attempt left (its start, instance and timings) belongs to
    // that attempt: the next one records its own.
    let retried = tx
        .execute(
            "UPDATE calls SET status = ?1, attempts = attempts + 1, start = NULL, \
             queue_us = NULL, init_us = NULL, exec_us = NULL, started_at = NULL, \
             output = NULL, error = NULL, logs = x'' \
             WHERE is_async = 1 AND status = ?2 AND attempts < ?3 \
             AND status IN ('pending', 'running')",
            params![CallStatus::Pending, CallStatus::Running, MAX_ASYNC_ATTEMPTS],
        )
        .context("returning interrupted async calls to pending")?;
    let pending = {
        let sql = format!(
            "SELECT {CALL_COLUMNS} FROM calls WHERE status = ?1 AND is_async = 1 \
             AND {UNFINISHED} ORDER BY num"
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
        retried,
        exhausted,
        pending,
    })
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
        start: start_from_row(row, 10)?,
        queue_us: row.get(11)?,
        init_us: row.get(12)?,
        exec_us: row.get(13)?,
        created_at: row.get(14)?,
        started_at: row.get(15)?,
        finished_at: row.get(16)?,
        caller: row.get(17)?,
        attempts: row.get(18)?,
    })
}

/// Reads a start kind stored as its lowercase (serde) name; NULL is `None`, any other
/// text an error.
fn start_from_row(row: &Row<'_>, index: usize) -> rusqlite::Result<Option<StartKind>> {
    let Some(text) = row.get_ref(index)?.as_str_or_null()? else {
        return Ok(None);
    };
    StartKind::deserialize(text.into_deserializer())
        .map(Some)
        .map_err(|err: serde::de::value::Error| {
            let message = format!("unknown start kind {text:?}: {err}");
            rusqlite::Error::FromSqlConversionFailure(index, Type::Text, message.into())
        })
}

#[cfg(test)]
mod tests {
    use super::super::testing::{call, nums, open_temp};
    use super::super::{SqliteStore, open_connection};
    use crate::store::{CallFilter, CallStatus, MAX_ASYNC_ATTEMPTS, Recovery, Store};
    use newt_runtime::StartKind;

    #[tokio::test]
    async fn recover_fails_interrupted_sync_calls_and_returns_pending_async_ones() {
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

        let store = SqliteStore::open(&path).unwrap();
        let recovery = store.recover().await.unwrap();
        assert_eq!(recovery.interrupted, 2);
        assert_eq!((recovery.retried, recovery.exhausted), (0, 0));
        assert_eq!(recovery.pending, [pending_old, pending_new]);

        for interrupted in [&running, &pending_sync] {
            let after = store.get_call(&interrupted.id).await.unwrap().unwrap();
            assert_eq!(after.status, CallStatus::Failed);
            assert_eq!(after.error.as_deref(), Some("host restarted"));
            assert_eq!(after.attempts, 1, "sync calls are never retried");
            assert!(after.finished_at.is_some());
        }
        assert_eq!(store.get_call(&done.id).await.unwrap(), Some(done));
        assert_eq!(
            store.recover().await.unwrap(),
            Recovery {
                interrupted: 0,
                retried: 0,
                exhausted: 0,
                pending: recovery.pending,
            },
            "recovery is idempotent"
        );
    }

    #[tokio::test]
    async fn recover_runs_interrupted_async_calls_again_counting_attempts() {
        let (_dir, path, store) = open_temp();
        // An async call that was running, with what its first attempt had recorded.
        let mut first = call(1, "hello", CallStatus::Running, true);
        first.started_at = Some(first.created_at + 5);
        first.start = Some(StartKind::Warm);
        first.queue_us = Some(3);
        let mut second = call(2, "hello", CallStatus::Running, true);
        second.attempts = 2;
        let mut last = call(3, "hello", CallStatus::Running, true);
        last.attempts = MAX_ASYNC_ATTEMPTS;
        let mut finished = call(4, "hello", CallStatus::Done, true);
        finished.attempts = 2;
        finished.output = Some(b"ok".to_vec());
        for record in [&first, &second, &last, &finished] {
            store.record_call_durable(record.clone()).await.unwrap();
        }
        std::mem::forget(store); // a crash

        let store = SqliteStore::open(&path).unwrap();
        let recovery = store.recover().await.unwrap();
        assert_eq!(
            (recovery.interrupted, recovery.retried, recovery.exhausted),
            (0, 2, 1)
        );
        let mut retried_first = first.clone();
        retried_first.status = CallStatus::Pending;
        retried_first.attempts = 2;
        // The interrupted attempt's start and timings are not the next attempt's.
        retried_first.started_at = None;
        retried_first.start = None;
        retried_first.queue_us = None;
        let mut retried_second = second.clone();
        retried_second.status = CallStatus::Pending;
        retried_second.attempts = 3;
        assert_eq!(recovery.pending, [retried_first, retried_second]);

        let given_up = store.get_call(&last.id).await.unwrap().unwrap();
        assert_eq!(given_up.status, CallStatus::Failed);
        assert_eq!(
            given_up.error.as_deref(),
            Some("host restarted during each of 3 attempts")
        );
        assert_eq!(given_up.attempts, MAX_ASYNC_ATTEMPTS);
        assert!(given_up.finished_at.is_some());
        assert_eq!(store.get_call(&finished.id).await.unwrap(), Some(finished));
    }

    #[tokio::test]
    async fn an_async_call_interrupted_at_every_start_fails_after_its_last_attempt() {
        let (_dir, path, mut store) = open_temp();
        let accepted = call(1, "hello", CallStatus::Pending, true);
        store.record_call_durable(accepted.clone()).await.unwrap();
        for attempt in 1..=MAX_ASYNC_ATTEMPTS {
            // Each process starts the call (durably, as the service does) and dies.
            let mut pending = store.recover().await.unwrap().pending;
            assert_eq!(pending.len(), 1, "attempt {attempt}");
            let mut running = pending.remove(0);
            assert_eq!(running.attempts, attempt);
            running.status = CallStatus::Running;
            running.started_at = Some(running.created_at + 1);
            store.record_call_durable(running).await.unwrap();
            std::mem::forget(store);
            store = SqliteStore::open(&path).unwrap();
        }
        let recovery = store.recover().await.unwrap();
        assert_eq!((recovery.retried, recovery.exhausted), (0, 1));
        assert!(recovery.pending.is_empty());
        let failed = store.get_call(&accepted.id).await.unwrap().unwrap();
        assert_eq!(failed.status, CallStatus::Failed);
        assert_eq!(
            failed.error.as_deref(),
            Some("host restarted during each of 3 attempts")
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

        let store = SqliteStore::open(&path).unwrap();
        let next = store.next_call_num();
        assert!(next > num, "{next} should be above {num}");
        assert!(store.next_call_num() > next);
    }

    #[tokio::test]
    async fn listed_calls_are_summaries_without_payloads() {
        let (_dir, _path, store) = open_temp();
        let mut big = call(1, "f", CallStatus::Failed, false);
        big.input = vec![b'i'; 1 << 20];
        big.output = Some(vec![b'o'; 1 << 20]);
        big.logs = vec![b'l'; 1 << 20];
        big.error = Some("e".repeat(10_000));
        store.record_call(big.clone()).await;
        let listed = store.list_calls(CallFilter::default()).await.unwrap();
        assert_eq!(listed.len(), 1);
        let summary = &listed[0];
        assert!(summary.input.is_empty() && summary.logs.is_empty());
        assert_eq!(summary.output, None);
        assert_eq!(
            summary.error.as_ref().map(String::len),
            Some(crate::store::types::SUMMARY_ERROR_CHARS)
        );
        assert_eq!(
            (summary.id.as_str(), summary.status),
            (big.id.as_str(), big.status)
        );
        // One call at a time, in full.
        assert_eq!(store.get_call(&big.id).await.unwrap(), Some(big));
    }

    #[tokio::test]
    async fn calls_keep_their_caller_and_list_by_it() {
        let (_dir, _path, store) = open_temp();
        let mut mine = call(1, "f", CallStatus::Done, false);
        mine.caller = Some("app".into());
        let theirs = call(2, "f", CallStatus::Done, false);
        store.record_call(mine.clone()).await;
        store.record_call(theirs.clone()).await;
        assert_eq!(store.get_call(&mine.id).await.unwrap(), Some(mine.clone()));
        let filter = CallFilter {
            caller: Some("app".into()),
            ..CallFilter::default()
        };
        let listed = store.list_calls(filter).await.unwrap();
        assert_eq!(nums(&listed), [1]);
        assert_eq!(listed[0].caller.as_deref(), Some("app"));
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
                caller: None,
                with_payloads: false,
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

    /// The text a call's column holds in the database.
    fn stored_text(path: &std::path::Path, column: &str, id: &str) -> Option<String> {
        open_connection(path)
            .unwrap()
            .query_row(
                &format!("SELECT {column} FROM calls WHERE id = ?1"),
                [id],
                |row| row.get(0),
            )
            .unwrap()
    }

    #[tokio::test]
    async fn a_cancelled_call_round_trips_and_recovery_leaves_it_alone() {
        let (_dir, path, store) = open_temp();
        let mut cancelled = call(1, "hello", CallStatus::Cancelled, false);
        cancelled.finished_at = Some(cancelled.created_at + 3);
        store.record_call_durable(cancelled.clone()).await.unwrap();
        store
            .record_call(call(2, "hello", CallStatus::Done, false))
            .await;
        assert_eq!(
            store.get_call(&cancelled.id).await.unwrap().as_ref(),
            Some(&cancelled)
        );
        assert_eq!(
            stored_text(&path, "status", &cancelled.id).as_deref(),
            Some("cancelled")
        );
        let filter = CallFilter {
            status: Some(CallStatus::Cancelled),
            with_payloads: true,
            ..CallFilter::default()
        };
        assert_eq!(store.list_calls(filter).await.unwrap(), [cancelled.clone()]);
        assert_eq!(store.recover().await.unwrap().interrupted, 0);
        assert_eq!(
            store.get_call(&cancelled.id).await.unwrap(),
            Some(cancelled)
        );
    }

    #[tokio::test]
    async fn start_kinds_round_trip_as_their_lowercase_names() {
        let (_dir, path, store) = open_temp();
        let kinds = [
            None,
            Some(StartKind::Cold),
            Some(StartKind::Prewarmed),
            Some(StartKind::Warm),
        ];
        for (num, start) in (1..).zip(kinds) {
            let mut record = call(num, "hello", CallStatus::Done, false);
            record.start = start;
            store.record_call(record.clone()).await;
            assert_eq!(
                store.get_call(&record.id).await.unwrap(),
                Some(record.clone())
            );
            let text = stored_text(&path, "start", &record.id);
            assert_eq!(text.as_deref(), start.map(StartKind::as_str));
            if let Some(start) = start {
                // The same text as the API's JSON, which serialises the enum.
                assert_eq!(
                    serde_json::to_value(start).unwrap(),
                    serde_json::Value::String(text.unwrap())
                );
            }
        }
    }

    #[tokio::test]
    async fn unknown_status_or_start_text_is_an_error() {
        let (_dir, path, store) = open_temp();
        let insert = |id: &str, num: i64, status: &str, start: Option<&str>| {
            open_connection(&path)
                .unwrap()
                .execute(
                    "INSERT INTO calls (id, num, function, version, status, is_async, input, \
                     logs, start, created_at) VALUES (?1, ?2, 'hello', 1, ?3, 0, x'', x'', ?4, 0)",
                    rusqlite::params![id, num, status, start],
                )
                .unwrap();
        };
        insert("finished", 1, "finished", None);
        insert("lukewarm", 2, "done", Some("lukewarm"));
        insert("capital", 3, "Done", None);

        for (id, expected) in [
            ("finished", "unknown call status \"finished\""),
            ("lukewarm", "unknown start kind \"lukewarm\""),
            ("capital", "unknown call status \"Done\""),
        ] {
            let err = store.get_call(id).await.unwrap_err();
            assert!(format!("{err:#}").contains(expected), "{err:#}");
        }
        assert!(store.get_call_by_num(1).await.is_err());
        assert!(store.list_calls(CallFilter::default()).await.is_err());
    }
}

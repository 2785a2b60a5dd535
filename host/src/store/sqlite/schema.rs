//! The database schema, as numbered migrations applied at open.
//! Append new steps, never edit a released one.

use anyhow::{Context, Result, bail};
use rusqlite::{Connection, TransactionBehavior};

/// Schema migrations, applied in order; `PRAGMA user_version` counts how many ran.
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
    // 3: who made a call: the name of the invoke token it came with (NULL for the
    // admin token, or when no tokens are configured), so such a token reads only its
    // own calls.
    "ALTER TABLE calls ADD COLUMN caller TEXT;",
    // 4: which attempt a call is on: async calls interrupted by a host restart while
    // running are started again, and their record says how many times. Every call
    // recorded before this was on its first.
    "ALTER TABLE calls ADD COLUMN attempts INTEGER NOT NULL DEFAULT 1;",
    // 5: HTTP routes (`newt route add`): a path prefix served by a function, with the
    // methods it accepts as a JSON array (empty: any).
    "CREATE TABLE IF NOT EXISTS routes (
        path       TEXT    PRIMARY KEY,
        function   TEXT    NOT NULL,
        methods    TEXT    NOT NULL,
        created_at INTEGER NOT NULL
    );",
    // 6: a function version's secrets, sealed by the host (a JSON object of name to
    // ciphertext; NULL: none), apart from `config` so nothing that shows a config can
    // show them.
    "ALTER TABLE function_versions ADD COLUMN secrets TEXT;",
    // 7: aliases (`prod -> 3`, or a weighted split as a JSON array of
    // {"version", "weight"}), and the versions a rollback set aside: calls of a
    // function run its newest ready version that is not in `rolled_back`, so a
    // restart keeps serving the version rolled back to and a new deploy serves itself.
    "CREATE TABLE IF NOT EXISTS aliases (
        function   TEXT    NOT NULL,
        alias      TEXT    NOT NULL,
        versions   TEXT    NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (function, alias)
    );
    CREATE TABLE IF NOT EXISTS rolled_back (
        function   TEXT    NOT NULL,
        version    INTEGER NOT NULL,
        at         INTEGER NOT NULL,
        PRIMARY KEY (function, version)
    );",
    // 8: the status index holds only unfinished calls (what recovery and the
    // `pending`/`running` listings look up): finished calls are nearly all rows, and
    // indexing them cost every call a B-tree insert for lookups that never use it.
    "DROP INDEX IF EXISTS calls_status;
    CREATE INDEX IF NOT EXISTS calls_unfinished ON calls (status)
        WHERE status IN ('pending', 'running');",
];

/// Applies the migrations this database has not seen yet, each in its own transaction.
pub(super) fn migrate(conn: &mut Connection) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{SqliteStore, Store};

    #[tokio::test]
    async fn calls_recorded_before_attempts_existed_read_as_first_attempts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("newt.db");
        // A database as the release before migration 4 left it, with one call.
        {
            let conn = Connection::open(&path).unwrap();
            for (index, sql) in MIGRATIONS[..3].iter().enumerate() {
                conn.execute_batch(sql).unwrap();
                conn.pragma_update(None, "user_version", index as i64 + 1)
                    .unwrap();
            }
            conn.execute(
                "INSERT INTO calls (id, num, function, version, status, is_async, input, \
                 logs, created_at) VALUES ('old', 1, 'hello', 1, 'running', 1, x'', x'', 0)",
                [],
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let old = store.get_call("old").await.unwrap().unwrap();
        assert_eq!(old.attempts, 1);
        // So a call running when that release died gets its second attempt.
        let recovery = store.recover().await.unwrap();
        assert_eq!(recovery.retried, 1);
        assert_eq!(recovery.pending[0].attempts, 2);

        let version: i64 = Connection::open(&path)
            .unwrap()
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        // Opening again applies nothing twice.
        drop(store);
        SqliteStore::open(&path).unwrap();
    }

    #[test]
    fn unfinished_calls_are_found_by_their_partial_index() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        let plan = |sql: &str| -> String {
            let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let rows = stmt.query_map([], |row| row.get::<_, String>(3)).unwrap();
            rows.map(Result::unwrap).collect::<Vec<_>>().join("; ")
        };
        // What recovery asks, in the words it uses.
        let pending = plan(
            "SELECT id FROM calls WHERE status = 'pending' AND is_async = 1 \
             AND status IN ('pending', 'running') ORDER BY num",
        );
        assert!(pending.contains("calls_unfinished"), "{pending}");
        let indexes: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = 'calls_status'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(indexes, 0, "finished calls are no longer indexed by status");
    }
}

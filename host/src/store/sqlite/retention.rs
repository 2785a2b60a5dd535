//! What retention asks of the database: which versions are referenced (their bundles,
//! artifacts and images must stay), every version with its state (to say why an
//! unreferenced bundle goes), old call records counted and deleted in small batches,
//! and the counts `GET /v1/status` shows.

use anyhow::{Context, Result};
use rusqlite::{Connection, params};

use crate::store::{CallRetention, PrunableCalls, StoreCounts, VersionRef};

/// Columns of a [`VersionRef`], in [`version_ref`]'s order.
const REF_COLUMNS: &str = "name, version, runtime, digest, status, deleted_at IS NOT NULL";

fn version_ref(row: &rusqlite::Row<'_>) -> rusqlite::Result<VersionRef> {
    Ok(VersionRef {
        name: row.get(0)?,
        version: row.get(1)?,
        runtime: row.get(2)?,
        digest: row.get(3)?,
        status: row.get(4)?,
        deleted: row.get(5)?,
    })
}

/// The versions the store says must be kept, with everything they run from: of every
/// live (not deleted) function, the versions being built (`pending`), its newest
/// `keep_ready` ready versions (rollback targets), the version serving (the newest
/// ready one no rollback set aside: after a rollback, an older one) and every
/// version an alias points at. `keep_ready` below 1 counts as 1.
///
/// This is the one place the store's side of "referenced" is decided; a new kind of
/// reference (an alias's target) is one more `OR` here.
pub(super) fn referenced(conn: &Connection, keep_ready: usize) -> Result<Vec<VersionRef>> {
    let keep = i64::try_from(keep_ready.max(1)).unwrap_or(i64::MAX);
    let sql = format!(
        "SELECT {REF_COLUMNS} FROM function_versions v
         WHERE v.deleted_at IS NULL AND (
             v.status = 'pending'
             OR (v.status = 'ready' AND (
                 SELECT COUNT(*) FROM function_versions newer
                 WHERE newer.name = v.name AND newer.deleted_at IS NULL
                   AND newer.status = 'ready' AND newer.version > v.version
             ) < ?1)
             OR (v.status = 'ready' AND v.version = (
                 SELECT MAX(s.version) FROM function_versions s
                 WHERE s.name = v.name AND s.deleted_at IS NULL AND s.status = 'ready'
                   AND NOT EXISTS (SELECT 1 FROM rolled_back r
                                   WHERE r.function = s.name AND r.version = s.version)
             ))
             OR EXISTS (SELECT 1 FROM aliases a, json_each(a.versions) t
                        WHERE a.function = v.name
                          AND json_extract(t.value, '$.version') = v.version)
         )
         ORDER BY name, version"
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(params![keep], version_ref)?;
    rows.collect::<rusqlite::Result<_>>()
        .context("reading referenced versions")
}

/// Every version row, deleted functions' included, by name and version.
pub(super) fn all(conn: &Connection) -> Result<Vec<VersionRef>> {
    let sql = format!("SELECT {REF_COLUMNS} FROM function_versions ORDER BY name, version");
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map([], version_ref)?;
    rows.collect::<rusqlite::Result<_>>()
        .context("reading versions")
}

/// The condition a call record must meet to go: finished (never `pending` or
/// `running`: an accepted async call or one in progress stays whatever its age), and
/// either created before the cutoff or not among its function's newest `?2`.
const PRUNABLE: &str = "status NOT IN ('pending', 'running') AND (
        created_at < ?1
        OR num < COALESCE((
            SELECT newer.num FROM calls newer WHERE newer.function = calls.function
            ORDER BY newer.num DESC LIMIT 1 OFFSET ?2
        ), -1)
    )";

fn rule_params(rule: &CallRetention) -> (i64, i64) {
    // OFFSET n-1 is the n-th newest: records older (lower num) than it go.
    let keep = i64::try_from(rule.keep_per_function.max(1)).unwrap_or(i64::MAX) - 1;
    (rule.created_before_ms, keep)
}

/// How many call records `rule` would delete, and their payload bytes.
pub(super) fn prunable(conn: &Connection, rule: &CallRetention) -> Result<PrunableCalls> {
    let (cutoff, keep) = rule_params(rule);
    let sql = format!(
        "SELECT COUNT(*), COALESCE(SUM(length(input) + COALESCE(length(output), 0)
             + length(logs) + COALESCE(length(error), 0)), 0)
         FROM calls WHERE {PRUNABLE}"
    );
    let (count, bytes): (i64, i64) = conn
        .query_row(&sql, params![cutoff, keep], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .context("counting old call records")?;
    Ok(PrunableCalls {
        count: count.max(0) as u64,
        bytes: bytes.max(0) as u64,
    })
}

/// Deletes at most `batch` call records `rule` lets go, in one short transaction;
/// returns how many and their payload bytes. Run on the writer thread, between
/// batches of records, so it never holds the write lock against them for long.
pub(super) fn prune_batch(
    conn: &mut Connection,
    rule: &CallRetention,
    batch: usize,
) -> Result<PrunableCalls> {
    let (cutoff, keep) = rule_params(rule);
    let limit = i64::try_from(batch.max(1)).unwrap_or(i64::MAX);
    let tx = conn.transaction()?;
    let chosen = format!("SELECT rowid FROM calls WHERE {PRUNABLE} ORDER BY num LIMIT ?3");
    let bytes: i64 = tx
        .query_row(
            &format!(
                "SELECT COALESCE(SUM(length(input) + COALESCE(length(output), 0)
                     + length(logs) + COALESCE(length(error), 0)), 0)
                 FROM calls WHERE rowid IN ({chosen})"
            ),
            params![cutoff, keep, limit],
            |row| row.get(0),
        )
        .context("measuring old call records")?;
    let deleted = tx
        .execute(
            &format!("DELETE FROM calls WHERE rowid IN ({chosen})"),
            params![cutoff, keep, limit],
        )
        .context("deleting old call records")?;
    tx.commit()
        .context("committing the deletion of old call records")?;
    Ok(PrunableCalls {
        count: deleted as u64,
        bytes: bytes.max(0) as u64,
    })
}

/// Live functions, their versions (deleted functions' excluded) and call records.
pub(super) fn counts(conn: &Connection) -> Result<StoreCounts> {
    conn.query_row(
        "SELECT
            (SELECT COUNT(DISTINCT name) FROM function_versions WHERE deleted_at IS NULL),
            (SELECT COUNT(*) FROM function_versions WHERE deleted_at IS NULL),
            (SELECT COUNT(*) FROM calls)",
        [],
        |row| {
            Ok(StoreCounts {
                functions: row.get::<_, i64>(0)?.max(0) as u64,
                versions: row.get::<_, i64>(1)?.max(0) as u64,
                calls: row.get::<_, i64>(2)?.max(0) as u64,
            })
        },
    )
    .context("counting functions, versions and calls")
}

#[cfg(test)]
mod tests {
    use super::super::testing::{call, open_temp};
    use crate::store::{
        CallFilter, CallRetention, CallStatus, SealedSecrets, Store, VersionStatus,
    };

    async fn add(store: &impl Store, name: &str, digest: &str, status: VersionStatus) -> i64 {
        store
            .add_version(
                name,
                "wasm",
                digest,
                1,
                &serde_json::json!({}),
                &SealedSecrets::default(),
                status,
            )
            .await
            .unwrap()
            .version
    }

    fn refs(versions: &[crate::store::VersionRef]) -> Vec<(String, i64)> {
        versions
            .iter()
            .map(|v| (v.name.clone(), v.version))
            .collect()
    }

    #[tokio::test]
    async fn referenced_versions_are_builds_and_the_newest_ready_ones_of_live_functions() {
        let (_dir, _path, store) = open_temp();
        for digest in ["a1", "a2", "a3", "a4"] {
            add(&store, "a", digest, VersionStatus::Ready).await;
        }
        add(&store, "a", "a5", VersionStatus::Failed).await;
        add(&store, "a", "a6", VersionStatus::Pending).await;
        add(&store, "gone", "g1", VersionStatus::Ready).await;
        add(&store, "gone", "g2", VersionStatus::Pending).await;
        store.delete_function("gone").await.unwrap();

        // Keep 2: a's newest two ready (v4 serves, v3 is a rollback target), its build.
        let kept = store.referenced_versions(2).await.unwrap();
        assert_eq!(
            refs(&kept),
            vec![("a".into(), 3), ("a".into(), 4), ("a".into(), 6)]
        );
        // Keep 0 still keeps the serving version.
        let kept = store.referenced_versions(0).await.unwrap();
        assert_eq!(refs(&kept), vec![("a".into(), 4), ("a".into(), 6)]);
        // Every row is known, with its state.
        let all = store.all_versions().await.unwrap();
        assert_eq!(all.len(), 8);
        assert!(all.iter().filter(|v| v.name == "gone").all(|v| v.deleted));
        assert_eq!(all[4].status, VersionStatus::Failed);

        // A recreated function starts afresh: its deleted versions stay unreferenced.
        add(&store, "gone", "g3", VersionStatus::Ready).await;
        let kept = store.referenced_versions(5).await.unwrap();
        assert!(kept.iter().any(|v| v.digest == "g3"));
        assert!(!kept.iter().any(|v| v.digest == "g1" || v.digest == "g2"));
    }

    #[tokio::test]
    async fn the_rolled_back_to_version_and_alias_targets_are_referenced() {
        let (_dir, _path, store) = open_temp();
        for digest in ["a1", "a2", "a3", "a4"] {
            add(&store, "a", digest, VersionStatus::Ready).await;
        }
        let newest = vec![("a".to_string(), 4)];
        assert_eq!(refs(&store.referenced_versions(1).await.unwrap()), newest);
        // Rolled back to 1 (2..4 set aside) and an alias on 2: both are live.
        store.roll_back("a", 1, &[2, 3, 4]).await.unwrap();
        let alias = crate::store::StoredAlias {
            function: "a".into(),
            alias: "prod".into(),
            targets: vec![crate::store::AliasTarget {
                version: 2,
                weight: 100,
            }],
            updated_at: 1,
        };
        store.put_alias(&alias).await.unwrap();
        assert_eq!(
            refs(&store.referenced_versions(1).await.unwrap()),
            vec![("a".into(), 1), ("a".into(), 2), ("a".into(), 4)]
        );
    }

    #[tokio::test]
    async fn old_and_surplus_records_go_in_batches_and_unfinished_calls_stay() {
        let (_dir, _path, store) = open_temp();
        // created_at = 1_700_000_000_000 + num (see `call`).
        for num in 1..=10 {
            let status = match num {
                1 => CallStatus::Pending,
                2 => CallStatus::Running,
                _ => CallStatus::Done,
            };
            store.record_call(call(num, "f", status, true)).await;
        }
        for num in 11..=13 {
            store
                .record_call(call(num, "g", CallStatus::Failed, false))
                .await;
        }
        store.flush().await.unwrap();
        let rule = CallRetention {
            created_before_ms: 1_700_000_000_000 + 6,
            keep_per_function: 2,
        };
        // f: 3, 4, 5 are old; 6, 7, 8 are beyond the newest two (9, 10); 1 and 2 are
        // unfinished. g: 11 is beyond its newest two.
        let counted = store.prunable_calls(&rule).await.unwrap();
        assert_eq!(counted.count, 7);
        assert!(counted.bytes > 0);

        let first = store.prune_calls(&rule, 4).await.unwrap();
        assert_eq!(first.count, 4);
        let second = store.prune_calls(&rule, 4).await.unwrap();
        assert_eq!(second.count, 3);
        assert_eq!(first.bytes + second.bytes, counted.bytes);
        assert_eq!(store.prune_calls(&rule, 4).await.unwrap().count, 0);

        let left = store
            .list_calls(CallFilter {
                limit: 100,
                ..CallFilter::default()
            })
            .await
            .unwrap();
        let mut nums: Vec<i64> = left.iter().map(|c| c.num).collect();
        nums.sort();
        assert_eq!(nums, vec![1, 2, 9, 10, 12, 13]);
        let counts = store.counts().await.unwrap();
        assert_eq!(counts.calls, 6);
    }
}

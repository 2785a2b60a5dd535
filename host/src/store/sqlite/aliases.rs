//! Aliases and rollbacks in SQLite: an alias is a function's named pointer to one
//! version or a weighted split (its targets as a JSON array); a rollback sets
//! versions aside, one row each, so the serving version can be worked out again at
//! start.

use anyhow::{Context, Result};
use rusqlite::{Connection, OptionalExtension, params};

use super::now_ms;
use crate::store::{AliasTarget, StoredAlias};

/// Saves `alias`, replacing the function's alias of that name; `true` if it was new.
pub(super) fn put(conn: &mut Connection, alias: &StoredAlias) -> Result<bool> {
    let targets = serde_json::to_string(&alias.targets).context("encoding alias targets")?;
    let tx = conn.transaction()?;
    let existed = tx
        .query_row(
            "SELECT 1 FROM aliases WHERE function = ?1 AND alias = ?2",
            params![alias.function, alias.alias],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    tx.execute(
        "INSERT INTO aliases (function, alias, versions, updated_at) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT(function, alias) DO UPDATE SET versions = excluded.versions, \
         updated_at = excluded.updated_at",
        params![alias.function, alias.alias, targets, alias.updated_at],
    )?;
    tx.commit()
        .with_context(|| format!("saving alias {}:{}", alias.function, alias.alias))?;
    Ok(!existed)
}

/// Every alias, by function and alias.
pub(super) fn all(conn: &Connection) -> Result<Vec<StoredAlias>> {
    let read = || -> Result<Vec<StoredAlias>> {
        let mut stmt = conn.prepare_cached(
            "SELECT function, alias, versions, updated_at FROM aliases ORDER BY function, alias",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, i64>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (function, alias, targets, updated_at) = row?;
            let targets: Vec<AliasTarget> = serde_json::from_str(&targets).with_context(|| {
                format!("the versions of alias {function}:{alias} are not a JSON list")
            })?;
            out.push(StoredAlias {
                function,
                alias,
                targets,
                updated_at,
            });
        }
        Ok(out)
    };
    read().context("listing aliases")
}

/// Removes one alias; `false` if there was none.
pub(super) fn delete(conn: &Connection, function: &str, alias: &str) -> Result<bool> {
    let changed = conn
        .execute(
            "DELETE FROM aliases WHERE function = ?1 AND alias = ?2",
            params![function, alias],
        )
        .with_context(|| format!("deleting alias {function}:{alias}"))?;
    Ok(changed > 0)
}

/// Every version set aside by a rollback, by function and version.
pub(super) fn rolled_back(conn: &Connection) -> Result<Vec<(String, i64)>> {
    let read = || -> rusqlite::Result<Vec<(String, i64)>> {
        let mut stmt =
            conn.prepare_cached("SELECT function, version FROM rolled_back ORDER BY 1, 2")?;
        let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        rows.collect()
    };
    read().context("listing rolled-back versions")
}

/// Rolls `function` back to `version` in one transaction: `version` is no longer set
/// aside, each of `set_aside` is.
pub(super) fn roll_back(
    conn: &mut Connection,
    function: &str,
    version: i64,
    set_aside: &[i64],
) -> Result<()> {
    let tx = conn.transaction()?;
    tx.execute(
        "DELETE FROM rolled_back WHERE function = ?1 AND version = ?2",
        params![function, version],
    )?;
    let at = now_ms();
    for aside in set_aside {
        tx.execute(
            "INSERT OR IGNORE INTO rolled_back (function, version, at) VALUES (?1, ?2, ?3)",
            params![function, aside, at],
        )?;
    }
    tx.commit()
        .with_context(|| format!("recording the rollback of {function} to version {version}"))
}

/// Forgets the aliases and rollbacks of a function being deleted (inside its
/// transaction).
pub(super) fn delete_function(conn: &Connection, function: &str) -> Result<()> {
    conn.execute("DELETE FROM aliases WHERE function = ?1", [function])
        .with_context(|| format!("deleting the aliases of {function}"))?;
    conn.execute("DELETE FROM rolled_back WHERE function = ?1", [function])
        .with_context(|| format!("deleting the rollbacks of {function}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::SqliteStore;
    use super::super::testing::open_temp;
    use crate::store::{AliasTarget, SealedSecrets, Store, StoredAlias, VersionStatus};

    fn alias(function: &str, name: &str, targets: &[(i64, u32)]) -> StoredAlias {
        StoredAlias {
            function: function.into(),
            alias: name.into(),
            targets: targets
                .iter()
                .map(|&(version, weight)| AliasTarget { version, weight })
                .collect(),
            updated_at: 1,
        }
    }

    #[tokio::test]
    async fn aliases_and_rollbacks_survive_a_reopen_and_go_with_their_function() {
        let (_dir, path, store) = open_temp();
        store
            .add_version(
                "hello",
                "wasm",
                "aa",
                1,
                &serde_json::json!({}),
                &SealedSecrets::default(),
                VersionStatus::Ready,
            )
            .await
            .unwrap();
        assert!(
            store
                .put_alias(&alias("hello", "prod", &[(1, 100)]))
                .await
                .unwrap()
        );
        let split = alias("hello", "prod", &[(1, 90), (2, 10)]);
        assert!(!store.put_alias(&split).await.unwrap(), "replaced, not new");
        store
            .put_alias(&alias("other", "prod", &[(4, 100)]))
            .await
            .unwrap();
        store.roll_back("hello", 1, &[2, 3]).await.unwrap();
        store.roll_back("hello", 2, &[3]).await.unwrap();
        store.close().await;

        let store = SqliteStore::open(&path).unwrap();
        let all = store.aliases().await.unwrap();
        assert_eq!(all, vec![split, alias("other", "prod", &[(4, 100)])]);
        // Rolling back to 2 took it out of the set-aside versions.
        assert_eq!(
            store.rolled_back().await.unwrap(),
            [("hello".to_string(), 3)]
        );

        assert!(store.delete_function("hello").await.unwrap());
        assert_eq!(store.aliases().await.unwrap().len(), 1);
        assert!(store.rolled_back().await.unwrap().is_empty());
        assert!(store.delete_alias("other", "prod").await.unwrap());
        assert!(!store.delete_alias("other", "prod").await.unwrap());
    }
}

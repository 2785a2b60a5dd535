//! HTTP routes in SQLite: a path prefix, the function that serves it, and the methods
//! it accepts (a JSON array; empty means any).

use anyhow::{Context, Result};
use rusqlite::{Connection, OptionalExtension, params};

use crate::store::StoredRoute;

/// Saves `route`, replacing the one with the same path; `true` if the path was new.
pub(super) fn put(conn: &mut Connection, route: &StoredRoute) -> Result<bool> {
    let methods = serde_json::to_string(&route.methods)?;
    let tx = conn.transaction()?;
    let existed = tx
        .query_row(
            "SELECT 1 FROM routes WHERE path = ?1",
            [&route.path],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    tx.execute(
        "INSERT INTO routes (path, function, methods, created_at) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT(path) DO UPDATE SET function = excluded.function, \
         methods = excluded.methods, created_at = excluded.created_at",
        params![route.path, route.function, methods, route.created_at],
    )?;
    tx.commit()?;
    Ok(!existed)
}

/// Every route, by path.
pub(super) fn all(conn: &Connection) -> Result<Vec<StoredRoute>> {
    let read = || -> Result<Vec<StoredRoute>> {
        let mut stmt = conn.prepare_cached(
            "SELECT path, function, methods, created_at FROM routes ORDER BY path",
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
            let (path, function, methods, created_at) = row?;
            let methods = serde_json::from_str(&methods)
                .with_context(|| format!("the methods of route {path} are not a JSON list"))?;
            out.push(StoredRoute {
                path,
                function,
                methods,
                created_at,
            });
        }
        Ok(out)
    };
    read().context("listing routes")
}

/// Removes the route at `path`; `false` if there was none.
pub(super) fn delete(conn: &Connection, path: &str) -> Result<bool> {
    let changed = conn
        .execute("DELETE FROM routes WHERE path = ?1", [path])
        .with_context(|| format!("deleting route {path}"))?;
    Ok(changed > 0)
}

#[cfg(test)]
mod tests {
    use super::super::SqliteStore;
    use super::super::testing::open_temp;
    use crate::store::{Store, StoredRoute};

    fn route(path: &str, function: &str, methods: &[&str]) -> StoredRoute {
        StoredRoute {
            path: path.into(),
            function: function.into(),
            methods: methods.iter().map(|m| m.to_string()).collect(),
            created_at: 1,
        }
    }

    #[tokio::test]
    async fn routes_are_added_replaced_listed_and_deleted_across_reopen() {
        let (_dir, path, store) = open_temp();
        assert!(store.put_route(&route("/b", "one", &[])).await.unwrap());
        assert!(
            store
                .put_route(&route("/a", "one", &["GET"]))
                .await
                .unwrap()
        );
        // The same path again replaces it.
        let replaced = route("/b", "two", &["GET", "POST"]);
        assert!(!store.put_route(&replaced).await.unwrap());
        store.close().await;

        let store = SqliteStore::open(&path).unwrap();
        let all = store.routes().await.unwrap();
        assert_eq!(all, vec![route("/a", "one", &["GET"]), replaced]);
        assert!(store.delete_route("/a").await.unwrap());
        assert!(!store.delete_route("/a").await.unwrap());
        assert_eq!(store.routes().await.unwrap().len(), 1);
    }
}

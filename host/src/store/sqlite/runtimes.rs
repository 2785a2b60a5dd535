//! Registered container runtimes (and saved runtime policies) in SQLite, each kept as
//! its JSON definition under its name.

use anyhow::{Context, Result};
use rusqlite::{Connection, params};

use super::now_ms;

/// Saves `definition` under `name`, replacing an older one.
pub(super) fn put(conn: &Connection, name: &str, definition: &serde_json::Value) -> Result<()> {
    conn.execute(
        "INSERT INTO runtimes (name, definition, created_at) VALUES (?1, ?2, ?3) \
         ON CONFLICT(name) DO UPDATE SET definition = excluded.definition",
        params![name, definition.to_string(), now_ms()],
    )
    .with_context(|| format!("saving runtime {name}"))?;
    Ok(())
}

/// Every saved definition, by name.
pub(super) fn all(conn: &Connection) -> Result<Vec<serde_json::Value>> {
    let read = || -> Result<Vec<serde_json::Value>> {
        let mut stmt = conn.prepare_cached("SELECT definition FROM runtimes ORDER BY name")?;
        let rows = stmt.query_map([], |row| row.get::<_, String>(0))?;
        let mut out = Vec::new();
        for text in rows {
            out.push(serde_json::from_str(&text?)?);
        }
        Ok(out)
    };
    read().context("listing runtimes")
}

/// Removes the definition saved under `name`; `false` if there was none.
pub(super) fn delete(conn: &Connection, name: &str) -> Result<bool> {
    let changed = conn
        .execute("DELETE FROM runtimes WHERE name = ?1", [name])
        .with_context(|| format!("deleting runtime {name}"))?;
    Ok(changed > 0)
}

#[cfg(test)]
mod tests {
    use super::super::SqliteStore;
    use super::super::testing::open_temp;
    use crate::store::Store;

    #[tokio::test]
    async fn runtimes_are_saved_replaced_listed_and_deleted_across_reopen() {
        let (_dir, path, store) = open_temp();
        let first = serde_json::json!({"name": "py", "image": "a", "run": "python3 x.py"});
        let second = serde_json::json!({"name": "py", "image": "b", "run": "python3 x.py"});
        store.put_runtime("py", &first).await.unwrap();
        store.put_runtime("py", &second).await.unwrap();
        store
            .put_runtime("alpha", &serde_json::json!({"name": "alpha"}))
            .await
            .unwrap();
        store.close().await;

        let store = SqliteStore::open(&path).unwrap();
        let all = store.runtimes().await.unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0]["name"], "alpha");
        assert_eq!(all[1]["image"], "b");
        assert!(store.delete_runtime("py").await.unwrap());
        assert!(!store.delete_runtime("py").await.unwrap());
        assert_eq!(store.runtimes().await.unwrap().len(), 1);
    }
}

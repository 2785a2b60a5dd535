//! Function versions in SQLite: adding, listing, updating status and config, and
//! deleting a function (hiding its versions).

use anyhow::{Context, Result, bail};
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, ValueRef};
use rusqlite::{Connection, Row, ToSql, TransactionBehavior, params};

use super::now_ms;
use crate::store::{FunctionVersion, SealedSecrets, VersionStatus};

const VERSION_COLUMNS: &str =
    "name, version, runtime, digest, size, config, status, status_message, created_at, secrets";

impl ToSql for VersionStatus {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(self.as_str().into())
    }
}

impl FromSql for VersionStatus {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        value
            .as_str()?
            .parse()
            .map_err(|message: String| FromSqlError::Other(message.into()))
    }
}

/// A version to add, as [`add`] takes it.
pub(super) struct NewVersion {
    pub name: String,
    pub runtime: String,
    pub digest: String,
    pub size: i64,
    pub config: serde_json::Value,
    pub secrets: SealedSecrets,
    pub status: VersionStatus,
}

/// Adds a version of function `name` numbered one more than any version the name
/// ever had.
pub(super) fn add(conn: &mut Connection, new: NewVersion) -> Result<FunctionVersion> {
    let NewVersion {
        name,
        runtime,
        digest,
        size,
        config,
        secrets,
        status,
    } = new;
    let name = name.as_str();
    let config_text = serde_json::to_string(&config).context("encoding function config")?;
    let secrets_text = match secrets.is_empty() {
        true => None,
        false => Some(serde_json::to_string(&secrets).context("encoding sealed secrets")?),
    };
    let created_at = now_ms();
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
         status, status_message, created_at, secrets) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, ?8, ?9)",
        params![
            name,
            version,
            runtime,
            digest,
            size,
            config_text,
            status,
            created_at,
            secrets_text
        ],
    )
    .with_context(|| format!("inserting version {version} of function {name}"))?;
    tx.commit()
        .with_context(|| format!("committing version {version} of function {name}"))?;
    Ok(FunctionVersion {
        name: name.to_owned(),
        version,
        runtime,
        digest,
        size,
        config,
        secrets,
        status,
        status_message: None,
        created_at,
    })
}

/// Sets the status and message of one version; fails if it does not exist.
pub(super) fn set_status(
    conn: &Connection,
    name: &str,
    version: i64,
    status: VersionStatus,
    message: Option<&str>,
) -> Result<()> {
    let changed = conn
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

/// Replaces the config of one version; fails if it does not exist.
pub(super) fn set_config(
    conn: &Connection,
    name: &str,
    version: i64,
    config: &serde_json::Value,
) -> Result<()> {
    let changed = conn
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

/// The newest version of every live function, sorted by name.
pub(super) fn current(conn: &Connection) -> Result<Vec<FunctionVersion>> {
    let sql = format!(
        "SELECT {VERSION_COLUMNS} FROM function_versions AS v \
         WHERE deleted_at IS NULL AND version = (SELECT MAX(version) \
         FROM function_versions WHERE name = v.name AND deleted_at IS NULL) \
         ORDER BY name"
    );
    let read = || -> rusqlite::Result<Vec<FunctionVersion>> {
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map([], version_from_row)?;
        rows.collect()
    };
    read().context("listing current function versions")
}

/// The live versions of function `name`, newest first.
pub(super) fn of_function(conn: &Connection, name: &str) -> Result<Vec<FunctionVersion>> {
    let sql = format!(
        "SELECT {VERSION_COLUMNS} FROM function_versions \
         WHERE name = ?1 AND deleted_at IS NULL ORDER BY version DESC"
    );
    let read = || -> rusqlite::Result<Vec<FunctionVersion>> {
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map([name], version_from_row)?;
        rows.collect()
    };
    read().with_context(|| format!("listing versions of function {name}"))
}

/// Hides every live version of `name` and erases their sealed secrets (a deleted
/// function is never served again); `false` if there was none.
pub(super) fn delete_function(conn: &Connection, name: &str) -> Result<bool> {
    let changed = conn
        .execute(
            "UPDATE function_versions SET deleted_at = ?2, secrets = NULL \
             WHERE name = ?1 AND deleted_at IS NULL",
            params![name, now_ms()],
        )
        .with_context(|| format!("deleting function {name}"))?;
    Ok(changed > 0)
}

fn version_from_row(row: &Row<'_>) -> rusqlite::Result<FunctionVersion> {
    let config: String = row.get(5)?;
    let secrets: Option<String> = row.get(9)?;
    let secrets = match secrets {
        None => SealedSecrets::default(),
        Some(text) => serde_json::from_str(&text).map_err(|err| {
            rusqlite::Error::FromSqlConversionFailure(9, rusqlite::types::Type::Text, err.into())
        })?,
    };
    Ok(FunctionVersion {
        name: row.get(0)?,
        version: row.get(1)?,
        runtime: row.get(2)?,
        digest: row.get(3)?,
        size: row.get(4)?,
        config: serde_json::from_str(&config).map_err(|err| {
            rusqlite::Error::FromSqlConversionFailure(5, rusqlite::types::Type::Text, err.into())
        })?,
        secrets,
        status: row.get(6)?,
        status_message: row.get(7)?,
        created_at: row.get(8)?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::open_connection;
    use super::super::testing::{call, open_temp};
    use crate::store::{CallStatus, SealedSecrets, Store, VersionStatus};
    use serde_json::json;

    fn none() -> SealedSecrets {
        SealedSecrets::default()
    }

    #[tokio::test]
    async fn sealed_secrets_read_back_and_go_with_a_delete() {
        let (_dir, path, store) = open_temp();
        let sealed = SealedSecrets([("API_KEY".to_string(), "v1.sealed".to_string())].into());
        let added = store
            .add_version(
                "hello",
                "wasm",
                "aa",
                10,
                &json!({}),
                &sealed,
                VersionStatus::Ready,
            )
            .await
            .unwrap();
        assert_eq!(added.secrets, sealed);
        assert_eq!(store.versions("hello").await.unwrap()[0].secrets, sealed);
        assert_eq!(store.current_versions().await.unwrap()[0].secrets, sealed);
        // Names only, in Debug: a version in a log line carries no ciphertext either.
        assert_eq!(format!("{:?}", added.secrets), r#"{"API_KEY"}"#);
        // Not in the config column: what shows a config cannot show a secret.
        let config: String = open_connection(&path)
            .unwrap()
            .query_row("SELECT config FROM function_versions", [], |row| row.get(0))
            .unwrap();
        assert!(!config.contains("sealed"), "{config}");

        assert!(store.delete_function("hello").await.unwrap());
        let left: Option<String> = open_connection(&path)
            .unwrap()
            .query_row("SELECT secrets FROM function_versions", [], |row| {
                row.get(0)
            })
            .unwrap();
        assert_eq!(left, None, "a deleted function's secrets are erased");
    }

    #[tokio::test]
    async fn versions_increase_and_delete_hides_function_but_keeps_calls() {
        let (_dir, _path, store) = open_temp();
        let config = json!({"memory_mb": 64});
        let v1 = store
            .add_version(
                "hello",
                "wasm",
                "aa",
                10,
                &config,
                &none(),
                VersionStatus::Ready,
            )
            .await
            .unwrap();
        let v2 = store
            .add_version(
                "hello",
                "wasm",
                "bb",
                20,
                &json!({}),
                &none(),
                VersionStatus::Pending,
            )
            .await
            .unwrap();
        store
            .add_version(
                "dice",
                "wasm",
                "cc",
                30,
                &config,
                &none(),
                VersionStatus::Ready,
            )
            .await
            .unwrap();
        assert_eq!((v1.version, v2.version), (1, 2));
        store
            .set_version_status("hello", 2, VersionStatus::Failed, Some("bad module"))
            .await
            .unwrap();
        assert!(
            store
                .set_version_status("hello", 9, VersionStatus::Ready, None)
                .await
                .is_err()
        );

        let current = store.current_versions().await.unwrap();
        let summary: Vec<_> = current
            .iter()
            .map(|v| (v.name.as_str(), v.version, v.status.as_str()))
            .collect();
        assert_eq!(summary, [("dice", 1, "ready"), ("hello", 2, "failed")]);
        assert_eq!(current[1].status_message.as_deref(), Some("bad module"));
        let versions = store.versions("hello").await.unwrap();
        assert_eq!(versions[1], v1, "stored version reads back unchanged");
        assert_eq!(
            versions.iter().map(|v| v.version).collect::<Vec<_>>(),
            [2, 1]
        );

        let record = call(store.next_call_num(), "hello", CallStatus::Done, false);
        store.record_call_durable(record.clone()).await.unwrap();

        assert!(store.delete_function("hello").await.unwrap());
        assert!(!store.delete_function("hello").await.unwrap());
        assert!(!store.delete_function("nobody").await.unwrap());
        let names: Vec<_> = store
            .current_versions()
            .await
            .unwrap()
            .into_iter()
            .map(|v| v.name)
            .collect();
        assert_eq!(names, ["dice"]);
        assert!(store.versions("hello").await.unwrap().is_empty());
        assert_eq!(store.get_call(&record.id).await.unwrap(), Some(record));

        let v3 = store
            .add_version(
                "hello",
                "wasm",
                "dd",
                40,
                &config,
                &none(),
                VersionStatus::Ready,
            )
            .await
            .unwrap();
        assert_eq!(
            v3.version, 3,
            "redeploy continues after the deleted versions"
        );
        assert_eq!(store.versions("hello").await.unwrap(), [v3]);
    }

    #[tokio::test]
    async fn every_version_status_round_trips_as_its_text() {
        let (_dir, path, store) = open_temp();
        let added = store
            .add_version(
                "hello",
                "wasm",
                "aa",
                10,
                &json!({}),
                &none(),
                VersionStatus::Pending,
            )
            .await
            .unwrap();
        for status in VersionStatus::ALL {
            store
                .set_version_status("hello", added.version, status, None)
                .await
                .unwrap();
            let read = store.versions("hello").await.unwrap();
            assert_eq!(read[0].status, status);
            // Stored as the same text as before the enum, so old databases still open.
            let text: String = open_connection(&path)
                .unwrap()
                .query_row(
                    "SELECT status FROM function_versions WHERE name = 'hello'",
                    [],
                    |row| row.get(0),
                )
                .unwrap();
            assert_eq!(text, status.as_str());
        }
    }

    #[tokio::test]
    async fn an_unknown_version_status_is_an_error() {
        let (_dir, path, store) = open_temp();
        open_connection(&path)
            .unwrap()
            .execute(
                "INSERT INTO function_versions (name, version, runtime, digest, size, config, \
                 status, created_at) VALUES ('hello', 1, 'wasm', 'aa', 10, '{}', 'building', 0)",
                [],
            )
            .unwrap();
        let err = store.versions("hello").await.unwrap_err();
        assert!(
            format!("{err:#}").contains("unknown version status \"building\""),
            "{err:#}"
        );
        assert!(store.current_versions().await.is_err());
    }
}

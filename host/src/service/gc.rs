//! Retention and cleanup: old call records, and the bundles, compiled artifacts and
//! function images no live version references.
//!
//! **Live** (never removed) is decided in one place, [`LiveSet`], from two sources:
//! - the store's [`referenced_versions`](crate::store::Store::referenced_versions):
//!   of every function not deleted, its versions being built (`pending`) and its
//!   newest `--keep-versions` ready versions (the serving one and its rollback
//!   targets);
//! - the engine's [`held`](newt_runtime::Invoker::held) versions: every version with
//!   a pool here or a call running now (an old version's last calls after a redeploy,
//!   a deleted function's call still in flight).
//!
//! A bundle (or artifact) shared by several versions is live if any of them is. An
//! image is live if its tag is the one a live version runs in; when a live version's
//! tag cannot be worked out (its runtime is gone, the engine did not answer), every
//! image of its function is kept.
//!
//! Races with deploys: a deploy stores its bundle (and compiles it) before it takes
//! the deploy lock and stores its version. A collection decides and removes under
//! that same lock, and spares bundles and artifacts written within [`GRACE`] (a
//! redeploy of bytes already stored makes their blob young again), so a bundle that
//! is being deployed is either young or already referenced. An image is built only
//! after its version is stored `pending`, which is live.
//!
//! Call records go in batches of [`RECORD_BATCH`] through the store's writer thread
//! with a pause between batches, so calls never wait on them; `pending` and `running`
//! calls are never deleted.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use newt_runtime::{DockerExecutor, HeldVersion};

use super::{Service, ServiceResult, WASM_RUNTIME};
use crate::api::error::ApiError;
use crate::store::{CallRetention, VersionRef, VersionStatus};

/// Bundles and artifacts younger than this are never removed: a deploy may be
/// between storing its bundle and storing its version.
pub const GRACE: Duration = Duration::from_secs(60);

/// Call records deleted per transaction.
pub const RECORD_BATCH: usize = 500;

/// The pause between two batches of deleted records, so the writer thread serves
/// the calls' records in between.
const RECORD_PAUSE: Duration = Duration::from_millis(20);

/// Most items a report lists (the totals count every item); a host with more
/// garbage than this lists the first ones by kind and name.
const MAX_ITEMS: usize = 10_000;

/// What retention keeps and how often it runs (`newt serve` flags).
#[derive(Clone, Debug, PartialEq)]
pub struct GcSettings {
    /// Call records older than this go (`--retain-calls`, default 7 days).
    pub retain_calls: Duration,
    /// Each function keeps at most its newest this many records
    /// (`--retain-calls-per-function`, default 10 000).
    pub retain_calls_per_function: usize,
    /// Ready versions kept per function, the serving one included: the rollback
    /// targets (`--keep-versions`, default 5).
    pub keep_versions: usize,
    /// How often the background collection runs (`--gc-interval`, default 1 h).
    pub interval: Duration,
}

impl Default for GcSettings {
    fn default() -> Self {
        GcSettings {
            retain_calls: Duration::from_secs(7 * 24 * 3600),
            retain_calls_per_function: 10_000,
            keep_versions: 5,
            interval: Duration::from_secs(3600),
        }
    }
}

/// One thing a collection removes (or would).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcItem {
    /// `bundle`, `artifact` or `image`.
    pub kind: String,
    /// A bundle's digest, an artifact's file name, an image's tag.
    pub name: String,
    /// Bytes it frees.
    pub bytes: u64,
    /// Why it goes: `function deleted`, `replaced version`, `failed build`,
    /// `stale engine` (an artifact another wasmtime build made), `not deployed` (a
    /// bundle no version ever named: a deploy that failed after storing it).
    pub why: String,
    /// Set when removing it failed (e.g. a container still uses the image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Count and bytes of one kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcTotal {
    /// How many.
    pub count: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// What a collection removed, or with `dry_run`, would remove.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    /// Nothing was removed: this is what would go.
    pub dry_run: bool,
    /// Per kind (`records`, `bundles`, `artifacts`, `images`): count and bytes.
    pub kinds: BTreeMap<String, GcTotal>,
    /// Everything but records, by kind and name (at most 10 000).
    pub items: Vec<GcItem>,
    /// All kinds together.
    pub total: GcTotal,
    /// What was skipped and why (Docker not reachable, removals that failed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// Disk used by one kind of state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskUse {
    /// Bytes.
    pub bytes: u64,
    /// Files or images (for the database: its files).
    pub count: u64,
    /// Why it could not be measured (images without a Docker engine).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET /v1/status`: disk used by each kind, and what the store holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusView {
    /// Where the state lives.
    pub home: String,
    /// Disk used per kind: `db`, `cas`, `cache`, `images`.
    pub disk: BTreeMap<String, DiskUse>,
    /// Live functions.
    pub functions: u64,
    /// Their versions.
    pub versions: u64,
    /// Call records.
    pub calls: u64,
    /// The retention settings in force.
    pub retention: RetentionView,
}

/// The retention settings, as `GET /v1/status` shows them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionView {
    /// `--retain-calls`, in seconds.
    pub retain_calls_secs: u64,
    /// `--retain-calls-per-function`.
    pub retain_calls_per_function: usize,
    /// `--keep-versions`.
    pub keep_versions: usize,
    /// `--gc-interval`, in seconds.
    pub gc_interval_secs: u64,
}

/// A retention duration: what `parse_duration` takes (`ms`, `s`, `m`, `h`) or days
/// (`7d`), more than zero.
pub fn parse_retention(text: &str) -> Result<Duration, String> {
    let duration = match text.trim().strip_suffix('d') {
        Some(days) => days
            .parse::<u64>()
            .ok()
            .and_then(|d| d.checked_mul(24 * 3600))
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{text:?} is not a number of days like 7d"))?,
        None => newt_runtime::parse_duration(text)?,
    };
    if duration.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(duration)
}

/// What every collection removed since the start, for `/metrics`.
#[derive(Debug, Default)]
struct Removed {
    /// Count and bytes per kind, in [`KINDS`] order.
    counts: [(AtomicU64, AtomicU64); 4],
    runs: AtomicU64,
}

/// The kinds, in the order reports and metrics list them.
const KINDS: [&str; 4] = ["records", "bundles", "artifacts", "images"];

/// Retention for one service: its settings, its home, the engine's images.
#[derive(Debug)]
pub struct Collector {
    home: PathBuf,
    docker: Option<Arc<DockerExecutor>>,
    settings: Mutex<GcSettings>,
    /// One collection at a time (the background task and `POST /v1/gc`).
    running: tokio::sync::Mutex<()>,
    removed: Removed,
}

/// The versions whose bundles, artifacts and images must stay.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LiveSet {
    /// Bundle digests of live versions.
    pub digests: BTreeSet<String>,
    /// Live container versions: (function, runtime, digest), to work out their
    /// image tags.
    pub containers: BTreeSet<(String, String, String)>,
}

impl LiveSet {
    /// The live set from what the store references and what the engine holds: the
    /// one definition of "live" (see the module docs).
    pub fn new(referenced: &[VersionRef], held: &[HeldVersion]) -> LiveSet {
        let mut live = LiveSet::default();
        let versions = referenced
            .iter()
            .map(|v| (&v.name, &v.runtime, &v.digest))
            .chain(held.iter().map(|h| (&h.function, &h.runtime, &h.digest)));
        for (name, runtime, digest) in versions {
            live.digests.insert(digest.clone());
            if runtime != WASM_RUNTIME {
                live.containers
                    .insert((name.clone(), runtime.clone(), digest.clone()));
            }
        }
        live
    }
}

/// Why an unreferenced bundle (or its artifact) goes, from every version that named
/// it: all of them deleted, all of the live ones failed builds, or replaced.
pub fn why_unreferenced(digest: &str, versions: &[VersionRef]) -> &'static str {
    let mut named = versions.iter().filter(|v| v.digest == digest).peekable();
    if named.peek().is_none() {
        return "not deployed";
    }
    let live: Vec<_> = named.filter(|v| !v.deleted).collect();
    if live.is_empty() {
        "function deleted"
    } else if live.iter().all(|v| v.status == VersionStatus::Failed) {
        "failed build"
    } else {
        "replaced version"
    }
}

/// Why an unreferenced image of `function` goes.
fn why_image(function: &str, versions: &[VersionRef]) -> &'static str {
    // Every version of the function deleted (or none known): the function is gone.
    if versions
        .iter()
        .filter(|v| v.name == function)
        .all(|v| v.deleted)
    {
        "function deleted"
    } else {
        "replaced version"
    }
}

/// Whether a file written at `modified` is still within [`GRACE`] of `now`.
fn is_young(modified: SystemTime, now: SystemTime) -> bool {
    match now.duration_since(modified) {
        Ok(age) => age < GRACE,
        // From the future (a clock set back): young.
        Err(_) => true,
    }
}

impl Collector {
    /// Retention for the service on `home`, with the engine's images if there is a
    /// Docker executor.
    pub fn new(home: PathBuf, docker: Option<Arc<DockerExecutor>>) -> Collector {
        Collector {
            home,
            docker,
            settings: Mutex::new(GcSettings::default()),
            running: tokio::sync::Mutex::new(()),
            removed: Removed::default(),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> GcSettings {
        self.settings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the settings (before the background task starts).
    pub fn set_settings(&self, settings: GcSettings) {
        *self.settings.lock().unwrap_or_else(PoisonError::into_inner) = settings;
    }

    /// Runs a collection every `interval` until the service stops. The first runs
    /// one interval after the start.
    pub fn spawn(self: &Arc<Self>, service: &Arc<Service>) {
        let (collector, service) = (self.clone(), Arc::downgrade(service));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(collector.settings().interval).await;
                let Some(service) = service.upgrade() else {
                    return;
                };
                if service.is_stopping() {
                    return;
                }
                match collector.collect(&service, false).await {
                    Ok(report) if report.total.count > 0 => tracing::info!(
                        records = report.kinds.get("records").map_or(0, |t| t.count),
                        bundles = report.kinds.get("bundles").map_or(0, |t| t.count),
                        artifacts = report.kinds.get("artifacts").map_or(0, |t| t.count),
                        images = report.kinds.get("images").map_or(0, |t| t.count),
                        bytes = report.total.bytes,
                        notes = ?report.notes,
                        "retention removed what nothing references"
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::warn!("retention failed; next try in one interval: {e:?}"),
                }
            }
        });
    }

    /// Removes (or, with `dry_run`, lists) old call records and every bundle,
    /// compiled artifact and function image no live version references.
    pub async fn collect(&self, service: &Service, dry_run: bool) -> ServiceResult<GcReport> {
        let _one_at_a_time = self.running.lock().await;
        let settings = self.settings();
        let mut report = GcReport {
            dry_run,
            ..GcReport::default()
        };
        for kind in KINDS {
            report.kinds.insert(kind.to_string(), GcTotal::default());
        }

        // Records.
        let cutoff = SystemTime::now()
            .checked_sub(settings.retain_calls)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let rule = CallRetention {
            created_before_ms: cutoff
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            keep_per_function: settings.retain_calls_per_function.max(1),
        };
        let records = if dry_run {
            service.store.prunable_calls(&rule).await?
        } else {
            let mut total = crate::store::PrunableCalls::default();
            loop {
                let batch = service.store.prune_calls(&rule, RECORD_BATCH).await?;
                total.count += batch.count;
                total.bytes += batch.bytes;
                if (batch.count as usize) < RECORD_BATCH || service.is_stopping() {
                    break;
                }
                tokio::time::sleep(RECORD_PAUSE).await;
            }
            total
        };
        report.kinds.insert(
            "records".into(),
            GcTotal {
                count: records.count,
                bytes: records.bytes,
            },
        );

        // Bundles, artifacts and images: decided and removed under the deploy lock,
        // so no version is stored meanwhile (see the module docs).
        let _no_deploys = service.deploy_lock.lock().await;
        let referenced = service
            .store
            .referenced_versions(settings.keep_versions)
            .await?;
        let held = service.invoker.held();
        let live = LiveSet::new(&referenced, &held);
        let versions = service.store.all_versions().await?;
        let now = SystemTime::now();
        let mut items = Vec::new();

        let cas = service.invoker.cas().clone();
        let blobs = tokio::task::spawn_blocking(move || cas.list())
            .await
            .map_err(|e| anyhow::anyhow!("listing the content store: {e}"))?
            .map_err(|e| anyhow::anyhow!("listing the content store: {e}"))?;
        for blob in blobs {
            if live.digests.contains(blob.digest.as_str()) || is_young(blob.modified, now) {
                continue;
            }
            items.push(GcItem {
                kind: "bundle".into(),
                why: why_unreferenced(blob.digest.as_str(), &versions).into(),
                name: blob.digest.to_string(),
                bytes: blob.bytes,
                error: None,
            });
        }

        let artifacts = service
            .invoker
            .cached_artifacts()
            .map_err(|e| anyhow::anyhow!("listing compiled artifacts: {e}"))?;
        for artifact in artifacts {
            let why = if !artifact.current_engine {
                // Never loaded again by this engine, whatever its age.
                "stale engine"
            } else if live.digests.contains(artifact.digest.as_str())
                || is_young(artifact.modified, now)
            {
                continue;
            } else {
                why_unreferenced(artifact.digest.as_str(), &versions)
            };
            items.push(GcItem {
                kind: "artifact".into(),
                name: artifact.file,
                bytes: artifact.bytes,
                why: why.into(),
                error: None,
            });
        }

        if let Some(docker) = &self.docker {
            match self.unreferenced_images(docker, &live, &versions).await {
                Ok(images) => items.extend(images),
                Err(e) => report.notes.push(format!(
                    "images skipped: the Docker engine did not answer ({e})"
                )),
            }
        }

        if !dry_run {
            for item in &mut items {
                if let Err(e) = self.remove(service, item).await {
                    report
                        .notes
                        .push(format!("{} {} kept: {e}", item.kind, item.name));
                    item.error = Some(e);
                }
            }
        }
        drop(_no_deploys);

        for item in &items {
            if item.error.is_some() {
                continue;
            }
            let total = report.kinds.entry(format!("{}s", item.kind)).or_default();
            total.count += 1;
            total.bytes += item.bytes;
        }
        for total in report.kinds.values() {
            report.total.count += total.count;
            report.total.bytes += total.bytes;
        }
        items.sort_by(|a, b| (&a.kind, &a.name).cmp(&(&b.kind, &b.name)));
        items.truncate(MAX_ITEMS);
        report.items = items;
        if !dry_run {
            self.count_removed(&report);
        }
        Ok(report)
    }

    /// Function images of this host that no live version runs in.
    async fn unreferenced_images(
        &self,
        docker: &DockerExecutor,
        live: &LiveSet,
        versions: &[VersionRef],
    ) -> newt_runtime::Result<Vec<GcItem>> {
        let images = docker.function_images().await?;
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let mut live_tags = BTreeSet::new();
        // Functions with a live version whose tag is unknown: all their images stay.
        let mut uncertain = BTreeSet::new();
        for (function, runtime, digest) in &live.containers {
            match docker.function_image_tag(function, runtime, digest).await {
                Ok(Some(tag)) => {
                    live_tags.insert(tag);
                }
                Ok(None) | Err(_) => {
                    uncertain.insert(function.clone());
                }
            }
        }
        Ok(images
            .into_iter()
            .filter(|image| !live_tags.contains(&image.tag) && !uncertain.contains(&image.function))
            .map(|image| GcItem {
                kind: "image".into(),
                why: why_image(&image.function, versions).into(),
                name: image.tag,
                bytes: image.bytes,
                error: None,
            })
            .collect())
    }

    /// Removes one item; the error says why it stays.
    async fn remove(&self, service: &Service, item: &GcItem) -> Result<(), String> {
        let removed = match item.kind.as_str() {
            "bundle" => {
                let digest = newt_runtime::Digest::parse(&item.name)
                    .ok_or_else(|| format!("{:?} is not a digest", item.name))?;
                service.invoker.cas().remove(&digest).map(drop)
            }
            "artifact" => service.invoker.remove_cached_artifact(&item.name).map(drop),
            "image" => match &self.docker {
                Some(docker) => docker.remove_function_image(&item.name).await.map(drop),
                None => return Err("no Docker executor".into()),
            },
            other => return Err(format!("unknown kind {other}")),
        };
        removed.map_err(|e| e.to_string())
    }

    fn count_removed(&self, report: &GcReport) {
        for (i, kind) in KINDS.iter().enumerate() {
            if let Some(total) = report.kinds.get(*kind) {
                let (count, bytes) = &self.removed.counts[i];
                count.fetch_add(total.count, Ordering::Relaxed);
                bytes.fetch_add(total.bytes, Ordering::Relaxed);
            }
        }
        self.removed.runs.fetch_add(1, Ordering::Relaxed);
    }

    /// Appends what collections removed since the start to the `/metrics` text.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(
            out,
            "# HELP newt_gc_removed_total Things retention removed, by kind (records, \
             bundles, artifacts, images).\n# TYPE newt_gc_removed_total counter"
        );
        for (i, kind) in KINDS.iter().enumerate() {
            let n = self.removed.counts[i].0.load(Ordering::Relaxed);
            let _ = writeln!(out, "newt_gc_removed_total{{kind=\"{kind}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP newt_gc_removed_bytes_total Bytes retention freed, by kind.\n\
             # TYPE newt_gc_removed_bytes_total counter"
        );
        for (i, kind) in KINDS.iter().enumerate() {
            let n = self.removed.counts[i].1.load(Ordering::Relaxed);
            let _ = writeln!(out, "newt_gc_removed_bytes_total{{kind=\"{kind}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP newt_gc_runs_total Retention runs that removed (not dry runs).\n\
             # TYPE newt_gc_runs_total counter\nnewt_gc_runs_total {}",
            self.removed.runs.load(Ordering::Relaxed)
        );
    }

    /// Disk used by each kind of state, and what the store holds.
    pub async fn status(&self, service: &Service) -> ServiceResult<StatusView> {
        let settings = self.settings();
        let mut disk = BTreeMap::new();
        let mut db = DiskUse::default();
        for name in ["newt.db", "newt.db-wal", "newt.db-shm"] {
            if let Ok(meta) = std::fs::metadata(self.home.join(name)) {
                db.bytes += meta.len();
                db.count += 1;
            }
        }
        disk.insert("db".to_string(), db);
        let cas = service.invoker.cas().clone();
        let blobs = tokio::task::spawn_blocking(move || cas.list())
            .await
            .map_err(|e| anyhow::anyhow!("listing the content store: {e}"))?
            .map_err(|e| anyhow::anyhow!("listing the content store: {e}"))?;
        disk.insert(
            "cas".to_string(),
            DiskUse {
                bytes: blobs.iter().map(|b| b.bytes).sum(),
                count: blobs.len() as u64,
                error: None,
            },
        );
        let artifacts = service
            .invoker
            .cached_artifacts()
            .map_err(|e| anyhow::anyhow!("listing compiled artifacts: {e}"))?;
        disk.insert(
            "cache".to_string(),
            DiskUse {
                bytes: artifacts.iter().map(|a| a.bytes).sum(),
                count: artifacts.len() as u64,
                error: None,
            },
        );
        let images = match &self.docker {
            Some(docker) => match docker.function_images().await {
                Ok(images) => DiskUse {
                    bytes: images.iter().map(|i| i.bytes).sum(),
                    count: images.len() as u64,
                    error: None,
                },
                Err(e) => DiskUse {
                    error: Some(e.to_string()),
                    ..DiskUse::default()
                },
            },
            None => DiskUse {
                error: Some("no Docker executor".into()),
                ..DiskUse::default()
            },
        };
        disk.insert("images".to_string(), images);
        let counts = service.store.counts().await?;
        Ok(StatusView {
            home: self.home.display().to_string(),
            disk,
            functions: counts.functions,
            versions: counts.versions,
            calls: counts.calls,
            retention: RetentionView {
                retain_calls_secs: settings.retain_calls.as_secs(),
                retain_calls_per_function: settings.retain_calls_per_function,
                keep_versions: settings.keep_versions,
                gc_interval_secs: settings.interval.as_secs(),
            },
        })
    }
}

impl Service {
    /// This service's retention, or 503 when it was built without one.
    pub fn collector(&self) -> ServiceResult<&Arc<Collector>> {
        self.gc.get().ok_or_else(|| {
            ApiError::Unavailable(
                "retention is not set up in this server (it is built by newt serve)".into(),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(name: &str, n: i64, runtime: &str, digest: &str) -> VersionRef {
        VersionRef {
            name: name.into(),
            version: n,
            runtime: runtime.into(),
            digest: digest.into(),
            status: VersionStatus::Ready,
            deleted: false,
        }
    }

    fn held(name: &str, n: i64, runtime: &str, digest: &str) -> HeldVersion {
        HeldVersion {
            function: name.into(),
            version: n,
            runtime: runtime.into(),
            digest: digest.into(),
            calls_in_flight: 1,
        }
    }

    #[test]
    fn live_is_what_the_store_references_and_what_the_engine_holds() {
        let referenced = [
            version("a", 3, "wasm", "d-a3"),
            version("py", 2, "python", "d-py2"),
        ];
        // A deleted function's call still running, and an old version's.
        let running = [
            held("gone", 1, "wasm", "d-gone"),
            held("py", 1, "python", "d-py1"),
        ];
        let live = LiveSet::new(&referenced, &running);
        let digests: Vec<_> = live.digests.iter().map(String::as_str).collect();
        assert_eq!(digests, ["d-a3", "d-gone", "d-py1", "d-py2"]);
        // Only container versions have images to look for.
        let containers: Vec<_> = live.containers.iter().map(|c| c.2.as_str()).collect();
        assert_eq!(containers, ["d-py1", "d-py2"]);
        assert_eq!(LiveSet::new(&[], &[]), LiveSet::default());
    }

    #[test]
    fn a_bundle_shared_by_a_live_and_a_deleted_version_is_live() {
        let mut gone = version("gone", 1, "wasm", "shared");
        gone.deleted = true;
        let referenced = [version("a", 1, "wasm", "shared")];
        let live = LiveSet::new(&referenced, &[]);
        assert!(live.digests.contains("shared"));
        // Why each unreferenced bundle goes.
        let mut failed = version("b", 2, "python", "d-failed");
        failed.status = VersionStatus::Failed;
        let mut deleted = version("c", 1, "wasm", "d-deleted");
        deleted.deleted = true;
        let replaced = version("b", 1, "python", "d-old");
        let versions = [gone, failed, deleted.clone(), replaced];
        assert_eq!(why_unreferenced("d-failed", &versions), "failed build");
        assert_eq!(why_unreferenced("d-deleted", &versions), "function deleted");
        assert_eq!(why_unreferenced("d-old", &versions), "replaced version");
        assert_eq!(why_unreferenced("d-never", &versions), "not deployed");
        assert_eq!(why_image("c", &versions), "function deleted");
        assert_eq!(why_image("b", &versions), "replaced version");
    }

    #[test]
    fn retention_durations_take_days() {
        assert_eq!(parse_retention("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_retention("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_retention("90m"), Ok(Duration::from_secs(5400)));
        assert!(parse_retention("0d").is_err());
        assert!(parse_retention("xd").is_err());
        assert!(parse_retention("1w").is_err());
    }

    #[test]
    fn files_within_the_grace_period_are_young() {
        let now = SystemTime::now();
        assert!(is_young(now, now));
        assert!(is_young(now - GRACE / 2, now));
        assert!(!is_young(now - GRACE * 2, now));
        // A clock that went back: the file looks from the future, so it is kept.
        assert!(is_young(now + GRACE, now));
    }
}

//! The server's shared state and the life of a call: from an accepted request to a
//! recorded outcome. Used by the sync and async API paths and by recovery at start.

use bytes::Bytes;
use dashmap::DashMap;
use newt_runtime::{
    CallOutcome, CallRequest, CallResult, ContainerRuntime, DockerExecutor, FunctionSpec, Invoker,
    Limits, Policy,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::Semaphore;

use crate::store::{CallRecord, CallStatus, FunctionVersion, SharedStore, VersionStatus};

/// Limits and settings of a running server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Largest bundle accepted by a deploy, in bytes.
    pub max_bundle_bytes: usize,
    /// Largest call input accepted, in bytes.
    pub max_input_bytes: usize,
    /// When set, every `/v1` route requires `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Async calls running at once; the rest wait, `pending`.
    pub async_concurrency: usize,
    /// Async calls accepted but not finished; beyond this new ones get 429.
    pub max_async_backlog: usize,
}

/// Everything the handlers share.
pub struct AppState {
    /// Durable state.
    pub store: SharedStore,
    /// The engine.
    pub invoker: Invoker,
    /// The newest version of every function (what `GET` shows), loaded at start.
    pub functions: DashMap<String, FunctionVersion>,
    /// The newest *ready* version of every function: what calls run. Differs from
    /// `functions` while a container function's new version is being built.
    pub serving: DashMap<String, FunctionVersion>,
    /// The container executor, for runtimes and health.
    pub docker: Arc<DockerExecutor>,
    /// The policy of each runtime (`wasm` included); functions override fields.
    pub runtime_policies: DashMap<String, Policy>,
    /// Counters for `/metrics`.
    pub metrics: crate::metrics::Metrics,
    /// Server settings.
    pub config: ServerConfig,
    /// Serialises deploys and deletes, so versions are assigned in request order.
    pub deploy_lock: tokio::sync::Mutex<()>,
    async_slots: Arc<Semaphore>,
    async_backlog: AtomicUsize,
}

/// The state as handlers hold it.
pub type SharedState = Arc<AppState>;

/// What a function version keeps in the store's opaque `config` column.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FunctionConfig {
    /// Per-call limits.
    #[serde(default)]
    pub limits: Limits,
    /// Policy fields this function overrides over its runtime's policy (a JSON
    /// object; empty = the runtime's policy as it is).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub policy: serde_json::Map<String, serde_json::Value>,
}

/// The name under which the wasm runtime's policy is kept in the runtimes table.
pub const WASM_RUNTIME: &str = "wasm";

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A version's config column, read leniently (defaults for what is missing).
pub fn config_of(version: &FunctionVersion) -> FunctionConfig {
    // Read in place: this runs on every call, and cloning the JSON tree cost more than
    // parsing it.
    <FunctionConfig as serde::Deserialize>::deserialize(&version.config).unwrap_or_default()
}

/// The engine's view of a stored function version.
pub fn spec_of(version: &FunctionVersion) -> FunctionSpec {
    let config = config_of(version);
    FunctionSpec {
        name: version.name.clone(),
        version: version.version,
        runtime: version.runtime.clone(),
        digest: version.digest.clone(),
        limits: config.limits,
    }
}

impl AppState {
    /// State over an opened store and a ready invoker; loads the functions and the
    /// registered container runtimes.
    pub async fn new(
        store: SharedStore,
        invoker: Invoker,
        docker: Arc<DockerExecutor>,
        config: ServerConfig,
    ) -> anyhow::Result<Self> {
        let runtime_policies = DashMap::new();
        let python = ContainerRuntime::builtin_python();
        runtime_policies.insert(
            python.name.clone(),
            python.policy.clone().unwrap_or_default(),
        );
        docker.register_runtime(python.clone());
        for definition in store.runtimes().await? {
            let name = definition["name"].as_str().unwrap_or_default().to_string();
            let policy = serde_json::from_value::<Policy>(definition["policy"].clone()).ok();
            if name == WASM_RUNTIME || name == python.name {
                // Built-ins keep their definition; only their policy is saved.
                if let Some(policy) = policy {
                    runtime_policies.insert(name, policy);
                }
                continue;
            }
            match serde_json::from_value::<ContainerRuntime>(definition) {
                Ok(runtime) => {
                    runtime_policies.insert(name, runtime.policy.clone().unwrap_or_default());
                    docker.register_runtime(runtime);
                }
                Err(e) => tracing::warn!("ignoring an unreadable saved runtime: {e}"),
            }
        }
        for entry in runtime_policies.iter() {
            docker.set_runtime_policy(entry.key(), entry.value().clone());
        }
        let functions = DashMap::new();
        let serving = DashMap::new();
        for version in store.current_versions().await? {
            let ready = if version.status == VersionStatus::Ready {
                Some(version.clone())
            } else {
                store
                    .versions(&version.name)
                    .await?
                    .into_iter()
                    .find(|v| v.status == VersionStatus::Ready)
            };
            if let Some(ready) = ready {
                serving.insert(ready.name.clone(), ready);
            }
            functions.insert(version.name.clone(), version);
        }
        Ok(AppState {
            store,
            invoker,
            functions,
            serving,
            docker,
            runtime_policies,
            metrics: crate::metrics::Metrics::default(),
            async_slots: Arc::new(Semaphore::new(config.async_concurrency.max(1))),
            async_backlog: AtomicUsize::new(0),
            config,
            deploy_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// A new call record for `function`, not yet stored.
    pub fn new_call(&self, function: &FunctionVersion, input: Bytes, is_async: bool) -> CallRecord {
        CallRecord {
            id: uuid::Uuid::now_v7().to_string(),
            num: self.store.next_call_num(),
            function: function.name.clone(),
            version: function.version,
            status: CallStatus::Pending,
            is_async,
            input: input.to_vec(),
            output: None,
            error: None,
            logs: Vec::new(),
            start: None,
            queue_us: None,
            init_us: None,
            exec_us: None,
            created_at: now_ms(),
            started_at: None,
            finished_at: None,
        }
    }

    /// Runs a call and records it: `running` when it starts, its outcome when it ends.
    /// Both writes are write-behind; the caller never waits on the disk.
    pub async fn run_call(
        &self,
        mut record: CallRecord,
        spec: &FunctionSpec,
    ) -> Result<CallOutcome, newt_runtime::Error> {
        record.status = CallStatus::Running;
        record.version = spec.version;
        record.started_at = Some(now_ms());
        self.store.record_call(record.clone()).await;

        let request = CallRequest {
            call_id: record.id.clone(),
            input: Bytes::copy_from_slice(&record.input),
        };
        let started = std::time::Instant::now();
        let outcome = self.invoker.invoke(spec, request).await;
        record.finished_at = Some(now_ms());
        let (status, start) = match &outcome {
            Ok(o) => (
                match o.result {
                    CallResult::Done => "done",
                    CallResult::Failed(_) => "failed",
                    CallResult::Timeout(_) => "timeout",
                },
                Some(o.start),
            ),
            Err(_) => ("error", None),
        };
        self.metrics
            .record_call(&spec.name, status, start, started.elapsed());
        match &outcome {
            Ok(outcome) => {
                let (status, error) = match &outcome.result {
                    CallResult::Done => (CallStatus::Done, None),
                    CallResult::Failed(m) => (CallStatus::Failed, Some(m.clone())),
                    CallResult::Timeout(m) => (CallStatus::Timeout, Some(m.clone())),
                };
                record.status = status;
                record.error = error;
                record.output = Some(outcome.output.to_vec());
                record.logs = outcome.logs.to_vec();
                record.start = Some(outcome.start);
                record.queue_us = Some(outcome.timings.queue.as_micros() as i64);
                record.init_us = Some(outcome.timings.init.as_micros() as i64);
                record.exec_us = Some(outcome.timings.exec.as_micros() as i64);
            }
            Err(e) => {
                record.status = CallStatus::Failed;
                record.error = Some(e.to_string());
            }
        }
        self.store.record_call(record).await;
        outcome
    }

    /// Accounts for one more accepted async call, or says the backlog is full.
    pub fn reserve_async(&self) -> bool {
        let max = self.config.max_async_backlog;
        self.async_backlog
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives back a slot taken by [`AppState::reserve_async`].
    pub fn release_async(&self) {
        self.async_backlog.fetch_sub(1, Ordering::AcqRel);
    }

    /// Runs an accepted async call in the background, at most `async_concurrency` at
    /// once, with the function's newest version.
    pub fn spawn_async(self: &Arc<Self>, record: CallRecord) {
        let state = self.clone();
        tokio::spawn(async move {
            let permit = state.async_slots.clone().acquire_owned().await;
            let current = state.serving.get(&record.function).map(|f| f.clone());
            match current {
                Some(function) => {
                    let spec = spec_of(&function);
                    if let Err(e) = state.run_call(record, &spec).await {
                        tracing::warn!("async call failed to run: {e}");
                    }
                }
                None => {
                    let mut record = record;
                    record.status = CallStatus::Failed;
                    record.error = Some(format!(
                        "function `{}` was deleted before the call ran",
                        record.function
                    ));
                    record.finished_at = Some(now_ms());
                    state.store.record_call(record).await;
                }
            }
            drop(permit);
            state.release_async();
        });
    }

    /// The policy of a runtime.
    pub fn runtime_policy(&self, runtime: &str) -> Policy {
        self.runtime_policies
            .get(runtime)
            .map(|p| p.clone())
            .unwrap_or_default()
    }

    /// A function's policy: its runtime's, with the function's overrides on top.
    pub fn effective_policy(&self, version: &FunctionVersion) -> Policy {
        let base = self.runtime_policy(&version.runtime);
        let overrides = config_of(version).policy;
        base.patched(&serde_json::Value::Object(overrides))
            .unwrap_or(base)
    }

    /// Hands a function's policy to its pool, and starts filling `min_warm` now when
    /// the policy asks for instances ahead of calls.
    pub fn apply_policy(self: &Arc<Self>, name: &str) {
        let Some(version) = self.serving.get(name).map(|v| v.clone()) else {
            return;
        };
        let policy = self.effective_policy(&version);
        let fill = policy.min_warm > 0 && policy.preload == newt_runtime::Preload::Function;
        self.invoker.set_policy(name, policy);
        if fill {
            let state = self.clone();
            tokio::spawn(async move {
                if let Err(e) = state.invoker.preload(&spec_of(&version)).await {
                    tracing::warn!(function = %version.name, "could not preload: {e}");
                }
            });
        }
    }

    /// Builds a pending container version in the background (or now, awaited, when
    /// the caller wants the result) and records `ready` or `failed` with the reason.
    pub async fn build_version(self: &Arc<Self>, version: FunctionVersion) -> FunctionVersion {
        let spec = spec_of(&version);
        let started = std::time::Instant::now();
        // Preparing installs the version's pool too, so its first call does not pay
        // for the image checks and unpacking again.
        let built = self.invoker.preload(&spec).await;
        let (status, message) = match &built {
            Ok(()) => (VersionStatus::Ready, None),
            Err(e) => (VersionStatus::Failed, Some(e.to_string())),
        };
        tracing::info!(
            function = %version.name,
            version = version.version,
            status = status.as_str(),
            secs = started.elapsed().as_secs_f32(),
            "build finished"
        );
        let saved = self
            .store
            .set_version_status(&version.name, version.version, status, message.as_deref())
            .await;
        if let Err(e) = saved {
            tracing::error!(function = %version.name, "could not record the build status: {e:#}");
        }
        let mut version = version;
        version.status = status;
        version.status_message = message;
        // Only if no newer deploy or delete happened meanwhile.
        let _guard = self.deploy_lock.lock().await;
        let newest = self.functions.get(&version.name).map(|f| f.version);
        if newest == Some(version.version) {
            self.functions.insert(version.name.clone(), version.clone());
            if status == VersionStatus::Ready {
                self.serving.insert(version.name.clone(), version.clone());
            }
        }
        drop(_guard);
        if status == VersionStatus::Ready {
            self.apply_policy(&version.name);
        }
        version
    }

    /// At start: fails calls a dead process left running and runs the accepted async
    /// calls that never started.
    pub async fn recover(self: &Arc<Self>) -> anyhow::Result<()> {
        let recovery = self.store.recover().await?;
        if recovery.interrupted > 0 {
            tracing::warn!(
                calls = recovery.interrupted,
                "calls interrupted by the previous process marked failed"
            );
        }
        let pending = recovery.pending.len();
        for record in recovery.pending {
            self.async_backlog.fetch_add(1, Ordering::AcqRel);
            self.spawn_async(record);
        }
        if pending > 0 {
            tracing::info!(calls = pending, "resuming accepted async calls");
        }
        let ready: Vec<String> = self.serving.iter().map(|v| v.name.clone()).collect();
        for name in ready {
            self.apply_policy(&name);
        }
        // Builds a dead process left unfinished start again.
        for function in self.functions.iter() {
            if function.status == VersionStatus::Pending {
                let (state, version) = (self.clone(), function.clone());
                tokio::spawn(async move { state.build_version(version).await });
            }
        }
        Ok(())
    }
}

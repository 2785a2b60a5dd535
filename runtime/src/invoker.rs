//! The invoker: the engine's one entry point for the host. It maps a runtime to the
//! executor that runs it, a function to the pool of its current version, and a
//! runtime to its runtime-level pool.
//!
//! The host hands it a [`FunctionSpec`] (resolved once per version: limits and
//! policy), a [`CallRequest`] and one absolute deadline; the invoker prepares the
//! version on first use (compile or load from cache, or build an image), keeps one
//! pool per function and replaces it (draining the old one) when a newer version
//! arrives. Everything backend-specific (checking an upload, runtimes, health) is
//! asked of the executors through it, so the host never branches on a backend.
//!
//! Once the host names a function's serving version ([`Invoker::serve`], on every
//! deploy, rollback and restart), that version alone owns the function's pool and
//! only `serve` changes it, older or newer: a call of another version (`FN@3`, an
//! alias, a call that read the function just before a switch) runs on a pool of its
//! own version, made on demand and drained once idle for its `keep_alive`, so calls
//! of an old version never drain the serving pool, nor the other way round.

use async_trait::async_trait;
use bytes::Bytes;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::OnceCell;

use crate::cas::{Cas, Digest};
use crate::docker::ContainerRuntime;
use crate::error::{Error, Result};
use crate::executor::{BackendHealth, CallOutcome, CallRequest, Executor, FunctionSpec};
use crate::policy::Policy;
use crate::pool::{Deployment, FunctionPool, Pool, PoolStats, RuntimePoolStats, RuntimePools};

/// An executor behind a vtable: what the invoker needs from each backend.
#[async_trait]
trait Backend: Send + Sync {
    fn name(&self) -> &'static str;
    fn can_handle(&self, runtime: &str) -> bool;
    async fn check_bundle(&self, runtime: &str, bundle: &Bytes) -> Result<()>;
    fn prepares_in_background(&self) -> bool;
    fn takes_http(&self, bundle: &Path) -> bool;
    async fn validate(&self, spec: &FunctionSpec, bundle: &Path) -> Result<()>;
    async fn deploy(&self, spec: Arc<FunctionSpec>, bundle: &Path) -> Result<Arc<dyn Deployment>>;
    fn set_runtime_policy(&self, runtime: &str, policy: &Policy);
    fn runtime_pool(&self, runtime: &str) -> Option<RuntimePoolStats>;
    async fn drain_runtime_pools(&self);
    async fn health(&self) -> BackendHealth;
    fn egress_stats(&self) -> Option<Arc<crate::egress::EgressStats>>;
    fn runtimes(&self) -> Vec<ContainerRuntime>;
    fn takes_runtimes(&self) -> bool;
    async fn register_runtime(&self, runtime: ContainerRuntime, check: bool) -> Result<()>;
    async fn remove_runtime(&self, name: &str) -> bool;
    fn cached_artifacts(&self) -> Result<Vec<crate::wasm::CachedArtifact>>;
    fn remove_cached_artifact(&self, file: &str) -> Result<bool>;
}

struct ExecutorBackend<E: Executor> {
    executor: Arc<E>,
    runtime_pools: Arc<RuntimePools<E>>,
}

#[async_trait]
impl<E: Executor> Backend for ExecutorBackend<E> {
    fn name(&self) -> &'static str {
        self.executor.name()
    }

    fn can_handle(&self, runtime: &str) -> bool {
        self.executor.can_handle(runtime)
    }

    async fn check_bundle(&self, runtime: &str, bundle: &Bytes) -> Result<()> {
        self.executor.check_bundle(runtime, bundle).await
    }

    fn prepares_in_background(&self) -> bool {
        self.executor.prepares_in_background()
    }

    fn takes_http(&self, bundle: &Path) -> bool {
        self.executor.takes_http(bundle)
    }

    async fn validate(&self, spec: &FunctionSpec, bundle: &Path) -> Result<()> {
        self.executor.prepare(spec, bundle).await.map(drop)
    }

    async fn deploy(&self, spec: Arc<FunctionSpec>, bundle: &Path) -> Result<Arc<dyn Deployment>> {
        let prepared = self.executor.prepare(&spec, bundle).await?;
        let pool = Pool::for_function(
            self.executor.clone(),
            spec,
            prepared,
            self.runtime_pools.clone(),
        );
        Ok(Arc::new(FunctionPool(pool)))
    }

    fn set_runtime_policy(&self, runtime: &str, policy: &Policy) {
        if let Some(pool) = self.runtime_pools.get(runtime) {
            pool.set_policy(policy.clone());
            return;
        }
        if self.executor.has_runtime_instances(runtime) {
            let pool = Pool::for_runtime(self.executor.clone(), runtime, policy.clone());
            self.runtime_pools.insert(runtime.to_string(), pool);
        }
    }

    fn runtime_pool(&self, runtime: &str) -> Option<RuntimePoolStats> {
        self.runtime_pools.get(runtime).map(|p| p.runtime_stats())
    }

    async fn drain_runtime_pools(&self) {
        let pools: Vec<_> = self.runtime_pools.iter().map(|p| p.clone()).collect();
        for pool in pools {
            pool.drain_pool().await;
        }
    }

    async fn health(&self) -> BackendHealth {
        self.executor.health().await
    }

    fn egress_stats(&self) -> Option<Arc<crate::egress::EgressStats>> {
        self.executor.egress_stats()
    }

    fn runtimes(&self) -> Vec<ContainerRuntime> {
        self.executor.runtimes()
    }

    fn takes_runtimes(&self) -> bool {
        self.executor.takes_runtimes()
    }

    async fn register_runtime(&self, runtime: ContainerRuntime, check: bool) -> Result<()> {
        let name = runtime.name.clone();
        self.executor.register_runtime(runtime, check).await?;
        // A runtime replaced by one with another image or mode starts its generic
        // instances afresh.
        if let Some((_, old)) = self.runtime_pools.remove(&name) {
            let policy = old.runtime_stats().policy;
            old.drain_pool().await;
            self.set_runtime_policy(&name, &policy);
        }
        Ok(())
    }

    async fn remove_runtime(&self, name: &str) -> bool {
        if let Some((_, pool)) = self.runtime_pools.remove(name) {
            pool.drain_pool().await;
        }
        self.executor.remove_runtime(name)
    }

    fn cached_artifacts(&self) -> Result<Vec<crate::wasm::CachedArtifact>> {
        self.executor.cached_artifacts()
    }

    fn remove_cached_artifact(&self, file: &str) -> Result<bool> {
        self.executor.remove_cached_artifact(file)
    }
}

/// How often idle pools of versions that are not serving are looked at.
const REAP_EVERY: Duration = Duration::from_millis(500);

/// One version of one function and, once prepared, its pool.
struct Slot {
    spec: Arc<FunctionSpec>,
    deployment: OnceCell<Arc<dyn Deployment>>,
    /// Set once the host named this version the serving one ([`Invoker::serve`]):
    /// from then on a call of another version runs on that version's own pool
    /// instead of replacing this one.
    chosen: AtomicBool,
    /// Calls (and preloads) using the slot now.
    users: AtomicUsize,
    /// Since when nobody used it, and the `keep_alive` of its latest user's policy.
    idle: std::sync::Mutex<(Instant, Duration)>,
    /// Set when the slot left the invoker: a pool prepared for it after that is
    /// drained when its last call ends, never left running unreachable.
    retired: AtomicBool,
}

impl Slot {
    fn new(spec: &Arc<FunctionSpec>) -> Arc<Slot> {
        Arc::new(Slot {
            spec: spec.clone(),
            deployment: OnceCell::new(),
            chosen: AtomicBool::new(false),
            users: AtomicUsize::new(0),
            idle: std::sync::Mutex::new((Instant::now(), spec.policy.keep_alive)),
            retired: AtomicBool::new(false),
        })
    }

    /// Counts one user until the returned guard drops.
    fn enter(self: &Arc<Self>, spec: &FunctionSpec) -> SlotUse {
        self.users.fetch_add(1, Ordering::AcqRel);
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).1 = spec.policy.keep_alive;
        SlotUse(self.clone())
    }

    /// Whether nobody used it for its `keep_alive`.
    fn idle_past_keep_alive(&self, now: Instant) -> bool {
        let (since, keep_alive) = *self.idle.lock().unwrap_or_else(|e| e.into_inner());
        self.users.load(Ordering::Acquire) == 0
            && now.saturating_duration_since(since) >= keep_alive
    }
}

/// One use of a slot (a call or a preload), counted while it lives.
struct SlotUse(Arc<Slot>);

impl Drop for SlotUse {
    fn drop(&mut self) {
        let slot = &self.0;
        slot.idle.lock().unwrap_or_else(|e| e.into_inner()).0 = Instant::now();
        if slot.users.fetch_sub(1, Ordering::AcqRel) == 1 && slot.retired.load(Ordering::Acquire) {
            drain_in_background(slot.clone());
        }
    }
}

/// The pools of versions that are not serving, by function and version.
type SidePools = DashMap<(String, i64), Arc<Slot>>;

/// A function version the engine holds right now: it has a pool here, or calls of it
/// are running (an old version's last calls finish after a redeploy replaced its
/// pool). Retention never removes what such a version runs from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HeldVersion {
    /// The function's name.
    pub function: String,
    /// Its version number.
    pub version: i64,
    /// Its runtime.
    pub runtime: String,
    /// Its bundle's digest.
    pub digest: String,
    /// Calls of it running now.
    pub calls_in_flight: usize,
}

/// Calls of one version running now, and that version's spec.
struct InFlight {
    spec: Arc<FunctionSpec>,
    calls: usize,
}

/// Counts one call of a version in flight for as long as it lives, however the call
/// ends (an answer, an error, or the caller going away at any await).
struct InFlightCall<'a> {
    map: &'a DashMap<(String, i64), InFlight>,
    key: (String, i64),
}

impl<'a> InFlightCall<'a> {
    fn enter(map: &'a DashMap<(String, i64), InFlight>, spec: &Arc<FunctionSpec>) -> Self {
        let key = (spec.name.clone(), spec.version);
        map.entry(key.clone())
            .or_insert_with(|| InFlight {
                spec: spec.clone(),
                calls: 0,
            })
            .calls += 1;
        InFlightCall { map, key }
    }
}

impl Drop for InFlightCall<'_> {
    fn drop(&mut self) {
        self.map.remove_if_mut(&self.key, |_, held| {
            held.calls -= 1;
            held.calls == 0
        });
    }
}

/// Runs calls of any function on the executor of its runtime.
pub struct Invoker {
    cas: Cas,
    backends: Vec<Arc<dyn Backend>>,
    slots: DashMap<String, Arc<Slot>>,
    /// Pools of versions other than the serving one (see [`Invoker::serve`]).
    others: Arc<SidePools>,
    /// Whether the task that drains idle side pools runs.
    reaping: Arc<AtomicBool>,
    /// Calls running now, by function and version (see [`Invoker::held`]).
    in_flight: DashMap<(String, i64), InFlight>,
    /// [`Invoker::takes_http`] by bundle digest: a bundle never changes.
    takes_http: DashMap<String, bool>,
}

impl std::fmt::Debug for Invoker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.backends.iter().map(|b| b.name()).collect();
        f.debug_struct("Invoker")
            .field("backends", &names)
            .field("functions", &self.slots.len())
            .finish()
    }
}

impl Invoker {
    /// An invoker with no executors, reading bundles from `cas`.
    pub fn new(cas: Cas) -> Self {
        Invoker {
            cas,
            backends: Vec::new(),
            slots: DashMap::new(),
            others: Arc::new(DashMap::new()),
            reaping: Arc::new(AtomicBool::new(false)),
            in_flight: DashMap::new(),
            takes_http: DashMap::new(),
        }
    }

    /// Adds an executor. Executors are asked in the order they were added; the first
    /// that can handle a runtime runs it.
    pub fn with_executor<E: Executor>(self, executor: E) -> Self {
        self.with_shared_executor(Arc::new(executor))
    }

    /// Adds an executor the caller keeps a handle to (for start-up chores such as
    /// building a base image while the invoker runs calls on it).
    pub fn with_shared_executor<E: Executor>(mut self, executor: Arc<E>) -> Self {
        self.backends.push(Arc::new(ExecutorBackend {
            executor,
            runtime_pools: Arc::new(DashMap::new()),
        }));
        self
    }

    /// The content store bundles are read from.
    pub fn cas(&self) -> &Cas {
        &self.cas
    }

    fn backend(&self, runtime: &str) -> Result<&Arc<dyn Backend>> {
        self.backends
            .iter()
            .find(|b| b.can_handle(runtime))
            .ok_or_else(|| Error::UnknownRuntime(runtime.to_string()))
    }

    fn bundle_path(&self, spec: &FunctionSpec) -> Result<std::path::PathBuf> {
        let digest = Digest::parse(&spec.digest)
            .ok_or_else(|| Error::Internal(anyhow::anyhow!("bad digest {:?}", spec.digest)))?;
        let path = self.cas.path(&digest);
        if !path.is_file() {
            return Err(Error::MissingBundle {
                digest: spec.digest.clone(),
            });
        }
        Ok(path)
    }

    /// The names of every runtime a function may be deployed to.
    pub fn runtime_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .backends
            .iter()
            .flat_map(|b| {
                if b.takes_runtimes() {
                    b.runtimes().into_iter().map(|r| r.name).collect()
                } else {
                    vec![b.name().to_string()]
                }
            })
            .collect();
        names.sort();
        names
    }

    /// Checks an upload for `runtime` before it is stored: unknown runtime, not a
    /// module, unsafe archive, no engine to build it on.
    pub async fn check_bundle(&self, runtime: &str, bundle: &Bytes) -> Result<()> {
        self.backend(runtime)?.check_bundle(runtime, bundle).await
    }

    /// Whether a deploy to `runtime` is prepared in the background (the deploy
    /// answers `pending`) rather than before answering.
    pub fn prepares_in_background(&self, runtime: &str) -> Result<bool> {
        Ok(self.backend(runtime)?.prepares_in_background())
    }

    /// Whether `spec`'s function takes an HTTP request as itself (a wasi:http
    /// component) rather than as a JSON envelope on its input. Asked once per bundle.
    pub fn takes_http(&self, spec: &FunctionSpec) -> bool {
        if let Some(known) = self.takes_http.get(&spec.digest) {
            return *known;
        }
        let Ok(backend) = self.backend(&spec.runtime) else {
            return false;
        };
        let Ok(bundle) = self.bundle_path(spec) else {
            return false;
        };
        let answer = backend.takes_http(&bundle);
        self.takes_http.insert(spec.digest.clone(), answer);
        answer
    }

    /// Checks that a bundle can run (for wasm: compiles it, filling the module cache),
    /// without installing it. Used before a deploy is accepted.
    pub async fn validate(&self, spec: &FunctionSpec) -> Result<()> {
        spec.limits.validate()?;
        spec.policy.validate()?;
        let backend = self.backend(&spec.runtime)?;
        backend.validate(spec, &self.bundle_path(spec)?).await
    }

    /// Runs one call of `spec`'s version by `deadline`, preparing the version first
    /// if this process has not yet. Until the host chose a serving version with
    /// [`Invoker::serve`], a newer version replaces the pool of an older one; after,
    /// a call of another version runs on that version's own pool. A newer policy for
    /// the same version is followed at once.
    pub async fn invoke(
        &self,
        spec: &Arc<FunctionSpec>,
        request: CallRequest,
        deadline: Instant,
    ) -> Result<CallOutcome> {
        // Counted before the version is prepared: from here until the call ends, its
        // bundle (and image) are in use.
        let _in_flight = InFlightCall::enter(&self.in_flight, spec);
        let (deployment, prepare_time, _slot_use) = self.deployment(spec).await?;
        let mut outcome = deployment.call(request, deadline).await?;
        // The call that had to prepare the version (load or compile it) paid for that.
        outcome.timings.init += prepare_time;
        Ok(outcome)
    }

    /// The pool of `spec`'s version, how long this call spent preparing it (zero
    /// unless this call was the one that did), and the use of its slot, to hold while
    /// the call runs.
    async fn deployment(
        &self,
        spec: &Arc<FunctionSpec>,
    ) -> Result<(Arc<dyn Deployment>, Duration, SlotUse)> {
        let slot_use = self.slot(spec);
        let slot = &slot_use.0;
        let mut prepare_time = Duration::ZERO;
        let deployment = slot
            .deployment
            .get_or_try_init(|| async {
                let started = Instant::now();
                let backend = self.backend(&slot.spec.runtime)?;
                let deployment = backend
                    .deploy(slot.spec.clone(), &self.bundle_path(&slot.spec)?)
                    .await;
                prepare_time = started.elapsed();
                deployment
            })
            .await?;
        if slot.spec.version == spec.version {
            deployment.follow(spec);
        }
        Ok((deployment.clone(), prepare_time, slot_use))
    }

    /// The slot for this version: the function's pool when it serves this version
    /// (or, before [`Invoker::serve`] chose one, when it is newer: a call that read
    /// the function just before a redeploy never brings an old version back), its
    /// own side pool when the host chose another version, a new pool otherwise.
    fn slot(&self, spec: &Arc<FunctionSpec>) -> SlotUse {
        use dashmap::mapref::entry::Entry;
        match self.slots.entry(spec.name.clone()) {
            Entry::Vacant(vacant) => return vacant.insert(Slot::new(spec)).enter(spec),
            Entry::Occupied(mut occupied) => {
                let current = occupied.get();
                let (version, chosen) =
                    (current.spec.version, current.chosen.load(Ordering::Acquire));
                if version == spec.version || (!chosen && version > spec.version) {
                    return current.enter(spec);
                }
                if !chosen {
                    let fresh = Slot::new(spec);
                    let entered = fresh.enter(spec);
                    let old = occupied.insert(fresh);
                    tracing::info!(
                        function = %spec.name,
                        old = old.spec.version,
                        new = spec.version,
                        "replacing the pool of an older version"
                    );
                    retire(old);
                    return entered;
                }
            }
        }
        // The host serves another version: this one gets a pool of its own (the
        // function's entry is released first, so no two maps are locked at once).
        let entered = self
            .others
            .entry((spec.name.clone(), spec.version))
            .or_insert_with(|| Slot::new(spec))
            .enter(spec);
        self.start_reaper();
        entered
    }

    /// Makes `spec`'s version the one the function's pool serves, older or newer
    /// than the current one (a deploy, or a rollback): a pool calls already made for
    /// it becomes the function's pool as warm as it is, and the pool of the version
    /// it replaces drains. From now on only `serve` changes the function's version;
    /// calls of other versions run on pools of their own. On the serving version it
    /// takes the spec's (new) policy.
    pub fn serve(&self, spec: &Arc<FunctionSpec>) {
        use dashmap::mapref::entry::Entry;
        let key = (spec.name.clone(), spec.version);
        let take = |slot: &Arc<Slot>| {
            slot.chosen.store(true, Ordering::Release);
            if let Some(deployment) = slot.deployment.get() {
                deployment.follow(spec);
            }
        };
        let replaced = match self.slots.entry(spec.name.clone()) {
            Entry::Occupied(current) if current.get().spec.version == spec.version => {
                take(current.get());
                None
            }
            entry => {
                let slot = match self.others.remove(&key) {
                    Some((_, side)) => side,
                    None => Slot::new(spec),
                };
                take(&slot);
                match entry {
                    Entry::Occupied(mut current) => Some(current.insert(slot)),
                    Entry::Vacant(vacant) => {
                        vacant.insert(slot);
                        None
                    }
                }
            }
        };
        if let Some(old) = replaced {
            tracing::info!(
                function = %spec.name,
                old = old.spec.version,
                new = spec.version,
                "serving another version; draining the pool of the old one"
            );
            retire(old);
        }
    }

    /// Starts the task that drains side pools idle for their `keep_alive`, unless it
    /// runs; it ends when no side pool is left.
    fn start_reaper(&self) {
        if self.reaping.swap(true, Ordering::AcqRel) {
            return;
        }
        let others = Arc::downgrade(&self.others);
        let reaping = self.reaping.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(REAP_EVERY).await;
                let Some(others) = others.upgrade() else {
                    return;
                };
                let now = Instant::now();
                let idle: Vec<(String, i64)> = others
                    .iter()
                    .filter(|slot| slot.idle_past_keep_alive(now))
                    .map(|slot| slot.key().clone())
                    .collect();
                for key in idle {
                    // Checked again under the map's lock: a call may have just taken it.
                    if let Some((_, slot)) =
                        others.remove_if(&key, |_, slot| slot.idle_past_keep_alive(now))
                    {
                        tracing::info!(function = %key.0, version = key.1,
                            "draining the idle pool of a version that is not serving");
                        retire(slot);
                    }
                }
                if others.is_empty() {
                    reaping.store(false, Ordering::Release);
                    // A side pool made meanwhile did not start a task: this one goes on.
                    if others.is_empty() || reaping.swap(true, Ordering::AcqRel) {
                        return;
                    }
                }
            }
        });
    }

    /// The pools of versions of `name` that are not serving, by version.
    pub fn side_pools(&self, name: &str) -> Vec<PoolStats> {
        let mut all: Vec<PoolStats> = self
            .others
            .iter()
            .filter(|slot| slot.key().0 == name)
            .filter_map(|slot| slot.deployment.get().map(|d| d.stats()))
            .collect();
        all.sort_by_key(|p| p.version);
        all
    }

    /// Forgets a function and destroys its idle instances.
    pub fn remove(&self, name: &str) {
        if let Some((_, old)) = self.slots.remove(name) {
            retire(old);
        }
        self.others.retain(|(function, _), slot| {
            if function == name {
                retire(slot.clone());
            }
            function != name
        });
    }

    /// Prepares `spec`'s version now and installs its pool, so the pool starts
    /// filling to `min_warm` before any call (and the first call does not pay for
    /// loading it). On an installed version, takes its (new) policy.
    pub async fn preload(&self, spec: &Arc<FunctionSpec>) -> Result<()> {
        self.deployment(spec).await.map(drop)
    }

    /// Takes a newer resolution of an installed version (a policy change) into its
    /// pool at once; nothing when the version has no pool yet.
    pub fn follow(&self, spec: &FunctionSpec) {
        if let Some(slot) = self.slots.get(&spec.name)
            && slot.spec.version == spec.version
            && let Some(deployment) = slot.deployment.get()
        {
            deployment.follow(spec);
        }
        if let Some(side) = self.others.get(&(spec.name.clone(), spec.version))
            && let Some(deployment) = side.deployment.get()
        {
            deployment.follow(spec);
        }
    }

    /// Sets a runtime's policy: with `preload = runtime` its runtime-level pool keeps
    /// `min_warm` generic instances (runtimes that have them).
    pub fn set_runtime_policy(&self, runtime: &str, policy: &Policy) {
        if let Ok(backend) = self.backend(runtime) {
            backend.set_runtime_policy(runtime, policy);
        }
    }

    /// The state of every live function pool, by function name.
    pub fn pools(&self) -> Vec<PoolStats> {
        let mut all: Vec<PoolStats> = self
            .slots
            .iter()
            .filter_map(|slot| slot.deployment.get().map(|d| d.stats()))
            .collect();
        all.sort_by(|a, b| a.function.cmp(&b.function));
        all
    }

    /// Every version the engine holds now: each function's installed version (its
    /// pool, idle or not, or the one being prepared), and every version with calls
    /// running, including an older version whose pool a redeploy replaced while
    /// calls of it were still running. Sorted by function and version.
    pub fn held(&self) -> Vec<HeldVersion> {
        let mut held: std::collections::BTreeMap<(String, i64), HeldVersion> = self
            .slots
            .iter()
            .map(|slot| slot.value().clone())
            // Side pools too: versions that are not serving but have a pool here.
            .chain(self.others.iter().map(|slot| slot.value().clone()))
            .map(|slot| {
                let spec = &slot.spec;
                (
                    (spec.name.clone(), spec.version),
                    HeldVersion {
                        function: spec.name.clone(),
                        version: spec.version,
                        runtime: spec.runtime.clone(),
                        digest: spec.digest.clone(),
                        calls_in_flight: 0,
                    },
                )
            })
            .collect();
        for entry in self.in_flight.iter() {
            let (key, running) = (entry.key().clone(), entry.value());
            held.entry(key)
                .or_insert_with(|| HeldVersion {
                    function: running.spec.name.clone(),
                    version: running.spec.version,
                    runtime: running.spec.runtime.clone(),
                    digest: running.spec.digest.clone(),
                    calls_in_flight: 0,
                })
                .calls_in_flight = running.calls;
        }
        held.into_values().collect()
    }

    /// Every compiled artifact the backends keep on disk (wasm's module cache).
    pub fn cached_artifacts(&self) -> Result<Vec<crate::wasm::CachedArtifact>> {
        let mut all = Vec::new();
        for backend in &self.backends {
            all.extend(backend.cached_artifacts()?);
        }
        Ok(all)
    }

    /// Removes a compiled artifact by its file name; `false` if no backend had it.
    pub fn remove_cached_artifact(&self, file: &str) -> Result<bool> {
        for backend in &self.backends {
            if backend.remove_cached_artifact(file)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The state of one function's pool, if it has one.
    pub fn pool(&self, name: &str) -> Option<PoolStats> {
        let slot = self.slots.get(name)?;
        slot.deployment.get().map(|d| d.stats())
    }

    /// The state of a runtime's runtime-level pool, if it has one.
    pub fn runtime_pool(&self, runtime: &str) -> Option<RuntimePoolStats> {
        self.backend(runtime).ok()?.runtime_pool(runtime)
    }

    /// Every container runtime, by name.
    pub fn runtimes(&self) -> Vec<ContainerRuntime> {
        let mut all: Vec<ContainerRuntime> =
            self.backends.iter().flat_map(|b| b.runtimes()).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// One container runtime.
    pub fn runtime(&self, name: &str) -> Option<ContainerRuntime> {
        self.runtimes().into_iter().find(|r| r.name == name)
    }

    /// Registers (or replaces) a container runtime with the first executor that takes
    /// them; with `check`, after it checked the runtime can run there (its image
    /// exists). Runtimes restored from the store at start are not checked again.
    pub async fn register_runtime(&self, runtime: ContainerRuntime, check: bool) -> Result<()> {
        runtime.validate()?;
        let backend = self
            .backends
            .iter()
            .find(|b| b.takes_runtimes())
            .ok_or_else(|| Error::InvalidRuntime("no executor takes container runtimes".into()))?;
        backend.register_runtime(runtime, check).await
    }

    /// Forgets a container runtime and its runtime-level instances.
    pub async fn remove_runtime(&self, name: &str) -> bool {
        for backend in &self.backends {
            if backend.takes_runtimes() && backend.remove_runtime(name).await {
                return true;
            }
        }
        false
    }

    /// The health of every backend, by name.
    pub async fn health(&self) -> Vec<(&'static str, BackendHealth)> {
        let mut all = Vec::with_capacity(self.backends.len());
        for backend in &self.backends {
            all.push((backend.name(), backend.health().await));
        }
        all
    }

    /// What each backend's egress proxies counted, by backend name.
    pub fn egress_stats(&self) -> Vec<(&'static str, Arc<crate::egress::EgressStats>)> {
        self.backends
            .iter()
            .filter_map(|b| b.egress_stats().map(|stats| (b.name(), stats)))
            .collect()
    }

    /// Drains every pool (shutdown): idle instances are destroyed now, busy ones when
    /// their call ends.
    pub async fn drain_all(&self) {
        let mut slots: Vec<Arc<Slot>> = self.slots.iter().map(|s| s.clone()).collect();
        slots.extend(self.others.iter().map(|s| s.clone()));
        for slot in slots {
            if let Some(deployment) = slot.deployment.get() {
                deployment.drain().await;
            }
        }
        for backend in &self.backends {
            backend.drain_runtime_pools().await;
        }
    }
}

/// Marks a slot as gone from the invoker and drains its pool.
fn retire(slot: Arc<Slot>) {
    slot.retired.store(true, Ordering::Release);
    drain_in_background(slot);
}

fn drain_in_background(slot: Arc<Slot>) {
    if let Some(deployment) = slot.deployment.get().cloned() {
        tokio::spawn(async move { deployment.drain().await });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::StartKind;
    use crate::policy::Preload;
    use crate::testing::Fake;

    struct Harness {
        _home: tempfile::TempDir,
        invoker: Invoker,
        fake: Arc<Fake>,
        digest: String,
    }

    fn harness() -> Harness {
        let home = tempfile::tempdir().unwrap();
        let cas = Cas::open(home.path().join("cas")).unwrap();
        let digest = cas.put(b"bundle").unwrap().to_string();
        let fake = Arc::new(Fake::default());
        Harness {
            invoker: Invoker::new(cas).with_shared_executor(fake.clone()),
            _home: home,
            fake,
            digest,
        }
    }

    impl Harness {
        fn spec(&self, version: i64, policy: Policy) -> Arc<FunctionSpec> {
            Arc::new(FunctionSpec {
                name: "f".into(),
                version,
                runtime: "fake".into(),
                digest: self.digest.clone(),
                limits: Default::default(),
                policy,
                env: Default::default(),
                allow_outbound: Default::default(),
            })
        }

        async fn call(&self, spec: &Arc<FunctionSpec>) -> CallOutcome {
            let request = CallRequest {
                call_id: "c".into(),
                input: Bytes::from_static(b"x"),
                http: None,
            };
            let deadline = Instant::now() + Duration::from_secs(5);
            self.invoker.invoke(spec, request, deadline).await.unwrap()
        }
    }

    async fn eventually(what: &str, check: impl Fn() -> bool) {
        let until = Instant::now() + Duration::from_secs(2);
        while !check() {
            assert!(Instant::now() < until, "never happened: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_newer_version_replaces_the_pool_and_an_older_spec_never_brings_it_back() {
        let h = harness();
        let v1 = h.spec(1, Policy::default());
        h.call(&v1).await;
        assert_eq!(h.invoker.pool("f").unwrap().version, 1);
        assert_eq!(h.invoker.pool("f").unwrap().idle, 1);

        let v2 = h.spec(2, Policy::default());
        h.call(&v2).await;
        assert_eq!(h.invoker.pool("f").unwrap().version, 2);
        // The old pool is drained: its idle instance is destroyed.
        eventually("v1's instance destroyed", || {
            h.fake.alive.load(std::sync::atomic::Ordering::SeqCst) == 1
        })
        .await;

        // A caller that read v1 just before the redeploy runs on v2.
        h.call(&v1).await;
        assert_eq!(h.invoker.pool("f").unwrap().version, 2);
    }

    /// Retention asks which versions the engine holds: the installed one, and an
    /// older one for as long as a call of it runs after a redeploy replaced it.
    #[tokio::test]
    async fn held_lists_the_installed_version_and_old_versions_with_calls_running() {
        let home = tempfile::tempdir().unwrap();
        let cas = Cas::open(home.path().join("cas")).unwrap();
        let digest = cas.put(b"bundle").unwrap().to_string();
        let fake = Arc::new(Fake {
            invoke_delay: Duration::from_millis(300),
            ..Fake::default()
        });
        let h = Harness {
            invoker: Invoker::new(cas).with_shared_executor(fake.clone()),
            _home: home,
            fake,
            digest,
        };
        assert!(h.invoker.held().is_empty());
        let v1 = h.spec(1, Policy::default());
        h.invoker.preload(&v1).await.unwrap();
        let held = h.invoker.held();
        assert_eq!(held.len(), 1);
        assert_eq!((held[0].version, held[0].calls_in_flight), (1, 0));
        assert_eq!(held[0].digest, h.digest);

        let slow = {
            let (invoker, v1) = (&h.invoker, v1.clone());
            async move {
                let request = CallRequest {
                    call_id: "slow".into(),
                    input: Bytes::from_static(b"x"),
                    http: None,
                };
                invoker
                    .invoke(&v1, request, Instant::now() + Duration::from_secs(5))
                    .await
                    .unwrap()
            }
        };
        let check = async {
            eventually("v1's call running", || {
                h.invoker.held().iter().any(|v| v.calls_in_flight == 1)
            })
            .await;
            // A redeploy installs v2; v1 stays held while its call runs.
            h.invoker
                .preload(&h.spec(2, Policy::default()))
                .await
                .unwrap();
            let versions: Vec<_> = h
                .invoker
                .held()
                .iter()
                .map(|v| (v.version, v.calls_in_flight))
                .collect();
            assert_eq!(versions, vec![(1, 1), (2, 0)]);
        };
        let (outcome, ()) = tokio::join!(slow, check);
        assert!(outcome.result.message().is_none(), "{:?}", outcome.result);
        let versions: Vec<_> = h.invoker.held().iter().map(|v| v.version).collect();
        assert_eq!(versions, vec![2], "v1 is let go once its call ended");
    }

    #[tokio::test]
    async fn a_served_version_keeps_its_pool_while_other_versions_run_on_their_own() {
        use std::sync::atomic::Ordering::SeqCst;
        let h = harness();
        let policy = Policy {
            keep_alive: Duration::from_millis(1500),
            ..Policy::default()
        };
        let (v1, v2) = (h.spec(1, policy.clone()), h.spec(2, policy));
        h.invoker.serve(&v2);
        h.call(&v2).await;
        // A call of v1 (`FN@1`) runs on a pool of its own: v2's pool keeps its instance.
        h.call(&v1).await;
        let serving = h.invoker.pool("f").unwrap();
        assert_eq!((serving.version, serving.idle), (2, 1));
        let side: Vec<i64> = h
            .invoker
            .side_pools("f")
            .iter()
            .map(|p| p.version)
            .collect();
        assert_eq!(side, [1]);
        assert_eq!(h.fake.alive.load(SeqCst), 2);

        // A rollback: v1 serves at once, from its warm pool, and v2's pool drains.
        h.invoker.serve(&v1);
        let serving = h.invoker.pool("f").unwrap();
        assert_eq!((serving.version, serving.idle), (1, 1));
        assert!(h.invoker.side_pools("f").is_empty());
        eventually("v2's instance destroyed", || h.fake.alive.load(SeqCst) == 1).await;

        // A call that read v2 just before the rollback does not bring it back...
        h.call(&v2).await;
        assert_eq!(h.invoker.pool("f").unwrap().version, 1);
        assert_eq!(h.invoker.side_pools("f").len(), 1);
        // ...and its pool drains once idle for its keep_alive.
        let until = Instant::now() + Duration::from_secs(10);
        while !h.invoker.side_pools("f").is_empty() {
            assert!(Instant::now() < until, "v2's side pool was never drained");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(h.invoker.pool("f").unwrap().version, 1);
    }

    #[tokio::test]
    async fn a_policy_change_of_the_same_version_is_followed_at_once() {
        let h = harness();
        let cold = h.spec(1, Policy::default());
        h.invoker.preload(&cold).await.unwrap();
        assert_eq!(h.invoker.pool("f").unwrap().idle, 0);
        let warm = h.spec(
            1,
            Policy {
                min_warm: 3,
                ..Policy::default()
            },
        );
        h.invoker.follow(&warm);
        eventually("three warm instances", || {
            h.invoker.pool("f").is_some_and(|p| p.idle == 3)
        })
        .await;
        assert_eq!(h.invoker.pool("f").unwrap().version, 1);
    }

    #[tokio::test]
    async fn runtime_policies_fill_runtime_level_pools_that_functions_claim() {
        let h = harness();
        let policy = Policy {
            preload: Preload::Runtime,
            min_warm: 1,
            ..Policy::default()
        };
        h.invoker.set_runtime_policy("fake", &policy);
        eventually("one generic instance", || {
            h.invoker.runtime_pool("fake").is_some_and(|p| p.idle == 1)
        })
        .await;
        let outcome = h.call(&h.spec(1, policy)).await;
        assert_eq!(outcome.start, StartKind::Prewarmed);
        let stats = h.invoker.runtime_pool("fake").unwrap();
        assert_eq!(stats.left.get("claimed"), Some(&1));
    }

    #[tokio::test]
    async fn unknown_runtimes_and_missing_bundles_are_errors() {
        let h = harness();
        let mut spec = (*h.spec(1, Policy::default())).clone();
        spec.digest = crate::cas::Digest::of(b"not stored").to_string();
        let err = h
            .invoker
            .invoke(
                &Arc::new(spec),
                CallRequest {
                    call_id: "c".into(),
                    input: Bytes::new(),
                    http: None,
                },
                Instant::now() + Duration::from_secs(1),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, Error::MissingBundle { .. }), "{err}");
        let fake_only = Invoker::new(h.invoker.cas().clone());
        let err = fake_only.prepares_in_background("fake").unwrap_err();
        assert!(matches!(err, Error::UnknownRuntime(_)), "{err}");
    }
}

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

use async_trait::async_trait;
use bytes::Bytes;
use std::path::Path;
use std::sync::Arc;
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
}

/// The current version of one function and, once prepared, its pool.
struct Slot {
    spec: Arc<FunctionSpec>,
    deployment: OnceCell<Arc<dyn Deployment>>,
}

/// Runs calls of any function on the executor of its runtime.
pub struct Invoker {
    cas: Cas,
    backends: Vec<Arc<dyn Backend>>,
    slots: DashMap<String, Arc<Slot>>,
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

    /// Checks that a bundle can run (for wasm: compiles it, filling the module cache),
    /// without installing it. Used before a deploy is accepted.
    pub async fn validate(&self, spec: &FunctionSpec) -> Result<()> {
        spec.limits.validate()?;
        spec.policy.validate()?;
        let backend = self.backend(&spec.runtime)?;
        backend.validate(spec, &self.bundle_path(spec)?).await
    }

    /// Runs one call of `spec`'s version by `deadline`, preparing the version first
    /// if this process has not yet. A newer version replaces the pool of an older
    /// one; a newer policy for the same version is followed at once.
    pub async fn invoke(
        &self,
        spec: &Arc<FunctionSpec>,
        request: CallRequest,
        deadline: Instant,
    ) -> Result<CallOutcome> {
        let (deployment, prepare_time) = self.deployment(spec).await?;
        let mut outcome = deployment.call(request, deadline).await?;
        // The call that had to prepare the version (load or compile it) paid for that.
        outcome.timings.init += prepare_time;
        Ok(outcome)
    }

    /// The pool of `spec`'s version, and how long this call spent preparing it (zero
    /// unless this call was the one that did).
    async fn deployment(
        &self,
        spec: &Arc<FunctionSpec>,
    ) -> Result<(Arc<dyn Deployment>, Duration)> {
        let slot = self.slot(spec);
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
        Ok((deployment.clone(), prepare_time))
    }

    /// The slot for this version, replacing (and draining) an older one.
    fn slot(&self, spec: &Arc<FunctionSpec>) -> Arc<Slot> {
        if let Some(slot) = self.slots.get(&spec.name) {
            // A call that read the function just before a redeploy may arrive with the
            // older spec: calls always run the newest version, never bring back an old one.
            if slot.spec.version >= spec.version {
                return slot.clone();
            }
        }
        let fresh = Arc::new(Slot {
            spec: spec.clone(),
            deployment: OnceCell::new(),
        });
        let old = self.slots.insert(spec.name.clone(), fresh.clone());
        if let Some(old) = old {
            tracing::info!(
                function = %spec.name,
                old = old.spec.version,
                new = spec.version,
                "replacing the pool of an older version"
            );
            drain_in_background(old);
        }
        fresh
    }

    /// Forgets a function and destroys its idle instances.
    pub fn remove(&self, name: &str) {
        if let Some((_, old)) = self.slots.remove(name) {
            drain_in_background(old);
        }
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
        let slots: Vec<Arc<Slot>> = self.slots.iter().map(|s| s.clone()).collect();
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

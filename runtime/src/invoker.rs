//! The invoker: maps a function to the executor of its runtime and to the pool of its
//! current version.
//!
//! The host hands it a [`FunctionSpec`] and a [`CallRequest`]; the invoker prepares the
//! version on first use (compile or load from cache), keeps one pool per function and
//! replaces it (draining the old one) when a newer version arrives.

use async_trait::async_trait;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::OnceCell;

use crate::cas::{Cas, Digest};
use crate::error::{Error, Result};
use crate::executor::{CallOutcome, CallRequest, Executor, FunctionSpec};
use crate::policy::Policy;
use crate::pool::{Deployment, FunctionPool, PoolStats};

/// An executor behind a vtable: what the invoker needs from each backend.
#[async_trait]
trait Backend: Send + Sync {
    fn name(&self) -> &'static str;
    fn can_handle(&self, runtime: &str) -> bool;
    async fn validate(&self, spec: &FunctionSpec, bundle: &Path) -> Result<()>;
    async fn deploy(
        &self,
        spec: &FunctionSpec,
        bundle: &Path,
        policy: Policy,
    ) -> Result<Arc<dyn Deployment>>;
}

struct ExecutorBackend<E: Executor>(Arc<E>);

#[async_trait]
impl<E: Executor> Backend for ExecutorBackend<E> {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn can_handle(&self, runtime: &str) -> bool {
        self.0.can_handle(runtime)
    }

    async fn validate(&self, spec: &FunctionSpec, bundle: &Path) -> Result<()> {
        self.0.prepare(spec, bundle).await.map(drop)
    }

    async fn deploy(
        &self,
        spec: &FunctionSpec,
        bundle: &Path,
        policy: Policy,
    ) -> Result<Arc<dyn Deployment>> {
        let prepared = self.0.prepare(spec, bundle).await?;
        Ok(FunctionPool::start(
            self.0.clone(),
            spec.clone(),
            prepared,
            policy,
        ))
    }
}

/// The current version of one function and, once prepared, its pool.
struct Slot {
    spec: FunctionSpec,
    deployment: OnceCell<Arc<dyn Deployment>>,
}

/// Runs calls of any function on the executor of its runtime.
pub struct Invoker {
    cas: Cas,
    backends: Vec<Arc<dyn Backend>>,
    slots: DashMap<String, Arc<Slot>>,
    policies: DashMap<String, Policy>,
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
            policies: DashMap::new(),
        }
    }

    /// Adds an executor. Executors are asked in the order they were added; the first
    /// that can handle a runtime runs it.
    pub fn with_executor<E: Executor>(self, executor: E) -> Self {
        self.with_shared_executor(Arc::new(executor))
    }

    /// Adds an executor the caller keeps a handle to (to register container runtimes
    /// or ask for health while the invoker runs calls on it).
    pub fn with_shared_executor<E: Executor>(mut self, executor: Arc<E>) -> Self {
        self.backends.push(Arc::new(ExecutorBackend(executor)));
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

    /// Checks that a bundle can run (for wasm: compiles it, filling the module cache),
    /// without installing it. Used before a deploy is accepted.
    pub async fn validate(&self, spec: &FunctionSpec) -> Result<()> {
        spec.limits.validate()?;
        let backend = self.backend(&spec.runtime)?;
        backend.validate(spec, &self.bundle_path(spec)?).await
    }

    /// Runs one call of `spec`'s version, preparing it first if this process has not
    /// yet. A newer version replaces the pool of an older one.
    pub async fn invoke(&self, spec: &FunctionSpec, request: CallRequest) -> Result<CallOutcome> {
        let (deployment, prepare_time) = self.deployment(spec).await?;
        let mut outcome = deployment.call(request).await?;
        // The call that had to prepare the version (load or compile it) paid for that.
        outcome.timings.init += prepare_time;
        Ok(outcome)
    }

    /// The pool of `spec`'s version, and how long this call spent preparing it (zero
    /// unless this call was the one that did).
    async fn deployment(&self, spec: &FunctionSpec) -> Result<(Arc<dyn Deployment>, Duration)> {
        let slot = self.slot(spec);
        let mut prepare_time = Duration::ZERO;
        let deployment = slot
            .deployment
            .get_or_try_init(|| async {
                let started = Instant::now();
                let backend = self.backend(&spec.runtime)?;
                let policy = self.policy(&spec.name);
                let deployment = backend.deploy(spec, &self.bundle_path(spec)?, policy).await;
                prepare_time = started.elapsed();
                deployment
            })
            .await?;
        Ok((deployment.clone(), prepare_time))
    }

    /// The slot for this exact version, replacing (and draining) an older one.
    fn slot(&self, spec: &FunctionSpec) -> Arc<Slot> {
        if let Some(slot) = self.slots.get(&spec.name) {
            // A call that read the function just before a redeploy may arrive with the
            // older spec: calls always run the newest version, never bring back an old one.
            if slot.spec == *spec || slot.spec.version > spec.version {
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
            tracing::debug!(old = ?old.spec, new = ?spec, "pool specs");
            drain_in_background(old);
        }
        fresh
    }

    /// Forgets a function and destroys its idle instances.
    pub fn remove(&self, name: &str) {
        self.policies.remove(name);
        if let Some((_, old)) = self.slots.remove(name) {
            drain_in_background(old);
        }
    }

    /// The policy in force for a function (the default until one is set).
    pub fn policy(&self, name: &str) -> Policy {
        self.policies
            .get(name)
            .map(|p| p.clone())
            .unwrap_or_default()
    }

    /// Sets a function's policy; a running pool follows it at once.
    pub fn set_policy(&self, name: &str, policy: Policy) {
        if let Some(slot) = self.slots.get(name)
            && let Some(deployment) = slot.deployment.get()
        {
            deployment.set_policy(policy.clone());
        }
        self.policies.insert(name.to_string(), policy);
    }

    /// Prepares `spec`'s version now, so its pool starts filling to `min_warm` before
    /// any call (and the first call does not pay for loading it).
    pub async fn preload(&self, spec: &FunctionSpec) -> Result<()> {
        self.deployment(spec).await.map(drop)
    }

    /// The state of every live pool, by function name.
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

    /// Drains every pool (shutdown): idle instances are destroyed now, busy ones when
    /// their call ends.
    pub async fn drain_all(&self) {
        let slots: Vec<Arc<Slot>> = self.slots.iter().map(|s| s.clone()).collect();
        for slot in slots {
            if let Some(deployment) = slot.deployment.get() {
                deployment.drain().await;
            }
        }
    }
}

fn drain_in_background(slot: Arc<Slot>) {
    if let Some(deployment) = slot.deployment.get().cloned() {
        tokio::spawn(async move { deployment.drain().await });
    }
}

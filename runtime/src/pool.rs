//! Instance pools: where a call finds its instance, and how warm they are kept.
//!
//! One [`Pool`] type serves both levels of DESIGN's vocabulary: a function-level pool
//! holds the instances of one version of one function; a runtime-level pool holds
//! generic instances of a runtime that any of its functions can take and load itself
//! into (`prewarmed`). Both follow a [`Policy`] and share one maintainer: it refills
//! `min_warm` and evicts idle instances after `keep_alive`, never on a caller's path.
//!
//! A call takes an idle instance (`warm`), or a runtime-level instance (`prewarmed`),
//! or creates one (`cold`; `warm` for an executor whose instances are as cheap to
//! create as to reuse once the version has run). Never more than `max_instances`
//! exist; calls beyond wait in a bounded queue until their deadline, then get "at
//! capacity" (429).
//!
//! Cancel safety: a caller may vanish at any await (a dropped HTTP request drops its
//! future). Every count a call changes is held by a guard ([`Lease`], [`Waiting`]), so
//! dropping the call gives its place back, and an instance dropped mid-call is
//! destroyed, never reused.

use async_trait::async_trait;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::executor::{CallOutcome, CallRequest, CallResult, Executor, FunctionSpec, StartKind};
use crate::policy::{Policy, Preload};

/// How often the maintainer looks at a pool at most (and at least every keep_alive/4).
const MAINTAIN_EVERY: Duration = Duration::from_millis(250);

/// How long a runtime-level instance may take to start in the background (no call
/// waits on it; a container's boot is ~150 ms, a cold engine can take seconds).
const GENERIC_START_BUDGET: Duration = Duration::from_secs(60);

/// The longest the maintainer waits before retrying after failed starts: a module
/// whose start function never ends must not keep a core busy forever.
const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(30);

/// How soon the maintainer tries again while the backend is unreachable (a Docker
/// engine stopped or restarting): asking costs nothing then (the connection is
/// refused at once), and an outage of a few seconds must not leave the pool cold for
/// the full backoff after the engine is back.
const UNAVAILABLE_RETRY: Duration = Duration::from_millis(500);

/// What a function's pool looks like right now.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStats {
    /// The function.
    pub function: String,
    /// The version the pool serves.
    pub version: i64,
    /// Its runtime.
    pub runtime: String,
    /// The policy in force.
    pub preload: String,
    /// Ready instances.
    pub idle: usize,
    /// Instances running a call.
    pub busy: usize,
    /// Instances being created.
    pub starting: usize,
    /// Calls waiting for an instance.
    pub waiting: usize,
    /// Calls so far by start kind.
    pub starts: BTreeMap<String, u64>,
    /// Instances created so far.
    pub created: u64,
    /// Instances destroyed (or, for runtime-level pools, claimed) so far, by reason.
    pub destroyed: BTreeMap<String, u64>,
}

/// What a runtime-level pool looks like right now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimePoolStats {
    /// The runtime.
    pub runtime: String,
    /// Its policy.
    pub policy: Policy,
    /// Generic instances ready to be claimed.
    pub idle: usize,
    /// Instances being started.
    pub starting: usize,
    /// Instances started so far.
    pub created: u64,
    /// Instances that left the pool so far, by reason (`claimed` by a function,
    /// `keep_alive`, `drained`).
    pub left: BTreeMap<String, u64>,
}

/// The object-safe face of a function pool, so the invoker can hold pools of any
/// executor.
#[async_trait]
pub(crate) trait Deployment: Send + Sync {
    /// Runs one call by `deadline`.
    async fn call(&self, request: CallRequest, deadline: Instant) -> Result<CallOutcome>;
    /// Takes the policy of a newer resolution of the same version.
    fn follow(&self, spec: &FunctionSpec);
    /// Stops keeping instances and destroys the idle ones; busy ones are destroyed
    /// when their call ends.
    async fn drain(&self);
    /// The pool's current state.
    fn stats(&self) -> PoolStats;
}

/// The runtime-level pools of one executor, by runtime name.
pub(crate) type RuntimePools<E> = DashMap<String, Arc<Pool<E>>>;

/// What a pool's instances are.
enum Level<E: Executor> {
    /// Instances of one function version.
    Function {
        spec: Arc<FunctionSpec>,
        prepared: Arc<E::Prepared>,
        /// Where `preload = runtime` finds generic instances to load itself into.
        runtime_pools: Arc<RuntimePools<E>>,
    },
    /// Generic instances of a runtime, waiting for a function to claim them.
    Runtime { runtime: String },
}

struct State<I> {
    /// Idle instances with the time they became idle; newest at the back.
    idle: VecDeque<(I, Instant)>,
    busy: usize,
    starting: usize,
    /// Instances being destroyed in the background after their call answered.
    destroying: usize,
    waiting: usize,
}

impl<I> State<I> {
    fn total(&self) -> usize {
        self.idle.len() + self.busy + self.starting + self.destroying
    }
}

#[derive(Default)]
struct Counters {
    starts: [AtomicU64; 3],
    created: AtomicU64,
    destroyed: Mutex<BTreeMap<&'static str, u64>>,
}

/// Background start failures in a row, and when to try again.
#[derive(Default)]
struct Backoff {
    failures: u32,
    retry_at: Option<Instant>,
}

/// The instances of one function version, or the generic instances of one runtime.
pub(crate) struct Pool<E: Executor> {
    executor: Arc<E>,
    level: Level<E>,
    policy: RwLock<Policy>,
    state: Mutex<State<E::Instance>>,
    freed: tokio::sync::Notify,
    /// Wakes the maintainer when an instance left the pool, so the next call finds a
    /// replacement ready instead of waiting for the maintainer's next pass
    /// ([`Pool::wake_refill`]). Held
    /// apart from the pool: the maintainer waits on it without keeping the pool alive.
    refill: Arc<tokio::sync::Notify>,
    // The first call of a version in this process pays for loading what `prepare`
    // produced into a first instance.
    ran_once: AtomicBool,
    drained: AtomicBool,
    counters: Counters,
    backoff: Mutex<Backoff>,
}

/// A call's place in a pool: counted as busy from `acquire` until dropped. Holding
/// the instance while it runs means a vanished caller's instance is destroyed.
struct Lease<E: Executor> {
    pool: Arc<Pool<E>>,
    instance: Option<E::Instance>,
    /// Set once `release` has settled the counts, so `drop` has nothing to do.
    settled: bool,
}

impl<E: Executor> Drop for Lease<E> {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let instance = self.instance.take();
        let mut st = self.pool.lock();
        st.busy -= 1;
        if let Some(instance) = instance {
            // The caller went away mid-call: the instance may be anywhere in the
            // function's code, so it is destroyed, and counted until it is gone.
            st.destroying += 1;
            drop(st);
            self.pool.destroy_counted(instance, "cancelled");
        } else {
            drop(st);
        }
        self.pool.freed.notify_one();
    }
}

/// A call waiting for an instance; the wait count is given back however the wait ends.
struct Waiting<'a, E: Executor>(&'a Pool<E>);

impl<E: Executor> Drop for Waiting<'_, E> {
    fn drop(&mut self) {
        self.0.lock().waiting -= 1;
    }
}

/// An instance being started; the count is given back however the start ends.
struct Starting<'a, E: Executor>(&'a Pool<E>);

impl<E: Executor> Drop for Starting<'_, E> {
    fn drop(&mut self) {
        self.0.lock().starting -= 1;
    }
}

/// Runs a future on the current tokio runtime if there is one (a guard may be dropped
/// after the runtime is gone, at the very end of a shutdown; then there is nothing
/// left to clean up with).
fn spawn_detached(future: impl std::future::Future<Output = ()> + Send + 'static) {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(future);
    }
}

impl<E: Executor> Pool<E> {
    fn start(executor: Arc<E>, level: Level<E>, policy: Policy) -> Arc<Self> {
        let pool = Arc::new(Pool {
            executor,
            level,
            policy: RwLock::new(policy),
            state: Mutex::new(State {
                idle: VecDeque::new(),
                busy: 0,
                starting: 0,
                destroying: 0,
                waiting: 0,
            }),
            freed: tokio::sync::Notify::new(),
            refill: Arc::new(tokio::sync::Notify::new()),
            ran_once: AtomicBool::new(false),
            drained: AtomicBool::new(false),
            counters: Counters::default(),
            backoff: Mutex::new(Backoff::default()),
        });
        tokio::spawn(maintain(Arc::downgrade(&pool), pool.refill.clone()));
        pool
    }

    /// A pool for a prepared function version, following `spec.policy`; its
    /// maintainer runs until the pool is dropped or drained.
    pub(crate) fn for_function(
        executor: Arc<E>,
        spec: Arc<FunctionSpec>,
        prepared: E::Prepared,
        runtime_pools: Arc<RuntimePools<E>>,
    ) -> Arc<Self> {
        let policy = spec.policy.clone();
        Pool::start(
            executor,
            Level::Function {
                spec,
                prepared: Arc::new(prepared),
                runtime_pools,
            },
            policy,
        )
    }

    /// A runtime-level pool of `runtime`'s generic instances.
    pub(crate) fn for_runtime(executor: Arc<E>, runtime: &str, policy: Policy) -> Arc<Self> {
        Pool::start(
            executor,
            Level::Runtime {
                runtime: runtime.to_string(),
            },
            policy,
        )
    }

    fn policy(&self) -> Policy {
        self.policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the policy; the maintainer applies it at its next pass.
    pub(crate) fn set_policy(&self, policy: Policy) {
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) = policy;
        // Waiting calls may now fit under a raised cap.
        self.freed.notify_waiters();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<E::Instance>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn name(&self) -> &str {
        match &self.level {
            Level::Function { spec, .. } => &spec.name,
            Level::Runtime { runtime } => runtime,
        }
    }

    /// How many idle instances the maintainer keeps: `min_warm` when the policy
    /// preloads at this pool's level, none otherwise.
    fn keep_warm(&self, policy: &Policy) -> usize {
        let level = match self.level {
            Level::Function { .. } => Preload::Function,
            Level::Runtime { .. } => Preload::Runtime,
        };
        if policy.preload == level {
            policy.min_warm as usize
        } else {
            0
        }
    }

    /// Has the maintainer refill now rather than at its next pass, where a start is
    /// cheap (wasm: microseconds). A container takes a second to start and counts
    /// against `max_instances` meanwhile: refilled at once, it would take the place a
    /// call right behind needs to start its own (a 429 under `max_queue = 0`).
    fn wake_refill(&self) {
        if self.executor.creating_is_warm() {
            self.refill.notify_one();
        }
    }

    /// A place in the pool with an idle instance, or the right to make one; waits
    /// (bounded) at capacity.
    async fn acquire(self: &Arc<Self>, policy: &Policy, deadline: Instant) -> Result<Lease<E>> {
        loop {
            self.discard_dead();
            let freed = self.freed.notified();
            let waiting = {
                let mut st = self.lock();
                let lease = |instance| Lease {
                    pool: self.clone(),
                    instance,
                    settled: false,
                };
                if policy.preload != Preload::None
                    && let Some((instance, _)) = st.idle.pop_back()
                {
                    st.busy += 1;
                    self.wake_refill();
                    return Ok(lease(Some(instance)));
                }
                if st.total() < policy.max_instances as usize {
                    st.busy += 1;
                    return Ok(lease(None));
                }
                if st.waiting >= policy.max_queue as usize {
                    return Err(self.at_capacity(format!(
                        "all {} instances are busy and {} calls are already waiting",
                        policy.max_instances, st.waiting
                    )));
                }
                st.waiting += 1;
                Waiting(self)
            };
            let waited = tokio::time::timeout_at(deadline.into(), freed).await;
            drop(waiting);
            if waited.is_err() {
                return Err(self.at_capacity(format!(
                    "no instance came free before the call's deadline (all {} busy)",
                    policy.max_instances
                )));
            }
        }
    }

    fn at_capacity(&self, reason: String) -> Error {
        Error::AtCapacity {
            function: self.name().to_string(),
            reason,
        }
    }

    fn count_destroyed(&self, reason: &'static str) {
        let mut destroyed = self
            .counters
            .destroyed
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *destroyed.entry(reason).or_default() += 1;
    }

    async fn destroy(&self, instance: E::Instance, reason: &'static str) {
        self.count_destroyed(reason);
        self.executor.destroy(instance).await;
    }

    /// Destroys an instance in the background that already counts as `destroying`.
    /// Counted by `reason` now, not when the task runs: whoever saw the call end sees
    /// its instance counted too.
    fn destroy_counted(self: &Arc<Self>, instance: E::Instance, reason: &'static str) {
        self.count_destroyed(reason);
        let pool = self.clone();
        spawn_detached(async move {
            pool.executor.destroy(instance).await;
            pool.lock().destroying -= 1;
            pool.freed.notify_one();
        });
    }

    /// Takes the idle instances that are no longer alive (their container went with a
    /// lost engine) out of the pool and destroys them, so no call gets one and the
    /// maintainer replaces them.
    fn discard_dead(self: &Arc<Self>) {
        let dead: Vec<E::Instance> = {
            let mut st = self.lock();
            if st.idle.iter().all(|(i, _)| self.executor.alive(i)) {
                return;
            }
            let (alive, dead): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut st.idle)
                .into_iter()
                .partition(|(i, _)| self.executor.alive(i));
            st.idle = alive;
            // Counted before the lock is let go: they stay against `max_instances`
            // until they are gone.
            st.destroying += dead.len();
            dead.into_iter().map(|(i, _)| i).collect()
        };
        tracing::info!(pool = %self.name(), dead = dead.len(), "discarding idle instances whose backend went away");
        for instance in dead {
            self.destroy_counted(instance, "dead");
        }
    }

    /// Creates one instance of this pool's kind by `deadline`.
    async fn create(&self, deadline: Instant) -> Result<E::Instance> {
        let created = match &self.level {
            Level::Function { spec, prepared, .. } => {
                // The executor sees the policy in force, also after a PATCH changed it
                // (`follow`): a container backend starts `preload = none` calls on
                // containers started ahead of them.
                let policy = self.policy();
                if policy == spec.policy {
                    self.executor.create(spec, prepared, deadline).await
                } else {
                    let current = FunctionSpec {
                        policy,
                        ..(**spec).clone()
                    };
                    self.executor.create(&current, prepared, deadline).await
                }
            }
            Level::Runtime { runtime } => self.executor.create_generic(runtime, deadline).await,
        };
        if created.is_ok() {
            self.counters.created.fetch_add(1, Ordering::Relaxed);
        }
        created
    }

    /// The deadline of a start nobody waits for: the function's own timeout bounds a
    /// start function; a generic instance gets a fixed budget.
    fn background_deadline(&self) -> Instant {
        let budget = match &self.level {
            Level::Function { spec, .. } => spec.limits.timeout(),
            Level::Runtime { .. } => GENERIC_START_BUDGET,
        };
        Instant::now() + budget
    }

    /// Hands out an idle generic instance (runtime-level pools): it leaves this pool
    /// for the function that claimed it, and the maintainer starts a replacement.
    fn claim_idle(&self) -> Option<E::Instance> {
        let (instance, _) = self.lock().idle.pop_back()?;
        self.count_destroyed("claimed");
        self.wake_refill();
        Some(instance)
    }

    /// A runtime-level instance with this function loaded into it, if the runtime has
    /// one ready and the function can use it.
    async fn take_prewarmed(&self, deadline: Instant) -> Option<E::Instance> {
        let Level::Function {
            spec,
            prepared,
            runtime_pools,
        } = &self.level
        else {
            return None;
        };
        if !self.executor.can_load(spec, prepared) {
            return None;
        }
        let generic = runtime_pools.get(&spec.runtime)?.claim_idle();
        let mut instance = generic?;
        // Dropped here if the caller vanishes: an instance's own drop cleans it up.
        match self
            .executor
            .load(spec, prepared, &mut instance, deadline)
            .await
        {
            Ok(()) => Some(instance),
            Err(e) => {
                tracing::warn!(function = %spec.name, "a runtime-level instance could not load the function: {e}");
                self.executor.destroy(instance).await;
                None
            }
        }
    }

    /// Runs one call by `deadline` (function-level pools only).
    async fn call_in(
        self: &Arc<Self>,
        request: CallRequest,
        deadline: Instant,
    ) -> Result<CallOutcome> {
        let Level::Function { spec, .. } = &self.level else {
            return Err(Error::Internal(anyhow::anyhow!(
                "a runtime-level pool cannot run calls"
            )));
        };
        let started = Instant::now();
        let policy = self.policy();
        let first = !self.ran_once.swap(true, Ordering::AcqRel);

        let mut lease = self.acquire(&policy, deadline).await?;
        let (init, start) = if lease.instance.is_some() {
            (Duration::ZERO, StartKind::Warm)
        } else {
            let t = Instant::now();
            let prewarmed = match policy.preload {
                Preload::Runtime => self.take_prewarmed(deadline).await,
                _ => None,
            };
            if let Some(instance) = prewarmed {
                self.counters.created.fetch_add(1, Ordering::Relaxed);
                lease.instance = Some(instance);
                (t.elapsed(), StartKind::Prewarmed)
            } else {
                match self.create(deadline).await {
                    Ok(instance) => lease.instance = Some(instance),
                    Err(Error::Deadline(message)) => {
                        // The lease gives the place back when dropped.
                        return Ok(CallOutcome {
                            result: CallResult::Timeout(message),
                            start: StartKind::Cold,
                            timings: crate::executor::Timings {
                                queue: t.duration_since(started),
                                init: t.elapsed(),
                                exec: Duration::ZERO,
                            },
                            ..CallOutcome::default()
                        });
                    }
                    Err(e) => return Err(e),
                }
                let cheap = self.executor.creating_is_warm();
                let start = match policy.preload {
                    Preload::None => StartKind::Cold,
                    Preload::Runtime if cheap => StartKind::Prewarmed,
                    Preload::Function if cheap && !first => StartKind::Warm,
                    _ => StartKind::Cold,
                };
                (t.elapsed(), start)
            }
        };
        self.counters.starts[start as usize].fetch_add(1, Ordering::Relaxed);
        let queue = started.elapsed().saturating_sub(init);

        let exec_started = Instant::now();
        let instance = lease
            .instance
            .as_mut()
            .expect("the lease holds an instance");
        let invoked = self
            .executor
            .invoke(spec, instance, &request, deadline)
            .await;
        let exec = exec_started.elapsed();

        let reusable = invoked.is_ok() && self.executor.reusable(instance);
        let reason = if !reusable {
            match &invoked {
                // Told apart, so an operator sees how many instances deadlines killed.
                Ok(outcome) if matches!(outcome.result, CallResult::Timeout(_)) => "timeout",
                Ok(_) => "spent",
                Err(_) => "failed",
            }
        } else if policy.preload == Preload::None {
            "policy_none"
        } else if self.drained.load(Ordering::Acquire) {
            "drained"
        } else {
            ""
        };
        self.release(&mut lease, (!reason.is_empty()).then_some(reason))
            .await;

        let mut outcome = invoked?;
        outcome.start = start;
        outcome.timings = crate::executor::Timings { queue, init, exec };
        Ok(outcome)
    }

    /// Ends a lease after its call: the instance goes back to the pool, or is
    /// destroyed for `reason`.
    async fn release(self: &Arc<Self>, lease: &mut Lease<E>, destroy: Option<&'static str>) {
        let instance = lease.instance.take();
        lease.settled = true;
        let leftover = {
            let mut st = self.lock();
            st.busy -= 1;
            match (instance, destroy) {
                (Some(instance), None) => {
                    st.idle.push_back((instance, Instant::now()));
                    None
                }
                (instance, Some(reason)) => instance.map(|i| (i, reason)),
                (None, None) => None,
            }
        };
        if let Some((instance, reason)) = leftover {
            // The caller has its answer before the instance is gone: removing a
            // container takes ~75 ms, and even a wasm instance's teardown (resetting
            // its memory slot) is a tenth of a warm call.
            self.lock().destroying += 1;
            self.destroy_counted(instance, reason);
        }
        self.freed.notify_one();
    }

    /// Refills to the policy's warm level and evicts idle instances past `keep_alive`.
    async fn maintain_once(self: &Arc<Self>) {
        self.discard_dead();
        let policy = self.policy();
        let keep = self.keep_warm(&policy);
        let now = Instant::now();
        let expired: Vec<E::Instance> = {
            let mut st = self.lock();
            let mut expired = Vec::new();
            // Oldest first; the newest `keep` stay whatever their age.
            while st.idle.len() > keep {
                let too_old = st
                    .idle
                    .front()
                    .is_some_and(|(_, since)| now.duration_since(*since) >= policy.keep_alive);
                let over_cap = st.total() > policy.max_instances as usize;
                let unwanted =
                    policy.preload == Preload::None || matches!(self.level, Level::Runtime { .. });
                if !(too_old || over_cap || unwanted) {
                    break;
                }
                if let Some((instance, _)) = st.idle.pop_front() {
                    expired.push(instance);
                }
            }
            expired
        };
        for instance in expired {
            self.destroy(instance, "keep_alive").await;
        }

        if keep == 0 || self.drained.load(Ordering::Acquire) {
            return;
        }
        {
            let backoff = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
            if backoff.retry_at.is_some_and(|at| Instant::now() < at) {
                return;
            }
        }
        loop {
            let starting = {
                let mut st = self.lock();
                let ready = st.idle.len() + st.starting;
                if ready >= keep || st.total() >= policy.max_instances as usize {
                    return;
                }
                st.starting += 1;
                Starting(self)
            };
            let created = self.create(self.background_deadline()).await;
            drop(starting);
            match created {
                Ok(instance) => {
                    *self.backoff.lock().unwrap_or_else(|e| e.into_inner()) = Backoff::default();
                    self.lock().idle.push_back((instance, Instant::now()));
                    self.freed.notify_one();
                }
                Err(e) => {
                    let mut backoff = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
                    backoff.failures = backoff.failures.saturating_add(1);
                    let unavailable = matches!(e, Error::Unavailable { .. });
                    let wait = if unavailable {
                        UNAVAILABLE_RETRY
                    } else {
                        (MAINTAIN_EVERY * 2u32.saturating_pow(backoff.failures.min(8)))
                            .min(MAX_RETRY_BACKOFF)
                    };
                    backoff.retry_at = Some(Instant::now() + wait);
                    // An outage retries twice a second: say so once, not each time.
                    if !unavailable || backoff.failures == 1 {
                        tracing::warn!(pool = %self.name(), retry_in_ms = wait.as_millis() as u64, "could not pre-start an instance: {e}");
                    } else {
                        tracing::debug!(pool = %self.name(), retry_in_ms = wait.as_millis() as u64, "could not pre-start an instance: {e}");
                    }
                    return;
                }
            }
        }
    }

    /// Stops keeping instances and destroys the idle ones.
    pub(crate) async fn drain_pool(&self) {
        self.drained.store(true, Ordering::Release);
        let idle: Vec<E::Instance> = self.lock().idle.drain(..).map(|(i, _)| i).collect();
        for instance in idle {
            self.destroy(instance, "drained").await;
        }
    }

    fn destroyed(&self) -> BTreeMap<String, u64> {
        self.counters
            .destroyed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect()
    }

    /// The state of a runtime-level pool.
    pub(crate) fn runtime_stats(&self) -> RuntimePoolStats {
        let (idle, starting) = {
            let st = self.lock();
            (st.idle.len(), st.starting)
        };
        RuntimePoolStats {
            runtime: self.name().to_string(),
            policy: self.policy(),
            idle,
            starting,
            created: self.counters.created.load(Ordering::Relaxed),
            left: self.destroyed(),
        }
    }
}

/// The background loop of one pool.
async fn maintain<E: Executor>(pool: Weak<Pool<E>>, refill: Arc<tokio::sync::Notify>) {
    loop {
        let every = match pool.upgrade() {
            Some(pool) if !pool.drained.load(Ordering::Acquire) => {
                pool.maintain_once().await;
                (pool.policy().keep_alive / 4).clamp(Duration::from_millis(20), MAINTAIN_EVERY)
            }
            _ => return,
        };
        // Whichever comes first: the next pass, or an instance taken from the pool.
        let _ = tokio::time::timeout(every, refill.notified()).await;
    }
}

/// The invoker holds function pools as `Arc<dyn Deployment>`; the pool needs its own
/// `Arc` to hand out leases.
pub(crate) struct FunctionPool<E: Executor>(pub(crate) Arc<Pool<E>>);

#[async_trait]
impl<E: Executor> Deployment for FunctionPool<E> {
    async fn call(&self, request: CallRequest, deadline: Instant) -> Result<CallOutcome> {
        self.0.call_in(request, deadline).await
    }

    fn follow(&self, spec: &FunctionSpec) {
        let changed = *self.0.policy.read().unwrap_or_else(|e| e.into_inner()) != spec.policy;
        if changed {
            self.0.set_policy(spec.policy.clone());
        }
    }

    async fn drain(&self) {
        self.0.drain_pool().await;
    }

    fn stats(&self) -> PoolStats {
        let pool = &self.0;
        let policy = pool.policy();
        let (idle, busy, starting, waiting) = {
            let st = pool.lock();
            (st.idle.len(), st.busy, st.starting, st.waiting)
        };
        let (version, runtime) = match &pool.level {
            Level::Function { spec, .. } => (spec.version, spec.runtime.clone()),
            Level::Runtime { runtime } => (0, runtime.clone()),
        };
        PoolStats {
            function: pool.name().to_string(),
            version,
            runtime,
            preload: policy.preload.as_str().to_string(),
            idle,
            busy,
            starting,
            waiting,
            starts: StartKind::ALL
                .into_iter()
                .map(|k| {
                    (
                        k.as_str().to_string(),
                        pool.counters.starts[k as usize].load(Ordering::Relaxed),
                    )
                })
                .collect(),
            created: pool.counters.created.load(Ordering::Relaxed),
            destroyed: pool.destroyed(),
        }
    }
}

#[cfg(test)]
mod tests;

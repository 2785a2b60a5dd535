//! Instance pools: where a call finds its instance, and how warm they are kept.
//!
//! A [`FunctionPool`] holds the instances of one version of one function under a
//! [`Policy`]. A call takes an idle instance (`warm`), or creates one: `cold`, or
//! `prewarmed` when the runtime level was ready (for wasm: engine and linker, always),
//! or `warm` for an executor whose instances are as cheap to create as to reuse once
//! the version has run. Never more than `max_instances` exist; calls beyond wait in a
//! bounded queue until their deadline, then get "at capacity" (429). After a call the
//! instance returns to the pool if it can be reused and the policy keeps instances;
//! otherwise it is destroyed. A background maintainer refills `min_warm` and evicts
//! idle instances after `keep_alive`: never on a caller's path.

use async_trait::async_trait;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::executor::{
    CallOutcome, CallRequest, Executor, FunctionSpec, Invocation, StartKind, Timings,
};
use crate::policy::{Policy, Preload};

/// How often the maintainer looks at a pool at most (and at least every keep_alive/4).
const MAINTAIN_EVERY: Duration = Duration::from_millis(250);

/// What a pool looks like right now.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
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
    /// Instances destroyed so far, by reason.
    pub destroyed: BTreeMap<String, u64>,
}

/// The object-safe face of a pool, so the invoker can hold pools of any executor.
#[async_trait]
pub(crate) trait Deployment: Send + Sync {
    /// Runs one call.
    async fn call(&self, request: CallRequest) -> Result<CallOutcome>;
    /// Stops keeping instances and destroys the idle ones; busy ones are destroyed
    /// when their call ends.
    async fn drain(&self);
    /// The pool's current state.
    fn stats(&self) -> PoolStats;
    /// Replaces the policy; the maintainer applies it at its next pass.
    fn set_policy(&self, policy: Policy);
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
    cold: AtomicU64,
    prewarmed: AtomicU64,
    warm: AtomicU64,
    created: AtomicU64,
    destroyed: Mutex<BTreeMap<&'static str, u64>>,
}

/// The instances of one function version.
pub(crate) struct FunctionPool<E: Executor> {
    /// This pool, for the background tasks it starts.
    me: Weak<Self>,
    executor: Arc<E>,
    spec: FunctionSpec,
    prepared: Arc<E::Prepared>,
    policy: RwLock<Policy>,
    state: Mutex<State<E::Instance>>,
    freed: tokio::sync::Notify,
    // The first call of a version in this process pays for loading what `prepare`
    // produced into a first instance.
    ran_once: AtomicBool,
    drained: AtomicBool,
    counters: Counters,
}

impl<E: Executor> FunctionPool<E> {
    /// A pool for a prepared version; its maintainer runs until the pool is dropped
    /// or drained.
    pub(crate) fn start(
        executor: Arc<E>,
        spec: FunctionSpec,
        prepared: E::Prepared,
        policy: Policy,
    ) -> Arc<Self> {
        let pool = Arc::new_cyclic(|me| FunctionPool {
            me: me.clone(),
            executor,
            spec,
            prepared: Arc::new(prepared),
            policy: RwLock::new(policy),
            state: Mutex::new(State {
                idle: VecDeque::new(),
                busy: 0,
                starting: 0,
                destroying: 0,
                waiting: 0,
            }),
            freed: tokio::sync::Notify::new(),
            ran_once: AtomicBool::new(false),
            drained: AtomicBool::new(false),
            counters: Counters::default(),
        });
        tokio::spawn(maintain(Arc::downgrade(&pool)));
        pool
    }

    fn policy(&self) -> Policy {
        self.policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<E::Instance>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An idle instance, or the right to create one; waits (bounded) at capacity.
    async fn acquire(&self, policy: &Policy, deadline: Instant) -> Result<Option<E::Instance>> {
        loop {
            let freed = self.freed.notified();
            {
                let mut st = self.lock();
                if policy.preload != Preload::None
                    && let Some((instance, _)) = st.idle.pop_back()
                {
                    st.busy += 1;
                    return Ok(Some(instance));
                }
                if st.total() < policy.max_instances as usize {
                    st.busy += 1;
                    return Ok(None);
                }
                if st.waiting >= policy.max_queue as usize {
                    return Err(self.at_capacity(format!(
                        "all {} instances are busy and {} calls are already waiting",
                        policy.max_instances, st.waiting
                    )));
                }
                st.waiting += 1;
            }
            let waited = tokio::time::timeout_at(deadline.into(), freed).await;
            self.lock().waiting -= 1;
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
            function: self.spec.name.clone(),
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

    async fn create(&self) -> Result<E::Instance> {
        let created = self.executor.create(&self.spec, &self.prepared).await;
        if created.is_ok() {
            self.counters.created.fetch_add(1, Ordering::Relaxed);
        }
        created
    }

    /// Refills to `min_warm` and evicts idle instances past `keep_alive`.
    async fn maintain_once(&self) {
        let policy = self.policy();
        let now = Instant::now();
        let expired: Vec<E::Instance> = {
            let mut st = self.lock();
            let keep = match policy.preload {
                Preload::None => 0,
                _ => policy.min_warm as usize,
            };
            let mut expired = Vec::new();
            // Oldest first; the newest `keep` stay whatever their age.
            while st.idle.len() > keep {
                let too_old = st
                    .idle
                    .front()
                    .is_some_and(|(_, since)| now.duration_since(*since) >= policy.keep_alive);
                let over_cap = st.total() > policy.max_instances as usize;
                if !(too_old || over_cap || policy.preload == Preload::None) {
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

        if policy.preload != Preload::Function || self.drained.load(Ordering::Acquire) {
            return;
        }
        loop {
            {
                let mut st = self.lock();
                let ready = st.idle.len() + st.starting;
                if ready >= policy.min_warm as usize || st.total() >= policy.max_instances as usize
                {
                    return;
                }
                st.starting += 1;
            }
            let created = self.create().await;
            let mut st = self.lock();
            st.starting -= 1;
            match created {
                Ok(instance) => {
                    st.idle.push_back((instance, Instant::now()));
                    drop(st);
                    self.freed.notify_one();
                }
                Err(e) => {
                    drop(st);
                    tracing::warn!(function = %self.spec.name, "could not pre-start an instance: {e}");
                    return;
                }
            }
        }
    }
}

/// The background loop of one pool.
async fn maintain<E: Executor>(pool: Weak<FunctionPool<E>>) {
    loop {
        let every = match pool.upgrade() {
            Some(pool) if !pool.drained.load(Ordering::Acquire) => {
                pool.maintain_once().await;
                (pool.policy().keep_alive / 4).clamp(Duration::from_millis(20), MAINTAIN_EVERY)
            }
            _ => return,
        };
        tokio::time::sleep(every).await;
    }
}

#[async_trait]
impl<E: Executor> Deployment for FunctionPool<E> {
    async fn call(&self, request: CallRequest) -> Result<CallOutcome> {
        let started = Instant::now();
        let policy = self.policy();
        let deadline = started + self.spec.limits.timeout();
        let first = !self.ran_once.swap(true, Ordering::AcqRel);

        let (mut instance, init, start) = match self.acquire(&policy, deadline).await? {
            Some(instance) => (instance, Duration::ZERO, StartKind::Warm),
            None => {
                let t = Instant::now();
                let stem = match policy.preload {
                    Preload::Runtime => {
                        self.executor
                            .take_prewarmed(&self.spec, &self.prepared)
                            .await
                    }
                    _ => None,
                };
                if let Some(instance) = stem {
                    self.counters.created.fetch_add(1, Ordering::Relaxed);
                    (instance, t.elapsed(), StartKind::Prewarmed)
                } else {
                    let created = match self.create().await {
                        Ok(instance) => instance,
                        Err(e) => {
                            self.lock().busy -= 1;
                            self.freed.notify_one();
                            return Err(e);
                        }
                    };
                    let cheap = self.executor.creating_is_warm();
                    let start = match policy.preload {
                        Preload::None => StartKind::Cold,
                        Preload::Runtime if cheap => StartKind::Prewarmed,
                        Preload::Function if cheap && !first => StartKind::Warm,
                        _ => StartKind::Cold,
                    };
                    (created, t.elapsed(), start)
                }
            }
        };
        match start {
            StartKind::Cold => &self.counters.cold,
            StartKind::Prewarmed => &self.counters.prewarmed,
            StartKind::Warm => &self.counters.warm,
        }
        .fetch_add(1, Ordering::Relaxed);
        let queue = started.elapsed().saturating_sub(init);

        let exec_started = Instant::now();
        let invoked = self
            .executor
            .invoke(&self.spec, &mut instance, &request)
            .await;
        let exec = exec_started.elapsed();

        let reusable = matches!(&invoked, Ok(Invocation { reusable: true, .. }));
        let keep =
            reusable && policy.preload != Preload::None && !self.drained.load(Ordering::Acquire);
        let background = !self.executor.destroying_is_cheap();
        let leftover = {
            let mut st = self.lock();
            st.busy -= 1;
            if keep {
                st.idle.push_back((instance, Instant::now()));
                None
            } else {
                if background {
                    st.destroying += 1;
                }
                Some(instance)
            }
        };
        if let Some(instance) = leftover {
            let reason = match (&invoked, policy.preload) {
                (Ok(Invocation { reusable: true, .. }), Preload::None) => "policy_none",
                (Ok(Invocation { reusable: true, .. }), _) => "drained",
                (Ok(_), _) => "spent",
                (Err(_), _) => "failed",
            };
            if background {
                // The caller has its answer; removing a container takes ~75 ms.
                let pool = self.me.upgrade().expect("a pool serves calls from its Arc");
                tokio::spawn(async move {
                    pool.destroy(instance, reason).await;
                    pool.lock().destroying -= 1;
                    pool.freed.notify_one();
                });
            } else {
                self.destroy(instance, reason).await;
            }
        }
        self.freed.notify_one();

        let invocation = invoked?;
        Ok(CallOutcome {
            result: invocation.result,
            output: invocation.output,
            logs: invocation.logs,
            start,
            timings: Timings { queue, init, exec },
        })
    }

    async fn drain(&self) {
        self.drained.store(true, Ordering::Release);
        let idle: Vec<E::Instance> = self.lock().idle.drain(..).map(|(i, _)| i).collect();
        for instance in idle {
            self.destroy(instance, "drained").await;
        }
    }

    fn stats(&self) -> PoolStats {
        let policy = self.policy();
        let st = self.lock();
        let destroyed = self
            .counters
            .destroyed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        PoolStats {
            function: self.spec.name.clone(),
            version: self.spec.version,
            runtime: self.spec.runtime.clone(),
            preload: policy.preload.as_str().to_string(),
            idle: st.idle.len(),
            busy: st.busy,
            starting: st.starting,
            waiting: st.waiting,
            starts: BTreeMap::from([
                (
                    "cold".to_string(),
                    self.counters.cold.load(Ordering::Relaxed),
                ),
                (
                    "prewarmed".to_string(),
                    self.counters.prewarmed.load(Ordering::Relaxed),
                ),
                (
                    "warm".to_string(),
                    self.counters.warm.load(Ordering::Relaxed),
                ),
            ]),
            created: self.counters.created.load(Ordering::Relaxed),
            destroyed,
        }
    }

    fn set_policy(&self, policy: Policy) {
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) = policy;
        // Waiting calls may now fit under a raised cap.
        self.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::CallResult;
    use std::path::Path;

    /// Instances that take `removal` to destroy, like containers.
    struct SlowToRemove {
        removal: Duration,
        alive: AtomicU64,
    }

    #[async_trait]
    impl Executor for SlowToRemove {
        type Prepared = ();
        type Instance = ();

        fn name(&self) -> &'static str {
            "slow"
        }
        fn can_handle(&self, _runtime: &str) -> bool {
            true
        }
        async fn prepare(&self, _spec: &FunctionSpec, _bundle: &Path) -> Result<()> {
            Ok(())
        }
        async fn create(&self, _spec: &FunctionSpec, _prepared: &Arc<()>) -> Result<()> {
            self.alive.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        async fn invoke(
            &self,
            _spec: &FunctionSpec,
            _instance: &mut (),
            call: &CallRequest,
        ) -> Result<Invocation> {
            Ok(Invocation {
                result: CallResult::Done,
                output: call.input.clone(),
                logs: Default::default(),
                reusable: true,
            })
        }
        async fn destroy(&self, _instance: ()) {
            tokio::time::sleep(self.removal).await;
            self.alive.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn pool(removal: Duration, max_instances: u32) -> Arc<FunctionPool<SlowToRemove>> {
        let executor = Arc::new(SlowToRemove {
            removal,
            alive: AtomicU64::new(0),
        });
        let spec = FunctionSpec {
            name: "f".into(),
            version: 1,
            runtime: "slow".into(),
            digest: String::new(),
            limits: Default::default(),
        };
        let policy = Policy {
            preload: Preload::None,
            max_instances,
            ..Policy::default()
        };
        FunctionPool::start(executor, spec, (), policy)
    }

    fn request() -> CallRequest {
        CallRequest {
            call_id: "c".into(),
            input: bytes::Bytes::from_static(b"{}"),
        }
    }

    #[tokio::test]
    async fn a_slow_removal_happens_after_the_answer_and_still_holds_its_slot() {
        let pool = pool(Duration::from_millis(300), 1);
        let first = pool.call(request()).await.unwrap();
        assert_eq!(first.start, StartKind::Cold);
        // Answered while the instance is still being removed...
        assert_eq!(pool.executor.alive.load(Ordering::SeqCst), 1);
        assert_eq!(pool.lock().destroying, 1);

        // ...and it still counts against max_instances = 1: the next call waits for
        // the removal instead of running a second instance beside it.
        let waited = Instant::now();
        pool.call(request()).await.unwrap();
        assert!(
            waited.elapsed() >= Duration::from_millis(200),
            "{:?}",
            waited.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(pool.executor.alive.load(Ordering::SeqCst), 0);
        assert_eq!(pool.lock().destroying, 0);
        assert_eq!(pool.stats().destroyed.get("policy_none"), Some(&2));
    }
}

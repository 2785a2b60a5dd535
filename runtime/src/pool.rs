//! Instance pools: where a call finds its instance.
//!
//! A [`FunctionPool`] holds the instances of one version of one function. A call takes
//! an idle instance if there is one (`warm`), otherwise creates one (`cold`, unless the
//! executor's instances are as cheap to create as to reuse and the version has already
//! run in this process: then `warm`); afterwards the
//! instance goes back to the pool if its executor says it can be reused, and is
//! destroyed otherwise. At most `max_idle` instances are kept.

use async_trait::async_trait;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::error::Result;
use crate::executor::{
    CallOutcome, CallRequest, Executor, FunctionSpec, Invocation, StartKind, Timings,
};

/// Idle instances kept per function version until the preload policy decides more.
const DEFAULT_MAX_IDLE: usize = 4;

/// The object-safe face of a pool, so the invoker can hold pools of any executor.
#[async_trait]
pub(crate) trait Deployment: Send + Sync {
    /// Runs one call.
    async fn call(&self, request: CallRequest) -> Result<CallOutcome>;
    /// Destroys every idle instance.
    async fn drain(&self);
}

/// The instances of one function version.
pub(crate) struct FunctionPool<E: Executor> {
    executor: Arc<E>,
    spec: FunctionSpec,
    prepared: Arc<E::Prepared>,
    idle: Mutex<Vec<E::Instance>>,
    max_idle: usize,
    // The first call of a version in this process is `cold`: it pays for loading what
    // `prepare` produced into a first instance.
    ran_once: AtomicBool,
}

impl<E: Executor> FunctionPool<E> {
    pub(crate) fn new(executor: Arc<E>, spec: FunctionSpec, prepared: E::Prepared) -> Self {
        FunctionPool {
            executor,
            spec,
            prepared: Arc::new(prepared),
            idle: Mutex::new(Vec::new()),
            max_idle: DEFAULT_MAX_IDLE,
            ran_once: AtomicBool::new(false),
        }
    }

    fn take_idle(&self) -> Option<E::Instance> {
        self.idle.lock().expect("pool lock poisoned").pop()
    }

    /// Returns an instance to the pool, or hands it back if the pool is full.
    fn put_idle(&self, instance: E::Instance) -> Option<E::Instance> {
        let mut idle = self.idle.lock().expect("pool lock poisoned");
        if idle.len() < self.max_idle {
            idle.push(instance);
            None
        } else {
            Some(instance)
        }
    }
}

#[async_trait]
impl<E: Executor> Deployment for FunctionPool<E> {
    async fn call(&self, request: CallRequest) -> Result<CallOutcome> {
        let started = Instant::now();
        let first = !self.ran_once.swap(true, Ordering::AcqRel);
        let (mut instance, init, start) = match self.take_idle() {
            Some(instance) => (instance, std::time::Duration::ZERO, StartKind::Warm),
            None => {
                let t = Instant::now();
                let created = self.executor.create(&self.spec, &self.prepared).await?;
                let start = if first || !self.executor.creating_is_warm() {
                    StartKind::Cold
                } else {
                    StartKind::Warm
                };
                (created, t.elapsed(), start)
            }
        };
        let queue = started.elapsed().saturating_sub(init);

        let exec_started = Instant::now();
        let invoked = self
            .executor
            .invoke(&self.spec, &mut instance, &request)
            .await;
        let exec = exec_started.elapsed();

        let reusable = matches!(&invoked, Ok(Invocation { reusable: true, .. }));
        let leftover = if reusable {
            self.put_idle(instance)
        } else {
            Some(instance)
        };
        if let Some(instance) = leftover {
            self.executor.destroy(instance).await;
        }

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
        let idle = std::mem::take(&mut *self.idle.lock().expect("pool lock poisoned"));
        for instance in idle {
            self.executor.destroy(instance).await;
        }
    }
}

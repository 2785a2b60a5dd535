//! A fake executor for the engine's unit tests: instances are numbers, and every
//! phase (start, call, removal) can be made slow or failing.

use async_trait::async_trait;
use bytes::Bytes;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::executor::{
    BackendHealth, CallOutcome, CallRequest, CallResult, Executor, FunctionSpec,
};

/// Instances are numbers; every phase can be made slow or failing.
#[derive(Default)]
pub(crate) struct Fake {
    pub(crate) create_delay: Duration,
    pub(crate) create_fails: bool,
    pub(crate) invoke_delay: Duration,
    pub(crate) removal: Duration,
    /// Instances created and not yet destroyed.
    pub(crate) alive: AtomicUsize,
    /// Creates attempted (failed ones included).
    pub(crate) attempts: AtomicUsize,
    pub(crate) next_id: AtomicU64,
    /// The backend is away: creates fail as `unavailable`.
    pub(crate) backend_down: AtomicBool,
    /// Bumped when the backend is lost: instances of an older one are dead.
    pub(crate) backend_generation: AtomicU64,
    /// The preload of the spec each function-level create was given.
    pub(crate) created_with: std::sync::Mutex<Vec<crate::policy::Preload>>,
}

pub(crate) struct FakeInstance {
    id: u64,
    generation: u64,
    generic: bool,
    loaded: bool,
}

#[async_trait]
impl Executor for Fake {
    type Prepared = ();
    type Instance = FakeInstance;

    fn name(&self) -> &'static str {
        "fake"
    }
    fn can_handle(&self, _runtime: &str) -> bool {
        true
    }
    async fn check_bundle(&self, _runtime: &str, _bundle: &Bytes) -> Result<()> {
        Ok(())
    }
    async fn prepare(&self, _spec: &FunctionSpec, _bundle: &Path) -> Result<()> {
        Ok(())
    }
    async fn create(
        &self,
        spec: &FunctionSpec,
        _prepared: &Arc<()>,
        deadline: Instant,
    ) -> Result<FakeInstance> {
        self.created_with
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(spec.policy.preload);
        self.start(false, deadline).await
    }
    fn has_runtime_instances(&self, _runtime: &str) -> bool {
        true
    }
    async fn create_generic(&self, _runtime: &str, deadline: Instant) -> Result<FakeInstance> {
        self.start(true, deadline).await
    }
    fn can_load(&self, _spec: &FunctionSpec, _prepared: &()) -> bool {
        true
    }
    async fn load(
        &self,
        _spec: &FunctionSpec,
        _prepared: &Arc<()>,
        instance: &mut FakeInstance,
        _deadline: Instant,
    ) -> Result<()> {
        instance.loaded = true;
        Ok(())
    }
    async fn invoke(
        &self,
        _spec: &FunctionSpec,
        instance: &mut FakeInstance,
        call: &CallRequest,
        deadline: Instant,
    ) -> Result<CallOutcome> {
        assert!(
            !instance.generic || instance.loaded,
            "a generic instance ran a call"
        );
        match tokio::time::timeout_at(deadline.into(), tokio::time::sleep(self.invoke_delay)).await
        {
            Ok(()) => Ok(CallOutcome {
                output: call.input.clone(),
                logs: Bytes::from(instance.id.to_string()),
                ..CallOutcome::default()
            }),
            Err(_) => Ok(CallOutcome::ended(
                CallResult::Timeout("deadline".into()),
                Bytes::new(),
            )),
        }
    }
    fn reusable(&self, _instance: &FakeInstance) -> bool {
        true
    }
    fn alive(&self, instance: &FakeInstance) -> bool {
        instance.generation == self.backend_generation.load(Ordering::SeqCst)
    }
    async fn destroy(&self, _instance: FakeInstance) {
        tokio::time::sleep(self.removal).await;
        self.alive.fetch_sub(1, Ordering::SeqCst);
    }
    async fn health(&self) -> BackendHealth {
        BackendHealth {
            reachable: true,
            address: "here".into(),
            version: None,
            error: None,
        }
    }
}

impl Fake {
    async fn start(&self, generic: bool, deadline: Instant) -> Result<FakeInstance> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        if tokio::time::timeout_at(deadline.into(), tokio::time::sleep(self.create_delay))
            .await
            .is_err()
        {
            return Err(Error::Deadline("start ran past the deadline".into()));
        }
        if self.create_fails {
            return Err(Error::InstanceStart("refused".into()));
        }
        if self.backend_down.load(Ordering::SeqCst) {
            return Err(Error::Unavailable {
                backend: "fake",
                reason: "away".into(),
            });
        }
        self.alive.fetch_add(1, Ordering::SeqCst);
        Ok(FakeInstance {
            id: self.next_id.fetch_add(1, Ordering::SeqCst),
            generation: self.backend_generation.load(Ordering::SeqCst),
            generic,
            loaded: false,
        })
    }
}

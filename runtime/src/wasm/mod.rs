//! The wasm executor: WASI preview 1 modules and wasi:http components run in-process
//! on wasmtime.
//!
//! One [`wasmtime::Engine`] per process, with the pooling instance allocator (instance
//! slots are reused, memories are copy-on-write images: instantiation is tens of
//! microseconds) and epoch interruption for deadlines. A function version is prepared
//! once into an `InstancePre` (module compiled or loaded from the on-disk cache, and
//! linked against WASI); every call gets a fresh instance from it, so no state leaks
//! between calls.
//!
//! The module ABI: input on stdin, output on stdout, logs on stderr, exit code 0 for
//! success. The guest sees its function's variables and secrets and two of newt's
//! (`NEWT_FUNCTION`, `NEWT_CALL_ID`) in its environment, no arguments, no files and no
//! sockets.
//!
//! A component (the `wasi:http/proxy` world) gets the call as an HTTP request and
//! answers with status, headers and body ([`component`]). Which of the two a bundle
//! is, is read from its header; from there on one enum ([`cache::Artifact`], `Pre`,
//! [`WasmInstance`]) carries either through the same cache, pools and limits.

mod cache;
mod component;
mod pipes;

use async_trait::async_trait;
use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use wasmtime::component::Linker as ComponentLinker;
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, InstancePre, Linker,
    PoolingAllocationConfig, ResourceLimiter, Store, Trap, TypedFunc, UpdateDeadline,
};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{I32Exit, WasiCtxBuilder};
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};

use crate::cas::Digest;
use crate::egress::EgressStats;
use crate::error::{Error, Result};
use crate::executor::{
    BackendHealth, CallOutcome, CallRequest, CallResult, Executor, FunctionSpec,
};
use crate::limits::MAX_MEMORY_MB;
use cache::Artifact;
use component::{ComponentGuest, Egress};
use pipes::{CappedPipe, Overflow};

pub use cache::CachedArtifact;
pub(crate) use cache::Source as ModuleSource;

/// How often the engine's epoch advances. A running guest yields to the async
/// executor at each tick, so one busy guest cannot starve others or the HTTP server.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Instance slots of the pooling allocator: the most wasm instances alive at once.
/// Each slot reserves address space (not memory) for a linear memory of up to
/// `MAX_MEMORY_MB`.
const POOL_SLOTS: u32 = 1000;

/// Bytes of each table slot reset with memset (the rest with madvise).
const TABLE_KEEP_RESIDENT: usize = 16 << 10;

/// Dirty bytes of a linear memory reset with memset when a slot is released, where
/// the kernel can say which pages are dirty (`PAGEMAP_SCAN`, Linux 6.7+). A guest
/// that dirtied more has the rest reset with madvise.
const MEMORY_KEEP_RESIDENT_SCANNED: usize = 2 << 20;

/// The same without `PAGEMAP_SCAN`: then the lowest bytes are memset whether the
/// guest touched them or not, so only a little is worth it.
const MEMORY_KEEP_RESIDENT_BLIND: usize = 64 << 10;

/// Releases whose madvise calls are batched into one: every madvise in a
/// multithreaded process is a TLB shootdown, an interrupt to every other core.
const DECOMMIT_BATCH: usize = 16;

/// The most table elements a guest may grow a table to.
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// Memories and tables one instance may have: the pooling allocator's per-module
/// defaults, enforced by the limiter too so on-demand allocation (`--no-pooling`, or
/// the fallback) admits exactly the same modules.
const MAX_MEMORIES: usize = 1;
const MAX_TABLES: usize = 1;

/// The same for a component, all its core instances together: the pooling
/// allocator's per-component defaults. A Rust wasm32-wasip2 component has a few core
/// instances (the program, its WASI adapter shims) and one or two memories.
const COMPONENT_MAX_INSTANCES: usize = 20;
const COMPONENT_MAX_MEMORIES: usize = 20;
const COMPONENT_MAX_TABLES: usize = 20;

/// The longest a module may take to compile; past it the deploy is refused (422).
/// An 80 KB Rust guest compiles in ~0.15 s here; a hostile module could take minutes.
const COMPILE_TIMEOUT: Duration = Duration::from_secs(60);

/// Modules compiled at once: compiling takes a core and memory per module, and deploys
/// are not on any call's path.
const COMPILES_AT_ONCE: usize = 2;

/// Settings of the wasm executor.
#[derive(Clone, Debug)]
pub struct WasmConfig {
    /// Where compiled modules are cached (`$NEWT_HOME/cache`).
    pub cache_dir: PathBuf,
    /// Use the pooling allocator (default). If its address-space reservation fails,
    /// the executor falls back to on-demand allocation.
    pub pooling: bool,
}

/// What a guest's store holds.
struct Guest {
    wasi: WasiP1Ctx,
    limiter: GuestLimiter,
}

/// Enforces the memory limit and remembers that it did, so a failure can say why.
struct GuestLimiter {
    max_memory: usize,
    /// Bytes of linear memory the instance holds, all memories together.
    used: usize,
    denied: Option<usize>,
    instances: usize,
    memories: usize,
    tables: usize,
}

impl GuestLimiter {
    /// A module's: one instance, one memory, one table.
    fn new(max_memory: usize) -> Self {
        GuestLimiter {
            max_memory,
            used: 0,
            denied: None,
            instances: 1,
            memories: MAX_MEMORIES,
            tables: MAX_TABLES,
        }
    }

    /// A component's: the memory limit covers all its core instances together.
    fn for_component(max_memory: usize) -> Self {
        GuestLimiter {
            instances: COMPONENT_MAX_INSTANCES,
            memories: COMPONENT_MAX_MEMORIES,
            tables: COMPONENT_MAX_TABLES,
            ..GuestLimiter::new(max_memory)
        }
    }
}

impl ResourceLimiter for GuestLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // The limit is the instance's, not each memory's.
        let total = self.used.saturating_sub(current).saturating_add(desired);
        if total > self.max_memory {
            self.denied = Some(total);
            return Ok(false);
        }
        self.used = total;
        Ok(true)
    }

    fn instances(&self) -> usize {
        self.instances
    }

    fn memories(&self) -> usize {
        self.memories
    }

    fn tables(&self) -> usize {
        self.tables
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// A function version ready to instantiate: a module linked against WASI preview 1,
/// or a component linked against the wasi:http proxy world.
enum Pre {
    Module(InstancePre<Guest>),
    Component(ProxyPre<ComponentGuest>),
}

/// A function version ready to instantiate.
pub struct WasmPrepared {
    pre: Pre,
    /// Whether the module came from the on-disk cache or was compiled now.
    source: ModuleSource,
}

impl WasmPrepared {
    /// `true` when preparing had to compile (cache miss).
    pub fn compiled(&self) -> bool {
        self.source == ModuleSource::Compiled
    }

    /// `true` for a wasi:http component, `false` for a preview 1 module.
    pub fn is_component(&self) -> bool {
        matches!(self.pre, Pre::Component(_))
    }
}

/// One instantiated guest, waiting for its call.
pub struct WasmInstance(Instance);

enum Instance {
    /// A preview 1 module and its `_start`.
    Module {
        store: Store<Guest>,
        start: TypedFunc<(), ()>,
    },
    /// A wasi:http component.
    Component {
        store: Store<ComponentGuest>,
        proxy: Proxy,
    },
}

/// Runs WASI preview 1 modules and wasi:http components on wasmtime.
pub struct WasmExecutor {
    engine: Engine,
    compiles: Arc<tokio::sync::Semaphore>,
    linker: Arc<Linker<Guest>>,
    component_linker: Arc<ComponentLinker<ComponentGuest>>,
    cache: cache::ModuleCache,
    egress: Arc<EgressStats>,
    ticker_stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for WasmExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmExecutor")
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

/// How instances get their memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Allocation {
    /// The pooling allocator, resetting dirty pages found by `PAGEMAP_SCAN`.
    PoolingScanned,
    /// The pooling allocator without `PAGEMAP_SCAN` (older kernels).
    Pooling,
    /// mmap per instance.
    OnDemand,
}

fn engine_config(allocation: Allocation) -> Config {
    let mut config = Config::new();
    config.epoch_interruption(true);
    // No wasm backtraces: every WASI command ends in `proc_exit`, which leaves wasm as
    // an error, and capturing its backtrace (frame lookups in the address map) was 5%
    // of a warm call's CPU. A trap's message and the guest's panic text on stderr
    // still say what went wrong.
    config.wasm_backtrace_max_frames(None);
    if allocation == Allocation::OnDemand {
        return config;
    }
    let scanned = allocation == Allocation::PoolingScanned;
    let mut pool = PoolingAllocationConfig::default();
    pool.total_core_instances(POOL_SLOTS)
        .total_memories(POOL_SLOTS)
        .total_tables(POOL_SLOTS)
        .total_stacks(POOL_SLOTS)
        .max_memory_size((MAX_MEMORY_MB << 20) as usize)
        // Resetting slots by memset instead of madvise spares the next instance its
        // page faults and every release a TLB shootdown (profiled: madvise was 17%
        // of a warm call over HTTP). Whatever is reset, a slot starts as zeros or
        // the module's image either way.
        .table_keep_resident(TABLE_KEEP_RESIDENT)
        .linear_memory_keep_resident(if scanned {
            MEMORY_KEEP_RESIDENT_SCANNED
        } else {
            MEMORY_KEEP_RESIDENT_BLIND
        })
        .pagemap_scan(if scanned { Enabled::Yes } else { Enabled::No })
        .decommit_batch_size(DECOMMIT_BATCH);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

/// The engine with the best allocation this host supports: pooling with
/// `PAGEMAP_SCAN`, pooling without it, or on demand (also when pooling is off).
fn build_engine(pooling: bool) -> Result<Engine> {
    let pooled: &[Allocation] = if pooling {
        &[Allocation::PoolingScanned, Allocation::Pooling]
    } else {
        &[]
    };
    for &allocation in pooled {
        match Engine::new(&engine_config(allocation)) {
            Ok(engine) => return Ok(engine),
            Err(e) if allocation == Allocation::PoolingScanned => {
                tracing::info!("PAGEMAP_SCAN unavailable ({e:#}); resetting memory blind");
            }
            Err(e) => {
                tracing::warn!("pooling allocator unavailable ({e:#}); allocating on demand");
            }
        }
    }
    Engine::new(&engine_config(Allocation::OnDemand)).map_err(wasm_internal)
}

impl WasmExecutor {
    /// Builds the engine (pooling allocator unless disabled or unavailable), the WASI
    /// linker and the module cache, and starts the epoch ticker.
    pub fn new(config: WasmConfig) -> Result<Self> {
        let engine = build_engine(config.pooling)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut linker, |g: &mut Guest| &mut g.wasi)
            .map_err(wasm_internal)?;
        // What `wasmtime serve` links: all of WASI preview 2 (a Rust wasm32-wasip2
        // program imports wasi:cli and wasi:filesystem even when it never uses them)
        // and wasi:http. The context grants nothing: no files, no sockets.
        let mut component_linker = ComponentLinker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut component_linker).map_err(wasm_internal)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut component_linker)
            .map_err(wasm_internal)?;
        let cache = cache::ModuleCache::open(config.cache_dir, &engine)?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let (ticking, stop) = (engine.clone(), ticker_stop.clone());
        std::thread::Builder::new()
            .name("newt-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    ticking.increment_epoch();
                }
            })
            .map_err(|e| Error::Internal(anyhow::anyhow!("starting the epoch ticker: {e}")))?;

        Ok(WasmExecutor {
            engine,
            compiles: Arc::new(tokio::sync::Semaphore::new(COMPILES_AT_ONCE)),
            linker: Arc::new(linker),
            component_linker: Arc::new(component_linker),
            cache,
            egress: Arc::new(EgressStats::default()),
            ticker_stop,
        })
    }

    /// The counters of components' outgoing requests (allowed, denied, failed), for
    /// the host's metrics.
    pub fn egress_stats(&self) -> &Arc<EgressStats> {
        &self.egress
    }
}

impl Drop for WasmExecutor {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

fn wasm_internal(e: wasmtime::Error) -> Error {
    Error::Internal(anyhow::anyhow!("wasmtime: {e:#}"))
}

/// An empty WASI context: instances are created before their call is known, and get
/// the call's context (stdin, env) just before `_start` runs.
fn idle_wasi() -> WasiP1Ctx {
    WasiCtxBuilder::new().build_p1()
}

#[async_trait]
impl Executor for WasmExecutor {
    type Prepared = WasmPrepared;
    type Instance = WasmInstance;

    fn name(&self) -> &'static str {
        "wasm"
    }

    fn can_handle(&self, runtime: &str) -> bool {
        runtime == "wasm"
    }

    fn creating_is_warm(&self) -> bool {
        true
    }

    fn cached_artifacts(&self) -> Result<Vec<CachedArtifact>> {
        self.cache.list()
    }

    fn remove_cached_artifact(&self, file: &str) -> Result<bool> {
        self.cache.remove(file)
    }

    async fn check_bundle(&self, _runtime: &str, bundle: &Bytes) -> Result<()> {
        if !bundle.starts_with(b"\0asm") {
            return Err(Error::InvalidBundle(
                "the body is not a WebAssembly module (it does not start with \\0asm): send \
                 the .wasm file built for wasm32-wasip1 (or a wasi:http component built for \
                 wasm32-wasip2)"
                    .into(),
            ));
        }
        Ok(())
    }

    fn takes_http(&self, bundle: &Path) -> bool {
        use std::io::Read;
        let mut header = [0u8; 8];
        std::fs::File::open(bundle)
            .and_then(|mut file| file.read_exact(&mut header))
            .is_ok_and(|()| cache::is_component(&header))
    }

    async fn prepare(&self, spec: &FunctionSpec, bundle: &Path) -> Result<WasmPrepared> {
        let digest = Digest::parse(&spec.digest)
            .ok_or_else(|| Error::InvalidBundle(format!("bad digest {:?}", spec.digest)))?;
        let (engine, linker, component_linker, cache) = (
            self.engine.clone(),
            self.linker.clone(),
            self.component_linker.clone(),
            self.cache.clone(),
        );
        let bundle = bundle.to_path_buf();
        let _compiling = self
            .compiles
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| Error::Internal(anyhow::anyhow!("compile slots: {e}")))?;
        // Compiling is CPU-bound for up to seconds: keep it off the async workers, and
        // give up on a module that takes too long (its thread finishes on its own; the
        // slot stays taken until it does, so such modules cannot pile up).
        let compiling = tokio::task::spawn_blocking(move || {
            let _slot = _compiling;
            let (module, source) = match cache.load_or_compile(&engine, &digest, &bundle)? {
                (Artifact::Module(module), source) => (module, source),
                (Artifact::Component(component), source) => {
                    let pre = component::proxy_pre(component_linker.instantiate_pre(&component))
                        .map_err(Error::InvalidBundle)?;
                    return Ok(WasmPrepared {
                        pre: Pre::Component(pre),
                        source,
                    });
                }
            };
            match module.get_export("_start") {
                Some(wasmtime::ExternType::Func(f))
                    if f.params().len() == 0 && f.results().len() == 0 => {}
                _ => {
                    return Err(Error::InvalidBundle(
                        "the module exports no `_start() -> ()`: build the function as a WASI \
                         command (a binary crate with a `main`)"
                            .into(),
                    ));
                }
            }
            let needs = module.resources_required();
            if needs.num_memories as usize > MAX_MEMORIES || needs.num_tables as usize > MAX_TABLES
            {
                return Err(Error::InvalidBundle(format!(
                    "the module defines {} memories and {} tables; newt runs modules with at \
                     most {MAX_MEMORIES} memory and {MAX_TABLES} table",
                    needs.num_memories, needs.num_tables
                )));
            }
            let pre = linker.instantiate_pre(&module).map_err(|e| {
                Error::InvalidBundle(format!(
                    "the module needs imports newt does not provide (only WASI preview 1 is \
                     available): {e:#}"
                ))
            })?;
            Ok(WasmPrepared {
                pre: Pre::Module(pre),
                source,
            })
        });
        match tokio::time::timeout(COMPILE_TIMEOUT, compiling).await {
            Ok(done) => {
                done.map_err(|e| Error::Internal(anyhow::anyhow!("compile task failed: {e}")))?
            }
            Err(_) => Err(Error::InvalidBundle(format!(
                "compiling the module took longer than {} s: newt refuses it",
                COMPILE_TIMEOUT.as_secs()
            ))),
        }
    }

    async fn create(
        &self,
        spec: &FunctionSpec,
        prepared: &Arc<WasmPrepared>,
        deadline: Instant,
    ) -> Result<WasmInstance> {
        let starting = || {
            Error::Deadline(format!(
                "the call ran past its deadline of {} ms while the module's start function ran",
                spec.limits.timeout_ms
            ))
        };
        match &prepared.pre {
            Pre::Module(pre) => {
                let mut store = Store::new(
                    &self.engine,
                    Guest {
                        wasi: idle_wasi(),
                        limiter: GuestLimiter::new(spec.limits.memory_bytes()),
                    },
                );
                store.limiter(|g| &mut g.limiter);
                arm_epoch(&mut store);
                let instantiated =
                    tokio::time::timeout_at(deadline.into(), pre.instantiate_async(&mut store))
                        .await
                        .map_err(|_| starting())?;
                let instance = instantiated
                    .map_err(|e| instantiate_error(&e, store.data().limiter.denied, spec))?;
                let start = instance
                    .get_typed_func::<(), ()>(&mut store, "_start")
                    .map_err(wasm_internal)?;
                Ok(WasmInstance(Instance::Module { store, start }))
            }
            Pre::Component(pre) => {
                let mut store = Store::new(
                    &self.engine,
                    ComponentGuest::new(
                        GuestLimiter::for_component(spec.limits.memory_bytes()),
                        Egress::new(spec.allow_outbound.clone(), self.egress.clone()),
                    ),
                );
                store.limiter(|g| &mut g.limiter);
                arm_epoch(&mut store);
                let instantiated =
                    tokio::time::timeout_at(deadline.into(), pre.instantiate_async(&mut store))
                        .await
                        .map_err(|_| starting())?;
                let proxy = instantiated
                    .map_err(|e| instantiate_error(&e, store.data().limiter.denied, spec))?;
                Ok(WasmInstance(Instance::Component { store, proxy }))
            }
        }
    }

    async fn invoke(
        &self,
        spec: &FunctionSpec,
        instance: &mut WasmInstance,
        call: &CallRequest,
        deadline: Instant,
    ) -> Result<CallOutcome> {
        let limits = &spec.limits;
        let stderr = CappedPipe::new(limits.max_log_bytes as usize, Overflow::Truncate);
        let (store, start) = match &mut instance.0 {
            Instance::Module { store, start } => (store, start),
            Instance::Component { store, proxy } => {
                // As for modules: the function's configuration and secrets, then
                // newt's own names.
                let mut ctx = wasmtime_wasi::WasiCtx::builder();
                for (name, value) in spec.env.iter() {
                    ctx.env(name, value);
                }
                ctx.stderr(stderr.clone())
                    .env("NEWT_FUNCTION", &spec.name)
                    .env("NEWT_CALL_ID", &call.call_id)
                    .allow_tcp(false)
                    .allow_udp(false)
                    .allow_ip_name_lookup(false);
                store.set_epoch_deadline(1);
                // As for modules, the deadline drops the call's future: that stops a
                // guest looping (at its next epoch yield) or waiting in a host call.
                let ran = tokio::time::timeout_at(
                    deadline.into(),
                    component::handle(
                        store,
                        proxy,
                        call,
                        ctx.build(),
                        stderr.clone(),
                        limits.max_output_bytes as usize,
                    ),
                )
                .await;
                let (result, output, http) = match ran {
                    Ok(done) => done,
                    Err(_elapsed) => (
                        CallResult::deadline_passed("", limits.timeout()),
                        Bytes::new(),
                        None,
                    ),
                };
                return Ok(CallOutcome {
                    result,
                    output,
                    logs: stderr.contents(),
                    http,
                    ..CallOutcome::default()
                });
            }
        };
        let stdout = CappedPipe::new(limits.max_output_bytes as usize, Overflow::Trap);
        let mut wasi = WasiCtxBuilder::new();
        // The function's configuration and secrets first; the NEWT_* names are reserved
        // (the host refuses them), so newt's own always say what newt means.
        for (name, value) in spec.env.iter() {
            wasi.env(name, value);
        }
        let wasi = wasi
            .stdin(MemoryInputPipe::new(call.input.clone()))
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .env("NEWT_FUNCTION", &spec.name)
            .env("NEWT_CALL_ID", &call.call_id)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build_p1();
        store.data_mut().wasi = wasi;
        store.set_epoch_deadline(1);

        // The deadline is enforced here, not by an epoch trap: dropping the call's
        // future also stops a guest blocked in a host call (e.g. sleeping in
        // `poll_oneoff`), which no trap inside wasm could reach.
        let ran = tokio::time::timeout_at(deadline.into(), start.call_async(&mut *store, ())).await;

        let result = match ran {
            Err(_elapsed) => CallResult::deadline_passed("", limits.timeout()),
            Ok(Ok(())) => CallResult::Done,
            Ok(Err(e)) => classify_failure(&e, &stdout, &stderr, store.data(), limits.memory_mb),
        };
        Ok(CallOutcome {
            result,
            output: stdout.contents(),
            logs: stderr.contents(),
            ..CallOutcome::default()
        })
    }

    fn reusable(&self, _instance: &WasmInstance) -> bool {
        // A WASI command's instance is spent once `_start` has run; a component gets a
        // fresh instance per request (what `wasmtime serve` does too).
        false
    }

    async fn destroy(&self, instance: WasmInstance) {
        drop(instance);
    }

    async fn health(&self) -> BackendHealth {
        BackendHealth {
            reachable: true,
            address: "in-process".into(),
            version: None,
            error: None,
        }
    }

    fn egress_stats(&self) -> Option<Arc<EgressStats>> {
        Some(self.egress.clone())
    }
}

/// Makes a guest's start function yield at every epoch tick, so a looping one cannot
/// pin a worker, and the call's deadline (a timeout around the future) can stop it.
fn arm_epoch<T>(store: &mut Store<T>) {
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|_| Ok(UpdateDeadline::Yield(1)));
}

/// Why instantiating failed, for the caller.
fn instantiate_error(e: &wasmtime::Error, denied: Option<usize>, spec: &FunctionSpec) -> Error {
    if let Some(asked) = denied {
        Error::InvalidBundle(format!(
            "the module's memory ({} MiB) is above its memory limit of {} MiB",
            asked >> 20,
            spec.limits.memory_mb
        ))
    } else if e.to_string().contains("maximum concurrent") {
        Error::AtCapacity {
            function: spec.name.clone(),
            reason: format!("all {POOL_SLOTS} wasm instance slots are in use"),
        }
    } else if let Some(trap) = e.downcast_ref::<Trap>() {
        Error::InstanceStart(format!("the module's start function trapped: {trap}"))
    } else {
        Error::Internal(anyhow::anyhow!("instantiating: {e:#}"))
    }
}

/// Turns a guest's error exit or trap into the message its caller sees.
fn classify_failure(
    e: &wasmtime::Error,
    stdout: &CappedPipe,
    stderr: &CappedPipe,
    guest: &Guest,
    memory_mb: u64,
) -> CallResult {
    let tail = stderr.tail();
    if let Some(exit) = e.downcast_ref::<I32Exit>() {
        if exit.0 == 0 {
            return CallResult::Done;
        }
        // The SDK prints the handler's error as the last line of stderr.
        let last = tail.lines().rev().find(|l| !l.trim().is_empty());
        return CallResult::Failed(match last {
            Some(line) => line.trim().to_string(),
            None => format!("the function exited with code {}", exit.0),
        });
    }
    if stdout.overflowed() {
        return CallResult::Failed(format!("{e:#}"));
    }
    let detail = panic_lines(&tail);
    if guest.limiter.denied.is_some() {
        return CallResult::Failed(format!("memory limit of {memory_mb} MiB exceeded{detail}"));
    }
    match e.downcast_ref::<Trap>() {
        Some(trap) => CallResult::Failed(format!("trap: {trap}{detail}")),
        None => CallResult::Failed(format!("{e:#}{detail}")),
    }
}

/// The last few meaningful stderr lines (a Rust panic message), prefixed for
/// appending to a trap message.
fn panic_lines(tail: &str) -> String {
    let lines: Vec<&str> = tail
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("note: run with `RUST_BACKTRACE"))
        .collect();
    let keep = &lines[lines.len().saturating_sub(4)..];
    if keep.is_empty() {
        String::new()
    } else {
        format!(": {}", keep.join("\n"))
    }
}

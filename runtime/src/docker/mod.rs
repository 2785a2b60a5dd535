//! The container executor: functions in native runtimes (Python first) run in Docker
//! containers, driven through bollard.
//!
//! A runtime is an image plus how to use it ([`ContainerRuntime`]). Preparing a
//! function builds an image `FROM` the runtime's image with the bundle copied to the
//! runtime's `path` and its requirements installed. An instance is a hardened
//! container of that image: in *agent* mode it runs newt's agent, which imports the
//! handler once and serves calls over the frame protocol on stdio; in *command* mode
//! the container only stays up and the runtime's `run` command is exec'd in it per
//! call, input on stdin and result on stdout, so any image can be a runtime.

mod ahead;
mod container;
mod egress;
mod engine;
mod image;
mod mounts;
mod progress;
pub(crate) mod protocol;

use async_trait::async_trait;
use bollard::Docker;
use bollard::query_parameters::ListContainersOptionsBuilder;
use bytes::Bytes;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::bundle::{BUNDLE_CONFIG_FILE, BundleConfig, BundleLimits, unpack};
use crate::egress::EgressStats;
use crate::error::{Error, Result};
use crate::executor::{BackendHealth, CallOutcome, CallRequest, Executor, FunctionSpec};
use crate::limits::Limits;
use crate::policy::Preload;

pub use ahead::{AheadLimits, AheadStats};
pub use container::ContainerInstance;
pub use mounts::RuntimeMount;
pub use progress::{BUILD_LOG_TAIL_BYTES, BuildBoard, BuildProgress};

/// How a container runtime runs a function's code.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunMode {
    /// `run` starts newt's agent, which keeps the handler imported between calls.
    Agent,
    /// `run` is started once per call with the input on stdin; stdout is the result.
    #[default]
    Command,
}

/// A container runtime: an image and how to use it (the seed platform's runtime
/// object, plus the mode).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerRuntime {
    /// The runtime's name, used in deploys (`?runtime=python`).
    pub name: String,
    /// The Docker image functions are built from. Must exist on the engine: there is
    /// no registry to pull from.
    pub image: String,
    /// Where function code is unpacked, and the working directory of calls.
    #[serde(default = "default_path")]
    pub path: String,
    /// Installs a function's requirements at build time, run in `path`, when the
    /// bundle has a `requirements.txt` (e.g. `pip3 install -r requirements.txt`). It
    /// runs as the function's user (uid 10001), who owns `path` and its empty `.deps/`:
    /// install there (`pip3 install --target .deps`).
    #[serde(default)]
    pub dependencies: Option<String>,
    /// Used instead of `dependencies` when the bundle carries a `wheels/` folder, so
    /// requirements install without a network (builds have none unless the operator
    /// gives them one).
    #[serde(default)]
    pub dependencies_offline: Option<String>,
    /// Agent mode: the command that starts the agent. Command mode: the command run
    /// per call.
    pub run: String,
    /// Agent or command mode. Runtimes registered the seed's way are command mode.
    #[serde(default)]
    pub mode: RunMode,
    /// The preload policy of the runtime's functions (each may override it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<crate::policy::Policy>,
    /// The Python version the image provides (`"3.11"`), which a bundle's `newt.toml`
    /// may ask for; the built-in runtime's is its Debian's python3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python: Option<String>,
    /// Variables every container of the runtime starts with (not secrets: they are
    /// shown by `GET /v1/runtimes`). A bundle's `newt.toml` `[env]` and the function's
    /// own variables win on a clash.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Host paths mounted read-only into every container of the runtime; each must lie
    /// under a directory the operator allowed (`newt serve --allow-mount DIR`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<RuntimeMount>,
}

/// The Python of the built-in runtime's image: Debian bookworm's `python3`.
const BUILTIN_PYTHON_VERSION: &str = "3.11";
/// Most variables in a runtime's `env`.
const MAX_RUNTIME_ENV: usize = 64;
/// Longest value of a runtime variable.
const MAX_RUNTIME_ENV_VALUE: usize = 4 * 1024;

fn default_path() -> String {
    "/app".into()
}

impl ContainerRuntime {
    /// The built-in `python` runtime (`runtimes/python/runtime.toml`).
    pub fn builtin_python() -> ContainerRuntime {
        let mut python: ContainerRuntime = toml::from_str(image::PYTHON_RUNTIME_TOML)
            .expect("runtimes/python/runtime.toml is valid (checked by a test)");
        python
            .python
            .get_or_insert_with(|| BUILTIN_PYTHON_VERSION.to_string());
        python
    }

    /// Checks the fields a caller sent.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidRuntime(m));
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 63
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !self.name.starts_with('-');
        if !name_ok {
            return bad(format!(
                "invalid runtime name {:?}: use 1 to 63 characters of a-z, 0-9 and '-'",
                self.name
            ));
        }
        if self.name == "wasm" {
            return bad("`wasm` is the built-in WebAssembly runtime".into());
        }
        if !image::valid_reference(&self.image) {
            return bad(format!(
                "invalid image {:?}: give a Docker image reference such as \
                 `newt/python:3` or `registry.example.com:5000/team/app:1.2` (lowercase \
                 name components, an optional tag, an optional @sha256 digest)",
                self.image
            ));
        }
        if !self.path.starts_with('/') || self.path.contains("..") || self.path.contains('\n') {
            return bad(format!(
                "path must be an absolute directory, got {:?}",
                self.path
            ));
        }
        if self.run.trim().is_empty() {
            return bad("run must name a command".into());
        }
        for cmd in [&self.dependencies, &self.dependencies_offline]
            .into_iter()
            .flatten()
        {
            if cmd.contains('\n') {
                return bad("dependencies must be one line".into());
            }
        }
        if let Some(python) = &self.python {
            // The same rules as a bundle's `python = "3.11"`.
            BundleConfig::parse(&format!("python = {}", toml_string(python))).map_err(|_| {
                Error::InvalidRuntime(format!(
                    "python must be a version such as \"3.11\", got {:?}",
                    python.chars().take(40).collect::<String>()
                ))
            })?;
        }
        if self.env.len() > MAX_RUNTIME_ENV {
            return bad(format!(
                "env has {} variables; the limit is {MAX_RUNTIME_ENV}",
                self.env.len()
            ));
        }
        for (name, value) in &self.env {
            crate::bundle::check_env_name(name).map_err(Error::InvalidRuntime)?;
            if value.len() > MAX_RUNTIME_ENV_VALUE || value.contains('\0') {
                return bad(format!(
                    "the value of {name} must be at most {MAX_RUNTIME_ENV_VALUE} bytes, \
                     without NUL"
                ));
            }
        }
        mounts::validate(&self.mounts, &self.path).map_err(Error::InvalidRuntime)?;
        Ok(())
    }

    /// The variables its containers start with, as the container's create takes them.
    fn base_env(&self, bundle: &BTreeMap<String, String>) -> Vec<(String, String)> {
        let mut env = self.env.clone();
        env.extend(bundle.iter().map(|(k, v)| (k.clone(), v.clone())));
        env.into_iter().collect()
    }
}

/// `text` as a TOML basic string.
fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

/// The variable that sets how many containers are started ahead: `PER_FUNCTION` or
/// `PER_FUNCTION/TOTAL` (`0` starts none).
const AHEAD_VAR: &str = "NEWT_DOCKER_AHEAD";

/// The limits [`AHEAD_VAR`] asks for, the defaults without it (or, said in the log,
/// when it cannot be read).
fn ahead_limits_from_env() -> AheadLimits {
    let Ok(text) = std::env::var(AHEAD_VAR) else {
        return AheadLimits::default();
    };
    parse_ahead_limits(&text).unwrap_or_else(|| {
        tracing::warn!("{AHEAD_VAR}={text:?} is not PER_FUNCTION or PER_FUNCTION/TOTAL (numbers up to 1000): using the defaults");
        AheadLimits::default()
    })
}

fn parse_ahead_limits(text: &str) -> Option<AheadLimits> {
    let number = |s: &str| s.trim().parse::<usize>().ok().filter(|n| *n <= 1000);
    let defaults = AheadLimits::default();
    let (per_kind, total) = match text.split_once('/') {
        Some((per, total)) => (number(per)?, number(total)?),
        None => {
            let per = number(text)?;
            (per, defaults.total.max(per))
        }
    };
    Some(AheadLimits {
        per_kind,
        total,
        ..defaults
    })
}

/// The pool of containers started ahead, starting them with `starter`.
fn ahead_pool(starter: &Arc<Starter>, limits: AheadLimits) -> Arc<Ahead> {
    let starter = starter.clone();
    ahead::AheadPool::new(
        limits,
        Arc::new(move |recipe: Arc<AheadRecipe>| {
            let starter = starter.clone();
            Box::pin(async move { starter.start_ahead(&recipe).await })
        }),
    )
}

/// Settings of the container executor.
#[derive(Clone, Debug)]
pub struct DockerConfig {
    /// The engine's address (`DOCKER_HOST`); `unix:///var/run/docker.sock` if unset.
    pub address: Option<String>,
    /// Scratch space for image builds (`$NEWT_HOME/docker`).
    pub work_dir: PathBuf,
    /// Names this host among others sharing the engine (e.g. a hash of its home):
    /// containers carry it, and cleanup only removes this host's leftovers.
    pub host_id: String,
}

/// Limits of image builds. A build runs the runtime's `dependencies` command on what
/// a tenant uploaded (a `setup.py` runs at install), so it gets the function's user,
/// no network, a memory and CPU cap and a deadline, and only so many run at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildLimits {
    /// Builds running at once.
    pub max_builds: usize,
    /// Builds waiting for one of those slots; a deploy beyond is refused (429).
    pub max_queued: usize,
    /// How long one build may run once it has a slot; past it, it is cancelled and
    /// the version fails.
    pub timeout: Duration,
    /// Memory of the build's containers, in bytes; also their memory + swap (no swap).
    pub memory_bytes: u64,
    /// CPU of the build's containers, in thousandths of a CPU.
    pub milli_cpus: u32,
    /// Size of the build containers' `/dev/shm`, in bytes.
    pub shm_bytes: u64,
    /// The network of the build's `RUN` steps: `none` (the default) or the name of a
    /// Docker network such as `bridge`.
    pub network: String,
}

impl Default for BuildLimits {
    fn default() -> Self {
        BuildLimits {
            max_builds: 2,
            max_queued: 16,
            timeout: Duration::from_secs(600),
            memory_bytes: 1 << 30,
            milli_cpus: 1000,
            shm_bytes: 64 << 20,
            network: "none".into(),
        }
    }
}

/// The CPU period of build containers (100 ms, the engine's default); the quota is a
/// share of it.
const BUILD_CPU_PERIOD_US: u32 = 100_000;

impl BuildLimits {
    /// Checks the limits an operator gave.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidLimits(m));
        if !(1..=64).contains(&self.max_builds) {
            return bad(format!(
                "builds at once must be 1 to 64, got {}",
                self.max_builds
            ));
        }
        if self.max_queued > 10_000 {
            return bad(format!(
                "builds waiting must be at most 10000, got {}",
                self.max_queued
            ));
        }
        if self.timeout < Duration::from_secs(1) || self.timeout > Duration::from_secs(86_400) {
            return bad(format!(
                "the build timeout must be 1 s to 24 h, got {:?}",
                self.timeout
            ));
        }
        // The engine takes a 64-bit number; bollard's build options a 32-bit one.
        if self.memory_bytes < 64 << 20 || self.memory_bytes > i32::MAX as u64 {
            return bad(format!(
                "build memory must be 64 MiB to 2047 MiB, got {} MiB",
                self.memory_bytes >> 20
            ));
        }
        if !(10..=64_000).contains(&self.milli_cpus) {
            return bad(format!(
                "build CPUs must be 0.01 to 64, got {}",
                f64::from(self.milli_cpus) / 1000.0
            ));
        }
        if self.shm_bytes < 1 << 20 || self.shm_bytes > self.memory_bytes {
            return bad("the build's /dev/shm must be 1 MiB up to its memory".into());
        }
        let network = self.network.as_str();
        if network == "host" || network.contains(':') {
            return bad(format!(
                "build network {network:?} is refused: `host` (or another container's \
                 network) would let a build reach this host's loopback services; use \
                 `none`, `bridge` or a network of your own"
            ));
        }
        let name_ok = !network.is_empty()
            && network.len() <= 128
            && network.as_bytes()[0].is_ascii_alphanumeric()
            && network
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !name_ok {
            return bad(format!(
                "build network {network:?} is not a Docker network name"
            ));
        }
        Ok(())
    }

    /// `memory_bytes` as the build options take it.
    fn memory(&self) -> i32 {
        i32::try_from(self.memory_bytes).unwrap_or(i32::MAX)
    }

    /// Microseconds of CPU per [`BUILD_CPU_PERIOD_US`].
    fn cpu_quota(&self) -> i32 {
        i32::try_from(u64::from(self.milli_cpus) * u64::from(BUILD_CPU_PERIOD_US) / 1000)
            .unwrap_or(i32::MAX)
    }

    /// `shm_bytes` as the build options take it.
    fn shm(&self) -> i32 {
        i32::try_from(self.shm_bytes).unwrap_or(i32::MAX)
    }
}

/// Image builds running and waiting: at most `max_builds` run at once (a fair
/// semaphore, so builds start in the order they came), at most `max_queued` wait.
struct BuildQueue {
    slots: tokio::sync::Semaphore,
    waiting: AtomicUsize,
    max_builds: usize,
    max_queued: usize,
}

/// Counts one build as waiting while it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl BuildQueue {
    fn new(limits: &BuildLimits) -> Self {
        BuildQueue {
            slots: tokio::sync::Semaphore::new(limits.max_builds),
            waiting: AtomicUsize::new(0),
            max_builds: limits.max_builds,
            max_queued: limits.max_queued,
        }
    }

    /// Why a new build cannot be taken now, if it cannot.
    fn refusal(&self) -> Option<String> {
        let waiting = self.waiting.load(Ordering::SeqCst);
        (self.slots.available_permits() == 0 && waiting >= self.max_queued).then(|| {
            format!(
                "the image build queue is full ({} running, {waiting} waiting); deploy again \
                 later",
                self.max_builds
            )
        })
    }

    /// A build slot: at once if one is free, after the builds before it otherwise;
    /// refused when `max_queued` builds are waiting already.
    async fn enter(&self) -> std::result::Result<tokio::sync::SemaphorePermit<'_>, String> {
        if let Ok(slot) = self.slots.try_acquire() {
            return Ok(slot);
        }
        let max = self.max_queued;
        if self
            .waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .is_err()
        {
            return Err(self.refusal().unwrap_or_else(|| {
                format!("the image build queue is full ({max} waiting); deploy again later")
            }));
        }
        let _waiting = Waiting(&self.waiting);
        self.slots
            .acquire()
            .await
            .map_err(|_| "the build queue is closed".to_string())
    }
}

/// A function version ready to start containers from.
pub struct ContainerPrepared {
    image: String,
    runtime: ContainerRuntime,
    handler: String,
    /// The bundle's `newt.toml` `[env]`: under the function's own variables.
    bundle_env: BTreeMap<String, String>,
    /// The validated code repacked as base64 .tar.gz, for loading into a
    /// runtime-level instance; `None` when the function needs its own image (it has
    /// requirements to install, or the runtime is in command mode).
    generic_bundle: Option<String>,
}

/// Where a runtime-level instance unpacks the code it is given: the writable /tmp.
const GENERIC_WORKDIR: &str = "/tmp/fn";

/// How long a container started ahead may take to start (nobody waits on it).
const AHEAD_START_BUDGET: Duration = Duration::from_secs(60);
/// The longest a function's containers started ahead outlive its last call (its
/// `keep_alive` when shorter): a function called less often gets none kept.
const AHEAD_KEEP: Duration = Duration::from_secs(10);
/// How long clearing the pool of containers started ahead waits for starts under way.
const AHEAD_CLEAR_PATIENCE: Duration = Duration::from_secs(10);
/// How long the `VOLUME`s of an image that is not a function image are trusted: a
/// runtime's tag may be rebuilt. A function image's tag names its exact inputs.
const VOLUMES_TTL: Duration = Duration::from_secs(10);

/// Everything a container of one function version is created with, so one started
/// ahead is the same container the call would have started itself.
pub(crate) struct AheadRecipe {
    function: String,
    limits: Limits,
    runtime: ContainerRuntime,
    image: String,
    base_env: Vec<(String, String)>,
    mounts: Vec<(PathBuf, String)>,
    /// Whether it gets an egress directory (its function has an allow-list, served
    /// when a call takes the container).
    egress: bool,
}

impl AheadRecipe {
    /// The kind's key: a digest of all of it (values of variables included, so
    /// none is kept in the key itself).
    fn key(&self) -> String {
        let text = format!(
            "{}\n{:?}\n{}\n{}\n{:?}\n{:?}\n{}",
            self.function,
            self.limits,
            serde_json::to_string(&self.runtime).unwrap_or_default(),
            self.image,
            self.base_env,
            self.mounts,
            self.egress
        );
        crate::cas::Digest::of(text.as_bytes()).as_str()[..32].to_string()
    }
}

/// Images' `VOLUME`s by image, with when they were asked.
type Volumes = HashMap<String, (Arc<Vec<String>>, Instant)>;

/// The `VOLUME`s of images, asked of the engine once per image rather than per start.
#[derive(Default)]
struct VolumeCache(std::sync::Mutex<Volumes>);

impl VolumeCache {
    async fn get(&self, docker: &Docker, image: &str) -> Result<Arc<Vec<String>>> {
        let fresh = |at: &Instant| image.starts_with("newt-fn/") || at.elapsed() < VOLUMES_TTL;
        if let Some((volumes, at)) = self.lock().get(image)
            && fresh(at)
        {
            return Ok(volumes.clone());
        }
        let volumes = Arc::new(image::image_volumes(docker, image).await?);
        let mut cache = self.lock();
        // Bounded by the images in use; a forgotten one is asked again.
        if cache.len() >= 1024 {
            cache.clear();
        }
        cache.insert(image.to_string(), (volumes.clone(), Instant::now()));
        Ok(volumes)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Volumes> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What starting a container needs besides its recipe; shared with the pool of
/// containers started ahead, which starts them in the background.
struct Starter {
    engine: Arc<engine::Engine>,
    host_id: String,
    egress_dirs: Arc<egress::EgressDirs>,
    volumes: VolumeCache,
}

impl Starter {
    /// Starts a container of `recipe` whose agent waits for `init`.
    async fn start_ahead(&self, recipe: &AheadRecipe) -> Result<ContainerInstance> {
        let docker = self.engine.answering().await?;
        let volumes = self.volumes.get(docker, &recipe.image).await?;
        let egress = if recipe.egress {
            Some(self.egress_dirs.instance()?)
        } else {
            None
        };
        container::start(
            &self.engine,
            docker,
            &container::Start {
                function: &recipe.function,
                limits: &recipe.limits,
                runtime: &recipe.runtime,
                image: &recipe.image,
                handler: None,
                generic: false,
                ahead: true,
                volumes: &volumes,
                env: &Default::default(),
                base_env: &recipe.base_env,
                mounts: &recipe.mounts,
                host_id: &self.host_id,
            },
            egress,
            Instant::now() + AHEAD_START_BUDGET,
        )
        .await
    }
}

type Ahead = ahead::AheadPool<AheadRecipe, ContainerInstance>;

/// Runs functions of container runtimes.
pub struct DockerExecutor {
    engine: Arc<engine::Engine>,
    runtimes: DashMap<String, ContainerRuntime>,
    work_dir: PathBuf,
    host_id: String,
    build_limits: BuildLimits,
    builds: BuildQueue,
    /// Where instances' egress directories are made (`work_dir/egress`).
    egress_dirs: Arc<egress::EgressDirs>,
    /// Starts containers; shared with `ahead`.
    starter: Arc<Starter>,
    /// Containers of `preload = none` functions started ahead of their calls.
    ahead: Arc<Ahead>,
    /// What every instance's egress proxy counted, for `/metrics`.
    egress_stats: Arc<EgressStats>,
    /// The host directories runtimes may mount from (canonical), as `newt serve
    /// --allow-mount` gave them; empty: no mounts at all.
    allowed_mounts: std::sync::RwLock<Vec<PathBuf>>,
    /// The image builds running now and how far each is.
    build_board: BuildBoard,
}

impl std::fmt::Debug for DockerExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerExecutor")
            .field("address", &self.engine.address)
            .finish_non_exhaustive()
    }
}

/// The handler every bundle defines, `main.py`'s `handler`.
const DEFAULT_HANDLER: &str = "main:handler";

impl DockerExecutor {
    /// An executor for the engine in `config`, with the built-in `python` runtime.
    /// Never fails: an unreachable engine makes container operations answer
    /// `unavailable`, nothing else.
    pub fn new(config: DockerConfig) -> Self {
        let address = config
            .address
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| engine::DEFAULT_HOST.to_string());
        let python = ContainerRuntime::builtin_python();
        let build_limits = BuildLimits::default();
        let engine = engine::Engine::new(address);
        let egress_dirs = Arc::new(egress::EgressDirs::new(&config.work_dir));
        let starter = Arc::new(Starter {
            engine: engine.clone(),
            host_id: config.host_id.clone(),
            egress_dirs: egress_dirs.clone(),
            volumes: VolumeCache::default(),
        });
        DockerExecutor {
            ahead: ahead_pool(&starter, ahead_limits_from_env()),
            starter,
            engine,
            runtimes: DashMap::from_iter([(python.name.clone(), python)]),
            egress_dirs,
            egress_stats: Arc::new(EgressStats::default()),
            work_dir: config.work_dir,
            host_id: config.host_id,
            builds: BuildQueue::new(&build_limits),
            build_limits,
            allowed_mounts: Default::default(),
            build_board: BuildBoard::default(),
        }
    }

    /// What the egress proxies of this executor's instances counted: connections
    /// allowed, requests denied, allowed destinations that could not be reached.
    pub fn egress_stats(&self) -> Arc<EgressStats> {
        self.egress_stats.clone()
    }

    /// Whether the engine shares this host's filesystem (a unix socket), so a
    /// directory made here can be bind-mounted into its containers. A remote engine
    /// (`tcp://`) cannot be given an egress socket.
    fn engine_is_local(&self) -> bool {
        self.engine.address.starts_with("unix://")
    }

    /// Changes the limits of image builds from their defaults ([`BuildLimits`]) and
    /// checks them. Before the executor is shared: the build queue starts afresh.
    pub fn with_build_limits(mut self, change: impl FnOnce(&mut BuildLimits)) -> Result<Self> {
        change(&mut self.build_limits);
        self.build_limits.validate()?;
        self.builds = BuildQueue::new(&self.build_limits);
        Ok(self)
    }

    /// Changes how many containers are started ahead for `preload = none` functions
    /// ([`AheadLimits`]; `per_kind: 0` starts none). Before the executor is shared.
    pub fn with_ahead_limits(mut self, limits: AheadLimits) -> Self {
        self.ahead = ahead_pool(&self.starter, limits);
        self
    }

    /// What the pool of containers started ahead holds now.
    pub fn ahead_stats(&self) -> AheadStats {
        self.ahead.stats()
    }

    /// The limits of image builds.
    pub fn build_limits(&self) -> &BuildLimits {
        &self.build_limits
    }

    /// The progress of the image builds running now (`GET /v1/functions/{name}`).
    pub fn build_board(&self) -> BuildBoard {
        self.build_board.clone()
    }

    /// Sets the host directories runtimes may mount from (`newt serve --allow-mount`),
    /// canonicalized; each must exist. Runtimes are checked against them when
    /// registered and each time one of their containers starts.
    pub fn set_allowed_mounts(&self, dirs: &[PathBuf]) -> Result<()> {
        let canonical = mounts::canonical_allowed(dirs).map_err(Error::InvalidLimits)?;
        *self
            .allowed_mounts
            .write()
            .unwrap_or_else(|e| e.into_inner()) = canonical;
        Ok(())
    }

    /// A runtime's mounts resolved against the allowed directories now.
    fn resolve_mounts(
        &self,
        runtime: &ContainerRuntime,
    ) -> std::result::Result<Vec<(PathBuf, String)>, String> {
        if runtime.mounts.is_empty() {
            return Ok(Vec::new());
        }
        let allowed = self
            .allowed_mounts
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        mounts::resolve(&runtime.mounts, &allowed)
    }

    /// [`Self::resolve_mounts`] for a container about to start: a runtime whose mount
    /// is no longer allowed (stored before the operator changed `--allow-mount`, or a
    /// symlink changed since) serves no calls, with the reason (503).
    fn mounts_for_start(&self, runtime: &ContainerRuntime) -> Result<Vec<(PathBuf, String)>> {
        self.resolve_mounts(runtime)
            .map_err(|reason| Error::Unavailable {
                backend: "docker",
                reason: format!(
                    "runtime `{}` cannot start containers: {reason}",
                    runtime.name
                ),
            })
    }

    /// Refuses a bundle's `python` that the runtime does not provide, naming the
    /// runtimes that do.
    fn check_python(&self, runtime: &ContainerRuntime, config: &BundleConfig) -> Result<()> {
        let Some(wanted) = &config.python else {
            return Ok(());
        };
        if runtime.python.as_ref() == Some(wanted) {
            return Ok(());
        }
        let providers: Vec<String> = self
            .runtimes()
            .into_iter()
            .filter(|r| r.python.as_ref() == Some(wanted))
            .map(|r| r.name)
            .collect();
        let has = match &runtime.python {
            Some(v) => format!("provides Python {v}"),
            None => "does not say which Python it provides (its `python` field)".into(),
        };
        let available: Vec<String> = self
            .runtimes()
            .into_iter()
            .filter_map(|r| r.python.map(|v| format!("{} ({v})", r.name)))
            .collect();
        let fix = if providers.is_empty() {
            format!(
                "no runtime provides it; the Python runtimes here are: {}. The built-in \
                 image carries one Python ({BUILTIN_PYTHON_VERSION}): for another, register a \
                 runtime whose image has it, with \"python\": \"{wanted}\"",
                available.join(", ")
            )
        } else {
            format!("deploy with --runtime {}", providers.join(" or --runtime "))
        };
        Err(Error::InvalidBundle(format!(
            "{BUNDLE_CONFIG_FILE} asks for python = \"{wanted}\", but runtime `{}` {has}: {fix}",
            runtime.name
        )))
    }

    /// A registered runtime.
    fn runtime(&self, name: &str) -> Option<ContainerRuntime> {
        self.runtimes.get(name).map(|r| r.clone())
    }

    /// The engine, if it answers a ping within [`engine::PROBE_TIMEOUT`]: a call that
    /// needs a new container while the engine is away fails fast (503).
    async fn docker(&self) -> Result<&Docker> {
        self.engine.answering().await
    }

    /// Removes every container this host started: at start, what a previous process
    /// left; at shutdown, everything. The containers started ahead go first, and
    /// starts of them under way are waited for (and not kept), so none is made after
    /// the list below is taken.
    pub async fn remove_leftovers(&self) -> Result<usize> {
        let held = self.ahead.clear(AHEAD_CLEAR_PATIENCE).await;
        let mut removed = held.len();
        for instance in held {
            instance.remove().await;
        }
        let docker = self.docker().await?;
        let mut filters = HashMap::new();
        let host = format!("newt.host={}", self.host_id);
        filters.insert("label", vec!["newt.managed=true", host.as_str()]);
        let containers = docker
            .list_containers(Some(
                ListContainersOptionsBuilder::default()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(|e| self.engine.error("listing containers", e))?;
        for id in containers.into_iter().filter_map(|c| c.id) {
            container::remove_on(docker, &self.engine, &id).await;
            removed += 1;
        }
        Ok(removed)
    }

    /// Makes sure a runtime's image is on the engine, building the built-in Python
    /// image if needed.
    pub async fn ensure_runtime_image(&self, runtime: &ContainerRuntime) -> Result<()> {
        let docker = self.docker().await?;
        self.ensure_image_on(docker, runtime).await
    }

    /// [`Self::ensure_runtime_image`] on an engine already known to answer.
    async fn ensure_image_on(&self, docker: &Docker, runtime: &ContainerRuntime) -> Result<()> {
        if runtime.image == ContainerRuntime::builtin_python().image {
            return image::ensure_python_base(docker, &runtime.image, &self.work_dir).await;
        }
        if !image::image_exists(docker, &runtime.image).await? {
            return Err(Error::InvalidRuntime(format!(
                "image {} is not on the Docker engine, and there is no registry to pull it \
                 from: build or load it first (docker build / docker load)",
                runtime.image
            )));
        }
        Ok(())
    }

    fn runtime_for(&self, spec: &FunctionSpec) -> Result<ContainerRuntime> {
        self.runtime(&spec.runtime)
            .ok_or_else(|| Error::UnknownRuntime(spec.runtime.clone()))
    }

    /// The tag of the image a version of `function` with this bundle runs in on this
    /// engine now (what `prepare` builds or finds); `None` when `runtime` is not
    /// registered or its base image is not on the engine (no such image can exist).
    pub async fn function_image_tag(
        &self,
        function: &str,
        runtime: &str,
        digest: &str,
    ) -> Result<Option<String>> {
        let Some(runtime) = self.runtime(runtime) else {
            return Ok(None);
        };
        let docker = self.docker().await?;
        if !image::image_exists(docker, &runtime.image).await? {
            return Ok(None);
        }
        let base_id = image::image_id(docker, &runtime.image).await?;
        Ok(Some(function_image_tag(
            function, &runtime, digest, &base_id,
        )))
    }

    /// The function images (`newt-fn/*`) this host built on the engine, by tag.
    /// Images of other hosts sharing the engine, and images built before images
    /// carried their host's label, are not listed: this host never removes them.
    pub async fn function_images(&self) -> Result<Vec<FunctionImage>> {
        let docker = self.docker().await?;
        let host = format!("{HOST_LABEL}={}", self.host_id);
        let filters = HashMap::from([
            ("label", vec!["newt.managed=true", host.as_str()]),
            ("reference", vec!["newt-fn/*"]),
        ]);
        let summaries = docker
            .list_images(Some(
                bollard::query_parameters::ListImagesOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(|e| self.engine.error("listing function images", e))?;
        // What removing an image frees is its own layers: its size less its base
        // image's (which stays for the runtime). Base sizes by runtime, asked once.
        let mut base_sizes: HashMap<String, i64> = HashMap::new();
        let mut images = Vec::new();
        for summary in summaries {
            let runtime = summary
                .labels
                .get("newt.runtime")
                .cloned()
                .unwrap_or_default();
            if !base_sizes.contains_key(&runtime) {
                let size = match self.runtime(&runtime) {
                    Some(def) => docker
                        .inspect_image(&def.image)
                        .await
                        .ok()
                        .and_then(|i| i.size)
                        .unwrap_or(0),
                    None => 0,
                };
                base_sizes.insert(runtime.clone(), size);
            }
            let own = (summary.size - base_sizes[&runtime]).max(0);
            for tag in &summary.repo_tags {
                if !tag.starts_with("newt-fn/") {
                    continue;
                }
                images.push(FunctionImage {
                    tag: tag.clone(),
                    function: summary
                        .labels
                        .get("newt.function")
                        .cloned()
                        .unwrap_or_default(),
                    runtime: runtime.clone(),
                    // Shared by the tags of one image: counted once.
                    bytes: if images.iter().any(|i: &FunctionImage| i.id == summary.id) {
                        0
                    } else {
                        own as u64
                    },
                    id: summary.id.clone(),
                    created: summary.created,
                });
            }
        }
        images.sort_by(|a, b| a.tag.cmp(&b.tag));
        Ok(images)
    }

    /// Removes a function image by tag, never forcing: an image a container still
    /// uses stays (the engine refuses). `Ok(false)` if there was no such image.
    pub async fn remove_function_image(&self, tag: &str) -> Result<bool> {
        if !tag.starts_with("newt-fn/") || !image::valid_reference(tag) {
            return Err(Error::Internal(anyhow::anyhow!(
                "{tag:?} is not a function image's tag"
            )));
        }
        let docker = self.docker().await?;
        match docker
            .remove_image(
                tag,
                Some(
                    bollard::query_parameters::RemoveImageOptionsBuilder::default()
                        .force(false)
                        .build(),
                ),
                None,
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(false),
            Err(e) => Err(self.engine.error(&format!("removing image {tag}"), e)),
        }
    }
}

/// The label naming the host (a hash of its home) that built a function image, so
/// hosts sharing an engine remove only their own.
const HOST_LABEL: &str = "newt.host";

/// A function image on the engine, as [`DockerExecutor::function_images`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionImage {
    /// `newt-fn/NAME:HASH`.
    pub tag: String,
    /// The engine's image id.
    pub id: String,
    /// The function it was built for (its label).
    pub function: String,
    /// The runtime it was built from (its label).
    pub runtime: String,
    /// Bytes of its own layers (its size less its base image's); 0 for a second tag
    /// of the same image.
    pub bytes: u64,
    /// When it was built, Unix seconds.
    pub created: i64,
}

/// The tag of a function image: the function's name and a hash of everything the image
/// is made from, the bundle, the runtime's definition and the exact base image. Same
/// inputs, same image: a build finds it and skips.
fn function_image_tag(
    function: &str,
    runtime: &ContainerRuntime,
    digest: &str,
    base_id: &str,
) -> String {
    // The policy says how many containers to keep, not what is in them; the
    // variables and mounts are given to containers, not built into the image; the
    // Python version describes the image, it does not make it.
    let build_inputs = ContainerRuntime {
        policy: None,
        python: None,
        env: BTreeMap::new(),
        mounts: Vec::new(),
        ..runtime.clone()
    };
    let inputs = format!(
        "{digest}\n{}\n{base_id}",
        serde_json::to_string(&build_inputs).unwrap_or_default()
    );
    format!(
        "newt-fn/{function}:{}",
        &crate::cas::Digest::of(inputs.as_bytes()).as_str()[..16]
    )
}

/// Unpacks a bundle for `runtime` into `dest`, refusing unsafe archives, agent
/// bundles without a `main.py` and an invalid `newt.toml` (which it returns).
fn unpack_for(
    runtime: &ContainerRuntime,
    bundle: &[u8],
    dest: &Path,
) -> Result<(crate::bundle::Unpacked, BundleConfig)> {
    let unpacked = unpack(bundle, dest, &BundleLimits::default())?;
    let config = BundleConfig::read(dest)?;
    if runtime.mode == RunMode::Agent && !unpacked.files.iter().any(|f| f == Path::new("main.py")) {
        return Err(Error::InvalidBundle(
            "the bundle has no main.py at its root: the handler is main.py's `handler`".into(),
        ));
    }
    if (install_command(runtime, &unpacked).is_some() || !config.build.is_empty())
        && let Ok(deps) = std::fs::symlink_metadata(dest.join(DEPS_DIR))
        && !deps.is_dir()
    {
        return Err(Error::InvalidBundle(format!(
            "the bundle's `{DEPS_DIR}` is not a folder: requirements are installed there"
        )));
    }
    Ok((unpacked, config))
}

/// The folder of the runtime's `path` that requirements are installed into: the build
/// creates it empty, owned by the function's user.
const DEPS_DIR: &str = ".deps";

/// The command that installs a bundle's requirements, if it has a `requirements.txt`
/// and the runtime has one: `dependencies_offline` (when set) if the bundle ships
/// packages in `wheels/` (wheels or source distributions), `dependencies` otherwise.
fn install_command<'a>(
    runtime: &'a ContainerRuntime,
    unpacked: &crate::bundle::Unpacked,
) -> Option<&'a str> {
    if !unpacked.has_requirements {
        return None;
    }
    let ships_packages = unpacked.has_wheels
        || unpacked
            .files
            .iter()
            .any(|f| f.parent() == Some(Path::new("wheels")));
    let command = if ships_packages {
        runtime
            .dependencies_offline
            .as_ref()
            .or(runtime.dependencies.as_ref())
    } else {
        runtime.dependencies.as_ref()
    };
    command.map(String::as_str)
}

/// What the build is doing at each `RUN` of the Dockerfile, as its progress shows it:
/// the instruction as the engine prints it (`RUN <command>`) and the step's name.
fn step_names(install: Option<&str>, steps: &[String]) -> Vec<(String, String)> {
    let mut names = Vec::new();
    if let Some(install) = install {
        names.push((
            format!("RUN {install}"),
            "installing requirements".to_string(),
        ));
    }
    for (i, step) in steps.iter().enumerate() {
        names.push((
            format!("RUN {step}"),
            format!("build step {}/{}: {step}", i + 1, steps.len()),
        ));
    }
    names
}

/// The validated tree as base64 of a .tar.gz, what a runtime-level instance loads.
fn generic_bundle(code_dir: &Path) -> Result<String> {
    use base64::Engine as _;
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(encoder);
    tar.follow_symlinks(false);
    tar.append_dir_all(".", code_dir)
        .map_err(|e| Error::io("packing", code_dir, e))?;
    let gz = tar
        .into_inner()
        .and_then(|gz| gz.finish())
        .map_err(|e| Error::io("packing", code_dir, e))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(gz))
}

/// The Dockerfile of a function image. Nothing in it runs as root: the code is copied
/// owned by the function's user, who then runs `install` (the runtime's dependencies
/// command) in `path`, able to write only there (and in the world-writable scratch
/// folders). `PYTHONUSERBASE` points into `path` so a plain `pip3 install`, which
/// falls back to a user install when it may not write site-packages, lands in the
/// image where Python finds it at run time (the runtime's own `HOME` may be the
/// tmpfs `/tmp` of a running container).
///
/// The steps every function of a runtime shares come before the code, so the engine's
/// cache has them after the first build, and the labels are one step, not one each:
/// the classic builder runs a container for every step, about a second apiece on a
/// busy engine, which a build's deadline pays for.
///
/// A bundle's `newt.toml` `build` steps come after the install, one `RUN` each, as the
/// same user with the same limits and network (they are checked to be one line each).
fn dockerfile(
    runtime: &ContainerRuntime,
    install: Option<&str>,
    steps: &[String],
    labels: &[(&str, &str)],
) -> String {
    let (image, path, uid) = (&runtime.image, &runtime.path, container::FUNCTION_UID);
    let mut dockerfile = format!("FROM {image}\nUSER {uid}\nWORKDIR {path}\n");
    if install.is_some() || !steps.is_empty() {
        dockerfile.push_str(&format!("ENV PYTHONUSERBASE={path}/{DEPS_DIR}\n"));
    }
    dockerfile.push_str(&format!("COPY --chown={uid}:{uid} code/ {path}/\n"));
    if let Some(install) = install {
        dockerfile.push_str(&format!("RUN {install}\n"));
    }
    for step in steps {
        dockerfile.push_str(&format!("RUN {step}\n"));
    }
    if !labels.is_empty() {
        // Quoted as JSON strings, which the Dockerfile's LABEL reads alike.
        let quote = |s: &str| serde_json::to_string(s).unwrap_or_default();
        let pairs: Vec<String> = labels
            .iter()
            .map(|(key, value)| format!("{}={}", quote(key), quote(value)))
            .collect();
        dockerfile.push_str(&format!("LABEL {}\n", pairs.join(" ")));
    }
    dockerfile
}

/// The build context: the Dockerfile and the unpacked bundle under `code/`, with an
/// empty `.deps/` when requirements are installed.
fn build_context(
    runtime: &ContainerRuntime,
    code_dir: &Path,
    install: Option<&str>,
    steps: &[String],
    labels: &[(&str, &str)],
) -> Result<Vec<u8>> {
    if install.is_some() || !steps.is_empty() {
        let deps = code_dir.join(DEPS_DIR);
        if !deps.is_dir() {
            std::fs::create_dir(&deps).map_err(|e| Error::io("creating", &deps, e))?;
        }
    }
    let dockerfile = dockerfile(runtime, install, steps, labels);
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(false);
    let mut header = tar::Header::new_gnu();
    header.set_size(dockerfile.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "Dockerfile", dockerfile.as_bytes())
        .and_then(|()| tar.append_dir_all("code", code_dir))
        .map_err(|e| Error::io("packing the build context from", code_dir, e))?;
    tar.into_inner()
        .map_err(|e| Error::io("packing the build context from", code_dir, e))
}

#[async_trait]
impl Executor for DockerExecutor {
    type Prepared = ContainerPrepared;
    type Instance = ContainerInstance;

    fn name(&self) -> &'static str {
        "docker"
    }

    fn can_handle(&self, runtime: &str) -> bool {
        self.runtimes.contains_key(runtime)
    }

    /// The engine answers, and the bundle unpacks safely with what the runtime needs
    /// in it. The image itself is built afterwards.
    async fn check_bundle(&self, runtime: &str, bundle: &Bytes) -> Result<()> {
        let runtime = self
            .runtime(runtime)
            .ok_or_else(|| Error::UnknownRuntime(runtime.to_string()))?;
        // Refused before anything is stored: the deploy answers 429 with retry-after.
        if let Some(reason) = self.builds.refusal() {
            return Err(Error::Busy(reason));
        }
        self.docker().await?;
        let work_dir = self.work_dir.clone();
        let bundle = bundle.clone();
        let unpack_runtime = runtime.clone();
        let config = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&work_dir).map_err(|e| Error::io("creating", &work_dir, e))?;
            let scratch = tempfile::tempdir_in(&work_dir)
                .map_err(|e| Error::io("creating a scratch directory in", &work_dir, e))?;
            unpack_for(&unpack_runtime, &bundle, scratch.path()).map(|(_, config)| config)
        })
        .await
        .map_err(|e| Error::Internal(anyhow::anyhow!("unpack task: {e}")))??;
        self.check_python(&runtime, &config)
    }

    fn prepares_in_background(&self) -> bool {
        true
    }

    async fn prepare(&self, spec: &FunctionSpec, bundle: &Path) -> Result<ContainerPrepared> {
        let runtime = self.runtime_for(spec)?;
        // On the board from now until this returns, whichever way.
        let progress = self
            .build_board
            .start(&spec.name, spec.version, "checking the base image");
        let docker = self.docker().await?;
        self.ensure_image_on(docker, &runtime).await?;
        // The tag names everything the image is made from: the bundle, the runtime's
        // definition and the exact base image. Same inputs, same image: skip the build.
        let base_id = image::image_id(docker, &runtime.image).await?;
        let tag = function_image_tag(&spec.name, &runtime, &spec.digest, &base_id);
        // A build takes its slot before unpacking: builds in line hold no memory or
        // disk. The same image may have been built while this one waited.
        let mut slot = None;
        if !image::image_exists(docker, &tag).await? {
            progress.step("waiting for a build slot");
            let entered = self
                .builds
                .enter()
                .await
                .map_err(|reason| Error::AtCapacity {
                    function: spec.name.clone(),
                    reason,
                })?;
            if !image::image_exists(docker, &tag).await? {
                slot = Some(entered);
            }
        }
        let deadline = Instant::now() + self.build_limits.timeout;
        let build = slot.is_some();
        progress.step("unpacking the bundle");
        let bytes = std::fs::read(bundle).map_err(|e| Error::io("reading", bundle, e))?;
        std::fs::create_dir_all(&self.work_dir)
            .map_err(|e| Error::io("creating", &self.work_dir, e))?;
        let scratch = tempfile::tempdir_in(&self.work_dir)
            .map_err(|e| Error::io("creating a build directory in", &self.work_dir, e))?;
        let code = scratch.path().join("code");
        std::fs::create_dir(&code).map_err(|e| Error::io("creating", &code, e))?;
        let build_runtime = runtime.clone();
        let (function, runtime_name) = (spec.name.clone(), spec.runtime.clone());
        let host_id = self.host_id.clone();
        let (context, generic, config, steps) = tokio::task::spawn_blocking(move || {
            let (unpacked, config) = unpack_for(&build_runtime, &bytes, &code)?;
            // Code with requirements or build steps needs its own image; the rest can
            // also be loaded into a runtime-level instance.
            let generic = if build_runtime.mode == RunMode::Agent
                && !unpacked.has_requirements
                && config.build.is_empty()
            {
                Some(generic_bundle(&code)?)
            } else {
                None
            };
            let install = install_command(&build_runtime, &unpacked);
            let steps = step_names(install, &config.build);
            let context = if build {
                let labels = [
                    ("newt.managed", "true"),
                    ("newt.function", function.as_str()),
                    ("newt.runtime", runtime_name.as_str()),
                    (HOST_LABEL, host_id.as_str()),
                ];
                Some(build_context(
                    &build_runtime,
                    &code,
                    install,
                    &config.build,
                    &labels,
                )?)
            } else {
                None
            };
            Ok::<_, Error>((context, generic, config, steps))
        })
        .await
        .map_err(|e| Error::Internal(anyhow::anyhow!("unpack task: {e}")))??;
        // Checked at deploy too; again here, for a version stored before the runtime
        // changed.
        self.check_python(&runtime, &config)?;
        let prepared = ContainerPrepared {
            image: tag.clone(),
            runtime: runtime.clone(),
            handler: DEFAULT_HANDLER.into(),
            bundle_env: config.env,
            generic_bundle: generic,
        };
        let Some(context) = context else {
            return Ok(prepared);
        };
        image::build_function_image(
            docker,
            &image::FunctionBuild {
                tag: &tag,
                limits: &self.build_limits,
                deadline,
                progress: Some((&progress, &steps)),
            },
            context,
        )
        .await?;
        drop(slot);
        Ok(prepared)
    }

    async fn create(
        &self,
        spec: &FunctionSpec,
        prepared: &Arc<ContainerPrepared>,
        deadline: Instant,
    ) -> Result<ContainerInstance> {
        if !spec.allow_outbound.is_empty() && !self.engine_is_local() {
            return Err(Error::InstanceStart(format!(
                "{} has an allow_outbound list, but the Docker engine at {} is not on \
                 this host: its egress proxy's socket cannot be mounted into the container",
                spec.name, self.engine.address
            )));
        }
        let mounts = self.mounts_for_start(&prepared.runtime)?;
        let base_env = prepared.runtime.base_env(&prepared.bundle_env);
        // `preload = none`: every call gets a fresh container, so one is started
        // ahead of the next call (see `docker::ahead`). The call takes one if it is
        // ready; either way the kind counts the call's container as in use.
        let mut in_use = None;
        if spec.policy.preload == Preload::None && prepared.runtime.mode == RunMode::Agent {
            let recipe = AheadRecipe {
                function: spec.name.clone(),
                limits: spec.limits.clone(),
                runtime: prepared.runtime.clone(),
                image: prepared.image.clone(),
                base_env: base_env.clone(),
                mounts: mounts.clone(),
                egress: !spec.allow_outbound.is_empty(),
            };
            let (taken, guard) = self.ahead.take(
                &recipe.key(),
                || recipe,
                spec.policy.keep_alive.min(AHEAD_KEEP),
            );
            if let Some(mut instance) = taken {
                instance.in_use = Some(Box::new(guard));
                container::load(
                    &mut instance,
                    spec,
                    &spec.env,
                    &prepared.handler,
                    &prepared.runtime.path,
                    None,
                    &self.egress_stats,
                    deadline,
                )
                .await?;
                return Ok(instance);
            }
            in_use = Some(guard);
        }
        let docker = self.docker().await?;
        // A function with an allow-list gets its proxy before its container starts;
        // one without gets no directory, no socket: no network at all.
        let egress = if spec.allow_outbound.is_empty() {
            None
        } else {
            let mut egress = self.egress_dirs.instance()?;
            egress.serve(&spec.allow_outbound, &self.egress_stats)?;
            Some(egress)
        };
        let volumes = self.starter.volumes.get(docker, &prepared.image).await?;
        let mut instance = container::start(
            &self.engine,
            docker,
            &container::Start {
                function: &spec.name,
                limits: &spec.limits,
                runtime: &prepared.runtime,
                image: &prepared.image,
                handler: Some(&prepared.handler),
                generic: false,
                ahead: false,
                volumes: &volumes,
                env: &spec.env,
                base_env: &base_env,
                mounts: &mounts,
                host_id: &self.host_id,
            },
            egress,
            deadline,
        )
        .await?;
        if let Some(guard) = in_use {
            instance.in_use = Some(Box::new(guard));
        }
        Ok(instance)
    }

    fn has_runtime_instances(&self, runtime: &str) -> bool {
        self.runtime(runtime)
            .is_some_and(|r| r.mode == RunMode::Agent)
    }

    async fn create_generic(&self, runtime: &str, deadline: Instant) -> Result<ContainerInstance> {
        let runtime = self
            .runtime(runtime)
            .ok_or_else(|| Error::UnknownRuntime(runtime.to_string()))?;
        let docker = self.docker().await?;
        self.ensure_image_on(docker, &runtime).await?;
        let mounts = self.mounts_for_start(&runtime)?;
        // Generic instances are started with the default limits and no code, and
        // (with a local engine) an empty egress directory: the function that claims
        // one may have an allow-list, whose proxy then listens there (see `load`).
        let egress = if self.engine_is_local() {
            Some(self.egress_dirs.instance()?)
        } else {
            None
        };
        let volumes = self.starter.volumes.get(docker, &runtime.image).await?;
        container::start(
            &self.engine,
            docker,
            &container::Start {
                function: &format!("rt-{}", runtime.name),
                limits: &Limits::default(),
                runtime: &runtime,
                image: &runtime.image,
                handler: None,
                generic: true,
                ahead: false,
                volumes: &volumes,
                env: &Default::default(),
                // The runtime's own variables only: a bundle's come with its code.
                base_env: &runtime.base_env(&BTreeMap::new()),
                mounts: &mounts,
                host_id: &self.host_id,
            },
            egress,
            deadline,
        )
        .await
    }

    fn can_load(&self, spec: &FunctionSpec, prepared: &ContainerPrepared) -> bool {
        prepared.generic_bundle.is_some()
            && spec.limits == Limits::default()
            // Without a local engine generic instances have no egress directory.
            && (spec.allow_outbound.is_empty() || self.engine_is_local())
    }

    async fn load(
        &self,
        spec: &FunctionSpec,
        prepared: &Arc<ContainerPrepared>,
        instance: &mut ContainerInstance,
        deadline: Instant,
    ) -> Result<()> {
        let bundle = prepared
            .generic_bundle
            .as_deref()
            .ok_or_else(|| Error::InstanceStart("the function needs its own image".into()))?;
        // The bundle's `[env]` under the function's own, delivered with the code.
        let env = if prepared.bundle_env.is_empty() {
            spec.env.clone()
        } else {
            let mut merged = prepared.bundle_env.clone();
            merged.extend(spec.env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            crate::executor::Env(Arc::new(merged))
        };
        container::load(
            instance,
            spec,
            &env,
            &prepared.handler,
            GENERIC_WORKDIR,
            Some(bundle),
            &self.egress_stats,
            deadline,
        )
        .await
    }

    async fn invoke(
        &self,
        spec: &FunctionSpec,
        instance: &mut ContainerInstance,
        call: &CallRequest,
        deadline: Instant,
    ) -> Result<CallOutcome> {
        let docker = self.engine.client()?;
        container::invoke(docker, spec, instance, call, deadline).await
    }

    fn reusable(&self, instance: &ContainerInstance) -> bool {
        instance.alive()
    }

    /// A container started before the engine was last lost is dead: its attached
    /// stdio went with the engine (and, without live-restore, its process).
    fn alive(&self, instance: &ContainerInstance) -> bool {
        instance.alive()
    }

    async fn destroy(&self, instance: ContainerInstance) {
        instance.remove().await;
    }

    /// Asks the engine its version, within [`engine::PROBE_TIMEOUT`]: `/healthz`
    /// answers quickly whatever state the engine is in.
    async fn health(&self) -> BackendHealth {
        let address = self.engine.address.clone();
        match self.engine.version().await {
            Ok(version) => BackendHealth {
                reachable: true,
                address,
                version,
                error: None,
            },
            Err(error) => BackendHealth {
                reachable: false,
                address,
                version: None,
                error: Some(error),
            },
        }
    }

    fn egress_stats(&self) -> Option<Arc<EgressStats>> {
        Some(self.egress_stats.clone())
    }

    fn runtimes(&self) -> Vec<ContainerRuntime> {
        let mut all: Vec<_> = self.runtimes.iter().map(|r| r.clone()).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    fn takes_runtimes(&self) -> bool {
        true
    }

    /// `check` (a registration through the API): the image must be on the engine and
    /// the mounts under the allowed directories. Without it (a runtime restored from
    /// the store at start) a mount no longer allowed is kept, and its containers are
    /// refused when they start (503, with the reason).
    async fn register_runtime(&self, runtime: ContainerRuntime, check: bool) -> Result<()> {
        runtime.validate()?;
        if check {
            self.resolve_mounts(&runtime)
                .map_err(Error::InvalidRuntime)?;
            self.ensure_runtime_image(&runtime).await?;
        } else if let Err(reason) = self.resolve_mounts(&runtime) {
            tracing::warn!(runtime = %runtime.name, "{reason}: its calls will fail until it is allowed");
        }
        self.runtimes.insert(runtime.name.clone(), runtime);
        Ok(())
    }

    fn remove_runtime(&self, name: &str) -> bool {
        self.runtimes.remove(name).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ahead_limits_are_read_from_their_variable() {
        let defaults = AheadLimits::default();
        assert_eq!(
            parse_ahead_limits("0"),
            Some(AheadLimits {
                per_kind: 0,
                ..defaults
            })
        );
        assert_eq!(
            parse_ahead_limits("4/12"),
            Some(AheadLimits {
                per_kind: 4,
                total: 12,
                ..defaults
            })
        );
        assert_eq!(parse_ahead_limits(" 64 ").map(|l| l.total), Some(64));
        for bad in ["", "x", "4/", "-1", "5000", "1/2/3"] {
            assert_eq!(parse_ahead_limits(bad), None, "{bad}");
        }
    }

    #[test]
    fn builtin_python_runtime_parses_and_is_valid() {
        let python = ContainerRuntime::builtin_python();
        assert_eq!(python.name, "python");
        assert_eq!(python.mode, RunMode::Agent);
        python.validate().unwrap();
    }

    #[test]
    fn seed_runtime_object_is_command_mode_with_defaults() {
        let rt: ContainerRuntime = serde_json::from_str(
            r#"{"name":"py","image":"python:3.12-slim","path":"/app","dependencies":"pip3 install -r requirements.txt","run":"python3 test.py"}"#,
        )
        .unwrap();
        assert_eq!(rt.mode, RunMode::Command);
        rt.validate().unwrap();
    }

    #[test]
    fn runtime_images_must_be_image_references() {
        let base = ContainerRuntime::builtin_python();
        let digest = format!("a@sha256:{}", "ab".repeat(32));
        for image in [
            "newt/python:3",
            "localhost:5000/a/b:1.2",
            "python:3.12-slim",
            digest.as_str(),
        ] {
            let runtime = ContainerRuntime {
                image: image.into(),
                ..base.clone()
            };
            runtime.validate().unwrap();
        }
        let refused = ContainerRuntime {
            image: "x/../get?names=a".into(),
            ..base
        }
        .validate()
        .unwrap_err();
        assert!(
            refused.to_string().contains("Docker image reference"),
            "{refused}"
        );
    }

    #[test]
    fn function_image_installs_as_the_function_user_never_root() {
        let python = ContainerRuntime::builtin_python();
        let install = python.dependencies_offline.as_deref();
        let labels = [("newt.managed", "true"), ("newt.function", "dice")];
        let dockerfile = dockerfile(&python, install, &[], &labels);
        let lines: Vec<&str> = dockerfile.lines().collect();
        assert_eq!(
            lines,
            [
                "FROM newt/python:3",
                "USER 10001",
                "WORKDIR /app",
                "ENV PYTHONUSERBASE=/app/.deps",
                "COPY --chown=10001:10001 code/ /app/",
                &format!("RUN {}", install.unwrap()),
                r#"LABEL "newt.managed"="true" "newt.function"="dice""#,
            ]
        );
        // Every RUN comes after a USER, the last USER before it is the function's, and
        // nothing switches back to root.
        let mut user = None;
        for line in &lines {
            if let Some(u) = line.strip_prefix("USER ") {
                user = Some(u);
            }
            if line.starts_with("RUN ") {
                assert_eq!(user, Some("10001"), "{dockerfile}");
            }
        }
        assert!(!dockerfile.contains("USER root") && !dockerfile.contains("USER 0"));
        assert!(install.unwrap().contains("--target .deps"));
        assert!(install.unwrap().contains("--no-build-isolation"));
        assert!(
            python
                .dependencies
                .as_deref()
                .unwrap()
                .contains("--target .deps")
        );

        // No requirements: no RUN at all, and the image's user is still the function's.
        let bare = super::dockerfile(&python, None, &[], &[]);
        assert_eq!(
            bare,
            "FROM newt/python:3\nUSER 10001\nWORKDIR /app\nCOPY --chown=10001:10001 code/ /app/\n"
        );
    }

    #[test]
    fn build_context_holds_an_empty_deps_folder_and_the_dockerfile() {
        let python = ContainerRuntime::builtin_python();
        let code = tempfile::tempdir().unwrap();
        std::fs::write(
            code.path().join("main.py"),
            "def handler(e):\n    return e\n",
        )
        .unwrap();
        std::fs::write(code.path().join("requirements.txt"), "x\n").unwrap();
        let context =
            build_context(&python, code.path(), Some("pip3 install x"), &[], &[]).unwrap();
        let mut archive = tar::Archive::new(context.as_slice());
        let mut entries = HashMap::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let mut body = String::new();
            std::io::Read::read_to_string(&mut entry, &mut body).unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            entries.insert(path, (entry.header().entry_type(), body));
        }
        let deps = entries
            .iter()
            .find(|(path, _)| path.trim_end_matches('/') == "code/.deps")
            .expect("code/.deps in the context");
        assert!(deps.1.0.is_dir());
        assert!(entries["Dockerfile"].1.contains("USER 10001\n"));
        assert!(entries["Dockerfile"].1.ends_with("RUN pip3 install x\n"));
        assert!(entries.contains_key("code/main.py"));
    }

    fn unpacked(files: &[&str]) -> crate::bundle::Unpacked {
        crate::bundle::Unpacked {
            files: files.iter().map(PathBuf::from).collect(),
            total_bytes: 0,
            has_requirements: files.contains(&"requirements.txt"),
            has_wheels: files.iter().any(|f| f.ends_with(".whl")),
        }
    }

    #[test]
    fn packages_in_wheels_install_offline() {
        let python = ContainerRuntime::builtin_python();
        let online = python.dependencies.as_deref();
        let offline = python.dependencies_offline.as_deref();
        assert_eq!(install_command(&python, &unpacked(&["main.py"])), None);
        assert_eq!(
            install_command(&python, &unpacked(&["main.py", "requirements.txt"])),
            online
        );
        for package in ["wheels/a-1-py3-none-any.whl", "wheels/evil-0.1.tar.gz"] {
            assert_eq!(
                install_command(&python, &unpacked(&["requirements.txt", package])),
                offline,
                "{package}"
            );
        }
        // A runtime without an offline command uses its one command.
        let seed = ContainerRuntime {
            dependencies_offline: None,
            ..python.clone()
        };
        assert_eq!(
            install_command(&seed, &unpacked(&["requirements.txt", "wheels/a.tar.gz"])),
            online
        );
    }

    #[test]
    fn a_deps_entry_that_is_not_a_folder_is_refused_when_requirements_install() {
        let python = ContainerRuntime::builtin_python();
        let main = b"def handler(e):\n    return e\n".as_slice();
        let with_file = crate::pack(&[
            ("main.py", main),
            ("requirements.txt", b"x\n"),
            (".deps", b"not a folder"),
        ])
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let err = unpack_for(&python, &with_file, dir.path()).unwrap_err();
        assert!(err.to_string().contains("`.deps`"), "{err}");
        // Without requirements nothing is installed there: a shipped file is the
        // function's business.
        let no_requirements = crate::pack(&[("main.py", main), (".deps", b"x")]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        unpack_for(&python, &no_requirements, dir.path()).unwrap();
        // A shipped folder is installed into.
        let with_folder = crate::pack(&[
            ("main.py", main),
            ("requirements.txt", b"x\n"),
            (".deps/vendored.py", b"x = 1\n"),
        ])
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        unpack_for(&python, &with_folder, dir.path()).unwrap();
    }

    #[test]
    fn build_limits_default_and_refusals() {
        let defaults = BuildLimits::default();
        defaults.validate().unwrap();
        assert_eq!(defaults.network, "none");
        assert_eq!(defaults.memory(), 1 << 30);
        assert_eq!(defaults.cpu_quota(), 100_000);
        assert_eq!(defaults.timeout, Duration::from_secs(600));
        let half = BuildLimits {
            milli_cpus: 500,
            network: "bridge".into(),
            ..defaults.clone()
        };
        half.validate().unwrap();
        assert_eq!(half.cpu_quota(), 50_000);
        for broken in [
            BuildLimits {
                network: "host".into(),
                ..defaults.clone()
            },
            BuildLimits {
                network: "container:abc".into(),
                ..defaults.clone()
            },
            BuildLimits {
                network: "a b".into(),
                ..defaults.clone()
            },
            BuildLimits {
                network: String::new(),
                ..defaults.clone()
            },
            BuildLimits {
                memory_bytes: 4 << 30,
                ..defaults.clone()
            },
            BuildLimits {
                memory_bytes: 1 << 20,
                ..defaults.clone()
            },
            BuildLimits {
                max_builds: 0,
                ..defaults.clone()
            },
            BuildLimits {
                milli_cpus: 0,
                ..defaults.clone()
            },
            BuildLimits {
                timeout: Duration::from_millis(10),
                ..defaults.clone()
            },
        ] {
            assert!(broken.validate().is_err(), "{broken:?}");
        }
    }

    #[tokio::test]
    async fn the_build_queue_runs_so_many_and_holds_so_many() {
        let queue = Arc::new(BuildQueue::new(&BuildLimits {
            max_builds: 1,
            max_queued: 1,
            ..BuildLimits::default()
        }));
        let running = queue.enter().await.unwrap();
        assert!(queue.refusal().is_none(), "one may still wait");
        let waiter = {
            let queue = queue.clone();
            tokio::spawn(async move { queue.enter().await.map(drop) })
        };
        while queue.waiting.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let refused = queue.enter().await.map(drop).unwrap_err();
        assert!(
            refused.contains("queue is full (1 running, 1 waiting)"),
            "{refused}"
        );
        assert!(queue.refusal().is_some());
        drop(running);
        waiter.await.unwrap().unwrap();
        assert_eq!(queue.waiting.load(Ordering::SeqCst), 0);
        assert!(queue.refusal().is_none());
        // A waiter that gives up (its deploy's task dropped) leaves the line.
        let running = queue.enter().await.unwrap();
        let gave_up = tokio::time::timeout(Duration::from_millis(20), queue.enter()).await;
        assert!(gave_up.is_err());
        assert_eq!(queue.waiting.load(Ordering::SeqCst), 0);
        drop(running);
    }

    #[test]
    fn newt_toml_build_steps_run_after_the_install_as_the_function_user() {
        let python = ContainerRuntime::builtin_python();
        let steps = vec![
            "echo built > built.txt".to_string(),
            "python3 gen.py".into(),
        ];
        let dockerfile = dockerfile(&python, Some("pip3 install x"), &steps, &[]);
        let lines: Vec<&str> = dockerfile.lines().collect();
        assert_eq!(
            lines,
            [
                "FROM newt/python:3",
                "USER 10001",
                "WORKDIR /app",
                "ENV PYTHONUSERBASE=/app/.deps",
                "COPY --chown=10001:10001 code/ /app/",
                "RUN pip3 install x",
                "RUN echo built > built.txt",
                "RUN python3 gen.py",
            ]
        );
        // Steps without requirements still get `.deps` to install into.
        let only_steps = dockerfile_of(&python, None, &steps);
        assert!(only_steps.contains("ENV PYTHONUSERBASE=/app/.deps\n"));
        let names = step_names(Some("pip3 install x"), &steps);
        assert_eq!(
            names[0],
            (
                "RUN pip3 install x".into(),
                "installing requirements".into()
            )
        );
        assert_eq!(names[2].1, "build step 2/2: python3 gen.py");
    }

    fn dockerfile_of(
        runtime: &ContainerRuntime,
        install: Option<&str>,
        steps: &[String],
    ) -> String {
        dockerfile(runtime, install, steps, &[])
    }

    #[test]
    fn a_bundle_with_newt_toml_unpacks_with_its_config_and_bad_ones_are_refused() {
        let python = ContainerRuntime::builtin_python();
        let main = b"def handler(e):\n    return e\n".as_slice();
        let good = crate::pack(&[
            ("main.py", main),
            ("newt.toml", b"build = [\"true\"]\n[env]\nA = \"1\"\n"),
        ])
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (_, config) = unpack_for(&python, &good, dir.path()).unwrap();
        assert_eq!(config.build, ["true"]);
        assert_eq!(config.env["A"], "1");
        let bad = crate::pack(&[("main.py", main), ("newt.toml", b"extra = 1\n")]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let err = unpack_for(&python, &bad, dir.path()).unwrap_err();
        assert!(matches!(err, Error::InvalidBundle(_)) && err.to_string().contains("extra"));
    }

    #[test]
    fn a_bundle_python_version_must_be_the_runtimes() {
        let executor = DockerExecutor::new(DockerConfig {
            address: None,
            work_dir: PathBuf::new(),
            host_id: String::new(),
        });
        let python = ContainerRuntime::builtin_python();
        assert_eq!(python.python.as_deref(), Some(BUILTIN_PYTHON_VERSION));
        let wants = |v: &str| BundleConfig {
            python: Some(v.into()),
            ..Default::default()
        };
        executor.check_python(&python, &wants("3.11")).unwrap();
        executor
            .check_python(&python, &BundleConfig::default())
            .unwrap();
        let err = executor
            .check_python(&python, &wants("3.12"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("provides Python 3.11")
                && err.contains("built-in image carries one Python"),
            "{err}"
        );
        let py312 = ContainerRuntime {
            name: "python3-12".into(),
            python: Some("3.12".into()),
            ..python.clone()
        };
        executor.runtimes.insert(py312.name.clone(), py312);
        let err = executor
            .check_python(&python, &wants("3.12"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("deploy with --runtime python3-12"), "{err}");
    }

    #[test]
    fn runtime_env_and_mounts_parse_and_do_not_change_the_function_image() {
        let rt: ContainerRuntime = serde_json::from_str(
            r#"{"name":"ml","image":"newt/python:3","run":"python3 /opt/newt/agent.py","mode":"agent",
                "env":{"HF_HOME":"/models"},"mounts":[{"host":"/srv/models","container":"/models"}]}"#,
        )
        .unwrap();
        rt.validate().unwrap();
        assert_eq!(
            rt.base_env(&BTreeMap::from([("B".into(), "2".into())])),
            [
                ("B".to_string(), "2".to_string()),
                ("HF_HOME".to_string(), "/models".to_string())
            ]
        );
        let bare = ContainerRuntime {
            env: BTreeMap::new(),
            mounts: Vec::new(),
            python: None,
            ..rt.clone()
        };
        assert_eq!(
            function_image_tag("f", &rt, "d", "b"),
            function_image_tag("f", &bare, "d", "b")
        );
        // A seed runtime serializes as before: no new keys.
        let seed = ContainerRuntime::builtin_python();
        let json = serde_json::to_value(ContainerRuntime {
            python: None,
            ..seed
        })
        .unwrap();
        assert!(json.get("env").is_none() && json.get("mounts").is_none());
    }

    #[test]
    fn bad_runtime_fields_are_refused() {
        let base = ContainerRuntime::builtin_python();
        for broken in [
            ContainerRuntime {
                name: "Py".into(),
                ..base.clone()
            },
            ContainerRuntime {
                name: "wasm".into(),
                ..base.clone()
            },
            ContainerRuntime {
                image: "a b".into(),
                ..base.clone()
            },
            ContainerRuntime {
                image: "x/../get?names=a".into(),
                ..base.clone()
            },
            ContainerRuntime {
                image: "../../containers/json".into(),
                ..base.clone()
            },
            ContainerRuntime {
                image: "Ubuntu".into(),
                ..base.clone()
            },
            ContainerRuntime {
                image: "a//b".into(),
                ..base.clone()
            },
            ContainerRuntime {
                image: "a:".into(),
                ..base.clone()
            },
            ContainerRuntime {
                image: "FROM a\nRUN x".into(),
                ..base.clone()
            },
            ContainerRuntime {
                path: "relative".into(),
                ..base.clone()
            },
            ContainerRuntime {
                run: " ".into(),
                ..base.clone()
            },
            ContainerRuntime {
                env: BTreeMap::from([("NEWT_FUNCTION".into(), "x".into())]),
                ..base.clone()
            },
            ContainerRuntime {
                env: BTreeMap::from([("A B".into(), "x".into())]),
                ..base.clone()
            },
            ContainerRuntime {
                python: Some("3".into()),
                ..base.clone()
            },
            ContainerRuntime {
                mounts: vec![RuntimeMount {
                    host: "/srv/models".into(),
                    container: "/app/models".into(),
                }],
                ..base.clone()
            },
            ContainerRuntime {
                mounts: vec![RuntimeMount {
                    host: "/srv/../etc".into(),
                    container: "/models".into(),
                }],
                ..base.clone()
            },
        ] {
            assert!(broken.validate().is_err(), "{broken:?}");
        }
    }
}

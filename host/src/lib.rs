//! newt's host: the HTTP API, the service that owns deploys, calls and records, the
//! store, and the CLI, over the engine in `newt-runtime`.
//!
//! Where a request goes:
//! ```text
//! HTTP (api/: parse, auth, limits) -> service/ (registry, deploy, calls, runtimes)
//!        -> newt_runtime::Invoker (executors, pools)     -> store/ (Store trait; SQLite)
//! ```
//! [`app`] builds the whole HTTP application over a [`service::Service`], so tests can
//! drive it in-process without a socket ([`build_service`] makes one on a home
//! directory); `newt serve` binds it to a port.

pub mod api;
pub mod bench;
pub mod client;
pub mod commands;
pub mod metrics;
pub mod secrets;
pub mod service;
pub mod store;
pub mod telemetry;
pub mod testing;
pub mod wire;

pub use api::app;

use anyhow::Context;
use newt_runtime::{Cas, DockerConfig, DockerExecutor, Invoker, WasmConfig, WasmExecutor};
use std::path::Path;
use std::sync::Arc;

/// How to build a service on a home directory.
#[derive(Clone, Debug)]
pub struct ServiceOptions {
    /// Server limits and settings.
    pub config: service::ServerConfig,
    /// Use the wasm pooling allocator.
    pub pooling: bool,
    /// The Docker engine's address (`DOCKER_HOST`); the default socket if `None`.
    pub docker_host: Option<String>,
}

/// Limits of container image builds, as `newt serve` takes them (`--max-builds`,
/// `--max-build-queue`, `--build-timeout`, `--build-memory-mb`, `--build-cpus`,
/// `--build-network`). A build runs the runtime's `dependencies` command on tenant
/// data, as the function's user.
#[derive(Clone, Debug, PartialEq)]
pub struct BuildOptions {
    /// Builds running at once.
    pub max_builds: usize,
    /// Builds waiting for a slot; a deploy beyond answers 429.
    pub max_queued: usize,
    /// How long one build may run; past it the version fails.
    pub timeout: std::time::Duration,
    /// Memory (= memory + swap) of a build, in MiB.
    pub memory_mb: u64,
    /// CPUs of a build.
    pub cpus: f64,
    /// Network of a build's `RUN` steps: `none`, `bridge` or a Docker network's name.
    pub network: String,
}

impl BuildOptions {
    /// Sets these limits on a docker executor, refusing out-of-range ones.
    pub fn apply(&self, docker: DockerExecutor) -> anyhow::Result<DockerExecutor> {
        docker
            .with_build_limits(|limits| {
                limits.max_builds = self.max_builds;
                limits.max_queued = self.max_queued;
                limits.timeout = self.timeout;
                limits.memory_bytes = self.memory_mb.saturating_mul(1 << 20);
                // Saturates for out-of-range values, which the check then refuses.
                limits.milli_cpus = (self.cpus * 1000.0).round() as u32;
                limits.network = self.network.clone();
            })
            .context("the image build limits")
    }

    /// Checks the limits without an engine (before anything else starts).
    pub fn check(&self) -> anyhow::Result<()> {
        let scratch = DockerExecutor::new(DockerConfig {
            address: None,
            work_dir: std::path::PathBuf::new(),
            host_id: String::new(),
        });
        self.apply(scratch).map(drop)
    }
}

/// A service on `home` (database, content store, caches), with the wasm and docker
/// executors. Returns the docker executor too, for start-up and shutdown chores
/// (base image, leftover containers). Image builds get their default limits.
pub async fn build_service(
    home: &Path,
    options: ServiceOptions,
) -> anyhow::Result<(service::SharedService, Arc<DockerExecutor>)> {
    build_service_with(home, options, None).await
}

/// [`build_service`] with the limits of image builds (`None`: their defaults).
pub async fn build_service_with(
    home: &Path,
    options: ServiceOptions,
    builds: Option<&BuildOptions>,
) -> anyhow::Result<(service::SharedService, Arc<DockerExecutor>)> {
    private_dir(home)?;
    for dir in ["cas", "cache", "docker"] {
        private_dir(&home.join(dir))?;
    }
    // The database holds every call's input and output: only newt's user reads it.
    // SQLite gives its -wal and -shm files the database file's permissions.
    let db = home.join("newt.db");
    private_file(&db)?;
    let store: store::SharedStore = Arc::new(store::SqliteStore::open(&db)?);
    let cas = Cas::open(home.join("cas")).context("opening the content store")?;
    let wasm = WasmExecutor::new(WasmConfig {
        cache_dir: home.join("cache"),
        pooling: options.pooling,
    })
    .context("starting the wasm engine")?;
    let mut docker = DockerExecutor::new(DockerConfig {
        address: options.docker_host,
        work_dir: home.join("docker"),
        host_id: host_id(home),
    });
    if let Some(builds) = builds {
        docker = builds.apply(docker)?;
    }
    let limits = docker.build_limits();
    tracing::info!(
        max_builds = limits.max_builds,
        max_queued = limits.max_queued,
        timeout_secs = limits.timeout.as_secs(),
        memory_mb = limits.memory_bytes >> 20,
        cpus = f64::from(limits.milli_cpus) / 1000.0,
        network = %limits.network,
        "image builds run as uid 10001 with these limits"
    );
    let docker = Arc::new(docker);
    let invoker = Invoker::new(cas)
        .with_executor(wasm)
        .with_shared_executor(docker.clone());
    let keys = secrets::SecretKeys::for_home(home).context("the secret key")?;
    let service = service::Service::start_with_keys(store, invoker, options.config, keys).await?;
    // Retention with its defaults; `newt serve` sets its flags and starts its task.
    let _ = service.gc.set(Arc::new(service::gc::Collector::new(
        home.to_path_buf(),
        Some(docker.clone()),
    )));
    Ok((service, docker))
}

/// Creates `dir` (and its parents) readable by newt's user only, and narrows an
/// existing one: the compiled-module cache under it is native code this process
/// (which holds the Docker socket) loads, so no other user may write there.
fn private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let mode = std::fs::metadata(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        tracing::warn!(dir = %dir.display(), "narrowing permissions to 0700");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("setting the permissions of {}", dir.display()))?;
    }
    Ok(())
}

/// Creates `file` empty with mode 0600 if it does not exist, and narrows it if it does.
fn private_file(file: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(file)
        .with_context(|| format!("creating {}", file.display()))?;
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting the permissions of {}", file.display()))
}

/// Names this host among others sharing a Docker engine: a hash of its home.
fn host_id(home: &Path) -> String {
    use sha2::Digest as _;
    let canonical = home.canonicalize().unwrap_or_else(|_| home.to_path_buf());
    let digest = sha2::Sha256::digest(canonical.as_os_str().as_encoded_bytes());
    hex::encode(&digest[..6])
}

//! `newt serve`: the HTTP server over the engine, with state under `NEWT_HOME`.

use anyhow::{Context, bail};
use axum::body::Body;
use axum::http::Request;
use newt_runtime::{DockerExecutor, Executor};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

use crate::api::guard::{self, AllowedHosts, HttpOptions};
use crate::api::listen::{self, ConnectionLimits};
use crate::service::ServerConfig;

/// The address `newt serve` binds unless told otherwise: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7878";
/// Largest bundle a deploy accepts (64 MiB).
pub const DEFAULT_MAX_BUNDLE_BYTES: usize = 64 << 20;
/// Largest call input accepted (6 MiB, the usual synchronous payload limit).
pub const DEFAULT_MAX_INPUT_BYTES: usize = 6 << 20;
/// Open files newt keeps for itself beside its client connections: the database and
/// its journal, the Docker engine's connections and an attach stream per container,
/// compiled modules, image builds. `--max-connections` is lowered to fit the rest.
const RESERVED_FILES: u64 = 256;

/// Arguments of `newt serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on. Anything but loopback needs --token (or --insecure).
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Where newt keeps its database, bundles and compiled modules [default: ~/.newt]
    #[arg(long, env = "NEWT_HOME")]
    pub home: Option<PathBuf>,
    /// The admin token: require `Authorization: Bearer <token>` on every /v1 route.
    #[arg(long, env = "NEWT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// An invoke-only token, `NAME=TOKEN` (repeatable; or NEWT_INVOKE_TOKENS, comma
    /// separated): it may invoke functions and read the calls it made, nothing else.
    /// Needs --token.
    #[arg(
        long = "invoke-token",
        value_name = "NAME=TOKEN",
        env = "NEWT_INVOKE_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub invoke_tokens: Vec<String>,
    /// Allow listening on a non-loopback address without a token.
    #[arg(long)]
    pub insecure: bool,
    /// Largest bundle a deploy accepts, in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_BUNDLE_BYTES)]
    pub max_bundle_bytes: usize,
    /// Largest call input accepted, in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_INPUT_BYTES)]
    pub max_input_bytes: usize,
    /// Async calls running at once; the others wait as `pending`.
    #[arg(long, default_value_t = 16)]
    pub async_concurrency: usize,
    /// Async calls accepted but not finished; past this, new ones get 429.
    #[arg(long, default_value_t = 10_000)]
    pub max_async_backlog: usize,
    /// Bytes of call payloads in flight at once, host-wide: each call reserves its
    /// input plus its function's output and log caps; beyond, calls wait until their
    /// deadline, then get 429.
    #[arg(long, default_value_t = crate::service::DEFAULT_MAX_INFLIGHT_BYTES)]
    pub max_inflight_bytes: usize,
    /// Deploy a function at start, as NAME=PATH (repeatable). An unchanged bundle is
    /// left as it is.
    #[arg(long = "deploy", value_name = "NAME=PATH")]
    pub deploy: Vec<String>,
    /// Allocate wasm instances on demand instead of from the pooling allocator.
    #[arg(long)]
    pub no_pooling: bool,
    /// On SIGTERM / Ctrl-C, how long calls in flight may take to finish (seconds).
    #[arg(long, default_value_t = 30)]
    pub shutdown_grace: u64,
    /// How long a request's headers may take to arrive (from the connection's start or
    /// the request's first byte); slower connections are closed.
    #[arg(long, default_value = "10s", value_parser = positive_duration)]
    pub header_timeout: Duration,
    /// How long a request's whole body may take to arrive after its headers; slower
    /// requests get 408 and their connection is closed.
    #[arg(long, default_value = "30s", value_parser = positive_duration)]
    pub body_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request before it is
    /// closed.
    #[arg(long, default_value = "60s", value_parser = positive_duration)]
    pub idle_timeout: Duration,
    /// Connections open at once; one more is answered 503 and closed.
    #[arg(long, default_value_t = listen::DEFAULT_MAX_CONNECTIONS, value_parser = connection_count)]
    pub max_connections: usize,
    /// A host name requests may carry in `Host`, besides the listen address and
    /// `localhost` (repeatable; `*` for any, e.g. behind a proxy that checks it).
    #[arg(long = "allow-host", value_name = "NAME", value_parser = guard::parse_host)]
    pub allow_host: Vec<String>,
    /// A browser origin allowed to send requests, besides the server's own
    /// (repeatable; `scheme://host[:port]`, or `*` for any).
    #[arg(long = "allow-origin", value_name = "ORIGIN", value_parser = guard::parse_origin)]
    pub allow_origin: Vec<String>,
    /// Container image builds (a runtime's `dependencies` command on a tenant's
    /// requirements) running at once.
    #[arg(long, default_value_t = 2)]
    pub max_builds: usize,
    /// Image builds waiting for a slot; a deploy beyond answers 429 with retry-after.
    #[arg(long, default_value_t = 16)]
    pub max_build_queue: usize,
    /// How long one image build may run; past it, it is cancelled and its version
    /// fails.
    #[arg(long, default_value = "10m", value_parser = positive_duration)]
    pub build_timeout: Duration,
    /// Memory of an image build in MiB (also its memory + swap: no swap); 64 to 2047.
    #[arg(long, default_value_t = 1024)]
    pub build_memory_mb: u64,
    /// CPUs of an image build (0.01 to 64).
    #[arg(long, default_value_t = 1.0)]
    pub build_cpus: f64,
    /// Network of image builds: `none` (no network at all), or `bridge` (or a Docker
    /// network of your own) to let builds reach a package index. `bridge` also lets
    /// them reach this host's bridge address and the LAN.
    #[arg(long, default_value = "none", value_name = "MODE")]
    pub build_network: String,
    /// A host directory whose files container runtimes may mount read-only
    /// (repeatable; a runtime's `mounts` must resolve under one). None by default: no
    /// runtime may mount anything.
    #[arg(long = "allow-mount", value_name = "DIR")]
    pub allow_mount: Vec<PathBuf>,
    /// Call records older than this are deleted in the background (`7d`, `12h`,
    /// `30m`); pending and running calls are kept whatever their age.
    #[arg(long, default_value = "7d", value_parser = crate::service::gc::parse_retention)]
    pub retain_calls: Duration,
    /// Each function keeps at most its newest this many call records.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub retain_calls_per_function: u64,
    /// Ready versions kept per function, the serving one included (the rollback
    /// targets); older ones' bundles, compiled modules and images are removed.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub keep_versions: u64,
    /// How often retention runs in the background (`newt gc` runs it at once).
    #[arg(long, default_value = "1h", value_parser = crate::service::gc::parse_retention)]
    pub gc_interval: Duration,
    /// The server's own log on stderr: `text` for people, `json` (one object per
    /// line) for log collectors.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Export a trace of each call (its queue, create or claim, exec and record
    /// phases) to this OTLP/HTTP collector, e.g. http://127.0.0.1:4318.
    #[arg(long, env = "NEWT_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
}

/// How `newt serve` writes its own log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (tracing-subscriber's JSON format).
    Json,
}

/// A connection cap: 1 to a million.
fn connection_count(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (1..=1_000_000).contains(&n) => Ok(n),
        _ => Err(format!("{text:?} is not a number from 1 to 1000000")),
    }
}

/// A duration such as `10s`, `500ms` or `2m`, more than zero.
fn positive_duration(text: &str) -> Result<Duration, String> {
    let duration = newt_runtime::parse_duration(text)?;
    if duration.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(duration)
}

/// newt's home: `--home`, `NEWT_HOME`, or `~/.newt`.
fn home_dir(home: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(home) = home {
        return Ok(home);
    }
    let user_home =
        std::env::var_os("HOME").context("HOME is not set: pass --home or set NEWT_HOME")?;
    Ok(PathBuf::from(user_home).join(".newt"))
}

/// Splits `NAME=TOKEN`; the name is what call records show, the token its secret.
fn parse_invoke_token(spec: &str) -> anyhow::Result<(String, String)> {
    match spec.split_once('=') {
        Some((name, token))
            if !name.is_empty()
                && name.len() <= 63
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && token.len() >= 16 =>
        {
            Ok((name.to_string(), token.to_string()))
        }
        _ => bail!(
            "--invoke-token takes NAME=TOKEN with a name of letters, digits, '-' and '_' and a \
             token of at least 16 characters"
        ),
    }
}

/// Splits `NAME=PATH`.
fn parse_deploy(spec: &str) -> anyhow::Result<(String, PathBuf)> {
    match spec.split_once('=') {
        Some((name, path)) if !name.is_empty() && !path.is_empty() => {
            Ok((name.to_string(), PathBuf::from(path)))
        }
        _ => bail!("--deploy takes NAME=PATH, got {spec:?}"),
    }
}

/// The limits of image builds the flags give.
fn build_options(args: &ServeArgs) -> crate::BuildOptions {
    crate::BuildOptions {
        max_builds: args.max_builds,
        max_queued: args.max_build_queue,
        timeout: args.build_timeout,
        memory_mb: args.build_memory_mb,
        cpus: args.build_cpus,
        network: args.build_network.clone(),
    }
}

/// Raises this process's soft limit on open files to its hard limit, as Go's runtime
/// does at start: every client connection is a descriptor, and the usual soft limit
/// (1024) is below what a server with `--max-connections` connections needs, while
/// the hard limit (often 524288) is not. Returns the soft limit now in force (`None`:
/// unlimited, or unknown on this platform).
pub fn raise_open_files_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let limit = getrlimit(Resource::Nofile);
        if limit.current.is_some() && limit.current != limit.maximum {
            let raised = Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            };
            match setrlimit(Resource::Nofile, raised) {
                Ok(()) => return limit.maximum,
                // Some systems refuse an unlimited soft limit (macOS caps it at
                // OPEN_MAX): keep the soft limit there is.
                Err(e) => tracing::debug!("could not raise the open files limit: {e}"),
            }
        }
        limit.current
    }
    #[cfg(not(unix))]
    None
}

/// The connection cap that fits in `open_files` with [`RESERVED_FILES`] kept aside,
/// so that a crowd of clients is refused by the cap (a clean 503) and never by the
/// kernel (EMFILE, which would also fail the server's own files and stall accepts).
fn connections_within(wanted: usize, open_files: Option<u64>) -> usize {
    let Some(open_files) = open_files else {
        return wanted;
    };
    let room = open_files
        .saturating_sub(RESERVED_FILES)
        .max(open_files / 2)
        .max(1);
    wanted.min(usize::try_from(room).unwrap_or(usize::MAX))
}

/// Runs the server until SIGTERM or Ctrl-C.
pub fn run(mut args: ServeArgs) -> anyhow::Result<()> {
    // Validate everything before touching the disk or binding a socket.
    let token = args.token.clone().filter(|t| !t.is_empty());
    if !args.listen.ip().is_loopback() && token.is_none() && !args.insecure {
        bail!(
            "refusing to listen on {} without a token: anyone who can reach it could run \
             code here. Set --token / NEWT_TOKEN, or pass --insecure if that is really meant",
            args.listen
        );
    }
    let deploys = args
        .deploy
        .iter()
        .map(|d| parse_deploy(d))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let invoke_tokens = args
        .invoke_tokens
        .iter()
        .map(|t| parse_invoke_token(t))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if !invoke_tokens.is_empty() && token.is_none() {
        bail!(
            "--invoke-token needs --token: without an admin token, deploys and deletes \
             would be open to anyone while calls are not"
        );
    }
    build_options(&args).check()?;
    for dir in &args.allow_mount {
        let canonical = dir
            .canonicalize()
            .with_context(|| format!("--allow-mount {}", dir.display()))?;
        if !canonical.is_dir() {
            bail!("--allow-mount {}: not a directory", dir.display());
        }
        if canonical == std::path::Path::new("/") {
            bail!(
                "--allow-mount /: would let any runtime mount any file of this host; \
                 allow the directories that hold what functions need"
            );
        }
    }
    let otlp = args
        .otlp_endpoint
        .as_deref()
        .filter(|e| !e.is_empty())
        .map(crate::telemetry::traces_url)
        .transpose()?;
    let home = home_dir(args.home.clone())?;

    let logger = tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => logger.init(),
        LogFormat::Json => logger.json().init(),
    }
    let open_files = raise_open_files_limit();
    let fitted = connections_within(args.max_connections, open_files);
    if fitted < args.max_connections {
        tracing::warn!(
            open_files = open_files.unwrap_or_default(),
            "--max-connections {} does not fit in this process's limit on open files: \
             serving at most {fitted} connections (raise `ulimit -n` for more)",
            args.max_connections
        );
        args.max_connections = fitted;
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(args, token, invoke_tokens, home, deploys, otlp))
}

/// `RUST_LOG`'s filter (default `info`), with wasmtime-wasi quiet below warnings
/// unless `RUST_LOG` names it: it instruments every WASI call of every guest with an
/// INFO span whose arguments are formatted, which cost 6% of a warm call's CPU.
fn log_filter() -> tracing_subscriber::EnvFilter {
    use tracing_subscriber::EnvFilter;
    let asked = std::env::var("RUST_LOG").unwrap_or_default();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if asked.contains("wasmtime_wasi") {
        return filter;
    }
    match "wasmtime_wasi=warn".parse() {
        Ok(quiet) => filter.add_directive(quiet),
        Err(_) => filter,
    }
}

async fn serve(
    args: ServeArgs,
    token: Option<String>,
    invoke_tokens: Vec<(String, String)>,
    home: PathBuf,
    deploys: Vec<(String, PathBuf)>,
    otlp: Option<reqwest::Url>,
) -> anyhow::Result<()> {
    let config = ServerConfig {
        max_bundle_bytes: args.max_bundle_bytes,
        max_input_bytes: args.max_input_bytes,
        token: token.clone(),
        invoke_tokens,
        async_concurrency: args.async_concurrency,
        max_async_backlog: args.max_async_backlog,
        max_inflight_bytes: args.max_inflight_bytes,
    };
    let builds = build_options(&args);
    let (service, docker) = crate::build_service_with(
        &home,
        crate::ServiceOptions {
            config,
            pooling: !args.no_pooling,
            docker_host: std::env::var("DOCKER_HOST").ok(),
        },
        Some(&builds),
    )
    .await
    .map_err(|e| match crate::api::error::is_disk_full(e.as_ref()) {
        // SQLite's own words for it can be "disk I/O error".
        true => e.context(format!(
            "the disk under NEWT_HOME ({}) is full: free space there and start newt again",
            home.display()
        )),
        false => e,
    })?;
    if let Some(collector) = service.gc.get() {
        collector.set_settings(crate::service::gc::GcSettings {
            retain_calls: args.retain_calls,
            retain_calls_per_function: usize::try_from(args.retain_calls_per_function)
                .unwrap_or(usize::MAX),
            keep_versions: usize::try_from(args.keep_versions).unwrap_or(usize::MAX),
            interval: args.gc_interval,
        });
        collector.spawn(&service);
    }
    docker
        .set_allowed_mounts(&args.allow_mount)
        .context("--allow-mount")?;
    let _ = service.builds.set(docker.build_board());
    remove_leftover_containers(&docker, "left by a previous run").await;
    prepare_python_image(docker.clone());
    let exporter = otlp
        .map(|url| crate::telemetry::spawn(&service, url))
        .transpose()?;
    let app = crate::api::app_with(
        service.clone(),
        HttpOptions {
            body_timeout: args.body_timeout,
            hosts: AllowedHosts {
                listen: Some(args.listen.ip()),
                names: args.allow_host.clone(),
            },
            origins: args.allow_origin.clone(),
        },
    );

    for (name, path) in &deploys {
        deploy_at_start(&app, token.as_deref(), name, path).await?;
    }

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    // Tests and scripts read this line to find the port.
    println!("newt listening on http://{addr} (home {})", home.display());
    if let Some((name, _)) = deploys.first() {
        let auth = if token.is_some() {
            " -H \"Authorization: Bearer $NEWT_TOKEN\""
        } else {
            ""
        };
        let input = if name == "dice" {
            r#"{"roll":"4d6"}"#
        } else {
            r#"{"name":"newt"}"#
        };
        println!("try: curl -X POST{auth} http://{addr}/v1/functions/{name}/invoke -d '{input}'");
    }

    // At the signal: stop accepting connections and stop starting queued async calls
    // (they stay `pending` and run after the restart); give the requests and the
    // async calls already running up to the grace period, together.
    let (stopping_tx, mut stopping_rx) = tokio::sync::watch::channel(false);
    let limits = ConnectionLimits {
        header_timeout: args.header_timeout,
        idle_timeout: args.idle_timeout,
        max_connections: args.max_connections,
    };
    let signalled = service.clone();
    let server = listen::serve(listener, app, limits, async move {
        shutdown_signal().await;
        signalled.begin_shutdown();
        let _ = stopping_tx.send(true);
    });
    let finished = async {
        server.await;
        service.async_calls_finished().await;
    };
    let grace = std::time::Duration::from_secs(args.shutdown_grace);
    tokio::select! {
        () = finished => {},
        () = async {
            let _ = stopping_rx.wait_for(|stopping| *stopping).await;
            tokio::time::sleep(grace).await;
        } => tracing::warn!(
            secs = grace.as_secs(),
            "calls still running after the grace period: stopping anyway (async calls among \
             them stay `running` and run again at the next start)"
        ),
    }
    tracing::info!("shutting down: flushing call records, removing containers");
    service.shut_down().await;
    if let Some(exporter) = exporter {
        exporter.finish().await;
    }
    remove_leftover_containers(&docker, "at shutdown").await;
    Ok(())
}

fn prepare_python_image(docker: Arc<DockerExecutor>) {
    tokio::spawn(async move {
        let python = newt_runtime::ContainerRuntime::builtin_python();
        if !docker.health().await.reachable {
            return;
        }
        if let Err(e) = docker.ensure_runtime_image(&python).await {
            tracing::warn!("the python runtime's base image could not be built: {e}");
        }
    });
}

/// A short stable id for this home, so hosts sharing an engine keep apart.
async fn remove_leftover_containers(docker: &DockerExecutor, when: &str) {
    let health = docker.health().await;
    if !health.reachable {
        tracing::warn!(
            address = %health.address,
            "Docker engine not reachable ({}): container functions answer 503, wasm works",
            health.error.unwrap_or_default()
        );
        return;
    }
    match docker.remove_leftovers().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(containers = n, "removed containers {when}"),
        Err(e) => tracing::warn!("could not remove leftover containers: {e}"),
    }
}

/// Deploys `path` as `name` through the API itself, so the same checks apply.
async fn deploy_at_start(
    app: &axum::Router,
    token: Option<&str>,
    name: &str,
    path: &std::path::Path,
) -> anyhow::Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut request = Request::put(format!("/v1/functions/{name}"));
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::from(bytes))?)
        .await?;
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20).await?;
    if !status.is_success() {
        bail!(
            "deploying {name} from {}: {status} {}",
            path.display(),
            String::from_utf8_lossy(&body)
        );
    }
    let function: serde_json::Value = serde_json::from_slice(&body)?;
    println!(
        "{} {name} v{} from {}",
        if status.as_u16() == 201 {
            "deployed"
        } else {
            "unchanged"
        },
        function["version"],
        path.display()
    );
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deploy_specs_need_a_name_and_a_path() {
        assert_eq!(
            parse_deploy("dice=examples/dice.wasm").unwrap(),
            ("dice".to_string(), PathBuf::from("examples/dice.wasm"))
        );
        assert!(parse_deploy("dice").is_err());
        assert!(parse_deploy("=x").is_err());
        assert!(parse_deploy("x=").is_err());
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn parse(args: &[&str]) -> ServeArgs {
        use clap::Parser as _;
        Cli::try_parse_from(std::iter::once("serve").chain(args.iter().copied()))
            .unwrap()
            .serve
    }

    #[test]
    fn build_flags_default_to_the_engines_build_limits() {
        let scratch = || {
            DockerExecutor::new(newt_runtime::DockerConfig {
                address: None,
                work_dir: PathBuf::new(),
                host_id: String::new(),
            })
        };
        let defaults = build_options(&parse(&[]));
        let applied = defaults.apply(scratch()).unwrap();
        assert_eq!(applied.build_limits(), scratch().build_limits());

        let custom = build_options(&parse(&[
            "--max-builds",
            "3",
            "--max-build-queue",
            "0",
            "--build-timeout",
            "5s",
            "--build-memory-mb",
            "512",
            "--build-cpus",
            "0.5",
            "--build-network",
            "bridge",
        ]));
        let limits = custom.apply(scratch()).unwrap();
        let limits = limits.build_limits();
        assert_eq!(
            (limits.max_builds, limits.max_queued, limits.timeout),
            (3, 0, Duration::from_secs(5))
        );
        assert_eq!(limits.memory_bytes, 512 << 20);
        assert_eq!(limits.milli_cpus, 500);
        assert_eq!(limits.network, "bridge");

        for bad in [
            &["--build-network", "host"][..],
            &["--build-memory-mb", "4096"],
            &["--build-cpus", "0"],
            &["--max-builds", "0"],
        ] {
            assert!(build_options(&parse(bad)).check().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn connections_fit_in_the_open_files_limit() {
        // Room enough: the cap asked for stands.
        assert_eq!(connections_within(4096, Some(524_288)), 4096);
        assert_eq!(connections_within(4096, None), 4096);
        // A 1024 soft limit that cannot be raised keeps 256 files for newt itself.
        assert_eq!(connections_within(4096, Some(1024)), 768);
        // A tiny limit still leaves half to connections, and never zero.
        assert_eq!(connections_within(4096, Some(300)), 150);
        assert_eq!(connections_within(4096, Some(1)), 1);
        assert_eq!(connections_within(10, Some(1024)), 10);
    }

    #[test]
    fn the_open_files_limit_is_raised_to_the_hard_limit() {
        let soft = raise_open_files_limit();
        #[cfg(unix)]
        {
            let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
            assert_eq!(soft, limit.current);
            if limit.maximum.is_some() {
                assert_eq!(limit.current, limit.maximum);
            }
        }
        #[cfg(not(unix))]
        assert_eq!(soft, None);
    }

    #[test]
    fn timeouts_are_positive_durations() {
        assert_eq!(positive_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(
            positive_duration("500ms").unwrap(),
            Duration::from_millis(500)
        );
        assert!(positive_duration("0s").is_err());
        assert!(positive_duration("soon").is_err());
    }
}

//! `newt deploy NAME PATH`: upload a bundle as a new version of a function.
//!
//! PATH is a bundle file (`.wasm`, `.tar.gz`, `.zip`), or a directory: a Python
//! function's directory is packed in memory ([`super::pack`]), a Rust function crate
//! (with `Cargo.toml`) is built first the way `newt build` builds it. `--wait` on a
//! container function polls the function until its image is built, showing a status
//! line with the elapsed time on a terminal (plain lines otherwise, so logs stay clean).

use anyhow::{Context, bail};
use reqwest::Method;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::pack::{PackLimits, pack_dir};
use crate::client::{Client, ClientOpts, decode, encode};
use crate::store::VersionStatus;
use crate::wire::{FunctionDetailView, FunctionView};

/// How long `--wait` waits for an image build by default. Longer than one build may
/// run (`newt serve --build-timeout`, 10 min by default) plus some time queued behind
/// other builds.
pub const DEFAULT_WAIT_TIMEOUT: &str = "30m";

/// How often `--wait` asks the server how the build is going.
const WAIT_POLL_INTERVAL: Duration = Duration::from_millis(500);

/// How often the status line is redrawn on a terminal (the spinner and the seconds).
const SPINNER_INTERVAL: Duration = Duration::from_millis(100);

/// How often `--wait` prints a "still building" line when stderr is not a terminal.
const PLAIN_PROGRESS_INTERVAL: Duration = Duration::from_secs(30);

/// Arguments of `newt deploy`.
#[derive(Debug, clap::Args)]
pub struct DeployArgs {
    /// Function name: a-z, 0-9 and '-', up to 63 characters.
    pub name: String,
    /// The bundle: a .wasm file or a Rust crate directory (built first) for the wasm
    /// runtime; a .tar.gz, .zip or directory holding main.py (and requirements.txt,
    /// wheels/) for a container runtime.
    pub path: PathBuf,
    /// Runtime that runs it: wasm, python, or a registered runtime.
    #[arg(long, default_value = "wasm")]
    pub runtime: String,
    /// For a container runtime: wait until its image is built (or failed).
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits (e.g. 30m, 90s).
    #[arg(long, default_value = DEFAULT_WAIT_TIMEOUT, value_parser = newt_runtime::parse_duration)]
    pub wait_timeout: Duration,
    /// For a Rust crate directory: build in debug mode.
    #[arg(long)]
    pub debug: bool,
    /// Deadline of one call, in milliseconds [server default: 30000].
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// Memory limit, in MiB [server default: 128].
    #[arg(long)]
    pub memory_mb: Option<u64>,
    /// Largest output, in bytes [server default: 6 MiB].
    #[arg(long)]
    pub max_output_bytes: Option<u64>,
    /// Largest log kept per call, in bytes [server default: 1 MiB].
    #[arg(long)]
    pub max_log_bytes: Option<u64>,
    /// Preload policy: none, runtime or function [default: the runtime's].
    #[arg(long)]
    pub preload: Option<String>,
    /// Instances kept ready at all times.
    #[arg(long)]
    pub min_warm: Option<u64>,
    /// Most instances at once; calls beyond wait, then get 429.
    #[arg(long)]
    pub max_instances: Option<u64>,
    /// How long idle instances above min_warm live (e.g. 60s, 500ms).
    #[arg(long)]
    pub keep_alive: Option<String>,
    /// Calls that may wait when all instances are busy.
    #[arg(long)]
    pub max_queue: Option<u64>,
    /// A variable to set, KEY=VALUE (repeat for more; a redeploy keeps the others).
    /// Secrets are set with `newt secret set`, never on the command line.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Where the function may connect, HOST:PORT (repeat, or separate with commas);
    /// replaces the previous list. Without it: the previous list (none at first).
    #[arg(
        long = "allow-outbound",
        value_name = "HOST:PORT",
        value_delimiter = ','
    )]
    pub allow_outbound: Vec<String>,
    /// Also serve the function on this path (like `newt route add PATH NAME`).
    #[arg(long, value_name = "PATH")]
    pub route: Option<String>,
    /// With --route: only these methods (repeat, or separate with commas).
    #[arg(
        long = "route-method",
        value_name = "METHOD",
        value_delimiter = ',',
        requires = "route"
    )]
    pub route_methods: Vec<String>,
    #[command(flatten)]
    pub client: ClientOpts,
}

/// Uploads the bundle and prints the version the server made of it.
pub async fn run(args: DeployArgs) -> anyhow::Result<()> {
    let bytes = read_bundle(&args.path, &args.runtime, args.debug)?;
    let client = Client::new(&args.client)?;
    let (status, mut body) = upload(&client, &args, bytes).await?;
    let mut verb = match status {
        201 => "deployed",
        202 => "building",
        _ => "unchanged:",
    };
    let mut function: FunctionView = decode(body.clone())?;
    // An unchanged bundle may name a version whose build is still running: wait for it
    // too.
    if args.wait && function.status == VersionStatus::Pending {
        function = wait_until_built(
            &client,
            &args.name,
            function.version,
            args.wait_timeout,
            &mut Progress::on_stderr(),
        )
        .await?;
        if verb == "building" {
            verb = "deployed";
        }
        body = serde_json::to_value(&function)?;
    }
    if args.client.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
    } else {
        let digest = &function.digest;
        println!(
            "{} {} v{} ({} bytes, sha256 {})",
            verb,
            args.name,
            function.version,
            function.size,
            &digest[..digest.len().min(12)]
        );
        if let Some(route) = &args.route {
            println!("served at {route}");
        }
        if verb == "building" {
            println!("its image is being built: `newt functions` shows when it is ready");
        }
    }
    Ok(())
}

/// Sends `bytes` as a new version of `args.name` with the options in `args`; returns
/// the answer's status (201 new, 200 unchanged, 202 building) and its JSON body.
pub async fn upload(
    client: &Client,
    args: &DeployArgs,
    bytes: Vec<u8>,
) -> anyhow::Result<(u16, serde_json::Value)> {
    // Never `wait=true`: the server would hold the request for the whole build with no
    // word on progress; `--wait` polls instead (see [`wait_until_built`]).
    let mut query = vec![format!("runtime={}", encode(&args.runtime))];
    for (key, value) in [
        ("timeout_ms", args.timeout_ms),
        ("memory_mb", args.memory_mb),
        ("max_output_bytes", args.max_output_bytes),
        ("max_log_bytes", args.max_log_bytes),
        ("min_warm", args.min_warm),
        ("max_instances", args.max_instances),
        ("max_queue", args.max_queue),
    ] {
        if let Some(value) = value {
            query.push(format!("{key}={value}"));
        }
    }
    for (key, value) in [("preload", &args.preload), ("keep_alive", &args.keep_alive)] {
        if let Some(value) = value {
            query.push(format!("{key}={}", encode(value)));
        }
    }
    if !args.allow_outbound.is_empty() {
        query.push(format!(
            "allow_outbound={}",
            encode(&args.allow_outbound.join(","))
        ));
    }
    if let Some(route) = &args.route {
        query.push(format!("route={}", encode(route)));
        if !args.route_methods.is_empty() {
            query.push(format!(
                "route_methods={}",
                encode(&args.route_methods.join(","))
            ));
        }
    }
    let mut env = serde_json::Map::new();
    for pair in &args.env {
        let Some((name, value)) = pair.split_once('=') else {
            anyhow::bail!("--env expects KEY=VALUE, got {pair:?}");
        };
        env.insert(name.to_string(), value.into());
    }
    let path = format!("/v1/functions/{}?{}", encode(&args.name), query.join("&"));
    let mut request = client.request(Method::PUT, &path).body(bytes);
    if !env.is_empty() {
        request = request.header("x-newt-env", ascii_json(&serde_json::Value::Object(env)));
    }
    let response = client.send(request).await?;
    let status = response.status().as_u16();
    let body = response.json().await.context("invalid JSON from server")?;
    Ok((status, body))
}

/// The bundle at `path` for `runtime`: the file's bytes; a Rust crate directory built
/// (like `newt build`) to its `.wasm`; a Python function's directory packed.
pub fn read_bundle(path: &Path, runtime: &str, debug: bool) -> anyhow::Result<Vec<u8>> {
    if !path.is_dir() {
        return std::fs::read(path).with_context(|| format!("reading {}", path.display()));
    }
    if path.join("Cargo.toml").is_file() {
        if runtime != "wasm" {
            bail!(
                "{} is a Rust crate: it builds to a .wasm for the wasm runtime, not                  --runtime {runtime}",
                path.display()
            );
        }
        let wasm = build_crate(path, debug)?;
        return std::fs::read(&wasm).with_context(|| format!("reading {}", wasm.display()));
    }
    if runtime == "wasm" {
        bail!(
            "{} is a directory without Cargo.toml: the wasm runtime takes a .wasm file or a              Rust function crate; a Python function's directory deploys with --runtime python",
            path.display()
        );
    }
    let packed = pack_dir(path, &PackLimits::default())?;
    for link in &packed.skipped_links {
        eprintln!("note: {link} is a symlink: left out of the bundle");
    }
    Ok(packed.bytes)
}

/// Builds the Rust function crate `dir` with this binary's own `newt build` (cargo's
/// messages go to stderr) and returns the path of its `.wasm`.
pub fn build_crate(dir: &Path, debug: bool) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("finding this newt binary to run `newt build`")?;
    let mut command = std::process::Command::new(exe);
    command.arg("build").arg(dir);
    if debug {
        command.arg("--debug");
    }
    let output = command
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running `newt build`")?;
    if !output.status.success() {
        bail!(
            "`newt build {}` failed ({}): see its messages above",
            dir.display(),
            output.status
        );
    }
    // `newt build` prints the .wasm's path as its last line of stdout.
    let stdout = String::from_utf8_lossy(&output.stdout);
    let wasm = stdout
        .lines()
        .last()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .context("`newt build` printed no .wasm path")?;
    Ok(PathBuf::from(wasm))
}

/// Polls `GET /v1/functions/{name}` until `version` is built: returns it once `ready`,
/// fails with the build's message once `failed`, or after `timeout`.
pub async fn wait_until_built(
    client: &Client,
    name: &str,
    version: i64,
    timeout: Duration,
    progress: &mut Progress,
) -> anyhow::Result<FunctionView> {
    let started = Instant::now();
    let deadline = started + timeout;
    let path = format!("/v1/functions/{}", encode(name));
    progress.begin(name, version);
    let result = loop {
        let detail: FunctionDetailView = match client.get(&path).await {
            Ok(detail) => detail,
            Err(e) => break Err(e.context(format!("waiting for {name} v{version} to build"))),
        };
        let status = if detail.function.version == version {
            detail.function.status
        } else if let Some(entry) = detail.versions.iter().find(|v| v.version == version) {
            entry.status
        } else {
            break Err(anyhow::anyhow!(
                "{name} v{version} is gone while waiting for its build (deleted?)"
            ));
        };
        match status {
            VersionStatus::Ready if detail.function.version == version => {
                break Ok(detail.function);
            }
            VersionStatus::Ready => {
                // A newer deploy came meanwhile: report this version from its entry.
                let mut function = detail.function;
                function.version = version;
                function.status = status;
                function.status_message = None;
                if let Some(entry) = detail.versions.iter().find(|v| v.version == version) {
                    function.digest = entry.digest.clone();
                    function.size = entry.size;
                    function.created_at = entry.created_at;
                }
                break Ok(function);
            }
            VersionStatus::Failed => {
                let message = (detail.function.version == version)
                    .then_some(detail.function.status_message)
                    .flatten()
                    .unwrap_or_else(|| "see `newt functions`".into());
                break Err(anyhow::anyhow!(
                    "the image build of {name} v{version} failed: {message}"
                ));
            }
            VersionStatus::Pending => {}
        }
        if Instant::now() >= deadline {
            break Err(anyhow::anyhow!(
                "{name} v{version} is still building after {}s (--wait-timeout): \
                 `newt functions` shows when it is ready",
                timeout.as_secs()
            ));
        }
        // Redraw the status line while waiting for the next poll.
        let next_poll = (Instant::now() + WAIT_POLL_INTERVAL).min(deadline);
        while Instant::now() < next_poll {
            progress.tick(name, version, status, started.elapsed());
            let nap = next_poll.saturating_duration_since(Instant::now());
            tokio::time::sleep(nap.min(SPINNER_INTERVAL)).await;
        }
    };
    progress.end();
    result
}

/// The status line of a long wait, on stderr: a spinner redrawn in place with the
/// elapsed time on a terminal; on a pipe or a file, a line at the start and one every
/// [`PLAIN_PROGRESS_INTERVAL`], so logs stay readable.
///
/// Hand-written rather than `indicatif`: one line with `\r` and an erase sequence is
/// all it takes, and it keeps a crate and its terminal dependencies out of the binary.
#[derive(Debug)]
pub struct Progress {
    /// Whether stderr is a terminal (the line is redrawn in place).
    tty: bool,
    /// Spinner frame.
    frame: usize,
    /// When the last plain line was printed.
    last_plain: Option<Instant>,
    /// Whether a line is drawn on the terminal that `end` must erase.
    drawn: bool,
}

impl Progress {
    /// Progress on this process's stderr, in place only if it is a terminal.
    pub fn on_stderr() -> Progress {
        Progress {
            tty: std::io::stderr().is_terminal(),
            frame: 0,
            last_plain: None,
            drawn: false,
        }
    }

    fn begin(&mut self, name: &str, version: i64) {
        if !self.tty {
            eprintln!("building {name} v{version}: waiting for its image");
            self.last_plain = Some(Instant::now());
        }
    }

    fn tick(&mut self, name: &str, version: i64, status: VersionStatus, elapsed: Duration) {
        let secs = elapsed.as_secs();
        let status = match status {
            VersionStatus::Pending => "pending",
            VersionStatus::Ready => "ready",
            VersionStatus::Failed => "failed",
        };
        if self.tty {
            const FRAMES: [char; 4] = ['|', '/', '-', '\\'];
            self.frame = (self.frame + 1) % FRAMES.len();
            let mut err = std::io::stderr().lock();
            // `\r` back to the start of the line, `ESC [2K` erase it.
            let _ = write!(
                err,
                "\r\x1b[2K{} building {name} v{version}: {status}, {secs}s",
                FRAMES[self.frame]
            );
            let _ = err.flush();
            self.drawn = true;
        } else if self
            .last_plain
            .is_none_or(|last| last.elapsed() >= PLAIN_PROGRESS_INTERVAL)
        {
            eprintln!("still building {name} v{version}: {status}, {secs}s");
            self.last_plain = Some(Instant::now());
        }
    }

    fn end(&mut self) {
        if self.drawn {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            self.drawn = false;
        }
    }
}

/// JSON with every character beyond ASCII escaped (`\uXXXX`), so it fits in a header.
fn ascii_json(value: &serde_json::Value) -> String {
    let mut out = String::new();
    for c in value.to_string().chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            for unit in c.encode_utf16(&mut [0; 2]) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn header_json_is_ascii_and_reads_back() {
        let value = serde_json::json!({"GREETING": "grüß dich 👋"});
        let text = super::ascii_json(&value);
        assert!(text.is_ascii(), "{text}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text).unwrap(),
            value
        );
    }
}

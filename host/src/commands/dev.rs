//! `newt dev PATH`: the edit-save-call loop. Watches a function's code and, on every
//! save, rebuilds it (a Rust crate like `newt build`, a Python directory packed like
//! `newt deploy NAME DIR`, a `.wasm` file as it is) and deploys it as a new version,
//! printing one line per cycle, until Ctrl-C. A failed build or deploy is printed and
//! the loop goes on: the next save tries again.
//!
//! Changes are found by polling, not with the `notify` crate: every
//! [`POLL_INTERVAL`] the watched tree is walked and the names, sizes and modification
//! times are hashed. A function's code is a few files to a few thousand (the walk is
//! capped at the bundle's entry limit, and skips `target/`, `.git/`, hidden entries
//! and `__pycache__`), so a walk costs well under a millisecond to a few; in exchange
//! there is no new dependency, no inotify watch limit to hit, and it works the same on
//! bind mounts, network and container filesystems where change events do not arrive.
//!
//! A change is acted on once the tree has stayed the same for [`DEBOUNCE`] (an editor
//! or `git checkout` writes several files in a row), or after [`MAX_DEBOUNCE_ROUNDS`]
//! rounds for a tree that never settles. A bundle with the same sha256 as the one last
//! deployed is not uploaded again.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use super::deploy::{DeployArgs, Progress, read_bundle, upload, wait_until_built};
use super::pack::walk;
use crate::client::{Client, ClientOpts, decode};
use crate::store::VersionStatus;
use crate::wire::FunctionView;

/// How often the watched files are looked at.
const POLL_INTERVAL: Duration = Duration::from_millis(300);

/// How long the files must stay unchanged before a rebuild starts.
const DEBOUNCE: Duration = Duration::from_millis(300);

/// Debounce rounds after which a tree that keeps changing is rebuilt anyway (~3 s), so
/// a file written without pause (a log in the directory) cannot hold the loop off.
const MAX_DEBOUNCE_ROUNDS: usize = 10;

/// Most files and directories watched: a bundle's entry limit (more could not be
/// deployed anyway).
const MAX_WATCHED_ENTRIES: usize = 10_000;

/// How long a cycle waits for a container function's image build.
const BUILD_WAIT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Arguments of `newt dev`.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// What to watch: a Rust function crate (directory with Cargo.toml), a Python
    /// function's directory (main.py, requirements.txt, …) or a .wasm file.
    pub path: PathBuf,
    /// Function name [default: the directory's name, or the .wasm file's stem].
    #[arg(long)]
    pub name: Option<String>,
    /// Runtime [default: wasm for a crate or a .wasm file, python for a directory].
    #[arg(long)]
    pub runtime: Option<String>,
    /// Build Rust crates in debug mode (quicker builds, slower functions).
    #[arg(long)]
    pub debug: bool,
    #[command(flatten)]
    pub client: ClientOpts,
}

/// What `newt dev` watches.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Source {
    /// A `.wasm` file, deployed as it is.
    WasmFile(PathBuf),
    /// A Rust function crate, built for wasm32-wasip1.
    Crate(PathBuf),
    /// A directory packed as a `.tar.gz` (a Python function).
    Dir(PathBuf),
}

impl Source {
    fn of(path: &Path) -> Result<Source> {
        let meta =
            std::fs::metadata(path).with_context(|| format!("cannot watch {}", path.display()))?;
        Ok(if meta.is_dir() {
            if path.join("Cargo.toml").is_file() {
                Source::Crate(path.to_path_buf())
            } else {
                Source::Dir(path.to_path_buf())
            }
        } else {
            Source::WasmFile(path.to_path_buf())
        })
    }

    fn path(&self) -> &Path {
        match self {
            Source::WasmFile(p) | Source::Crate(p) | Source::Dir(p) => p,
        }
    }

    fn default_runtime(&self) -> &'static str {
        match self {
            Source::WasmFile(_) | Source::Crate(_) => "wasm",
            Source::Dir(_) => "python",
        }
    }

    /// The function name a user most likely means: the directory's name or the file's
    /// stem (`hello.wasm` → `hello`).
    fn default_name(&self) -> Result<String> {
        let path = std::path::absolute(self.path())
            .with_context(|| format!("resolving {}", self.path().display()))?;
        let name = match self {
            Source::WasmFile(p) => p.file_stem(),
            Source::Crate(_) | Source::Dir(_) => path.file_name(),
        };
        name.and_then(|n| n.to_str())
            .map(str::to_string)
            .with_context(|| format!("{}: name the function with --name", path.display()))
    }

    /// A hash of what a rebuild depends on: the names, sizes and modification times
    /// of the watched files. An error (a file replaced mid-save) is a state too: the
    /// next poll sees the change when the file is back.
    fn fingerprint(&self) -> u64 {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        match self {
            Source::WasmFile(path) => match std::fs::metadata(path) {
                Ok(meta) => (meta.len(), meta.modified().ok()).hash(&mut hasher),
                Err(e) => e.kind().hash(&mut hasher),
            },
            Source::Crate(dir) | Source::Dir(dir) => {
                let skip_target = matches!(self, Source::Crate(_));
                match walk(dir, skip_target, MAX_WATCHED_ENTRIES) {
                    Ok(walked) => {
                        for entry in walked.files {
                            (entry.name, entry.len, entry.mtime_ns).hash(&mut hasher);
                        }
                    }
                    Err(e) => format!("{e:#}").hash(&mut hasher),
                }
            }
        }
        hasher.finish()
    }
}

/// Runs the loop until the process is interrupted.
pub async fn run(args: DevArgs) -> Result<()> {
    let source = Source::of(&args.path)?;
    let name = match &args.name {
        Some(name) => name.clone(),
        None => source.default_name()?,
    };
    super::new::validate_function_name(&name)
        .with_context(|| format!("{name:?} cannot be the function's name: pass --name"))?;
    let runtime = args
        .runtime
        .clone()
        .unwrap_or_else(|| source.default_runtime().to_string());
    if let Source::Dir(dir) = &source
        && runtime == "wasm"
    {
        bail!(
            "{} has no Cargo.toml: the wasm runtime needs a Rust crate or a .wasm file \
             (a Python directory runs with --runtime python)",
            dir.display()
        );
    }
    let client = Client::new(&args.client)?;
    let deploy = DeployArgs {
        name: name.clone(),
        path: source.path().to_path_buf(),
        runtime,
        wait: false,
        wait_timeout: BUILD_WAIT_TIMEOUT,
        debug: args.debug,
        timeout_ms: None,
        memory_mb: None,
        max_output_bytes: None,
        max_log_bytes: None,
        preload: None,
        min_warm: None,
        max_instances: None,
        keep_alive: None,
        max_queue: None,
        env: Vec::new(),
        allow_outbound: Vec::new(),
        route: None,
        route_methods: Vec::new(),
        client: args.client.clone(),
    };
    eprintln!(
        "watching {} for {name} ({}) on {}: Ctrl-C to stop",
        source.path().display(),
        deploy.runtime,
        args.client.server
    );

    let mut deployed: Option<[u8; 32]> = None;
    let mut seen = source.fingerprint();
    cycle(&client, &deploy, &mut deployed).await;
    loop {
        tokio::time::sleep(POLL_INTERVAL).await;
        let now = source.fingerprint();
        if now == seen {
            continue;
        }
        seen = settle(&source, now).await;
        cycle(&client, &deploy, &mut deployed).await;
    }
}

/// Waits until the fingerprint stops changing (or [`MAX_DEBOUNCE_ROUNDS`] pass) and
/// returns the last one.
async fn settle(source: &Source, mut last: u64) -> u64 {
    for _ in 0..MAX_DEBOUNCE_ROUNDS {
        tokio::time::sleep(DEBOUNCE).await;
        let now = source.fingerprint();
        if now == last {
            break;
        }
        last = now;
    }
    last
}

/// One rebuild and redeploy, reported on one line of stdout. `deployed` is the sha256
/// of the bundle last deployed, updated on success.
async fn cycle(client: &Client, deploy: &DeployArgs, deployed: &mut Option<[u8; 32]>) {
    let started = Instant::now();
    let bytes = match read_bundle(&deploy.path, &deploy.runtime, deploy.debug) {
        Ok(bytes) => bytes,
        Err(e) => {
            println!("build failed: {e:#}");
            return;
        }
    };
    let built_ms = started.elapsed().as_millis();
    let digest: [u8; 32] = Sha256::digest(&bytes).into();
    if *deployed == Some(digest) {
        println!("built in {built_ms} ms, same bundle as deployed: not redeployed");
        return;
    }
    let size = bytes.len();
    match deploy_once(client, deploy, bytes).await {
        Ok((status, function)) => {
            *deployed = Some(digest);
            let verb = if status == 200 {
                "unchanged"
            } else {
                "deployed"
            };
            println!(
                "built in {built_ms} ms, {verb} {} v{} ({size} bytes, sha256 {})",
                deploy.name,
                function.version,
                &function.digest[..function.digest.len().min(12)]
            );
        }
        Err(e) => println!("built in {built_ms} ms, deploy failed: {e:#}"),
    }
}

/// Uploads and, for a container function, waits for its image: a cycle reports a
/// version calls can use.
async fn deploy_once(
    client: &Client,
    deploy: &DeployArgs,
    bytes: Vec<u8>,
) -> Result<(u16, FunctionView)> {
    let (status, body) = upload(client, deploy, bytes).await?;
    let mut function: FunctionView = decode(body)?;
    if function.status == VersionStatus::Pending {
        function = wait_until_built(
            client,
            &deploy.name,
            function.version,
            deploy.wait_timeout,
            &mut Progress::on_stderr(),
        )
        .await?;
    }
    Ok((status, function))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_default_their_name_and_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let wasm = dir.path().join("hello.wasm");
        std::fs::write(&wasm, b"\0asm").unwrap();
        let source = Source::of(&wasm).unwrap();
        assert_eq!(source, Source::WasmFile(wasm));
        assert_eq!(source.default_name().unwrap(), "hello");
        assert_eq!(source.default_runtime(), "wasm");

        let py = dir.path().join("greeter");
        std::fs::create_dir(&py).unwrap();
        let source = Source::of(&py).unwrap();
        assert_eq!(source.default_name().unwrap(), "greeter");
        assert_eq!(source.default_runtime(), "python");

        std::fs::write(py.join("Cargo.toml"), "").unwrap();
        assert_eq!(Source::of(&py).unwrap(), Source::Crate(py.clone()));

        let error = Source::of(&dir.path().join("missing")).unwrap_err();
        assert!(format!("{error:#}").contains("cannot watch"), "{error:#}");
    }

    #[test]
    fn fingerprints_change_with_contents_not_with_skipped_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("Cargo.toml"), "[package]").unwrap();
        std::fs::create_dir(root.join("src")).unwrap();
        std::fs::write(root.join("src/main.rs"), "fn main() {}").unwrap();
        let source = Source::of(root).unwrap();
        let before = source.fingerprint();
        assert_eq!(source.fingerprint(), before);

        for skipped in [
            "target/release/x.wasm",
            ".git/index",
            "src/__pycache__/x.pyc",
        ] {
            let path = root.join(skipped);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, "x").unwrap();
            assert_eq!(source.fingerprint(), before, "{skipped}");
        }

        std::fs::write(root.join("src/main.rs"), "fn main() { }").unwrap();
        assert_ne!(source.fingerprint(), before);
    }
}

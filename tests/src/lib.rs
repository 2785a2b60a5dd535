//! Shared helpers for newt's end-to-end tests: a real `newt serve` on port 0 with a
//! temporary home, and the guest binaries the tests deploy.
//!
//! The `newt` binary and the Rust guests (examples, `tests/guests`) are built by
//! `make test` before the tests run; the WAT fixtures are compiled by this crate's
//! `build.rs`.

use newt_host::testing::TestServer;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// How long a server gets to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a dropped server gets to stop after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The cargo target directory the tests were built in.
pub fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        let dir = PathBuf::from(dir);
        return if dir.is_absolute() {
            dir
        } else {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir)
        };
    }
    // <target>/debug/deps/<test binary>
    let exe = std::env::current_exe().expect("test binary path");
    exe.ancestors()
        .nth(3)
        .expect("test binary lives in <target>/<profile>/deps")
        .to_path_buf()
}

/// The `newt` binary built alongside the tests.
pub fn newt_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe.ancestors().nth(2).expect("<target>/<profile>");
    let bin = profile_dir.join("newt");
    assert!(
        bin.is_file(),
        "{} is missing: run the tests with `make test` (it builds newt first)",
        bin.display()
    );
    bin
}

/// A Rust guest built for wasm32-wasip1 (an example or a test guest).
pub fn guest(name: &str) -> Vec<u8> {
    let path = target_dir()
        .join("wasm32-wasip1/release")
        .join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: run the tests with `make test` (it builds the wasm guests first)",
            path.display()
        )
    })
}

/// A running `newt serve` ([`newt_host::testing::TestServer`] with the tests'
/// settings: `RUST_LOG=info`, panics instead of errors), stopped when dropped.
pub struct Server {
    inner: TestServer,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The server's NEWT_HOME.
    pub home: PathBuf,
}

impl Server {
    /// A server on a fresh temporary home.
    pub fn start() -> Server {
        Server::start_with_args(&[])
    }

    /// A server on a fresh temporary home with extra `serve` arguments.
    pub fn start_with_args(args: &[&str]) -> Server {
        Server::launch(None, args, &[])
    }

    /// A server on a fresh temporary home with extra environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        Server::launch(None, args, env)
    }

    /// A server on an existing home (to restart over the same state).
    pub fn start_in(home: &Path, args: &[&str]) -> Server {
        Server::launch(Some(home), args, &[])
    }

    fn launch(home: Option<&Path>, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut builder = TestServer::builder(newt_bin())
            .args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .start_timeout(START_TIMEOUT)
            .stop_timeout(STOP_TIMEOUT);
        if let Some(home) = home {
            builder = builder.home(home);
        }
        let inner = builder.start().unwrap_or_else(|e| panic!("{e:#}"));
        Server {
            base: inner.base().to_string(),
            home: inner.home().to_path_buf(),
            inner,
        }
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        self.inner.url(path)
    }

    /// The server process's id while it runs (for its RSS, file descriptors, signals).
    pub fn pid(&self) -> Option<u32> {
        self.inner.pid()
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        self.inner.log()
    }

    /// Kills the process with SIGKILL and waits for it: a crash, nothing flushed.
    pub fn kill9(&mut self) {
        self.inner.kill9();
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.inner.terminate().unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Takes the temporary home, so it outlives this server (for restarts).
    pub fn keep_home(&mut self) -> Option<tempfile::TempDir> {
        self.inner.keep_home()
    }
}

impl Drop for Server {
    /// Stops the server the way a user would (SIGTERM: it removes its containers), or
    /// kills it if it does not stop; then removes any container it left (after a
    /// `kill9`, say), so test runs leave nothing behind on the engine. The temporary
    /// home goes after, with `inner`.
    fn drop(&mut self) {
        self.inner.stop();
        remove_containers_of(&self.home);
    }
}

/// Force-removes the containers a server on `home` started, if Docker is there.
fn remove_containers_of(home: &Path) {
    if !home.exists() {
        return;
    }
    let label = format!("label=newt.host={}", host_label(home));
    let Ok(listed) = Command::new("docker")
        .args(["ps", "-aq", "--filter", &label])
        .output()
    else {
        return;
    };
    let ids: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    if !ids.is_empty() {
        let _ = Command::new("docker")
            .args(["rm", "-f"])
            .args(&ids)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A compiled WAT fixture from `tests/fixtures`.
#[macro_export]
macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!(env!("OUT_DIR"), "/", $name, ".wasm")).as_slice()
    };
}

/// Whether a Docker engine answers here. When none does, Docker tests skip with a
/// printed reason, unless `NEWT_REQUIRE_DOCKER=1` (CI), where they fail.
pub fn docker_available() -> bool {
    let answered = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !answered {
        assert!(
            std::env::var("NEWT_REQUIRE_DOCKER").as_deref() != Ok("1"),
            "NEWT_REQUIRE_DOCKER=1 but no Docker engine answers"
        );
        eprintln!("skipped: no Docker engine answers (set NEWT_REQUIRE_DOCKER=1 to fail instead)");
    }
    answered
}

/// Containers a test's server started (by its home's host label), for assertions.
pub fn containers_of(server: &Server) -> Vec<String> {
    containers_labelled(server, &[])
}

/// Containers a test's server started that also carry every label of `labels`
/// (`"newt.ahead=true"`).
pub fn containers_labelled(server: &Server, labels: &[&str]) -> Vec<String> {
    let mut ps = Command::new("docker");
    ps.args(["ps", "-aq", "--filter", "label=newt.managed=true"])
        .args([
            "--filter",
            &format!("label=newt.host={}", host_label(&server.home)),
        ]);
    for label in labels {
        ps.args(["--filter", &format!("label={label}")]);
    }
    let out = ps.output().expect("docker ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The `newt.host` label value newt derives from a home directory.
pub fn host_label(home: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg("printf %s \"$1\" | sha256sum | cut -c1-12")
        .arg("sh")
        .arg(home.canonicalize().expect("home exists"))
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A .tar.gz holding `files` (path, contents), as a user's `tar czf` would make.
pub fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
    newt_runtime::pack(files).expect("packing a .tar.gz in memory")
}

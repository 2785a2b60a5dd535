//! Shared helpers for newt's end-to-end tests: a real `newt serve` on port 0 with a
//! temporary home, and the guest binaries the tests deploy.
//!
//! The `newt` binary and the Rust guests (examples, `tests/guests`) are built by
//! `make test` before the tests run; the WAT fixtures are compiled by this crate's
//! `build.rs`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long a server gets to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(60);

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

/// A running `newt serve`, killed when dropped.
pub struct Server {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The server's NEWT_HOME.
    pub home: PathBuf,
    _tempdir: Option<tempfile::TempDir>,
}

impl Server {
    /// A server on a fresh temporary home.
    pub fn start() -> Server {
        Server::start_with_args(&[])
    }

    /// A server on a fresh temporary home with extra `serve` arguments.
    pub fn start_with_args(args: &[&str]) -> Server {
        let tempdir = tempfile::tempdir().expect("temp dir");
        let mut server = Server::start_in(tempdir.path(), args);
        server._tempdir = Some(tempdir);
        server
    }

    /// A server on a fresh temporary home with extra environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        let tempdir = tempfile::tempdir().expect("temp dir");
        let mut server = Server::launch(tempdir.path(), args, env);
        server._tempdir = Some(tempdir);
        server
    }

    /// A server on an existing home (to restart over the same state).
    pub fn start_in(home: &Path, args: &[&str]) -> Server {
        Server::launch(home, args, &[])
    }

    fn launch(home: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(home.join("server.log"))
            .expect("server log");
        let mut child = Command::new(newt_bin())
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--home")
            .arg(home)
            .args(args)
            .env_remove("NEWT_TOKEN")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start newt serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("newt listening on ") {
                    let base = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send(base);
                }
            }
        });
        let base = match rx.recv_timeout(START_TIMEOUT) {
            Ok(base) => base,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "newt serve did not start; its log:\n{}",
                    std::fs::read_to_string(home.join("server.log")).unwrap_or_default()
                );
            }
        };
        Server {
            child: Some(child),
            base,
            home: home.to_path_buf(),
            _tempdir: None,
        }
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.home.join("server.log")).unwrap_or_default()
    }

    /// Kills the process with SIGKILL and waits for it: a crash, nothing flushed.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("server is running");
        let pid = child.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        assert!(status.success(), "kill -TERM {pid} failed");
        child.wait().expect("wait for newt")
    }

    /// Takes the temporary home, so it outlives this server (for restarts).
    pub fn keep_home(&mut self) -> Option<tempfile::TempDir> {
        self._tempdir.take()
    }
}

impl Drop for Server {
    /// Stops the server the way a user would (SIGTERM: it removes its containers), or
    /// kills it if it does not stop; then removes any container it left (after a
    /// `kill9`, say), so test runs leave nothing behind on the engine.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
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
    let out = Command::new("docker")
        .args(["ps", "-aq", "--filter", "label=newt.managed=true"])
        .args([
            "--filter",
            &format!("label=newt.host={}", host_label(&server.home)),
        ])
        .output()
        .expect("docker ps");
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

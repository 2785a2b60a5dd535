//! A real `newt serve` on a free loopback port, for whatever needs one to talk to: the
//! end-to-end tests (`newt-tests`), `newt bench --self-host` and the criterion HTTP
//! bench.
//!
//! [`TestServer::builder`] takes the `newt` binary to run (the caller knows where it
//! is: `current_exe`, `CARGO_BIN_EXE_newt`, the tests' target directory). The server
//! listens on `127.0.0.1:0` with a home of its own (a fresh temporary directory unless
//! one is given), without `NEWT_TOKEN`, and the builder waits for its
//! `newt listening on http://ADDR` line. Its log (stderr) is appended to
//! `<home>/server.log`, which start failures quote. Dropping the server stops it the
//! way a user would (SIGTERM, so it finishes calls and removes its containers), and
//! kills it if it does not stop in time.

use anyhow::{Context, bail};
use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a server gets to print its address, unless the builder says otherwise.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stopping server gets after SIGTERM before SIGKILL, unless the builder
/// says otherwise.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The log file in the server's home.
const LOG_FILE: &str = "server.log";
/// What `newt serve` prints on stdout once it accepts connections.
const LISTENING: &str = "newt listening on ";

/// How to start a [`TestServer`]; from [`TestServer::builder`].
#[derive(Debug, Clone)]
pub struct TestServerBuilder {
    bin: PathBuf,
    home: Option<PathBuf>,
    temp_prefix: Option<String>,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    start_timeout: Duration,
    stop_timeout: Duration,
}

impl TestServerBuilder {
    /// Runs on this existing home (to restart over the same state) instead of a fresh
    /// temporary one; the home is never removed.
    pub fn home(mut self, home: impl Into<PathBuf>) -> Self {
        self.home = Some(home.into());
        self
    }

    /// Names the temporary home `<prefix>XXXXXX` (ignored with [`Self::home`]).
    pub fn temp_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.temp_prefix = Some(prefix.into());
        self
    }

    /// An extra `serve` argument, after `--listen` and `--home`.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Extra `serve` arguments, after `--listen` and `--home`.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// An environment variable for the server (on top of this process's).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Environment variables for the server (on top of this process's).
    pub fn envs<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        for (key, value) in vars {
            self = self.env(key, value);
        }
        self
    }

    /// How long the server gets to print its address ([`DEFAULT_START_TIMEOUT`]).
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// How long the server gets to stop after SIGTERM before SIGKILL
    /// ([`DEFAULT_STOP_TIMEOUT`]).
    pub fn stop_timeout(mut self, timeout: Duration) -> Self {
        self.stop_timeout = timeout;
        self
    }

    /// Starts `newt serve` and waits until it listens. When it exits first or stays
    /// silent past the start timeout, it is killed and the error quotes its log.
    pub fn start(self) -> anyhow::Result<TestServer> {
        let (home, tempdir) = match &self.home {
            Some(home) => {
                std::fs::create_dir_all(home)
                    .with_context(|| format!("creating the server's home {}", home.display()))?;
                (home.clone(), None)
            }
            None => {
                let mut builder = tempfile::Builder::new();
                if let Some(prefix) = &self.temp_prefix {
                    builder.prefix(prefix);
                }
                let tempdir = builder.tempdir().context("creating a temporary home")?;
                (tempdir.path().to_path_buf(), Some(tempdir))
            }
        };
        let log_path = home.join(LOG_FILE);
        // Appended to, so a restart over the same home keeps the earlier runs' log.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening the server log {}", log_path.display()))?;
        let mut child = Command::new(&self.bin)
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--home")
            .arg(&home)
            .args(&self.args)
            // The server is ours and loopback-only: no token to guess.
            .env_remove("NEWT_TOKEN")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} serve", self.bin.display()))?;
        let stdout = child.stdout.take().context("the server's stdout")?;
        let (tx, rx) = mpsc::channel();
        // Reads stdout for the whole life of the server, so it never writes to a
        // closed pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).split(b'\n') {
                let Ok(line) = line else { break };
                let line = String::from_utf8_lossy(&line);
                if let Some(rest) = line.strip_prefix(LISTENING) {
                    let base = rest.split_whitespace().next().unwrap_or_default();
                    let _ = tx.send(base.to_string());
                }
            }
        });
        let mut server = TestServer {
            child: Some(child),
            base: String::new(),
            home,
            tempdir,
            stop_timeout: self.stop_timeout,
        };
        match rx.recv_timeout(self.start_timeout) {
            Ok(base) => server.base = base,
            Err(waited) => {
                // Stdout closed: the server is on its way out; give it a moment to
                // exit so the error can say how.
                let grace = match waited {
                    mpsc::RecvTimeoutError::Disconnected => Duration::from_secs(2),
                    mpsc::RecvTimeoutError::Timeout => Duration::ZERO,
                };
                let exited = server.child.as_mut().and_then(|c| exit_within(c, grace));
                server.kill9();
                let what = match (exited, waited) {
                    (Some(status), _) => format!("exited ({status}) before listening"),
                    (None, mpsc::RecvTimeoutError::Disconnected) => {
                        "closed its stdout before listening".to_string()
                    }
                    (None, mpsc::RecvTimeoutError::Timeout) => {
                        format!("did not start within {}s", self.start_timeout.as_secs_f32())
                    }
                };
                bail!(
                    "{} serve {what}; its log ({}):\n{}",
                    self.bin.display(),
                    log_path.display(),
                    server.log()
                );
            }
        }
        Ok(server)
    }
}

/// A running `newt serve`; stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct TestServer {
    child: Option<Child>,
    base: String,
    home: PathBuf,
    tempdir: Option<tempfile::TempDir>,
    stop_timeout: Duration,
}

impl TestServer {
    /// How to start `bin serve` (`bin` being a `newt` executable).
    pub fn builder(bin: impl Into<PathBuf>) -> TestServerBuilder {
        TestServerBuilder {
            bin: bin.into(),
            home: None,
            temp_prefix: None,
            args: Vec::new(),
            env: Vec::new(),
            start_timeout: DEFAULT_START_TIMEOUT,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The server's home (`--home`).
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.home.join(LOG_FILE)).unwrap_or_default()
    }

    /// Kills the process with SIGKILL and waits for it: a crash, nothing flushed. Does
    /// nothing once the server is stopped.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits, however long it takes, for the process to exit.
    /// Fails when the server is already stopped or the signal cannot be sent.
    pub fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        let child = self.child.as_mut().context("the server is not running")?;
        sigterm(child.id())?;
        let status = child.wait().context("waiting for newt serve to exit")?;
        self.child = None;
        Ok(status)
    }

    /// Stops the server the way a user would: SIGTERM (it finishes calls and removes
    /// its containers), then SIGKILL if it is still running after the stop timeout.
    /// Does nothing once the server is stopped; dropping the server calls it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if sigterm(child.id()).is_ok() {
            let deadline = Instant::now() + self.stop_timeout;
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Takes the temporary home, so it outlives this server (for restarts); `None` for
    /// a home given to the builder, or once taken.
    pub fn keep_home(&mut self) -> Option<tempfile::TempDir> {
        self.tempdir.take()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The child's exit status if it exits within `grace`.
fn exit_within(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + grace;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            _ => return None,
        }
    }
}

/// Sends SIGTERM to `pid` with `kill(1)`.
fn sigterm(pid: u32) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running kill -TERM")?;
    if !status.success() {
        bail!("kill -TERM {pid} failed ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    /// A stand-in for `newt`: a shell script running `body`.
    fn fake_newt(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("fake-newt");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// Whether a process `pid` exists (`kill -0`).
    fn alive(pid: &str) -> bool {
        Command::new("kill")
            .args(["-0", pid])
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    }

    #[test]
    fn reads_the_address_passes_args_and_env_and_stops_on_sigterm() {
        let dir = tempfile::tempdir().unwrap();
        let bin = fake_newt(
            dir.path(),
            r#"echo "args: $*" >&2
echo "token=${NEWT_TOKEN:-unset} extra=$EXTRA" >&2
trap 'echo got TERM >&2; exit 0' TERM
echo "newt listening on http://127.0.0.1:4242 (pid $$)"
while :; do sleep 0.05; done"#,
        );
        let mut server = TestServer::builder(&bin)
            .args(["--pool", "x"])
            .env("EXTRA", "yes")
            .env("NEWT_TOKEN", "from-the-caller")
            .start()
            .unwrap();
        assert_eq!(server.base(), "http://127.0.0.1:4242");
        assert_eq!(server.url("/healthz"), "http://127.0.0.1:4242/healthz");
        let home = server.home().to_path_buf();
        assert!(home.is_dir());
        let status = server.terminate().unwrap();
        assert!(status.success(), "{status}");
        let log = server.log();
        let expected = format!(
            "args: serve --listen 127.0.0.1:0 --home {} --pool x",
            home.display()
        );
        assert!(log.contains(&expected), "{log}");
        // The builder's env goes on after NEWT_TOKEN is removed.
        assert!(log.contains("token=from-the-caller extra=yes"), "{log}");
        assert!(log.contains("got TERM"), "{log}");
        assert!(server.terminate().is_err(), "already stopped");
        drop(server);
        assert!(!home.exists(), "the temporary home goes with the server");
    }

    #[test]
    fn keep_home_and_restart_over_it_appends_to_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let bin = fake_newt(
            dir.path(),
            "echo run >&2; echo 'newt listening on http://127.0.0.1:1'; exec sleep 60",
        );
        let mut first = TestServer::builder(&bin)
            .temp_prefix("newt-helper-")
            .start()
            .unwrap();
        let home = first.keep_home().unwrap();
        assert!(
            home.path()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("newt-helper-")
        );
        first.kill9();
        first.kill9();
        drop(first);
        assert!(home.path().is_dir());
        let mut second = TestServer::builder(&bin).home(home.path()).start().unwrap();
        assert_eq!(second.log(), "run\nrun\n");
        assert!(second.keep_home().is_none());
        drop(second);
        assert!(home.path().is_dir(), "a given home is never removed");
    }

    #[test]
    fn a_server_that_exits_early_fails_with_its_status_and_log() {
        let dir = tempfile::tempdir().unwrap();
        let bin = fake_newt(dir.path(), "echo 'error: bad flag' >&2; exit 3");
        let err = TestServer::builder(&bin).start().unwrap_err().to_string();
        assert!(
            err.contains("exited (exit status: 3) before listening"),
            "{err}"
        );
        assert!(err.contains("error: bad flag"), "{err}");
    }

    #[test]
    fn a_silent_server_times_out_and_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let bin = fake_newt(
            dir.path(),
            &format!(
                "echo $$ > {}; echo starting >&2; exec sleep 60",
                pid_file.display()
            ),
        );
        let started = Instant::now();
        let err = TestServer::builder(&bin)
            .start_timeout(Duration::from_millis(500))
            .start()
            .unwrap_err()
            .to_string();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(err.contains("did not start within 0.5s"), "{err}");
        assert!(err.contains("starting"), "{err}");
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        assert!(!alive(pid.trim()), "the silent server was left running");
    }

    #[test]
    fn a_server_ignoring_sigterm_is_killed_after_the_stop_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let bin = fake_newt(
            dir.path(),
            "trap '' TERM; echo 'newt listening on http://127.0.0.1:1'; while :; do sleep 0.05; done",
        );
        let mut server = TestServer::builder(&bin)
            .stop_timeout(Duration::from_millis(300))
            .start()
            .unwrap();
        let pid = server.pid().unwrap().to_string();
        let started = Instant::now();
        server.stop();
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(server.pid().is_none());
        assert!(!alive(&pid), "the server was left running");
    }
}

//! The server under measurement: the one at `--server`, or (`--self-host`) a
//! `newt serve` of this very binary on a free loopback port and a temporary home,
//! stopped with SIGTERM (so it removes its containers) when the bench ends.

use anyhow::{Context, bail};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a self-hosted server gets to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long it gets to shut down (and remove its containers) before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A `newt serve` the bench started; stopped when dropped.
#[derive(Debug)]
pub struct SelfHosted {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    home: tempfile::TempDir,
}

impl SelfHosted {
    /// Starts `newt serve --listen 127.0.0.1:0 --home <tempdir>` from the running
    /// executable and waits for its `newt listening on http://ADDR` line.
    pub fn start() -> anyhow::Result<SelfHosted> {
        let exe = std::env::current_exe().context("finding the newt executable")?;
        let home = tempfile::Builder::new()
            .prefix("newt-bench-")
            .tempdir()
            .context("creating a temporary home")?;
        let log = std::fs::File::create(home.path().join("server.log"))
            .context("creating the server log")?;
        let mut child = Command::new(&exe)
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--home")
            .arg(home.path())
            // The server is ours and loopback-only: no token to guess.
            .env_remove("NEWT_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} serve", exe.display()))?;
        let stdout = child.stdout.take().context("the server's stdout")?;
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
        let mut server = SelfHosted {
            child,
            base: String::new(),
            home,
        };
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(base) => server.base = base,
            Err(_) => bail!(
                "the self-hosted newt serve did not start within {}s; its log:\n{}",
                START_TIMEOUT.as_secs(),
                server.log()
            ),
        }
        Ok(server)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.home.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for SelfHosted {
    fn drop(&mut self) {
        // SIGTERM lets the server finish calls and remove every container it started;
        // SIGKILL only if it does not stop in time.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

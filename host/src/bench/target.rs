//! The server under measurement: the one at `--server`, or (`--self-host`) a
//! `newt serve` of this very binary on a free loopback port and a temporary home
//! ([`crate::testing::TestServer`]), stopped with SIGTERM (so it removes its
//! containers) when the bench ends. The density run starts one on a home it keeps, to
//! restart it over the same state.

use crate::testing::TestServer;
use anyhow::Context;
use std::path::Path;
use std::time::Duration;

/// How long a self-hosted server gets to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long it gets to shut down (and remove its containers) before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A `newt serve` the bench started; stopped when dropped.
#[derive(Debug)]
pub struct SelfHosted {
    server: TestServer,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl SelfHosted {
    /// Starts `newt serve --listen 127.0.0.1:0 --home <tempdir>` from the running
    /// executable and waits for its `newt listening on http://ADDR` line.
    pub fn start() -> anyhow::Result<SelfHosted> {
        SelfHosted::start_on(None)
    }

    /// Like [`SelfHosted::start`], on `home` when given (kept when the server stops).
    pub fn start_on(home: Option<&Path>) -> anyhow::Result<SelfHosted> {
        let exe = std::env::current_exe().context("finding the newt executable")?;
        let builder = TestServer::builder(exe)
            .temp_prefix("newt-bench-")
            .start_timeout(START_TIMEOUT)
            .stop_timeout(STOP_TIMEOUT);
        let builder = match home {
            Some(home) => builder.home(home),
            None => builder,
        };
        let server = builder
            .start()
            .context("starting the self-hosted newt serve")?;
        Ok(SelfHosted {
            base: server.base().to_string(),
            server,
        })
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        self.server.log()
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.server.pid()
    }

    /// Stops it (SIGTERM, then SIGKILL after the stop timeout) and waits.
    pub fn stop(&mut self) {
        self.server.stop();
    }
}

//! The connection to the Docker engine, and what newt does when it goes away.
//!
//! newt speaks Docker Engine API 1.41 (Docker 20.10, what Debian ships) and nothing
//! newer. The engine may be absent or down: newt still starts, wasm keeps working, and
//! every container operation answers "unavailable" ("Docker engine not reachable at
//! ADDRESS: why") quickly, never after a long timeout.
//!
//! The engine may also go away while newt runs (stopped, restarted, crashed) and come
//! back. A watcher notices it at once: it pings the engine four times a second (a
//! stopping engine closes its API first) and keeps one quiet events stream open (the
//! engine closes it when it exits). Each loss starts a new *generation*: a container
//! instance started in an older one lost its attached stdio with the engine (and,
//! without live-restore, its process), so pools discard it instead of handing it to a
//! call, and a call in flight in one ends at once as `unavailable`. Containers that could not be removed while the engine was away are
//! remembered and removed when it answers again, so an outage leaves nothing behind.

use bollard::query_parameters::EventsOptionsBuilder;
use bollard::{ClientVersion, Docker};
use futures_util::StreamExt;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::error::Error;

/// The API version newt requests; newer versions would be refused by Docker 20.10.
const API_VERSION: ClientVersion = ClientVersion {
    major_version: 1,
    minor_version: 41,
};
/// Seconds bollard waits for one engine request (image builds stream, so this bounds
/// silence, not the whole build).
const REQUEST_TIMEOUT_SECS: u64 = 600;
/// Where the engine listens when `DOCKER_HOST` is unset.
pub(crate) const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";
/// How long a liveness probe (ping, version) may take before the engine counts as not
/// reachable: a call that needs the engine answers 503 within about this long, and so
/// does `/healthz`. A healthy engine answers a ping in about a millisecond.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the watcher looks for an engine that is away.
const WATCH_RETRY: Duration = Duration::from_millis(250);
/// How often the watcher pings an engine that answers, to notice it stopping.
const HEARTBEAT: Duration = Duration::from_millis(250);
/// How long the watcher waits after the engine refused its events stream (it answered,
/// so this is not an outage; retrying in a tight loop would only fill the log).
const WATCH_REFUSED_RETRY: Duration = Duration::from_secs(5);

/// A client for the engine at `address` (a `DOCKER_HOST` value).
fn connect(address: &str) -> Result<Docker, String> {
    let result = if let Some(path) = address.strip_prefix("unix://") {
        Docker::connect_with_unix(path, REQUEST_TIMEOUT_SECS, &API_VERSION)
    } else if address.starts_with("tcp://") || address.starts_with("http://") {
        Docker::connect_with_http(address, REQUEST_TIMEOUT_SECS, &API_VERSION)
    } else {
        return Err(format!(
            "unsupported DOCKER_HOST {address:?}: use unix:///path or tcp://host:port"
        ));
    };
    result.map_err(|e| e.to_string())
}

/// The `unavailable` error for an engine that did not answer.
pub(crate) fn unreachable(address: &str, reason: impl std::fmt::Display) -> Error {
    Error::Unavailable {
        backend: "docker",
        reason: format!("Docker engine not reachable at {address}: {reason}"),
    }
}

/// Whether a bollard error means the engine did not answer (no socket, connection
/// refused or cut, no answer in time) rather than answered with a refusal.
pub(crate) fn lost_connection(e: &bollard::errors::Error) -> bool {
    use bollard::errors::Error as B;
    matches!(
        e,
        B::HyperLegacyError { .. }
            | B::HyperResponseError { .. }
            | B::IOError { .. }
            | B::RequestTimeoutError
            | B::SocketNotFoundError(_)
    )
}

/// The engine newt talks to, its generation and what is left to clean up on it.
pub(crate) struct Engine {
    /// The engine's address (`DOCKER_HOST`).
    pub(crate) address: String,
    client: Result<Docker, String>,
    /// Bumped each time the connection to the engine is lost; calls in flight watch
    /// it, so they end at once instead of when the engine gets round to closing
    /// their streams.
    generation: tokio::sync::watch::Sender<u64>,
    /// What the watcher saw last: whether the engine answered.
    reachable: AtomicBool,
    /// Containers whose removal failed because the engine was away.
    orphans: Mutex<HashSet<String>>,
    /// Whether the watcher runs (it starts with the first async use: the executor is
    /// made before there is a runtime to run it on).
    watching: AtomicBool,
}

impl Engine {
    /// The engine at `address`. Never fails: an unusable address makes every
    /// operation answer `unavailable` with the reason.
    pub(crate) fn new(address: String) -> Arc<Engine> {
        Arc::new(Engine {
            client: connect(&address),
            address,
            generation: tokio::sync::watch::Sender::new(0),
            reachable: AtomicBool::new(false),
            orphans: Mutex::new(HashSet::new()),
            watching: AtomicBool::new(false),
        })
    }

    /// The client, without asking the engine anything.
    pub(crate) fn client(&self) -> Result<&Docker, Error> {
        self.client
            .as_ref()
            .map_err(|reason| unreachable(&self.address, reason))
    }

    /// The client of an engine that answered a ping just now (within
    /// [`PROBE_TIMEOUT`]).
    pub(crate) async fn answering(self: &Arc<Self>) -> Result<&Docker, Error> {
        self.watch();
        let docker = self.client()?;
        match tokio::time::timeout(PROBE_TIMEOUT, docker.ping()).await {
            Ok(Ok(_)) => Ok(docker),
            Ok(Err(e)) => Err(unreachable(&self.address, e)),
            Err(_) => Err(unreachable(
                &self.address,
                format!(
                    "no answer to a ping within {} ms",
                    PROBE_TIMEOUT.as_millis()
                ),
            )),
        }
    }

    /// The engine's version, asked within [`PROBE_TIMEOUT`].
    pub(crate) async fn version(self: &Arc<Self>) -> Result<Option<String>, String> {
        self.watch();
        let docker = self.client.as_ref().map_err(Clone::clone)?;
        match tokio::time::timeout(PROBE_TIMEOUT, docker.version()).await {
            Ok(Ok(version)) => Ok(version.version),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {} ms", PROBE_TIMEOUT.as_millis())),
        }
    }

    /// The current generation: an instance started in an older one is dead.
    pub(crate) fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    /// Resolves once the engine has been lost since `generation` (never, if it is
    /// not): a call in flight races its reads against it.
    pub(crate) async fn lost_since(&self, generation: u64) {
        let mut watch = self.generation.subscribe();
        if watch.wait_for(|now| *now != generation).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Maps an engine error of `action`: `unavailable` when the engine did not answer,
    /// an internal error otherwise.
    pub(crate) fn error(&self, action: &str, e: bollard::errors::Error) -> Error {
        if lost_connection(&e) {
            unreachable(&self.address, format!("{action}: {e}"))
        } else {
            Error::Internal(anyhow::anyhow!("{action}: {e}"))
        }
    }

    /// Remembers a container whose removal failed because the engine was away, to
    /// remove it when the engine answers again.
    pub(crate) fn orphan(&self, id: &str) {
        if !id.is_empty() {
            self.orphans
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id.to_string());
        }
    }

    /// Starts the watcher if it does not run yet.
    fn watch(self: &Arc<Self>) {
        if self.client.is_err() || self.watching.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(watch(Arc::downgrade(self)));
        } else {
            self.watching.store(false, Ordering::Release);
        }
    }

    /// The engine answered again: removes what could not be removed while it was away.
    async fn answered(&self, docker: &Docker) {
        let was_reachable = self.reachable.swap(true, Ordering::AcqRel);
        let orphans: Vec<String> = self
            .orphans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        if !was_reachable {
            tracing::info!(
                address = %self.address,
                generation = self.generation(),
                "the Docker engine answers"
            );
        }
        for id in orphans {
            super::container::remove_on(docker, self, &id).await;
        }
    }

    /// The connection to the engine is gone: every instance started so far is dead.
    fn lost(&self, why: &str) {
        let mut generation = 0;
        self.generation.send_modify(|g| {
            *g += 1;
            generation = *g;
        });
        self.reachable.store(false, Ordering::Release);
        tracing::warn!(
            address = %self.address,
            generation,
            "lost the Docker engine ({why}): container calls answer 503 until it is back; \
             instances started before are discarded"
        );
    }
}

/// Watches the engine while the executor lives: holds an events stream open (the
/// engine closes it when it stops) and, while the engine is away, pings it every
/// [`WATCH_RETRY`].
async fn watch(engine: Weak<Engine>) {
    // Only daemon events (`reload`): the stream stays quiet; it is only a tripwire.
    let filters = HashMap::from([("type", vec!["daemon"])]);
    loop {
        let Some(strong) = engine.upgrade() else {
            return;
        };
        let Ok(docker) = strong.client.clone() else {
            return;
        };
        let mut events = docker
            .events(Some(
                EventsOptionsBuilder::default().filters(&filters).build(),
            ))
            .boxed();
        let pinged = tokio::time::timeout(PROBE_TIMEOUT, docker.ping()).await;
        if !matches!(pinged, Ok(Ok(_))) {
            strong.reachable.store(false, Ordering::Release);
            drop(strong);
            tokio::time::sleep(WATCH_RETRY).await;
            continue;
        }
        strong.answered(&docker).await;
        drop(strong);
        // Wait for the stream to end, pinging every heartbeat: a stopping engine
        // closes its API at once but the events stream only when it exits, after
        // stopping its containers (seconds), and calls in flight must not wait that
        // long. Only a refused connection counts as lost, not a slow answer: a busy
        // engine still serves its containers.
        let why = loop {
            let heartbeat = tokio::time::sleep(HEARTBEAT);
            tokio::select! {
                ended = events.next() => match ended {
                    Some(Ok(_)) => continue,
                    // The engine answered with a refusal: it is there, and instances
                    // are fine.
                    Some(Err(e @ bollard::errors::Error::DockerResponseServerError { .. })) => {
                        tracing::warn!("the Docker engine refused newt's events stream: {e}");
                        tokio::time::sleep(WATCH_REFUSED_RETRY).await;
                        break None;
                    }
                    Some(Err(e)) => break Some(e.to_string()),
                    None => break Some("it closed the events stream".to_string()),
                },
                () = heartbeat => {
                    if engine.strong_count() == 0 {
                        return;
                    }
                    match tokio::time::timeout(PROBE_TIMEOUT, docker.ping()).await {
                        Ok(Err(e)) if lost_connection(&e) => {
                            break Some(format!("it stopped answering: {e}"));
                        }
                        _ => continue,
                    }
                }
            }
        };
        let Some(engine) = engine.upgrade() else {
            return;
        };
        if let Some(why) = why {
            engine.lost(&why);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_errors_are_unreachable_refusals_are_not() {
        let io = bollard::errors::Error::IOError {
            err: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        assert!(lost_connection(&io));
        assert!(lost_connection(
            &bollard::errors::Error::RequestTimeoutError
        ));
        let refused = bollard::errors::Error::DockerResponseServerError {
            status_code: 409,
            message: "conflict".into(),
        };
        assert!(!lost_connection(&refused));

        let engine = Engine::new("unix:///nonexistent/docker.sock".into());
        let e = engine.error("creating a container", io);
        assert!(matches!(e, Error::Unavailable { .. }), "{e:?}");
        assert!(
            e.to_string()
                .contains("Docker engine not reachable at unix:///nonexistent/docker.sock"),
            "{e}"
        );
        assert!(matches!(
            engine.error("creating a container", refused),
            Error::Internal(_)
        ));
    }

    #[tokio::test]
    async fn an_absent_engine_answers_unavailable_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let address = format!("unix://{}/docker.sock", dir.path().display());
        let engine = Engine::new(address.clone());
        let started = std::time::Instant::now();
        let e = engine.answering().await.map(drop).unwrap_err();
        assert!(started.elapsed() < PROBE_TIMEOUT, "{:?}", started.elapsed());
        assert!(
            e.to_string()
                .contains(&format!("Docker engine not reachable at {address}")),
            "{e}"
        );
        assert!(engine.version().await.is_err());
        assert_eq!(engine.generation(), 0);
    }
}

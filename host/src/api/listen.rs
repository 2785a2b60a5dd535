//! Serving the app on a TCP listener with connection-level limits, which
//! `axum::serve` does not have:
//!
//! - a cap on open connections: one more is answered `503` and closed at once;
//! - a header timeout: a request's headers must all arrive within it, counted from
//!   the connection's start or the request's first byte (slowloris);
//! - an idle timeout: a keep-alive connection with no request in it is closed.
//!
//! The body timeout is per request, in [`super::guard::limit_body`]. Each connection
//! runs hyper's HTTP/1 server beside a watchdog that knows which of three phases it
//! is in (waiting for a head, busy with a request, idle) and when that phase expires.

use axum::Router;
use axum::extract::Request;
use axum::response::Response;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use tower::ServiceExt;

/// Default of [`ConnectionLimits::header_timeout`].
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of [`ConnectionLimits::idle_timeout`].
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default of [`ConnectionLimits::max_connections`]: a thousand keep-alive clients
/// fit (issue 13's load: ~24 KiB of server memory each, measured), while a crowd of
/// half-sent requests, each of which hyper may buffer up to ~400 KiB of headers for,
/// holds ~400 MiB at worst. `newt serve` lowers it if its open-files limit is short.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// Connections over the cap being answered 503 at once; more are just closed.
const REFUSING_AT_ONCE: usize = 64;
/// After answering, how long a closing connection reads (and drops) what the client
/// still sends, so its unread bytes do not turn the close into a reset that could
/// destroy the answer before the client reads it (RFC 9112 §9.6).
const LINGER: Duration = Duration::from_secs(1);
/// ...and how much it reads at most.
const LINGER_BYTES: usize = 1 << 20;

/// Connection-level limits of `newt serve`.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// How long a request's headers may take to arrive.
    pub header_timeout: Duration,
    /// How long a connection may sit idle between requests.
    pub idle_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// Serves `app` on `listener` until `signal` resolves; then stops accepting (the
/// listener is closed), lets each connection finish the request it is in, closes the
/// others, and returns once every connection is closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    signal: impl Future<Output = ()>,
) {
    // Waiting for them all at shutdown takes them as one u32 count.
    let max_connections = limits
        .max_connections
        .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let open = Arc::new(Semaphore::new(max_connections));
    let refusing = Arc::new(Semaphore::new(REFUSING_AT_ONCE));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut signal = std::pin::pin!(signal);
    let mut last_warning: Option<Instant> = None;
    loop {
        let stream = tokio::select! {
            () = &mut signal => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
        };
        match open.clone().try_acquire_owned() {
            Ok(permit) => {
                tokio::spawn(connection(
                    stream,
                    app.clone(),
                    limits,
                    stop_rx.clone(),
                    permit,
                ));
            }
            Err(_) => {
                if last_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                    last_warning = Some(Instant::now());
                    tracing::warn!(
                        max_connections,
                        "connection refused: the server is at --max-connections"
                    );
                }
                refuse(stream, &refusing, max_connections);
            }
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every connection holds a permit until it is closed.
    let _ = open.acquire_many(max_connections as u32).await;
}

/// Waits out an accept error: a connection that went away is nothing; running out of
/// file descriptors passes with time (as `axum::serve` does).
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!("accepting a connection failed: {e}");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Answers a connection over the cap `503` and closes it, without reading its request.
fn refuse(mut stream: TcpStream, refusing: &Arc<Semaphore>, max_connections: usize) {
    let Ok(permit) = refusing.clone().try_acquire_owned() else {
        return; // dropped: closed at once
    };
    tokio::spawn(async move {
        let _permit = permit;
        let body = format!(
            r#"{{"error":{{"code":"unavailable","message":"the server has {max_connections} connections open, its limit (--max-connections): try again later"}}}}"#
        );
        let answer = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
             retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let _ = tokio::time::timeout(LINGER, async {
            stream.write_all(answer.as_bytes()).await?;
            stream.shutdown().await?;
            drain(&mut stream).await;
            Ok::<_, std::io::Error>(())
        })
        .await;
    });
}

/// Reads and drops what the client still sends, up to [`LINGER_BYTES`], until it
/// closes its side.
async fn drain(stream: &mut TcpStream) {
    let mut buf = [0u8; 8192];
    let mut total = 0;
    while total < LINGER_BYTES {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
}

/// How one connection ended.
enum End {
    /// hyper is done with it (the client closed it, or it asked for `close`).
    Served,
    /// The watchdog closed it: a timeout, or quiet at shutdown.
    Closed,
}

/// Serves one connection until it ends, a timeout closes it, or shutdown.
async fn connection(
    stream: TcpStream,
    app: Router,
    limits: ConnectionLimits,
    mut stop: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Tracked {
        stream,
        activity: activity.clone(),
    });
    let service = Tracking {
        app,
        activity: activity.clone(),
    };
    let mut builder = http1::Builder::new();
    // The watchdog keeps the time; hyper's own header timeout would also cut idle
    // keep-alive connections at the header timeout.
    builder.header_read_timeout(None);
    let mut conn = builder.serve_connection(io, service);
    let mut stopping = false;
    let end = loop {
        let deadline = activity.deadline(&limits);
        tokio::select! {
            result = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => {
                if let Err(e) = result {
                    tracing::debug!("connection ended: {e}");
                }
                break End::Served;
            }
            () = activity.changed.notified() => {}
            () = sleep_until(deadline) => {
                if activity.deadline(&limits).is_some_and(|d| d <= Instant::now()) {
                    tracing::debug!(phase = activity.describe(), "closing a connection: timed out");
                    break End::Closed;
                }
            }
            _ = stop.changed(), if !stopping => {
                stopping = true;
                // Nothing asked on it yet: nothing to finish.
                if activity.quiet() {
                    break End::Closed;
                }
                // Finish the request in progress, then close (at once if idle).
                Pin::new(&mut conn).graceful_shutdown();
            }
        }
    };
    if let End::Served = end {
        let mut stream = conn.into_parts().io.into_inner().stream;
        let _ = stream.shutdown().await;
        if !stopping {
            let _ = tokio::time::timeout(LINGER, drain(&mut stream)).await;
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Where a connection is between requests, watched to time it out.
#[derive(Clone, Copy, Debug)]
enum Phase {
    /// Waiting for a request's headers: since the connection opened, or since the
    /// first byte of the next request; `bytes` says whether any came.
    Head { since: Instant, bytes: bool },
    /// This many requests are being handled (the body timeout is theirs).
    Busy(usize),
    /// Between requests, nothing received since the last answer (or its last bytes
    /// went out).
    Idle { since: Instant },
}

/// A connection's phase, updated by its IO and its service, read by its watchdog.
struct Activity {
    phase: Mutex<Phase>,
    /// Woken when the phase changes in a way that moves the deadline earlier.
    changed: Notify,
}

impl Activity {
    fn new() -> Self {
        Activity::new_at(Instant::now())
    }

    fn new_at(now: Instant) -> Self {
        Activity {
            phase: Mutex::new(Phase::Head {
                since: now,
                bytes: false,
            }),
            changed: Notify::new(),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Phase) -> T) -> T {
        f(&mut self.phase.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Bytes came in.
    fn read(&self) {
        self.read_at(Instant::now());
    }

    fn read_at(&self, now: Instant) {
        let started = self.with(|phase| match phase {
            Phase::Head { bytes, .. } => {
                *bytes = true;
                false
            }
            Phase::Idle { .. } => {
                *phase = Phase::Head {
                    since: now,
                    bytes: true,
                };
                true
            }
            Phase::Busy(_) => false,
        });
        if started {
            self.changed.notify_one();
        }
    }

    /// Bytes went out: an answer still being written is not idleness.
    fn wrote(&self) {
        self.wrote_at(Instant::now());
    }

    fn wrote_at(&self, now: Instant) {
        self.with(|phase| {
            if let Phase::Idle { since } = phase {
                *since = now;
            }
        });
    }

    /// A request's headers arrived; its handler starts.
    fn begin(&self) {
        self.with(|phase| {
            *phase = match *phase {
                Phase::Busy(n) => Phase::Busy(n + 1),
                _ => Phase::Busy(1),
            }
        });
        self.changed.notify_one();
    }

    /// A request's handler answered (or was dropped).
    fn end(&self) {
        self.end_at(Instant::now());
    }

    fn end_at(&self, now: Instant) {
        self.with(|phase| {
            *phase = match *phase {
                Phase::Busy(n) if n > 1 => Phase::Busy(n - 1),
                _ => Phase::Idle { since: now },
            }
        });
        self.changed.notify_one();
    }

    /// When the current phase runs out; `None` while a request is being handled.
    fn deadline(&self, limits: &ConnectionLimits) -> Option<Instant> {
        self.with(|phase| match *phase {
            Phase::Head { since, .. } => Some(since + limits.header_timeout),
            Phase::Busy(_) => None,
            Phase::Idle { since } => Some(since + limits.idle_timeout),
        })
    }

    /// Not a byte has come in since the connection opened.
    fn quiet(&self) -> bool {
        self.with(|phase| matches!(phase, Phase::Head { bytes: false, .. }))
    }

    fn describe(&self) -> &'static str {
        self.with(|phase| match phase {
            Phase::Head { .. } => "waiting for a request's headers",
            Phase::Busy(_) => "busy",
            Phase::Idle { .. } => "idle",
        })
    }
}

/// The app as a hyper service that marks its connection busy while it handles a
/// request.
struct Tracking {
    app: Router,
    activity: Arc<Activity>,
}

/// Marks the connection busy until dropped.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.end();
    }
}

impl hyper::service::Service<Request<Incoming>> for Tracking {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        self.activity.begin();
        let busy = Busy(self.activity.clone());
        let app = self.app.clone();
        Box::pin(async move {
            let response = app.oneshot(request).await;
            drop(busy);
            response
        })
    }
}

/// A TCP stream that reports its reads and writes to its connection's [`Activity`].
struct Tracked {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_time_out_by_their_own_limit() {
        let limits = ConnectionLimits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 4,
        };
        let opened = Instant::now();
        let at = |secs: u64| opened + Duration::from_secs(secs);
        let activity = Activity::new_at(opened);
        assert!(activity.quiet());
        assert_eq!(activity.deadline(&limits), Some(at(10)));
        // The first bytes do not restart the header clock.
        activity.read_at(at(3));
        assert!(!activity.quiet());
        assert_eq!(activity.deadline(&limits), Some(at(10)));
        activity.begin();
        assert_eq!(activity.deadline(&limits), None);
        activity.end_at(at(100));
        assert_eq!(activity.deadline(&limits), Some(at(160)));
        // Writing the answer keeps it from being idle.
        activity.wrote_at(at(105));
        assert_eq!(activity.deadline(&limits), Some(at(165)));
        // The next request's first byte starts its header clock.
        activity.read_at(at(106));
        assert_eq!(activity.deadline(&limits), Some(at(116)));
        activity.read_at(at(110));
        assert_eq!(activity.deadline(&limits), Some(at(116)));
        // Two requests at once (pipelined) are busy until both end.
        activity.begin();
        activity.begin();
        activity.end_at(at(120));
        assert_eq!(activity.deadline(&limits), None);
        activity.end_at(at(121));
        assert_eq!(activity.deadline(&limits), Some(at(181)));
    }
}

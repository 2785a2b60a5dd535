//! newt's egress proxy: an HTTP proxy on a unix socket that lets a function reach only
//! what its [`AllowList`] names.
//!
//! One proxy serves one instance (its socket lives in a directory bind-mounted into
//! that container only), so the list it enforces is the function's without any
//! per-request identification. It speaks the two forms an HTTP client sends to a
//! proxy: `CONNECT host:port` (HTTPS and any other TCP protocol; the tunnel is opaque)
//! and absolute-form plain HTTP (`GET http://host:port/path`), which it forwards as
//! origin-form with `Connection: close`, so every request is checked. A refusal is a
//! `403` whose body says why; the function's HTTP library shows it as the error.
//! Dropping the proxy closes its socket and every tunnel it opened.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{AllowList, Denied};

/// Most bytes of a request head (request line and headers) the proxy reads.
const MAX_HEAD: usize = 16 * 1024;

/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections one proxy serves at once; more wait for a place.
const MAX_CONNECTIONS: usize = 64;

/// Counters shared by every proxy of a host (for `/metrics`).
#[derive(Debug, Default)]
pub struct EgressStats {
    /// Connections made to allowed destinations.
    pub allowed: AtomicU64,
    /// Requests refused: not listed, non-public, unresolvable or malformed.
    pub denied: AtomicU64,
    /// Allowed destinations that could not be reached.
    pub failed: AtomicU64,
}

/// A running proxy; dropping it stops it, removes its socket and closes its tunnels.
#[derive(Debug)]
pub struct EgressProxy {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EgressProxy {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

impl EgressProxy {
    /// Listens on the unix socket `path` (created mode 0666 so a container's
    /// unprivileged user can connect; the directory it is in decides who sees it).
    pub fn start(
        path: &Path,
        allow: Arc<AllowList>,
        stats: Arc<EgressStats>,
    ) -> io::Result<EgressProxy> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o666))?;
        let task = tokio::spawn(accept_loop(listener, allow, stats));
        Ok(EgressProxy {
            path: path.to_path_buf(),
            task,
        })
    }

    /// The socket's path on this host.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

async fn accept_loop(listener: UnixListener, allow: Arc<AllowList>, stats: Arc<EgressStats>) {
    // Owned here: aborting this task drops the set, which aborts every connection.
    let mut connections = JoinSet::new();
    let places = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let Ok(place) = places.clone().acquire_owned().await else {
                    return;
                };
                let (allow, stats) = (allow.clone(), stats.clone());
                connections.spawn(async move {
                    let _place = place;
                    serve(stream, &allow, &stats).await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// A request head: what the client asked for, and the bytes it sent after the head.
struct Head {
    method: String,
    /// `host:port` of CONNECT, or the absolute URL of a plain HTTP request.
    target: String,
    /// `HTTP/1.0` or `HTTP/1.1`.
    version: u8,
    headers: Vec<(String, Vec<u8>)>,
    rest: Vec<u8>,
}

async fn serve(mut client: UnixStream, allow: &AllowList, stats: &EgressStats) {
    let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut client)).await {
        Ok(Ok(head)) => head,
        Ok(Err(why)) => {
            stats.denied.fetch_add(1, Ordering::Relaxed);
            let _ = refuse(&mut client, 400, &why).await;
            // Read a little of what the client is still sending, so closing does not
            // reset the connection before it reads the answer.
            let mut rest = (&mut client).take(MAX_HEAD as u64 * 4);
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                tokio::io::copy(&mut rest, &mut tokio::io::sink()),
            )
            .await;
            return;
        }
        Err(_) => return,
    };
    let (host, port, forward) = match destination(&head) {
        Ok(parts) => parts,
        Err(why) => {
            stats.denied.fetch_add(1, Ordering::Relaxed);
            let _ = refuse(&mut client, 400, &why.to_string()).await;
            return;
        }
    };
    let addrs = match allow.resolve(&host, port).await {
        Ok(addrs) => addrs,
        Err(denied) => {
            stats.denied.fetch_add(1, Ordering::Relaxed);
            tracing::info!(destination = %format!("{host}:{port}"), "egress refused: {denied}");
            let _ = refuse(&mut client, 403, &format!("newt egress: {denied}")).await;
            return;
        }
    };
    let mut upstream = match super::connect(&addrs, super::CONNECT_TIMEOUT).await {
        Ok(stream) => stream,
        Err(e) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            let _ = refuse(
                &mut client,
                502,
                &format!("newt egress: {host}:{port} could not be reached: {e}"),
            )
            .await;
            return;
        }
    };
    stats.allowed.fetch_add(1, Ordering::Relaxed);
    let sent = match forward {
        None => client
            .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            .await
            .is_ok(),
        Some(path) => {
            let head_out = origin_form(&head, &path);
            upstream.write_all(&head_out).await.is_ok()
        }
    };
    if !sent || upstream.write_all(&head.rest).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

/// Reads up to the end of the request head (bounded by [`MAX_HEAD`]) and parses it.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Head, String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading the request: {e}"))?;
        if n == 0 {
            return Err("the request ended before its head did".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let head = Head {
                    method: request.method.unwrap_or_default().to_string(),
                    target: request.path.unwrap_or_default().to_string(),
                    version: request.version.unwrap_or(1),
                    headers: request
                        .headers
                        .iter()
                        .map(|h| (h.name.to_string(), h.value.to_vec()))
                        .collect(),
                    rest: buf[len..].to_vec(),
                };
                return Ok(head);
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) => {
                return Err(format!("the request head is over {MAX_HEAD} bytes"));
            }
            Err(e) => return Err(format!("not an HTTP proxy request: {e}")),
        }
    }
}

/// The destination of a request, and for plain HTTP the origin-form path to forward.
fn destination(head: &Head) -> Result<(String, u16, Option<String>), Denied> {
    if head.method.eq_ignore_ascii_case("CONNECT") {
        let (host, port) = split_authority(&head.target, None)?;
        return Ok((host, port, None));
    }
    let Some(rest) = head.target.strip_prefix("http://") else {
        return Err(Denied::BadTarget(format!(
            "the proxy forwards `CONNECT host:port` and absolute `http://` requests; got \
             {:?} (use https through CONNECT)",
            head.target
        )));
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    if authority.contains('@') {
        return Err(Denied::BadTarget(
            "credentials in the URL are refused".into(),
        ));
    }
    let (host, port) = split_authority(authority, Some(80))?;
    Ok((host, port, Some(path)))
}

/// `host:port`, `[v6]:port`, or (with a default port) `host` / `[v6]`.
fn split_authority(authority: &str, default_port: Option<u16>) -> Result<(String, u16), Denied> {
    let bad = || Denied::BadTarget(format!("{authority:?} is not host:port"));
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(bad)?;
        let port = match after.strip_prefix(':') {
            Some(port) => port.parse().map_err(|_| bad())?,
            None if after.is_empty() => default_port.ok_or_else(bad)?,
            None => return Err(bad()),
        };
        (format!("[{host}]"), port)
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host.to_string(), port.parse().map_err(|_| bad())?),
            None => (authority.to_string(), default_port.ok_or_else(bad)?),
        }
    };
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((host, port))
}

/// The request head rewritten for the origin server: origin-form, no proxy headers,
/// and `Connection: close` so the next request comes back through the proxy.
fn origin_form(head: &Head, path: &str) -> Vec<u8> {
    let mut out = format!("{} {path} HTTP/1.{}\r\n", head.method, head.version).into_bytes();
    for (name, value) in &head.headers {
        let lower = name.to_ascii_lowercase();
        if lower.starts_with("proxy-") || lower == "connection" || lower == "keep-alive" {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out
}

async fn refuse<S: AsyncWrite + Unpin>(stream: &mut S, status: u16, why: &str) -> io::Result<()> {
    let reason = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        _ => "Bad Gateway",
    };
    let body = format!("{why}\n");
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\nX-Newt-Egress: denied\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::net::TcpListener;

    /// A loopback HTTP server on `ip` answering every request with `name` and the
    /// request line it got.
    async fn origin(ip: &str, name: &'static str) -> SocketAddr {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let head = read_head(&mut stream).await.unwrap();
                    let body = format!("{name} {} {}", head.method, head.target);
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    stream.write_all(response.as_bytes()).await.unwrap();
                });
            }
        });
        addr
    }

    async fn exchange(path: &Path, request: String) -> String {
        let mut stream = UnixStream::connect(path).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out))
            .await
            .expect("the proxy answered")
            .unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn forwards_what_is_listed_and_refuses_the_rest() {
        let allowed = origin("127.0.0.2", "allowed").await;
        let other = origin("127.0.0.3", "other").await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("egress.sock");
        let stats = Arc::new(EgressStats::default());
        let list = AllowList::parse(&[allowed.to_string()]).unwrap();
        let proxy = EgressProxy::start(&path, Arc::new(list), stats.clone()).unwrap();

        let ok = exchange(
            &path,
            format!("GET http://{allowed}/x?y=1 HTTP/1.1\r\nHost: {allowed}\r\nProxy-Connection: keep-alive\r\n\r\n"),
        )
        .await;
        assert!(ok.ends_with("allowed GET /x?y=1"), "{ok}");

        let denied = exchange(
            &path,
            format!("GET http://{other}/ HTTP/1.1\r\nHost: {other}\r\n\r\n"),
        )
        .await;
        assert!(denied.starts_with("HTTP/1.1 403"), "{denied}");
        assert!(
            denied.contains("not in this function's allow_outbound list"),
            "{denied}"
        );

        // CONNECT opens a tunnel to a listed destination only.
        let mut tunnel = UnixStream::connect(&path).await.unwrap();
        tunnel
            .write_all(
                format!("CONNECT {allowed} HTTP/1.1\r\n\r\nGET /t HTTP/1.1\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
        let mut out = Vec::new();
        tunnel.read_to_end(&mut out).await.unwrap();
        let out = String::from_utf8_lossy(&out);
        assert!(
            out.starts_with("HTTP/1.1 200 Connection Established"),
            "{out}"
        );
        assert!(out.ends_with("allowed GET /t"), "{out}");
        let refused = exchange(&path, format!("CONNECT {other} HTTP/1.1\r\n\r\n")).await;
        assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");

        // A name that resolves to this host is refused even on the right port.
        let rebound = exchange(
            &path,
            format!("CONNECT localhost:{} HTTP/1.1\r\n\r\n", allowed.port()),
        )
        .await;
        assert!(rebound.starts_with("HTTP/1.1 403"), "{rebound}");

        for junk in ["GET / HTTP/1.1\r\n\r\n", "\x16\x03\x01 tls hello\r\n\r\n"] {
            let answer = exchange(&path, junk.to_string()).await;
            assert!(answer.starts_with("HTTP/1.1 400"), "{junk:?}: {answer}");
        }
        assert_eq!(stats.allowed.load(Ordering::Relaxed), 2);
        assert_eq!(stats.denied.load(Ordering::Relaxed), 5);

        drop(proxy);
        assert!(!path.exists(), "the socket is removed with the proxy");
    }

    #[tokio::test]
    async fn a_head_past_the_limit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("egress.sock");
        let _proxy = EgressProxy::start(
            &path,
            Arc::new(AllowList::default()),
            Arc::new(EgressStats::default()),
        )
        .unwrap();
        let huge = format!(
            "GET http://a/ HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD)
        );
        let answer = exchange(&path, huge).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    }

    #[test]
    fn authorities() {
        assert_eq!(
            split_authority("a.com:443", None).unwrap(),
            ("a.com".into(), 443)
        );
        assert_eq!(
            split_authority("[::1]:80", None).unwrap(),
            ("[::1]".into(), 80)
        );
        assert_eq!(
            split_authority("[::1]", Some(80)).unwrap(),
            ("[::1]".into(), 80)
        );
        assert_eq!(
            split_authority("a.com", Some(80)).unwrap(),
            ("a.com".into(), 80)
        );
        for bad in ["a.com", "a.com:x", ":80", "a.com:0", "[::1", "[::1]x"] {
            assert!(split_authority(bad, None).is_err(), "{bad}");
        }
    }
}

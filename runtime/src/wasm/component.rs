//! wasi:http components (the `wasi:http/proxy` world, WASI preview 2) as functions.
//!
//! A component runs in the same engine, cache, pools and limits as a preview 1 module
//! (see the parent module); this file holds what differs: the store's WASI and HTTP
//! state, turning a call into a `wasi:http` incoming request and the component's
//! response back into a call outcome, and the outgoing-request hook that enforces the
//! function's `allow_outbound` list.
//!
//! Outgoing requests speak HTTP/1.1, over plain TCP for `http://` and over TLS (rustls,
//! ALPN `http/1.1`) for `https://`. The order is fixed: the allow-list check and its
//! resolution first, then a connection to an address it returned (no second DNS
//! lookup), then the TLS handshake, which verifies the certificate against the URI's
//! host. The trusted roots are Mozilla's (webpki-roots), plus the PEM certificates of
//! the file named by `NEWT_EGRESS_CA_FILE` in newt's own environment (a corporate CA, a
//! test's self-signed one), read once on the first https request.
//!
//! The same `.wasm` runs unchanged under `wasmtime serve`: newt links what it links (WASI
//! preview 2 and wasi:http), with a context that grants no files and no sockets, and
//! requires the `wasi:http/incoming-handler` export.

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::io::Read;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};
use wasmtime_wasi_http::{
    Error as HttpError, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks,
    WasiHttpView,
};

use super::GuestLimiter;
use super::pipes::CappedPipe;
use crate::egress::{AllowList, EgressStats};
use crate::executor::{CallRequest, CallResult, HttpResponse};

/// The request a plain invoke (no HTTP route) becomes.
const INVOKE_METHOD: &str = "POST";
const INVOKE_CONTENT_TYPE: &str = "application/json";

/// The environment variable (of newt's own process) naming a PEM file of root
/// certificates that components' https requests trust besides Mozilla's.
const EGRESS_CA_FILE_ENV: &str = "NEWT_EGRESS_CA_FILE";

/// Largest CA file read: a full system bundle is a few hundred KiB.
const MAX_CA_FILE_BYTES: u64 = 4 << 20;

/// The TLS client of components' https requests, made on the first one and shared by
/// every call after it (the roots do not change while newt runs). An unusable CA file
/// is kept as its error, so each https request fails with the reason in its call's
/// logs instead of newt panicking or silently trusting less than the operator asked.
static TLS: LazyLock<Result<tokio_rustls::TlsConnector, String>> = LazyLock::new(|| {
    let ca_file = std::env::var_os(EGRESS_CA_FILE_ENV).filter(|v| !v.is_empty());
    tls_config(ca_file.as_deref().map(Path::new))
        .map(|config| tokio_rustls::TlsConnector::from(Arc::new(config)))
});

/// A client configuration trusting Mozilla's roots and those of `ca_file`, on the ring
/// provider, offering HTTP/1.1 only by ALPN (the only protocol `send` speaks).
fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_file {
        let named = format!("{EGRESS_CA_FILE_ENV}={}", path.display());
        let mut pem = Vec::new();
        std::fs::File::open(path)
            .and_then(|file| file.take(MAX_CA_FILE_BYTES + 1).read_to_end(&mut pem))
            .map_err(|e| format!("{named} cannot be read: {e}"))?;
        if pem.len() as u64 > MAX_CA_FILE_BYTES {
            return Err(format!(
                "{named} is larger than {MAX_CA_FILE_BYTES} bytes: name a PEM file of CA \
                 certificates"
            ));
        }
        let mut added = 0;
        for (n, cert) in CertificateDer::pem_slice_iter(&pem).enumerate() {
            let cert =
                cert.map_err(|e| format!("{named}: certificate {} is not valid PEM: {e}", n + 1))?;
            roots.add(cert).map_err(|e| {
                format!(
                    "{named}: certificate {} is not a usable CA certificate: {e}",
                    n + 1
                )
            })?;
            added += 1;
        }
        if added == 0 {
            return Err(format!(
                "{named} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
            ));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("the TLS client cannot be configured: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The name a server's certificate must carry: the URI's host, an IP address (IPv6 in
/// brackets in a URI) or a DNS name.
fn server_name(host: &str) -> Option<ServerName<'static>> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => Some(ServerName::from(ip)),
        Err(_) => ServerName::try_from(bare.to_string()).ok(),
    }
}

/// The wasi:http error code of a failed TLS handshake: a certificate that does not
/// verify (unknown issuer, wrong name, expired), an alert from the server, or anything
/// else in the protocol.
fn tls_error(e: &std::io::Error) -> HttpError {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(_)) => HttpError::TlsCertificateError,
        Some(rustls::Error::AlertReceived(alert)) => HttpError::TlsAlertReceived {
            alert_id: Some(u8::from(*alert)),
            alert_message: Some(format!("{alert:?}")),
        },
        _ => HttpError::TlsProtocolError,
    }
}

/// The byte stream a request goes over: plain TCP or TLS over it.
trait Connection: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Connection for T {}

/// Does the TLS handshake over `stream`, verifying the certificate against `name`,
/// within `timeout`.
async fn handshake(
    stream: tokio::net::TcpStream,
    connector: &tokio_rustls::TlsConnector,
    name: ServerName<'static>,
    timeout: Duration,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, (HttpError, String)> {
    match tokio::time::timeout(timeout, connector.connect(name, stream)).await {
        Ok(Ok(tls)) => Ok(tls),
        Ok(Err(e)) => Err((tls_error(&e), format!("TLS handshake failed: {e}"))),
        Err(_) => Err((
            HttpError::ConnectionTimeout,
            format!("TLS handshake did not finish in {timeout:?}"),
        )),
    }
}

/// What a component's store holds.
pub(super) struct ComponentGuest {
    ctx: WasiCtx,
    table: ResourceTable,
    http: WasiHttpCtx,
    egress: Egress,
    pub(super) limiter: GuestLimiter,
}

impl ComponentGuest {
    pub(super) fn new(limiter: GuestLimiter, egress: Egress) -> Self {
        ComponentGuest {
            ctx: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            http: WasiHttpCtx::new(),
            egress,
            limiter,
        }
    }
}

impl WasiView for ComponentGuest {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for ComponentGuest {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.egress,
        }
    }
}

/// The outgoing-request hook: every `wasi:http/outgoing-handler.handle` of a component
/// goes through [`AllowList::resolve`] and connects only to the addresses it checked.
pub(super) struct Egress {
    allow: Arc<AllowList>,
    stats: Arc<EgressStats>,
    /// The call's stderr: a refusal is written there too, so the call's logs say why.
    log: Option<CappedPipe>,
}

impl Egress {
    pub(super) fn new(allow: Arc<AllowList>, stats: Arc<EgressStats>) -> Self {
        Egress {
            allow,
            stats,
            log: None,
        }
    }
}

type SendFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                ),
                HttpError,
            >,
        > + Send,
>;

impl WasiHttpHooks for Egress {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> SendFuture {
        let (allow, stats, log) = (self.allow.clone(), self.stats.clone(), self.log.clone());
        Box::new(async move {
            let (response, conn) = send(request, options, &allow, &stats, log.as_ref()).await?;
            Ok((
                response.map(|b| b.map_err(HttpError::from).boxed_unsync()),
                Box::new(conn) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

/// Aborts the connection's task when wasmtime drops the response's I/O future (the
/// response and its body are gone), so no connection outlives its use.
struct ConnTask(tokio::task::JoinHandle<()>);

impl Drop for ConnTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Checks the destination against the allow-list, connects to a checked address, does
/// the TLS handshake for `https` and sends the request over HTTP/1.1.
async fn send(
    mut request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
    allow: &AllowList,
    stats: &EgressStats,
    log: Option<&CappedPipe>,
) -> Result<
    (
        http::Response<hyper::body::Incoming>,
        impl Future<Output = Result<(), HttpError>> + Send + use<>,
    ),
    HttpError,
> {
    let note = |line: String| {
        if let Some(log) = log {
            let _ = log.append(format!("newt: {line}\n").as_bytes());
        }
    };
    let uri = request.uri().clone();
    let authority = uri.authority().ok_or(HttpError::HttpRequestUriInvalid)?;
    let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let addresses = match allow.resolve(authority.host(), port).await {
        Ok(addresses) => addresses,
        Err(denied) => {
            stats.denied.fetch_add(1, Ordering::Relaxed);
            note(format!("outgoing request refused: {denied}"));
            return Err(HttpError::HttpRequestDenied);
        }
    };
    let host = authority.host();
    let fail = |code: HttpError, why: String| {
        stats.failed.fetch_add(1, Ordering::Relaxed);
        note(format!("outgoing request to {host}:{port} failed: {why}"));
        code
    };
    // Everything TLS needs is settled before connecting: no connection is opened for a
    // request that cannot be verified.
    let tls = match https {
        false => None,
        true => {
            let connector = match &*TLS {
                Ok(connector) => connector,
                Err(why) => return Err(fail(HttpError::ConfigurationError, why.clone())),
            };
            let Some(name) = server_name(host) else {
                let why = format!("{host:?} is not a name a TLS certificate can carry");
                return Err(fail(HttpError::HttpRequestUriInvalid, why));
            };
            Some((connector, name))
        }
    };
    let connect_timeout = options
        .and_then(|o| o.connect_timeout)
        .unwrap_or(crate::egress::CONNECT_TIMEOUT);
    let tcp = match crate::egress::connect(&addresses, connect_timeout).await {
        Ok(stream) => stream,
        Err(e) => return Err(fail(HttpError::ConnectionRefused, e.to_string())),
    };
    let stream: Box<dyn Connection> = match tls {
        None => Box::new(tcp),
        Some((connector, name)) => match handshake(tcp, connector, name, connect_timeout).await {
            Ok(tls) => Box::new(tls),
            Err((code, why)) => return Err(fail(code, why)),
        },
    };
    // Counted once the connection is usable, so each request counts as exactly one of
    // allowed, denied or failed.
    stats.allowed.fetch_add(1, Ordering::Relaxed);
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(wasmtime_wasi_http::io::TokioIo::new(stream))
            .await
            .map_err(HttpError::from)?;
    let conn = ConnTask(tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("a component's outgoing connection ended: {e}");
        }
    }));
    // The request line carries the path only (an absolute URI is for proxies); the
    // Host header, which wasmtime-wasi-http sets, names the destination.
    *request.uri_mut() = http::Uri::builder()
        .path_and_query(uri.path_and_query().map_or("/", |p| p.as_str()))
        .build()
        .map_err(|_| HttpError::HttpRequestUriInvalid)?;
    let first_byte = options.and_then(|o| o.first_byte_timeout);
    let sent = sender.send_request(request);
    let response = match first_byte {
        Some(limit) => tokio::time::timeout(limit, sent)
            .await
            .map_err(|_| HttpError::ConnectionReadTimeout)?,
        None => sent.await,
    }
    .map_err(HttpError::from)?;
    Ok((response, async move {
        // Holding the task here keeps the connection until wasmtime drops this future.
        let _conn = conn;
        std::future::pending::<Result<(), HttpError>>().await
    }))
}

/// A call's request as a `wasi:http` incoming request: the route's method, path,
/// query and headers, or `POST /` with `content-type: application/json` for a plain
/// invoke; the body is the call's input either way.
fn incoming_request(call: &CallRequest) -> Result<http::Request<WasiBody>, String> {
    let (method, path, query, headers) = match &call.http {
        Some(h) => (
            h.method.as_str(),
            h.path.as_str(),
            h.query.as_str(),
            &h.headers[..],
        ),
        None => (INVOKE_METHOD, "/", "", &[][..]),
    };
    let host = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("host"))
        .map_or("localhost", |(_, value)| value.as_str());
    let path_and_query = if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{query}")
    };
    let uri = http::Uri::builder()
        .scheme("http")
        .authority(host)
        .path_and_query(path_and_query)
        .build()
        .or_else(|_| {
            http::Uri::builder()
                .scheme("http")
                .authority("localhost")
                .path_and_query(if path.starts_with('/') { path } else { "/" })
                .build()
        })
        .map_err(|e| format!("the request's path {path:?} is not a valid URI path: {e}"))?;
    let mut builder = http::Request::builder().method(method).uri(uri);
    match &call.http {
        Some(h) => {
            for (name, value) in &h.headers {
                builder = builder.header(name, value);
            }
        }
        None => builder = builder.header(http::header::CONTENT_TYPE, INVOKE_CONTENT_TYPE),
    }
    let body = Full::new(call.input.clone())
        .map_err(|never| match never {})
        .boxed_unsync();
    builder
        .body(body)
        .map_err(|e| format!("the request cannot be given to the component: {e}"))
}

/// What the component answered.
struct Answer {
    http: HttpResponse,
    body: Bytes,
}

/// Waits for the component to set its response and reads the body, up to `cap` bytes.
async fn collect(
    receiver: tokio::sync::oneshot::Receiver<
        Result<hyper::Response<WasiBody>, wasmtime_wasi_http::p2::bindings::http::types::ErrorCode>,
    >,
    cap: usize,
) -> Result<Answer, String> {
    let response = match receiver.await {
        Ok(Ok(response)) => response,
        Ok(Err(code)) => return Err(format!("the component answered with an error: {code:?}")),
        Err(_) => {
            return Err("the component's handler ended without setting a response \
                        (response-outparam.set was never called)"
                .into());
        }
    };
    let (parts, mut body) = response.into_parts();
    let headers = parts
        .headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_string(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("the component's response body failed: {e}"))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > cap {
                return Err(format!("output exceeds the limit of {cap} bytes"));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Answer {
        http: HttpResponse {
            status: parts.status.as_u16(),
            headers,
        },
        body: buf.freeze(),
    })
}

/// Runs one call through the component's `wasi:http/incoming-handler.handle`. The
/// caller bounds it by the call's deadline (dropping this future stops the guest).
/// Returns the result, the response body and the HTTP answer.
pub(super) async fn handle(
    store: &mut wasmtime::Store<ComponentGuest>,
    proxy: &Proxy,
    call: &CallRequest,
    ctx: WasiCtx,
    stderr: CappedPipe,
    max_output: usize,
) -> (CallResult, Bytes, Option<HttpResponse>) {
    let request = match incoming_request(call) {
        Ok(request) => request,
        Err(why) => return (CallResult::Failed(why), Bytes::new(), None),
    };
    let guest = store.data_mut();
    guest.ctx = ctx;
    guest.egress.log = Some(stderr);
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let resources = guest
        .http()
        .new_incoming_request(Scheme::Http, request)
        .and_then(|request| Ok((request, guest.http().new_response_outparam(sender)?)));
    let (request, outparam) = match resources {
        Ok(r) => r,
        Err(e) => {
            return (
                CallResult::Failed(format!(
                    "the request cannot be given to the component: {e:#}"
                )),
                Bytes::new(),
                None,
            );
        }
    };

    // The body is read while the handler runs: a component writing more than the
    // channel holds waits for the host to read.
    let answer = collect(receiver, max_output);
    tokio::pin!(answer);
    let mut answered: Option<Result<Answer, String>> = None;
    let called = {
        let call = proxy
            .wasi_http_incoming_handler()
            .call_handle(&mut *store, request, outparam);
        tokio::pin!(call);
        loop {
            tokio::select! {
                done = &mut call => break Some(done),
                got = &mut answer, if answered.is_none() => {
                    let failed = got.is_err();
                    answered = Some(got);
                    // An answer over the limit ends the call now: the guest would
                    // otherwise wait on a body nobody reads until the deadline.
                    if failed {
                        break None;
                    }
                }
            }
        }
    };
    if let Some(Err(e)) = called {
        let message = match (
            &store.data().limiter.denied,
            e.downcast_ref::<wasmtime::Trap>(),
        ) {
            (Some(_), _) => format!(
                "memory limit of {} MiB exceeded",
                store.data().limiter.max_memory >> 20
            ),
            (None, Some(trap)) => format!("trap: {trap}"),
            (None, None) => format!("{e:#}"),
        };
        let tail = store.data().egress.log.as_ref().map(CappedPipe::tail);
        let detail = tail.map(|t| super::panic_lines(&t)).unwrap_or_default();
        return (
            CallResult::Failed(format!("{message}{detail}")),
            Bytes::new(),
            None,
        );
    }
    let answered = match answered {
        Some(done) => done,
        None => {
            // The handler returned; whatever it left in the table (an outparam never
            // set, a body never finished) is dropped now, so the answer completes
            // instead of waiting for the deadline.
            store.data_mut().table = ResourceTable::new();
            answer.await
        }
    };
    match answered {
        Ok(Answer { http, body }) => (CallResult::Done, body, Some(http)),
        Err(why) => (CallResult::Failed(why), Bytes::new(), None),
    }
}

/// Checks that a component targets the `wasi:http/proxy` world, given what the linker
/// made of it.
pub(super) fn proxy_pre(
    pre: wasmtime::Result<wasmtime::component::InstancePre<ComponentGuest>>,
) -> Result<ProxyPre<ComponentGuest>, String> {
    let pre = pre.map_err(|e| {
        format!(
            "the component needs imports newt does not provide (components must target the \
             wasi:http/proxy world, as for `wasmtime serve`): {e:#}"
        )
    })?;
    ProxyPre::new(pre).map_err(|e| {
        format!(
            "the component does not export wasi:http/incoming-handler: newt runs components \
             of the wasi:http/proxy world (as built for `wasmtime serve` or Spin): {e:#}"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_ca_file_the_client_trusts_mozillas_roots_and_offers_http1_only() {
        let config = tls_config(None).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn an_unusable_ca_file_is_an_error_naming_the_variable_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = tls_config(Some(&missing)).unwrap_err();
        assert!(
            err.starts_with(&format!(
                "NEWT_EGRESS_CA_FILE={} cannot be read",
                missing.display()
            )),
            "{err}"
        );

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificate here\n").unwrap();
        let err = tls_config(Some(&empty)).unwrap_err();
        assert!(err.contains("holds no PEM certificate"), "{err}");

        // Well-formed PEM around bytes that are no certificate.
        let junk = dir.path().join("junk.pem");
        std::fs::write(
            &junk,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = tls_config(Some(&junk)).unwrap_err();
        assert!(
            err.contains("certificate 1 is not a usable CA certificate"),
            "{err}"
        );

        let huge = dir.path().join("huge.pem");
        std::fs::write(&huge, vec![b'A'; MAX_CA_FILE_BYTES as usize + 1]).unwrap();
        let err = tls_config(Some(&huge)).unwrap_err();
        assert!(err.contains("is larger than"), "{err}");
    }

    #[test]
    fn the_server_name_is_the_uri_host() {
        assert_eq!(
            server_name("example.com"),
            Some(ServerName::try_from("example.com").unwrap())
        );
        assert_eq!(
            server_name("127.0.0.2"),
            Some(ServerName::from(std::net::Ipv4Addr::new(127, 0, 0, 2)))
        );
        assert_eq!(
            server_name("[::1]"),
            Some(ServerName::from(std::net::Ipv6Addr::LOCALHOST))
        );
        assert_eq!(server_name("bad name"), None);
    }

    #[test]
    fn handshake_failures_map_to_the_wasi_tls_error_codes() {
        let io = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let unknown = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        assert!(matches!(
            tls_error(&io(unknown)),
            HttpError::TlsCertificateError
        ));
        let alert = rustls::Error::AlertReceived(rustls::AlertDescription::HandshakeFailure);
        assert!(matches!(
            tls_error(&io(alert)),
            HttpError::TlsAlertReceived {
                alert_id: Some(40),
                ..
            }
        ));
        let eof = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed");
        assert!(matches!(tls_error(&eof), HttpError::TlsProtocolError));
    }
}

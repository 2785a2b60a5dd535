//! Guards in front of the handlers: who may ask (the `Host` and `Origin` checks that
//! stop DNS rebinding and cross-site requests from a browser), and how large a request
//! body may be and how long it may take to arrive.
//!
//! The connection-level limits (header and idle timeouts, the connection cap) are in
//! [`super::listen`].

use axum::body::{Body, HttpBody};
use axum::extract::{Request, State};
use axum::http::header::{CONTENT_LENGTH, HOST, ORIGIN};
use axum::http::{HeaderMap, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::error::ApiError;

/// How long a request's whole body may take to arrive after its headers.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest JSON body (a runtime, a policy patch).
pub const MAX_JSON_BODY_BYTES: usize = 1 << 20;

/// Request-level settings of the HTTP API.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    /// How long a request's whole body may take to arrive (408 after).
    pub body_timeout: Duration,
    /// The `Host` names requests may carry.
    pub hosts: AllowedHosts,
    /// Origins besides the server's own allowed to send requests from a browser,
    /// as `scheme://host[:port]` (lowercase, no trailing slash); `*` allows any.
    pub origins: Vec<String>,
}

impl Default for HttpOptions {
    /// For an app served in-process: any host (there is no listen address to match),
    /// no foreign origin.
    fn default() -> Self {
        HttpOptions {
            body_timeout: DEFAULT_BODY_TIMEOUT,
            hosts: AllowedHosts::default(),
            origins: Vec::new(),
        }
    }
}

/// The `Host` names a server answers to.
#[derive(Clone, Debug, Default)]
pub struct AllowedHosts {
    /// The address the server listens on: requests may name it (any IP when it is
    /// unspecified, `0.0.0.0` or `::`) or `localhost`. `None`: any host at all.
    pub listen: Option<IpAddr>,
    /// Further names (`--allow-host`), lowercase; `*` allows any.
    pub names: Vec<String>,
}

impl AllowedHosts {
    /// Whether a request naming `host` (a `Host` header's value, port included) is
    /// for this server.
    pub fn allows(&self, host: &str) -> bool {
        let Some(listen) = self.listen else {
            return true;
        };
        let Some(name) = host_name(host) else {
            return false;
        };
        if name == "localhost" || self.names.iter().any(|n| n == "*" || *n == name) {
            return true;
        }
        match name.parse::<IpAddr>() {
            // A DNS rebinding attack needs a name: an address is never one.
            Ok(ip) => listen.is_unspecified() || ip == listen,
            Err(_) => false,
        }
    }

    fn describe(&self) -> String {
        let mut names = vec!["localhost".to_string()];
        if let Some(listen) = self.listen {
            names.push(if listen.is_unspecified() {
                "any IP address".to_string()
            } else {
                listen.to_string()
            });
        }
        names.extend(self.names.iter().cloned());
        names.join(", ")
    }
}

/// The lowercase host name of a `Host` value: without the port, the brackets of an
/// IPv6 address, or a trailing dot.
fn host_name(host: &str) -> Option<String> {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split_once(']')?.0
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        }
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    (!name.is_empty()).then(|| name.to_ascii_lowercase())
}

/// `scheme://authority` with the scheme's default port left out, lowercase.
fn normal_origin(scheme: &str, authority: &str) -> String {
    let scheme = scheme.to_ascii_lowercase();
    let authority = authority.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => Some(":80"),
        "https" => Some(":443"),
        _ => None,
    };
    let authority = match default_port {
        Some(port) => authority
            .strip_suffix(port)
            .map(str::to_string)
            .unwrap_or(authority),
        None => authority,
    };
    format!("{scheme}://{authority}")
}

impl HttpOptions {
    /// Refuses a request for another host (421) or from a foreign browser origin (403).
    pub fn check(&self, headers: &HeaderMap, uri: &Uri) -> Result<(), ApiError> {
        let host = match headers.get(HOST) {
            Some(value) => Some(value.to_str().map_err(|_| {
                ApiError::BadRequest("the Host header is not readable text".into())
            })?),
            None => None,
        };
        // A request without a Host (HTTP/1.0, or in-process) names no other host.
        for host in uri.authority().map(|a| a.as_str()).into_iter().chain(host) {
            if !self.hosts.allows(host) {
                return Err(ApiError::Misdirected(format!(
                    "this server does not answer to the host `{host}`: it answers to {}. \
                     Name it with `newt serve --allow-host NAME` to allow it",
                    self.hosts.describe()
                )));
            }
        }
        let Some(origin) = headers.get(ORIGIN) else {
            // Not a browser's cross-origin request (curl, the CLI, a server).
            return Ok(());
        };
        let origin = origin.to_str().unwrap_or("").trim().trim_end_matches('/');
        if self.origin_allowed(origin, host) {
            return Ok(());
        }
        Err(ApiError::Forbidden(format!(
            "cross-origin requests are refused: the Origin `{origin}` is not this \
             server's own. Allow it with `newt serve --allow-origin ORIGIN`"
        )))
    }

    fn origin_allowed(&self, origin: &str, host: Option<&str>) -> bool {
        // `null` (a sandboxed page, a file) has a scheme of none: never ours.
        let Some((scheme, authority)) = origin.split_once("://") else {
            return false;
        };
        let origin = normal_origin(scheme, authority);
        if self
            .origins
            .iter()
            .any(|allowed| allowed == "*" || *allowed == origin)
        {
            return true;
        }
        // The server's own origin: a page it served itself (behind a TLS proxy too).
        host.is_some_and(|host| {
            ["http", "https"]
                .iter()
                .any(|scheme| normal_origin(scheme, host) == origin)
        })
    }
}

/// Normalizes an `--allow-origin` value the way requests' origins are compared.
pub fn parse_origin(text: &str) -> Result<String, String> {
    let text = text.trim().trim_end_matches('/');
    if text == "*" {
        return Ok(text.to_string());
    }
    match text.split_once("://") {
        Some((scheme, authority))
            if !scheme.is_empty() && !authority.is_empty() && !authority.contains('/') =>
        {
            Ok(normal_origin(scheme, authority))
        }
        _ => Err(format!(
            "{text:?} is not an origin: give scheme://host[:port], e.g. https://app.example"
        )),
    }
}

/// Normalizes an `--allow-host` value.
pub fn parse_host(text: &str) -> Result<String, String> {
    if text.trim() == "*" {
        return Ok("*".to_string());
    }
    match host_name(text) {
        Some(name) if !name.contains(['/', ' ', '@']) => Ok(name),
        _ => Err(format!("{text:?} is not a host name")),
    }
}

/// Middleware: [`HttpOptions::check`] before anything else.
pub async fn check_request(
    State(options): State<Arc<HttpOptions>>,
    request: Request,
    next: Next,
) -> Response {
    if let Err(e) = options.check(request.headers(), request.uri()) {
        return e.into_response();
    }
    next.run(request).await
}

/// The body limit of one route: its size and the time it may take.
#[derive(Clone, Debug)]
pub struct BodyLimit {
    /// Largest body, in bytes.
    pub max: usize,
    /// How long the whole body may take to arrive.
    pub timeout: Duration,
    /// What the body is, for messages ("bundle", "input").
    pub what: &'static str,
}

/// Middleware: reads the body whole, within the route's size and time limits, before
/// the handler runs. A declared `Content-Length` over the limit is refused at once,
/// before a byte of the body is read; a body that does not arrive in time gets 408.
pub async fn limit_body(
    State(limit): State<BodyLimit>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let too_large = || {
        ApiError::TooLarge(format!(
            "the {} is larger than the limit of {} bytes",
            limit.what, limit.max
        ))
    };
    // What the client declares (hyper has checked Content-Length is one number).
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0)
        .max(body.size_hint().lower());
    if declared > limit.max as u64 {
        return Err(too_large());
    }
    let read = read_whole(body, limit.max, declared as usize);
    let bytes = match tokio::time::timeout(limit.timeout, read).await {
        Err(_) => {
            return Err(ApiError::RequestTimeout(format!(
                "the request's body did not arrive within {}",
                newt_runtime::format_duration(limit.timeout)
            )));
        }
        Ok(Err(ReadError::TooLarge)) => return Err(too_large()),
        Ok(Err(ReadError::Broken(e))) => {
            return Err(ApiError::BadRequest(format!(
                "could not read the request body: {e}"
            )));
        }
        Ok(Ok(bytes)) => bytes,
    };
    Ok(next
        .run(Request::from_parts(parts, Body::from(bytes.freeze())))
        .await)
}

enum ReadError {
    TooLarge,
    Broken(axum::Error),
}

async fn read_whole(mut body: Body, max: usize, expected: usize) -> Result<BytesMut, ReadError> {
    let mut bytes = BytesMut::with_capacity(expected.min(max));
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame.map_err(ReadError::Broken)?;
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > max {
                return Err(ReadError::TooLarge);
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn options(listen: &str, names: &[&str], origins: &[&str]) -> HttpOptions {
        HttpOptions {
            body_timeout: DEFAULT_BODY_TIMEOUT,
            hosts: AllowedHosts {
                listen: Some(listen.parse().unwrap()),
                names: names.iter().map(|n| parse_host(n).unwrap()).collect(),
            },
            origins: origins.iter().map(|o| parse_origin(o).unwrap()).collect(),
        }
    }

    fn check(options: &HttpOptions, host: Option<&str>, origin: Option<&str>) -> Option<u16> {
        let mut headers = HeaderMap::new();
        if let Some(host) = host {
            headers.insert(HOST, HeaderValue::from_str(host).unwrap());
        }
        if let Some(origin) = origin {
            headers.insert(ORIGIN, HeaderValue::from_str(origin).unwrap());
        }
        options
            .check(&headers, &Uri::from_static("/v1/functions"))
            .err()
            .map(|e| e.status_and_code().0.as_u16())
    }

    #[test]
    fn hosts_are_the_listen_address_localhost_and_allowed_names() {
        let loopback = options("127.0.0.1", &["Newt.Example."], &[]);
        for good in [
            "127.0.0.1:7878",
            "127.0.0.1",
            "localhost:7878",
            "LOCALHOST",
            "newt.example:8080",
            "newt.example",
        ] {
            assert_eq!(check(&loopback, Some(good), None), None, "{good}");
        }
        assert_eq!(check(&loopback, None, None), None);
        for bad in [
            "evil.example:7878",
            "127.0.0.1.evil.example",
            "localhost.evil.example",
            "10.0.0.1:7878",
            "[::1]:7878",
            "",
        ] {
            assert_eq!(check(&loopback, Some(bad), None), Some(421), "{bad}");
        }
        let any_ip = options("0.0.0.0", &[], &[]);
        assert_eq!(check(&any_ip, Some("10.1.2.3:7878"), None), None);
        assert_eq!(check(&any_ip, Some("[fe80::1]:7878"), None), None);
        assert_eq!(check(&any_ip, Some("rebind.example:7878"), None), Some(421));
        let wildcard = options("127.0.0.1", &["*"], &[]);
        assert_eq!(check(&wildcard, Some("anything.example"), None), None);
        assert_eq!(
            check(&HttpOptions::default(), Some("anything.example"), None),
            None
        );
    }

    #[test]
    fn origins_are_the_servers_own_or_allowed_ones() {
        let o = options("127.0.0.1", &[], &["https://App.Example/"]);
        let host = Some("127.0.0.1:7878");
        assert_eq!(check(&o, host, None), None);
        assert_eq!(check(&o, host, Some("http://127.0.0.1:7878")), None);
        assert_eq!(check(&o, host, Some("https://app.example")), None);
        assert_eq!(check(&o, host, Some("https://app.example:443")), None);
        for foreign in [
            "https://evil.example",
            "http://127.0.0.1:9999",
            "http://localhost:7878",
            "null",
            "",
        ] {
            assert_eq!(check(&o, host, Some(foreign)), Some(403), "{foreign}");
        }
        assert_eq!(check(&o, None, Some("http://127.0.0.1:7878")), Some(403));
        let any = options("127.0.0.1", &[], &["*"]);
        assert_eq!(check(&any, host, Some("https://evil.example")), None);
        let port_80 = options("127.0.0.1", &[], &[]);
        assert_eq!(
            check(&port_80, Some("localhost:80"), Some("http://localhost")),
            None
        );
    }

    #[test]
    fn flag_values_are_checked() {
        assert_eq!(parse_host("Newt.Example.").unwrap(), "newt.example");
        assert_eq!(parse_host("[::1]:80").unwrap(), "::1");
        assert!(parse_host("").is_err());
        assert!(parse_host("a/b").is_err());
        assert_eq!(
            parse_origin("HTTPS://App.Example:443/").unwrap(),
            "https://app.example"
        );
        assert!(parse_origin("app.example").is_err());
        assert!(parse_origin("https://app.example/path").is_err());
    }

    #[tokio::test]
    async fn bodies_over_the_limit_or_too_slow_are_refused() {
        use axum::Router;
        use axum::routing::post;
        use tower::ServiceExt;
        let app = |timeout: Duration| {
            Router::new().route(
                "/",
                post(|body: bytes::Bytes| async move { body.len().to_string() }).layer(
                    axum::middleware::from_fn_with_state(
                        BodyLimit {
                            max: 10,
                            timeout,
                            what: "input",
                        },
                        limit_body,
                    ),
                ),
            )
        };
        let send = |body: Body, length: Option<&str>, timeout: Duration| {
            let mut request = Request::post("/");
            if let Some(length) = length {
                request = request.header("content-length", length);
            }
            app(timeout).oneshot(request.body(body).unwrap())
        };
        let second = Duration::from_secs(1);
        let ok = send(Body::from("0123456789"), None, second).await.unwrap();
        assert_eq!(ok.status(), 200);
        let big = send(Body::from("0123456789x"), None, second).await.unwrap();
        assert_eq!(big.status(), 413);
        // A body that never comes: refused on its declared length alone...
        let lying = send(Body::new(Never), Some("1000000000000"), second);
        let lying = tokio::time::timeout(Duration::from_millis(500), lying)
            .await
            .expect("refused at once")
            .unwrap();
        assert_eq!(lying.status(), 413);
        // ...or, within the limit, when its time is up.
        let stalled = send(Body::new(Never), Some("5"), Duration::from_millis(100))
            .await
            .unwrap();
        assert_eq!(stalled.status(), 408);
    }

    /// A body whose bytes never come.
    struct Never;

    impl HttpBody for Never {
        type Data = bytes::Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>>
        {
            std::task::Poll::Pending
        }
    }
}

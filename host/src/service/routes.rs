//! HTTP routes: which function serves a request that is not for the API, and the
//! envelope that carries an HTTP request into a function and its answer back out.
//!
//! Every function is reachable at `/fn/{name}[/...]`; `newt route add PATH FUNCTION`
//! adds a path prefix served by a function, optionally for some methods only. The
//! longest matching prefix (on whole segments) wins. Routes never cover the API's own
//! paths ([`RESERVED`]), so a route cannot take `/v1/...` away from the admin.
//!
//! A function that is not a wasi:http component gets the request as a JSON envelope
//! on its input (see [`request_envelope`]); its output is read back with
//! [`decode_output`]: an object with `statusCode` is an HTTP answer, anything else is
//! a 200 body, so plain handlers work on a route unchanged.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use newt_runtime::{CallOutcome, HttpRequest};
use serde_json::{Map, Value, json};
use std::sync::{Arc, PoisonError, RwLock};

use super::{Invoked, Service, ServiceResult, now_ms};
use crate::api::error::ApiError;
use crate::store::StoredRoute;

/// Paths the host serves itself: a route may not be one of them or lie under one.
pub const RESERVED: &[&str] = &[
    "/v1",
    "/fn",
    "/healthz",
    "/metrics",
    // The seed platform's routes.
    "/registerRuntime",
    "/registerFunction",
    "/invokeFunction",
    "/runtimes",
    "/functions",
    "/calls",
    "/call",
];

/// The longest route path accepted, in bytes.
const MAX_ROUTE_PATH: usize = 1024;

/// Whether `path` is one of [`RESERVED`] or lies under one (on whole segments).
pub fn is_reserved(path: &str) -> bool {
    RESERVED.iter().any(|r| under(path, r))
}

/// Whether `path` is `prefix` or below it, on whole segments (`/api` covers `/api`
/// and `/api/x`, not `/apix`; `/` covers everything).
fn under(path: &str, prefix: &str) -> bool {
    if prefix == "/" {
        return path.starts_with('/');
    }
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// A route path as given by a user, checked and normalised: it starts with `/`, has
/// no trailing `/` (except `/` itself), no empty, `.` or `..` segment, only
/// characters that need no percent-encoding, and is not a path the host serves.
pub fn normalize_path(path: &str) -> ServiceResult<String> {
    let bad = |why: &str| ApiError::BadRequest(format!("invalid route path {path:?}: {why}"));
    if !path.starts_with('/') {
        return Err(bad("it must start with `/`"));
    }
    if path.len() > MAX_ROUTE_PATH {
        return Err(bad(&format!("it is longer than {MAX_ROUTE_PATH} bytes")));
    }
    let trimmed = match path.trim_end_matches('/') {
        "" => "/",
        trimmed => trimmed,
    };
    if let Some(c) = trimmed
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "/-._~!$&'()*+,;=:@".contains(*c)))
    {
        return Err(bad(&format!(
            "{c:?} is not allowed: use letters, digits and -._~!$&'()*+,;=:@"
        )));
    }
    if trimmed != "/"
        && trimmed[1..]
            .split('/')
            .any(|segment| segment.is_empty() || segment == "." || segment == "..")
    {
        return Err(bad("it has an empty, `.` or `..` segment"));
    }
    if is_reserved(trimmed) {
        return Err(bad(&format!(
            "newt serves it itself (routes may not cover {}); every function is already at \
             /fn/NAME",
            RESERVED.join(", ")
        )));
    }
    Ok(trimmed.to_string())
}

/// Methods as given by a user: HTTP tokens, upper-cased, sorted, without repeats.
pub fn normalize_methods(methods: &[String]) -> ServiceResult<Vec<String>> {
    let mut out = Vec::new();
    for method in methods {
        let method = method.trim().to_ascii_uppercase();
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-') {
            return Err(ApiError::BadRequest(format!(
                "invalid method {method:?}: give a name such as GET or POST"
            )));
        }
        out.push(method);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The routes in force, in memory (loaded at start, changed through the service).
#[derive(Debug, Default)]
pub struct RouteTable {
    /// Longest path first, so the first match is the longest prefix.
    routes: RwLock<Arc<Vec<StoredRoute>>>,
    /// Serialises changes, so the store and memory change in the same order.
    changes: tokio::sync::Mutex<()>,
}

/// A request's route: what serves it, and the path the function sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routed {
    /// The route that matched.
    pub route: StoredRoute,
    /// The request's path after the route's prefix, starting with `/`.
    pub rest: String,
}

impl RouteTable {
    /// A table holding `routes`.
    pub fn new(routes: Vec<StoredRoute>) -> RouteTable {
        let table = RouteTable::default();
        table.replace(routes);
        table
    }

    fn replace(&self, mut routes: Vec<StoredRoute>) {
        routes.sort_by(|a, b| b.path.len().cmp(&a.path.len()).then(a.path.cmp(&b.path)));
        *self.routes.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(routes);
    }

    fn snapshot(&self) -> Arc<Vec<StoredRoute>> {
        self.routes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The route serving `path` (a request's raw path): the longest matching prefix.
    /// Paths the host serves itself have none.
    pub fn lookup(&self, path: &str) -> Option<Routed> {
        if is_reserved(path) {
            return None;
        }
        let routes = self.snapshot();
        let route = routes.iter().find(|r| under(path, &r.path))?;
        let rest = if route.path == "/" {
            path
        } else {
            &path[route.path.len()..]
        };
        Some(Routed {
            rest: if rest.is_empty() { "/" } else { rest }.to_string(),
            route: route.clone(),
        })
    }

    /// Every route, by path.
    pub fn list(&self) -> Vec<StoredRoute> {
        let mut all = self.snapshot().to_vec();
        all.sort_by(|a, b| a.path.cmp(&b.path));
        all
    }
}

/// A call that came in on a route, and how to read its answer.
#[derive(Debug)]
pub struct RouteCall {
    /// The call and its outcome.
    pub invoked: Invoked,
    /// Whether the function got the request as an envelope (its output is then read
    /// with [`decode_output`]).
    pub enveloped: bool,
}

impl Service {
    /// Adds (or replaces) the route at `path`, served by function `function` for
    /// `methods` (empty: any). Returns the route as stored and whether it is new.
    pub async fn add_route(
        &self,
        path: &str,
        function: &str,
        methods: &[String],
    ) -> ServiceResult<(StoredRoute, bool)> {
        let path = normalize_path(path)?;
        let methods = normalize_methods(methods)?;
        // A typo in the name is caught now, not at the first request.
        self.newest(function)?;
        let route = StoredRoute {
            path,
            function: function.to_string(),
            methods,
            created_at: now_ms(),
        };
        let _change = self.routes.changes.lock().await;
        let created = self.store.put_route(&route).await?;
        let mut all: Vec<StoredRoute> = self
            .routes
            .list()
            .into_iter()
            .filter(|r| r.path != route.path)
            .collect();
        all.push(route.clone());
        self.routes.replace(all);
        tracing::info!(path = %route.path, function = %route.function, methods = ?route.methods, "route added");
        Ok((route, created))
    }

    /// Removes the route at `path` (normalised as [`Service::add_route`] does).
    pub async fn remove_route(&self, path: &str) -> ServiceResult<()> {
        let trimmed = match path.trim_end_matches('/') {
            "" => "/",
            trimmed => trimmed,
        };
        let _change = self.routes.changes.lock().await;
        if !self.store.delete_route(trimmed).await? {
            return Err(ApiError::NotFound(format!("no route at {trimmed}")));
        }
        let rest = self
            .routes
            .list()
            .into_iter()
            .filter(|r| r.path != trimmed)
            .collect();
        self.routes.replace(rest);
        tracing::info!(path = %trimmed, "route removed");
        Ok(())
    }

    /// Runs a sync call of `name` for an HTTP request whose body is `body`, and
    /// records it like any other call. The function gets the envelope unless it
    /// takes HTTP itself.
    pub async fn invoke_http(
        self: &Arc<Self>,
        name: &str,
        request: HttpRequest,
        body: Bytes,
        caller: Option<String>,
    ) -> ServiceResult<RouteCall> {
        let spec = self.serving(name)?;
        let enveloped = !self.invoker.takes_http(&spec);
        let input = if enveloped {
            request_envelope(&request, &body)
        } else {
            body
        };
        let record = self.new_call(&spec, input, false, caller);
        let (call_id, num) = (record.id.clone(), record.num);
        let outcome = self.run_call(record, &spec, Some(Arc::new(request))).await;
        Ok(RouteCall {
            invoked: Invoked {
                call_id,
                num,
                function: spec.name.clone(),
                outcome,
            },
            enveloped,
        })
    }
}

/// The JSON a function gets for an HTTP request: `method`, `path` (after the route's
/// prefix), `query` (raw, without `?`), `headers` (lower-case names; repeated headers
/// joined with `, `) and the body as `body` (UTF-8 text) or, when it is not UTF-8,
/// `body_base64`.
pub fn request_envelope(request: &HttpRequest, body: &[u8]) -> Bytes {
    let mut headers = Map::new();
    for (name, value) in &request.headers {
        match headers.get_mut(name) {
            Some(Value::String(joined)) => {
                joined.push_str(", ");
                joined.push_str(value);
            }
            _ => {
                headers.insert(name.clone(), Value::String(value.clone()));
            }
        }
    }
    let mut envelope = json!({
        "method": request.method,
        "path": request.path,
        "query": request.query,
        "headers": headers,
    });
    let object = envelope.as_object_mut().expect("an object");
    match std::str::from_utf8(body) {
        Ok(text) => object.insert("body".into(), json!(text)),
        Err(_) => object.insert("body_base64".into(), json!(BASE64.encode(body))),
    };
    Bytes::from(serde_json::to_vec(&envelope).expect("JSON values serialize"))
}

/// The HTTP answer to a route's call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpAnswer {
    /// The status code.
    pub status: u16,
    /// Header names and values as the function gave them, in order; a
    /// `content-type` is always among them when there is a body.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
}

/// The answer of a call that succeeded: the component's own when it gave one,
/// otherwise the decoded envelope (for an enveloped call) or the output as a 200 body.
/// `Err` says why the function's answer is not a valid HTTP response.
pub fn answer_of(outcome: &CallOutcome, enveloped: bool) -> Result<HttpAnswer, String> {
    if let Some(http) = &outcome.http {
        return Ok(HttpAnswer {
            status: http.status,
            headers: http.headers.clone(),
            body: outcome.output.clone(),
        });
    }
    if enveloped {
        decode_output(&outcome.output)
    } else {
        Ok(plain(outcome.output.clone()))
    }
}

/// A function's output read as an HTTP answer: a JSON object with `statusCode` is
/// one (`headers`: an object of strings, numbers or lists of them; `cookies`: a list
/// of `set-cookie` values; `body`: a string, base64 when `isBase64Encoded` is true,
/// or any other JSON value, sent as JSON); any other output is a 200 body.
pub fn decode_output(output: &Bytes) -> Result<HttpAnswer, String> {
    let Ok(Value::Object(mut object)) = serde_json::from_slice::<Value>(output) else {
        return Ok(plain(output.clone()));
    };
    let Some(status) = object.remove("statusCode") else {
        return Ok(plain(output.clone()));
    };
    let status = status
        .as_u64()
        .filter(|s| (100..=599).contains(s))
        .ok_or_else(|| format!("statusCode must be a number from 100 to 599, got {status}"))?
        as u16;
    let mut headers = Vec::new();
    match object.remove("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (name, value) in map {
                let values = match value {
                    Value::Array(items) => items,
                    single => vec![single],
                };
                for value in values {
                    headers.push((name.to_ascii_lowercase(), header_text(&name, value)?));
                }
            }
        }
        Some(other) => return Err(format!("headers must be an object, got {other}")),
    }
    match object.remove("cookies") {
        None | Some(Value::Null) => {}
        Some(Value::Array(cookies)) => {
            for cookie in cookies {
                headers.push(("set-cookie".into(), header_text("cookies", cookie)?));
            }
        }
        Some(other) => return Err(format!("cookies must be a list of strings, got {other}")),
    }
    let base64 = match object.remove("isBase64Encoded") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => b,
        Some(other) => {
            return Err(format!(
                "isBase64Encoded must be true or false, got {other}"
            ));
        }
    };
    let body = match object.remove("body") {
        None | Some(Value::Null) => Bytes::new(),
        Some(Value::String(text)) if base64 => Bytes::from(
            BASE64
                .decode(text.trim())
                .map_err(|e| format!("isBase64Encoded is true but body is not base64: {e}"))?,
        ),
        Some(Value::String(text)) => Bytes::from(text),
        // A handler returning a dict or list as its body means JSON.
        Some(value) => {
            if !has_header(&headers, "content-type") {
                headers.push(("content-type".into(), "application/json".into()));
            }
            Bytes::from(value.to_string())
        }
    };
    if !body.is_empty() && !has_header(&headers, "content-type") {
        headers.push(("content-type".into(), guess_content_type(&body).into()));
    }
    Ok(HttpAnswer {
        status,
        headers,
        body,
    })
}

/// The content type `invoke` gives a function's output: JSON when it parses as JSON,
/// bytes otherwise.
pub fn output_content_type(output: &[u8]) -> &'static str {
    if serde_json::from_slice::<serde::de::IgnoredAny>(output).is_ok() {
        "application/json"
    } else {
        "application/octet-stream"
    }
}

/// Output that is not an envelope: a 200 body, typed as `invoke` types it.
fn plain(output: Bytes) -> HttpAnswer {
    HttpAnswer {
        status: 200,
        headers: vec![("content-type".into(), output_content_type(&output).into())],
        body: output,
    }
}

fn has_header(headers: &[(String, String)], name: &str) -> bool {
    headers.iter().any(|(n, _)| n == name)
}

/// A body's type when the function named none.
fn guess_content_type(body: &[u8]) -> &'static str {
    if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() {
        "application/json"
    } else if std::str::from_utf8(body).is_ok() {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    }
}

fn header_text(name: &str, value: Value) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(format!(
            "the header {name:?} must be a string, a number or a list of them, got {other}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(path: &str, function: &str) -> StoredRoute {
        StoredRoute {
            path: path.into(),
            function: function.into(),
            methods: Vec::new(),
            created_at: 0,
        }
    }

    #[test]
    fn paths_are_normalised_and_reserved_ones_refused() {
        assert_eq!(normalize_path("/api/dice/").unwrap(), "/api/dice");
        assert_eq!(normalize_path("/").unwrap(), "/");
        assert_eq!(normalize_path("//").unwrap(), "/");
        assert_eq!(normalize_path("/v1x").unwrap(), "/v1x");
        for bad in [
            "api",
            "/a//b",
            "/a/../b",
            "/a/./b",
            "/a b",
            "/a?x=1",
            "/a%2f",
            "/v1",
            "/v1/functions",
            "/fn/dice",
            "/healthz",
            "/metrics/",
            "/invokeFunction",
            "/call/1",
        ] {
            let error = normalize_path(bad).unwrap_err();
            assert_eq!(error.status_and_code().0, 400, "{bad}");
        }
        assert_eq!(
            normalize_methods(&["post".into(), "GET".into(), "get".into()]).unwrap(),
            ["GET", "POST"]
        );
        assert!(normalize_methods(&["GET /".into()]).is_err());
        assert!(normalize_methods(&[String::new()]).is_err());
    }

    #[test]
    fn the_longest_prefix_on_whole_segments_wins() {
        let table = RouteTable::new(vec![
            route("/api", "api"),
            route("/api/dice", "dice"),
            route("/", "site"),
        ]);
        let hit = |path: &str| {
            table
                .lookup(path)
                .map(|r| (r.route.function.clone(), r.rest.clone()))
        };
        assert_eq!(hit("/api/dice"), Some(("dice".into(), "/".into())));
        assert_eq!(hit("/api/dice/6"), Some(("dice".into(), "/6".into())));
        assert_eq!(hit("/api/dicey"), Some(("api".into(), "/dicey".into())));
        assert_eq!(hit("/api"), Some(("api".into(), "/".into())));
        assert_eq!(hit("/apix"), Some(("site".into(), "/apix".into())));
        assert_eq!(hit("/"), Some(("site".into(), "/".into())));
        // The host's own paths are never routed, even under `/`.
        assert_eq!(hit("/v1/nope"), None);
        assert_eq!(hit("/fn/x"), None);
        let table = RouteTable::new(vec![route("/api", "api")]);
        assert_eq!(table.lookup("/other"), None);
    }

    #[test]
    fn the_envelope_carries_text_or_base64_bodies() {
        let request = HttpRequest {
            method: "POST".into(),
            path: "/a/b".into(),
            query: "x=1&y=2".into(),
            headers: vec![
                ("accept".into(), "text/plain".into()),
                ("x-many".into(), "1".into()),
                ("x-many".into(), "2".into()),
            ],
        };
        let text: Value = serde_json::from_slice(&request_envelope(&request, b"hi")).unwrap();
        assert_eq!(
            text,
            json!({"method": "POST", "path": "/a/b", "query": "x=1&y=2",
                   "headers": {"accept": "text/plain", "x-many": "1, 2"}, "body": "hi"})
        );
        let binary: Value =
            serde_json::from_slice(&request_envelope(&request, &[0xff, 0, 1])).unwrap();
        assert_eq!(binary["body_base64"], "/wAB");
        assert!(binary.get("body").is_none());
    }

    fn decode(output: Value) -> Result<HttpAnswer, String> {
        decode_output(&Bytes::from(output.to_string()))
    }

    #[test]
    fn an_object_with_status_code_is_an_http_answer() {
        let answer = decode(json!({
            "statusCode": 201,
            "headers": {"X-Id": 7, "Vary": ["a", "b"]},
            "cookies": ["a=1"],
            "body": "made",
        }))
        .unwrap();
        assert_eq!(answer.status, 201);
        assert_eq!(answer.body, "made");
        assert_eq!(
            answer.headers,
            [
                ("vary", "a"),
                ("vary", "b"),
                ("x-id", "7"),
                ("set-cookie", "a=1"),
                ("content-type", "text/plain; charset=utf-8"),
            ]
            .map(|(n, v)| (n.to_string(), v.to_string()))
        );
        let binary =
            decode(json!({"statusCode": 200, "body": "/wAB", "isBase64Encoded": true})).unwrap();
        assert_eq!(binary.body.as_ref(), [0xff, 0, 1]);
        assert_eq!(binary.headers[0].1, "application/octet-stream");
        let json_body = decode(json!({"statusCode": 200, "body": {"a": 1}})).unwrap();
        assert_eq!(json_body.body, r#"{"a":1}"#);
        assert_eq!(json_body.headers[0].1, "application/json");
        let empty = decode(json!({"statusCode": 204})).unwrap();
        assert!(empty.body.is_empty() && empty.headers.is_empty());
    }

    #[test]
    fn other_output_is_a_200_body() {
        let answer = decode(json!({"status": 201})).unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, r#"{"status":201}"#);
        assert_eq!(answer.headers[0].1, "application/json");
        let raw = decode_output(&Bytes::from_static(b"not json")).unwrap();
        assert_eq!(
            (raw.status, raw.headers[0].1.as_str()),
            (200, "application/octet-stream")
        );
    }

    #[test]
    fn invalid_answers_say_what_is_wrong() {
        for (bad, says) in [
            (json!({"statusCode": 99}), "statusCode"),
            (json!({"statusCode": "200"}), "statusCode"),
            (json!({"statusCode": 200, "headers": []}), "headers"),
            (json!({"statusCode": 200, "headers": {"a": {}}}), "\"a\""),
            (
                json!({"statusCode": 200, "body": "%%", "isBase64Encoded": true}),
                "base64",
            ),
            (
                json!({"statusCode": 200, "isBase64Encoded": "yes"}),
                "isBase64Encoded",
            ),
        ] {
            let error = decode(bad.clone()).unwrap_err();
            assert!(error.contains(says), "{bad}: {error}");
        }
    }
}

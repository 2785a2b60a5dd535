//! HTTP functions: a handler that takes a [`Request`] and returns a [`Response`].
//!
//! A function called over HTTP (`/fn/NAME/...`, or a route added with `newt route
//! add`) gets the request as a JSON envelope on stdin; its answer goes back as an
//! envelope on stdout, which the host turns into the HTTP response. [`serve`] does
//! both ends:
//!
//! ```no_run
//! use newt_sdk::http::{Request, Response};
//!
//! fn main() {
//!     newt_sdk::http::serve(|request: Request| {
//!         let name = request.query_param("name").unwrap_or_else(|| "world".into());
//!         Response::new(200)
//!             .header("content-type", "text/plain")
//!             .body(format!("Hello, {name}! You asked for {}", request.path))
//!     })
//! }
//! ```
//!
//! The envelope in: `{"method", "path", "query", "headers": {name: value}, "body"}`,
//! with `body_base64` instead of `body` when the body is not UTF-8. Out:
//! `{"statusCode", "headers", "body"}`, with `"isBase64Encoded": true` when the body is
//! not UTF-8 (the shape AWS Lambda users know).

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::Failure;

/// An HTTP request, as the host passed it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path after the route's prefix (or after `/fn/NAME`), starting with `/`,
    /// percent-encoded as it was sent.
    pub path: String,
    /// The query string without `?`, as it was sent (may be empty).
    pub query: String,
    /// Header names (lower case) and values; repeated headers are joined with `, `.
    pub headers: BTreeMap<String, String>,
    /// The body.
    pub body: Vec<u8>,
}

impl Request {
    /// Reads the envelope the host writes on stdin.
    pub fn from_envelope(envelope: &[u8]) -> Result<Request, String> {
        let value: Value = serde_json::from_slice(envelope)
            .map_err(|e| format!("the HTTP request envelope is not JSON: {e}"))?;
        let text = |name: &str| value[name].as_str().unwrap_or_default().to_string();
        let method = value["method"]
            .as_str()
            .ok_or("the input is not an HTTP request envelope (no `method`): call this function over HTTP, at /fn/NAME")?
            .to_string();
        let headers = value["headers"]
            .as_object()
            .map(|map| {
                map.iter()
                    .map(|(k, v)| {
                        (
                            k.to_ascii_lowercase(),
                            v.as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let body = match (&value["body"], &value["body_base64"]) {
            (_, Value::String(encoded)) => BASE64
                .decode(encoded)
                .map_err(|e| format!("body_base64 is not base64: {e}"))?,
            (Value::String(text), _) => text.clone().into_bytes(),
            _ => Vec::new(),
        };
        Ok(Request {
            method,
            path: text("path"),
            query: text("query"),
            headers,
            body,
        })
    }

    /// A header's value, by name (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// The first value of a query parameter, percent-decoded (`+` is a space).
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(key) == name).then(|| decode(value))
        })
    }

    /// The body parsed as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

/// Percent-decoding of a query component; invalid escapes stay as they are.
fn decode(text: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%' && i + 2 < bytes.len())
            .then(|| Some(hex(bytes[i + 1])? * 16 + hex(bytes[i + 2])?))
            .flatten();
        match (bytes[i], escaped) {
            (_, Some(byte)) => {
                out.push(byte);
                i += 3;
                continue;
            }
            (b'+', None) => out.push(b' '),
            (b, None) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An HTTP response: a status, headers and a body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    /// A response with `status` and no headers or body.
    pub fn new(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A response with a JSON body and its content type.
    pub fn json<T: Serialize>(status: u16, value: &T) -> Result<Response, serde_json::Error> {
        Ok(Response::new(status)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(value)?))
    }

    /// Adds a header (a name given twice is sent twice).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Response {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Response {
        self.body = body.into();
        self
    }

    /// The envelope the host reads back: `statusCode`, `headers` (a list for a name
    /// given twice) and `body` (base64 with `isBase64Encoded` when not UTF-8).
    pub fn to_envelope(&self) -> Vec<u8> {
        let mut headers = Map::new();
        for (name, value) in &self.headers {
            match headers.get_mut(name) {
                Some(Value::Array(values)) => values.push(json!(value)),
                Some(single) => *single = json!([single.clone(), value]),
                None => {
                    headers.insert(name.clone(), json!(value));
                }
            }
        }
        let envelope = match std::str::from_utf8(&self.body) {
            Ok(text) => json!({"statusCode": self.status, "headers": headers, "body": text}),
            Err(_) => json!({
                "statusCode": self.status,
                "headers": headers,
                "body": BASE64.encode(&self.body),
                "isBase64Encoded": true,
            }),
        };
        serde_json::to_vec(&envelope).expect("JSON values serialize")
    }
}

/// Runs an HTTP function: reads the request envelope from stdin, calls `handler` and
/// writes its response envelope to stdout. Input that is not a request envelope (the
/// function was invoked without HTTP) exits with code 2. Never returns.
pub fn serve<F>(handler: F) -> !
where
    F: FnOnce(Request) -> Response,
{
    let result = crate::read_stdin().and_then(|input| handle(&input, handler));
    crate::finish(result)
}

/// Runs a function that answers both ways: called over HTTP (`/fn/NAME/...` or a
/// route), `http` gets the request; invoked with plain input, `plain` gets it as
/// [`crate::run`] would. The input is taken as a request when it is the host's
/// envelope (a JSON object whose `method` is a string and whose `headers` is an
/// object). Never returns.
pub fn serve_or_run<I, O, E, F, H>(http: H, plain: F) -> !
where
    I: serde::de::DeserializeOwned,
    O: Serialize,
    E: std::fmt::Display,
    F: FnOnce(I) -> Result<O, E>,
    H: FnOnce(Request) -> Response,
{
    let result = crate::read_stdin().and_then(|input| handle_either(&input, http, plain));
    crate::finish(result)
}

/// The pure part of [`serve_or_run`].
fn handle_either<I, O, E, F, H>(input: &[u8], http: H, plain: F) -> Result<Vec<u8>, Failure>
where
    I: serde::de::DeserializeOwned,
    O: Serialize,
    E: std::fmt::Display,
    F: FnOnce(I) -> Result<O, E>,
    H: FnOnce(Request) -> Response,
{
    if is_envelope(input) {
        handle(input, http)
    } else {
        crate::handle_json(input, plain)
    }
}

/// Whether `input` is the host's request envelope.
fn is_envelope(input: &[u8]) -> bool {
    // Only an object can be one: skip parsing anything else.
    if input.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return false;
    }
    serde_json::from_slice::<Value>(input).is_ok_and(|value| {
        value.get("method").is_some_and(Value::is_string)
            && value.get("headers").is_some_and(Value::is_object)
    })
}

/// The pure part of [`serve`].
fn handle<F>(input: &[u8], handler: F) -> Result<Vec<u8>, Failure>
where
    F: FnOnce(Request) -> Response,
{
    let request = Request::from_envelope(input).map_err(Failure::InvalidRequest)?;
    Ok(handler(request).to_envelope())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_come_from_the_hosts_envelope() {
        let envelope = br#"{"method":"POST","path":"/dice/6","query":"n=2&name=a%20b+c",
            "headers":{"Content-Type":"application/json"},"body":"{\"x\":1}"}"#;
        let request = Request::from_envelope(envelope).unwrap();
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/dice/6");
        assert_eq!(request.query_param("n").as_deref(), Some("2"));
        assert_eq!(request.query_param("name").as_deref(), Some("a b c"));
        assert_eq!(request.query_param("none"), None);
        assert_eq!(request.header("content-type"), Some("application/json"));
        let body: serde_json::Value = request.json().unwrap();
        assert_eq!(body["x"], 1);
        let binary = Request::from_envelope(br#"{"method":"PUT","body_base64":"/wAB"}"#).unwrap();
        assert_eq!(binary.body, [0xff, 0, 1]);
        assert_eq!(binary.path, "");
    }

    #[test]
    fn serve_or_run_tells_a_request_from_plain_input() {
        let http = |request: Request| Response::new(200).body(format!("http {}", request.path));
        let plain = |n: u32| Ok::<_, String>(n + 1);
        let envelope = br#"{"method":"GET","path":"/4d6","query":"","headers":{}}"#;
        let output = handle_either(envelope, http, plain).unwrap();
        let answer: Value = serde_json::from_slice(&output).unwrap();
        assert_eq!(answer["statusCode"], 200);
        assert_eq!(answer["body"], "http /4d6");
        assert_eq!(handle_either(b"41", http, plain).unwrap(), b"42");
        // An object without the envelope's shape is plain input for the handler.
        let failure = handle_either(br#"{"method":1,"headers":{}}"#, http, plain).unwrap_err();
        assert_eq!(failure.exit_code(), 2);
    }

    #[test]
    fn input_that_is_not_an_envelope_is_invalid_input() {
        let failure = handle(br#"{"name":"x"}"#, |_| Response::new(200)).unwrap_err();
        assert_eq!(failure.exit_code(), 2);
        assert!(failure.to_string().contains("/fn/NAME"), "{failure}");
        assert_eq!(
            handle(b"not json", |_| Response::new(200))
                .unwrap_err()
                .exit_code(),
            2
        );
    }

    #[test]
    fn responses_become_the_envelope_the_host_reads() {
        let output = handle(br#"{"method":"GET","path":"/x"}"#, |request| {
            Response::new(201)
                .header("set-cookie", "a=1")
                .header("set-cookie", "b=2")
                .header("x-path", request.path)
                .body("made")
        })
        .unwrap();
        let envelope: Value = serde_json::from_slice(&output).unwrap();
        assert_eq!(
            envelope,
            json!({"statusCode": 201, "body": "made",
                   "headers": {"set-cookie": ["a=1", "b=2"], "x-path": "/x"}})
        );
        let binary: Value =
            serde_json::from_slice(&Response::new(200).body(vec![0xff, 0, 1]).to_envelope())
                .unwrap();
        assert_eq!(binary["body"], "/wAB");
        assert_eq!(binary["isBase64Encoded"], true);
        let json_body = Response::json(200, &json!({"ok": true})).unwrap();
        assert_eq!(json_body.body, br#"{"ok":true}"#);
    }

    #[test]
    fn bad_escapes_stay_as_they_are() {
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%zz%41"), "%zzA");
        assert_eq!(decode("%C3%A9"), "é");
    }
}

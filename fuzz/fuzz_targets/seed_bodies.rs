//! The seed platform's routes with hostile bodies, through newt's whole app in-process
//! (one service per fuzzing process, on a temporary home, Docker unreachable). The
//! first byte picks the request:
//!
//! - 0: `POST /invokeFunction`, the rest as its JSON body;
//! - 1: `POST /registerRuntime`, the rest as its JSON body;
//! - 2: `POST /registerFunction/python/f`, sections `content type \0 body`;
//! - 3: `POST /registerFunction/python/f`, one multipart field made of the sections
//!   `boundary \0 field name \0 filename \0 content type \0 content`.
//!
//! No answer may be a 500, and nothing may panic.
#![no_main]

use axum::body::Body;
use axum::http::{Method, Request, header};
use libfuzzer_sys::fuzz_target;
use newt_fuzz::{App, sections};

fn post(path: &str, content_type: &[u8], body: Vec<u8>) -> Option<Request<Body>> {
    Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(body))
        .ok()
}

fn request(data: &[u8]) -> Option<Request<Body>> {
    let (&route, rest) = data.split_first()?;
    match route % 4 {
        0 => post("/invokeFunction", b"application/json", rest.to_vec()),
        1 => post("/registerRuntime", b"application/json", rest.to_vec()),
        2 => {
            let s = sections(rest, 2);
            post("/registerFunction/python/f", s[0], s[1].to_vec())
        }
        _ => {
            let s = sections(rest, 5);
            let (boundary, name, filename, content_type, content) = (s[0], s[1], s[2], s[3], s[4]);
            let mut body = Vec::new();
            body.extend_from_slice(b"--");
            body.extend_from_slice(boundary);
            body.extend_from_slice(b"\r\nContent-Disposition: form-data; name=\"");
            body.extend_from_slice(name);
            body.extend_from_slice(b"\"; filename=\"");
            body.extend_from_slice(filename);
            body.extend_from_slice(b"\"\r\nContent-Type: ");
            body.extend_from_slice(content_type);
            body.extend_from_slice(b"\r\n\r\n");
            body.extend_from_slice(content);
            body.extend_from_slice(b"\r\n--");
            body.extend_from_slice(boundary);
            body.extend_from_slice(b"--\r\n");
            let mut value = b"multipart/form-data; boundary=".to_vec();
            value.extend_from_slice(boundary);
            post("/registerFunction/python/f", &value, body)
        }
    }
}

fuzz_target!(
    init: {
        newt_fuzz::write_seeds(&newt_fuzz::seeds::seed_bodies());
        App::get();
    },
    |data: &[u8]| {
        // A content type that is not a valid header value is the client's problem:
        // no request to send.
        if let Some(request) = request(data) {
            App::get().send_no_500(request);
        }
    }
);

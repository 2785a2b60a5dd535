//! Names and ids from clients: function names (`validate_name`), runtime names
//! (`ContainerRuntime::validate`), call ids (`GET /v1/calls/{id}`: a UUID as
//! `Uuid::parse_str` reads it, or a call number) and seed call numbers
//! (`GET /call/{num}`).
//!
//! Each rule is checked against a plain statement of it, and the routes, driven through
//! the whole app in-process, must answer 400 exactly when the id is neither a UUID nor
//! a number, and never 500.
#![no_main]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use libfuzzer_sys::fuzz_target;
use newt_fuzz::{App, path_segment};
use newt_runtime::{ContainerRuntime, RunMode};

/// 1 to 63 of a-z, 0-9 and '-', not starting with '-'.
fn name_rule(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn get(path: String) -> StatusCode {
    let request = Request::builder()
        .uri(path)
        .body(Body::empty())
        .expect("a percent-encoded path is a valid URI");
    App::get().send_no_500(request)
}

fuzz_target!(
    init: {
        newt_fuzz::write_seeds(&newt_fuzz::seeds::names());
        App::get();
    },
    |data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        assert_eq!(
            newt_host::service::validate_name(text).is_ok(),
            name_rule(text),
            "function name {text:?}"
        );
        let runtime = ContainerRuntime {
            name: text.to_string(),
            image: "newt/python:3".into(),
            path: "/app".into(),
            dependencies: None,
            dependencies_offline: None,
            run: "python3 main.py".into(),
            mode: RunMode::Command,
            policy: None,
            python: None,
            env: Default::default(),
            mounts: Vec::new(),
        };
        assert_eq!(
            runtime.validate().is_ok(),
            name_rule(text) && text != "wasm",
            "runtime name {text:?}"
        );

        // Path parameters are whole segments: an empty one is another route.
        if text.is_empty() {
            return;
        }
        let segment = path_segment(text);
        let is_uuid = uuid::Uuid::parse_str(text).is_ok();
        let is_num = text.parse::<i64>().is_ok();
        let status = get(format!("/v1/calls/{segment}"));
        if is_uuid || is_num {
            assert!(
                matches!(status, StatusCode::OK | StatusCode::NOT_FOUND),
                "GET /v1/calls/{text:?}: {status}"
            );
        } else {
            assert_eq!(status, StatusCode::BAD_REQUEST, "GET /v1/calls/{text:?}");
        }
        let status = get(format!("/call/{segment}"));
        if is_num {
            assert!(
                matches!(status, StatusCode::OK | StatusCode::NOT_FOUND),
                "GET /call/{text:?}: {status}"
            );
        } else {
            assert_eq!(status, StatusCode::BAD_REQUEST, "GET /call/{text:?}");
        }
        get(format!("/v1/functions/{segment}"));
        get(format!("/v1/runtimes/{segment}"));
    }
);

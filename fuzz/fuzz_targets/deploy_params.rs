//! Deploy metadata and policy parsing. The input is NUL-separated sections:
//! `query \0 x-newt-limits \0 x-newt-policy \0 policy JSON \0 patch JSON \0 runtime
//! (TOML or JSON) \0 duration`.
//!
//! - The query (`k=v&k=v`, each side percent-encoded as a client would) and the two
//!   JSON headers go to `PUT /v1/functions/f` with an empty body, through newt's whole
//!   app in-process: the handler's own `merge_json_headers` and `deploy_options`
//!   (private to the API module, so reached the way a client reaches them). Never a
//!   500; a key no deploy accepts is a 400; and an accepted deploy never creates a
//!   function out of an empty bundle.
//! - The patch goes to `PATCH /v1/runtimes/wasm` (`policy_changes`, then the runtime
//!   policy's merge and validation): never a 500.
//! - A `Policy` from JSON that validates survives a JSON round trip, and a patch of it
//!   (`Policy::patched`) is valid whenever it is accepted.
//! - A `ContainerRuntime` from TOML (`runtime.toml`) or JSON (`POST /v1/runtimes`)
//!   either fails `validate()` or survives the JSON round trip the store makes.
//! - `parse_duration` reads back what `format_duration` writes.
#![no_main]

use axum::body::Body;
use axum::http::{HeaderValue, Method, Request, StatusCode, header};
use libfuzzer_sys::fuzz_target;
use newt_fuzz::{App, path_segment};
use newt_runtime::{ContainerRuntime, Policy, format_duration, parse_duration};
use serde_json::Value;

/// Every key a deploy query accepts.
const DEPLOY_KEYS: [&str; 11] = [
    "wait",
    "runtime",
    "timeout_ms",
    "memory_mb",
    "max_output_bytes",
    "max_log_bytes",
    "min_warm",
    "max_instances",
    "max_queue",
    "preload",
    "keep_alive",
];

fn deploy(query: &[u8], limits: &[u8], policy: &[u8]) {
    let query = String::from_utf8_lossy(query);
    let mut keys = Vec::new();
    let mut encoded = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        keys.push(k.to_string());
        encoded.push(format!("{}={}", path_segment(k), path_segment(v)));
    }
    let mut request = Request::builder()
        .method(Method::PUT)
        .uri(format!("/v1/functions/f?{}", encoded.join("&")));
    for (name, value) in [("x-newt-limits", limits), ("x-newt-policy", policy)] {
        if !value.is_empty()
            && let Ok(value) = HeaderValue::from_bytes(value)
        {
            request = request.header(name, value);
        }
    }
    let request = request.body(Body::empty()).expect("a valid request");
    let (status, body) = App::get().send(request);
    let body = String::from_utf8_lossy(&body);
    assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert!(
        !status.is_success(),
        "an empty bundle was deployed: {status} {body}"
    );
    if let Some(unknown) = keys.iter().find(|k| !DEPLOY_KEYS.contains(&k.as_str())) {
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "unknown key {unknown:?}: {body}"
        );
    }
}

fn patch_runtime(patch: &[u8]) {
    let request = Request::builder()
        .method(Method::PATCH)
        .uri("/v1/runtimes/wasm")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(patch.to_vec()))
        .expect("a valid request");
    App::get().send_no_500(request);
}

fn policy(text: &[u8], patch: &[u8]) {
    let Ok(policy) = serde_json::from_slice::<Policy>(text) else {
        return;
    };
    if policy.validate().is_err() {
        return;
    }
    let again: Policy = serde_json::from_str(&serde_json::to_string(&policy).unwrap())
        .expect("a valid policy reads back");
    assert_eq!(again, policy);
    if let Ok(patch) = serde_json::from_slice::<Value>(patch)
        && let Ok(patched) = policy.patched(&patch)
    {
        patched.validate().expect("a patched policy is valid");
    }
}

fn runtime(text: &[u8]) {
    let text = String::from_utf8_lossy(text);
    let parsed = [
        toml::from_str::<ContainerRuntime>(&text).ok(),
        serde_json::from_str::<ContainerRuntime>(&text).ok(),
    ];
    for runtime in parsed.into_iter().flatten() {
        if runtime.validate().is_err() {
            continue;
        }
        // What registering stores, and what a restart reads back.
        let stored = serde_json::to_value(&runtime).unwrap();
        let again: ContainerRuntime =
            serde_json::from_value(stored).expect("a valid runtime reads back");
        assert_eq!(again, runtime);
        if let Some(policy) = &runtime.policy {
            let _ = policy.validate();
        }
    }
}

fn duration(text: &[u8]) {
    let text = String::from_utf8_lossy(text);
    if let Ok(d) = parse_duration(&text) {
        assert_eq!(parse_duration(&format_duration(d)), Ok(d), "{text:?}");
    }
}

fuzz_target!(
    init: {
        newt_fuzz::write_seeds(&newt_fuzz::seeds::deploy_params());
        App::get();
    },
    |data: &[u8]| {
        let s = newt_fuzz::sections(data, 7);
        deploy(s[0], s[1], s[2]);
        patch_runtime(s[4]);
        policy(s[3], s[4]);
        runtime(s[5]);
        duration(s[6]);
    }
);

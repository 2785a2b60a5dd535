//! `GET /v1/openapi.json` on a live server: the document parses, needs no token, lists
//! every v1 route the server serves (and none it does not), and every error response
//! it documents is the `{"error": {"code", "message"}}` body the server really sends.

use newt_tests::Server;
use reqwest::Method;
use serde_json::Value;

use crate::support::http;

const TOKEN: &str = "openapi-admin-token-0123";

/// Every v1 operation newt serves today: the document must list each one. (A route
/// added later is caught by the unit test that reads the router; this list says what
/// a client can rely on.)
const OPERATIONS: [(&str, &str); 20] = [
    ("GET", "/v1/functions"),
    ("PUT", "/v1/functions/{name}"),
    ("GET", "/v1/functions/{name}"),
    ("PATCH", "/v1/functions/{name}"),
    ("DELETE", "/v1/functions/{name}"),
    ("POST", "/v1/functions/{name}/invoke"),
    ("GET", "/v1/calls"),
    ("GET", "/v1/calls/{id}"),
    ("GET", "/v1/pools"),
    ("GET", "/v1/routes"),
    ("PUT", "/v1/routes"),
    ("POST", "/v1/routes"),
    ("DELETE", "/v1/routes"),
    ("GET", "/v1/runtimes"),
    ("POST", "/v1/runtimes"),
    ("GET", "/v1/runtimes/{name}"),
    ("PATCH", "/v1/runtimes/{name}"),
    ("DELETE", "/v1/runtimes/{name}"),
    ("GET", "/v1/openapi.json"),
    ("GET", "/healthz"),
];

async fn document(server: &Server) -> Value {
    // No token: the document is public.
    let response = http()
        .get(server.url("/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let text = response.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// `(METHOD, path)` of every operation in `spec`.
fn operations(spec: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for method in item.as_object().unwrap().keys() {
            out.push((method.to_uppercase(), path.clone()));
        }
    }
    out
}

/// `path` with its parameters filled in with names nothing on the server has, so
/// no request here changes anything.
fn concrete(path: &str) -> String {
    path.replace("{name}", "no-such-thing")
        .replace("{alias}", "no-such-alias")
        .replace("{id}", "999999")
}

#[tokio::test]
async fn the_document_lists_every_v1_route_and_only_those() {
    let server = Server::start_with_args(&["--token", TOKEN]);
    let spec = document(&server).await;
    assert_eq!(spec["openapi"], "3.1.0");
    assert_eq!(spec["info"]["title"], "newt");

    let documented = operations(&spec);
    for (method, path) in OPERATIONS {
        assert!(
            documented.contains(&(method.to_string(), path.to_string())),
            "{method} {path} is not in the document"
        );
    }
    // Each documented operation is routed: the server answers it from its handler,
    // not with 405 (no such method) or the fallback's "no route".
    for (method, path) in &documented {
        let url = server.url(&concrete(path));
        let response = http()
            .request(Method::from_bytes(method.as_bytes()).unwrap(), &url)
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        assert_ne!(status, 405, "{method} {path}: {body}");
        assert!(!body.contains("no route for"), "{method} {path}: {body}");
        assert_ne!(status, 500, "{method} {path}: {body}");
    }
    // And no documented path serves a method the document does not list.
    let mut paths: Vec<&String> = documented.iter().map(|(_, p)| p).collect();
    paths.dedup();
    for path in paths {
        for method in ["GET", "PUT", "POST", "PATCH", "DELETE"] {
            if documented.contains(&(method.to_string(), path.clone())) {
                continue;
            }
            let response = http()
                .request(
                    Method::from_bytes(method.as_bytes()).unwrap(),
                    server.url(&concrete(path)),
                )
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap();
            assert_eq!(
                response.status(),
                405,
                "{method} {path} is served but not documented"
            );
        }
    }
}

#[tokio::test]
async fn documented_errors_are_the_error_body_the_server_sends() {
    let server = Server::start_with_args(&["--token", TOKEN]);
    let spec = document(&server).await;
    let schemas = &spec["components"]["schemas"];
    let error = &schemas["ErrorBody"];
    assert_eq!(
        error["properties"]["error"]["$ref"],
        "#/components/schemas/ErrorDetail"
    );
    let detail = &schemas["ErrorDetail"];
    for field in ["code", "message"] {
        assert_eq!(detail["properties"][field]["type"], "string", "{field}");
    }

    let mut errors = 0;
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let responses = operation["responses"].as_object().unwrap();
            for (status, response) in responses {
                if !(status.starts_with('4') || status.starts_with('5')) {
                    continue;
                }
                errors += 1;
                assert_eq!(
                    response["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorBody",
                    "{method} {path} {status}"
                );
            }
        }
        // Routes behind the token document 401.
        if path != "/v1/openapi.json" && path != "/healthz" {
            for operation in item.as_object().unwrap().values() {
                assert!(
                    operation["responses"]["401"].is_object(),
                    "{path} lacks 401"
                );
            }
        }
    }
    assert!(errors > 50, "only {errors} error responses documented");

    // What the server sends for documented errors has that shape: 401 without the
    // token, 404 for an unknown function, 400 for a bad name.
    let cases = [
        ("/v1/functions", None, 401),
        ("/v1/functions/no-such-thing", Some(TOKEN), 404),
        ("/v1/functions/Not_A_Name", Some(TOKEN), 400),
    ];
    for (path, token, expected) in cases {
        let mut request = http().get(server.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), expected, "{path}");
        let documented = &spec["paths"][path
            .replace("no-such-thing", "{name}")
            .replace("Not_A_Name", "{name}")]["get"]["responses"][expected.to_string()];
        assert!(documented.is_object(), "{path}: {expected} not documented");
        let body: Value = response.json().await.unwrap();
        assert!(body["error"]["code"].is_string(), "{body}");
        assert!(body["error"]["message"].is_string(), "{body}");
        assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
    }
}

//! Egress of container functions on the real Docker engine, through the executor
//! itself: a function-level instance and a runtime-level one loaded later both reach
//! what their list allows through their own proxy, nothing else; a function without a
//! list has no socket; every egress directory goes with its instance. Skips (with a
//! line saying so) when no engine answers.

mod support;

use newt_runtime::{AllowList, DockerConfig, DockerExecutor, Executor, FunctionSpec, Limits};
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FETCH: &str = r#"
import json, os, urllib.error, urllib.request

def handler(event):
    out = {"socket": os.path.exists("/run/newt/egress.sock"),
           "mounted": os.path.isdir("/run/newt"),
           "proxy": os.environ.get("HTTP_PROXY")}
    for name, url in event.items():
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:
                out[name] = [answer.status, answer.read().decode()]
        except urllib.error.HTTPError as error:
            out[name] = [error.code, error.read().decode()]
        except Exception as error:
            out[name] = [0, repr(error)]
    return out
"#;

/// A loopback HTTP server on `ip` answering every request with `body`.
async fn origin(ip: &str, body: &'static str) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    addr
}

fn spec(digest: &str, name: &str, allow: &[String]) -> FunctionSpec {
    FunctionSpec {
        name: name.into(),
        version: 1,
        runtime: "python".into(),
        digest: digest.into(),
        limits: Limits::default(),
        policy: newt_runtime::Policy::default(),
        env: Default::default(),
        allow_outbound: Arc::new(AllowList::parse(allow).unwrap()),
    }
}

async fn call(
    docker: &DockerExecutor,
    spec: &FunctionSpec,
    instance: &mut <DockerExecutor as Executor>::Instance,
    input: Value,
) -> Value {
    support::call_json(docker, spec, instance, "egress", &input).await
}

#[tokio::test]
async fn function_and_runtime_level_instances_reach_only_their_list() {
    let home = tempfile::tempdir().unwrap();
    let docker = DockerExecutor::new(DockerConfig {
        address: std::env::var("DOCKER_HOST").ok(),
        work_dir: home.path().join("docker"),
        host_id: format!("egress-test-{}", std::process::id()),
    });
    let health = docker.health().await;
    if !health.reachable {
        eprintln!(
            "egress test skipped: no Docker engine at {}",
            health.address
        );
        return;
    }
    let allowed = origin("127.0.0.2", "from the allowed server").await;
    let other = origin("127.0.0.3", "from the other server").await;
    let (bundle_path, digest) = support::stored_python(home.path(), FETCH);
    let open = spec(&digest, "egress-open", &[allowed.to_string()]);
    let closed = spec(&digest, "egress-closed", &[]);
    let prepared = Arc::new(docker.prepare(&open, &bundle_path).await.expect("prepare"));
    assert!(docker.can_load(&open, &prepared));
    let urls = serde_json::json!({
        "allowed": format!("http://{allowed}/"),
        "other": format!("http://{other}/"),
    });
    let deadline = || Instant::now() + Duration::from_secs(120);
    let stats = docker.egress_stats();

    // Function-level: the proxy is there from the start.
    let mut warm = docker.create(&open, &prepared, deadline()).await.unwrap();
    let out = call(&docker, &open, &mut warm, urls.clone()).await;
    assert_eq!(out["socket"], true, "{out}");
    assert_eq!(out["allowed"][0], 200, "{out}");
    assert_eq!(out["allowed"][1], "from the allowed server");
    assert_eq!(out["other"][0], 403, "{out}");
    assert!(
        out["other"][1]
            .as_str()
            .unwrap()
            .contains("not in this function's allow_outbound list"),
        "{out}"
    );

    // Runtime-level: created with an empty directory, the proxy appears at load.
    let mut generic = docker
        .create_generic("python", deadline())
        .await
        .expect("a runtime-level instance");
    docker
        .load(&open, &prepared, &mut generic, deadline())
        .await
        .expect("load");
    let out = call(&docker, &open, &mut generic, urls.clone()).await;
    assert_eq!(out["allowed"][1], "from the allowed server", "{out}");
    assert_eq!(out["other"][0], 403, "{out}");

    // A function without a list, loaded or created: no socket, no proxy variables.
    let mut bare_generic = docker.create_generic("python", deadline()).await.unwrap();
    docker
        .load(&closed, &prepared, &mut bare_generic, deadline())
        .await
        .unwrap();
    let out = call(&docker, &closed, &mut bare_generic, urls.clone()).await;
    assert_eq!(
        (&out["mounted"], &out["socket"], &out["proxy"]),
        (&Value::Bool(true), &Value::Bool(false), &Value::Null),
        "{out}"
    );
    assert_eq!(out["allowed"][0], 0, "{out}");
    let mut bare = docker.create(&closed, &prepared, deadline()).await.unwrap();
    let out = call(&docker, &closed, &mut bare, urls.clone()).await;
    assert_eq!(out["mounted"], false, "{out}");
    assert_eq!(out["allowed"][0], 0, "{out}");

    assert_eq!(stats.allowed.load(Ordering::Relaxed), 2);
    assert_eq!(stats.denied.load(Ordering::Relaxed), 2);

    let egress_dir = home.path().join("docker").join("egress");
    assert_eq!(std::fs::read_dir(&egress_dir).unwrap().count(), 3);
    for instance in [warm, generic, bare_generic, bare] {
        docker.destroy(instance).await;
    }
    assert_eq!(
        std::fs::read_dir(&egress_dir).unwrap().count(),
        0,
        "every egress directory goes with its instance"
    );
    let _ = docker.remove_leftovers().await;
}

//! Image builds of container functions on the real Docker engine: a tenant's
//! requirements install as the function's user, without a network, within a deadline,
//! and only so many builds run or wait at once.

use crate::support::{error_of, get_json, header, http};
use newt_tests::{Server, docker_available, tar_gz};
use serde_json::Value;
use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

/// The address of the default bridge's gateway (this host, as its containers see it):
/// `IPAM.Config[].Gateway`, or the subnet's first address when the engine leaves the
/// gateway out (as Docker 20.10 does for the default bridge).
fn bridge_gateway() -> String {
    let out = Command::new("docker")
        .args([
            "network",
            "inspect",
            "bridge",
            "--format",
            "{{json .IPAM.Config}}",
        ])
        .output()
        .expect("docker network inspect");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    for entry in &config {
        if let Some(gateway) = entry["Gateway"].as_str().filter(|g| !g.is_empty()) {
            return gateway.to_string();
        }
    }
    let subnet = config
        .iter()
        .filter_map(|entry| entry["Subnet"].as_str())
        .find(|subnet| !subnet.contains(':'))
        .expect("an IPv4 subnet on the default bridge");
    let network: std::net::Ipv4Addr = subnet.split('/').next().unwrap().parse().unwrap();
    std::net::Ipv4Addr::from(u32::from(network) + 1).to_string()
}

/// A source distribution `name-0.1.tar.gz` whose setup.py is `setup_py`.
fn sdist(name: &str, setup_py: &str) -> Vec<u8> {
    let pkg_info = format!("Metadata-Version: 1.0\nName: {name}\nVersion: 0.1\n");
    tar_gz(&[
        (&format!("{name}-0.1/setup.py"), setup_py.as_bytes()),
        (&format!("{name}-0.1/PKG-INFO"), pkg_info.as_bytes()),
    ])
}

/// A python bundle whose one requirement is the sdist `name` in its `wheels/`.
fn bundle_requiring(name: &str, setup_py: &str) -> Vec<u8> {
    let sdist = sdist(name, setup_py);
    tar_gz(&[
        ("main.py", b"def handler(event):\n    return event\n"),
        ("requirements.txt", format!("{name}\n").as_bytes()),
        (&format!("wheels/{name}-0.1.tar.gz"), &sdist),
    ])
}

/// A setup.py that reports what it may do, one `newt-probe:` line each, then fails
/// the install: who it runs as, its memory, CPU and shm limits (cgroup v1 or v2),
/// writing into the image's system folders, a TCP connection to `host:port`, the
/// Docker socket.
fn probing_setup_py(host: &str, port: u16) -> String {
    format!(
        r#"
import os, socket
def first(*paths):
    for path in paths:
        try:
            with open(path) as f:
                return f.read().split()[0]
        except OSError:
            pass
    return "unknown"
print("newt-probe: uid", os.getuid(), flush=True)
print("newt-probe: memory limit", first("/sys/fs/cgroup/memory.max",
      "/sys/fs/cgroup/memory/memory.limit_in_bytes"), flush=True)
print("newt-probe: cpu quota", first("/sys/fs/cgroup/cpu.max",
      "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), flush=True)
shm = os.statvfs("/dev/shm")
print("newt-probe: shm bytes", shm.f_blocks * shm.f_frsize, flush=True)
for path in ("/usr/local/lib/newt-pwned", "/etc/newt-pwned"):
    try:
        with open(path, "w") as f:
            f.write("pwned")
        print("newt-probe: wrote", path, flush=True)
    except OSError as e:
        print("newt-probe: write", path, "failed:", e, flush=True)
try:
    socket.create_connection(("{host}", {port}), timeout=5).close()
    print("newt-probe: connected to {host}:{port}", flush=True)
except OSError as e:
    print("newt-probe: connect to {host}:{port} failed:", e, flush=True)
try:
    s = socket.socket(socket.AF_UNIX)
    s.connect("/var/run/docker.sock")
    print("newt-probe: reached the docker socket", flush=True)
except OSError as e:
    print("newt-probe: docker socket failed:", e, flush=True)
raise SystemExit("newt-probe: done")
"#
    )
}

/// The probe line about `what` in a build log, for assertion messages.
fn probe_line<'a>(log: &'a str, what: &str) -> &'a str {
    log.lines()
        .find(|line| line.contains("newt-probe:") && line.contains(what))
        .unwrap_or_else(|| panic!("no newt-probe line about {what:?} in:\n{log}"))
}

/// A listener on every address of this host, and whether anyone connected to it.
struct Listener(TcpListener);

impl Listener {
    fn new() -> Self {
        let listener = TcpListener::bind("0.0.0.0:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        Listener(listener)
    }

    fn port(&self) -> u16 {
        self.0.local_addr().unwrap().port()
    }

    /// Whether a connection is waiting to be accepted (the kernel completes the
    /// handshake before `accept`).
    fn was_reached(&self) -> bool {
        match self.0.accept() {
            Ok(_) => true,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// Deploys a python bundle with `wait=true`, returning the status and body.
async fn deploy_and_wait(server: &Server, name: &str, bundle: Vec<u8>) -> (u16, String, String) {
    let response = http()
        .put(server.url(&format!("/v1/functions/{name}?runtime=python&wait=true")))
        .body(bundle)
        .send()
        .await
        .unwrap();
    error_of(response).await
}

/// Deploys a python bundle without waiting: the version is pending (202).
async fn deploy_pending(server: &Server, name: &str, bundle: Vec<u8>) {
    let response = http()
        .put(server.url(&format!("/v1/functions/{name}?runtime=python")))
        .body(bundle)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(status, 202, "deploy {name}: {body}\n{}", server.log());
}

/// Waits until `name`'s newest version is no longer pending; returns the function.
async fn settled(server: &Server, name: &str, secs: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (status, function) = get_json(server, &format!("/v1/functions/{name}")).await;
        assert_eq!(status, 200, "{function}");
        if function["status"] != "pending" {
            return function;
        }
        assert!(
            Instant::now() < deadline,
            "{name} still pending after {secs} s\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether a process whose command line holds `marker` runs on this host (build
/// containers' processes are this host's processes).
fn process_running(marker: &str) -> bool {
    Command::new("pgrep")
        .args(["-f", marker])
        .output()
        .expect("pgrep")
        .status
        .success()
}

/// A unique word for a test's processes.
fn marker(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("newt-{what}-{}-{nanos}", std::process::id())
}

/// A setup.py that starts a process holding `marker` in its command line and waits
/// for it: ten minutes, far past any deadline the tests set.
fn sleeping_setup_py(marker: &str) -> String {
    format!(
        r#"
import subprocess, sys
print("newt-probe: sleeping", flush=True)
subprocess.run([sys.executable, "-c", "import time; time.sleep(600)", "{marker}"])
"#
    )
}

#[tokio::test]
async fn a_hostile_setup_py_runs_unprivileged_and_offline() {
    if !docker_available() {
        return;
    }
    let server = Server::start();
    let listener = Listener::new();
    let gateway = bridge_gateway();
    let bundle = bundle_requiring("evil", &probing_setup_py(&gateway, listener.port()));

    let (status, code, message) = deploy_and_wait(&server, "evil", bundle).await;
    assert_eq!(
        (status, code.as_str()),
        (422, "invalid_bundle"),
        "{message}"
    );
    assert!(
        message.contains("building the function's image failed"),
        "{message}"
    );
    assert!(
        probe_line(&message, "uid").ends_with("uid 10001"),
        "{message}"
    );
    // The defaults: 1 GiB (no swap beyond it), 1 CPU, 64 MiB of /dev/shm.
    for (what, value) in [
        ("memory limit", "1073741824"),
        ("cpu quota", "100000"),
        ("shm bytes", "67108864"),
    ] {
        let line = probe_line(&message, what);
        assert!(line.ends_with(&format!(" {value}")), "{line}");
    }
    for path in ["/usr/local/lib/newt-pwned", "/etc/newt-pwned"] {
        let line = probe_line(&message, path);
        assert!(
            line.contains("failed") && line.contains("Permission denied"),
            "{line}"
        );
    }
    let connect = probe_line(&message, "connect");
    assert!(
        connect.contains("failed") && connect.contains("Network is unreachable"),
        "{connect}"
    );
    let socket = probe_line(&message, "docker socket");
    assert!(
        socket.contains("failed") && socket.contains("No such file"),
        "{socket}"
    );
    // No terminal colours from the engine in what is stored.
    assert!(!message.contains('\u{1b}'), "{message:?}");

    // The version is failed with the same log; nothing reached the host.
    let (_, function) = get_json(&server, "/v1/functions/evil").await;
    assert_eq!(function["status"], "failed", "{function}");
    let stored = function["status_message"].as_str().unwrap_or_default();
    assert!(
        stored.contains("newt-probe: write /etc/newt-pwned failed"),
        "{function}"
    );
    assert!(!listener.was_reached(), "a build connected to the host");
    for path in ["/usr/local/lib/newt-pwned", "/etc/newt-pwned"] {
        assert!(!std::path::Path::new(path).exists(), "{path} appeared");
    }
}

#[tokio::test]
async fn a_build_network_is_the_operators_choice_and_reaches_the_host() {
    if !docker_available() {
        return;
    }
    // The control for the test above: the same probe reaches this host's listener once
    // the operator gives builds the bridge. Still not root, still no socket.
    let server = Server::start_with_args(&["--build-network", "bridge"]);
    let listener = Listener::new();
    let gateway = bridge_gateway();
    let bundle = bundle_requiring("probe", &probing_setup_py(&gateway, listener.port()));
    let (status, _, message) = deploy_and_wait(&server, "probe", bundle).await;
    assert_eq!(status, 422, "{message}");
    assert!(
        probe_line(&message, "connect").contains("newt-probe: connected to"),
        "{message}"
    );
    assert!(listener.was_reached());
    assert!(probe_line(&message, "/etc/newt-pwned").contains("Permission denied"));
    assert!(probe_line(&message, "docker socket").contains("failed"));
}

#[tokio::test]
async fn a_build_past_its_deadline_is_cancelled_and_its_version_fails() {
    if !docker_available() {
        return;
    }
    // Long enough for the steps before the install on a busy engine (the classic
    // builder runs a container for each step not in its cache; with the whole suite
    // building images at once, 10 s was not always enough to reach the install). The
    // sleeper sleeps 600 s, so the build still runs past its deadline.
    let server = Server::start_with_args(&["--build-timeout", "30s"]);
    let marker = marker("sleeper");
    deploy_pending(
        &server,
        "sleepy-build",
        bundle_requiring("sleeper", &sleeping_setup_py(&marker)),
    )
    .await;
    // The sleeper runs while the version is pending (the base image may be built
    // first: that is not the build's time).
    let mut seen = false;
    let function = {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            seen |= process_running(&marker);
            let (_, function) = get_json(&server, "/v1/functions/sleepy-build").await;
            if function["status"] != "pending" {
                break function;
            }
            assert!(Instant::now() < deadline, "{}", server.log());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    assert!(seen, "the build's sleeper never ran: {function}");
    assert_eq!(function["status"], "failed", "{function}");
    let message = function["status_message"].as_str().unwrap_or_default();
    assert!(
        message.contains("the build ran past its deadline of 30 s"),
        "{message}"
    );
    // The log's tail comes along (pip holds setup.py's own output until it ends).
    assert!(message.contains("RUN pip3 install"), "{message}");
    // Dropping the build's stream made the engine kill the step's container.
    let gone_by = Instant::now() + Duration::from_secs(20);
    while process_running(&marker) {
        assert!(
            Instant::now() < gone_by,
            "the cancelled build's process still runs"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn builds_beyond_the_slots_wait_and_beyond_the_queue_get_429() {
    if !docker_available() {
        return;
    }
    let server = Server::start_with_args(&[
        "--max-builds",
        "1",
        "--max-build-queue",
        "1",
        "--build-timeout",
        "15s",
    ]);
    let marker = marker("slot-holder");
    deploy_pending(
        &server,
        "holder",
        bundle_requiring("holder", &sleeping_setup_py(&marker)),
    )
    .await;
    // The holder's build has the one slot once its sleeper runs.
    let running_by = Instant::now() + Duration::from_secs(600);
    while !process_running(&marker) {
        assert!(Instant::now() < running_by, "{}", server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Unique code, so no image of an earlier run is there to skip the build.
    let main_py = format!("def handler(event):\n    return 'plain'  # {marker}\n");
    let plain = || tar_gz(&[("main.py", main_py.as_bytes())]);
    deploy_pending(&server, "waiter", plain()).await;
    // The waiter reaches the queue within milliseconds of its 202.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let response = http()
        .put(server.url("/v1/functions/refused?runtime=python"))
        .body(plain())
        .send()
        .await
        .unwrap();
    let retry_after = header(&response, "retry-after");
    let (status, code, message) = error_of(response).await;
    assert_eq!((status, code.as_str()), (429, "at_capacity"), "{message}");
    assert_eq!(retry_after, "1");
    assert!(
        message.contains("the image build queue is full (1 running, 1 waiting)"),
        "{message}"
    );
    let (status, _) = get_json(&server, "/v1/functions/refused").await;
    assert_eq!(status, 404, "a refused deploy leaves nothing behind");

    // The holder's deadline frees the slot: the waiter builds, then deploys go again.
    let holder = settled(&server, "holder", 60).await;
    assert_eq!(holder["status"], "failed", "{holder}");
    let waiter = settled(&server, "waiter", 120).await;
    assert_eq!(waiter["status"], "ready", "{waiter}");
    let (status, _, message) = deploy_and_wait(&server, "later", plain()).await;
    assert!(status == 200 || status == 201, "{status} {message}");
}

#[tokio::test]
async fn a_seed_style_pip_install_works_as_the_function_user() {
    if !docker_available() {
        return;
    }
    // The seed's runtime object says `pip3 install -r requirements.txt`, no --target:
    // as uid 10001 pip falls back to a user install, which PYTHONUSERBASE puts in the
    // function's folder of the image, where `python3` finds it at run time.
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let made = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/wheel-python/make_wheel.py"
        ))
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/wheel-python/pkg"
        ))
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let wheel_path = String::from_utf8_lossy(&made.stdout).trim().to_string();
    let wheel = std::fs::read(&wheel_path).unwrap();
    let wheel_name = format!(
        "wheels/{}",
        std::path::Path::new(&wheel_path)
            .file_name()
            .unwrap()
            .to_string_lossy()
    );
    let response = http()
        .post(server.url("/v1/runtimes"))
        .json(&serde_json::json!({
            "name": "seedpy", "image": "newt/python:3", "path": "/app",
            "dependencies": "pip3 install --no-index --find-links wheels -r requirements.txt",
            "run": "python3 test.py"
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    // Unique code, so no image of an earlier run is there to skip the build.
    let test_py = format!(
        "import json, os, newt_greeting  # {}\n\
         print(json.dumps({{'uid': os.getuid(), 'v': newt_greeting.__version__, \
         'at': newt_greeting.__file__}}))\n",
        marker("seeded")
    );
    let bundle = tar_gz(&[
        ("test.py", test_py.as_bytes()),
        ("requirements.txt", b"newt-greeting==0.1.0\n"),
        (&wheel_name, &wheel),
    ]);
    let response = http()
        .put(server.url("/v1/functions/seeded?runtime=seedpy&wait=true"))
        .body(bundle)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body = response.text().await.unwrap();
    assert!(status.is_success(), "{status} {body}\n{}", server.log());
    let response = http()
        .post(server.url("/v1/functions/seeded/invoke"))
        .body("{}")
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(status, 200, "{body}");
    let output: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(output["uid"], 10001, "{output}");
    assert_eq!(output["v"], "0.1.0", "{output}");
    assert!(
        output["at"].as_str().unwrap().starts_with("/app/.deps/"),
        "{output}"
    );
}

//! The developer loop from the CLI: `newt new --lang python` deployed as a directory,
//! `newt dev` redeploying on save, `newt completions`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use newt_tests::{Server, fixture, newt_bin};

use crate::cli::{newt, stdout_of};

/// How long `newt dev` gets to notice a change and deploy it.
const DEV_DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn new_python_function_deploys_from_its_directory_and_greets() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let parent = dir.path().to_str().unwrap();
    let out = stdout_of(&newt(
        &server,
        &["new", "hi-py", "--lang", "python", "--dir", parent],
    ));
    let fn_dir = dir.path().join("hi-py");
    let fn_path = fn_dir.to_str().unwrap();
    assert!(
        out.contains(&format!(
            "newt deploy hi-py {fn_path} --runtime python --wait"
        )),
        "{out}"
    );
    assert!(fn_dir.join("main.py").is_file() && fn_dir.join("requirements.txt").is_file());

    // Editor and interpreter leftovers stay out of the bundle.
    std::fs::create_dir(fn_dir.join("__pycache__")).unwrap();
    std::fs::write(fn_dir.join("__pycache__/main.cpython-312.pyc"), b"\0").unwrap();
    std::fs::write(fn_dir.join(".main.py.swp"), b"\0").unwrap();

    // A Python directory is not a wasm bundle: said before anything is uploaded.
    let wrong = newt(&server, &["deploy", "hi-py", fn_path]);
    assert!(!wrong.status.success());
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(stderr.contains("--runtime python"), "{stderr}");

    if !newt_tests::docker_available() {
        return;
    }
    let deployed = newt(
        &server,
        &["deploy", "hi-py", fn_path, "--runtime", "python", "--wait"],
    );
    let out = stdout_of(&deployed);
    assert!(out.contains("deployed hi-py v1"), "{out}");
    // Not a terminal here: plain progress lines, no spinner escapes.
    let progress = String::from_utf8_lossy(&deployed.stderr);
    assert!(progress.contains("building hi-py v1"), "{progress}");
    assert!(!progress.contains('\x1b'), "{progress:?}");

    let out = stdout_of(&newt(&server, &["invoke", "hi-py", r#"{"name":"Ada"}"#]));
    let answer: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(answer, serde_json::json!({"greeting": "Hello, Ada!"}));

    let function = get_function(&server, "hi-py").await;
    assert_eq!(function["status"], "ready");
    // The same directory packs to the same bytes: nothing new to build.
    let out = stdout_of(&newt(
        &server,
        &["deploy", "hi-py", fn_path, "--runtime", "python", "--wait"],
    ));
    assert!(out.contains("unchanged: hi-py v1"), "{out}");
}

#[tokio::test]
async fn dev_redeploys_a_wasm_file_when_it_changes() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("dev-fn.wasm");
    std::fs::write(&wasm, fixture!("echo")).unwrap();

    let mut dev = DevProcess::start(&server, &wasm);
    let line = dev.line_matching("deployed dev-fn v1");
    assert!(line.starts_with("built in "), "{line}");
    wait_for_version(&server, "dev-fn", 1).await;
    let out = stdout_of(&newt(&server, &["invoke", "dev-fn", "ping"]));
    assert_eq!(out.trim(), "ping");

    // A save: the file now holds another module.
    std::fs::write(&wasm, fixture!("env")).unwrap();
    dev.line_matching("deployed dev-fn v2");
    wait_for_version(&server, "dev-fn", 2).await;

    // A save of the same bytes: rebuilt, not redeployed.
    std::fs::write(&wasm, fixture!("env")).unwrap();
    let touch = std::fs::File::options().append(true).open(&wasm).unwrap();
    touch
        .set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    dev.line_matching("same bundle as deployed: not redeployed");

    // A broken save is reported and the loop goes on.
    std::fs::write(&wasm, b"not wasm at all").unwrap();
    let line = dev.line_matching("deploy failed");
    assert!(line.contains("422") || line.contains("wasm"), "{line}");
    std::fs::write(&wasm, fixture!("echo")).unwrap();
    dev.line_matching("deployed dev-fn v3");
    let function = get_function(&server, "dev-fn").await;
    assert_eq!(function["version"], 3, "{function}");
}

#[test]
fn completions_name_the_subcommands() {
    for shell in ["bash", "zsh", "fish"] {
        let output = Command::new(newt_bin())
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(output.status.success(), "{shell}: {output:?}");
        let script = String::from_utf8(output.stdout).unwrap();
        for word in ["deploy", "invoke", "dev", "--wait"] {
            assert!(script.contains(word), "{shell} script lacks {word}");
        }
    }
    let bash = Command::new(newt_bin())
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&bash.stdout).contains("complete -F _newt"));
    let unknown = Command::new(newt_bin())
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert!(!unknown.status.success());
}

/// A running `newt dev`, its stdout lines read on a thread; killed when dropped.
struct DevProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl DevProcess {
    fn start(server: &Server, path: &Path) -> DevProcess {
        let mut child = Command::new(newt_bin())
            .arg("dev")
            .arg(path)
            .env("NEWT_SERVER", &server.base)
            .env_remove("NEWT_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        DevProcess {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The next line containing `needle`, within [`DEV_DEADLINE`].
    fn line_matching(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + DEV_DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(e) => panic!(
                    "newt dev printed no line with {needle:?} ({e}); it printed:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }
}

impl Drop for DevProcess {
    fn drop(&mut self) {
        // Our own child, by its handle: like the user's Ctrl-C.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn get_function(server: &Server, name: &str) -> serde_json::Value {
    let response = reqwest::get(server.url(&format!("/v1/functions/{name}")))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// Polls `GET /v1/functions/NAME` until its newest version is `version` and ready.
async fn wait_for_version(server: &Server, name: &str, version: i64) {
    let deadline = Instant::now() + DEV_DEADLINE;
    loop {
        let function = get_function(server, name).await;
        if function["version"] == version && function["status"] == "ready" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never reached v{version}: {function}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

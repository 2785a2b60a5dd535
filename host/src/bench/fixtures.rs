//! The functions the rows run, and what each is called in the report.
//!
//! - wasm: the Rust SDK's hello (`examples/hello`, built for wasm32-wasip1 release),
//!   the same module for newt's start kinds, the in-process floor and `wasmtime run`.
//!   It is built from the newt checkout the bench runs in (or the one this binary was
//!   built from); without one, the rows fall back to the WAT echo of the tests, and
//!   say so.
//! - Python: an echo, for newt's rows and for `docker run` / `docker exec` alike.
//!
//! Every row of one backend runs the same bytes on the same input, so the figures
//! differ only by the machinery around the function.

use anyhow::Context;
use std::path::{Path, PathBuf};

/// A WASI command that copies stdin to stdout (one read of up to 60 000 bytes) and
/// logs "echo" to stderr: the test fixture, compiled into the binary; the fallback
/// when the SDK hello cannot be built.
const ECHO_WAT: &str = include_str!("../../../tests/fixtures/echo.wat");

/// The Python function: returns its event.
pub const ECHO_PY: &str = "def handler(event):\n    return event\n";

/// What the containers' peers run per call: the same echo, through stdin and stdout.
pub const ECHO_PY_COMMAND: &str = "import json, sys; print(json.dumps(json.load(sys.stdin)))";

/// The Python rows' input.
pub const INPUT: &str = r#"{"bench":"newt","n":1}"#;

/// The hello's input: its answer is then the wasi:http component's
/// (`{"greeting":"Hello, world!"}`).
pub const HELLO_INPUT: &str = r#"{"name":"world"}"#;

/// What the wasm rows run, as the report names it.
pub const HELLO_LABEL: &str = "examples/hello (wasm32-wasip1)";
/// What the Python rows run.
pub const PYTHON_LABEL: &str = "python echo";
/// The component of the `wasi:http` rows.
pub const COMPONENT_LABEL: &str = "bench-fixtures/http-hello (wasm32-wasip2)";

/// A function the rows of one backend run: its bytes, its input and its name.
#[derive(Debug, Clone)]
pub struct Workload {
    /// The bundle deployed (a `.wasm`, or a `.tar.gz` for Python).
    pub bundle: Vec<u8>,
    /// Every call's input.
    pub input: &'static str,
    /// What the report calls it.
    pub label: String,
}

/// The echo compiled to a wasm module.
pub fn echo_wasm() -> anyhow::Result<Vec<u8>> {
    wat::parse_str(ECHO_WAT).context("compiling the built-in echo WAT")
}

/// The Python echo as a `.tar.gz` bundle with `main.py`.
pub fn echo_python_bundle() -> anyhow::Result<Vec<u8>> {
    newt_runtime::pack(&[("main.py", ECHO_PY.as_bytes())]).context("packing the Python echo")
}

/// The Python rows' workload.
pub fn python() -> anyhow::Result<Workload> {
    Ok(Workload {
        bundle: echo_python_bundle()?,
        input: INPUT,
        label: PYTHON_LABEL.into(),
    })
}

/// The wasm rows' workload: the SDK hello, or (when it cannot be built: no checkout,
/// no cargo, no wasm32-wasip1 target) the WAT echo, labelled with why.
pub async fn wasm() -> anyhow::Result<Workload> {
    match hello_wasm().await {
        Ok(bundle) => Ok(Workload {
            bundle,
            input: HELLO_INPUT,
            label: HELLO_LABEL.into(),
        }),
        Err(e) => {
            eprintln!("bench: the wasm rows run the WAT echo instead of the SDK hello: {e:#}");
            Ok(Workload {
                bundle: echo_wasm()?,
                input: INPUT,
                label: "tests/fixtures/echo.wat (the SDK hello could not be built)".into(),
            })
        }
    }
}

/// The newt checkout to build the hello in: the current directory's, else the one
/// this binary was built from.
fn checkout() -> Option<PathBuf> {
    let built_from = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let here = std::env::current_dir().ok();
    here.into_iter().chain([built_from]).find(|dir| {
        dir.join("examples/hello/Cargo.toml").is_file() && dir.join("Cargo.toml").is_file()
    })
}

/// Builds `examples/hello` for wasm32-wasip1 release (what `make guests` does; cargo
/// skips it when nothing changed) and reads the module.
pub async fn hello_wasm() -> anyhow::Result<Vec<u8>> {
    let root = checkout().context("no newt checkout with examples/hello here")?;
    let stdout = super::peers::cargo_build(
        |cargo| {
            cargo
                .args(["--release", "--target", "wasm32-wasip1", "-p", "hello"])
                .args(["--message-format", "json-render-diagnostics"])
                .arg("--manifest-path")
                .arg(root.join("Cargo.toml"));
        },
        "cargo build --release --target wasm32-wasip1 -p hello failed (rustup target add \
         wasm32-wasip1?)",
    )
    .await?;
    let path =
        hello_artifact(&String::from_utf8_lossy(&stdout)).context("cargo built no hello.wasm")?;
    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
}

/// The `hello` `.wasm` among cargo's JSON messages.
fn hello_artifact(messages: &str) -> Option<PathBuf> {
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "hello")
        .flat_map(|m| {
            m["filenames"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| f.as_str().map(PathBuf::from))
                .collect::<Vec<_>>()
        })
        .find(|f| f.extension().is_some_and(|e| e == "wasm"))
}

/// `module` with a custom section named `name` holding `payload` appended: the same
/// code, another digest (so its own compiled artifact in the cache), as distinct
/// functions built from one source would be.
pub fn with_custom_section(module: &[u8], name: &str, payload: &[u8]) -> Vec<u8> {
    let mut content = Vec::new();
    leb128(&mut content, name.len() as u64);
    content.extend_from_slice(name.as_bytes());
    content.extend_from_slice(payload);
    let mut out = module.to_vec();
    out.push(0); // section id 0: custom
    leb128(&mut out, content.len() as u64);
    out.extend_from_slice(&content);
    out
}

fn leb128(out: &mut Vec<u8>, mut n: u64) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wasm_echo_compiles() {
        let wasm = echo_wasm().unwrap();
        assert_eq!(&wasm[..4], b"\0asm");
    }

    #[test]
    fn the_python_bundle_holds_main_py() {
        let bundle = echo_python_bundle().unwrap();
        let dest = tempfile::tempdir().unwrap();
        newt_runtime::unpack(&bundle, dest.path(), &Default::default()).unwrap();
        let main = std::fs::read_to_string(dest.path().join("main.py")).unwrap();
        assert_eq!(main, ECHO_PY);
    }

    #[test]
    fn a_custom_section_makes_a_distinct_module_that_still_validates() {
        let echo = echo_wasm().unwrap();
        let a = with_custom_section(&echo, "newt-bench", &1u32.to_le_bytes());
        let b = with_custom_section(&echo, "newt-bench", &2u32.to_le_bytes());
        assert_ne!(a, b);
        assert!(a.starts_with(&echo));
        // A payload past 127 bytes takes a two-byte length.
        let long = with_custom_section(&echo, "n", &[7; 200]);
        assert_eq!(&long[echo.len()..echo.len() + 3], &[0, 0xca, 0x01]);
    }

    /// The module with its section still compiles and runs (wasmtime validates custom
    /// sections' framing).
    #[tokio::test]
    async fn a_module_with_a_custom_section_runs() {
        let echo = echo_wasm().unwrap();
        let workload = Workload {
            bundle: with_custom_section(&echo, "newt-bench", b"7"),
            input: INPUT,
            label: "echo".into(),
        };
        let row = super::super::peers::in_process(&workload, 2).await.unwrap();
        assert_eq!(row.samples_ms.len(), 2);
    }

    #[test]
    fn the_hello_artifact_is_found_among_cargo_messages() {
        let messages = concat!(
            r#"{"reason":"compiler-artifact","target":{"name":"newt_sdk"},"filenames":["/t/libnewt_sdk.rlib"]}"#,
            "\n",
            r#"{"reason":"compiler-artifact","target":{"name":"hello"},"filenames":["/t/wasm32-wasip1/release/hello.wasm"]}"#,
            "\n",
            r#"{"reason":"build-finished","success":true}"#,
        );
        assert_eq!(
            hello_artifact(messages),
            Some(PathBuf::from("/t/wasm32-wasip1/release/hello.wasm"))
        );
        assert_eq!(hello_artifact(""), None);
    }
}

//! The built-in trivial functions every row runs: an echo in each backend, so newt,
//! its start kinds and its peers all do the same (next to no) work and the figures
//! measure the machinery around the function.

use anyhow::Context;

/// A WASI command that copies stdin to stdout (one read of up to 60 000 bytes) and
/// logs "echo" to stderr: the test fixture, compiled into the binary.
const ECHO_WAT: &str = include_str!("../../../tests/fixtures/echo.wat");

/// The Python function: returns its event.
pub const ECHO_PY: &str = "def handler(event):\n    return event\n";

/// What the containers' peers run per call: the same echo, through stdin and stdout.
pub const ECHO_PY_COMMAND: &str = "import json, sys; print(json.dumps(json.load(sys.stdin)))";

/// Every call's input.
pub const INPUT: &str = r#"{"bench":"newt","n":1}"#;

/// The echo compiled to a wasm module.
pub fn echo_wasm() -> anyhow::Result<Vec<u8>> {
    wat::parse_str(ECHO_WAT).context("compiling the built-in echo WAT")
}

/// The Python echo as a `.tar.gz` bundle with `main.py`.
pub fn echo_python_bundle() -> anyhow::Result<Vec<u8>> {
    newt_runtime::pack(&[("main.py", ECHO_PY.as_bytes())]).context("packing the Python echo")
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
}

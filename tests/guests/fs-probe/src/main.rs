//! fs-probe: a test guest that tries to escape the wasm sandbox and reports what
//! happened.
//!
//! It tries to read files and directories and to open a TCP connection, and writes a
//! JSON object mapping each attempt to `"error: <message>"` or to what it got
//! (`"read N bytes"`, `"read N entries"`, `"connected"`). It always exits 0 and never
//! panics, so a test can assert on every attempt at once.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::TcpStream;

/// Files a guest without preopened directories must not be able to read.
const FILES: &[&str] = &["/etc/passwd", "../../etc/passwd"];
/// Directories a guest without preopened directories must not be able to list.
const DIRECTORIES: &[&str] = &["/", "."];
/// The host's default API address: a guest must not reach it, or anything else.
const TCP_ADDRESS: &str = "127.0.0.1:7878";

fn probe() -> BTreeMap<String, String> {
    let mut results = BTreeMap::new();
    for &path in FILES {
        let result = match std::fs::read(path) {
            Ok(bytes) => format!("read {} bytes", bytes.len()),
            Err(e) => format!("error: {e}"),
        };
        results.insert(path.to_string(), result);
    }
    for &path in DIRECTORIES {
        let result = match std::fs::read_dir(path) {
            Ok(entries) => format!("read {} entries", entries.count()),
            Err(e) => format!("error: {e}"),
        };
        results.insert(path.to_string(), result);
    }
    let result = match TcpStream::connect(TCP_ADDRESS) {
        Ok(_) => "connected".to_string(),
        Err(e) => format!("error: {e}"),
    };
    results.insert(format!("tcp://{TCP_ADDRESS}"), result);
    results
}

fn main() {
    // The input is ignored; any JSON (or none) is accepted.
    newt_sdk::run(|_: serde_json::Value| Ok::<_, Infallible>(probe()))
}

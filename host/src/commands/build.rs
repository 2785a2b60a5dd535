//! `newt build`: compile a Rust function crate to a `.wasm` newt can deploy.
//!
//! This is `cargo build --release --target wasm32-wasip1` with three additions: the
//! target is checked first (cargo's own error for a missing target is a page of
//! `can't find crate for core`), the crate must be a bin (a library builds fine but
//! yields no `.wasm`), and the path of the `.wasm` is printed last on stdout, so
//! `newt deploy NAME "$(newt build | tail -n1)"` works.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// The target Rust functions run as: a WASI preview 1 command.
const TARGET: &str = "wasm32-wasip1";

/// Arguments of `newt build`.
#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// Function crate directory (default: current directory)
    #[arg(default_value = ".")]
    pub path: PathBuf,
    /// Build in debug mode
    #[arg(long)]
    pub debug: bool,
}

/// Builds the crate and prints the path of its `.wasm` as the last line of stdout.
/// Cargo's progress and diagnostics go to stderr as usual.
pub fn run(args: BuildArgs) -> Result<()> {
    let manifest = manifest_path(&args.path)?;
    let crate_dir = manifest.parent().unwrap_or(Path::new("."));
    ensure_target_installed(crate_dir)?;
    let wasm = run_cargo(cargo_command(&manifest, args.debug), &manifest)?;
    println!("{}", wasm.display());
    Ok(())
}

/// The absolute path of `<dir>/Cargo.toml`, or an error saying what `newt build` wants.
fn manifest_path(dir: &Path) -> Result<PathBuf> {
    let manifest = dir.join("Cargo.toml");
    if !manifest.is_file() {
        bail!(
            "no Cargo.toml in {}: `newt build` takes the directory of a Rust function crate \
             (create one with `newt new NAME`)",
            dir.display()
        );
    }
    manifest
        .canonicalize()
        .with_context(|| format!("could not resolve {}", manifest.display()))
}

/// Fails with the `rustup` command to run when the wasm32-wasip1 standard library is
/// missing from the toolchain that would build the crate.
fn ensure_target_installed(crate_dir: &Path) -> Result<()> {
    // Run rustc where cargo will run, so a `rust-toolchain.toml` in the crate picks the
    // same toolchain for the check as for the build; honour `RUSTC` as cargo does.
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| OsString::from("rustc"));
    let output = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .current_dir(crate_dir)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                anyhow::anyhow!("rustc not found: install Rust from https://rustup.rs")
            }
            _ => anyhow::Error::new(e).context(format!("could not run {}", rustc.display())),
        })?;
    if !output.status.success() {
        bail!("`rustc --print sysroot` failed ({})", output.status);
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    if !target_installed(&sysroot) {
        bail!("the {TARGET} target is not installed: run `rustup target add {TARGET}`");
    }
    Ok(())
}

/// Whether `<sysroot>/lib/rustlib/wasm32-wasip1/lib` exists and holds anything.
fn target_installed(sysroot: &Path) -> bool {
    let lib = sysroot.join("lib").join("rustlib").join(TARGET).join("lib");
    std::fs::read_dir(lib)
        .map(|mut entries| entries.next().is_some())
        .unwrap_or(false)
}

/// The `cargo build` command for the crate at `manifest`.
fn cargo_command(manifest: &Path, debug: bool) -> Command {
    let mut command = Command::new("cargo");
    command.arg("build");
    if !debug {
        command.arg("--release");
    }
    command
        .args(["--target", TARGET])
        // Machine-readable artifacts on stdout; cargo still renders diagnostics for
        // humans on stderr.
        .arg("--message-format=json-render-diagnostics")
        .arg("--manifest-path")
        .arg(manifest)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    command
}

/// Runs cargo, passing its human output through, and returns the `.wasm` it built for
/// the package at `manifest`.
fn run_cargo(mut command: Command, manifest: &Path) -> Result<PathBuf> {
    let mut child = command.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            anyhow::anyhow!("cargo not found: install Rust from https://rustup.rs")
        }
        _ => anyhow::Error::new(e).context("could not run cargo"),
    })?;
    let stdout = child
        .stdout
        .take()
        .context("cargo's stdout was not captured")?;
    let mut lines = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("could not read cargo's output")?;
        // Cargo writes only JSON to stdout in this mode; anything else (a build
        // script's stray print, say) is for a human.
        if !line.starts_with('{') {
            eprintln!("{line}");
        }
        lines.push(line);
    }
    let status = child.wait().context("could not wait for cargo")?;
    if !status.success() {
        bail!("cargo build failed ({status}); see the errors above");
    }
    find_wasm(lines.iter().map(String::as_str), manifest)
}

/// Finds the `.wasm` of the bin target of the package at `manifest` among cargo's
/// JSON messages (`--message-format=json`), ignoring dependencies' artifacts.
fn find_wasm<'a>(messages: impl IntoIterator<Item = &'a str>, manifest: &Path) -> Result<PathBuf> {
    let mut bins: Vec<(String, PathBuf)> = Vec::new();
    for line in messages {
        let Ok(message) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        let Some(package_manifest) = message["manifest_path"].as_str() else {
            continue;
        };
        if !same_file(Path::new(package_manifest), manifest) {
            continue;
        }
        let target = &message["target"];
        let is_bin = target["kind"]
            .as_array()
            .is_some_and(|kinds| kinds.iter().any(|kind| kind == "bin"));
        if !is_bin {
            continue;
        }
        // `executable` is set for bin targets; older cargos only list `filenames`.
        let wasm = message["executable"]
            .as_str()
            .map(PathBuf::from)
            .or_else(|| {
                message["filenames"]
                    .as_array()?
                    .iter()
                    .filter_map(Value::as_str)
                    .map(PathBuf::from)
                    .find(|file| file.extension().is_some_and(|ext| ext == "wasm"))
            });
        if let Some(wasm) = wasm {
            let name = target["name"].as_str().unwrap_or_default().to_string();
            bins.push((name, wasm));
        }
    }
    match bins.len() {
        0 => bail!(
            "cargo built no .wasm for {}: a newt function must be a bin crate \
             (a src/main.rs with `fn main`), not a library",
            manifest.display()
        ),
        1 => Ok(bins.remove(0).1),
        _ => {
            let names: Vec<&str> = bins.iter().map(|(name, _)| name.as_str()).collect();
            bail!(
                "{} has several bin targets ({}): a newt function crate must have exactly one",
                manifest.display(),
                names.join(", ")
            )
        }
    }
}

/// Whether two paths name the same file: cargo may report a manifest path through a
/// symlink or in another spelling than the one we were given.
fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cargo 1.95's messages for a function crate `fn` with one dependency, trimmed to
    /// the fields that matter plus a few that do not.
    fn sample_messages(manifest: &str, kind: &str) -> Vec<String> {
        let dependency = serde_json::json!({
            "reason": "compiler-artifact",
            "package_id": "registry+https://github.com/rust-lang/crates.io-index#serde@1.0.229",
            "manifest_path": "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/serde-1.0.229/Cargo.toml",
            "target": {"kind": ["lib"], "crate_types": ["lib"], "name": "serde"},
            "filenames": ["/t/wasm32-wasip1/release/deps/libserde-0a1b.rlib"],
            "executable": null,
            "fresh": true
        });
        let build_script = serde_json::json!({
            "reason": "build-script-executed",
            "package_id": "path+file:///work/fn#0.1.0",
            "linked_libs": [], "linked_paths": [], "cfgs": [], "env": [],
            "out_dir": "/t/release/build/fn-1234/out"
        });
        let artifact = if kind == "bin" {
            serde_json::json!({
                "reason": "compiler-artifact",
                "package_id": "path+file:///work/fn#0.1.0",
                "manifest_path": manifest,
                "target": {"kind": ["bin"], "crate_types": ["bin"], "name": "fn", "src_path": "/work/fn/src/main.rs"},
                "profile": {"opt_level": "s", "debuginfo": 0, "test": false},
                "features": [],
                "filenames": ["/t/wasm32-wasip1/release/fn.wasm"],
                "executable": "/t/wasm32-wasip1/release/fn.wasm",
                "fresh": false
            })
        } else {
            serde_json::json!({
                "reason": "compiler-artifact",
                "package_id": "path+file:///work/fn#0.1.0",
                "manifest_path": manifest,
                "target": {"kind": ["lib"], "crate_types": ["lib"], "name": "fn", "src_path": "/work/fn/src/lib.rs"},
                "filenames": ["/t/wasm32-wasip1/release/libfn.rlib"],
                "executable": null,
                "fresh": false
            })
        };
        vec![
            dependency.to_string(),
            build_script.to_string(),
            artifact.to_string(),
            r#"{"reason":"build-finished","success":true}"#.to_string(),
        ]
    }

    fn find(lines: &[String], manifest: &str) -> Result<PathBuf> {
        find_wasm(lines.iter().map(String::as_str), Path::new(manifest))
    }

    #[test]
    fn finds_the_bin_wasm_of_the_crate() {
        let lines = sample_messages("/work/fn/Cargo.toml", "bin");
        let wasm = find(&lines, "/work/fn/Cargo.toml").unwrap();
        assert_eq!(wasm, Path::new("/t/wasm32-wasip1/release/fn.wasm"));
    }

    #[test]
    fn falls_back_to_filenames_without_executable() {
        let line = r#"{"reason":"compiler-artifact","manifest_path":"/work/fn/Cargo.toml","target":{"kind":["bin"],"name":"fn"},"filenames":["/t/fn.wasm"]}"#;
        let wasm = find_wasm([line], Path::new("/work/fn/Cargo.toml")).unwrap();
        assert_eq!(wasm, Path::new("/t/fn.wasm"));
    }

    #[test]
    fn ignores_other_packages_and_non_json_lines() {
        let mut lines = sample_messages("/work/other/Cargo.toml", "bin");
        lines.insert(0, "warning: not json".to_string());
        let error = find(&lines, "/work/fn/Cargo.toml").unwrap_err();
        assert!(
            error.to_string().contains("cargo built no .wasm"),
            "{error}"
        );
    }

    #[test]
    fn a_library_crate_is_told_to_be_a_bin() {
        let lines = sample_messages("/work/fn/Cargo.toml", "lib");
        let error = find(&lines, "/work/fn/Cargo.toml").unwrap_err().to_string();
        assert!(error.contains("must be a bin crate"), "{error}");
        assert!(error.contains("/work/fn/Cargo.toml"), "{error}");
    }

    #[test]
    fn several_bins_are_refused() {
        let bin = |name: &str| {
            format!(
                r#"{{"reason":"compiler-artifact","manifest_path":"/work/fn/Cargo.toml","target":{{"kind":["bin"],"name":"{name}"}},"executable":"/t/{name}.wasm"}}"#
            )
        };
        let lines = [bin("one"), bin("two")];
        let error = find(&lines, "/work/fn/Cargo.toml").unwrap_err().to_string();
        assert!(error.contains("several bin targets (one, two)"), "{error}");
    }

    #[test]
    fn manifest_paths_match_through_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::fs::write(real.join("Cargo.toml"), "").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();

        let reported = link.join("Cargo.toml");
        let lines = sample_messages(reported.to_str().unwrap(), "bin");
        let manifest = real.join("Cargo.toml").canonicalize().unwrap();
        let wasm = find(&lines, manifest.to_str().unwrap()).unwrap();
        assert_eq!(wasm, Path::new("/t/wasm32-wasip1/release/fn.wasm"));
    }

    #[test]
    fn missing_cargo_toml_is_explained() {
        let dir = tempfile::tempdir().unwrap();
        let error = manifest_path(dir.path()).unwrap_err().to_string();
        assert!(error.starts_with("no Cargo.toml in "), "{error}");
    }

    #[test]
    fn target_is_installed_only_with_a_non_empty_lib_dir() {
        let sysroot = tempfile::tempdir().unwrap();
        assert!(!target_installed(sysroot.path()));
        let lib = sysroot.path().join("lib/rustlib/wasm32-wasip1/lib");
        std::fs::create_dir_all(&lib).unwrap();
        assert!(!target_installed(sysroot.path()));
        std::fs::write(lib.join("libstd.rlib"), "").unwrap();
        assert!(target_installed(sysroot.path()));
    }

    /// Writes a standalone crate with no dependencies into `dir`.
    fn write_crate(dir: &Path, source_file: &str, source: &str) {
        std::fs::create_dir_all(dir.join("src")).unwrap();
        std::fs::write(
            dir.join("Cargo.toml"),
            "[package]\nname = \"probe\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[workspace]\n",
        )
        .unwrap();
        std::fs::write(dir.join("src").join(source_file), source).unwrap();
    }

    /// Builds with real cargo into a private target dir, so the test neither waits on
    /// nor disturbs the target dir of the `cargo test` running it.
    fn build_for_test(dir: &Path) -> Option<Result<PathBuf>> {
        let manifest = manifest_path(dir).unwrap();
        if let Err(e) = ensure_target_installed(dir) {
            eprintln!("skipping: {e:#}");
            return None;
        }
        let mut command = cargo_command(&manifest, true);
        command.env("CARGO_TARGET_DIR", dir.join("target"));
        // The compile error one test provokes on purpose would read as a failure in
        // the test log.
        command.stderr(Stdio::null());
        Some(run_cargo(command, &manifest))
    }

    #[test]
    fn builds_a_bin_crate_to_wasm() {
        let dir = tempfile::tempdir().unwrap();
        write_crate(dir.path(), "main.rs", "fn main() { println!(\"hi\"); }\n");
        let Some(result) = build_for_test(dir.path()) else {
            return;
        };
        let wasm = result.unwrap();
        assert!(
            wasm.ends_with("wasm32-wasip1/debug/probe.wasm"),
            "{}",
            wasm.display()
        );
        let bytes = std::fs::read(&wasm).unwrap();
        assert_eq!(&bytes[..4], b"\0asm");
    }

    #[test]
    fn a_library_crate_builds_no_wasm() {
        let dir = tempfile::tempdir().unwrap();
        write_crate(dir.path(), "lib.rs", "pub fn f() {}\n");
        let Some(result) = build_for_test(dir.path()) else {
            return;
        };
        let error = result.unwrap_err().to_string();
        assert!(error.contains("must be a bin crate"), "{error}");
    }

    #[test]
    fn a_compile_error_fails_the_build() {
        let dir = tempfile::tempdir().unwrap();
        write_crate(dir.path(), "main.rs", "fn main() { not_rust }\n");
        let Some(result) = build_for_test(dir.path()) else {
            return;
        };
        let error = result.unwrap_err().to_string();
        assert!(error.starts_with("cargo build failed"), "{error}");
    }
}

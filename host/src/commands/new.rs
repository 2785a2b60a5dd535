//! `newt new`: scaffold a function: a Rust crate that `newt build` turns into a
//! deployable `.wasm`, or a Python directory that `newt deploy` packs as it is.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Where the SDK sits relative to this crate in the newt source tree. A scaffold made
/// inside a newt checkout points at that checkout's `sdk/`; elsewhere it points at the
/// SDK of the source tree this `newt` was built from. A `newt` installed elsewhere needs
/// `--sdk` (or `NEWT_SDK_PATH`) until newt-sdk is published.
const SOURCE_TREE_SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../sdk");

/// Longest function name: fits in a DNS label, a container label and a file name.
const MAX_NAME_LEN: usize = 63;

/// Bin target names cargo refuses because they clash with its own output directories.
const CARGO_RESERVED_BIN_NAMES: &[&str] = &["build", "deps", "examples", "incremental"];

/// Arguments of `newt new`.
#[derive(Debug, clap::Args)]
pub struct NewArgs {
    /// Function name: 1-63 of a-z, 0-9 and '-', not starting with '-'
    pub name: String,
    /// Language of the function
    #[arg(long, value_enum, default_value = "rust")]
    pub lang: Lang,
    /// Parent directory
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Path to the newt-sdk crate (default: the `sdk/` of the newt checkout the function
    /// is created in, else of the source tree this newt was built from)
    #[arg(long, env = "NEWT_SDK_PATH")]
    pub sdk: Option<PathBuf>,
}

/// Languages `newt new` can scaffold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// A Rust crate using newt-sdk, built to wasm32-wasip1 by `newt build`.
    Rust,
    /// A directory with main.py and requirements.txt, run by the `python` runtime.
    Python,
}

/// Writes `<dir>/<name>/` and prints the next steps.
pub fn run(args: NewArgs) -> Result<()> {
    validate_function_name(&args.name)?;
    let crate_dir = args.dir.join(&args.name);
    match args.lang {
        Lang::Rust => {
            let sdk = match &args.sdk {
                Some(path) => sdk_path(path)?,
                None => match enclosing_checkout_sdk(&args.dir) {
                    Some(sdk) => sdk,
                    None => default_sdk_path()?,
                },
            };
            scaffold_rust(&crate_dir, &args.name, &sdk)?;
        }
        Lang::Python => scaffold_python(&crate_dir, &args.name)?,
    }
    println!(
        "Created function `{}` in {}",
        args.name,
        crate_dir.display()
    );
    println!();
    println!("Next steps:");
    let dir = crate_dir.display();
    match args.lang {
        Lang::Rust => {
            println!(
                "  newt deploy {} {dir}    # builds the crate, then deploys the .wasm",
                args.name
            );
        }
        Lang::Python => {
            println!("  newt deploy {} {dir} --runtime python --wait", args.name);
        }
    }
    println!("  newt invoke {} '{{\"name\":\"x\"}}'", args.name);
    println!(
        "  newt dev {dir} --name {}    # redeploys on every save",
        args.name
    );
    Ok(())
}

/// Checks `name` against the function-name rule `[a-z0-9][a-z0-9-]{0,62}`.
pub(crate) fn validate_function_name(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !valid {
        bail!(
            "invalid function name {name:?}: use 1-{MAX_NAME_LEN} characters of a-z, 0-9 \
             and '-', starting with a letter or digit"
        );
    }
    Ok(())
}

/// The SDK of the newt checkout `dir` lies in: the nearest ancestor of `dir` (which
/// need not exist yet) with an `sdk/` holding the newt-sdk crate.
///
/// Checked before the build-time source tree because one `newt` binary often serves
/// several checkouts (worktrees sharing a `CARGO_TARGET_DIR`): a function made inside
/// one of them must build against that checkout's SDK, not whichever built the binary.
fn enclosing_checkout_sdk(dir: &Path) -> Option<PathBuf> {
    let dir = std::path::absolute(dir).ok()?;
    dir.ancestors()
        .map(|ancestor| ancestor.join("sdk"))
        .find(|sdk| is_newt_sdk(sdk))?
        .canonicalize()
        .ok()
}

/// Whether `dir` is the newt-sdk crate's directory.
fn is_newt_sdk(dir: &Path) -> bool {
    fs::read_to_string(dir.join("Cargo.toml")).is_ok_and(|manifest| {
        manifest
            .lines()
            .any(|line| line.trim() == r#"name = "newt-sdk""#)
    })
}

/// The fallback SDK: the one in the source tree this binary was built from.
fn default_sdk_path() -> Result<PathBuf> {
    let path = Path::new(SOURCE_TREE_SDK);
    match path.canonicalize() {
        Ok(sdk) if sdk.join("Cargo.toml").is_file() => Ok(sdk),
        _ => bail!(
            "cannot find the newt SDK at {} (the source tree this newt was built from): \
             pass --sdk <path to the newt-sdk crate> or set NEWT_SDK_PATH",
            path.display()
        ),
    }
}

/// The absolute path of a user-given SDK crate directory.
fn sdk_path(path: &Path) -> Result<PathBuf> {
    let sdk = path
        .canonicalize()
        .with_context(|| format!("--sdk {}: no such directory", path.display()))?;
    if !sdk.join("Cargo.toml").is_file() {
        bail!(
            "--sdk {}: not a crate directory (no Cargo.toml); pass the newt-sdk crate's directory",
            path.display()
        );
    }
    Ok(sdk)
}

/// Creates `crate_dir` with a standalone Rust function crate named `name`.
fn scaffold_rust(crate_dir: &Path, name: &str, sdk: &Path) -> Result<()> {
    // The function name is also the Cargo package and bin name, which cargo restricts
    // further than newt does.
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        bail!(
            "a Rust function's name must start with a letter: it is also the Cargo package \
             name (try `fn-{name}`)"
        );
    }
    if CARGO_RESERVED_BIN_NAMES.contains(&name) {
        bail!("cargo reserves `{name}` as a binary name: choose another function name");
    }
    let sdk = sdk
        .to_str()
        .with_context(|| format!("the SDK path {} is not UTF-8", sdk.display()))?;

    create_new_dir(crate_dir)?;
    let written = write_rust_files(crate_dir, name, sdk);
    if written.is_err() {
        // Leave nothing half-written behind: the directory is ours, we just made it.
        let _ = fs::remove_dir_all(crate_dir);
    }
    written
}

/// Creates `dir` (and its parents), refusing one that exists already.
fn create_new_dir(dir: &Path) -> Result<()> {
    if dir.symlink_metadata().is_ok() {
        bail!(
            "{} already exists: choose another name or --dir",
            dir.display()
        );
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)
            .with_context(|| format!("could not create {}", parent.display()))?;
    }
    fs::create_dir(dir).with_context(|| format!("could not create {}", dir.display()))
}

fn write_rust_files(crate_dir: &Path, name: &str, sdk: &str) -> Result<()> {
    let files = [
        ("Cargo.toml", rust_cargo_toml(name, sdk)),
        ("src/main.rs", rust_main(name)),
        (".gitignore", "/target\n".to_string()),
    ];
    for (relative, contents) in files {
        let path = crate_dir.join(relative);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .with_context(|| format!("could not create {}", parent.display()))?;
        }
        fs::write(&path, contents)
            .with_context(|| format!("could not write {}", path.display()))?;
    }
    Ok(())
}

fn rust_cargo_toml(name: &str, sdk: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

# Standalone: not a member of any workspace in a directory above this one.
[workspace]

[dependencies]
newt-sdk = {{ path = {sdk} }}
serde = {{ version = "1", features = ["derive"] }}

# Small modules compile and load faster in the host.
[profile.release]
opt-level = "s"
lto = true
strip = true
"#,
        sdk = toml_string(sdk),
    )
}

/// `s` as a TOML basic string, quotes included.
fn toml_string(s: &str) -> String {
    let mut quoted = String::with_capacity(s.len() + 2);
    quoted.push('"');
    for c in s.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            c if c.is_control() => quoted.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// Creates `dir` with a Python function `name`: `main.py` and `requirements.txt`.
fn scaffold_python(dir: &Path, name: &str) -> Result<()> {
    create_new_dir(dir)?;
    let files = [
        ("main.py", python_main(name)),
        ("requirements.txt", PYTHON_REQUIREMENTS.to_string()),
    ];
    let written = files.iter().try_for_each(|(relative, contents)| {
        let path = dir.join(relative);
        fs::write(&path, contents).with_context(|| format!("could not write {}", path.display()))
    });
    if written.is_err() {
        // Leave nothing half-written behind: the directory is ours, we just made it.
        let _ = fs::remove_dir_all(dir);
    }
    written
}

/// `requirements.txt` of a new Python function: none yet, and how to add some.
const PYTHON_REQUIREMENTS: &str = "\
# Packages this function imports, one per line (pip's requirements format), e.g.
#   requests==2.32.3
# They are installed into the function's image at deploy. The build has no network
# unless the server allows it (`newt serve --build-network bridge`): otherwise put the
# wheels in a wheels/ folder beside this file and they install from there.
";

/// `main.py` of a new Python function `name`: a handler that works as it is, with the
/// deploy command and the conventions it relies on in its docstring.
fn python_main(name: &str) -> String {
    format!(
        r#""""{name}: a newt function in Python.

Deploy this directory (newt packs it, builds the function's image and waits until it
is ready), call it, and redeploy on every save while you work on it:

    newt deploy {name} {name} --runtime python --wait
    newt invoke {name} '{{"name": "Ada"}}'      # {{"greeting": "Hello, Ada!"}}
    newt dev {name}

`handler(event)` gets the call's JSON input and returns anything JSON-serialisable; it
may take a second argument, `context` (function_name, call_id, deadline_ms,
remaining_ms()). print() and stderr come back as the call's logs; an exception fails
the call with its traceback. Packages go in requirements.txt.

Called over HTTP (at /fn/{name}, or a path given with `newt route add PATH {name}`),
`event` is the request: {{"method", "path", "query", "headers", "body"}}. Return
{{"statusCode": 201, "headers": {{...}}, "body": "..."}} to choose the status and the
headers; any other value is a 200 JSON answer.
"""

import os


def handler(event):
    # Variables set with `newt env set {name} GREETING=Hi` (or `newt deploy ... --env
    # GREETING=Hi`) and secrets set with `newt secret set` are in os.environ.
    greeting = os.environ.get("GREETING", "Hello")
    name = event.get("name", "world") if isinstance(event, dict) else "world"
    print(f"greeting {{name!r}}")  # shows in the call's logs: `newt call ID`
    return {{"greeting": f"{{greeting}}, {{name}}!"}}
"#
    )
}

/// `examples/hello/src/main.rs`, the function `make run` deploys and the end-to-end
/// tests call: a new Rust function starts as a copy of it, so the two cannot drift.
const HELLO_MAIN: &str = include_str!("../../../examples/hello/src/main.rs");

/// How `HELLO_MAIN` names itself in its first line; the copy names the new function.
const HELLO_TITLE: &str = "//! hello:";

/// `src/main.rs` of a new Rust function `name`: the hello example, retitled.
fn rust_main(name: &str) -> String {
    match HELLO_MAIN.strip_prefix(HELLO_TITLE) {
        Some(rest) => format!("//! {name}:{rest}"),
        None => HELLO_MAIN.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use newt_runtime::{
        CallOutcome, CallRequest, CallResult, Cas, FunctionSpec, Invoker, Limits, WasmConfig,
        WasmExecutor,
    };

    #[test]
    fn valid_function_names() {
        let longest = "a".repeat(63);
        for name in [
            "a",
            "hello",
            "dice-2",
            "0day",
            "a--b",
            "z-",
            longest.as_str(),
        ] {
            validate_function_name(name).unwrap();
        }
    }

    #[test]
    fn invalid_function_names_are_explained() {
        let too_long = "a".repeat(64);
        for name in [
            "",
            "-a",
            "Hello",
            "a_b",
            "a.b",
            "a b",
            "héllo",
            "../x",
            too_long.as_str(),
        ] {
            let error = validate_function_name(name).unwrap_err().to_string();
            assert!(
                error.contains("use 1-63 characters of a-z, 0-9 and '-'"),
                "{name:?}: {error}"
            );
        }
    }

    #[test]
    fn default_sdk_is_this_source_tree() {
        let sdk = default_sdk_path().unwrap();
        assert!(sdk.is_absolute());
        let manifest = fs::read_to_string(sdk.join("Cargo.toml")).unwrap();
        assert!(manifest.contains(r#"name = "newt-sdk""#), "{manifest}");
    }

    #[test]
    fn sdk_must_be_a_crate() {
        let dir = tempfile::tempdir().unwrap();
        let error = sdk_path(dir.path()).unwrap_err().to_string();
        assert!(error.contains("no Cargo.toml"), "{error}");
        let error = sdk_path(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("no such directory"), "{error}");
    }

    fn new_args(name: &str, dir: &Path) -> NewArgs {
        NewArgs {
            name: name.to_string(),
            lang: Lang::Rust,
            dir: dir.to_path_buf(),
            sdk: Some(PathBuf::from(SOURCE_TREE_SDK)),
        }
    }

    #[test]
    fn scaffolds_a_rust_function() {
        let parent = tempfile::tempdir().unwrap();
        run(new_args("greeter", parent.path())).unwrap();

        let crate_dir = parent.path().join("greeter");
        let cargo_toml = fs::read_to_string(crate_dir.join("Cargo.toml")).unwrap();
        let sdk = default_sdk_path().unwrap();
        for expected in [
            "name = \"greeter\"".to_string(),
            "\n[workspace]\n".to_string(),
            format!("newt-sdk = {{ path = \"{}\" }}", sdk.display()),
            r#"serde = { version = "1", features = ["derive"] }"#.to_string(),
            "[profile.release]\nopt-level = \"s\"\nlto = true\nstrip = true\n".to_string(),
        ] {
            assert!(
                cargo_toml.contains(&expected),
                "{expected}\n---\n{cargo_toml}"
            );
        }

        // The hello example, byte for byte, but for the name in its first line.
        let main = fs::read_to_string(crate_dir.join("src/main.rs")).unwrap();
        let (title, body) = main.split_once('\n').unwrap();
        assert!(title.starts_with("//! greeter: "), "{main}");
        assert_eq!(body, HELLO_MAIN.split_once('\n').unwrap().1);

        let gitignore = fs::read_to_string(crate_dir.join(".gitignore")).unwrap();
        assert_eq!(gitignore, "/target\n");
    }

    #[test]
    fn the_template_is_the_hello_example() {
        assert!(HELLO_MAIN.starts_with(HELLO_TITLE), "{HELLO_MAIN}");
        assert!(
            HELLO_MAIN.contains("newt_sdk::run(handler)"),
            "{HELLO_MAIN}"
        );
        assert_eq!(rust_main("hello"), HELLO_MAIN);
        assert!(rust_main("greeter").starts_with("//! greeter: "));
    }

    #[test]
    fn a_function_made_inside_a_checkout_uses_that_checkouts_sdk() {
        // Anywhere inside this source tree (even a directory not made yet) finds its sdk/.
        let here = Path::new(env!("CARGO_MANIFEST_DIR"));
        assert_eq!(
            enclosing_checkout_sdk(&here.join("not/made/yet")),
            Some(default_sdk_path().unwrap())
        );

        // Another checkout (a second worktree, say) gets its own SDK, not the one of the
        // tree this newt was built from.
        let other = tempfile::tempdir().unwrap();
        fs::create_dir(other.path().join("sdk")).unwrap();
        fs::write(
            other.path().join("sdk/Cargo.toml"),
            "[package]\nname = \"newt-sdk\"\n",
        )
        .unwrap();
        let mut args = new_args("greeter", &other.path().join("functions"));
        args.sdk = None;
        run(args).unwrap();
        let cargo_toml =
            fs::read_to_string(other.path().join("functions/greeter/Cargo.toml")).unwrap();
        let sdk = other.path().join("sdk").canonicalize().unwrap();
        let expected = format!(
            "newt-sdk = {{ path = {} }}",
            toml_string(sdk.to_str().unwrap())
        );
        assert!(
            cargo_toml.contains(&expected),
            "{expected}\n---\n{cargo_toml}"
        );
    }

    #[test]
    fn creates_missing_parent_directories() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("functions/rust");
        run(new_args("greeter", &dir)).unwrap();
        assert!(dir.join("greeter/Cargo.toml").is_file());
    }

    #[test]
    fn refuses_an_existing_directory() {
        let parent = tempfile::tempdir().unwrap();
        fs::create_dir(parent.path().join("taken")).unwrap();
        let error = run(new_args("taken", parent.path()))
            .unwrap_err()
            .to_string();
        assert!(error.contains("already exists"), "{error}");
        // Nothing was written into it.
        assert!(!parent.path().join("taken/Cargo.toml").exists());
    }

    #[test]
    fn refuses_names_cargo_cannot_build() {
        let parent = tempfile::tempdir().unwrap();
        let error = run(new_args("2fa", parent.path())).unwrap_err().to_string();
        assert!(error.contains("must start with a letter"), "{error}");
        let error = run(new_args("build", parent.path()))
            .unwrap_err()
            .to_string();
        assert!(error.contains("cargo reserves `build`"), "{error}");
        assert!(fs::read_dir(parent.path()).unwrap().next().is_none());
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_string("/a/b"), r#""/a/b""#);
        assert_eq!(toml_string(r#"C:\x "y""#), r#""C:\\x \"y\"""#);
        assert_eq!(toml_string("a\nb"), r#""a\u000Ab""#);
    }

    /// A new function passes its own tests, builds for wasm32-wasip1 and answers on
    /// newt's engine. It compiles serde and serde_json for the host and for
    /// wasm32-wasip1, so it needs that target and the crate registry (or a warm cargo
    /// cache), as `make test` does.
    #[test]
    fn scaffold_passes_its_tests_builds_to_wasm_and_answers() {
        let parent = tempfile::tempdir().unwrap();
        run(new_args("greeter", parent.path())).unwrap();
        let crate_dir = parent.path().join("greeter");
        let target_dir = parent.path().join("target");

        cargo_in(&crate_dir, &target_dir, &["test"]);
        cargo_in(
            &crate_dir,
            &target_dir,
            &["build", "--release", "--target", "wasm32-wasip1"],
        );
        let wasm = fs::read(target_dir.join("wasm32-wasip1/release/greeter.wasm")).unwrap();

        let outcome = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(invoke_in_process(&parent.path().join("home"), &wasm))
            .unwrap();
        assert_eq!(outcome.result, CallResult::Done, "{outcome:?}");
        assert_eq!(&outcome.output[..], br#"{"greeting":"Hello, x!"}"#);
    }

    /// Runs the cargo that runs these tests with `args` in `dir`; its output is shown
    /// only when it fails.
    fn cargo_in(dir: &Path, target_dir: &Path, args: &[&str]) {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let output = std::process::Command::new(cargo)
            .args(args)
            .current_dir(dir)
            .env("CARGO_TARGET_DIR", target_dir)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "cargo {} in the scaffold: {}\n{}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        );
    }

    /// Calls `wasm` once with `{"name":"x"}` on newt's engine, with `home` for its store.
    async fn invoke_in_process(home: &Path, wasm: &[u8]) -> anyhow::Result<CallOutcome> {
        let cas = Cas::open(home.join("cas"))?;
        let digest = cas.put(wasm)?;
        let executor = WasmExecutor::new(WasmConfig {
            cache_dir: home.join("cache"),
            pooling: false,
        })?;
        let invoker = Invoker::new(cas).with_executor(executor);
        let spec = std::sync::Arc::new(FunctionSpec {
            name: "greeter".into(),
            version: 1,
            runtime: "wasm".into(),
            digest: digest.to_string(),
            limits: Limits::default(),
            policy: newt_runtime::Policy::default(),
            env: Default::default(),
            allow_outbound: Default::default(),
        });
        let request = CallRequest {
            call_id: "scaffold".into(),
            input: bytes::Bytes::from_static(br#"{"name":"x"}"#),
            http: None,
        };
        let deadline = std::time::Instant::now() + spec.limits.timeout();
        Ok(invoker.invoke(&spec, request, deadline).await?)
    }

    #[test]
    fn scaffolds_a_python_function_that_runs() {
        let parent = tempfile::tempdir().unwrap();
        let args = NewArgs {
            lang: Lang::Python,
            sdk: None,
            ..new_args("hi-py", parent.path())
        };
        run(args).unwrap();
        let dir = parent.path().join("hi-py");
        let main = fs::read_to_string(dir.join("main.py")).unwrap();
        for expected in [
            "def handler(event):",
            "os.environ.get(\"GREETING\", \"Hello\")",
            "\"statusCode\": 201",
            "newt deploy hi-py hi-py --runtime python --wait",
        ] {
            assert!(main.contains(expected), "{expected}\n{main}");
        }
        let requirements = fs::read_to_string(dir.join("requirements.txt")).unwrap();
        assert!(
            requirements
                .lines()
                .all(|l| l.is_empty() || l.starts_with('#')),
            "{requirements}"
        );

        // The handler as the agent calls it, where a Python is installed.
        let script = "import json, main; print(json.dumps(main.handler({'name': 'Ada'})))";
        let output = match std::process::Command::new("python3")
            .args(["-B", "-c", script])
            .current_dir(&dir)
            .env("GREETING", "Hi")
            .output()
        {
            Ok(output) => output,
            Err(e) => {
                eprintln!("skipped running main.py: no python3 here ({e})");
                return;
            }
        };
        assert!(output.status.success(), "{output:?}");
        assert_eq!(
            String::from_utf8_lossy(&output.stdout).lines().last(),
            Some(r#"{"greeting": "Hi, Ada!"}"#)
        );
    }

    #[test]
    fn refuses_an_existing_python_directory() {
        let parent = tempfile::tempdir().unwrap();
        fs::create_dir(parent.path().join("taken")).unwrap();
        let args = NewArgs {
            lang: Lang::Python,
            ..new_args("taken", parent.path())
        };
        let error = run(args).unwrap_err().to_string();
        assert!(error.contains("already exists"), "{error}");
    }
}

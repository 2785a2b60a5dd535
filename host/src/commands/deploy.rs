//! `newt deploy NAME PATH`: upload a bundle as a new version of a function.

use anyhow::Context;
use reqwest::Method;
use std::path::PathBuf;

use crate::client::{Client, ClientOpts, decode, encode};
use crate::wire::FunctionView;

/// Arguments of `newt deploy`.
#[derive(Debug, clap::Args)]
pub struct DeployArgs {
    /// Function name: a-z, 0-9 and '-', up to 63 characters.
    pub name: String,
    /// The bundle: a .wasm file for the wasm runtime, a .tar.gz or .zip holding
    /// main.py (and requirements.txt, wheels/) for a container runtime.
    pub path: PathBuf,
    /// Runtime that runs it: wasm, python, or a registered runtime.
    #[arg(long, default_value = "wasm")]
    pub runtime: String,
    /// For a container runtime: wait until its image is built (or failed).
    #[arg(long)]
    pub wait: bool,
    /// Deadline of one call, in milliseconds [server default: 30000].
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// Memory limit, in MiB [server default: 128].
    #[arg(long)]
    pub memory_mb: Option<u64>,
    /// Largest output, in bytes [server default: 6 MiB].
    #[arg(long)]
    pub max_output_bytes: Option<u64>,
    /// Largest log kept per call, in bytes [server default: 1 MiB].
    #[arg(long)]
    pub max_log_bytes: Option<u64>,
    /// Preload policy: none, runtime or function [default: the runtime's].
    #[arg(long)]
    pub preload: Option<String>,
    /// Instances kept ready at all times.
    #[arg(long)]
    pub min_warm: Option<u64>,
    /// Most instances at once; calls beyond wait, then get 429.
    #[arg(long)]
    pub max_instances: Option<u64>,
    /// How long idle instances above min_warm live (e.g. 60s, 500ms).
    #[arg(long)]
    pub keep_alive: Option<String>,
    /// Calls that may wait when all instances are busy.
    #[arg(long)]
    pub max_queue: Option<u64>,
    /// A variable to set, KEY=VALUE (repeat for more; a redeploy keeps the others).
    /// Secrets are set with `newt secret set`, never on the command line.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Where the function may connect, HOST:PORT (repeat, or separate with commas);
    /// replaces the previous list. Without it: the previous list (none at first).
    #[arg(
        long = "allow-outbound",
        value_name = "HOST:PORT",
        value_delimiter = ','
    )]
    pub allow_outbound: Vec<String>,
    #[command(flatten)]
    pub client: ClientOpts,
}

/// Uploads the bundle and prints the version the server made of it.
pub async fn run(args: DeployArgs) -> anyhow::Result<()> {
    let bytes = tokio::fs::read(&args.path)
        .await
        .with_context(|| format!("reading {}", args.path.display()))?;
    let mut query = vec![format!("runtime={}", encode(&args.runtime))];
    if args.wait {
        query.push("wait=true".into());
    }
    for (key, value) in [
        ("timeout_ms", args.timeout_ms),
        ("memory_mb", args.memory_mb),
        ("max_output_bytes", args.max_output_bytes),
        ("max_log_bytes", args.max_log_bytes),
        ("min_warm", args.min_warm),
        ("max_instances", args.max_instances),
        ("max_queue", args.max_queue),
    ] {
        if let Some(value) = value {
            query.push(format!("{key}={value}"));
        }
    }
    for (key, value) in [("preload", &args.preload), ("keep_alive", &args.keep_alive)] {
        if let Some(value) = value {
            query.push(format!("{key}={}", encode(value)));
        }
    }
    if !args.allow_outbound.is_empty() {
        query.push(format!(
            "allow_outbound={}",
            encode(&args.allow_outbound.join(","))
        ));
    }
    let mut env = serde_json::Map::new();
    for pair in &args.env {
        let Some((name, value)) = pair.split_once('=') else {
            anyhow::bail!("--env expects KEY=VALUE, got {pair:?}");
        };
        env.insert(name.to_string(), value.into());
    }
    let client = Client::new(&args.client)?;
    let path = format!("/v1/functions/{}?{}", encode(&args.name), query.join("&"));
    let mut request = client.request(Method::PUT, &path).body(bytes);
    if !env.is_empty() {
        request = request.header("x-newt-env", ascii_json(&serde_json::Value::Object(env)));
    }
    let response = client.send(request).await?;
    let verb = match response.status().as_u16() {
        201 => "deployed",
        202 => "building",
        _ => "unchanged:",
    };
    let body: serde_json::Value = response.json().await.context("invalid JSON from server")?;
    if args.client.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
    } else {
        let function: FunctionView = decode(body)?;
        let digest = &function.digest;
        println!(
            "{} {} v{} ({} bytes, sha256 {})",
            verb,
            args.name,
            function.version,
            function.size,
            &digest[..digest.len().min(12)]
        );
        if verb == "building" {
            println!("its image is being built: `newt functions` shows when it is ready");
        }
    }
    Ok(())
}

/// JSON with every character beyond ASCII escaped (`\uXXXX`), so it fits in a header.
fn ascii_json(value: &serde_json::Value) -> String {
    let mut out = String::new();
    for c in value.to_string().chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            for unit in c.encode_utf16(&mut [0; 2]) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn header_json_is_ascii_and_reads_back() {
        let value = serde_json::json!({"GREETING": "grüß dich 👋"});
        let text = super::ascii_json(&value);
        assert!(text.is_ascii(), "{text}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text).unwrap(),
            value
        );
    }
}

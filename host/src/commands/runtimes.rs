//! `newt runtimes`: list container runtimes, register one from a JSON file, remove one.

use anyhow::Context;
use reqwest::Method;
use std::path::PathBuf;

use crate::client::{Client, ClientOpts, cell, decode, encode, print_table};
use crate::wire::{RuntimeList, RuntimeView};

/// Arguments of `newt runtimes`.
#[derive(Debug, clap::Args)]
pub struct RuntimesArgs {
    /// Register the runtime in this JSON file (the seed's runtime object:
    /// name, image, path, dependencies, run, and optionally mode).
    #[arg(long, value_name = "FILE", conflicts_with = "remove")]
    pub add: Option<PathBuf>,
    /// Remove this runtime (refused while functions use it).
    #[arg(long, value_name = "NAME")]
    pub remove: Option<String>,
    #[command(flatten)]
    pub client: ClientOpts,
}

/// Lists runtimes, or registers / removes one first.
pub async fn run(args: RuntimesArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.client)?;
    if let Some(file) = &args.add {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let runtime: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", file.display()))?;
        let registered: RuntimeView = client
            .send_json(client.request(Method::POST, "/v1/runtimes").json(&runtime))
            .await?;
        println!("registered {}", registered.name);
        return Ok(());
    }
    if let Some(name) = &args.remove {
        let path = format!("/v1/runtimes/{}", encode(name));
        client.send(client.request(Method::DELETE, &path)).await?;
        println!("removed {name}");
        return Ok(());
    }
    let body: serde_json::Value = client.get("/v1/runtimes").await?;
    if args.client.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(());
    }
    let list: RuntimeList = decode(body)?;
    let rows: Vec<Vec<String>> = list
        .runtimes
        .iter()
        .map(|r| vec![cell(&r.name), cell(&r.mode), cell(&r.image), cell(&r.run)])
        .collect();
    print_table(&["NAME", "MODE", "IMAGE", "RUN"], &rows);
    Ok(())
}

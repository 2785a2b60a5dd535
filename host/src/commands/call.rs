//! `newt call ID`: show one call in full.

use crate::client::{Client, ClientOpts, cell, encode, timestamp};

/// Arguments of `newt call`.
#[derive(Debug, clap::Args)]
pub struct CallArgs {
    /// The call id (from `x-newt-call-id`, `newt invoke` or `newt calls`).
    pub id: String,
    #[command(flatten)]
    pub client: ClientOpts,
}

/// Prints the call's status, timings, output, error and logs.
pub async fn run(args: CallArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.client)?;
    let call = client
        .get_json(&format!("/v1/calls/{}", encode(&args.id)))
        .await?;
    if args.client.json {
        println!("{}", serde_json::to_string_pretty(&call)?);
        return Ok(());
    }
    let t = &call["timings"];
    println!("call      {}", cell(&call["id"]));
    println!(
        "function  {} v{}",
        cell(&call["function"]),
        cell(&call["version"])
    );
    println!("status    {}", cell(&call["status"]));
    println!("start     {}", cell(&call["start"]));
    println!(
        "timings   queue {} ms, init {} ms, exec {} ms",
        cell(&t["queue_ms"]),
        cell(&t["init_ms"]),
        cell(&t["exec_ms"])
    );
    println!("created   {} UTC", timestamp(&call["created_at"]));
    println!("input     {}", call["input"]);
    if !call["output"].is_null() {
        println!("output    {}", call["output"]);
    }
    if !call["error"].is_null() {
        println!("error     {}", cell(&call["error"]));
    }
    let logs = call["logs"].as_str().unwrap_or("");
    if !logs.is_empty() {
        println!("logs:");
        for line in logs.lines() {
            println!("  {line}");
        }
    }
    Ok(())
}

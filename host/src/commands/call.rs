//! `newt call ID`: show one call in full.

use crate::client::{Client, ClientOpts, cell, decode, encode, timestamp};
use crate::wire::CallDetailView;

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
    let body: serde_json::Value = client
        .get(&format!("/v1/calls/{}", encode(&args.id)))
        .await?;
    if args.client.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(());
    }
    let detail: CallDetailView = decode(body)?;
    let call = &detail.call;
    let t = &call.timings;
    println!("call      {}", cell(&call.id));
    println!(
        "function  {} v{}",
        cell(&call.function),
        cell(&call.version)
    );
    println!("status    {}", cell(&call.status));
    if call.attempts > 1 {
        println!(
            "attempts  {} (a host restart interrupted the earlier ones)",
            call.attempts
        );
    }
    println!("start     {}", cell(&call.start));
    println!(
        "timings   queue {} ms, init {} ms, exec {} ms",
        cell(&t.queue_ms),
        cell(&t.init_ms),
        cell(&t.exec_ms)
    );
    println!("created   {} UTC", timestamp(&call.created_at));
    // Input and output are the call's own JSON (or strings): printed as JSON.
    println!("input     {}", detail.input);
    if !detail.output.is_null() {
        println!("output    {}", detail.output);
    }
    if let Some(error) = &call.error {
        println!("error     {error}");
    }
    if !detail.logs.is_empty() {
        println!("logs:");
        for line in detail.logs.lines() {
            println!("  {line}");
        }
    }
    Ok(())
}

//! `newt calls`: list recent calls, newest first.

use crate::client::{Client, ClientOpts, cell, decode, encode, print_table, timestamp};
use crate::wire::CallList;

/// Arguments of `newt calls`.
#[derive(Debug, clap::Args)]
pub struct CallsArgs {
    /// Only calls of this function.
    #[arg(long)]
    pub function: Option<String>,
    /// Only calls in this status: pending, running, done, failed, timeout,
    /// cancelled.
    #[arg(long)]
    pub status: Option<String>,
    /// How many calls (1-1000).
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    #[command(flatten)]
    pub client: ClientOpts,
}

/// Prints one row per call.
pub async fn run(args: CallsArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.client)?;
    let mut query = vec![format!("limit={}", args.limit)];
    if let Some(function) = &args.function {
        query.push(format!("function={}", encode(function)));
    }
    if let Some(status) = &args.status {
        query.push(format!("status={}", encode(status)));
    }
    let body: serde_json::Value = client
        .get(&format!("/v1/calls?{}", query.join("&")))
        .await?;
    if args.client.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(());
    }
    let list: CallList = decode(body)?;
    let rows: Vec<Vec<String>> = list
        .calls
        .iter()
        .map(|c| {
            vec![
                cell(&c.id),
                cell(&c.function),
                cell(&c.version),
                cell(&c.status),
                cell(&c.start),
                cell(&c.timings.exec_ms),
                timestamp(&c.created_at),
            ]
        })
        .collect();
    print_table(
        &[
            "ID",
            "FUNCTION",
            "VERSION",
            "STATUS",
            "START",
            "EXEC MS",
            "CREATED (UTC)",
        ],
        &rows,
    );
    Ok(())
}

//! `newt pools`: every live pool, its instances and how calls started.

use crate::client::{Client, ClientOpts, cell, print_table};

/// Arguments of `newt pools`.
#[derive(Debug, clap::Args)]
pub struct PoolsArgs {
    #[command(flatten)]
    pub client: ClientOpts,
}

/// Prints one row per pool.
pub async fn run(args: PoolsArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.client)?;
    let body = client.get_json("/v1/pools").await?;
    if args.client.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = body["pools"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            vec![
                cell(&p["function"]),
                cell(&p["version"]),
                cell(&p["runtime"]),
                cell(&p["preload"]),
                cell(&p["idle"]),
                cell(&p["busy"]),
                cell(&p["starting"]),
                cell(&p["waiting"]),
                format!(
                    "{}/{}/{}",
                    cell(&p["starts"]["cold"]),
                    cell(&p["starts"]["prewarmed"]),
                    cell(&p["starts"]["warm"])
                ),
            ]
        })
        .collect();
    print_table(
        &[
            "FUNCTION",
            "VERSION",
            "RUNTIME",
            "PRELOAD",
            "IDLE",
            "BUSY",
            "STARTING",
            "WAITING",
            "COLD/PREWARMED/WARM",
        ],
        &rows,
    );
    Ok(())
}

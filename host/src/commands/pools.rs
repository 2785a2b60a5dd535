//! `newt pools`: every live pool, its instances and how calls started.

use crate::client::{Client, ClientOpts, cell, decode, print_table};
use crate::wire::PoolsView;

/// Arguments of `newt pools`.
#[derive(Debug, clap::Args)]
pub struct PoolsArgs {
    #[command(flatten)]
    pub client: ClientOpts,
}

/// Prints one row per pool.
pub async fn run(args: PoolsArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.client)?;
    let body: serde_json::Value = client.get("/v1/pools").await?;
    if args.client.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(());
    }
    let view: PoolsView = decode(body)?;
    let rows: Vec<Vec<String>> = view
        .pools
        .iter()
        .map(|p| {
            vec![
                cell(&p.function),
                cell(&p.version),
                cell(&p.runtime),
                cell(&p.preload),
                cell(&p.idle),
                cell(&p.busy),
                cell(&p.starting),
                cell(&p.waiting),
                format!(
                    "{}/{}/{}",
                    cell(&p.starts.get("cold")),
                    cell(&p.starts.get("prewarmed")),
                    cell(&p.starts.get("warm"))
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

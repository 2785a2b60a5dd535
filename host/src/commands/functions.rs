//! `newt functions`: list deployed functions.

use crate::client::{Client, ClientOpts, cell, decode, print_table, timestamp};
use crate::wire::FunctionList;

/// Arguments of `newt functions`.
#[derive(Debug, clap::Args)]
pub struct FunctionsArgs {
    #[command(flatten)]
    pub client: ClientOpts,
}

/// Prints one row per function.
pub async fn run(args: FunctionsArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.client)?;
    let body: serde_json::Value = client.get("/v1/functions").await?;
    if args.client.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(());
    }
    let list: FunctionList = decode(body)?;
    let rows: Vec<Vec<String>> = list
        .functions
        .iter()
        .map(|f| {
            vec![
                cell(&f.name),
                cell(&f.version),
                cell(&f.runtime),
                cell(&f.status),
                cell(&f.size),
                timestamp(&f.created_at),
            ]
        })
        .collect();
    print_table(
        &[
            "NAME",
            "VERSION",
            "RUNTIME",
            "STATUS",
            "BYTES",
            "DEPLOYED (UTC)",
        ],
        &rows,
    );
    Ok(())
}

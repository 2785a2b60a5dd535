//! `newt functions`: list deployed functions.

use crate::client::{Client, ClientOpts, cell, print_table, timestamp};

/// Arguments of `newt functions`.
#[derive(Debug, clap::Args)]
pub struct FunctionsArgs {
    #[command(flatten)]
    pub client: ClientOpts,
}

/// Prints one row per function.
pub async fn run(args: FunctionsArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.client)?;
    let body = client.get_json("/v1/functions").await?;
    if args.client.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = body["functions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| {
            vec![
                cell(&f["name"]),
                cell(&f["version"]),
                cell(&f["runtime"]),
                cell(&f["status"]),
                cell(&f["size"]),
                timestamp(&f["created_at"]),
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

//! `newt status`: the disk each kind of state uses (database, bundles, compiled
//! modules, function images), the counts of functions, versions and call records,
//! and the retention settings.

use crate::client::{Client, ClientOpts, decode, print_table};
use crate::commands::gc::bytes;
use crate::service::gc::StatusView;

/// Arguments of `newt status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub client: ClientOpts,
}

/// Prints the server's `GET /v1/status`.
pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.client)?;
    let body: serde_json::Value = client.get("/v1/status").await?;
    if args.client.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(());
    }
    let status: StatusView = decode(body)?;
    println!("home {}", status.home);
    let rows: Vec<Vec<String>> = ["db", "cas", "cache", "images"]
        .iter()
        .map(|kind| {
            let used = status.disk.get(*kind).cloned().unwrap_or_default();
            match used.error {
                Some(error) => vec![kind.to_string(), "-".into(), "-".into(), error],
                None => vec![
                    kind.to_string(),
                    used.count.to_string(),
                    bytes(used.bytes),
                    String::new(),
                ],
            }
        })
        .collect();
    print_table(&["KIND", "COUNT", "SIZE", "NOTE"], &rows);
    println!(
        "{} functions, {} versions, {} call records",
        status.functions, status.versions, status.calls
    );
    let r = &status.retention;
    println!(
        "retention: calls for {}, at most {} per function; {} ready versions per function; \
         every {}",
        newt_runtime::format_duration(std::time::Duration::from_secs(r.retain_calls_secs)),
        r.retain_calls_per_function,
        r.keep_versions,
        newt_runtime::format_duration(std::time::Duration::from_secs(r.gc_interval_secs)),
    );
    Ok(())
}

//! `newt delete NAME`: remove a function (its call records stay).

use reqwest::Method;

use crate::client::{Client, ClientOpts, encode};

/// Arguments of `newt delete`.
#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// Function name.
    pub name: String,
    #[command(flatten)]
    pub client: ClientOpts,
}

/// Deletes the function.
pub async fn run(args: DeleteArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.client)?;
    client
        .send(client.request(
            Method::DELETE,
            &format!("/v1/functions/{}", encode(&args.name)),
        ))
        .await?;
    if !args.client.json {
        println!("deleted {}", args.name);
    }
    Ok(())
}

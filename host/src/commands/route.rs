//! `newt route add PATH FUNCTION [--method M ...]`, `newt route list`, `newt route rm
//! PATH`: the HTTP routes that expose functions beside `/fn/{name}`.

use reqwest::Method;

use crate::api::routes::{RouteBody, RouteList};
use crate::client::{Client, ClientOpts, cell, decode, encode, print_table, timestamp};
use crate::store::StoredRoute;

/// Arguments of `newt route`.
#[derive(Debug, clap::Args)]
pub struct RouteArgs {
    #[command(subcommand)]
    pub command: RouteCommand,
}

/// What `newt route` does.
#[derive(Debug, clap::Subcommand)]
pub enum RouteCommand {
    /// Serve FUNCTION at PATH and below (replaces the route at PATH if there is one).
    Add {
        /// The path prefix, e.g. /api/dice: requests to it and below it go to the
        /// function, which sees the path after the prefix.
        path: String,
        /// The function that serves it.
        function: String,
        /// Accept only this method (repeat for more); default: any.
        #[arg(long = "method", value_name = "METHOD")]
        methods: Vec<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// List the routes.
    List {
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Remove the route at PATH.
    #[command(alias = "remove")]
    Rm {
        /// The route's path, as added.
        path: String,
        #[command(flatten)]
        client: ClientOpts,
    },
}

/// Runs one `newt route` command against the server.
pub async fn run(args: RouteArgs) -> anyhow::Result<()> {
    match args.command {
        RouteCommand::Add {
            path,
            function,
            methods,
            client: opts,
        } => {
            let client = Client::new(&opts)?;
            let body = RouteBody {
                path,
                function,
                methods,
            };
            let route: StoredRoute = client
                .send_json(client.request(Method::PUT, "/v1/routes").json(&body))
                .await?;
            if opts.json {
                println!("{}", serde_json::to_string_pretty(&route)?);
            } else {
                println!(
                    "{} -> {} ({})",
                    route.path,
                    route.function,
                    methods_text(&route.methods)
                );
            }
        }
        RouteCommand::List { client: opts } => {
            let client = Client::new(&opts)?;
            let body: serde_json::Value = client.get("/v1/routes").await?;
            if opts.json {
                println!("{}", serde_json::to_string_pretty(&body)?);
                return Ok(());
            }
            let list: RouteList = decode(body)?;
            let rows: Vec<Vec<String>> = list
                .routes
                .iter()
                .map(|r| {
                    vec![
                        cell(&r.path),
                        cell(&r.function),
                        methods_text(&r.methods),
                        timestamp(&r.created_at),
                    ]
                })
                .collect();
            print_table(&["PATH", "FUNCTION", "METHODS", "ADDED"], &rows);
        }
        RouteCommand::Rm { path, client: opts } => {
            let client = Client::new(&opts)?;
            let url = format!("/v1/routes?path={}", encode(&path));
            client.send(client.request(Method::DELETE, &url)).await?;
            if !opts.json {
                println!("removed {path}");
            }
        }
    }
    Ok(())
}

fn methods_text(methods: &[String]) -> String {
    if methods.is_empty() {
        "any method".into()
    } else {
        methods.join(", ")
    }
}

//! `newt versions FN`, `newt alias set|list|rm FN ...` and `newt rollback FN [--to
//! N]`: a function's version history, its aliases and rollbacks.

use anyhow::{Context, bail};
use reqwest::Method;
use serde_json::json;

use crate::api::versions::{AliasList, AliasView, RollbackView, VersionsView};
use crate::client::{Client, ClientOpts, cell, decode, encode, print_table, timestamp};

/// Arguments of `newt versions`.
#[derive(Debug, clap::Args)]
pub struct VersionsArgs {
    /// Function name.
    pub name: String,
    #[command(flatten)]
    pub client: ClientOpts,
}

/// Arguments of `newt alias`.
#[derive(Debug, clap::Args)]
pub struct AliasArgs {
    #[command(subcommand)]
    pub command: AliasCommand,
}

/// What `newt alias` does.
#[derive(Debug, clap::Subcommand)]
pub enum AliasCommand {
    /// Point ALIAS of FUNCTION at a version (`3`) or split its calls between
    /// versions by weight (`3=90 4=10`, whole percents summing to 100).
    Set {
        /// The function.
        function: String,
        /// The alias (like a function name, not a number); call it as FUNCTION:ALIAS.
        alias: String,
        /// `N` (one version), or `N=WEIGHT` for each version of a split.
        #[arg(required = true, value_name = "VERSION[=WEIGHT]")]
        versions: Vec<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// List the aliases of FUNCTION.
    List {
        /// The function.
        function: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Remove ALIAS of FUNCTION.
    #[command(alias = "remove")]
    Rm {
        /// The function.
        function: String,
        /// The alias.
        alias: String,
        #[command(flatten)]
        client: ClientOpts,
    },
}

/// Arguments of `newt rollback`.
#[derive(Debug, clap::Args)]
pub struct RollbackArgs {
    /// Function name.
    pub name: String,
    /// Serve this version instead of the previous ready one.
    #[arg(long, value_name = "N")]
    pub to: Option<i64>,
    #[command(flatten)]
    pub client: ClientOpts,
}

/// Prints a function's versions: which serves, aliases, digests, config, pools.
pub async fn run_versions(args: VersionsArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.client)?;
    let path = format!("/v1/functions/{}/versions", encode(&args.name));
    let body: serde_json::Value = client.get(&path).await?;
    if args.client.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(());
    }
    let list: VersionsView = decode(body)?;
    let rows: Vec<Vec<String>> = list
        .versions
        .iter()
        .map(|v| {
            let f = &v.version;
            let state = match (v.serving, v.rolled_back) {
                (true, _) => "serving",
                (false, true) => "rolled back",
                (false, false) => "",
            };
            let mut config = Vec::new();
            if !f.env.is_empty() {
                config.push(format!(
                    "env {}",
                    f.env.keys().cloned().collect::<Vec<_>>().join(",")
                ));
            }
            if !f.secrets.is_empty() {
                config.push(format!("secrets {}", f.secrets.join(",")));
            }
            if !f.allow_outbound.is_empty() {
                config.push(format!("outbound {}", f.allow_outbound.join(",")));
            }
            let pool = v.pool.as_ref().map_or("-".to_string(), |p| {
                format!("{} idle, {} busy", p.idle, p.busy)
            });
            vec![
                f.version.to_string(),
                cell(&f.status),
                state.to_string(),
                v.aliases.join(","),
                f.digest.chars().take(12).collect(),
                cell(&f.runtime),
                timestamp(&f.created_at),
                if config.is_empty() {
                    "-".into()
                } else {
                    config.join("; ")
                },
                pool,
            ]
        })
        .collect();
    print_table(
        &[
            "VERSION", "STATUS", "SERVES", "ALIASES", "DIGEST", "RUNTIME", "CREATED", "CONFIG",
            "POOL",
        ],
        &rows,
    );
    Ok(())
}

/// Parses `3` or `3=90 4=10` into the alias body.
fn alias_body(versions: &[String]) -> anyhow::Result<serde_json::Value> {
    if let [one] = versions
        && !one.contains('=')
    {
        let version: i64 = one
            .parse()
            .with_context(|| format!("{one:?} is not a version number"))?;
        return Ok(json!({ "version": version }));
    }
    let mut split = serde_json::Map::new();
    for pair in versions {
        let Some((version, weight)) = pair.split_once('=') else {
            bail!("{pair:?}: give each version of a split as VERSION=WEIGHT, e.g. 3=90 4=10");
        };
        let weight: u32 = weight
            .parse()
            .with_context(|| format!("{pair:?}: the weight is not a whole percent"))?;
        split.insert(version.to_string(), json!(weight));
    }
    Ok(json!({ "versions": split }))
}

fn alias_text(alias: &AliasView) -> String {
    alias
        .versions
        .iter()
        .map(|(version, weight)| match alias.versions.len() {
            1 => format!("v{version}"),
            _ => format!("v{version} {weight}%"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs one `newt alias` command against the server.
pub async fn run_alias(args: AliasArgs) -> anyhow::Result<()> {
    match args.command {
        AliasCommand::Set {
            function,
            alias,
            versions,
            client: opts,
        } => {
            let client = Client::new(&opts)?;
            let path = format!(
                "/v1/functions/{}/aliases/{}",
                encode(&function),
                encode(&alias)
            );
            let set: AliasView = client
                .send_json(
                    client
                        .request(Method::PUT, &path)
                        .json(&alias_body(&versions)?),
                )
                .await?;
            if opts.json {
                println!("{}", serde_json::to_string_pretty(&set)?);
            } else {
                println!("{function}:{alias} -> {}", alias_text(&set));
            }
        }
        AliasCommand::List {
            function,
            client: opts,
        } => {
            let client = Client::new(&opts)?;
            let path = format!("/v1/functions/{}/aliases", encode(&function));
            let body: serde_json::Value = client.get(&path).await?;
            if opts.json {
                println!("{}", serde_json::to_string_pretty(&body)?);
                return Ok(());
            }
            let list: AliasList = decode(body)?;
            let rows: Vec<Vec<String>> = list
                .aliases
                .iter()
                .map(|a| vec![cell(&a.alias), alias_text(a), timestamp(&a.updated_at)])
                .collect();
            print_table(&["ALIAS", "VERSIONS", "SET"], &rows);
        }
        AliasCommand::Rm {
            function,
            alias,
            client: opts,
        } => {
            let client = Client::new(&opts)?;
            let path = format!(
                "/v1/functions/{}/aliases/{}",
                encode(&function),
                encode(&alias)
            );
            client.send(client.request(Method::DELETE, &path)).await?;
            if !opts.json {
                println!("removed {function}:{alias}");
            }
        }
    }
    Ok(())
}

/// Rolls a function back and says which version serves now.
pub async fn run_rollback(args: RollbackArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.client)?;
    let mut path = format!("/v1/functions/{}/rollback", encode(&args.name));
    if let Some(to) = args.to {
        path.push_str(&format!("?to={to}"));
    }
    let rolled: RollbackView = client
        .send_json(client.request(Method::POST, &path))
        .await?;
    if args.client.json {
        println!("{}", serde_json::to_string_pretty(&rolled)?);
    } else {
        println!(
            "{}: version {} serves now (was {})",
            rolled.function, rolled.to, rolled.from
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alias_arguments_become_the_alias_body() {
        assert_eq!(alias_body(&["3".into()]).unwrap(), json!({"version": 3}));
        assert_eq!(
            alias_body(&["3=90".into(), "4=10".into()]).unwrap(),
            json!({"versions": {"3": 90, "4": 10}})
        );
        assert!(alias_body(&["3".into(), "4".into()]).is_err());
        assert!(alias_body(&["x".into()]).is_err());
        assert!(alias_body(&["3=ninety".into()]).is_err());
    }
}

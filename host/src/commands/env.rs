//! `newt env` and `newt secret`: a function's variables and secrets. Each change is a
//! `PATCH /v1/functions/{name}`, which makes a new version of the same bundle; the
//! next call runs with it.
//!
//! A secret's value is read from stdin, never from the command line, where other
//! users (`ps`) and shell histories would see it.

use anyhow::{Context, bail};
use reqwest::Method;
use serde_json::{Value, json};
use std::io::{IsTerminal, Read};

use crate::client::{Client, ClientOpts, decode, encode};
use crate::wire::FunctionDetailView;

/// Arguments of `newt env`.
#[derive(Debug, clap::Args)]
pub struct EnvArgs {
    #[command(subcommand)]
    pub command: EnvCommand,
}

/// What `newt env` does.
#[derive(Debug, clap::Subcommand)]
pub enum EnvCommand {
    /// Show a function's variables, and its secrets' names.
    List {
        /// Function name.
        function: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Set variables: `newt env set dice GREETING=hello COLOUR=red`.
    Set {
        /// Function name.
        function: String,
        /// KEY=VALUE pairs.
        #[arg(required = true)]
        pairs: Vec<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Remove variables (or secrets) by name.
    Unset {
        /// Function name.
        function: String,
        /// Names to remove.
        #[arg(required = true)]
        names: Vec<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
}

/// Arguments of `newt secret`.
#[derive(Debug, clap::Args)]
pub struct SecretArgs {
    #[command(subcommand)]
    pub command: SecretCommand,
}

/// What `newt secret` does.
#[derive(Debug, clap::Subcommand)]
pub enum SecretCommand {
    /// Set a secret; its value is read from stdin (one trailing newline is dropped):
    /// `printf %s "$TOKEN" | newt secret set dice API_TOKEN`.
    Set {
        /// Function name.
        function: String,
        /// The secret's name.
        name: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Remove secrets by name.
    Unset {
        /// Function name.
        function: String,
        /// Names to remove.
        #[arg(required = true)]
        names: Vec<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
}

/// Runs `newt env`.
pub async fn run_env(args: EnvArgs) -> anyhow::Result<()> {
    match args.command {
        EnvCommand::List { function, client } => list(&function, &client).await,
        EnvCommand::Set {
            function,
            pairs,
            client,
        } => {
            let mut env = serde_json::Map::new();
            for pair in &pairs {
                let Some((name, value)) = pair.split_once('=') else {
                    bail!("expected KEY=VALUE, got {pair:?}");
                };
                env.insert(name.to_string(), json!(value));
            }
            patch(&function, &client, json!({ "env": env })).await
        }
        EnvCommand::Unset {
            function,
            names,
            client,
        } => patch(&function, &client, json!({ "unset": names })).await,
    }
}

/// Runs `newt secret`.
pub async fn run_secret(args: SecretArgs) -> anyhow::Result<()> {
    match args.command {
        SecretCommand::Set {
            function,
            name,
            client,
        } => {
            if name.contains('=') {
                bail!(
                    "give only the secret's name ({}): its value is read from stdin, never \
                     from the command line",
                    name.split('=').next().unwrap_or_default()
                );
            }
            let value = read_value(&name)?;
            patch(&function, &client, json!({ "secrets": { name: value } })).await
        }
        SecretCommand::Unset {
            function,
            names,
            client,
        } => patch(&function, &client, json!({ "unset": names })).await,
    }
}

/// The secret's value from stdin, without one trailing newline (what `echo` adds).
fn read_value(name: &str) -> anyhow::Result<String> {
    let mut stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!("value of {name} (end with Ctrl-D):");
    }
    let mut value = String::new();
    stdin
        .read_to_string(&mut value)
        .context("reading the secret's value from stdin (it must be UTF-8)")?;
    if value.ends_with('\n') {
        value.pop();
        if value.ends_with('\r') {
            value.pop();
        }
    }
    Ok(value)
}

/// Sends one configuration change and prints the version it made.
async fn patch(function: &str, opts: &ClientOpts, body: Value) -> anyhow::Result<()> {
    let client = Client::new(opts)?;
    let path = format!("/v1/functions/{}", encode(function));
    let answer: Value = client
        .send_json(client.request(Method::PATCH, &path).json(&body))
        .await?;
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    let detail: FunctionDetailView = decode(answer)?;
    println!(
        "{} v{}: {} variables, {} secrets",
        function,
        detail.function.version,
        detail.function.env.len(),
        detail.function.secrets.len()
    );
    Ok(())
}

/// Prints `KEY=VALUE` per variable, then each secret's name.
async fn list(function: &str, opts: &ClientOpts) -> anyhow::Result<()> {
    let client = Client::new(opts)?;
    let answer: Value = client
        .get(&format!("/v1/functions/{}", encode(function)))
        .await?;
    let detail: FunctionDetailView = decode(answer)?;
    if opts.json {
        let shown = json!({
            "env": detail.function.env,
            "secrets": detail.function.secrets,
            "allow_outbound": detail.function.allow_outbound,
        });
        println!("{}", serde_json::to_string_pretty(&shown)?);
        return Ok(());
    }
    for (name, value) in &detail.function.env {
        println!("{name}={value}");
    }
    for name in &detail.function.secrets {
        println!("{name} (secret)");
    }
    Ok(())
}

//! `newt invoke NAME [INPUT]`: call a function and print its output.

use anyhow::{Context, bail};
use reqwest::Method;
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;

use crate::client::{Client, ClientOpts, encode, server_error};
use crate::wire::AcceptedView;

/// Arguments of `newt invoke`.
#[derive(Debug, clap::Args)]
pub struct InvokeArgs {
    /// Function name.
    pub name: String,
    /// The input (usually JSON). `-` or nothing reads stdin when it is not a terminal.
    pub input: Option<String>,
    /// Read the input from a file.
    #[arg(long, short = 'f', conflicts_with = "input")]
    pub file: Option<PathBuf>,
    /// Do not wait: print the call id, fetch the result later with `newt call ID`.
    #[arg(long = "async")]
    pub is_async: bool,
    #[command(flatten)]
    pub client: ClientOpts,
}

fn read_input(args: &InvokeArgs) -> anyhow::Result<Vec<u8>> {
    if let Some(file) = &args.file {
        return std::fs::read(file).with_context(|| format!("reading {}", file.display()));
    }
    match args.input.as_deref() {
        Some("-") => read_stdin(),
        Some(input) => Ok(input.as_bytes().to_vec()),
        None if !std::io::stdin().is_terminal() => read_stdin(),
        None => Ok(Vec::new()),
    }
}

fn read_stdin() -> anyhow::Result<Vec<u8>> {
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .context("reading the input from stdin")?;
    Ok(input)
}

/// Calls the function; prints its output on stdout, and the call id and start kind
/// on stderr. A failed call exits non-zero with the function's message.
pub async fn run(args: InvokeArgs) -> anyhow::Result<()> {
    let input = read_input(&args)?;
    let client = Client::new(&args.client)?;
    let mut path = format!("/v1/functions/{}/invoke", encode(&args.name));
    if args.is_async {
        path.push_str("?async=true");
    }
    let response = client
        .request(Method::POST, &path)
        .body(input)
        .send()
        .await
        .with_context(|| format!("cannot reach the newt server at {}", args.client.server))?;
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string()
    };
    let (call_id, start, timing) = (
        header("x-newt-call-id"),
        header("x-newt-start"),
        header("server-timing"),
    );
    let status = response.status();
    if args.is_async {
        if !status.is_success() {
            return Err(server_error(response).await);
        }
        if args.client.json {
            println!("{}", response.text().await?);
        } else {
            let accepted: AcceptedView = response
                .json()
                .await
                .context("the server sent invalid JSON")?;
            let call_id = accepted.call_id;
            println!("{call_id}");
            eprintln!("accepted; see the result with: newt call {call_id}");
        }
        return Ok(());
    }
    if !status.is_success() {
        let error = server_error(response).await;
        if call_id != "-" {
            bail!("{error:#}\n(call {call_id}; details: newt call {call_id})");
        }
        return Err(error);
    }
    let output = response.bytes().await.context("reading the output")?;
    if args.client.json {
        let output_json = crate::wire::bytes_json(&output);
        let summary = serde_json::json!({
            "call_id": call_id, "start": start, "server_timing": timing, "output": output_json,
        });
        println!("{summary}");
    } else {
        let mut stdout = std::io::stdout();
        stdout.write_all(&output)?;
        if !output.ends_with(b"\n") {
            stdout.write_all(b"\n")?;
        }
        eprintln!("call {call_id} ({start}; {timing})");
    }
    Ok(())
}

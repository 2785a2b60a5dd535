//! `newt`: the function host's server and CLI in one binary.
//!
//! `newt serve` runs the HTTP API over the engine in `newt-runtime`, with state in
//! SQLite and the content store under `NEWT_HOME`. Every other subcommand is a client
//! of a running server (`--server`), or a local helper for writing functions
//! (`new`, `build`).

use clap::{CommandFactory, Parser, Subcommand};
use newt_host::commands;

/// newt: a sandboxed WebAssembly and container function host.
#[derive(Debug, Parser)]
#[command(name = "newt", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server.
    Serve(commands::serve::ServeArgs),
    /// Deploy a function (a new version if it exists).
    Deploy(commands::deploy::DeployArgs),
    /// Call a function and print its output.
    Invoke(commands::invoke::InvokeArgs),
    /// List functions.
    Functions(commands::functions::FunctionsArgs),
    /// List recent calls.
    Calls(commands::calls::CallsArgs),
    /// Show one call: status, output, logs, timings.
    Call(commands::call::CallArgs),
    /// Print a function's call logs; -f follows new calls as they finish.
    Logs(commands::logs::LogsArgs),
    /// Remove a function.
    Delete(commands::delete::DeleteArgs),
    /// Show, set or unset a function's variables (each change is a new version).
    Env(commands::env::EnvArgs),
    /// Set or unset a function's secrets (values from stdin, never from arguments).
    Secret(commands::env::SecretArgs),
    /// Remove old call records and what no live version uses (--dry-run: list it).
    Gc(commands::gc::GcArgs),
    /// Show the disk newt's state uses, by kind, and the retention settings.
    Status(commands::status::StatusArgs),
    /// Show every pool: instances idle, busy, starting; calls waiting; start kinds.
    Pools(commands::pools::PoolsArgs),
    /// Expose functions on HTTP paths: add, list or remove routes.
    Route(commands::route::RouteArgs),
    /// List a function's versions: which serves, aliases, digests, config, pools.
    Versions(commands::versions::VersionsArgs),
    /// Point aliases at versions (or weighted splits): set, list or remove.
    Alias(commands::versions::AliasArgs),
    /// Serve the previous ready version (or --to N) at once.
    Rollback(commands::versions::RollbackArgs),
    /// List, register or remove container runtimes.
    Runtimes(commands::runtimes::RuntimesArgs),
    /// Build a Rust function crate for wasm32-wasip1 and print the .wasm path.
    Build(commands::build::BuildArgs),
    /// Create a new function: a Rust crate or a Python directory.
    New(commands::new::NewArgs),
    /// Watch a function's code; rebuild and redeploy it on every save (Ctrl-C stops).
    Dev(commands::dev::DevArgs),
    /// Print a shell completion script (bash, zsh, fish, …).
    Completions(commands::completions::CompletionsArgs),
    /// Measure cold, prewarmed and warm calls beside `wasmtime run`, `docker run`, ….
    Bench(commands::bench::BenchArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => commands::serve::run(args),
        Command::Build(args) => commands::build::run(args),
        Command::New(args) => commands::new::run(args),
        Command::Completions(args) => commands::completions::run(args, Cli::command()),
        Command::Bench(args) => commands::bench::run(args),
        client_command => run_client(client_command),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Client commands share one small runtime; the server builds its own.
fn run_client(command: Command) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match command {
            Command::Deploy(args) => commands::deploy::run(args).await,
            Command::Invoke(args) => commands::invoke::run(args).await,
            Command::Functions(args) => commands::functions::run(args).await,
            Command::Calls(args) => commands::calls::run(args).await,
            Command::Call(args) => commands::call::run(args).await,
            Command::Logs(args) => commands::logs::run(args).await,
            Command::Delete(args) => commands::delete::run(args).await,
            Command::Env(args) => commands::env::run_env(args).await,
            Command::Secret(args) => commands::env::run_secret(args).await,
            Command::Runtimes(args) => commands::runtimes::run(args).await,
            Command::Pools(args) => commands::pools::run(args).await,
            Command::Gc(args) => commands::gc::run(args).await,
            Command::Status(args) => commands::status::run(args).await,
            Command::Route(args) => commands::route::run(args).await,
            Command::Versions(args) => commands::versions::run_versions(args).await,
            Command::Alias(args) => commands::versions::run_alias(args).await,
            Command::Rollback(args) => commands::versions::run_rollback(args).await,
            Command::Dev(args) => commands::dev::run(args).await,
            Command::Serve(_)
            | Command::Build(_)
            | Command::New(_)
            | Command::Bench(_)
            | Command::Completions(_) => {
                unreachable!("handled before the client runtime starts")
            }
        }
    })
}

//! `newt bench`: cold, prewarmed and warm calls of trivial functions (the Rust SDK
//! hello on wasm, an echo on Python), side by side with the same work done by the
//! tools a user would pick instead, all measured in one run on one machine; and with
//! `--density`, how many wasm functions one server holds. The measuring lives in
//! `crate::bench`; this file is the flags and the order of the rows.

use crate::bench::fixtures::{self, Workload};
use crate::bench::newt::{self, Backend, Newt, Plan};
use crate::bench::report::{self, Machine, Report, Row, peer};
use crate::bench::target::SelfHosted;
use crate::bench::{density, peers, serve};
use crate::client::{Client, ClientOpts, DEFAULT_SERVER, timestamp};
use anyhow::{Context, bail};
use std::path::PathBuf;

/// Concurrencies measured by default, and with `--quick`.
const CONCURRENCY: [usize; 3] = [1, 16, 64];
const QUICK_CONCURRENCY: [usize; 2] = [1, 4];
/// Calls per row of cheap calls (wasm, warm containers, the in-process floor).
const REQUESTS: usize = 1000;
const QUICK_REQUESTS: usize = 20;
/// Calls per row at a container per call (python cold).
const SLOW_REQUESTS: usize = 20;
const QUICK_SLOW_REQUESTS: usize = 5;
/// Samples of python prewarmed (a deploy each) and of the process-per-call peers.
const FEW_REQUESTS: usize = 10;
const QUICK_FEW_REQUESTS: usize = 3;
/// The highest concurrency accepted (newt's cap on `max_instances`).
const MAX_CONCURRENCY: usize = 1000;

/// Arguments of `newt bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// The newt server to measure (ignored with --self-host).
    #[arg(long, env = "NEWT_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// Bearer token, if the server requires one.
    #[arg(long, env = "NEWT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Start a `newt serve` on a temporary home and measure it.
    #[arg(long)]
    pub self_host: bool,
    /// A short run: concurrency 1 and 4, a few calls per row.
    #[arg(long)]
    pub quick: bool,
    /// Also write the report (machine, date, rows with raw samples) as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Also draw latency per start kind and backend (log scale) as SVG to FILE.
    #[arg(long, value_name = "FILE")]
    pub chart: Option<PathBuf>,
    /// Calls in flight at once, comma-separated [default: 1,16,64; --quick: 1,4].
    #[arg(long, value_delimiter = ',', value_name = "N,N,...")]
    pub concurrency: Option<Vec<usize>>,
    /// Calls per row for wasm, warm Python and the in-process floor [default: 1000;
    /// --quick: 20].
    #[arg(long, value_name = "N")]
    pub requests: Option<usize>,
    /// Also deploy N distinct wasm functions on a server of their own, call each once,
    /// read its memory, restart it and call each again (needs --self-host)
    /// [default N: 10000].
    #[arg(long, value_name = "N", num_args = 0..=1,
        default_missing_value = "10000")]
    pub density: Option<usize>,
    /// Run only the density benchmark, none of the rows.
    #[arg(long, requires = "density")]
    pub density_only: bool,
    /// The commit measured, for the report (`make bench-report` passes it).
    #[arg(long, value_name = "REV")]
    pub commit: Option<String>,
    /// Also write the report as a dated Markdown section to FILE.
    #[arg(long, value_name = "FILE")]
    pub markdown: Option<PathBuf>,
    /// Insert that Markdown section into FILE, before its first `## ` heading (what
    /// `make bench-report` does to BENCHMARKS.md).
    #[arg(long, value_name = "FILE")]
    pub splice_into: Option<PathBuf>,
}

impl BenchArgs {
    /// The plan, after checking the flags.
    fn plan(&self) -> anyhow::Result<Plan> {
        let concurrency = match &self.concurrency {
            Some(list) => list.clone(),
            None if self.quick => QUICK_CONCURRENCY.to_vec(),
            None => CONCURRENCY.to_vec(),
        };
        if concurrency.is_empty() || concurrency.iter().any(|&c| c == 0 || c > MAX_CONCURRENCY) {
            bail!("--concurrency takes numbers from 1 to {MAX_CONCURRENCY}, got {concurrency:?}");
        }
        let fast_calls =
            self.requests
                .unwrap_or(if self.quick { QUICK_REQUESTS } else { REQUESTS });
        if fast_calls == 0 {
            bail!("--requests must be at least 1");
        }
        if self.density.is_some_and(|n| n == 0) {
            bail!("--density takes at least 1 function");
        }
        if self.density.is_some() && !self.self_host {
            bail!(
                "--density needs --self-host: it restarts its server and reads the server's \
                 memory"
            );
        }
        let (slow_calls, few_calls) = if self.quick {
            (QUICK_SLOW_REQUESTS, QUICK_FEW_REQUESTS)
        } else {
            (SLOW_REQUESTS, FEW_REQUESTS)
        };
        Ok(Plan {
            concurrency,
            fast_calls,
            slow_calls,
            few_calls,
        })
    }
}

/// Runs the benchmark, prints the tables and writes `--json`, `--chart` and the
/// Markdown.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let plan = args.plan()?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    // Calls at concurrency N need more than one thread to keep N in flight.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let wasm = runtime.block_on(fixtures::wasm())?;
    let python = fixtures::python()?;
    let mut report = Report {
        machine: Machine::detect(),
        date: format!("{} UTC", timestamp(&serde_json::json!(now_ms))),
        rows: Vec::new(),
        commit: args.commit.clone(),
        workloads: workloads(&wasm, &python),
        derived: Vec::new(),
        density: None,
    };
    if !args.density_only {
        report.rows = measure_rows(&args, &plan, &runtime, &wasm, python)?;
        report.derived = report::derive(&report.rows);
        print!(
            "{}",
            report::render_table(&report::TABLE_HEADER, &report::table(&report.rows))
        );
        println!();
        print!(
            "{}",
            report::render_table(
                &report::DERIVED_HEADER,
                &report::derived_table(&report.derived)
            )
        );
    }
    if let Some(functions) = args.density {
        let measured = runtime.block_on(density::run(&wasm, functions))?;
        println!("\n{}", measured.markdown().trim_end());
        report.density = Some(measured);
    }
    drop(runtime);
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        eprintln!("bench: wrote {}", path.display());
    }
    if let Some(path) = args.chart.as_ref().filter(|_| !report.rows.is_empty()) {
        let title = format!("newt bench, {}, {}", report.date, report.machine.cores);
        let svg = crate::bench::chart::render(&report.rows, &format!("{title} cores"));
        std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("bench: wrote {}", path.display());
    }
    let command = std::iter::once("newt".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let section = report.markdown(&command);
    if let Some(path) = &args.markdown {
        std::fs::write(path, &section).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("bench: wrote {}", path.display());
    }
    if let Some(path) = &args.splice_into {
        let doc =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        std::fs::write(path, report::splice(&doc, &section))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("bench: added this run to {}", path.display());
    }
    Ok(())
}

/// What each backend's rows run, for the report.
fn workloads(wasm: &Workload, python: &Workload) -> Vec<report::Workload> {
    let entry = |backend: &str, function: &str, input: &str| report::Workload {
        backend: backend.into(),
        function: function.into(),
        input: input.into(),
    };
    vec![
        entry("wasm", &wasm.label, wasm.input),
        entry(
            newt::COMPONENT,
            fixtures::COMPONENT_LABEL,
            fixtures::HELLO_INPUT,
        ),
        entry("python", &python.label, python.input),
    ]
}

/// The rows, on the server at `--server` or a self-hosted one (stopped before
/// returning, so a density run after it has the machine to itself).
fn measure_rows(
    args: &BenchArgs,
    plan: &Plan,
    runtime: &tokio::runtime::Runtime,
    wasm: &Workload,
    python: Workload,
) -> anyhow::Result<Vec<Row>> {
    let self_hosted = if args.self_host {
        eprintln!("bench: starting newt serve on a temporary home");
        Some(SelfHosted::start()?)
    } else {
        None
    };
    let opts = ClientOpts {
        server: self_hosted
            .as_ref()
            .map_or_else(|| args.server.clone(), |s| s.base.clone()),
        token: if self_hosted.is_some() {
            None
        } else {
            args.token.clone()
        },
        json: false,
    };
    eprintln!("bench: measuring {}", opts.server);
    let measured = runtime.block_on(measure(&opts, plan, wasm.clone(), python));
    match (measured, &self_hosted) {
        (Ok(rows), _) => Ok(rows),
        (Err(e), Some(server)) => {
            Err(e.context(format!("the self-hosted server's log:\n{}", server.log())))
        }
        (Err(e), None) => Err(e),
    }
}

/// Every row, in order: newt wasm, wasm peers, newt python, container peers.
async fn measure(
    opts: &ClientOpts,
    plan: &Plan,
    wasm: Workload,
    python: Workload,
) -> anyhow::Result<Vec<Row>> {
    let newt = Newt::new(Client::new(opts)?, wasm.clone(), python);
    let docker = newt
        .docker()
        .await
        .context("asking the server's /healthz")?;
    let mut rows = Vec::new();
    let total = planned_rows(plan);
    let mut record = |row: Row| {
        rows.push(row);
        let row = rows.last().expect("just pushed");
        eprintln!(
            "{} {}",
            progress_bar(rows.len(), total),
            row.progress_line()
        );
    };

    newt::backend_rows(&newt, Backend::Wasm, plan, &mut record).await?;
    record(
        peers::in_process(&wasm, plan.fast_calls)
            .await
            .unwrap_or_else(|e| {
                Row::skipped("wasm", peer::IN_PROCESS, 1, &format!("failed: {e:#}"))
            }),
    );
    for row in newt
        .http_floor_rows(&plan.concurrency, plan.fast_calls)
        .await
    {
        record(row);
    }
    record(peers::wasmtime_run(&wasm, plan.few_calls).await);
    // The identical wasi:http component on newt and on `wasmtime serve`.
    let component = serve::build_component().await.map_err(|e| format!("{e:#}"));
    match &component {
        Ok(path) => match std::fs::read(path) {
            Ok(bytes) => {
                for row in newt
                    .component_rows(&bytes, &plan.concurrency, plan.fast_calls)
                    .await
                {
                    record(row);
                }
            }
            Err(e) => {
                for &c in &plan.concurrency {
                    let why = format!("failed: reading {}: {e}", path.display());
                    record(Row::skipped(newt::COMPONENT, "warm", c, &why));
                }
            }
        },
        Err(why) => {
            for &c in &plan.concurrency {
                record(Row::skipped(newt::COMPONENT, "warm", c, why));
            }
        }
    }
    let component = component.as_deref().map_err(String::as_str);
    for row in serve::wasmtime_serve_rows(component, &plan.concurrency, plan.fast_calls).await {
        record(row);
    }

    match docker {
        Ok(()) => newt::backend_rows(&newt, Backend::Python, plan, &mut record).await?,
        Err(reason) => newt::skip_all(Backend::Python, plan, &reason, &mut record),
    }
    match peers::docker_ready().await {
        Ok(()) => {
            record(peers::docker_run(plan.few_calls).await);
            record(peers::docker_exec(plan.few_calls).await);
        }
        Err(reason) => {
            record(Row::skipped("python", peer::DOCKER_RUN, 1, &reason));
            record(Row::skipped("python", peer::DOCKER_EXEC, 1, &reason));
        }
    }

    report::apply_ratios(&mut rows);
    Ok(rows)
}

/// How many rows a run makes: newt's rows per backend, then the peers (in-process,
/// the HTTP floor, the component on newt and on wasmtime serve at each concurrency,
/// wasmtime run, docker run, docker exec).
fn planned_rows(plan: &Plan) -> usize {
    newt::expected_rows(Backend::Wasm, plan).len()
        + newt::expected_rows(Backend::Python, plan).len()
        + 4
        + 3 * plan.concurrency.len()
}

/// `[ 5/23] [####------]`: where the run is, for the progress lines on stderr.
fn progress_bar(done: usize, total: usize) -> String {
    const WIDTH: usize = 20;
    let total = total.max(done).max(1);
    let filled = WIDTH * done / total;
    format!(
        "[{done:>2}/{total}] [{}{}]",
        "#".repeat(filled),
        "-".repeat(WIDTH - filled)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn the_progress_bar_fills_with_the_rows() {
        assert_eq!(progress_bar(0, 10), "[ 0/10] [--------------------]");
        assert_eq!(progress_bar(5, 10), "[ 5/10] [##########----------]");
        assert_eq!(progress_bar(12, 10), "[12/12] [####################]");
        let quick = plan(&["--quick"]).unwrap();
        // wasm: 3 kinds x 2; python: cold x 2, prewarmed x 1, warm x 2; peers: 4, and at
        // each of the 2 concurrencies the HTTP floor and the component on newt and on
        // wasmtime serve: 3 x 2.
        assert_eq!(planned_rows(&quick), 6 + 5 + 4 + 3 * 2);
    }

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn plan(argv: &[&str]) -> anyhow::Result<Plan> {
        let mut full = vec!["bench"];
        full.extend_from_slice(argv);
        Cli::try_parse_from(full)?.args.plan()
    }

    #[test]
    fn quick_runs_two_concurrencies_and_few_calls() {
        let quick = plan(&["--quick"]).unwrap();
        assert_eq!(quick.concurrency, [1, 4]);
        assert_eq!(quick.fast_calls, QUICK_REQUESTS);
        let full = plan(&["--concurrency", "2,8", "--requests", "50"]).unwrap();
        assert_eq!(full.concurrency, [2, 8]);
        assert_eq!(full.fast_calls, 50);
        assert_eq!(plan(&[]).unwrap().concurrency, CONCURRENCY);
    }

    #[test]
    fn density_defaults_to_ten_thousand_and_needs_self_host() {
        let parse = |argv: &[&str]| {
            let mut full = vec!["bench"];
            full.extend_from_slice(argv);
            Cli::try_parse_from(full).map(|cli| cli.args)
        };
        let args = parse(&["--self-host", "--density", "--json", "x.json"]).unwrap();
        assert_eq!(args.density, Some(density::DEFAULT_FUNCTIONS));
        assert!(args.plan().is_ok());
        assert_eq!(
            parse(&["--self-host", "--density", "50"]).unwrap().density,
            Some(50)
        );
        assert_eq!(parse(&["--self-host"]).unwrap().density, None);
        assert!(
            parse(&["--density", "5"]).unwrap().plan().is_err(),
            "no --self-host"
        );
        assert!(
            parse(&["--self-host", "--density", "0"])
                .unwrap()
                .plan()
                .is_err()
        );
        assert!(
            parse(&["--self-host", "--density-only"]).is_err(),
            "needs --density"
        );
    }

    #[test]
    fn bad_flags_are_refused_before_anything_starts() {
        assert!(plan(&["--concurrency", "0"]).is_err());
        assert!(plan(&["--concurrency", "1,2000"]).is_err());
        assert!(plan(&["--requests", "0"]).is_err());
    }
}

//! `newt bench`: cold, prewarmed and warm calls of newt's built-in trivial functions
//! (wasm and Python), side by side with the same work done by the tools a user would
//! pick instead, all measured in one run on one machine. The measuring lives in
//! `crate::bench`; this file is the flags and the order of the rows.

use crate::bench::newt::{self, Backend, Newt, Plan};
use crate::bench::report::{self, Machine, Report, Row, peer};
use crate::bench::target::SelfHosted;
use crate::bench::{peers, serve};
use crate::client::{Client, ClientOpts, DEFAULT_SERVER, print_table, timestamp};
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

/// Runs the benchmark, prints the table and writes `--json`.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let plan = args.plan()?;
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
    // Calls at concurrency N need more than one thread to keep N in flight.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let measured = runtime.block_on(measure(&opts, &plan));
    drop(runtime);
    let report = match (measured, &self_hosted) {
        (Ok(report), _) => report,
        (Err(e), Some(server)) => {
            return Err(e.context(format!("the self-hosted server's log:\n{}", server.log())));
        }
        (Err(e), None) => return Err(e),
    };
    print_table(&report::TABLE_HEADER, &report::table(&report.rows));
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        eprintln!("bench: wrote {}", path.display());
    }
    if let Some(path) = &args.chart {
        let title = format!("newt bench, {}, {}", report.date, report.machine.cores);
        let svg = crate::bench::chart::render(&report.rows, &format!("{title} cores"));
        std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("bench: wrote {}", path.display());
    }
    Ok(())
}

/// Every row, in order: newt wasm, wasm peers, newt python, container peers.
async fn measure(opts: &ClientOpts, plan: &Plan) -> anyhow::Result<Report> {
    let newt = Newt::new(Client::new(opts)?);
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
        peers::in_process(plan.fast_calls)
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
    record(peers::wasmtime_run(plan.few_calls).await);
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
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    Ok(Report {
        machine: Machine::detect(),
        date: format!("{} UTC", timestamp(&serde_json::json!(now_ms))),
        rows,
    })
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
    fn bad_flags_are_refused_before_anything_starts() {
        assert!(plan(&["--concurrency", "0"]).is_err());
        assert!(plan(&["--concurrency", "1,2000"]).is_err());
        assert!(plan(&["--requests", "0"]).is_err());
    }
}

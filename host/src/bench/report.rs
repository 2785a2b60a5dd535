//! The report: one row per backend, start kind (or peer) and concurrency; the figures
//! derived from the rows (newt against its own HTTP floor and against `wasmtime
//! serve`); the density run, when there was one; its JSON schema (`--json FILE`), its
//! tables and the dated Markdown section `make bench-report` puts in BENCHMARKS.md.

use super::density::Density;
use super::newt::COMPONENT;
use super::stats::{self, format_ratio};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::time::Duration;

/// The start kinds newt reports in `x-newt-start`, as row kinds.
pub const START_KINDS: [&str; 3] = ["cold", "prewarmed", "warm"];

/// Peer kinds: the same work done without newt.
pub mod peer {
    /// In-process instantiate+run on newt's own engine, no HTTP: the floor.
    pub const IN_PROCESS: &str = "in-process";
    /// newt's HTTP round trip with no call in it: the same POST to a function that does
    /// not exist (routing, the body read, a 404 answer), loaded like newt's rows.
    pub const HTTP_FLOOR: &str = "http floor";
    /// `wasmtime run` of the same module, a process per call.
    pub const WASMTIME_RUN: &str = "wasmtime run";
    /// `wasmtime serve` of the wasi:http component newt's `wasi:http` rows run, over
    /// HTTP like newt.
    pub const WASMTIME_SERVE: &str = "wasmtime serve";
    /// `docker run --rm` per call.
    pub const DOCKER_RUN: &str = "docker run";
    /// `docker exec` into one running container per call.
    pub const DOCKER_EXEC: &str = "docker exec";
}

/// The whole run, as `--json` writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Where it ran.
    pub machine: Machine,
    /// When it ran (UTC).
    pub date: String,
    /// Every row, in the order measured.
    pub rows: Vec<Row>,
    /// The commit measured (`--commit`), when given.
    #[serde(default)]
    pub commit: Option<String>,
    /// What each backend's rows ran.
    #[serde(default)]
    pub workloads: Vec<Workload>,
    /// Figures derived from the rows, per concurrency (see [`derive`]).
    #[serde(default)]
    pub derived: Vec<Derived>,
    /// The density run (`--density`), when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub density: Option<Density>,
}

/// What one backend's rows ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workload {
    /// `wasm`, `python` or `wasi:http`.
    pub backend: String,
    /// The function, e.g. `examples/hello (wasm32-wasip1)`.
    pub function: String,
    /// Every call's input.
    pub input: String,
}

/// newt against its own HTTP floor and against `wasmtime serve`, at one concurrency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Derived {
    /// Calls in flight at once.
    pub concurrency: usize,
    /// Warm wasm calls/s as a percentage of the HTTP floor's calls/s.
    pub warm_of_floor_pct: Option<f64>,
    /// Warm wasm p50 minus the HTTP floor's p50, µs: what running the function adds.
    pub p50_over_floor_us: Option<f64>,
    /// newt's `wasi:http` calls/s divided by `wasmtime serve`'s (same component).
    pub component_over_serve: Option<f64>,
}

/// The derived figures at each concurrency some row was measured at.
pub fn derive(rows: &[Row]) -> Vec<Derived> {
    let find = |backend: &str, kind: &str, c: usize| {
        rows.iter().find(|r| {
            r.backend == backend && r.kind == kind && r.concurrency == c && r.skipped.is_none()
        })
    };
    let mut concurrencies: Vec<usize> = rows
        .iter()
        .filter(|r| {
            r.kind == "warm" || r.kind == peer::HTTP_FLOOR || r.kind == peer::WASMTIME_SERVE
        })
        .map(|r| r.concurrency)
        .collect();
    concurrencies.sort_unstable();
    concurrencies.dedup();
    concurrencies
        .into_iter()
        .map(|c| {
            let warm = find("wasm", "warm", c);
            let floor = find("wasm", peer::HTTP_FLOOR, c);
            let component = find(COMPONENT, "warm", c);
            let serve = find(COMPONENT, peer::WASMTIME_SERVE, c);
            let rate = |r: Option<&Row>| r.and_then(|r| r.calls_per_sec);
            let p50 = |r: Option<&Row>| r.and_then(|r| r.p50_ms);
            Derived {
                concurrency: c,
                warm_of_floor_pct: stats::ratio(rate(warm), rate(floor)).map(|r| r * 100.0),
                p50_over_floor_us: p50(warm)
                    .zip(p50(floor))
                    .map(|(warm, floor)| (warm - floor) * 1000.0),
                component_over_serve: stats::ratio(rate(component), rate(serve)),
            }
        })
        .collect()
}

/// The derived figures' header, with the targets of issue 17.
pub const DERIVED_HEADER: [&str; 4] = [
    "CONC",
    "WARM CALLS/S % OF HTTP FLOOR (>= 60 % at 64)",
    "WARM P50 OVER FLOOR (<= 30 us at 1)",
    "WASI:HTTP CALLS/S NEWT / WASMTIME SERVE (>= 2x)",
];

/// The derived figures' cells.
pub fn derived_table(derived: &[Derived]) -> Vec<Vec<String>> {
    derived
        .iter()
        .map(|d| {
            vec![
                d.concurrency.to_string(),
                d.warm_of_floor_pct
                    .map_or_else(|| "-".into(), |p| format!("{p:.0} %")),
                d.p50_over_floor_us
                    .map_or_else(|| "-".into(), |us| format!("{us:.0} us")),
                d.component_over_serve
                    .map_or_else(|| "-".into(), format_ratio),
            ]
        })
        .collect()
}

/// A table as text: columns padded to their widest cell, two spaces apart (what
/// `newt`'s other tables look like).
pub fn render_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(padded.join("  ").trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

impl Report {
    /// The dated section for BENCHMARKS.md: where and when it ran, the command, what
    /// each backend ran, the table, the derived figures and the density run.
    pub fn markdown(&self, command: &str) -> String {
        let mut md = String::new();
        let commit = self.commit.as_deref().unwrap_or("not given (--commit)");
        let _ = writeln!(md, "## {}: `newt bench`, commit {commit}\n", self.date);
        let m = &self.machine;
        let _ = writeln!(
            md,
            "- Machine: {} cores, {}, {} {}; newt {}.",
            m.cores,
            m.cpu.as_deref().unwrap_or("CPU unknown"),
            m.os,
            m.arch,
            m.newt_version
        );
        let _ = writeln!(md, "- Date: {}; commit {commit}.", self.date);
        let _ = writeln!(md, "- Command: `{command}`.");
        for w in &self.workloads {
            let _ = writeln!(
                md,
                "- `{}` rows run {}, input `{}`.",
                w.backend, w.function, w.input
            );
        }
        let _ = writeln!(
            md,
            "\n```\n{}```\n",
            render_table(&TABLE_HEADER, &table(&self.rows))
        );
        if !self.derived.is_empty() {
            let _ = writeln!(
                md,
                "Derived from the table (targets of issue 17 in the header):\n\n```\n{}```\n",
                render_table(&DERIVED_HEADER, &derived_table(&self.derived))
            );
        }
        if let Some(density) = &self.density {
            md.push_str(&density.markdown());
        }
        md
    }
}

/// `doc` with `section` inserted before its first `## ` heading (the newest run goes
/// first, under the file's introduction), or at its end when it has none.
pub fn splice(doc: &str, section: &str) -> String {
    let at = if doc.starts_with("## ") {
        Some(0)
    } else {
        doc.find("\n## ").map(|i| i + 1)
    };
    let section = section.trim_end();
    match at {
        Some(i) => format!("{}{section}\n\n{}", &doc[..i], &doc[i..]),
        None if doc.is_empty() => format!("{section}\n"),
        None => format!("{}\n\n{section}\n", doc.trim_end()),
    }
}

/// The machine the figures come from: ratios only compare within one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// Logical cores available to the process.
    pub cores: usize,
    /// CPU model (from /proc/cpuinfo), when known.
    pub cpu: Option<String>,
    /// `linux`, `macos`, …
    pub os: String,
    /// `x86_64`, `aarch64`, …
    pub arch: String,
    /// The newt that measured.
    pub newt_version: String,
}

impl Machine {
    /// This machine.
    pub fn detect() -> Machine {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, model)| model.trim().to_string())
            });
        Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu,
            os: std::env::consts::OS.into(),
            arch: std::env::consts::ARCH.into(),
            newt_version: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

/// One measured (or skipped) configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// `wasm`, `python` or `wasi:http` (the component both newt and `wasmtime serve`
    /// run).
    pub backend: String,
    /// A start kind (`cold`, `prewarmed`, `warm`) or a peer (see [`peer`]).
    pub kind: String,
    /// Calls in flight at once.
    pub concurrency: usize,
    /// Every call's client-side latency, ms, in completion order.
    pub samples_ms: Vec<f64>,
    /// Median latency, ms.
    pub p50_ms: Option<f64>,
    /// 90th percentile, ms.
    pub p90_ms: Option<f64>,
    /// 99th percentile, ms.
    pub p99_ms: Option<f64>,
    /// Calls per second over the row's wall-clock time.
    pub calls_per_sec: Option<f64>,
    /// Why the row was not measured (a peer not installed, no Docker engine, a failure).
    pub skipped: Option<String>,
    /// Peers: newt's p50 divided by this row's p50 (below 1, newt is faster).
    pub ratio: Option<f64>,
    /// `docker run`: newt's cold p50 divided by this row's (a container per call both).
    #[serde(default)]
    pub ratio_cold: Option<f64>,
    /// newt rows: responses whose `x-newt-start` was not the row's kind.
    #[serde(default)]
    pub start_mismatches: Option<u64>,
    /// Peer rows: what each side ran (`both: examples/hello (wasm32-wasip1)`).
    #[serde(default)]
    pub work: Option<String>,
}

impl Row {
    /// A row from samples (ms) taken over `wall`.
    pub fn measured(
        backend: &str,
        kind: &str,
        concurrency: usize,
        samples_ms: Vec<f64>,
        wall: Duration,
    ) -> Row {
        let summary = stats::summarize(&samples_ms, wall);
        Row {
            backend: backend.into(),
            kind: kind.into(),
            concurrency,
            p50_ms: summary.map(|s| s.p50_ms),
            p90_ms: summary.map(|s| s.p90_ms),
            p99_ms: summary.map(|s| s.p99_ms),
            calls_per_sec: summary.map(|s| s.calls_per_sec),
            samples_ms,
            skipped: None,
            ratio: None,
            ratio_cold: None,
            start_mismatches: None,
            work: None,
        }
    }

    /// The row, saying what each side ran.
    pub fn with_work(mut self, work: impl Into<String>) -> Row {
        self.work = Some(work.into());
        self
    }

    /// A row that was not measured, and why (for an absent peer: how to install it).
    pub fn skipped(backend: &str, kind: &str, concurrency: usize, reason: &str) -> Row {
        Row {
            backend: backend.into(),
            kind: kind.into(),
            concurrency,
            samples_ms: Vec::new(),
            p50_ms: None,
            p90_ms: None,
            p99_ms: None,
            calls_per_sec: None,
            skipped: Some(reason.into()),
            ratio: None,
            ratio_cold: None,
            start_mismatches: None,
            work: None,
        }
    }

    /// Whether the row is a peer rather than newt.
    pub fn is_peer(&self) -> bool {
        !START_KINDS.contains(&self.kind.as_str())
    }

    /// The row's progress line for stderr.
    pub fn progress_line(&self) -> String {
        let what = format!("{} {} c={}", self.backend, self.kind, self.concurrency);
        match (&self.skipped, self.p50_ms, self.calls_per_sec) {
            (Some(reason), _, _) => format!("bench: {what}: skipped: {reason}"),
            (None, Some(p50), Some(rate)) => format!(
                "bench: {what}: {} calls, p50 {} ms, {rate:.0} calls/s{}",
                self.samples_ms.len(),
                ms(p50),
                self.mismatch_note()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default()
            ),
            _ => format!("bench: {what}: no samples"),
        }
    }

    fn mismatch_note(&self) -> Option<String> {
        self.start_mismatches
            .filter(|&n| n > 0)
            .map(|n| format!("{n} of {} not {}", self.samples_ms.len(), self.kind))
    }
}

/// Sets each peer row's ratio: newt's warm p50 over the peer's p50 (wasm peers against
/// newt's wasm, container peers against newt's python), and for `docker run` also
/// newt's cold p50 over it. newt's figure is taken at the lowest concurrency measured,
/// as the peers run one call at a time.
pub fn apply_ratios(rows: &mut [Row]) {
    let newt_p50 = |rows: &[Row], backend: &str, kind: &str| {
        rows.iter()
            .filter(|r| r.backend == backend && r.kind == kind && r.skipped.is_none())
            .min_by_key(|r| r.concurrency)
            .and_then(|r| r.p50_ms)
    };
    let wasm_warm = newt_p50(rows, "wasm", "warm");
    let python_warm = newt_p50(rows, "python", "warm");
    let python_cold = newt_p50(rows, "python", "cold");
    // `wasmtime serve` and the HTTP floor are loaded like newt, at each concurrency:
    // compare like with like (`wasmtime serve` against newt running the same
    // component, the floor against newt's warm wasm).
    let warm_at = |backend: &str| -> Vec<(usize, Option<f64>)> {
        rows.iter()
            .filter(|r| r.backend == backend && r.kind == "warm" && r.skipped.is_none())
            .map(|r| (r.concurrency, r.p50_ms))
            .collect()
    };
    let (wasm_warm_at, component_warm_at) = (warm_at("wasm"), warm_at(COMPONENT));
    let at = |rows: &[(usize, Option<f64>)], c: usize| {
        rows.iter()
            .find(|(at, _)| *at == c)
            .and_then(|(_, p50)| *p50)
    };
    for row in rows.iter_mut().filter(|r| r.is_peer()) {
        let warm = if row.kind == peer::WASMTIME_SERVE {
            at(&component_warm_at, row.concurrency)
        } else if row.kind == peer::HTTP_FLOOR {
            at(&wasm_warm_at, row.concurrency)
        } else if row.backend == "wasm" {
            wasm_warm
        } else {
            python_warm
        };
        row.ratio = stats::ratio(warm, row.p50_ms);
        if row.kind == peer::DOCKER_RUN {
            row.ratio_cold = stats::ratio(python_cold, row.p50_ms);
        }
    }
}

/// The table's header.
pub const TABLE_HEADER: [&str; 9] = [
    "BACKEND",
    "KIND",
    "CONC",
    "P50 MS",
    "P90 MS",
    "P99 MS",
    "CALLS/S",
    "NEWT RATIO",
    "NOTE",
];

/// The table's cells, a row per report row.
pub fn table(rows: &[Row]) -> Vec<Vec<String>> {
    let opt = |v: Option<f64>, f: fn(f64) -> String| v.map_or_else(|| "-".into(), f);
    rows.iter()
        .map(|r| {
            let ratio = match (r.ratio, r.ratio_cold) {
                (Some(warm), Some(cold)) => {
                    format!("{} (cold {})", format_ratio(warm), format_ratio(cold))
                }
                (Some(warm), None) => format_ratio(warm),
                (None, Some(cold)) => format!("cold {}", format_ratio(cold)),
                (None, None) => "-".into(),
            };
            let note = match &r.skipped {
                Some(reason) => format!("skipped: {reason}"),
                None => [r.work.clone(), r.mismatch_note()]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join("; "),
            };
            vec![
                r.backend.clone(),
                r.kind.clone(),
                r.concurrency.to_string(),
                opt(r.p50_ms, ms),
                opt(r.p90_ms, ms),
                opt(r.p99_ms, ms),
                opt(r.calls_per_sec, |c| format!("{c:.0}")),
                ratio,
                note,
            ]
        })
        .collect()
}

/// Milliseconds with three significant-ish digits: `0.042`, `1.27`, `950`.
fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn report() -> Report {
        let mut rows = vec![
            Row::measured(
                "wasm",
                "warm",
                1,
                vec![1.0, 2.0, 3.0],
                Duration::from_millis(6),
            ),
            Row::measured("wasm", "warm", 4, vec![9.0], Duration::from_millis(9)),
            Row::measured("wasm", peer::IN_PROCESS, 1, vec![0.5], Duration::ZERO),
            Row::measured("wasm", peer::HTTP_FLOOR, 1, vec![1.0], Duration::ZERO),
            Row::measured("wasm", peer::HTTP_FLOOR, 4, vec![3.0], Duration::ZERO),
            Row::measured(COMPONENT, "warm", 1, vec![0.2], Duration::from_millis(1)),
            Row::measured(
                COMPONENT,
                peer::WASMTIME_SERVE,
                1,
                vec![0.4],
                Duration::ZERO,
            ),
            Row::skipped(
                "wasm",
                peer::WASMTIME_RUN,
                1,
                "install with cargo install wasmtime-cli --version 48.0.8 --locked",
            ),
            Row::measured("python", "cold", 1, vec![400.0], Duration::from_millis(400)),
            Row::measured("python", "warm", 1, vec![2.0], Duration::from_millis(2)),
            Row::measured("python", peer::DOCKER_RUN, 1, vec![1000.0], Duration::ZERO),
        ];
        apply_ratios(&mut rows);
        Report {
            machine: Machine::detect(),
            date: "2026-11-23 16:30:05 UTC".into(),
            derived: derive(&rows),
            rows,
            commit: Some("abc1234".into()),
            workloads: vec![Workload {
                backend: "wasm".into(),
                function: "examples/hello (wasm32-wasip1)".into(),
                input: "{}".into(),
            }],
            density: None,
        }
    }

    #[test]
    fn a_skipped_row_has_its_reason_and_no_numbers() {
        let row = Row::skipped("wasm", peer::WASMTIME_RUN, 1, "install it");
        let json = serde_json::to_value(&row).unwrap();
        assert_eq!(json["skipped"], "install it");
        for field in ["p50_ms", "p90_ms", "p99_ms", "calls_per_sec", "ratio"] {
            assert_eq!(json[field], Value::Null, "{field}");
        }
        assert_eq!(json["samples_ms"], serde_json::json!([]));
        assert!(row.is_peer());
        assert!(row.progress_line().contains("skipped: install it"));
    }

    #[test]
    fn peer_ratios_compare_against_newt_at_the_lowest_concurrency() {
        let report = report();
        let find = |kind: &str| report.rows.iter().find(|r| r.kind == kind).unwrap();
        // newt wasm warm p50 at c=1 is 2 ms; the floor's is 0.5 ms.
        assert_eq!(find(peer::IN_PROCESS).ratio, Some(4.0));
        assert_eq!(find(peer::WASMTIME_RUN).ratio, None);
        // The HTTP floor is loaded like newt: each concurrency against its own.
        let floor_at = |c: usize| {
            let row = report.rows.iter();
            row.filter(|r| r.kind == peer::HTTP_FLOOR && r.concurrency == c)
                .find_map(|r| r.ratio)
        };
        assert_eq!(floor_at(1), Some(2.0));
        assert_eq!(floor_at(4), Some(3.0));
        // `wasmtime serve` against newt running the same component, not the echo.
        let serve = report.rows.iter().find(|r| r.kind == peer::WASMTIME_SERVE);
        assert_eq!(serve.unwrap().ratio, Some(0.5));
        let run = find(peer::DOCKER_RUN);
        assert_eq!(run.ratio, Some(2.0 / 1000.0));
        assert_eq!(run.ratio_cold, Some(0.4));
        assert_eq!(find("warm").ratio, None);
    }

    #[test]
    fn a_report_survives_a_json_round_trip() {
        let report = report();
        let text = serde_json::to_string_pretty(&report).unwrap();
        let back: Report = serde_json::from_str(&text).unwrap();
        assert_eq!(back, report);
        let json: Value = serde_json::from_str(&text).unwrap();
        assert!(json["machine"]["cores"].as_u64().unwrap() >= 1);
        assert_eq!(json["rows"][0]["p50_ms"], 2.0);
        assert_eq!(
            json["rows"][0]["samples_ms"],
            serde_json::json!([1.0, 2.0, 3.0])
        );
    }

    #[test]
    fn derived_figures_compare_warm_with_the_floor_and_newt_with_serve() {
        let at = |backend: &str, kind: &str, c: usize, p50: f64, calls: usize, ms: u64| {
            Row::measured(
                backend,
                kind,
                c,
                vec![p50; calls],
                Duration::from_millis(ms),
            )
        };
        let rows = vec![
            // c=1: warm 0.25 ms p50 at 4000/s; floor 0.2 ms at 5000/s.
            at("wasm", "warm", 1, 0.25, 4, 1),
            at("wasm", peer::HTTP_FLOOR, 1, 0.2, 5, 1),
            // c=64: warm 3000/s, floor 5000/s; newt's component 6000/s, serve 2000/s.
            at("wasm", "warm", 64, 2.0, 3, 1),
            at("wasm", peer::HTTP_FLOOR, 64, 1.0, 5, 1),
            at(COMPONENT, "warm", 64, 1.0, 6, 1),
            at(COMPONENT, peer::WASMTIME_SERVE, 64, 3.0, 2, 1),
            Row::skipped(COMPONENT, peer::WASMTIME_SERVE, 1, "not installed"),
        ];
        let derived = derive(&rows);
        assert_eq!(derived.len(), 2);
        let (one, many) = (&derived[0], &derived[1]);
        assert_eq!(one.concurrency, 1);
        assert!((one.warm_of_floor_pct.unwrap() - 80.0).abs() < 1e-9);
        assert!((one.p50_over_floor_us.unwrap() - 50.0).abs() < 1e-9);
        assert_eq!(
            one.component_over_serve, None,
            "serve skipped, newt not measured"
        );
        assert!((many.warm_of_floor_pct.unwrap() - 60.0).abs() < 1e-9);
        assert!((many.component_over_serve.unwrap() - 3.0).abs() < 1e-9);
        let cells = derived_table(&derived);
        assert_eq!(cells[0], ["1", "80 %", "50 us", "-"]);
        assert_eq!(cells[1], ["64", "60 %", "1000 us", "3.0×"]);
        assert!(derive(&[]).is_empty());
    }

    #[test]
    fn the_markdown_section_has_date_commit_command_and_tables() {
        let mut report = report();
        report.rows[2].work = Some("both: examples/hello (wasm32-wasip1)".into());
        let md = report.markdown("newt bench --self-host");
        assert!(
            md.starts_with("## 2026-11-23 16:30:05 UTC: `newt bench`, commit abc1234\n"),
            "{md}"
        );
        assert!(md.contains("- Command: `newt bench --self-host`."));
        assert!(md.contains("- `wasm` rows run examples/hello (wasm32-wasip1), input `{}`."));
        assert!(md.contains("both: examples/hello (wasm32-wasip1)"), "{md}");
        assert!(md.contains(DERIVED_HEADER[1]), "{md}");
        // The table is the one printed: padded columns, no trailing spaces.
        let table = render_table(&TABLE_HEADER, &table(&report.rows));
        assert!(md.contains(&table));
        assert!(table.lines().all(|l| !l.ends_with(' ')));
    }

    #[test]
    fn a_section_goes_before_the_first_run() {
        let doc = "# Benchmarks\n\nIntro.\n\n## 2026-12-01: old\n\ntext\n## Method\n";
        let new = splice(doc, "## 2026-12-03: new\n\nfigures\n\n");
        assert_eq!(
            new,
            "# Benchmarks\n\nIntro.\n\n## 2026-12-03: new\n\nfigures\n\n## 2026-12-01: old\n\ntext\n## Method\n"
        );
        assert_eq!(splice("# B\n", "## s\n"), "# B\n\n## s\n");
        assert_eq!(splice("", "## s"), "## s\n");
        assert_eq!(splice("## a\n", "## s"), "## s\n\n## a\n");
    }

    #[test]
    fn the_table_shows_ratios_and_skip_reasons() {
        let cells = table(&report().rows);
        assert!(cells.iter().all(|r| r.len() == TABLE_HEADER.len()));
        let wasmtime = cells.iter().find(|r| r[1] == peer::WASMTIME_RUN).unwrap();
        assert_eq!(wasmtime[3], "-");
        assert!(wasmtime[8].starts_with("skipped: install with cargo install"));
        let floor = cells.iter().find(|r| r[1] == peer::IN_PROCESS).unwrap();
        assert_eq!(floor[7], "4.0×");
        let run = cells.iter().find(|r| r[1] == peer::DOCKER_RUN).unwrap();
        assert_eq!(run[7], "0.002× (cold 0.40×)");
    }
}

//! `newt bench --self-host --quick`: every row is present, measured rows are positive,
//! absent peers are skipped rows with a reason. No speed is asserted.

use newt_tests::{docker_available, newt_bin};
use serde_json::Value;
use std::process::Command;

/// The quick run's concurrencies.
const QUICK_CONCURRENCY: [u64; 2] = [1, 4];

fn find<'a>(rows: &'a [Value], backend: &str, kind: &str, concurrency: u64) -> &'a Value {
    rows.iter()
        .find(|r| r["backend"] == backend && r["kind"] == kind && r["concurrency"] == concurrency)
        .unwrap_or_else(|| panic!("no row {backend} {kind} c={concurrency} in {rows:#?}"))
}

fn assert_measured(row: &Value) {
    assert!(row["skipped"].is_null(), "skipped: {row}");
    assert!(row["p50_ms"].as_f64().unwrap() > 0.0, "{row}");
    assert!(row["calls_per_sec"].as_f64().unwrap() > 0.0, "{row}");
    assert!(!row["samples_ms"].as_array().unwrap().is_empty(), "{row}");
}

#[test]
fn quick_self_hosted_bench_reports_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.json");
    let chart = dir.path().join("chart.svg");
    let docker = docker_available();
    let run = Command::new(newt_bin())
        .args(["bench", "--self-host", "--quick", "--json"])
        .arg(&out)
        .arg("--chart")
        .arg(&chart)
        .env_remove("NEWT_SERVER")
        .env_remove("NEWT_TOKEN")
        .output()
        .expect("run newt bench");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "newt bench failed:\n{stderr}");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.starts_with("BACKEND"), "{stdout}");
    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("wasm warm c=1"),
        "{svg}"
    );

    let report: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert!(report["machine"]["cores"].as_u64().unwrap() >= 1);
    assert!(report["date"].is_string());
    let rows = report["rows"].as_array().unwrap();

    // Every row is either measured with positive figures or skipped with a reason.
    for row in rows {
        match row["skipped"].as_str() {
            Some(reason) => {
                assert!(!reason.is_empty(), "{row}");
                assert!(row["p50_ms"].is_null(), "{row}");
            }
            None => assert_measured(row),
        }
    }

    for kind in ["cold", "prewarmed", "warm"] {
        for c in QUICK_CONCURRENCY {
            assert_measured(find(rows, "wasm", kind, c));
        }
    }
    assert_measured(find(rows, "wasm", "in-process", 1));
    for c in QUICK_CONCURRENCY {
        let floor = find(rows, "wasm", "http floor", c);
        assert_measured(floor);
        // Every floor call really was the 404 it stands for.
        assert_eq!(floor["start_mismatches"], 0, "{floor}");
    }
    let wasmtime = find(rows, "wasm", "wasmtime run", 1);
    if wasmtime["skipped"].is_string() {
        assert!(
            wasmtime["skipped"]
                .as_str()
                .unwrap()
                .contains("cargo install wasmtime-cli"),
            "{wasmtime}"
        );
    } else {
        assert!(wasmtime["ratio"].as_f64().unwrap() > 0.0, "{wasmtime}");
    }
    assert!(
        find(rows, "wasm", "in-process", 1)["ratio"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    // The HTTP comparison: measured beside newt at each concurrency, or skipped with
    // what to install (wasmtime, cargo, the wasm32-wasip2 target).
    // Equal work: newt and `wasmtime serve` run the identical wasi:http component.
    for c in QUICK_CONCURRENCY {
        let newt_component = find(rows, "wasi:http", "warm", c);
        let serve = find(rows, "wasi:http", "wasmtime serve", c);
        match newt_component["skipped"].as_str() {
            // Only a missing target or cargo may keep the component from being built.
            Some(reason) => assert!(reason.contains("wasm32-wasip2"), "{newt_component}"),
            None => {
                assert_measured(newt_component);
                assert_eq!(newt_component["start_mismatches"], 0, "{newt_component}");
            }
        }
        match serve["skipped"].as_str() {
            Some(reason) => assert!(
                reason.contains("install") || reason.contains("cargo"),
                "{serve}"
            ),
            None => assert!(serve["ratio"].as_f64().unwrap() > 0.0, "{serve}"),
        }
    }

    let python: Vec<(&str, u64)> = [("cold", 1), ("cold", 4), ("prewarmed", 1)]
        .into_iter()
        .chain(QUICK_CONCURRENCY.map(|c| ("warm", c)))
        .collect();
    let peers = ["docker run", "docker exec"];
    if docker {
        for (kind, c) in python {
            assert_measured(find(rows, "python", kind, c));
        }
        for peer in peers {
            let row = find(rows, "python", peer, 1);
            assert_measured(row);
            assert!(row["ratio"].as_f64().unwrap() > 0.0, "{row}");
        }
    } else {
        // Without an engine the rows are still there, skipped with the reason.
        for (kind, c) in python {
            assert!(find(rows, "python", kind, c)["skipped"].is_string());
        }
        for peer in peers {
            assert!(find(rows, "python", peer, 1)["skipped"].is_string());
        }
    }
}

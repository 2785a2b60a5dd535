//! `newt gc [--dry-run]`: removes old call records and what no live version
//! references (bundles, compiled modules, function images), or lists it.

use reqwest::Method;

use crate::client::{Client, ClientOpts, decode};
use crate::service::gc::GcReport;

/// Arguments of `newt gc`.
#[derive(Debug, clap::Args)]
pub struct GcArgs {
    /// List what would go and the bytes it frees; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub client: ClientOpts,
}

/// Asks the server to collect, and prints what went (or would).
pub async fn run(args: GcArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.client)?;
    let path = format!("/v1/gc?dry_run={}", args.dry_run);
    let body: serde_json::Value = client
        .send_json(client.request(Method::POST, &path))
        .await?;
    if args.client.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(());
    }
    let report: GcReport = decode(body)?;
    print!("{}", render(&report));
    Ok(())
}

/// The report as people read it: each item, then a total per kind and overall.
pub fn render(report: &GcReport) -> String {
    let mut out = String::new();
    let verb = if report.dry_run {
        "would free"
    } else {
        "freed"
    };
    if !report.items.is_empty() {
        let rows: Vec<Vec<String>> = report
            .items
            .iter()
            .map(|item| {
                vec![
                    item.kind.clone(),
                    short(&item.name),
                    bytes(item.bytes),
                    match &item.error {
                        Some(e) => format!("{} (kept: {e})", item.why),
                        None => item.why.clone(),
                    },
                ]
            })
            .collect();
        out.push_str(&table(&["KIND", "NAME", "SIZE", "WHY"], &rows));
        out.push('\n');
    }
    let mut totals: Vec<Vec<String>> = ["records", "bundles", "artifacts", "images"]
        .iter()
        .map(|kind| {
            let total = report.kinds.get(*kind).copied().unwrap_or_default();
            vec![
                kind.to_string(),
                total.count.to_string(),
                bytes(total.bytes),
            ]
        })
        .collect();
    totals.push(vec![
        "total".into(),
        report.total.count.to_string(),
        bytes(report.total.bytes),
    ]);
    out.push_str(&table(&["KIND", "COUNT", verb], &totals));
    for note in &report.notes {
        out.push_str(&format!("note: {note}\n"));
    }
    if report.dry_run {
        out.push_str("dry run: nothing was removed (run `newt gc` to remove it)\n");
    }
    out
}

/// A digest shortened for a table; tags and file names stay whole.
fn short(name: &str) -> String {
    if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
        format!("sha256:{}…", &name[..16])
    } else {
        name.to_string()
    }
}

/// Bytes in the largest unit that keeps a number above 1 (1024-based).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `client::print_table`'s layout, as a string (so tests can read it).
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::gc::{GcItem, GcTotal};

    #[test]
    fn a_dry_run_lists_items_and_totals() {
        let mut report = GcReport {
            dry_run: true,
            ..GcReport::default()
        };
        report.items.push(GcItem {
            kind: "bundle".into(),
            name: "ab".repeat(32),
            bytes: 2048,
            why: "function deleted".into(),
            error: None,
        });
        report.kinds.insert(
            "bundles".into(),
            GcTotal {
                count: 1,
                bytes: 2048,
            },
        );
        report.total = GcTotal {
            count: 1,
            bytes: 2048,
        };
        let text = render(&report);
        assert!(text.contains("sha256:abababababababab…"), "{text}");
        assert!(text.contains("2.0 KiB"), "{text}");
        assert!(text.contains("function deleted"), "{text}");
        assert!(text.contains("would free"), "{text}");
        assert!(
            text.lines()
                .any(|l| l.starts_with("total") && l.contains("2.0 KiB"))
        );
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
    }
}

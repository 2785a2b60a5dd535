//! `--chart out.svg`: the report drawn as one bar per row, latency on a log scale.
//!
//! Each bar is the row's p50, with a whisker to its p99; rows are grouped by backend,
//! newt's start kinds first and the peers after. Skipped rows are listed with their
//! reason, never left out. Plain SVG, no dependency.

use super::report::Row;
use std::fmt::Write;

const WIDTH: f64 = 900.0;
const LABEL_WIDTH: f64 = 260.0;
const ROW_HEIGHT: f64 = 22.0;
const TOP: f64 = 50.0;

/// Escapes text for SVG.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The SVG document for `rows`.
pub fn render(rows: &[Row], title: &str) -> String {
    let measured: Vec<&Row> = rows
        .iter()
        .filter(|r| r.skipped.is_none() && r.p50_ms.is_some())
        .collect();
    let skipped: Vec<&Row> = rows.iter().filter(|r| r.skipped.is_some()).collect();
    let values: Vec<f64> = measured
        .iter()
        .flat_map(|r| [r.p50_ms, r.p99_ms])
        .flatten()
        .filter(|v| *v > 0.0)
        .collect();
    // Whole decades around the data, so the axis reads 0.01, 0.1, 1, 10 ms...
    let low = values.iter().cloned().fold(f64::INFINITY, f64::min);
    let high = values.iter().cloned().fold(0.0, f64::max);
    let (low, high) = if values.is_empty() {
        (0.01, 1.0)
    } else {
        (
            10f64.powf(low.log10().floor()),
            10f64.powf(high.log10().ceil().max(low.log10().floor() + 1.0)),
        )
    };
    let plot = WIDTH - LABEL_WIDTH - 20.0;
    let x = |ms: f64| {
        LABEL_WIDTH + plot * (ms.max(low).log10() - low.log10()) / (high.log10() - low.log10())
    };
    let height = TOP + ROW_HEIGHT * (measured.len() + skipped.len()) as f64 + 60.0;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="10" y="20" font-size="15">{}</text>"#,
        escape(title)
    );
    let _ = writeln!(
        svg,
        r##"<text x="10" y="38" fill="#555">p50 (bar) and p99 (whisker), ms, log scale</text>"##
    );
    let axis_y = TOP + ROW_HEIGHT * measured.len() as f64 + 8.0;
    let mut decade = low;
    while decade <= high * 1.0001 {
        let dx = x(decade);
        let _ = writeln!(
            svg,
            r##"<line x1="{dx:.1}" y1="{TOP}" x2="{dx:.1}" y2="{axis_y:.1}" stroke="#ddd"/><text x="{dx:.1}" y="{:.1}" text-anchor="middle" fill="#555">{decade}</text>"##,
            axis_y + 14.0
        );
        decade *= 10.0;
    }
    for (i, row) in measured.iter().enumerate() {
        let y = TOP + ROW_HEIGHT * i as f64;
        let p50 = row.p50_ms.unwrap_or(low);
        let colour = match row.kind.as_str() {
            "cold" => "#4a7bd0",
            "prewarmed" => "#e0a030",
            "warm" => "#3aa55d",
            _ => "#999999",
        };
        let label = format!("{} {} c={}", row.backend, row.kind, row.concurrency);
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LABEL_WIDTH - 8.0,
            y + 14.0,
            escape(&label)
        );
        let _ = writeln!(
            svg,
            r##"<rect x="{LABEL_WIDTH}" y="{:.1}" width="{:.1}" height="14" fill="{colour}"><title>{} ms</title></rect>"##,
            y + 3.0,
            (x(p50) - LABEL_WIDTH).max(1.0),
            p50
        );
        if let Some(p99) = row.p99_ms {
            let _ = writeln!(
                svg,
                r#"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="black"/>"#,
                x(p50),
                y + 10.0,
                x(p99),
                y + 10.0
            );
        }
    }
    for (i, row) in skipped.iter().enumerate() {
        let y = axis_y + 40.0 + ROW_HEIGHT * i as f64;
        let text = format!(
            "{} {} c={}: skipped: {}",
            row.backend,
            row.kind,
            row.concurrency,
            row.skipped.as_deref().unwrap_or_default()
        );
        let _ = writeln!(
            svg,
            r##"<text x="10" y="{y:.1}" fill="#a33">{}</text>"##,
            escape(&text)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn one_bar_per_measured_row_and_skipped_rows_listed() {
        let rows = vec![
            Row::measured(
                "wasm",
                "warm",
                1,
                vec![0.1, 0.2, 0.3],
                Duration::from_millis(1),
            ),
            Row::measured(
                "python",
                "cold",
                1,
                vec![300.0, 320.0],
                Duration::from_secs(1),
            ),
            Row::skipped("wasm", "wasmtime run", 1, "install with cargo install <x>"),
        ];
        let svg = render(&rows, "newt bench");
        assert!(svg.starts_with("<svg"));
        assert_eq!(svg.matches("<rect").count(), 2);
        assert!(svg.contains("wasm warm c=1"));
        assert!(svg.contains("skipped: install with cargo install &lt;x&gt;"));
        // The axis spans whole decades around the data: 0.1 ms to 1000 ms.
        assert!(
            svg.contains(">0.1</text>") && svg.contains(">1000</text>"),
            "{svg}"
        );
    }

    #[test]
    fn log_scale_keeps_order() {
        let rows = vec![
            Row::measured("wasm", "warm", 1, vec![0.05], Duration::from_millis(1)),
            Row::measured("python", "cold", 1, vec![250.0], Duration::from_secs(1)),
        ];
        let svg = render(&rows, "t");
        let widths: Vec<f64> = svg
            .match_indices("width=\"")
            .skip(1)
            .filter_map(|(i, _)| svg[i + 7..].split('"').next()?.parse().ok())
            .collect();
        assert_eq!(widths.len(), 2, "{svg}");
        assert!(widths[0] < widths[1]);
    }
}

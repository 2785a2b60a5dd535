//! The HTTP client behind the CLI's client commands, and their output helpers.

use anyhow::{Context, bail};
use reqwest::{Method, RequestBuilder, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Where the CLI finds the server unless told otherwise.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7878";

/// Options every client command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientOpts {
    /// The newt server to talk to.
    #[arg(long, env = "NEWT_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// Bearer token, if the server requires one.
    #[arg(long, env = "NEWT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print JSON for scripts instead of tables for people.
    #[arg(long)]
    pub json: bool,
}

/// A client of one server.
#[derive(Debug)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// A client for the server and token in `opts`.
    pub fn new(opts: &ClientOpts) -> anyhow::Result<Client> {
        let base = opts.server.trim_end_matches('/').to_string();
        if !base.starts_with("http://") && !base.starts_with("https://") {
            bail!("--server must be an http:// URL, got {base:?}");
        }
        Ok(Client {
            base,
            token: opts.token.clone().filter(|t| !t.is_empty()),
            http: reqwest::Client::builder()
                .build()
                .context("building the HTTP client")?,
        })
    }

    /// A request to `path` (which starts with `/`).
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends a request; a non-2xx answer becomes an error carrying the server's message.
    pub async fn send(&self, request: RequestBuilder) -> anyhow::Result<Response> {
        let response = request.send().await.with_context(|| {
            format!(
                "cannot reach the newt server at {} (is `newt serve` running?)",
                self.base
            )
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(server_error(response).await)
    }

    /// Sends a request and decodes its JSON answer as `T`: a type of
    /// [`crate::wire`], or a [`serde_json::Value`] to keep it as the server sent it.
    pub async fn send_json<T: DeserializeOwned>(
        &self,
        request: RequestBuilder,
    ) -> anyhow::Result<T> {
        let response = self.send(request).await?;
        response
            .json()
            .await
            .context("the server sent invalid JSON")
    }

    /// GETs `path` and decodes its JSON answer as `T`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send_json(self.request(Method::GET, path)).await
    }

    /// GETs JSON, untyped.
    pub async fn get_json(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        self.get(path).await
    }
}

/// Decodes an answer already read as JSON (kept raw for `--json`) into a wire type.
pub fn decode<T: DeserializeOwned>(value: serde_json::Value) -> anyhow::Result<T> {
    serde_json::from_value(value)
        .context("the server's answer does not have the shape this newt expects")
}

/// Turns an error response into a message: the server's own when it sent one.
pub async fn server_error(response: Response) -> anyhow::Error {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or(body);
    anyhow::anyhow!("{message} ({status})")
}

/// Percent-encodes a query value.
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Prints rows as a left-aligned table with a header.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
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
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// A field as text for a table cell, written as it is in JSON (`-` when absent,
/// strings without quotes): the same text whether it comes from a wire type or a
/// [`serde_json::Value`].
pub fn cell<T: Serialize + ?Sized>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::Null) | Err(_) => "-".into(),
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
    }
}

/// Unix milliseconds (an integer, an `Option` of one, or a JSON number) as a UTC
/// timestamp (`2026-11-23 16:30:05`); `-` when absent.
pub fn timestamp<T: Serialize + ?Sized>(ms: &T) -> String {
    let Some(ms) = serde_json::to_value(ms).ok().and_then(|v| v.as_i64()) else {
        return "-".into();
    };
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_dates() {
        assert_eq!(timestamp(&serde_json::json!(0)), "1970-01-01 00:00:00");
        assert_eq!(
            timestamp(&serde_json::json!(1_795_451_405_000_i64)),
            "2026-11-23 16:30:05"
        );
        assert_eq!(timestamp(&serde_json::Value::Null), "-");
        assert_eq!(timestamp(&Some(0_i64)), "1970-01-01 00:00:00");
        assert_eq!(timestamp(&None::<i64>), "-");
    }

    #[test]
    fn typed_cells_read_like_their_json() {
        use crate::store::CallStatus;
        use newt_runtime::StartKind;
        assert_eq!(cell(&CallStatus::Done), "done");
        assert_eq!(cell(&Some(StartKind::Cold)), "cold");
        assert_eq!(cell(&None::<StartKind>), "-");
        assert_eq!(cell("dice"), "dice");
        assert_eq!(cell(&7_i64), "7");
        // Floats as serde_json writes them, as before: `2.0`, not `2`.
        assert_eq!(cell(&Some(2.0_f64)), "2.0");
        assert_eq!(cell(&Some(0.125_f64)), "0.125");
        assert_eq!(cell(&serde_json::json!(2.0)), "2.0");
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode("a b&c"), "a%20b%26c");
        assert_eq!(encode("dice-2"), "dice-2");
    }
}

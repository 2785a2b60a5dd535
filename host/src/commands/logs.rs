//! `newt logs FN`: the logs of a function's calls, each under a header line (time,
//! call number, status, duration). With `-f` it follows new calls as they finish
//! (server-sent events) until Ctrl-C; if the connection drops (the server
//! restarted), it reconnects with backoff and resumes from the last call it showed.

use anyhow::{Context, bail};
use reqwest::Method;
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

use crate::client::{Client, ClientOpts, encode, server_error};

/// How long a followed stream may stay silent (the server sends a heartbeat every
/// 15 s) before the connection is taken for dead and made again.
const SILENCE_LIMIT: Duration = Duration::from_secs(45);
/// First and longest waits between reconnections.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// The largest event accepted from the server (a call's logs are capped at a few MiB
/// by the server; JSON escaping can make them longer).
const MAX_EVENT_BYTES: usize = 32 << 20;
/// Call numbers remembered to skip repeats after a reconnection.
const REMEMBERED_CALLS: usize = 4096;

/// Arguments of `newt logs`.
#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// The function.
    pub function: String,
    /// Keep printing calls as they finish, until Ctrl-C.
    #[arg(short, long)]
    pub follow: bool,
    /// Only calls that finished since: a duration back from now (10m, 2h) or an
    /// RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
    /// Only this call (its id or number).
    #[arg(long = "call", value_name = "ID")]
    pub call: Option<String>,
    /// How many recent calls (1-1000) [default: 20; none with -f unless --since]
    #[arg(long)]
    pub limit: Option<usize>,
    #[command(flatten)]
    pub client: ClientOpts,
}

/// Prints the calls' logs; with `--follow`, until interrupted.
pub async fn run(args: LogsArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.client)?;
    if !args.follow {
        let limit = args.limit.unwrap_or(20);
        let path = logs_path(&args, args.since.as_deref(), Some(limit), false);
        let response = client.send(client.request(Method::GET, &path)).await?;
        let body = response.text().await.context("reading the logs")?;
        for line in body.lines().filter(|l| !l.trim().is_empty()) {
            let event: Value =
                serde_json::from_str(line).context("the server sent invalid JSON")?;
            print_event(&event, args.client.json);
        }
        return Ok(());
    }

    let mut since = args.since.clone();
    let mut seen = BTreeSet::new();
    let mut backoff = FIRST_BACKOFF;
    let mut connected_once = false;
    loop {
        let path = logs_path(&args, since.as_deref(), args.limit, true);
        let request = client
            .request(Method::GET, &path)
            .header(reqwest::header::ACCEPT, "text/event-stream");
        let ended = match request.send().await {
            Ok(response) if response.status().is_success() => {
                connected_once = true;
                // Calls that finish while a reconnection is under way are replayed
                // from here (repeats are skipped by number).
                if since.is_none() {
                    since = Some(crate::api::logs::rfc3339(crate::service::now_ms()));
                }
                backoff = FIRST_BACKOFF;
                follow(response, &args, &mut since, &mut seen).await
            }
            // A refusal (unknown function, bad token, bad query) will not pass by
            // waiting; too many followers or an unavailable server may.
            Ok(response) if !matches!(response.status().as_u16(), 429 | 502 | 503 | 504) => {
                return Err(server_error(response).await);
            }
            Ok(response) => Err(server_error(response).await),
            Err(e) if !connected_once => {
                return Err(anyhow::Error::new(e).context(format!(
                    "cannot reach the newt server at {} (is `newt serve` running?)",
                    args.client.server
                )));
            }
            Err(e) => Err(e.into()),
        };
        match ended {
            Ok(Done::CallShown) => return Ok(()),
            Ok(Done::Closed) => eprintln!("newt logs: the server closed the stream; reconnecting"),
            Err(e) => eprintln!("newt logs: {e:#}; reconnecting in {backoff:?}"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Why a followed stream ended without an error.
enum Done {
    /// The server ended it (shutting down).
    Closed,
    /// `--call` was given and that call was printed.
    CallShown,
}

fn logs_path(args: &LogsArgs, since: Option<&str>, limit: Option<usize>, follow: bool) -> String {
    let mut query = Vec::new();
    if follow {
        query.push("follow=true".to_string());
    }
    if let Some(since) = since {
        query.push(format!("since={}", encode(since)));
    }
    if let Some(call) = &args.call {
        query.push(format!("call={}", encode(call)));
    }
    if let Some(limit) = limit {
        query.push(format!("limit={limit}"));
    }
    format!(
        "/v1/functions/{}/logs?{}",
        encode(&args.function),
        query.join("&")
    )
}

/// Reads server-sent events until the stream ends, printing each call once.
async fn follow(
    mut response: reqwest::Response,
    args: &LogsArgs,
    since: &mut Option<String>,
    seen: &mut BTreeSet<i64>,
) -> anyhow::Result<Done> {
    let mut buffer: Vec<u8> = Vec::new();
    loop {
        let chunk = tokio::time::timeout(SILENCE_LIMIT, response.chunk())
            .await
            .map_err(|_| anyhow::anyhow!("no heartbeat from the server for {SILENCE_LIMIT:?}"))?
            .context("reading the stream")?;
        let Some(chunk) = chunk else {
            return Ok(Done::Closed);
        };
        buffer.extend_from_slice(&chunk);
        while let Some(end) = find_blank_line(&buffer) {
            let block: Vec<u8> = buffer.drain(..end.0 + end.1).collect();
            let text = String::from_utf8_lossy(&block[..end.0]);
            let (name, data) = parse_event(&text);
            match name.as_deref() {
                Some("call") => {
                    let event: Value =
                        serde_json::from_str(&data).context("the server sent invalid JSON")?;
                    let num = event["num"].as_i64().unwrap_or_default();
                    if seen.insert(num) {
                        print_event(&event, args.client.json);
                        while seen.len() > REMEMBERED_CALLS {
                            seen.pop_first();
                        }
                    }
                    // A reconnection resumes from the last call shown.
                    if let Some(time) = event["time"].as_str() {
                        *since = Some(time.to_string());
                    }
                    if args.call.is_some() {
                        return Ok(Done::CallShown);
                    }
                }
                Some("lagged") => {
                    let missed: Value = serde_json::from_str(&data).unwrap_or_default();
                    eprintln!(
                        "newt logs: fell behind: {} calls were not shown (see `newt calls --function {}`)",
                        missed["missed"], args.function
                    );
                }
                Some("error") => {
                    let error: Value = serde_json::from_str(&data).unwrap_or_default();
                    bail!("the server: {}", error["error"]["message"]);
                }
                _ => {} // comments (heartbeats) and unknown events
            }
        }
        if buffer.len() > MAX_EVENT_BYTES {
            bail!("an event from the server is over {MAX_EVENT_BYTES} bytes");
        }
    }
}

/// Where the first blank line (`\n\n` or `\r\n\r\n`) ends an event: (its start,
/// its length).
fn find_blank_line(buffer: &[u8]) -> Option<(usize, usize)> {
    let lf = buffer.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buffer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// An event block's `event:` name and its `data:` lines joined.
fn parse_event(block: &str) -> (Option<String>, String) {
    let mut name = None;
    let mut data: Vec<&str> = Vec::new();
    for line in block.lines() {
        if let Some(value) = line.strip_prefix("event:") {
            name = Some(value.trim().to_string());
        } else if let Some(value) = line.strip_prefix("data:") {
            data.push(value.strip_prefix(' ').unwrap_or(value));
        }
    }
    (name, data.join("\n"))
}

/// The header line of a call: `2026-12-02 11:30:05.123  #12  done  3.2 ms  <id>`.
pub fn header_line(event: &Value) -> String {
    let time = event["time"]
        .as_str()
        .map(|t| t.trim_end_matches('Z').replace('T', " "))
        .unwrap_or_else(|| "-".into());
    let duration = event["duration_ms"]
        .as_f64()
        .map(|ms| format!("{ms:.1} ms"))
        .unwrap_or_else(|| "-".into());
    format!(
        "=== {time}  #{}  {}  {duration}  {}",
        event["num"],
        event["status"].as_str().unwrap_or("-"),
        event["call_id"].as_str().unwrap_or("-"),
    )
}

fn print_event(event: &Value, json: bool) {
    if json {
        println!("{event}");
        return;
    }
    println!("{}", header_line(event));
    let logs = event["logs"].as_str().unwrap_or_default();
    if !logs.is_empty() {
        print!("{logs}");
        if !logs.ends_with('\n') {
            println!();
        }
    }
    if event["logs_truncated"].as_bool() == Some(true) {
        println!(
            "[logs cut: see `newt call {}`]",
            event["call_id"].as_str().unwrap_or("-")
        );
    }
    if let Some(error) = event["error"].as_str() {
        println!("error: {error}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_are_split_at_blank_lines() {
        let stream = b": keep-alive\n\nevent: call\nid: 3\ndata: {\"num\":3}\n\nevent: ca";
        let first = find_blank_line(stream).unwrap();
        assert_eq!(first, (12, 2));
        let rest = &stream[14..];
        let (at, len) = find_blank_line(rest).unwrap();
        let (name, data) = parse_event(std::str::from_utf8(&rest[..at]).unwrap());
        assert_eq!(name.as_deref(), Some("call"));
        assert_eq!(data, "{\"num\":3}");
        assert!(find_blank_line(&rest[at + len..]).is_none());
    }

    #[test]
    fn headers_show_time_number_status_and_duration() {
        let event = json!({
            "time": "2026-12-02T11:30:05.123Z", "num": 12, "status": "done",
            "duration_ms": 3.21, "call_id": "abc",
        });
        assert_eq!(
            header_line(&event),
            "=== 2026-12-02 11:30:05.123  #12  done  3.2 ms  abc"
        );
    }
}

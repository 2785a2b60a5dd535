//! The closed-loop load generator every HTTP row uses: `concurrency` workers, each
//! making its next call as soon as the last one answered, until `total` calls are
//! made. newt's rows and `wasmtime serve`'s go through this same loop, so their
//! figures differ only by the server.

use anyhow::Context;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// What a burst of calls gave.
#[derive(Debug, Default)]
pub struct Load {
    /// Each call's latency, ms.
    pub samples_ms: Vec<f64>,
    /// Wall-clock time of the whole burst.
    pub wall: Duration,
    /// Calls that answered, but not the way the row expects (for newt: started as
    /// another kind than the row measures).
    pub mismatches: u64,
}

/// One answered call: its latency and whether it was the expected kind of answer.
pub struct Sample {
    pub ms: f64,
    pub expected: bool,
}

/// Makes `total` calls with `call`, `concurrency` in flight. The first failed call
/// ends the burst with its error.
pub async fn closed_loop<F, Fut>(total: usize, concurrency: usize, call: F) -> anyhow::Result<Load>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<Sample>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.clamp(1, total.max(1)) {
        let (call, next) = (call.clone(), next.clone());
        workers.spawn(async move {
            let mut load = Load::default();
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let sample = call().await?;
                load.samples_ms.push(sample.ms);
                load.mismatches += u64::from(!sample.expected);
            }
            anyhow::Ok(load)
        });
    }
    let mut load = Load {
        samples_ms: Vec::with_capacity(total),
        ..Load::default()
    };
    while let Some(worker) = workers.join_next().await {
        let part = worker.context("a call worker panicked")??;
        load.samples_ms.extend(part.samples_ms);
        load.mismatches += part.mismatches;
    }
    load.wall = start.elapsed();
    Ok(load)
}

/// Sends `request` and reads the whole answer: its latency (ms) and status.
pub async fn timed(request: reqwest::RequestBuilder) -> anyhow::Result<(f64, reqwest::StatusCode)> {
    let start = Instant::now();
    let response = request.send().await.context("sending")?;
    let status = response.status();
    response.bytes().await.context("reading the answer")?;
    Ok((start.elapsed().as_secs_f64() * 1000.0, status))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[tokio::test]
    async fn makes_exactly_total_calls_and_counts_mismatches() {
        let made = Arc::new(AtomicU64::new(0));
        let counter = made.clone();
        let load = closed_loop(10, 3, move || {
            let counter = counter.clone();
            async move {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                Ok(Sample {
                    ms: 1.0,
                    expected: n.is_multiple_of(2),
                })
            }
        })
        .await
        .unwrap();
        assert_eq!(made.load(Ordering::Relaxed), 10);
        assert_eq!(load.samples_ms.len(), 10);
        assert_eq!(load.mismatches, 5);
    }

    #[tokio::test]
    async fn a_failed_call_ends_the_burst_with_its_error() {
        let err = closed_loop(5, 2, || async { anyhow::bail!("refused") })
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("refused"), "{err:#}");
    }
}

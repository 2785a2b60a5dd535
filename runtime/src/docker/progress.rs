//! Progress of the image builds running now, for `GET /v1/functions/{name}` while a
//! version is `pending`: which step, since when, and the tail of its output.
//!
//! The board is shared by the executor (which writes it as the engine's build stream
//! comes in) and the host (which reads it when asked). An entry lives as long as its
//! build: the [`BuildEntry`] guard removes it when the build ends, however it ends.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// How much of a running build's output the board keeps and shows: enough to see what
/// pip is doing, bounded whatever a tenant's `setup.py` prints.
pub const BUILD_LOG_TAIL_BYTES: usize = 4 * 1024;

/// Builds tracked at once: more than the build queue ever holds, a bound all the same.
const MAX_ENTRIES: usize = 4096;

/// Where a running build is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildProgress {
    /// What the build is doing: `waiting for a build slot`, `unpacking the bundle`,
    /// `installing requirements`, `build step 1/2: <command>`, ...
    pub step: String,
    /// When the build began (the version's deploy had been answered), Unix ms.
    pub started_at: i64,
    /// The last [`BUILD_LOG_TAIL_BYTES`] of its output so far, escapes removed.
    pub log_tail: String,
}

/// The builds running in one executor, by function and version.
#[derive(Clone, Default)]
pub struct BuildBoard(Arc<Mutex<HashMap<(String, i64), BuildProgress>>>);

impl std::fmt::Debug for BuildBoard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildBoard").finish_non_exhaustive()
    }
}

impl BuildBoard {
    /// The progress of `function`'s `version`, if its build is running.
    pub fn get(&self, function: &str, version: i64) -> Option<BuildProgress> {
        self.lock().get(&(function.to_string(), version)).cloned()
    }

    /// Tracks a build from now until the returned guard is dropped.
    pub(crate) fn start(&self, function: &str, version: i64, step: &str) -> BuildEntry {
        let key = (function.to_string(), version);
        let mut board = self.lock();
        if board.len() < MAX_ENTRIES || board.contains_key(&key) {
            board.insert(
                key.clone(),
                BuildProgress {
                    step: step.to_string(),
                    started_at: now_ms(),
                    log_tail: String::new(),
                },
            );
        }
        BuildEntry {
            board: self.clone(),
            key,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, i64), BuildProgress>> {
        // A panic while holding it leaves plain data behind: keep using it.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One build on the board; removes it when dropped.
pub(crate) struct BuildEntry {
    board: BuildBoard,
    key: (String, i64),
}

impl BuildEntry {
    /// Sets the step the build is at.
    pub(crate) fn step(&self, step: &str) {
        if let Some(p) = self.board.lock().get_mut(&self.key) {
            p.step = step.to_string();
        }
    }

    /// Appends output (already plain text) to the tail, keeping its last bytes.
    pub(crate) fn log(&self, text: &str) {
        if let Some(p) = self.board.lock().get_mut(&self.key) {
            p.log_tail.push_str(text);
            keep_tail(&mut p.log_tail, BUILD_LOG_TAIL_BYTES);
        }
    }
}

impl Drop for BuildEntry {
    fn drop(&mut self) {
        self.board.lock().remove(&self.key);
    }
}

/// Cuts `text` to about its last `max` bytes, at a character boundary.
fn keep_tail(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let mut from = text.len() - max;
    while !text.is_char_boundary(from) {
        from += 1;
    }
    text.drain(..from);
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_lives_as_long_as_its_build_and_its_tail_is_bounded() {
        let board = BuildBoard::default();
        let entry = board.start("f", 3, "waiting for a build slot");
        assert_eq!(board.get("f", 3).unwrap().step, "waiting for a build slot");
        assert!(board.get("f", 2).is_none());
        entry.step("installing requirements");
        for _ in 0..1000 {
            entry.log("é 0123456789\n");
        }
        let progress = board.get("f", 3).unwrap();
        assert_eq!(progress.step, "installing requirements");
        assert!(progress.log_tail.len() <= BUILD_LOG_TAIL_BYTES);
        assert!(progress.log_tail.ends_with("0123456789\n"));
        drop(entry);
        assert!(board.get("f", 3).is_none());
    }
}

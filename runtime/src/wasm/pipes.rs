//! In-memory stdout/stderr for guests, with byte caps.
//!
//! wasmtime-wasi's own `MemoryOutputPipe` traps with a generic message when full. We
//! need two behaviours it lacks: stdout that fails the call with a message naming the
//! limit, and stderr that keeps going (dropping what is past the cap) while always
//! keeping the last few KiB, because the end of stderr is what explains a failure.

use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// How many trailing bytes of stderr are kept for error messages.
const TAIL_BYTES: usize = 2048;
/// What a guest is told it may write at once; any positive value works.
const WRITE_BUDGET: usize = 64 * 1024;

/// What happens when a pipe is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Overflow {
    /// Fail the write with a trap (stdout: partial output would be a wrong result).
    Trap,
    /// Drop the excess and go on (stderr: logs are best effort).
    Truncate,
}

#[derive(Debug)]
struct State {
    buf: BytesMut,
    cap: usize,
    overflowed: bool,
    tail: VecDeque<u8>,
}

/// A capped in-memory output stream; clones share the same buffer.
#[derive(Clone, Debug)]
pub(crate) struct CappedPipe {
    state: Arc<Mutex<State>>,
    mode: Overflow,
}

impl CappedPipe {
    pub(crate) fn new(cap: usize, mode: Overflow) -> Self {
        CappedPipe {
            state: Arc::new(Mutex::new(State {
                buf: BytesMut::new(),
                cap,
                overflowed: false,
                tail: VecDeque::new(),
            })),
            mode,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the buffer inconsistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `bytes`; returns how many were kept, or an error in trap mode.
    pub(crate) fn append(&self, bytes: &[u8]) -> Result<usize, String> {
        let mut s = self.lock();
        let room = s.cap - s.buf.len();
        if bytes.len() > room {
            s.overflowed = true;
            if self.mode == Overflow::Trap {
                return Err(format!("output exceeds the limit of {} bytes", s.cap));
            }
        }
        let kept = bytes.len().min(room);
        s.buf.extend_from_slice(&bytes[..kept]);
        let skip = bytes.len().saturating_sub(TAIL_BYTES);
        for &b in &bytes[skip..] {
            if s.tail.len() == TAIL_BYTES {
                s.tail.pop_front();
            }
            s.tail.push_back(b);
        }
        Ok(bytes.len())
    }

    /// Everything kept so far.
    pub(crate) fn contents(&self) -> Bytes {
        self.lock().buf.clone().freeze()
    }

    /// Whether anything was written past the cap.
    pub(crate) fn overflowed(&self) -> bool {
        self.lock().overflowed
    }

    /// The last bytes written (even past the cap), as lossy UTF-8 trimmed of
    /// whitespace.
    pub(crate) fn tail(&self) -> String {
        let s = self.lock();
        let (a, b) = s.tail.as_slices();
        let mut v = Vec::with_capacity(a.len() + b.len());
        v.extend_from_slice(a);
        v.extend_from_slice(b);
        String::from_utf8_lossy(&v).trim().to_string()
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for CappedPipe {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.append(&bytes)
            .map(drop)
            .map_err(|msg| StreamError::Trap(wasmtime::format_err!("{msg}")))
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(WRITE_BUDGET)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CappedPipe {
    async fn ready(&mut self) {}
}

impl AsyncWrite for CappedPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(self.append(buf).map_err(io::Error::other))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for CappedPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_mode_keeps_head_and_tail() {
        let p = CappedPipe::new(4, Overflow::Truncate);
        assert_eq!(p.append(b"abcdef"), Ok(6));
        assert_eq!(p.append(b"gh"), Ok(2));
        assert_eq!(&p.contents()[..], b"abcd");
        assert!(p.overflowed());
        assert_eq!(p.tail(), "abcdefgh");
    }

    #[test]
    fn trap_mode_names_the_limit() {
        let p = CappedPipe::new(4, Overflow::Trap);
        assert_eq!(p.append(b"abc"), Ok(3));
        let err = p.append(b"de").unwrap_err();
        assert!(err.contains("limit of 4 bytes"), "{err}");
        assert!(p.overflowed());
        assert_eq!(&p.contents()[..], b"abc");
    }

    #[test]
    fn tail_is_bounded() {
        let p = CappedPipe::new(0, Overflow::Truncate);
        let big = vec![b'x'; TAIL_BYTES * 3];
        p.append(&big).unwrap();
        p.append(b"END").unwrap();
        let tail = p.tail();
        assert_eq!(tail.len(), TAIL_BYTES);
        assert!(tail.ends_with("END"));
    }
}

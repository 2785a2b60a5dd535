//! The frame protocol between newt and the agent inside a container.
//!
//! Each message is a 4-byte big-endian length followed by that many bytes of JSON.
//! Frames travel over the container's attached stdin/stdout, so they arrive cut into
//! whatever chunks Docker's stream multiplexing produced: [`FrameReader`] reassembles
//! them by their length prefix and refuses frames over a size bound, so a hostile
//! function cannot make the host buffer without end.

use bytes::{Buf, BytesMut};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Host → agent messages.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub(crate) enum HostMessage<'a> {
    /// Are you up? The agent answers `pong` once it reads frames.
    Ping,
    /// Load the function: chdir to `workdir`, import `handler` (`module:function`).
    Init {
        function: &'a str,
        handler: &'a str,
        workdir: &'a str,
        env: HashMap<String, String>,
        max_log_bytes: u64,
        /// The agent refuses a return value whose JSON is longer, with a clear error.
        max_output_bytes: u64,
        /// The largest frame the host accepts: the agent cuts a reply's logs, then its
        /// error text, until the reply fits (see `container::frame_limit`).
        max_frame_bytes: u64,
        /// For a runtime-level instance: the function's code, base64 of a .tar.gz
        /// repacked from the validated tree, unpacked by the agent into `workdir`.
        #[serde(skip_serializing_if = "Option::is_none")]
        bundle: Option<&'a str>,
        /// Where the function's egress proxy listens inside the container, when it
        /// has an `allow_outbound` list: the agent points `HTTP(S)_PROXY` there.
        #[serde(skip_serializing_if = "Option::is_none")]
        egress_socket: Option<&'a str>,
    },
    /// Run one call. `input` is the raw input when it is UTF-8; otherwise it is
    /// empty and `input_b64` carries the exact bytes. The agent parses it as JSON.
    Run {
        id: &'a str,
        input: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        input_b64: Option<&'a str>,
        deadline_ms: Option<i64>,
    },
}

/// Agent → host messages.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub(crate) enum AgentMessage {
    /// The function is imported and ready.
    Ready {
        #[serde(default)]
        logs: String,
    },
    /// Loading the function failed.
    Error {
        error: String,
        #[serde(default)]
        logs: String,
    },
    /// A call finished.
    Result {
        id: String,
        ok: bool,
        #[serde(default)]
        output: Option<String>,
        #[serde(default)]
        error: Option<String>,
        #[serde(default)]
        logs: String,
    },
    /// Answer to a ping.
    Pong,
}

impl HostMessage<'_> {
    /// The message's `type`, for errors.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            HostMessage::Ping => "ping",
            HostMessage::Init { .. } => "init",
            HostMessage::Run { .. } => "run",
        }
    }
}

/// Encodes a message as one frame.
pub(crate) fn encode(message: &HostMessage<'_>) -> Vec<u8> {
    let json = serde_json::to_vec(message).expect("host messages always serialize");
    let mut frame = Vec::with_capacity(4 + json.len());
    frame.extend_from_slice(&(json.len() as u32).to_be_bytes());
    frame.extend_from_slice(&json);
    frame
}

/// Why the agent's output could not be understood.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ProtocolError {
    /// A frame announced more bytes than allowed.
    TooLarge { len: usize, max: usize },
    /// A frame was not a message we know.
    BadMessage(String),
}

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProtocolError::TooLarge { len, max } => write!(
                f,
                "the agent announced a {len}-byte reply, over the limit of {max} bytes \
                 for this function's output and logs"
            ),
            ProtocolError::BadMessage(m) => write!(f, "unreadable reply from the agent: {m}"),
        }
    }
}

/// Reassembles frames from arbitrary chunks.
///
/// Every length prefix is checked as soon as its four bytes arrive: a frame that
/// announces more than `max_frame` is refused then, before any more of its body is
/// kept, and the reader stays broken (the stream is out of step for good).
#[derive(Debug)]
pub(crate) struct FrameReader {
    buf: BytesMut,
    max_frame: usize,
    /// Offset in `buf` of the first length prefix not checked yet.
    unchecked: usize,
    broken: Option<(usize, usize)>,
}

impl FrameReader {
    pub(crate) fn new(max_frame: usize) -> Self {
        FrameReader {
            buf: BytesMut::new(),
            max_frame,
            unchecked: 0,
            broken: None,
        }
    }

    /// Changes the bound, for frames not checked yet (a runtime-level instance learns
    /// its function's limits at `init`).
    pub(crate) fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame;
    }

    /// Bytes held, waiting to complete a frame.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn buffered(&self) -> usize {
        self.buf.len()
    }

    fn too_large(&self) -> Option<ProtocolError> {
        self.broken
            .map(|(len, max)| ProtocolError::TooLarge { len, max })
    }

    /// Adds a chunk of stdout, checking every length prefix it completes.
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Result<(), ProtocolError> {
        if let Some(e) = self.too_large() {
            return Err(e);
        }
        self.buf.extend_from_slice(chunk);
        while self.buf.len() >= self.unchecked + 4 {
            let at = self.unchecked;
            let len = u32::from_be_bytes([
                self.buf[at],
                self.buf[at + 1],
                self.buf[at + 2],
                self.buf[at + 3],
            ]) as usize;
            if len > self.max_frame {
                // Nothing of it is kept: the caller removes the container.
                self.buf = BytesMut::new();
                self.broken = Some((len, self.max_frame));
                return Err(ProtocolError::TooLarge {
                    len,
                    max: self.max_frame,
                });
            }
            self.unchecked = at + 4 + len;
        }
        Ok(())
    }

    /// The next complete message, if one has arrived.
    pub(crate) fn next_message(&mut self) -> Result<Option<AgentMessage>, ProtocolError> {
        if let Some(e) = self.too_large() {
            return Err(e);
        }
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        self.buf.advance(4);
        let body = self.buf.split_to(len);
        self.unchecked -= 4 + len;
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| ProtocolError::BadMessage(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(json: &str) -> Vec<u8> {
        let mut f = (json.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(json.as_bytes());
        f
    }

    #[test]
    fn frames_split_across_chunks_are_reassembled() {
        let mut bytes = frame(r#"{"type":"ready","logs":"hi"}"#);
        bytes.extend(frame(
            r#"{"type":"result","id":"c1","ok":true,"output":"[1]"}"#,
        ));
        let mut reader = FrameReader::new(1 << 20);
        let mut got = Vec::new();
        for chunk in bytes.chunks(3) {
            reader.push(chunk).unwrap();
            while let Some(m) = reader.next_message().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(
            got,
            vec![
                AgentMessage::Ready { logs: "hi".into() },
                AgentMessage::Result {
                    id: "c1".into(),
                    ok: true,
                    output: Some("[1]".into()),
                    error: None,
                    logs: String::new()
                }
            ]
        );
    }

    #[test]
    fn oversized_and_garbage_frames_are_refused() {
        let mut reader = FrameReader::new(8);
        assert_eq!(
            reader.push(&frame(r#"{"type":"pong"}"#)),
            Err(ProtocolError::TooLarge { len: 15, max: 8 })
        );
        assert!(matches!(
            reader.next_message(),
            Err(ProtocolError::TooLarge { len: 15, max: 8 })
        ));
        let mut reader = FrameReader::new(1024);
        reader.push(&frame("not json")).unwrap();
        assert!(matches!(
            reader.next_message(),
            Err(ProtocolError::BadMessage(_))
        ));
    }

    #[test]
    fn an_oversized_frame_is_refused_before_its_body_is_buffered() {
        let mut reader = FrameReader::new(1024);
        // A whole frame, then the prefix of one announcing 1 GiB, then 4 bytes of it.
        let mut bytes = frame(r#"{"type":"pong"}"#);
        bytes.extend_from_slice(&(1u32 << 30).to_be_bytes());
        bytes.extend_from_slice(b"{\"ty");
        let refused = reader.push(&bytes).unwrap_err();
        assert_eq!(
            refused,
            ProtocolError::TooLarge {
                len: 1 << 30,
                max: 1024
            }
        );
        assert!(
            refused.to_string().contains("1073741824-byte reply"),
            "{refused}"
        );
        // Nothing is kept, and the reader stays broken: no waiting for the body.
        assert_eq!(reader.buffered(), 0);
        assert_eq!(reader.push(&[b'x'; 4096]), Err(refused));
        assert_eq!(reader.buffered(), 0);
        assert!(reader.next_message().is_err());

        // The prefix alone, split across chunks, is enough to refuse it.
        let mut reader = FrameReader::new(1024);
        let prefix = 1025u32.to_be_bytes();
        reader.push(&prefix[..3]).unwrap();
        assert_eq!(reader.next_message(), Ok(None));
        assert!(reader.push(&prefix[3..]).is_err());

        // At the limit exactly is fine, and frames after it are checked too.
        let body = format!(r#"{{"type":"ready","logs":"{}"}}"#, "x".repeat(100));
        let mut reader = FrameReader::new(body.len());
        let mut bytes = frame(&body);
        bytes.extend_from_slice(&frame(&format!("{body} ")));
        assert!(reader.push(&bytes).is_err());
        let mut reader = FrameReader::new(body.len());
        reader.push(&frame(&body)).unwrap();
        reader.push(&frame(r#"{"type":"pong"}"#)).unwrap();
        assert!(matches!(
            reader.next_message(),
            Ok(Some(AgentMessage::Ready { .. }))
        ));
        assert_eq!(reader.next_message(), Ok(Some(AgentMessage::Pong)));
        assert_eq!(reader.buffered(), 0);
    }

    #[test]
    fn host_messages_encode_with_their_type() {
        let f = encode(&HostMessage::Run {
            id: "c1",
            input: "{}",
            input_b64: None,
            deadline_ms: None,
        });
        let len = u32::from_be_bytes([f[0], f[1], f[2], f[3]]) as usize;
        let v: serde_json::Value = serde_json::from_slice(&f[4..]).unwrap();
        assert_eq!(len, f.len() - 4);
        assert_eq!(v["type"], "run");
        assert_eq!(v["id"], "c1");
        assert_eq!(&encode(&HostMessage::Ping)[4..], br#"{"type":"ping"}"#);
    }
}

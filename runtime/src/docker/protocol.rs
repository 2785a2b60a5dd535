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
        /// For a runtime-level instance: the function's code, base64 of a .tar.gz
        /// repacked from the validated tree, unpacked by the agent into `workdir`.
        #[serde(skip_serializing_if = "Option::is_none")]
        bundle: Option<&'a str>,
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
            ProtocolError::TooLarge { len, max } => {
                write!(f, "a {len}-byte reply is over the limit of {max} bytes")
            }
            ProtocolError::BadMessage(m) => write!(f, "unreadable reply from the agent: {m}"),
        }
    }
}

/// Reassembles frames from arbitrary chunks.
#[derive(Debug)]
pub(crate) struct FrameReader {
    buf: BytesMut,
    max_frame: usize,
}

impl FrameReader {
    pub(crate) fn new(max_frame: usize) -> Self {
        FrameReader {
            buf: BytesMut::new(),
            max_frame,
        }
    }

    /// Adds a chunk of stdout.
    pub(crate) fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete message, if one has arrived.
    pub(crate) fn next_message(&mut self) -> Result<Option<AgentMessage>, ProtocolError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > self.max_frame {
            return Err(ProtocolError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        self.buf.advance(4);
        let body = self.buf.split_to(len);
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
            reader.push(chunk);
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
        reader.push(&frame(r#"{"type":"pong"}"#));
        assert!(matches!(
            reader.next_message(),
            Err(ProtocolError::TooLarge { len: 15, max: 8 })
        ));
        let mut reader = FrameReader::new(1024);
        reader.push(&frame("not json"));
        assert!(matches!(
            reader.next_message(),
            Err(ProtocolError::BadMessage(_))
        ));
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

//! Buffered message streams towards one client, readable by cursor.
//!
//! Each POST answered with SSE, and each session's standalone GET stream, is a
//! [`StreamBuf`]: writers append events, readers follow with a cursor. Because
//! the buffer outlives one HTTP connection, a client that reconnects with
//! `Last-Event-ID` resumes exactly where it left off, on the same stream and
//! no other (a message is never put on two streams). The buffer is bounded:
//! past its capacity the oldest events are dropped.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;
use palisade_wire::Message;
use tokio::sync::watch;

/// One event: its sequence number in the stream and the JSON message.
#[derive(Debug, Clone)]
pub struct Event {
    pub seq: u64,
    pub data: Bytes,
}

#[derive(Debug)]
struct Inner {
    events: VecDeque<Event>,
    next_seq: u64,
    done: bool,
    /// Whether the last event is the final JSON-RPC response.
    has_response: bool,
    /// The error code of that response, if it is an error.
    error_code: Option<i64>,
}

/// A bounded, resumable stream of messages.
#[derive(Debug)]
pub struct StreamBuf {
    id: u64,
    cap: usize,
    inner: Mutex<Inner>,
    changed: watch::Sender<u64>,
}

/// What a reader gets from [`StreamBuf::read_from`].
#[derive(Debug)]
pub struct Batch {
    pub events: Vec<Event>,
    /// The stream is finished and `events` holds everything that is left.
    pub done: bool,
}

impl StreamBuf {
    pub fn new(id: u64, cap: usize) -> Self {
        let (changed, _) = watch::channel(0);
        StreamBuf {
            id,
            cap: cap.max(1),
            inner: Mutex::new(Inner {
                events: VecDeque::new(),
                next_seq: 1,
                done: false,
                has_response: false,
                error_code: None,
            }),
            changed,
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Appends a message; ignored once the stream is done.
    pub fn push(&self, data: Bytes) -> bool {
        self.push_inner(data, None)
    }

    /// Appends the final response and finishes the stream. Its error code, if
    /// any, is kept so the HTTP status can be chosen without re-parsing.
    pub fn finish(&self, response: &Message) -> bool {
        let code = response
            .error
            .as_ref()
            .and_then(|_| response.error_object())
            .map(|e| e.code);
        self.push_inner(Bytes::from(response.to_bytes()), Some(code))
    }

    /// `last`: `Some(error code)` for the final response.
    fn push_inner(&self, data: Bytes, last: Option<Option<i64>>) -> bool {
        let seq = {
            let Ok(mut g) = self.inner.lock() else { return false };
            if g.done {
                return false;
            }
            let seq = g.next_seq;
            g.next_seq += 1;
            g.events.push_back(Event { seq, data });
            while g.events.len() > self.cap {
                g.events.pop_front();
            }
            if let Some(code) = last {
                g.done = true;
                g.has_response = true;
                g.error_code = code;
            }
            seq
        };
        self.changed.send_replace(seq);
        true
    }

    /// Ends the stream without a response (cancelled, or a standalone stream closing).
    pub fn close(&self) {
        if let Ok(mut g) = self.inner.lock() {
            g.done = true;
        }
        self.changed.send_modify(|v| *v += 0);
    }

    pub fn is_done(&self) -> bool {
        self.inner.lock().map(|g| g.done).unwrap_or(true)
    }

    /// The next sequence number that will be written.
    pub fn next_seq(&self) -> u64 {
        self.inner.lock().map(|g| g.next_seq).unwrap_or(u64::MAX)
    }

    /// If the stream finished with exactly one event, its response and error
    /// code: the caller may answer with plain JSON instead of SSE.
    pub fn sole_response(&self) -> Option<(Bytes, Option<i64>)> {
        let g = self.inner.lock().ok()?;
        (g.done && g.has_response && g.next_seq == 2 && g.events.len() == 1)
            .then(|| (g.events[0].data.clone(), g.error_code))
    }

    /// Events with `seq >= from`.
    pub fn read_from(&self, from: u64) -> Batch {
        match self.inner.lock() {
            Ok(g) => Batch {
                events: g.events.iter().filter(|e| e.seq >= from).cloned().collect(),
                done: g.done,
            },
            Err(_) => Batch {
                events: Vec::new(),
                done: true,
            },
        }
    }

    /// A receiver that wakes on every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_wire::Id;

    #[test]
    fn sole_response_only_when_alone() {
        let ok = Message::response(
            Id::number(1),
            serde_json::value::RawValue::from_string("{}".into()).unwrap(),
        );
        let s = StreamBuf::new(1, 8);
        s.finish(&ok);
        assert_eq!(s.sole_response(), Some((Bytes::from(ok.to_bytes()), None)));
        let err = Message::error(Some(Id::number(2)), -32601, "nope", None);
        let s = StreamBuf::new(3, 8);
        s.finish(&err);
        assert_eq!(s.sole_response().map(|(_, c)| c), Some(Some(-32601)));
        let s = StreamBuf::new(2, 8);
        s.push(Bytes::from_static(b"p"));
        s.finish(&ok);
        assert!(s.sole_response().is_none());
        assert_eq!(s.read_from(2).events.len(), 1);
    }

    #[test]
    fn bounded_and_closed() {
        let s = StreamBuf::new(1, 2);
        for i in 0..5u8 {
            s.push(Bytes::from(vec![i]));
        }
        let b = s.read_from(0);
        assert_eq!(b.events.iter().map(|e| e.seq).collect::<Vec<_>>(), [4, 5]);
        s.close();
        assert!(!s.push(Bytes::from_static(b"late")));
        assert!(s.read_from(0).done);
    }
}

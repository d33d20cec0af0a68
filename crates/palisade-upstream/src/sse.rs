//! A bounded Server-Sent Events decoder and encoder.
//!
//! Written here rather than taken from a crate because the decoder must cap
//! memory per event: an upstream that never ends an event must not grow a
//! buffer without limit.

/// One decoded event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
    pub retry: Option<u64>,
}

/// Why decoding stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseError {
    EventTooLarge { limit: usize },
    InvalidUtf8,
}

impl std::fmt::Display for SseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SseError::EventTooLarge { limit } => write!(f, "SSE event exceeds {limit} bytes"),
            SseError::InvalidUtf8 => f.write_str("SSE stream is not UTF-8"),
        }
    }
}

impl std::error::Error for SseError {}

/// Incremental decoder: feed chunks, take complete events.
#[derive(Debug)]
pub struct SseDecoder {
    buf: Vec<u8>,
    limit: usize,
    current: SseEvent,
    has_data: bool,
    event_bytes: usize,
}

impl SseDecoder {
    /// `limit` bounds the bytes of one event (all its lines together).
    pub fn new(limit: usize) -> Self {
        SseDecoder {
            buf: Vec::new(),
            limit,
            current: SseEvent::default(),
            has_data: false,
            event_bytes: 0,
        }
    }

    /// Adds bytes and appends every completed event to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        self.buf.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(pos) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let end = start + pos;
            let mut line = &self.buf[start..end];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            self.event_bytes += line.len() + 1;
            if self.event_bytes > self.limit {
                return Err(SseError::EventTooLarge { limit: self.limit });
            }
            let line = std::str::from_utf8(line).map_err(|_| SseError::InvalidUtf8)?.to_owned();
            self.line(&line, out);
            start = end + 1;
        }
        self.buf.drain(..start);
        if self.event_bytes + self.buf.len() > self.limit {
            return Err(SseError::EventTooLarge { limit: self.limit });
        }
        Ok(())
    }

    fn line(&mut self, line: &str, out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            let ev = std::mem::take(&mut self.current);
            if self.has_data || ev.id.is_some() || ev.retry.is_some() {
                out.push(ev);
            }
            self.has_data = false;
            self.event_bytes = 0;
            return;
        }
        if line.starts_with(':') {
            return; // comment / keep-alive
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.current.data.push('\n');
                }
                self.current.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.current.event = Some(value.to_owned()),
            "id" if !value.contains('\0') => self.current.id = Some(value.to_owned()),
            "retry" => self.current.retry = value.parse().ok(),
            _ => {}
        }
    }
}

/// Encodes one event. `data` must be JSON (no raw newlines), which serde_json guarantees.
pub fn encode_event(id: Option<&str>, data: &[u8], retry: Option<u64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 48);
    if let Some(r) = retry {
        out.extend_from_slice(format!("retry: {r}\n").as_bytes());
    }
    if let Some(id) = id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"event: message\ndata: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_across_chunks() {
        let mut d = SseDecoder::new(1024);
        let mut out = Vec::new();
        let input = b": keepalive\nid: 1\nevent: message\ndata: {\"a\":\ndata: 1}\n\nid: 2\ndata:\n\nretry: 500\r\ndata: x\r\n\r\n";
        for chunk in input.chunks(3) {
            d.feed(chunk, &mut out).unwrap();
        }
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].id.as_deref(), Some("1"));
        assert_eq!(out[0].data, "{\"a\":\n1}");
        assert_eq!(out[1].id.as_deref(), Some("2"));
        assert_eq!(out[1].data, "");
        assert_eq!(out[2].retry, Some(500));
        assert_eq!(out[2].data, "x");
    }

    #[test]
    fn bounds_event_size_even_without_newlines() {
        let mut d = SseDecoder::new(64);
        let mut out = Vec::new();
        let r = d.feed(&[b'a'; 100], &mut out);
        assert_eq!(r, Err(SseError::EventTooLarge { limit: 64 }));
        let mut d = SseDecoder::new(64);
        let mut many = Vec::new();
        for _ in 0..20 {
            many.extend_from_slice(b"data: 12345\n");
        }
        assert!(d.feed(&many, &mut out).is_err());
    }

    #[test]
    fn refuses_invalid_utf8() {
        let mut d = SseDecoder::new(64);
        assert_eq!(d.feed(b"data: \xff\n\n", &mut Vec::new()), Err(SseError::InvalidUtf8));
    }

    #[test]
    fn encodes() {
        let e = encode_event(Some("s1.3"), b"{}", Some(1000));
        assert_eq!(e, b"retry: 1000\nid: s1.3\nevent: message\ndata: {}\n\n");
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// Any byte stream, cut anywhere, never panics and never buffers past the limit.
        #[test]
        fn arbitrary_streams_stay_bounded(
            bytes in proptest::collection::vec(any::<u8>(), 0..2048),
            cut in 1usize..64,
        ) {
            let mut d = SseDecoder::new(256);
            let mut out = Vec::new();
            for chunk in bytes.chunks(cut) {
                if d.feed(chunk, &mut out).is_err() {
                    break;
                }
                prop_assert!(d.buf.len() <= 256);
            }
            for e in &out {
                prop_assert!(e.data.len() <= 256);
            }
        }

        /// Encoded events decode to the same data, however the bytes are split.
        #[test]
        fn encode_decode_round_trip(data in "[a-z0-9{}\":, ]{0,100}", id in "[0-9.]{1,10}", cut in 1usize..32) {
            let bytes = encode_event(Some(&id), data.as_bytes(), None);
            let mut d = SseDecoder::new(4096);
            let mut out = Vec::new();
            for chunk in bytes.chunks(cut) {
                d.feed(chunk, &mut out).unwrap();
            }
            prop_assert_eq!(out.len(), 1);
            prop_assert_eq!(&out[0].data, &data);
            prop_assert_eq!(out[0].id.as_deref(), Some(id.as_str()));
        }
    }
}

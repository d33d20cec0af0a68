//! Answering a client request from its stream: plain JSON when the answer is a
//! lone response, SSE otherwise (progress, server requests, long calls).

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use palisade_upstream::sse::encode_event;
use palisade_wire::codes;
use tokio::sync::watch;

use crate::gateway::Gateway;
use crate::session::LiveSession;
use crate::stream::StreamBuf;

/// How long to wait for a lone response before switching to SSE.
const JSON_WAIT: Duration = Duration::from_secs(1);

/// Runs cleanup when a client's stream goes away.
pub struct StreamGuard {
    kind: GuardKind,
}

enum GuardKind {
    /// Frees the session's single standalone GET slot.
    Standalone(Weak<LiveSession>),
    /// Stateless revision: closing the stream cancels the request.
    Cancel { sess: Weak<LiveSession>, key: String },
}

impl StreamGuard {
    pub fn standalone(sess: &Arc<LiveSession>) -> Self {
        StreamGuard {
            kind: GuardKind::Standalone(Arc::downgrade(sess)),
        }
    }

    pub fn cancel_on_drop(sess: &Arc<LiveSession>, key: &str) -> Self {
        StreamGuard {
            kind: GuardKind::Cancel {
                sess: Arc::downgrade(sess),
                key: key.to_owned(),
            },
        }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        match &self.kind {
            GuardKind::Standalone(s) => {
                if let Some(s) = s.upgrade() {
                    s.standalone_attached.store(false, Ordering::Release);
                }
            }
            GuardKind::Cancel { sess, key } => {
                if let Some(sess) = sess.upgrade() {
                    crate::handlers::cancel_request(&sess, key);
                }
            }
        }
    }
}

/// Waits briefly for the answer; a lone response goes out as JSON, anything else as SSE.
pub async fn respond_from_stream(
    gw: &Arc<Gateway>,
    sess: &Arc<LiveSession>,
    stream: Arc<StreamBuf>,
    guard: Option<StreamGuard>,
) -> Response {
    let mut rx = stream.subscribe();
    let wait = async {
        loop {
            rx.borrow_and_update();
            let b = stream.read_from(1);
            if !b.events.is_empty() || b.done {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(JSON_WAIT, wait).await;
    if let Some((bytes, code)) = stream.sole_response() {
        let status = match code {
            // 2026-07-28: an unknown method is a 404 with -32601.
            Some(codes::METHOD_NOT_FOUND) if sess.stateless => StatusCode::NOT_FOUND,
            // Shed load visibly, so clients and balancers back off (R4).
            Some(codes::OVERLOADED) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::OK,
        };
        drop(guard);
        let mut resp = (status, [(header::CONTENT_TYPE, "application/json")], Body::from(bytes)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        return resp;
    }
    sse_response(gw, sess, stream, 1, false, guard)
}

struct State {
    stream: Arc<StreamBuf>,
    rx: watch::Receiver<u64>,
    cursor: u64,
    prime: Option<Bytes>,
    _guard: Option<StreamGuard>,
    keepalive: Duration,
    sess: Arc<LiveSession>,
    standalone: bool,
    with_ids: bool,
    finished: bool,
}

/// An SSE response that follows `stream` from sequence `from`.
pub fn sse_response(
    gw: &Arc<Gateway>,
    sess: &Arc<LiveSession>,
    stream: Arc<StreamBuf>,
    from: u64,
    standalone: bool,
    guard: Option<StreamGuard>,
) -> Response {
    let with_ids = !sess.stateless;
    let prime = (with_ids && sess.version.has_priming()).then(|| {
        let id = format!("{}.{}", stream.id(), from.saturating_sub(1));
        Bytes::from(format!(
            "retry: {}\nid: {id}\ndata: \n\n",
            gw.config.server.sse_retry_ms
        ))
    });
    let st = State {
        rx: stream.subscribe(),
        stream,
        cursor: from,
        prime,
        _guard: guard,
        keepalive: Duration::from_secs(gw.config.server.sse_keepalive_s.max(1)),
        sess: sess.clone(),
        standalone,
        with_ids,
        finished: false,
    };
    let body = futures_util::stream::unfold(st, |mut st| async move {
        if st.finished {
            return None;
        }
        if let Some(p) = st.prime.take() {
            return Some((Ok::<Bytes, Infallible>(p), st));
        }
        loop {
            st.rx.borrow_and_update();
            let batch = st.stream.read_from(st.cursor);
            if !batch.events.is_empty() {
                let mut out = Vec::new();
                for e in &batch.events {
                    let id = st.with_ids.then(|| format!("{}.{}", st.stream.id(), e.seq));
                    out.extend_from_slice(&encode_event(id.as_deref(), &e.data, None));
                    st.cursor = e.seq + 1;
                }
                if st.standalone {
                    st.sess.standalone_cursor.fetch_max(st.cursor, Ordering::AcqRel);
                    st.sess.touch();
                }
                st.finished = batch.done;
                return Some((Ok(Bytes::from(out)), st));
            }
            if batch.done {
                return None;
            }
            match tokio::time::timeout(st.keepalive, st.rx.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return None,
                Err(_) => {
                    // A client listening on its GET stream is not idle.
                    if st.standalone {
                        st.sess.touch();
                    }
                    return Some((Ok(Bytes::from_static(b": keepalive\n\n")), st));
                }
            }
        }
    });
    let mut resp = (StatusCode::OK, Body::from_stream(body)).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

//! A thin wrapper around rmcp's [`LocalSessionManager`] that remembers which
//! request-wise SSE stream carries each JSON-RPC request.
//!
//! rmcp does not expose the stream id to request handlers, but the
//! `test_reconnection` tool (SEP-1699 polling) must close the SSE stream of
//! its own `tools/call` mid-flight so that the client has to resume it with
//! `Last-Event-ID`. Everything except `create_stream` is delegated verbatim.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::{ClientJsonRpcMessage, RequestId, ServerJsonRpcMessage};
use rmcp::transport::streamable_http_server::session::local::{LocalSessionManager, LocalSessionManagerError};
use rmcp::transport::streamable_http_server::session::{
    EventStore, RestoreOutcome, ServerSseMessage, SessionId, SessionManager,
};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;

type StreamKey = (String, String);

#[derive(Default)]
pub struct TrackingSessionManager {
    inner: LocalSessionManager,
    /// (session id, JSON-RPC request id) -> rmcp's request-wise stream id.
    streams: Mutex<HashMap<StreamKey, u64>>,
}

fn key(session: &str, request: &RequestId) -> StreamKey {
    (session.to_owned(), request.to_string())
}

impl TrackingSessionManager {
    /// Close the SSE stream that carries `request` in `session`, sending a
    /// final priming event with `retry` first. The session, its cached events
    /// and the in-flight request stay alive; the client resumes with GET +
    /// `Last-Event-ID`.
    pub async fn close_request_stream(
        &self,
        session: &str,
        request: &RequestId,
        retry: Duration,
    ) -> anyhow::Result<()> {
        let http_request_id = self
            .streams
            .lock()
            .expect("stream map poisoned")
            .get(&key(session, request))
            .copied()
            .ok_or_else(|| anyhow::anyhow!("no SSE stream recorded for request {request}"))?;
        let handle = self
            .inner
            .sessions
            .read()
            .await
            .get(&SessionId::from(session))
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("unknown session {session}"))?;
        handle
            .close_sse_stream(http_request_id, Some(retry))
            .await
            .map_err(|e| anyhow::anyhow!("closing SSE stream failed: {e}"))
    }

    fn forget_session(&self, session: &SessionId) {
        let session: &str = session;
        self.streams
            .lock()
            .expect("stream map poisoned")
            .retain(|(s, _), _| s != session);
    }
}

impl SessionManager for TrackingSessionManager {
    type Error = LocalSessionManagerError;
    type Transport = <LocalSessionManager as SessionManager>::Transport;

    async fn create_session(&self) -> Result<(SessionId, Self::Transport), Self::Error> {
        self.inner.create_session().await
    }

    async fn initialize_session(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<ServerJsonRpcMessage, Self::Error> {
        self.inner.initialize_session(id, message).await
    }

    async fn has_session(&self, id: &SessionId) -> Result<bool, Self::Error> {
        self.inner.has_session(id).await
    }

    async fn close_session(&self, id: &SessionId) -> Result<(), Self::Error> {
        self.forget_session(id);
        self.inner.close_session(id).await
    }

    async fn create_stream(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        // Same steps as LocalSessionManager::create_stream, plus bookkeeping.
        let handle = self
            .inner
            .sessions
            .read()
            .await
            .get(id)
            .cloned()
            .ok_or_else(|| LocalSessionManagerError::SessionNotFound(id.clone()))?;
        let receiver = handle.establish_request_wise_channel().await?;
        let http_request_id = receiver.http_request_id;
        if let (ClientJsonRpcMessage::Request(request), Some(stream)) = (&message, http_request_id) {
            self.streams
                .lock()
                .expect("stream map poisoned")
                .insert(key(id, &request.id), stream);
        }
        handle.push_message(message, http_request_id).await?;
        Ok(ReceiverStream::new(receiver.inner))
    }

    async fn accept_message(&self, id: &SessionId, message: ClientJsonRpcMessage) -> Result<(), Self::Error> {
        self.inner.accept_message(id, message).await
    }

    async fn create_standalone_stream(
        &self,
        id: &SessionId,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        self.inner.create_standalone_stream(id).await
    }

    async fn resume(
        &self,
        id: &SessionId,
        last_event_id: String,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        self.inner.resume(id, last_event_id).await
    }

    async fn restore_session(&self, id: SessionId) -> Result<RestoreOutcome<Self::Transport>, Self::Error> {
        self.inner.restore_session(id).await
    }

    fn event_store(&self) -> Option<Arc<dyn EventStore>> {
        self.inner.event_store()
    }
}

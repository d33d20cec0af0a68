//! The listener: connection limits, header timeouts, routes.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use http::StatusCode;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use palisade_tls::{PeerCertificate, TlsListener};
use tower::ServiceExt;

use crate::gateway::Gateway;
use crate::handlers;
use crate::hygiene::{self, Hygiene, OriginPolicy};

/// Serves HTTP/1.1 or HTTP/2 on one connection; requests carry the client certificate.
async fn serve_connection<I>(
    io: I,
    router: Router,
    client: Option<PeerCertificate>,
    header_timeout: Duration,
    stop: CancellationToken,
    peer: std::net::SocketAddr,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let client = client.map(Arc::new);
    let service = router.map_request(move |mut req: http::Request<hyper::body::Incoming>| {
        if let Some(c) = &client {
            req.extensions_mut().insert(c.clone());
        }
        req
    });
    let service = TowerToHyperService::new(service);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(64 * 1024);
    builder.http2().timer(TokioTimer::new()).max_concurrent_streams(256);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "connection ended with error");
            }
        }
        () = stop.cancelled() => {}
    }
}

/// Connections served at once; further ones wait in the kernel backlog.
const MAX_CONNECTIONS: usize = 4096;

/// All routes with the hygiene layer.
pub fn build_router(gw: Arc<Gateway>, hsts: Option<String>) -> Router {
    let cfg = &gw.config.server;
    let hygiene = Arc::new(Hygiene {
        policy: OriginPolicy::new(&cfg.allowed_origins, &cfg.allowed_hosts, cfg.listen),
        in_flight: Arc::new(Semaphore::new(cfg.max_concurrent_requests)),
        hsts: hsts.and_then(|v| http::HeaderValue::from_str(&v).ok()),
    });
    let ready_gw = gw.clone();
    Router::new()
        .route(
            "/mcp/{server}",
            post(handlers::post_single)
                .get(handlers::get_single)
                .delete(handlers::delete_single)
                .fallback(handlers::method_not_allowed),
        )
        .route(
            "/mcp",
            post(handlers::post_aggregate)
                .get(handlers::get_aggregate)
                .delete(handlers::delete_aggregate)
                .fallback(handlers::method_not_allowed),
        )
        .route(palisade_auth::METADATA_PATH, get(crate::auth::metadata_root))
        .route(
            &format!("{}/mcp", palisade_auth::METADATA_PATH),
            get(crate::auth::metadata_aggregate),
        )
        .route(
            &format!("{}/mcp/{{server}}", palisade_auth::METADATA_PATH),
            get(crate::auth::metadata_single),
        )
        .route(
            &format!("{}/jwks.json", palisade_auth::DEV_ISSUER_PATH),
            get(crate::auth::dev_jwks),
        )
        .route(
            &format!(
                "/.well-known/oauth-authorization-server{}",
                palisade_auth::DEV_ISSUER_PATH
            ),
            get(crate::auth::dev_metadata),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let gw = ready_gw.clone();
                async move {
                    if gw.ready() {
                        (StatusCode::OK, "ready")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "starting")
                    }
                }
            }),
        )
        .fallback(|| async {
            hygiene::json_error(
                StatusCode::NOT_FOUND,
                palisade_wire::codes::INVALID_REQUEST,
                "not found",
            )
        })
        .layer(axum::middleware::from_fn_with_state(gw.clone(), crate::audit::layer))
        .with_state(gw)
        .layer(axum::middleware::from_fn_with_state(hygiene, hygiene::layer))
}

/// Serves until `stop` is cancelled; over TLS when `tls` is given.
pub async fn serve(
    gw: Arc<Gateway>,
    listener: TcpListener,
    tls: Option<Arc<TlsListener>>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let header_timeout = Duration::from_millis(gw.config.server.header_timeout_ms);
    let router = build_router(gw.clone(), tls.as_ref().and_then(|t| t.hsts()));
    let sweeper = {
        let gw = gw.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tokio::select! {
                    _ = tick.tick() => gw.sweep().await,
                    () = stop.cancelled() => return,
                }
            }
        })
    };
    serve_router(router, listener, tls, header_timeout, stop).await;
    sweeper.abort();
    gw.shutdown().await;
    Ok(())
}

/// The accept loop shared by the MCP and admin listeners: connection limit, optional
/// TLS handshake (with timeout), HTTP/1.1 and HTTP/2, until `stop` is cancelled.
pub async fn serve_router(
    router: Router,
    listener: TcpListener,
    tls: Option<Arc<TlsListener>>,
    header_timeout: Duration,
    stop: CancellationToken,
) {
    let conns = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            p = conns.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            () = stop.cancelled() => break,
        };
        let (socket, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let _ = socket.set_nodelay(true);
        let router = router.clone();
        let stop = stop.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => serve_connection(TokioIo::new(socket), router, None, header_timeout, stop, peer).await,
                Some(tls) => {
                    let accepted = tokio::select! {
                        r = tokio::time::timeout(tls.handshake_timeout(), tls.acceptor().accept(socket)) => r,
                        () = stop.cancelled() => return,
                    };
                    let stream = match accepted {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::info!(%peer, error = %e, "TLS handshake refused");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let client = PeerCertificate::from_chain(stream.get_ref().1.peer_certificates());
                    serve_connection(TokioIo::new(stream), router, client, header_timeout, stop, peer).await;
                }
            }
        });
    }
}

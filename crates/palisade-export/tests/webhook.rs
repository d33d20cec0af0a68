//! Webhooks: body, event header and HMAC signature.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::hmac;
use axum::Router;
use axum::extract::State;
use axum::routing::post;
use bytes::Bytes;
use common::{cfg, event, no_secrets, wait_until};
use http::{HeaderMap, StatusCode};
use palisade_config::{SecretRef, SinkKind};
use palisade_export::Sinks;

type Seen = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

async fn hook(State(seen): State<Seen>, headers: HeaderMap, body: Bytes) -> StatusCode {
    seen.lock().unwrap().push((headers, body));
    StatusCode::NO_CONTENT
}

async fn receiver(path: &str) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let app = Router::new().route(path, post(hook)).with_state(Arc::clone(&seen));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}{path}"), seen)
}

const SECRET: &str = "whsec-test-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_posts() {
    let (url, seen) = receiver("/hook").await;
    let kind = SinkKind::Webhook {
        url,
        secret: Some(SecretRef::Secret("hook".into())),
        allow_insecure_http: false,
    };
    let resolve = |r: &SecretRef| match r {
        SecretRef::Secret(n) if n == "hook" => Ok(SECRET.to_owned()),
        _ => Err("unknown".to_owned()),
    };
    let sinks = Sinks::start(&[cfg("hook", kind)], &resolve).unwrap();
    // Secrets never show in Debug.
    let dbg = format!("{sinks:?}");
    assert!(dbg.contains("hook") && !dbg.contains(SECRET), "{dbg}");

    let records = [event("alert.fired", 1), event("auth.failure", 2)];
    for r in &records {
        sinks.offer(r);
    }
    assert!(
        wait_until(10, || sinks.counts("hook") == Some((2, 0, 0))).await,
        "{:?}",
        sinks.counts("hook")
    );
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(seen.len(), 2);
    let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET.as_bytes());
    for ((headers, body), r) in seen.iter().zip(&records) {
        assert_eq!(body.as_ref(), r.line.as_bytes());
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(headers["x-palisade-event"], r.value["event"].as_str().unwrap());
        let expected = format!("sha256={}", hex::encode(hmac::sign(&key, body).as_ref()));
        assert_eq!(headers["x-palisade-signature"], expected.as_str());
        // And the signature really depends on the body.
        let other = format!("sha256={}", hex::encode(hmac::sign(&key, b"{}").as_ref()));
        assert_ne!(headers["x-palisade-signature"], other.as_str());
    }
    sinks.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_without_a_secret() {
    let (url, seen) = receiver("/hook").await;
    let kind = SinkKind::Webhook {
        url,
        secret: None,
        allow_insecure_http: false,
    };
    let sinks = Sinks::start(&[cfg("hook", kind)], &no_secrets).unwrap();
    sinks.offer(&event("tool.call", 1));
    assert!(wait_until(10, || sinks.counts("hook") == Some((1, 0, 0))).await);
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert!(seen[0].0.get("x-palisade-signature").is_none());
    assert_eq!(seen[0].0["x-palisade-event"], "tool.call");
    sinks.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_not_followed() {
    // The receiver only serves /other; /hook answers with a redirect to it.
    let (base, seen) = receiver("/other").await;
    let app = Router::new().route(
        "/hook",
        post(move || {
            let to = base.clone();
            async move { (StatusCode::TEMPORARY_REDIRECT, [(http::header::LOCATION, to)]) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let kind = SinkKind::Webhook {
        url: format!("http://{addr}/hook"),
        secret: None,
        allow_insecure_http: false,
    };
    let mut c = cfg("hook", kind);
    c.timeout_ms = 500;
    let sinks = Sinks::start(&[c], &no_secrets).unwrap();
    sinks.offer(&event("tool.call", 1));
    assert!(
        wait_until(15, || sinks.counts("hook") == Some((0, 1, 4))).await,
        "{:?}",
        sinks.counts("hook")
    );
    assert!(seen.lock().unwrap().is_empty());
    sinks.shutdown(Duration::from_secs(1)).await;
}

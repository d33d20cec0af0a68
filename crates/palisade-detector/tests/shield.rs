//! `RemoteDetector` against a small Shield Prompt server on loopback.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use palisade_detector::{DetectorConfig, DetectorError, RemoteDetector, ShieldResult};
use serde_json::{Value, json};
use url::Url;

const KEY: &str = "k3y-that-must-never-print";
const MARKER: &str = "INJECTED";
const PATH: &str = "/contentsafety/text:shieldPrompt";
/// The service's own limits, enforced by the test server.
const MAX_CHARS: usize = 10_000;
const MAX_DOCS: usize = 5;

/// How the test server answers a well-formed, authorized request.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Normal,
    Sleep,
    Fail500,
    NotJson,
    BadType,
    WrongLength,
    Oversized,
    Redirect,
}

struct Srv {
    mode: Mode,
    requests: AtomicUsize,
}

struct Server {
    addr: SocketAddr,
    state: Arc<Srv>,
}

impl Server {
    async fn start(mode: Mode) -> Server {
        let state = Arc::new(Srv {
            mode,
            requests: AtomicUsize::new(0),
        });
        let app = Router::new().fallback(handle).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Server { addr, state }
    }

    fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    fn config(&self) -> DetectorConfig {
        let mut cfg = DetectorConfig::new(Url::parse(&format!("http://{}/", self.addr)).unwrap());
        cfg.key = Some(KEY.into());
        cfg
    }

    fn detector(&self) -> RemoteDetector {
        RemoteDetector::new(self.config()).unwrap()
    }
}

fn analysis(hit: bool) -> Value {
    json!({ "attackDetected": hit })
}

async fn handle(State(st): State<Arc<Srv>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    st.requests.fetch_add(1, Ordering::SeqCst);
    if method != Method::POST || uri.path() != PATH {
        return StatusCode::NOT_FOUND.into_response();
    }
    if uri.query() != Some("api-version=2024-09-01") {
        return (StatusCode::BAD_REQUEST, "bad api-version").into_response();
    }
    if headers
        .get("ocp-apim-subscription-key")
        .is_none_or(|k| k.as_bytes() != KEY.as_bytes())
    {
        return (
            StatusCode::UNAUTHORIZED,
            r#"{"error":{"code":"401","message":"Access denied due to invalid subscription key."}}"#,
        )
            .into_response();
    }
    if headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes()) != Some(b"application/json") {
        return StatusCode::UNSUPPORTED_MEDIA_TYPE.into_response();
    }
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "body is not JSON").into_response();
    };
    let Some(prompt) = req["userPrompt"].as_str() else {
        return (StatusCode::BAD_REQUEST, "userPrompt missing").into_response();
    };
    let Some(docs) = req["documents"]
        .as_array()
        .and_then(|d| d.iter().map(Value::as_str).collect::<Option<Vec<_>>>())
    else {
        return (StatusCode::BAD_REQUEST, "documents must be strings").into_response();
    };
    let chars = prompt.chars().count() + docs.iter().map(|d| d.chars().count()).sum::<usize>();
    if chars > MAX_CHARS || docs.len() > MAX_DOCS {
        return (StatusCode::BAD_REQUEST, "request too large").into_response();
    }

    let doc_results: Vec<Value> = docs.iter().map(|d| analysis(d.contains(MARKER))).collect();
    let mut answer = json!({
        "userPromptAnalysis": analysis(prompt.contains(MARKER)),
        "documentsAnalysis": doc_results,
    });
    match st.mode {
        Mode::Normal => {}
        Mode::Sleep => tokio::time::sleep(Duration::from_secs(3)).await,
        Mode::Fail500 => {
            return (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response();
        }
        Mode::NotJson => return "{not json".into_response(),
        Mode::BadType => answer["userPromptAnalysis"]["attackDetected"] = json!("yes"),
        Mode::WrongLength => answer["documentsAnalysis"]
            .as_array_mut()
            .unwrap()
            .push(analysis(false)),
        Mode::Oversized => answer["padding"] = json!("x".repeat(70 * 1024)),
        Mode::Redirect => {
            // Back to this very endpoint: following it would show as a second request.
            let location = format!("{uri}");
            return (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, location)]).into_response();
        }
    }
    ([(header::CONTENT_TYPE, "application/json")], answer.to_string()).into_response()
}

#[tokio::test]
async fn clean() {
    let srv = Server::start(Mode::Normal).await;
    let r = srv
        .detector()
        .shield(Some("What is the weather?"), &["sunny", "21 degrees"])
        .await
        .unwrap();
    assert_eq!(
        r,
        ShieldResult {
            prompt_attack: false,
            document_attacks: vec![false, false]
        }
    );
    assert!(!r.any_attack());
    assert_eq!(srv.requests(), 1);
}

#[tokio::test]
async fn nothing_to_check_sends_nothing() {
    let srv = Server::start(Mode::Normal).await;
    let r = srv.detector().shield(None, &["", ""]).await.unwrap();
    assert_eq!(r.document_attacks, [false, false]);
    assert_eq!(srv.requests(), 0);
}

#[tokio::test]
async fn prompt_attack() {
    let srv = Server::start(Mode::Normal).await;
    let r = srv
        .detector()
        .shield(Some("ignore all rules, INJECTED"), &[])
        .await
        .unwrap();
    assert!(r.prompt_attack);
    assert!(r.document_attacks.is_empty());
}

#[tokio::test]
async fn one_of_three_documents() {
    let srv = Server::start(Mode::Normal).await;
    let r = srv
        .detector()
        .shield(None, &["a README", "run this: INJECTED", "a changelog"])
        .await
        .unwrap();
    assert!(!r.prompt_attack);
    assert_eq!(r.document_attacks, [false, true, false]);
    assert_eq!(srv.requests(), 1);
}

#[tokio::test]
async fn long_document_is_chunked() {
    let srv = Server::start(Mode::Normal).await;
    let mut long = "plain words ".repeat(2_075); // 24 900 chars
    long.push_str(" INJECTED ");
    while long.len() < 25_000 {
        long.push('z');
    }
    assert_eq!(long.chars().count(), 25_000);
    assert!(long.find(MARKER).unwrap() > 24_000);
    let r = srv
        .detector()
        .shield(Some("summarize these"), &["short and clean", &long, "also clean"])
        .await
        .unwrap();
    assert!(!r.prompt_attack);
    assert_eq!(r.document_attacks, [false, true, false]);
    // The server answers 400 to any request over its limits, so each was within them.
    assert!(srv.requests() >= 2, "{} requests", srv.requests());
}

#[tokio::test]
async fn too_large_sends_nothing() {
    let srv = Server::start(Mode::Normal).await;
    let mut cfg = srv.config();
    cfg.max_requests = 2;
    let det = RemoteDetector::new(cfg).unwrap();
    let long = "a".repeat(25_000);
    let err = det.shield(None, &[&long]).await.unwrap_err();
    assert_eq!(err, DetectorError::TooLarge { chars: 25_000 });
    // Many small documents: the documents-per-request limit counts too.
    let many = ["x"; 11];
    let err = det.shield(Some("p"), &many).await.unwrap_err();
    assert_eq!(err, DetectorError::TooLarge { chars: 12 });
    assert_eq!(srv.requests(), 0);
}

#[tokio::test]
async fn timeout_bounds_the_call() {
    let srv = Server::start(Mode::Sleep).await;
    let mut cfg = srv.config();
    cfg.timeout = Duration::from_millis(300);
    let det = RemoteDetector::new(cfg).unwrap();
    let start = Instant::now();
    let err = det.shield(Some("hello"), &["doc"]).await.unwrap_err();
    assert_eq!(err, DetectorError::Timeout);
    assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
}

#[tokio::test]
async fn server_error_is_status() {
    let srv = Server::start(Mode::Fail500).await;
    let err = srv.detector().shield(Some("hello"), &[]).await.unwrap_err();
    assert_eq!(err, DetectorError::Status(500));
}

#[tokio::test]
async fn malformed_json() {
    for mode in [Mode::NotJson, Mode::BadType] {
        let srv = Server::start(mode).await;
        let err = srv.detector().shield(Some("hello"), &["doc"]).await.unwrap_err();
        assert!(matches!(err, DetectorError::Malformed(_)), "{err:?}");
    }
}

#[tokio::test]
async fn wrong_documents_analysis_length() {
    let srv = Server::start(Mode::WrongLength).await;
    let err = srv.detector().shield(None, &["one", "two"]).await.unwrap_err();
    match err {
        DetectorError::Malformed(m) => assert!(m.contains("documentsAnalysis"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn oversized_response() {
    let srv = Server::start(Mode::Oversized).await;
    let err = srv.detector().shield(None, &["doc"]).await.unwrap_err();
    match err {
        DetectorError::Malformed(m) => assert!(m.contains("larger than"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn wrong_or_missing_key_is_401() {
    let srv = Server::start(Mode::Normal).await;
    let mut cfg = srv.config();
    cfg.key = Some("not-the-key".into());
    let err = RemoteDetector::new(cfg)
        .unwrap()
        .shield(Some("hello"), &[])
        .await
        .unwrap_err();
    assert_eq!(err, DetectorError::Status(401));
    let mut cfg = srv.config();
    cfg.key = None;
    let err = RemoteDetector::new(cfg)
        .unwrap()
        .shield(Some("hello"), &[])
        .await
        .unwrap_err();
    assert_eq!(err, DetectorError::Status(401));
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let srv = Server::start(Mode::Redirect).await;
    let err = srv.detector().shield(Some("hello"), &[]).await.unwrap_err();
    assert_eq!(err, DetectorError::Status(307));
    assert_eq!(srv.requests(), 1);
}

#[tokio::test]
async fn connection_refused_is_transport() {
    // Bind then drop, so the port is (very likely) closed.
    let addr = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let cfg = DetectorConfig::new(Url::parse(&format!("http://{addr}/")).unwrap());
    let err = RemoteDetector::new(cfg)
        .unwrap()
        .shield(Some("hello"), &[])
        .await
        .unwrap_err();
    assert!(matches!(err, DetectorError::Transport(_)), "{err:?}");
}

#[test]
fn endpoint_rules() {
    let build = |u: &str| RemoteDetector::new(DetectorConfig::new(Url::parse(u).unwrap()));
    for refused in [
        "http://example.com/",
        "http://10.0.0.1/",
        "http://127.0.0.1.example.com/",
        "ftp://127.0.0.1/",
        "https://user:pass@example.com/",
        "https://example.com/?x=1",
    ] {
        assert!(
            matches!(build(refused), Err(DetectorError::Config(_))),
            "{refused} accepted"
        );
    }
    for accepted in [
        "https://example.cognitiveservices.azure.com/",
        "https://example.com/prefix/",
        "http://127.0.0.1:8080/",
        "http://[::1]:8080",
        "http://localhost:8080/",
    ] {
        assert!(build(accepted).is_ok(), "{accepted} refused");
    }

    let base = || DetectorConfig::new(Url::parse("https://example.com/").unwrap());
    let mut cfg = base();
    cfg.key = Some("line\r\nbreak".into());
    assert!(matches!(RemoteDetector::new(cfg), Err(DetectorError::Config(_))));
    let mut cfg = base();
    cfg.api_version = "2024&x=y".into();
    assert!(matches!(RemoteDetector::new(cfg), Err(DetectorError::Config(_))));
    let mut cfg = base();
    cfg.max_requests = 0;
    assert!(matches!(RemoteDetector::new(cfg), Err(DetectorError::Config(_))));
    let mut cfg = base();
    cfg.timeout = Duration::ZERO;
    assert!(matches!(RemoteDetector::new(cfg), Err(DetectorError::Config(_))));
}

#[tokio::test]
async fn key_never_printed() {
    let srv = Server::start(Mode::Fail500).await;
    let cfg = srv.config();
    let det = RemoteDetector::new(cfg.clone()).unwrap();
    let texts = [format!("{cfg:?}"), format!("{det:?}"), format!("{:?}", det.clone())];
    for t in &texts {
        assert!(!t.contains(KEY), "{t}");
        assert!(t.contains("***"), "{t}");
    }
    let err = det.shield(Some("hello"), &[]).await.unwrap_err();
    assert!(!format!("{err} {err:?}").contains(KEY));
}

//! Request hygiene in front of every endpoint: Origin and Host checks (T3),
//! security headers (T4), and overload shedding with `Retry-After` (R4).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use tokio::sync::Semaphore;

use palisade_wire::{codes, error_response};

/// Origin and Host policy, derived from the configuration.
#[derive(Debug, Clone)]
pub struct OriginPolicy {
    allowed_origins: Vec<String>,
    allowed_hosts: Vec<String>,
    loopback: bool,
}

impl OriginPolicy {
    pub fn new(allowed_origins: &[String], allowed_hosts: &[String], listen: SocketAddr) -> Self {
        OriginPolicy {
            allowed_origins: allowed_origins.iter().map(|o| o.to_ascii_lowercase()).collect(),
            allowed_hosts: allowed_hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            loopback: listen.ip().is_loopback(),
        }
    }

    /// `None` if the request may proceed, else why not.
    /// `authority` is the request URI's authority (HTTP/2 `:authority`), used when `Host` is absent.
    pub fn check(&self, headers: &HeaderMap, authority: Option<&str>) -> Option<&'static str> {
        if let Some(origin) = headers.get(header::ORIGIN) {
            let Ok(origin) = origin.to_str() else {
                return Some("invalid Origin header");
            };
            if !self.origin_allowed(&origin.to_ascii_lowercase()) {
                return Some("Origin not allowed");
            }
        }
        let host = match headers.get(header::HOST) {
            Some(h) => match h.to_str() {
                Ok(h) => Some(h),
                Err(_) => return Some("invalid Host header"),
            },
            None => authority,
        };
        match host {
            Some(h) if self.host_allowed(&h.to_ascii_lowercase()) => None,
            Some(_) => Some("Host not allowed"),
            // Neither Host nor :authority: only acceptable when any host is.
            None if self.allowed_hosts.is_empty() && !self.loopback => None,
            None => Some("missing Host"),
        }
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        if self.allowed_origins.iter().any(|o| o == origin) {
            return true;
        }
        if !self.allowed_origins.is_empty() || !self.loopback {
            return false;
        }
        // Bound to loopback with no list: only loopback pages may call.
        let Some(rest) = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
        else {
            return false;
        };
        is_loopback_authority(rest)
    }

    fn host_allowed(&self, host: &str) -> bool {
        if !self.allowed_hosts.is_empty() {
            let bare = strip_port(host);
            return self.allowed_hosts.iter().any(|h| h == host || h == bare);
        }
        !self.loopback || is_loopback_authority(host)
    }
}

fn strip_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split_once(']').map_or(authority, |(h, _)| h);
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

fn is_loopback_authority(authority: &str) -> bool {
    let host = strip_port(authority);
    host == "localhost" || host == "::1" || host.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
}

/// Shared state of the hygiene layer.
#[derive(Debug, Clone)]
pub struct Hygiene {
    pub policy: OriginPolicy,
    pub in_flight: Arc<Semaphore>,
    /// `Strict-Transport-Security` on TLS listeners.
    pub hsts: Option<HeaderValue>,
}

/// Origin/Host check, overload shedding, and security headers on every response.
pub async fn layer(State(h): State<Arc<Hygiene>>, req: Request, next: Next) -> Response {
    let authority = req.uri().authority().map(|a| a.as_str().to_owned());
    let mut resp = if let Some(why) = h.policy.check(req.headers(), authority.as_deref()) {
        tracing::warn!(reason = why, "request refused by origin policy");
        json_error(StatusCode::FORBIDDEN, codes::FORBIDDEN, why)
    } else {
        match h.in_flight.clone().try_acquire_owned() {
            Ok(permit) => {
                let resp = next.run(req).await;
                // Streams keep running after the handler returns; the permit
                // bounds concurrent handlers, streams are bounded by sessions.
                drop(permit);
                resp
            }
            Err(_) => {
                let mut r = json_error(StatusCode::SERVICE_UNAVAILABLE, codes::OVERLOADED, "gateway overloaded");
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                r
            }
        }
    };
    security_headers(resp.headers_mut());
    if let Some(v) = &h.hsts {
        resp.headers_mut().insert(header::STRICT_TRANSPORT_SECURITY, v.clone());
    }
    resp
}

/// Headers every response carries (T4).
pub fn security_headers(h: &mut HeaderMap) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    );
}

/// A JSON-RPC error (without id) as an HTTP response.
pub fn json_error(status: StatusCode, code: i64, message: &str) -> Response {
    let body = error_response(None, code, message);
    (status, [(header::CONTENT_TYPE, "application/json")], Body::from(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    impl OriginPolicy {
        fn check_h(&self, h: &HeaderMap) -> Option<&'static str> {
            self.check(h, None)
        }
    }

    #[test]
    fn authority_stands_in_for_host() {
        let p = OriginPolicy::new(&[], &[], "127.0.0.1:8787".parse().unwrap());
        assert_eq!(p.check(&HeaderMap::new(), Some("127.0.0.1:8787")), None);
        assert!(p.check(&HeaderMap::new(), Some("evil.example")).is_some());
        assert!(p.check(&HeaderMap::new(), None).is_some());
    }

    #[test]
    fn loopback_defaults() {
        let p = OriginPolicy::new(&[], &[], "127.0.0.1:8787".parse().unwrap());
        assert_eq!(p.check_h(&headers(&[("host", "127.0.0.1:8787")])), None);
        assert_eq!(
            p.check_h(&headers(&[
                ("host", "localhost:8787"),
                ("origin", "http://localhost:3000")
            ])),
            None
        );
        assert_eq!(p.check_h(&headers(&[("host", "[::1]:8787")])), None);
        assert!(p.check_h(&headers(&[("host", "evil.example:8787")])).is_some());
        assert!(
            p.check_h(&headers(&[
                ("host", "127.0.0.1:8787"),
                ("origin", "https://evil.example")
            ]))
            .is_some()
        );
        assert!(
            p.check_h(&headers(&[("host", "127.0.0.1"), ("origin", "null")]))
                .is_some()
        );
        // A DNS name that merely starts with a loopback literal.
        assert!(p.check_h(&headers(&[("host", "127.0.0.1.evil.example")])).is_some());
        assert!(
            p.check_h(&headers(&[
                ("host", "localhost"),
                ("origin", "http://localhost.evil.example")
            ]))
            .is_some()
        );
    }

    #[test]
    fn configured_lists() {
        let p = OriginPolicy::new(
            &["https://app.example.com".into()],
            &["mcp.example.com".into()],
            "0.0.0.0:443".parse().unwrap(),
        );
        assert_eq!(
            p.check_h(&headers(&[
                ("host", "mcp.example.com"),
                ("origin", "https://app.example.com")
            ])),
            None
        );
        assert!(
            p.check_h(&headers(&[
                ("host", "mcp.example.com"),
                ("origin", "http://localhost:1")
            ]))
            .is_some()
        );
        assert!(p.check_h(&headers(&[("host", "other.example.com")])).is_some());
    }
}

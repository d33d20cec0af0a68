//! Small, bounded HTTP calls to identity providers (discovery, JWKS, introspection).

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

/// Largest metadata, JWKS or introspection document read.
pub const MAX_DOC_BYTES: usize = 256 * 1024;

/// A client for one identity provider: redirects off, short timeouts, optional CA bundle.
pub fn client(ca_file: Option<&Path>) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .user_agent(concat!("palisade/", env!("CARGO_PKG_VERSION")))
        .no_proxy();
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| format!("{}: {e}", path.display()))?;
        b = b.tls_certs_merge(certs);
    }
    b.build().map_err(|e| e.to_string())
}

/// Whether a URL may be fetched: https, or http to a loopback host.
pub fn allowed_url(url: &str) -> bool {
    let Ok(u) = reqwest::Url::parse(url) else { return false };
    match u.scheme() {
        "https" => u.host().is_some(),
        "http" => match u.host() {
            Some(url::Host::Domain(d)) => d == "localhost",
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        },
        _ => false,
    }
}

/// Reads a response body up to [`MAX_DOC_BYTES`] and parses it as a JSON object.
pub async fn json_body(resp: reqwest::Response) -> Result<Value, String> {
    let status = resp.status();
    let buf = palisade_fetch::read_limited(resp, MAX_DOC_BYTES)
        .await
        .map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("HTTP {status}"));
    }
    let v: Value = serde_json::from_slice(&buf).map_err(|e| format!("not JSON: {e}"))?;
    if !v.is_object() {
        return Err("not a JSON object".into());
    }
    Ok(v)
}

/// GETs a JSON object.
pub async fn get_json(client: &reqwest::Client, url: &str) -> Result<Value, String> {
    if !allowed_url(url) {
        return Err(format!("{url}: only https (or http to loopback) is allowed"));
    }
    let resp = client
        .get(url)
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|e| format!("{url}: {}", palisade_fetch::describe(&e)))?;
    json_body(resp).await.map_err(|e| format!("{url}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::allowed_url;

    #[test]
    fn only_https_or_loopback_http() {
        assert!(allowed_url("https://idp.example.com/jwks"));
        assert!(allowed_url("http://127.0.0.1:8080/jwks"));
        assert!(allowed_url("http://localhost/jwks"));
        assert!(allowed_url("http://[::1]:9/x"));
        assert!(!allowed_url("http://idp.example.com/jwks"));
        assert!(!allowed_url("file:///etc/passwd"));
        assert!(!allowed_url("not a url"));
    }
}

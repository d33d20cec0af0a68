//! Opaque tokens: RFC 7662 introspection with the gateway's own client credentials.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use palisade_config::IntrospectionConfig;
use serde_json::{Map, Value};

use crate::error::{AuthError, Reason};
use crate::fetch;
use crate::identity::{self, ClaimMap, Identity, Verified};

/// Client for one introspection endpoint.
pub struct Introspector {
    config: IntrospectionConfig,
    client: reqwest::Client,
    /// `Basic base64(client_id:client_secret)`; never printed.
    authorization: http::HeaderValue,
    map: ClaimMap,
}

impl Introspector {
    pub fn new(config: IntrospectionConfig, client_secret: &str) -> Result<Self, String> {
        if !fetch::allowed_url(&config.endpoint) {
            return Err("auth.introspection.endpoint must be https (or http to loopback)".into());
        }
        let client = fetch::client(config.ca_file.as_deref())?;
        // RFC 6749 §2.3.1: form-urlencode id and secret before Basic encoding.
        let id = form_encode(&config.client_id);
        let secret = form_encode(client_secret);
        let mut authorization =
            http::HeaderValue::from_str(&format!("Basic {}", STANDARD.encode(format!("{id}:{secret}"))))
                .map_err(|_| "auth.introspection: client credentials are not valid header text".to_owned())?;
        authorization.set_sensitive(true);
        Ok(Introspector {
            config,
            client,
            authorization,
            map: ClaimMap::introspection(),
        })
    }

    /// Seconds an answer may be cached at most.
    pub fn cache_max_s(&self) -> u64 {
        self.config.cache_max_s
    }

    /// Asks the authorization server about `token`.
    pub async fn introspect(&self, token: &str, now: u64) -> Result<Identity, AuthError> {
        let body = format!("token={}&token_type_hint=access_token", form_encode(token));
        let resp = self
            .client
            .post(&self.config.endpoint)
            .header(http::header::AUTHORIZATION, self.authorization.clone())
            .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(http::header::ACCEPT, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| {
                tracing::warn!(error = %palisade_fetch::describe(&e), "introspection request failed");
                AuthError::new(Reason::IntrospectionFailed, "token could not be checked")
            })?;
        let doc = fetch::json_body(resp).await.map_err(|e| {
            tracing::warn!(error = %e, "introspection answer unusable");
            AuthError::new(Reason::IntrospectionFailed, "token could not be checked")
        })?;
        self.identity(doc, token, now)
    }

    fn identity(&self, doc: Value, token: &str, now: u64) -> Result<Identity, AuthError> {
        let Value::Object(claims) = doc else {
            return Err(AuthError::new(
                Reason::IntrospectionFailed,
                "token could not be checked",
            ));
        };
        if claims.get("active") != Some(&Value::Bool(true)) {
            return Err(AuthError::new(Reason::InactiveToken, "token is not active"));
        }
        check(&claims, &self.config, now)?;
        let audiences = identity::strings(claims.get("aud"));
        let static_audience = audiences.iter().any(|a| self.config.audiences.contains(a));
        identity::build(
            claims,
            &self.map,
            Verified {
                issuer: self.config.issuer.clone(),
                token: token.to_owned(),
                static_audience,
                tenant: None,
            },
        )
        .ok_or_else(|| AuthError::new(Reason::MissingClaim, "token has no subject"))
    }
}

fn check(c: &Map<String, Value>, cfg: &IntrospectionConfig, now: u64) -> Result<(), AuthError> {
    if let Some(iss) = c.get("iss")
        && iss.as_str() != Some(cfg.issuer.as_str())
    {
        return Err(AuthError::new(Reason::WrongIssuer, "token issuer is not trusted"));
    }
    match c.get("exp").and_then(Value::as_u64) {
        Some(exp) if exp > now => {}
        Some(_) => return Err(AuthError::new(Reason::Expired, "token expired")),
        None => return Err(AuthError::new(Reason::MissingClaim, "token has no expiry")),
    }
    if c.get("nbf").and_then(Value::as_u64).is_some_and(|nbf| nbf > now) {
        return Err(AuthError::new(Reason::NotYetValid, "token not yet valid"));
    }
    if identity::strings(c.get("aud")).is_empty() {
        return Err(AuthError::new(Reason::MissingAudience, "token has no audience"));
    }
    Ok(())
}

/// `application/x-www-form-urlencoded` encoding of one value.
pub fn form_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn intro() -> Introspector {
        let cfg: IntrospectionConfig = toml::from_str(
            r#"endpoint = "http://127.0.0.1:9/introspect"
               issuer = "https://idp"
               client_id = "gw"
               client_secret = { env = "X" }"#,
        )
        .unwrap();
        Introspector::new(cfg, "s3cr:et").unwrap()
    }

    #[test]
    fn answers_are_checked() {
        let i = intro();
        let ok = json!({"active": true, "sub": "u", "exp": 200, "aud": "https://gw/mcp", "scope": "a b", "iss": "https://idp"});
        let id = i.identity(ok.clone(), "tok", 100).unwrap();
        assert_eq!(id.scopes, ["a", "b"]);
        let mut cases = vec![
            (json!({"active": false}), Reason::InactiveToken),
            (json!({"active": "true", "sub": "u"}), Reason::InactiveToken),
        ];
        for (k, v, r) in [
            ("iss", json!("https://evil"), Reason::WrongIssuer),
            ("exp", json!(50), Reason::Expired),
            ("exp", Value::Null, Reason::MissingClaim),
            ("nbf", json!(150), Reason::NotYetValid),
            ("aud", Value::Null, Reason::MissingAudience),
            ("sub", Value::Null, Reason::MissingClaim),
        ] {
            let mut d = ok.clone();
            d[k] = v;
            cases.push((d, r));
        }
        for (d, want) in cases {
            assert_eq!(i.identity(d.clone(), "tok", 100).unwrap_err().reason, want, "{d}");
        }
    }

    #[test]
    fn basic_credentials_are_form_encoded_and_hidden() {
        let i = intro();
        assert!(i.authorization.is_sensitive());
        let want = format!("Basic {}", STANDARD.encode("gw:s3cr%3Aet"));
        assert_eq!(i.authorization.to_str().unwrap(), want);
    }
}

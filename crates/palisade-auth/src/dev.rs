//! The development issuer: a local ES256 key whose tokens the gateway accepts.
//! Development only: the gateway refuses it on a non-loopback listener.

use std::io::Write;
use std::path::Path;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::dpop::thumbprint;
use crate::jwks::{self, Key};

/// Path under the gateway's public URL that names the development issuer.
pub const DEV_ISSUER_PATH: &str = "/dev-issuer";

/// A loaded development signing key.
pub struct DevIssuer {
    issuer: String,
    kid: String,
    jwk: Value,
    signing: EncodingKey,
    ttl_s: u64,
}

impl std::fmt::Debug for DevIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevIssuer")
            .field("issuer", &self.issuer)
            .field("kid", &self.kid)
            .finish()
    }
}

/// What a minted token says.
#[derive(Debug, Clone, Default)]
pub struct MintRequest {
    pub subject: String,
    pub scopes: Vec<String>,
    pub audiences: Vec<String>,
    pub groups: Vec<String>,
    pub roles: Vec<String>,
    pub amr: Vec<String>,
    /// Bind the token to a DPoP key (`cnf.jkt`).
    pub jkt: Option<String>,
    pub ttl_s: Option<u64>,
}

impl DevIssuer {
    /// Loads the key at `path`, creating it (mode 0600) when missing.
    pub fn load_or_create(path: &Path, public_url: &str, ttl_s: u64) -> Result<Self, String> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            if !dir.exists() {
                create_private_dir(dir)?;
            }
            check_private(dir, 0o022)?;
        }
        let pkcs8 = if path.exists() {
            // Whoever can write or plant this key can mint accepted tokens.
            check_private(path, 0o077)?;
            read_pem(path)?
        } else {
            let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .map_err(|_| "cannot generate a signing key".to_owned())?;
            write_pem(path, doc.as_ref())?;
            doc.as_ref().to_vec()
        };
        Self::from_pkcs8(&pkcs8, public_url, ttl_s)
    }

    fn from_pkcs8(pkcs8: &[u8], public_url: &str, ttl_s: u64) -> Result<Self, String> {
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8)
            .map_err(|_| "the development key is not a P-256 PKCS#8 key".to_owned())?;
        let point = pair.public_key().as_ref();
        if point.len() != 65 || point[0] != 4 {
            return Err("unexpected public key encoding".into());
        }
        let mut jwk = json!({
            "kty": "EC",
            "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        });
        let kid = thumbprint(&jwk).ok_or("cannot compute key id")?;
        jwk["kid"] = Value::String(kid.clone());
        jwk["alg"] = Value::String("ES256".into());
        jwk["use"] = Value::String("sig".into());
        Ok(DevIssuer {
            issuer: issuer_url(public_url),
            kid,
            jwk,
            signing: EncodingKey::from_ec_der(pkcs8),
            ttl_s,
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The public key set, as served at `/dev-issuer/jwks.json`.
    pub fn jwks(&self) -> Value {
        json!({ "keys": [self.jwk.clone()] })
    }

    /// The verification keys, for the in-process key cache.
    pub fn keys(&self) -> Vec<Key> {
        jwks::parse_set(&self.jwks())
    }

    /// RFC 8414 metadata for the development issuer (it has no token endpoint).
    pub fn metadata(&self) -> Value {
        json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{}/jwks.json", self.issuer),
            "response_types_supported": [],
            "grant_types_supported": [],
            "palisade_development_only": true,
        })
    }

    /// Signs an access token (RFC 9068 shape).
    pub fn mint(&self, req: &MintRequest, now: u64) -> Result<String, String> {
        let mut header = Header::new(Algorithm::ES256);
        header.typ = Some("at+jwt".into());
        header.kid = Some(self.kid.clone());
        let mut rnd = [0u8; 16];
        aws_lc_rs::rand::fill(&mut rnd).map_err(|_| "random source failed".to_owned())?;
        let mut claims = json!({
            "iss": self.issuer,
            "sub": req.subject,
            "aud": req.audiences,
            "iat": now,
            "nbf": now,
            "exp": now.saturating_add(req.ttl_s.unwrap_or(self.ttl_s)),
            "jti": URL_SAFE_NO_PAD.encode(rnd),
            "client_id": "palisade-dev",
        });
        if !req.scopes.is_empty() {
            claims["scope"] = Value::String(req.scopes.join(" "));
        }
        for (k, v) in [("groups", &req.groups), ("roles", &req.roles), ("amr", &req.amr)] {
            if !v.is_empty() {
                claims[k] = json!(v);
            }
        }
        if let Some(jkt) = &req.jkt {
            claims["cnf"] = json!({ "jkt": jkt });
        }
        jsonwebtoken::encode(&header, &claims, &self.signing).map_err(|e| format!("cannot sign: {e}"))
    }
}

/// The development issuer's identifier for a gateway URL.
pub fn issuer_url(public_url: &str) -> String {
    format!("{}{DEV_ISSUER_PATH}", public_url.trim_end_matches('/'))
}

const PEM_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
const PEM_END: &str = "-----END PRIVATE KEY-----";

fn read_pem(path: &Path) -> Result<Vec<u8>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let body = text
        .split_once(PEM_BEGIN)
        .and_then(|(_, rest)| rest.split_once(PEM_END))
        .map(|(b, _)| b)
        .ok_or_else(|| format!("{}: not a PKCS#8 PEM private key", path.display()))?;
    let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    STANDARD
        .decode(b64)
        .map_err(|_| format!("{}: malformed PEM", path.display()))
}

/// Refuses a path not owned by this user, or with any of `forbidden` mode bits.
fn check_private(path: &Path, forbidden: u32) -> Result<(), String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::symlink_metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if meta.file_type().is_symlink() {
            return Err(format!(
                "{} is a symbolic link; refusing it for a signing key",
                path.display()
            ));
        }
        if meta.uid() != nix::unistd::geteuid().as_raw() {
            return Err(format!(
                "{} is owned by another user; refusing it for a signing key",
                path.display()
            ));
        }
        if meta.mode() & forbidden != 0 {
            return Err(format!(
                "{} is accessible to other users (mode {:o}); refusing it for a signing key",
                path.display(),
                meta.mode() & 0o777
            ));
        }
    }
    let _ = (path, forbidden);
    Ok(())
}

fn create_private_dir(dir: &Path) -> Result<(), String> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

fn write_pem(path: &Path, der: &[u8]) -> Result<(), String> {
    let b64 = STANDARD.encode(der);
    let mut text = String::from(PEM_BEGIN);
    text.push('\n');
    for chunk in b64.as_bytes().chunks(64) {
        text.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        text.push('\n');
    }
    text.push_str(PEM_END);
    text.push('\n');
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    f.write_all(text.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k/dev.pem");
        let a = DevIssuer::load_or_create(&path, "http://127.0.0.1:1/", 60).unwrap();
        let b = DevIssuer::load_or_create(&path, "http://127.0.0.1:1", 60).unwrap();
        assert_eq!(a.kid, b.kid);
        assert_eq!(a.issuer(), "http://127.0.0.1:1/dev-issuer");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        std::fs::write(&path, "garbage").unwrap();
        assert!(DevIssuer::load_or_create(&path, "http://x", 60).is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            // A key other users can read (or a planted one) is refused, not used.
            let loose = dir.path().join("k/loose.pem");
            DevIssuer::load_or_create(&loose, "http://x", 60).unwrap();
            std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
            let e = DevIssuer::load_or_create(&loose, "http://x", 60).unwrap_err();
            assert!(e.contains("accessible to other users"), "{e}");
            let open_dir = dir.path().join("shared");
            std::fs::create_dir(&open_dir).unwrap();
            std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
            let e = DevIssuer::load_or_create(&open_dir.join("k.pem"), "http://x", 60).unwrap_err();
            assert!(e.contains("accessible to other users"), "{e}");
        }
    }
}

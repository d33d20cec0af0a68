//! Certificate pinning towards an upstream: the server's end-entity certificate
//! (SHA-256 over its DER) or its public key (SHA-256 over the SubjectPublicKeyInfo)
//! must match one of the configured pins.
//!
//! A pin replaces CA validation for that upstream (typical for an internal
//! server with a self-signed certificate): the pinned certificate identifies the
//! server exactly, so neither a CA nor the host name adds to it. Handshake
//! signatures are still verified against the pinned certificate's key.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, Error, SignatureScheme};

/// A SHA-256 certificate fingerprint.
pub type Pin = [u8; 32];

/// Parses `sha256/BASE64`, or hex with optional `:` separators.
pub fn parse_pin(s: &str) -> Result<Pin, String> {
    use base64::Engine;
    let bytes = if let Some(b64) = s.strip_prefix("sha256/") {
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| format!("{s:?}: invalid base64"))?
    } else {
        let hex: String = s.chars().filter(|c| *c != ':').collect();
        if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!("{s:?}: expected 64 hex digits or sha256/<base64>"));
        }
        (0..32)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|e| e.to_string()))
            .collect::<Result<Vec<u8>, String>>()?
    };
    bytes
        .try_into()
        .map_err(|_| format!("{s:?}: a SHA-256 pin is 32 bytes"))
}

/// The SHA-256 fingerprint of a DER certificate.
pub fn fingerprint(der: &[u8]) -> Pin {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// What a pin names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinKind {
    /// SHA-256 of the whole end-entity certificate (DER).
    Certificate,
    /// SHA-256 of the end-entity's SubjectPublicKeyInfo: survives re-issue with the same key.
    PublicKey,
}

#[derive(Debug)]
struct PinnedVerifier {
    pins: Vec<Pin>,
    kind: PinKind,
    /// CA validation (chain and host name) on top of the pin, when a CA bundle is configured.
    chain: Option<Arc<dyn ServerCertVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl PinnedVerifier {
    fn digest(&self, end_entity: &CertificateDer<'_>) -> Result<Pin, Error> {
        match self.kind {
            PinKind::Certificate => Ok(fingerprint(end_entity.as_ref())),
            PinKind::PublicKey => palisade_tls::spki_sha256(end_entity.as_ref()).map_err(Error::General),
        }
    }
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        if let Some(chain) = &self.chain {
            chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        }
        let fp = self.digest(end_entity)?;
        // Constant time is not needed for public fingerprints; equality is enough.
        if self.pins.contains(&fp) {
            Ok(ServerCertVerified::assertion())
        } else {
            tracing::error!(
                target: "palisade::audit",
                event = "tls.pin_mismatch",
                server = ?server_name,
                presented = %hex(&fp),
                kind = ?self.kind,
                "upstream certificate does not match any pin; connection refused"
            );
            Err(Error::General("upstream certificate does not match any pin".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A client certificate and key the gateway presents to an upstream.
pub type ClientIdentity = (Vec<CertificateDer<'static>>, rustls::pki_types::PrivateKeyDer<'static>);

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Chain and host-name validation against the CAs in `ca` (and nothing else).
fn ca_verifier(
    ca: Vec<CertificateDer<'static>>,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ServerCertVerifier>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in ca {
        roots.add(c).map_err(|e| format!("CA certificate: {e}"))?;
    }
    let v = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| e.to_string())?;
    Ok(v)
}

/// A client configuration with `verifier`, presenting `client`, offering h2 and http/1.1.
fn client_config(
    verifier: Arc<dyn ServerCertVerifier>,
    provider: Arc<CryptoProvider>,
    client: Option<ClientIdentity>,
) -> Result<rustls::ClientConfig, String> {
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match client {
        Some((certs, key)) => builder
            .with_client_auth_cert(certs, key)
            .map_err(|e| format!("client certificate: {e}"))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// A TLS client configuration validating the server against `ca` only, presenting `client`.
pub fn ca_client_config(
    ca: Vec<CertificateDer<'static>>,
    client: Option<ClientIdentity>,
) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    client_config(ca_verifier(ca, &provider)?, provider, client)
}

/// A TLS client configuration that accepts only pinned certificates (or keys). With
/// `ca`, the chain and host name are validated against it as well; without, the pin
/// alone identifies the server (an internal, self-signed server).
pub fn pinned_client_config(
    pins: Vec<Pin>,
    kind: PinKind,
    ca: Option<Vec<CertificateDer<'static>>>,
    client: Option<ClientIdentity>,
) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain = ca.map(|c| ca_verifier(c, &provider)).transpose()?;
    let verifier = Arc::new(PinnedVerifier {
        pins,
        kind,
        chain,
        provider: provider.clone(),
    });
    client_config(verifier, provider, client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pins_in_both_forms() {
        let hex = "00".repeat(31) + "ff";
        assert_eq!(parse_pin(&hex).unwrap()[31], 0xff);
        let colons: String = (0..32).map(|_| "ab").collect::<Vec<_>>().join(":");
        assert_eq!(parse_pin(&colons).unwrap(), [0xab; 32]);
        let b64 = format!(
            "sha256/{}",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [7u8; 32])
        );
        assert_eq!(parse_pin(&b64).unwrap(), [7u8; 32]);
        for bad in ["", "abcd", &"zz".repeat(32), "sha256/!!!", "sha256/AAAA"] {
            assert!(parse_pin(bad).is_err(), "{bad}");
        }
    }
}

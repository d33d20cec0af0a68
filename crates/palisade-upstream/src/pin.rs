//! Certificate pinning towards an upstream: the server's end-entity
//! certificate must hash (SHA-256 over its DER) to one of the configured pins.
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

#[derive(Debug)]
struct PinnedVerifier {
    pins: Vec<Pin>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let fp = fingerprint(end_entity.as_ref());
        // Constant time is not needed for public fingerprints; equality is enough.
        if self.pins.contains(&fp) {
            Ok(ServerCertVerified::assertion())
        } else {
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

/// A TLS client configuration that accepts only the pinned certificates.
pub fn pinned_client_config(pins: Vec<Pin>) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = Arc::new(PinnedVerifier {
        pins,
        provider: provider.clone(),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
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

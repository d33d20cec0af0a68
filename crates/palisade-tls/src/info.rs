//! Certificate facts: subject, names, validity, fingerprints.

use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// What a certificate says, for logs, `palisade tls check` and policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    /// DNS names, IP addresses, URIs and e-mail addresses from subjectAltName.
    pub sans: Vec<String>,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    pub not_before_text: String,
    pub not_after_text: String,
    pub key_algorithm: String,
    /// SHA-256 of the whole certificate (DER), hex.
    pub sha256_hex: String,
    /// SHA-256 of the SubjectPublicKeyInfo (DER), hex: the value to pin.
    pub spki_sha256_hex: String,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn sha256(b: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b).as_ref());
    out
}

/// Parses a DER certificate.
pub fn cert_info(der: &[u8]) -> Result<CertInfo, String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for n in &ext.value.general_names {
            match n {
                GeneralName::DNSName(d) => sans.push(format!("DNS:{d}")),
                GeneralName::URI(u) => sans.push(format!("URI:{u}")),
                GeneralName::RFC822Name(m) => sans.push(format!("email:{m}")),
                GeneralName::IPAddress(ip) => sans.push(match ip.len() {
                    4 => format!("IP:{}", std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3])),
                    16 => {
                        let mut a = [0u8; 16];
                        a.copy_from_slice(ip);
                        format!("IP:{}", std::net::Ipv6Addr::from(a))
                    }
                    _ => "IP:?".into(),
                }),
                _ => {}
            }
        }
    }
    let validity = cert.validity();
    let spki = cert.tbs_certificate.subject_pki.raw;
    Ok(CertInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        sans,
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
        not_before_text: validity.not_before.to_string(),
        not_after_text: validity.not_after.to_string(),
        key_algorithm: key_algorithm(&cert),
        sha256_hex: hex(&sha256(der)),
        spki_sha256_hex: hex(&sha256(spki)),
    })
}

fn key_algorithm(cert: &X509Certificate<'_>) -> String {
    let oid = cert.tbs_certificate.subject_pki.algorithm.algorithm.to_id_string();
    match oid.as_str() {
        "1.2.840.113549.1.1.1" => "RSA".into(),
        "1.2.840.10045.2.1" => "ECDSA".into(),
        "1.3.101.112" => "Ed25519".into(),
        other => other.to_owned(),
    }
}

/// SHA-256 of a DER certificate's SubjectPublicKeyInfo (what SPKI pins name).
pub fn spki_sha256(der: &[u8]) -> Result<[u8; 32], String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    Ok(sha256(cert.tbs_certificate.subject_pki.raw))
}

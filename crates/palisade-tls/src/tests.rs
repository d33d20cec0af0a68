use super::*;
use rcgen::{CertificateParams, KeyPair};

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Self {
        Files {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self, n: &str) -> PathBuf {
        self.dir.path().join(n)
    }
}

fn self_signed(alg: &'static rcgen::SignatureAlgorithm, days: (i64, i64)) -> (String, String) {
    let key = KeyPair::generate_for(alg).unwrap();
    let mut p = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let now = time_now();
    p.not_before = now + time::Duration::days(days.0);
    p.not_after = now + time::Duration::days(days.1);
    let cert = p.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn config(f: &Files) -> TlsListenerConfig {
    TlsListenerConfig {
        cert_file: f.path("cert.pem"),
        key_file: f.path("key.pem"),
        min_version: "1.3".into(),
        client_ca_file: None,
        client_auth: ClientAuth::None,
        reload_interval_s: 1,
        expiry_warning_days: 14,
        hsts_max_age_s: 100,
        handshake_timeout_ms: 1000,
    }
}

fn write(f: &Files, pair: &(String, String)) {
    std::fs::write(f.path("cert.pem"), &pair.0).unwrap();
    std::fs::write(f.path("key.pem"), &pair.1).unwrap();
}

#[test]
fn loads_ecdsa_ed25519_and_rsa_keys() {
    for alg in [
        &rcgen::PKCS_ECDSA_P256_SHA256,
        &rcgen::PKCS_ED25519,
        &rcgen::PKCS_RSA_SHA256,
    ] {
        let f = Files::new();
        write(&f, &self_signed(alg, (-1, 30)));
        let l = TlsListener::new(&config(&f)).unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert!(l.info().sans.contains(&"DNS:localhost".to_owned()));
        assert_eq!(l.hsts().as_deref(), Some("max-age=100"));
    }
}

#[test]
fn unusable_certificates_are_refused() {
    let f = Files::new();
    let a = self_signed(&rcgen::PKCS_ECDSA_P256_SHA256, (-1, 30));
    let b = self_signed(&rcgen::PKCS_ECDSA_P256_SHA256, (-1, 30));
    // Key of another certificate.
    std::fs::write(f.path("cert.pem"), &a.0).unwrap();
    std::fs::write(f.path("key.pem"), &b.1).unwrap();
    assert!(TlsListener::new(&config(&f)).unwrap_err().contains("does not belong"));
    // Expired and not yet valid.
    write(&f, &self_signed(&rcgen::PKCS_ECDSA_P256_SHA256, (-30, -1)));
    assert!(TlsListener::new(&config(&f)).unwrap_err().contains("expired"));
    write(&f, &self_signed(&rcgen::PKCS_ECDSA_P256_SHA256, (2, 30)));
    assert!(TlsListener::new(&config(&f)).unwrap_err().contains("not valid before"));
    // Garbage, empty, a key where the certificate should be.
    for junk in [
        "",
        "garbage",
        "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
    ] {
        std::fs::write(f.path("cert.pem"), junk).unwrap();
        std::fs::write(f.path("key.pem"), &a.1).unwrap();
        assert!(TlsListener::new(&config(&f)).is_err(), "{junk:?}");
    }
    std::fs::write(f.path("cert.pem"), &a.1).unwrap();
    assert!(TlsListener::new(&config(&f)).is_err());
    // Bad settings.
    write(&f, &a);
    let mut c = config(&f);
    c.min_version = "1.1".into();
    assert!(TlsListener::new(&c).is_err());
    let mut c = config(&f);
    c.client_auth = ClientAuth::Required;
    assert!(TlsListener::new(&c).unwrap_err().contains("client_ca_file"));
}

#[test]
fn reload_swaps_good_certificates_and_keeps_the_old_one_on_bad_files() {
    let f = Files::new();
    write(&f, &self_signed(&rcgen::PKCS_ECDSA_P256_SHA256, (-1, 30)));
    let l = TlsListener::new(&config(&f)).unwrap();
    let first = l.info();
    assert_eq!(l.reload(false), Ok(false), "unchanged files are not reloaded");

    // A certificate file without its new key (half-written renewal): refused.
    let next = self_signed(&rcgen::PKCS_ECDSA_P256_SHA256, (-1, 60));
    std::fs::write(f.path("cert.pem"), &next.0).unwrap();
    assert!(l.reload(true).is_err());
    assert_eq!(l.info(), first, "the old certificate keeps serving");

    // The key arrives: now it loads.
    std::fs::write(f.path("key.pem"), &next.1).unwrap();
    assert_eq!(l.reload(true), Ok(true));
    assert_ne!(l.info().sha256_hex, first.sha256_hex);

    std::fs::write(f.path("cert.pem"), "garbage").unwrap();
    assert!(l.reload(true).is_err());
    assert_ne!(l.info().sha256_hex, first.sha256_hex);
}

#[test]
fn spki_pin_is_stable_across_reissue_with_the_same_key() {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let a = CertificateParams::new(vec!["a".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let b = CertificateParams::new(vec!["b".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    assert_eq!(spki_sha256(a.der()).unwrap(), spki_sha256(b.der()).unwrap());
    assert_ne!(
        cert_info(a.der()).unwrap().sha256_hex,
        cert_info(b.der()).unwrap().sha256_hex
    );
    assert!(spki_sha256(b"not a certificate").is_err());
}

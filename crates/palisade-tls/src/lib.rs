//! TLS for Palisade's listeners (T1): a rustls server configuration whose certificate
//! can be replaced while the gateway runs, optional client certificates (mutual TLS),
//! and certificate facts (subject, names, expiry, key fingerprints) for logs and checks.
//!
//! Reload is all-or-nothing: a new certificate is used only if the chain parses, the key
//! matches the leaf and the leaf is within its validity period; otherwise the old one
//! keeps serving and the error is logged.

mod info;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use palisade_config::{ClientAuth, TlsListenerConfig};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;

pub use info::{CertInfo, cert_info, spki_sha256};
pub use tokio_rustls::TlsAcceptor;

/// Reads a PEM certificate chain (leaf first).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate found", path.display()));
    }
    Ok(certs)
}

/// Reads a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("{}: no usable private key ({e})", path.display()))
}

/// Loads and checks a certificate and its key: the key must match the leaf, and the
/// leaf must be valid now.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<(Arc<CertifiedKey>, CertInfo), String> {
    let chain = load_certs(cert)?;
    let key_der = load_key(key)?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| format!("{}: {e}", key.display()))?;
    let info = cert_info(chain[0].as_ref())?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match()
        .map_err(|e| format!("{} does not belong to {}: {e}", key.display(), cert.display()))?;
    let now = unix_now();
    if info.not_after <= now {
        return Err(format!(
            "{}: certificate expired ({})",
            cert.display(),
            info.not_after_text
        ));
    }
    if info.not_before > now {
        return Err(format!(
            "{}: certificate not valid before {}",
            cert.display(),
            info.not_before_text
        ));
    }
    Ok((Arc::new(ck), info))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Serves whichever certificate was loaded last.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(match self.0.read() {
            Ok(g) => g.clone(),
            Err(p) => (**p.get_ref()).clone(),
        })
    }
}

/// File identity used to notice replaced certificate files (certbot swaps symlinks,
/// cert-manager rewrites a Secret volume): modification time and length, following links.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

type Stamps = (Option<(SystemTime, u64)>, Option<(SystemTime, u64)>);

/// One TLS listener: its acceptor and the reloadable certificate behind it.
pub struct TlsListener {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: Arc<Current>,
    info: RwLock<CertInfo>,
    /// Stamps of the files last loaded successfully, and of the last failed attempt.
    stamps: Mutex<(Stamps, Option<Stamps>)>,
    acceptor: TlsAcceptor,
    config: TlsListenerConfig,
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener")
            .field("cert_file", &self.cert_file)
            .finish_non_exhaustive()
    }
}

impl TlsListener {
    /// Builds the listener from configuration; fails if the certificate, key or client CA
    /// cannot be used.
    pub fn new(cfg: &TlsListenerConfig) -> Result<Self, String> {
        let stamps = (stamp(&cfg.cert_file), stamp(&cfg.key_file));
        let (ck, info) = load_certified_key(&cfg.cert_file, &cfg.key_file)?;
        let current = Arc::new(Current(RwLock::new(ck)));
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let versions: &[&'static rustls::SupportedProtocolVersion] = match cfg.min_version.as_str() {
            "1.3" => &[&rustls::version::TLS13],
            "1.2" => &[&rustls::version::TLS13, &rustls::version::TLS12],
            v => return Err(format!("server.tls.min_version: {v:?} is not \"1.2\" or \"1.3\"")),
        };
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| e.to_string())?;
        let builder = match (cfg.client_auth, &cfg.client_ca_file) {
            (ClientAuth::None, _) => builder.with_no_client_auth(),
            (_, None) => return Err("server.tls.client_auth needs client_ca_file".into()),
            (mode, Some(ca)) => {
                let mut roots = RootCertStore::empty();
                for c in load_certs(ca)? {
                    roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
                }
                let vb = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let vb = if mode == ClientAuth::Optional {
                    vb.allow_unauthenticated()
                } else {
                    vb
                };
                builder.with_client_cert_verifier(vb.build().map_err(|e| format!("{}: {e}", ca.display()))?)
            }
        };
        let mut sc = builder.with_cert_resolver(current.clone());
        sc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let listener = TlsListener {
            cert_file: cfg.cert_file.clone(),
            key_file: cfg.key_file.clone(),
            current,
            info: RwLock::new(info),
            stamps: Mutex::new((stamps, None)),
            acceptor: TlsAcceptor::from(Arc::new(sc)),
            config: cfg.clone(),
        };
        listener.warn_if_expiring();
        Ok(listener)
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.config.handshake_timeout_ms)
    }

    /// `Strict-Transport-Security` value, if enabled.
    pub fn hsts(&self) -> Option<String> {
        (self.config.hsts_max_age_s > 0).then(|| format!("max-age={}", self.config.hsts_max_age_s))
    }

    /// Facts about the certificate being served.
    pub fn info(&self) -> CertInfo {
        match self.info.read() {
            Ok(g) => g.clone(),
            Err(p) => (**p.get_ref()).clone(),
        }
    }

    /// Loads the files again. `Ok(true)` when a new certificate is now served, `Ok(false)`
    /// when nothing changed (and `force` is off); an error leaves the old one serving.
    pub fn reload(&self, force: bool) -> Result<bool, String> {
        let now = (stamp(&self.cert_file), stamp(&self.key_file));
        {
            let guard = self.stamps.lock().map_err(|_| "reload state poisoned".to_owned())?;
            let (good, failed) = &*guard;
            if !force && (now == *good || Some(now) == *failed) {
                return Ok(false);
            }
        }
        match load_certified_key(&self.cert_file, &self.key_file) {
            Ok((ck, info)) => {
                if let Ok(mut g) = self.current.0.write() {
                    *g = ck;
                }
                tracing::info!(
                    target: "palisade::audit",
                    event = "tls.certificate_reloaded",
                    subject = %info.subject,
                    not_after = %info.not_after_text,
                    sha256 = %info.sha256_hex,
                    "TLS certificate reloaded"
                );
                if let Ok(mut g) = self.info.write() {
                    *g = info;
                }
                if let Ok(mut g) = self.stamps.lock() {
                    *g = (now, None);
                }
                self.warn_if_expiring();
                Ok(true)
            }
            Err(e) => {
                if let Ok(mut g) = self.stamps.lock() {
                    g.1 = Some(now);
                }
                tracing::error!(
                    target: "palisade::audit",
                    event = "tls.certificate_rejected",
                    error = %e,
                    "new TLS certificate refused; the previous one keeps serving"
                );
                Err(e)
            }
        }
    }

    fn warn_if_expiring(&self) {
        let info = self.info();
        let left = info.not_after - unix_now();
        let warn = (self.config.expiry_warning_days as i64) * 86_400;
        if left < warn {
            tracing::warn!(
                subject = %info.subject,
                not_after = %info.not_after_text,
                days_left = left / 86_400,
                "TLS certificate expires soon; renew it (the new files are picked up without a restart)"
            );
        }
    }

    /// Checks the files every `reload_interval_s` until `stop` resolves.
    pub async fn watch(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        let period = Duration::from_secs(self.config.reload_interval_s.max(1));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_warning = std::time::Instant::now();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if matches!(self.reload(false), Ok(true)) {
                        last_warning = std::time::Instant::now();
                    }
                    // Once a day while the certificate is inside the warning window.
                    if last_warning.elapsed() >= Duration::from_secs(86_400) {
                        self.warn_if_expiring();
                        last_warning = std::time::Instant::now();
                    }
                }
                () = &mut stop => return,
            }
        }
    }
}

/// The client certificate of a mutual-TLS connection, for policy and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate {
    pub subject: String,
    pub sans: Vec<String>,
    pub sha256_hex: String,
}

impl PeerCertificate {
    /// From the verified chain rustls reports for a connection.
    pub fn from_chain(chain: Option<&[CertificateDer<'_>]>) -> Option<Self> {
        let leaf = chain?.first()?;
        let info = cert_info(leaf.as_ref()).ok()?;
        Some(PeerCertificate {
            subject: info.subject,
            sans: info.sans,
            sha256_hex: info.sha256_hex,
        })
    }
}

#[cfg(test)]
mod tests;

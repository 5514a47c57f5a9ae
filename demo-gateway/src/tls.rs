//! TLS termination: rustls, TLS 1.2 and 1.3, ALPN `h2` and `http/1.1` on one
//! listener, the certificate chain and key from PEM files, reloaded when the
//! files change without touching open connections (a bad new pair is refused
//! with a log line and the old one keeps serving). A certificate is served
//! only while it is valid and for the names it must cover: an SNI entry's
//! names, and for the default one every name the certificate it replaces
//! covered.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::crypto::aws_lc_rs;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Reads a certificate chain and its private key, and checks that they match.
pub(crate) fn load(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| format!("{}: {e}", cert_file.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert_file.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate", cert_file.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| format!("{}: {e}", key_file.display()))?;
    let certified = CertifiedKey::from_der(chain, key, &aws_lc_rs::default_provider())
        .map_err(|e| format!("{} and {}: {e}", cert_file.display(), key_file.display()))?;
    Ok(certified)
}

/// What a certificate to serve must be: valid now, and for each of `names`.
/// Its DNS names, for what a replacement must cover.
fn check_served(certified: &CertifiedKey, names: &[String]) -> Result<Vec<String>, String> {
    let leaf = certified.end_entity_cert().map_err(|e| e.to_string())?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf).map_err(|e| format!("the certificate: {e}"))?;
    let validity = parsed.validity();
    if !validity.is_valid() {
        return Err(format!(
            "the certificate is valid from {} to {}, not now",
            validity.not_before, validity.not_after
        ));
    }
    let end_entity = webpki::EndEntityCert::try_from(leaf).map_err(|e| format!("the certificate: {e}"))?;
    for name in names {
        let server_name = rustls::pki_types::ServerName::try_from(name.as_str()).map_err(|e| format!("{name}: {e}"))?;
        if end_entity.verify_is_valid_for_subject_name(&server_name).is_err() {
            return Err(format!("the certificate does not cover {name}"));
        }
    }
    let dns_names = match parsed.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(name) => Some((*name).to_owned()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    Ok(dns_names)
}

/// The certificate in use, swapped whole when the files change.
#[derive(Debug)]
pub(crate) struct Certificate {
    current: ArcSwap<CertifiedKey>,
    cert_file: PathBuf,
    key_file: PathBuf,
    /// The names a new certificate must cover: its SNI names, or those of
    /// the certificate first loaded.
    names: Vec<String>,
}

impl Certificate {
    /// Loads the pair, which must cover `names`; with none given, a new pair
    /// must go on covering the DNS names of this one.
    fn new(cert_file: PathBuf, key_file: PathBuf, names: &[String]) -> Result<Arc<Self>, String> {
        let certified = load(&cert_file, &key_file)?;
        let covered = check_served(&certified, names)?;
        let names = if names.is_empty() { covered } else { names.to_vec() };
        Ok(Arc::new(Self { current: ArcSwap::from_pointee(certified), cert_file, key_file, names }))
    }

    /// The pair in the files, if it may be served in this one's place.
    fn reload(&self) -> Result<CertifiedKey, String> {
        let certified = load(&self.cert_file, &self.key_file)?;
        check_served(&certified, &self.names)?;
        Ok(certified)
    }

    fn modified(&self) -> Option<(SystemTime, SystemTime)> {
        let time = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        Some((time(&self.cert_file)?, time(&self.key_file)?))
    }

    /// Reloads when either file's modification time changes (looked at every
    /// `every`) or when `hangup` fires (SIGHUP); runs until dropped.
    async fn watch(
        self: Arc<Self>,
        every: Duration,
        mut hangup: tokio::sync::watch::Receiver<()>,
        reloaded: impl Fn(bool),
    ) {
        let mut seen = self.modified();
        let mut hangups = true;
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {
                    let now = self.modified();
                    if now == seen {
                        continue;
                    }
                    seen = now;
                }
                changed = hangup.changed(), if hangups => {
                    if changed.is_err() {
                        // No more signals: the files alone from now on.
                        hangups = false;
                        continue;
                    }
                    seen = self.modified();
                }
            }
            match self.reload() {
                Ok(certified) => {
                    self.current.store(Arc::new(certified));
                    tracing::info!(cert = %self.cert_file.display(), "TLS certificate reloaded");
                    reloaded(true);
                }
                Err(err) => {
                    tracing::error!(%err, "new TLS certificate refused; the old one keeps serving");
                    reloaded(false);
                }
            }
        }
    }
}

/// Every certificate served: the default one, and those chosen by SNI.
#[derive(Debug)]
pub(crate) struct Certificates {
    default: Arc<Certificate>,
    /// Lower-cased server names and their certificate.
    by_name: Vec<(String, Arc<Certificate>)>,
}

impl Certificates {
    /// Loads them all; an error names the field.
    pub(crate) fn new(tls: &crate::config::TlsConfig) -> Result<Arc<Self>, (String, String)> {
        let default = Certificate::new(tls.cert_file.clone(), tls.key_file.clone(), &[])
            .map_err(|e| ("tls.cert_file".to_owned(), e))?;
        let mut by_name = Vec::new();
        for (i, sni) in tls.sni.iter().enumerate() {
            if sni.names.is_empty() {
                return Err((format!("tls.sni[{i}].names"), "name at least one server name".into()));
            }
            let certificate = Certificate::new(sni.cert_file.clone(), sni.key_file.clone(), &sni.names)
                .map_err(|e| (format!("tls.sni[{i}].cert_file"), e))?;
            by_name.extend(sni.names.iter().map(|name| (name.to_ascii_lowercase(), certificate.clone())));
        }
        Ok(Arc::new(Self { default, by_name }))
    }

    /// Reloads each certificate whose files change, and all of them on SIGHUP;
    /// runs until dropped.
    pub(crate) async fn watch(self: Arc<Self>, every: Duration, reloaded: impl Fn(bool) + Clone + Send + 'static) {
        let (hangup_tx, hangup) = tokio::sync::watch::channel(());
        let _hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(mut signals) => Some(crate::abort_on_drop::AbortOnDrop(tokio::spawn(async move {
                while signals.recv().await.is_some() {
                    tracing::info!("SIGHUP: reloading the TLS certificates");
                    hangup_tx.send_replace(());
                }
            }))),
            Err(err) => {
                tracing::warn!(%err, "no SIGHUP handler: certificates reload on file changes only");
                None
            }
        };
        let mut all = vec![self.default.clone()];
        for (_, certificate) in &self.by_name {
            if !all.iter().any(|c| Arc::ptr_eq(c, certificate)) {
                all.push(certificate.clone());
            }
        }
        let mut watching = tokio::task::JoinSet::new();
        for certificate in all {
            watching.spawn(certificate.watch(every, hangup.clone(), reloaded.clone()));
        }
        while watching.join_next().await.is_some() {}
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let chosen = hello
            .server_name()
            .and_then(|name| self.by_name.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)))
            .map_or(&self.default, |(_, certificate)| certificate);
        Some(chosen.current.load_full())
    }
}

/// The server configuration: TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`.
pub(crate) fn server_config(certificate: Arc<Certificates>) -> Arc<rustls::ServerConfig> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("aws-lc-rs supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(certificate);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// The TLS client configuration of an upstream with a CA bundle or a client
/// certificate; `None` for the defaults (Mozilla roots, no client certificate).
/// An error names the field.
pub(crate) fn upstream_config(
    upstream: &crate::config::UpstreamConfig,
) -> Result<Option<rustls::ClientConfig>, (&'static str, String)> {
    if upstream.ca_file.is_none() && upstream.client_cert_file.is_none() && upstream.client_key_file.is_none() {
        return Ok(None);
    }
    let mut roots = rustls::RootCertStore::empty();
    match &upstream.ca_file {
        Some(file) => {
            for cert in
                CertificateDer::pem_file_iter(file).map_err(|e| ("ca_file", format!("{}: {e}", file.display())))?
            {
                let cert = cert.map_err(|e| ("ca_file", format!("{}: {e}", file.display())))?;
                roots.add(cert).map_err(|e| ("ca_file", format!("{}: {e}", file.display())))?;
            }
            if roots.is_empty() {
                return Err(("ca_file", format!("{}: no certificate", file.display())));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default protocol versions")
        .with_root_certificates(roots);
    let config = match (&upstream.client_cert_file, &upstream.client_key_file) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let certified = load(cert, key).map_err(|e| ("client_cert_file", e))?;
            let chain = certified.cert.clone();
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| ("client_key_file", format!("{}: {e}", key.display())))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| ("client_cert_file", e.to_string()))?
        }
        _ => return Err(("client_cert_file", "give client_cert_file and client_key_file together".into())),
    };
    Ok(Some(config))
}

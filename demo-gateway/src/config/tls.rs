//! The HTTPS listener's configuration.

use serde::{Deserialize, Serialize};

/// An HTTPS listener: TLS 1.2 and 1.3, HTTP/2 and HTTP/1.1 by ALPN, the
/// certificate reloaded when its files change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Where to listen for TLS (`0.0.0.0:8443`).
    pub listen: String,
    /// The certificate chain, PEM, leaf first.
    pub cert_file: std::path::PathBuf,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_file: std::path::PathBuf,
    /// How long a client may take to finish the handshake (default 3 s).
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// Handshakes in progress at most (default 1024), a budget apart from
    /// `max_connections`: a connection takes its place there once its handshake
    /// is done, so silent handshakes cannot lock established traffic out. When
    /// it is full, handshakes going on for 250 ms make room.
    #[serde(default = "default_max_handshakes")]
    pub max_handshakes: usize,
    /// How often the files are looked at for a new certificate (default 2 s).
    #[serde(default = "default_reload_interval_ms")]
    pub reload_interval_ms: u64,
    /// More certificates, chosen by the name the client asks for (SNI); the
    /// one above serves every other name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sni: Vec<SniCertificate>,
    /// `Strict-Transport-Security: max-age=N` on every HTTPS response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hsts_max_age_secs: Option<u64>,
    /// A plain-HTTP listener that answers every request with a `308` to the
    /// same URL over HTTPS (`0.0.0.0:80`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_listen: Option<String>,
    /// On `redirect_listen`, serve gRPC calls (h2c, prior knowledge) as the
    /// HTTPS listener does instead of redirecting them: a gRPC client follows
    /// no redirect. Off by default; what it serves in plain text, it serves to
    /// anyone who can reach the port.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub redirect_serves_grpc: bool,
}

/// A certificate served for some server names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SniCertificate {
    /// The names (`api.example.com`), matched exactly, case-insensitively.
    pub names: Vec<String>,
    /// Its chain, PEM.
    pub cert_file: std::path::PathBuf,
    /// Its key, PEM.
    pub key_file: std::path::PathBuf,
}

impl TlsConfig {
    /// HTTPS on `listen` with the certificate chain and key in these files,
    /// every other setting at its default.
    pub fn new(
        listen: impl Into<String>,
        cert_file: impl Into<std::path::PathBuf>,
        key_file: impl Into<std::path::PathBuf>,
    ) -> Self {
        Self {
            listen: listen.into(),
            cert_file: cert_file.into(),
            key_file: key_file.into(),
            handshake_timeout_ms: default_handshake_timeout_ms(),
            max_handshakes: default_max_handshakes(),
            reload_interval_ms: default_reload_interval_ms(),
            sni: Vec::new(),
            hsts_max_age_secs: None,
            redirect_listen: None,
            redirect_serves_grpc: false,
        }
    }
}

fn default_handshake_timeout_ms() -> u64 {
    3_000
}

fn default_max_handshakes() -> usize {
    1024
}

fn default_reload_interval_ms() -> u64 {
    2_000
}

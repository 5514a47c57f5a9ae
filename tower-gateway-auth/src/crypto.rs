//! Which cryptography signs and verifies tokens, chosen by this crate's features.
//!
//! `jsonwebtoken` picks its backend from its own features and panics on the
//! first token when more than one is enabled anywhere in the dependency graph
//! (or none). This crate never leaves that to chance: before the first key is
//! used it installs the backend its features name — `aws-lc-rs` (the default)
//! or `rust-crypto` (pure Rust), `aws-lc-rs` when both are on — as the process
//! default, unless something else installed one first.

#[cfg(not(any(feature = "aws-lc-rs", feature = "rust-crypto")))]
compile_error!("tower-gateway-auth needs a crypto backend: enable the `aws-lc-rs` (default) or `rust-crypto` feature");

use jsonwebtoken::crypto::CryptoProvider;

/// The backend this crate's features chose.
#[cfg(feature = "aws-lc-rs")]
fn chosen() -> &'static CryptoProvider {
    &jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER
}

/// The backend this crate's features chose.
#[cfg(all(feature = "rust-crypto", not(feature = "aws-lc-rs")))]
fn chosen() -> &'static CryptoProvider {
    &jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER
}

/// Installs this crate's backend as `jsonwebtoken`'s process default, once;
/// if another was installed first, that one stays.
///
/// The crate calls this itself before it makes or uses a key. Call it yourself
/// only to sign or verify with `jsonwebtoken` directly before any key of this
/// crate exists, in a build where several backends are enabled.
pub fn install_default_crypto() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        // Err means one is installed already: whichever it is, no token panics.
        let _ = chosen().install_default();
    });
}

//! Credential files, read and parsed in one place for tapio-server, the bridge and the
//! scraping collectors: PEM files for TLS and bearer token files. Every error names the
//! file and what it was meant to hold.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why a TLS file or setting cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file cannot be read.
    #[error("cannot read {what} {}: {source}", path.display())]
    Read {
        /// What the file was meant to hold ("CA", "client certificate", ...).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not PEM, or holds nothing of the kind asked for.
    #[error("{what} {} is not PEM (no -----BEGIN line)", path.display())]
    NotPem {
        /// What the file was meant to hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// A PEM block is malformed, or the file has none of the kind asked for.
    #[error("{what} {}: {reason}", path.display())]
    Parse {
        /// What the file was meant to hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The certificate and the key do not go together, or rustls refused them.
    #[error("certificate {} and key {}: {source}", cert.display(), key.display())]
    Identity {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// Why.
        #[source]
        source: rustls::Error,
    },
    /// rustls refused the settings.
    #[error("{0}")]
    Config(#[source] rustls::Error),
}

/// Result of TLS file handling.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The crypto this crate's TLS uses everywhere.
#[must_use]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM file, naming it in the error.
pub fn read_pem(path: &Path, what: &'static str) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|source| Error::Read {
        what,
        path: path.to_owned(),
        source,
    })?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(Error::NotPem {
            what,
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

/// The certificates in a PEM file; at least one.
pub fn certificates(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>> {
    let parse = |reason: String| Error::Parse {
        what,
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&read_pem(path, what)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| parse(e.to_string()))?;
    if certs.is_empty() {
        return Err(parse("holds no CERTIFICATE block".into()));
    }
    Ok(certs)
}

/// The private key in a PEM file.
pub fn private_key(path: &Path, what: &'static str) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(&read_pem(path, what)?).map_err(|e| Error::Parse {
        what,
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// A root store of the certificates in a PEM file.
pub fn roots(path: &Path, what: &'static str) -> Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(path, what)? {
        roots.add(cert).map_err(|e| Error::Parse {
            what,
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// The system's trusted roots.
#[must_use]
pub fn native_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    roots
}

/// A client identity (certificate chain and key) checked to go together.
pub fn client_identity(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let chain = certificates(cert, "client certificate")?;
    let private = private_key(key, "client key")?;
    // rustls checks that the key belongs to the certificate when it takes them.
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(Error::Config)?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_client_auth_cert(chain.clone(), private.clone_key())
        .map_err(|source| Error::Identity {
            cert: cert.to_owned(),
            key: key.to_owned(),
            source,
        })?;
    Ok((chain, private))
}

/// A bearer token file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("token file {}: {reason}", path.display())]
pub struct TokenError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub reason: String,
}

/// Reads a token file: its content without surrounding white space, never empty.
pub fn read_token(path: &Path) -> std::result::Result<String, TokenError> {
    let text = std::fs::read_to_string(path).map_err(|e| TokenError {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let token = text.trim().to_owned();
    if token.is_empty() {
        return Err(TokenError {
            path: path.to_owned(),
            reason: "is empty".into(),
        });
    }
    Ok(token)
}

/// An error with every source below it, `outer: inner: innermost`: transport errors say
/// only "transport error" until their sources are shown.
#[must_use]
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let inner_text = inner.to_string();
        if !text.contains(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        source = inner.source();
    }
    text
}

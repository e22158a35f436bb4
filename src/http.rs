//! A small HTTP(S) GET client for the collectors that scrape endpoints (kubelet, etcd):
//! hyper with rustls, a CA file or the system roots, optional client certificate, optional
//! bearer token, and an opt-in that skips server verification (kind clusters).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

/// Why a client could not be made or a request failed; each names the URL or the file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A CA, certificate or key file cannot be used.
    #[error(transparent)]
    Tls(#[from] crate::tls::Error),
    /// rustls refused the settings.
    #[error("TLS settings: {0}")]
    Rustls(#[source] rustls::Error),
    /// The URL does not make a request.
    #[error("{url}: {source}")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: hyper::http::Error,
    },
    /// Connecting, TLS or the request failed (the message carries every cause).
    #[error("{url}: {}", crate::tls::error_chain(.source))]
    Request {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// The body could not be read.
    #[error("{url}: reading the body: {source}")]
    Body {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: hyper::Error,
    },
    /// No answer in time.
    #[error("{url}: no answer within {after:?}")]
    Timeout {
        /// The URL.
        url: String,
        /// The timeout.
        after: Duration,
    },
}

/// How to reach an endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tls {
    /// CA bundle (PEM) to verify the server with; unset: the system roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM), with `key_file`, for mutual TLS.
    pub cert_file: Option<PathBuf>,
    /// Client key (PEM).
    pub key_file: Option<PathBuf>,
    /// Accept any server certificate (a kind cluster's kubelet): no verification at all.
    pub insecure_skip_verify: bool,
}

/// A reusable client.
#[derive(Clone, Debug)]
pub struct HttpClient {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>,
    token: Option<String>,
    timeout: Duration,
}

/// A response: status and the whole body.
#[derive(Debug)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Body bytes.
    pub body: Bytes,
}

impl HttpClient {
    /// A client with `tls` settings, sending `token` as a bearer token, giving up on a
    /// request after `timeout`.
    ///
    /// # Errors
    /// A file that cannot be read or parsed, named with the reason.
    pub fn new(tls: &Tls, token: Option<String>, timeout: Duration) -> Result<Self, Error> {
        let provider = crate::tls::provider();
        let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(Error::Rustls)?;
        let builder = if tls.insecure_skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnything(provider)))
        } else {
            let roots = match &tls.ca_file {
                Some(path) => crate::tls::roots(path, "CA")?,
                None => crate::tls::native_roots(),
            };
            builder.with_root_certificates(roots)
        };
        let config = match (&tls.cert_file, &tls.key_file) {
            (Some(cert), Some(key)) => {
                let (certs, key) = crate::tls::client_identity(cert, key)?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(Error::Rustls)?
            }
            _ => builder.with_no_client_auth(),
        };
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            token,
            timeout,
        })
    }

    /// GETs `url`.
    ///
    /// # Errors
    /// A bad URL, a connection or TLS failure, an unreadable body, or the timeout.
    pub async fn get(&self, url: &str) -> Result<Response, Error> {
        let mut request = hyper::Request::get(url);
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request.body(Empty::new()).map_err(|source| Error::Url {
            url: url.to_owned(),
            source,
        })?;
        let work = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|source| Error::Request {
                    url: url.to_owned(),
                    source,
                })?;
            let status = response.status().as_u16();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|source| Error::Body {
                    url: url.to_owned(),
                    source,
                })?
                .to_bytes();
            Ok(Response { status, body })
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| Error::Timeout {
                url: url.to_owned(),
                after: self.timeout,
            })?
    }
}

/// The verifier behind `insecure_skip_verify`: accepts every certificate, and checks
/// handshake signatures only so the connection still works.
#[derive(Debug)]
struct AcceptAnything(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

//! TLS for the gateway link: roots from `HOOP_TLSCA` (PEM, `base64://`, `file://`) or the
//! system store, an optional server-name override, and the explicit `HOOP_TLS_SKIP_VERIFY`.
//!
//! We dial TLS ourselves (tokio-rustls) rather than through tonic's TLS feature, so that one
//! code path handles all three options, including skip-verify, which tonic does not offer.

use std::sync::Arc;

use base64::Engine as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// TLS settings for the gateway link.
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// Extra CA certificates (PEM), from `HOOP_TLSCA`. When absent, the system roots are used.
    pub ca_pem: Option<Vec<u8>>,
    /// Overrides the name checked against the certificate (`HOOP_TLSSERVERNAME`).
    pub server_name: Option<String>,
    /// Disables certificate verification (`HOOP_TLS_SKIP_VERIFY=true`). For testing only.
    pub skip_verify: bool,
}

/// Why TLS could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("HOOP_TLSCA: {0}")]
    Ca(String),
    #[error("HOOP_TLSSERVERNAME: {0:?} is not a valid DNS name or IP address")]
    ServerName(String),
    #[error("tls setup failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Decodes a `HOOP_TLSCA` value: PEM text, `base64://<pem>` or `file://<path>`.
pub fn load_ca(value: &str) -> Result<Vec<u8>, TlsError> {
    if let Some(b64) = value.strip_prefix("base64://") {
        base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|e| TlsError::Ca(format!("invalid base64: {e}")))
    } else if let Some(path) = value.strip_prefix("file://") {
        std::fs::read(path).map_err(|e| TlsError::Ca(format!("cannot read {path}: {e}")))
    } else {
        Ok(value.as_bytes().to_vec())
    }
}

pub(crate) fn client_config(opts: &TlsOptions) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let mut config = if opts.skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        match &opts.ca_pem {
            Some(pem) => {
                let mut reader = std::io::Cursor::new(pem);
                let mut added = 0usize;
                for cert in rustls_pemfile::certs(&mut reader) {
                    let cert = cert.map_err(|e| TlsError::Ca(format!("invalid PEM: {e}")))?;
                    roots
                        .add(cert)
                        .map_err(|e| TlsError::Ca(format!("unusable certificate: {e}")))?;
                    added += 1;
                }
                if added == 0 {
                    return Err(TlsError::Ca("no PEM certificate found".into()));
                }
            }
            None => {
                let native = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(native.certs);
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

pub(crate) fn server_name(opts: &TlsOptions, host: &str) -> Result<ServerName<'static>, TlsError> {
    let name = opts.server_name.as_deref().unwrap_or(host);
    ServerName::try_from(name.to_owned()).map_err(|_| TlsError::ServerName(name.to_owned()))
}

/// Accepts any certificate, but still checks handshake signatures so that the session keys
/// belong to whoever presented the certificate. Only used with `HOOP_TLS_SKIP_VERIFY=true`.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
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
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

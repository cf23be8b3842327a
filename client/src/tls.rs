//! TLS for the tablet: first contact (before pairing) and pinned (after).
//!
//! Before pairing the tablet cannot know the appliance's CA, so [`first_contact`] accepts any
//! certificate — still checking the handshake signature, so the peer holds its key — and
//! records the certificate it saw. Pairing then binds that certificate: the SPAKE2 proof covers
//! its fingerprint, and a password login is sent only after a person confirmed it. After
//! pairing, [`pinned`] trusts only the appliance CA and presents the device certificate.

use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// The certificate the appliance presented on first contact.
pub type SeenCert = Arc<Mutex<Option<Vec<u8>>>>;

#[derive(Debug)]
struct RecordingVerifier {
    provider: Arc<CryptoProvider>,
    seen: SeenCert,
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(end_entity.to_vec());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Why a client configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientTlsError {
    /// rustls refused the settings or keys.
    #[error("TLS setup failed")]
    Rustls(#[from] rustls::Error),
    /// The pinned CA could not be used.
    #[error("the pinned appliance CA is unusable")]
    Verifier(#[from] rustls::client::VerifierBuilderError),
    /// QUIC refused the TLS settings.
    #[error("QUIC refused the TLS configuration")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn finish(mut tls: rustls::ClientConfig) -> Result<quinn::ClientConfig, ClientTlsError> {
    tls.alpn_protocols = vec![periphery_protocol::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    // An appliance that does not answer is reported after 10 s, not quinn's default 30 s.
    transport.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(
        10_000,
    ))));
    transport.keep_alive_interval(Some(std::time::Duration::from_secs(4)));
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

/// A configuration for an unpaired tablet: any appliance certificate, recorded in `seen`.
pub fn first_contact(seen: SeenCert) -> Result<quinn::ClientConfig, ClientTlsError> {
    let provider = provider();
    let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(RecordingVerifier { provider, seen }))
        .with_no_client_auth();
    finish(tls)
}

/// A configuration for a paired tablet: the appliance must chain to `ca_der`; the tablet
/// presents its device certificate.
pub fn pinned(
    ca_der: &[u8],
    cert_der: &[u8],
    key_der: &[u8],
) -> Result<quinn::ClientConfig, ClientTlsError> {
    let provider = provider();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(ca_der.to_vec()))?;
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()?;
    let key = PrivateKeyDer::try_from(key_der.to_vec())
        .map_err(|e| rustls::Error::General(format!("the device key is unreadable: {e}")))?;
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(vec![CertificateDer::from(cert_der.to_vec())], key)?;
    finish(tls)
}

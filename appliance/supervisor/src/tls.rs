//! TLS for the QUIC endpoint: the server configuration and the device certificate check.
//!
//! Client certificates are optional at the handshake — an unpaired tablet must be able to
//! connect to pair — but a certificate that is presented must chain to the appliance CA
//! *and* belong to a device that is paired and not revoked ([`DeviceAllowList`]). A revoked
//! device is therefore refused during the handshake itself, before any request runs.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};

use periphery_protocol::pairing::fingerprint;

use crate::identity::ApplianceIdentity;

/// Whether a certificate fingerprint may connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceStanding {
    /// Paired and not revoked.
    Allowed,
    /// Revoked.
    Revoked,
}

/// The fingerprints of paired devices' certificates, shared between the store's writers and
/// the handshake. Kept in memory so the handshake never waits on the disk.
#[derive(Debug, Default)]
pub struct DeviceAllowList(RwLock<HashMap<String, DeviceStanding>>);

impl DeviceAllowList {
    /// Sets a fingerprint's standing.
    pub fn set(&self, fp: &str, standing: DeviceStanding) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fp.to_owned(), standing);
    }

    /// A fingerprint's standing, `None` if unknown.
    pub fn get(&self, fp: &str) -> Option<DeviceStanding> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(fp)
            .copied()
    }
}

#[derive(Debug)]
struct DeviceVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    devices: Arc<DeviceAllowList>,
}

impl ClientCertVerifier for DeviceVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let fp = fingerprint(end_entity);
        match self.devices.get(&fp) {
            Some(DeviceStanding::Allowed) => Ok(ClientCertVerified::assertion()),
            Some(DeviceStanding::Revoked) => {
                tracing::warn!(fingerprint = %fp, "refused a revoked device at the handshake");
                Err(rustls::Error::InvalidCertificate(CertificateError::Revoked))
            }
            None => {
                tracing::warn!(fingerprint = %fp, "refused an unknown device certificate");
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::UnknownIssuer,
                ))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// rustls refused the keys or settings.
    #[error("TLS setup failed")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("client certificate verifier setup failed")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// QUIC refused the TLS configuration.
    #[error("QUIC refused the TLS configuration")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
}

/// The QUIC server configuration: TLS 1.3, ALPN `periphery/1`, optional device certificates.
pub fn server_config(
    identity: &ApplianceIdentity,
    devices: Arc<DeviceAllowList>,
    provider: Arc<CryptoProvider>,
) -> Result<quinn::ServerConfig, TlsSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(identity.ca_der().to_vec()))?;
    let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()?;
    let verifier = Arc::new(DeviceVerifier { inner, devices });
    let (chain, key) = identity.server_chain_and_key();
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    tls.alpn_protocols = vec![periphery_protocol::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(std::time::Duration::from_secs(5)));
    transport.max_idle_timeout(Some(
        std::time::Duration::from_secs(30)
            .try_into()
            .unwrap_or_else(|_| unreachable!("30 s is a valid idle timeout")),
    ));
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

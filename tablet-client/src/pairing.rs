//! Pairing a tablet: by one-time code (SPAKE2) or by password.
//!
//! Both start with a first-contact connection that records the appliance certificate, make a
//! new device key and a certificate request, and end with [`Credentials`] to store. The code
//! path proves knowledge of the code in both directions, bound to the certificate seen (see
//! [`periphery_protocol::pairing`]); the password path relies on a person having confirmed
//! the fingerprint before the password is sent.

use std::net::SocketAddr;

use rcgen::{CertificateParams, KeyPair};

use periphery_protocol::pairing::{fingerprint, PairingCode, PakeState};
use periphery_protocol::{PairedDevice, Request, Response};

use crate::home::{Credentials, Pairing};
use crate::session::{Session, SessionError};
use crate::tls::ClientTlsError;

/// Why pairing failed.
#[derive(Debug, thiserror::Error)]
pub enum PairError {
    /// The TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] ClientTlsError),
    /// The conversation failed or the appliance refused.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// A key or request could not be made.
    #[error("cannot make the device key")]
    Key(#[from] rcgen::Error),
    /// The appliance's proof of the code did not verify: not the appliance the code came from.
    #[error("the appliance could not prove it knows the code: this is not the appliance that issued it (or someone is in the middle); nothing was stored")]
    ServerProof,
    /// The appliance answered something else.
    #[error("unexpected answer from the appliance: {0}")]
    Unexpected(String),
}

/// A first-contact connection and the certificate the appliance presented.
pub struct FirstContact {
    /// The session.
    pub session: Session,
    /// The appliance certificate (DER).
    pub server_cert: Vec<u8>,
}

impl FirstContact {
    /// Connects without credentials.
    pub async fn connect(addr: SocketAddr) -> Result<Self, PairError> {
        let software = concat!("periphery-tablet ", env!("CARGO_PKG_VERSION"));
        let (session, server_cert) = Session::first_contact(addr, software).await?;
        Ok(Self {
            session,
            server_cert,
        })
    }

    /// The appliance certificate's fingerprint, for a person to compare with the console.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.server_cert)
    }

    fn credentials(&self, address: &str, key: &KeyPair, p: PairedDevice) -> Credentials {
        Credentials {
            pairing: Pairing {
                address: address.to_owned(),
                appliance: self.session.welcome.appliance.clone(),
                fingerprint: self.fingerprint(),
                device_id: p.device_id,
                user: p.user,
            },
            key_der: key.serialize_der(),
            cert_der: p.cert_der,
            ca_der: p.ca_der,
        }
    }

    /// Pairs with a one-time code.
    pub async fn pair_with_code(
        mut self,
        address: &str,
        code: &PairingCode,
        device_name: &str,
    ) -> Result<Credentials, PairError> {
        let key = KeyPair::generate()?;
        let csr = CertificateParams::default().serialize_request(&key)?;
        let (state, msg) = PakeState::start_tablet(code);
        let reply = self
            .session
            .request(Request::PairCodeStart {
                slot: code.slot().to_owned(),
                spake: msg,
            })
            .await?;
        let Response::PairChallenge { spake } = reply else {
            return Err(PairError::Unexpected(format!("{reply:?}")));
        };
        let k = state.finish(&spake).map_err(|_| PairError::ServerProof)?;
        let reply = self
            .session
            .request(Request::PairCodeFinish {
                confirm: k.client_confirm(&self.server_cert, csr.der()),
                csr_der: csr.der().to_vec(),
                device_name: device_name.to_owned(),
            })
            .await?;
        let Response::Paired(p) = reply else {
            return Err(PairError::Unexpected(format!("{reply:?}")));
        };
        let proof = p.confirm.clone().unwrap_or_default();
        if !k.verify_server(&self.server_cert, &p.cert_der, &p.ca_der, &proof) {
            return Err(PairError::ServerProof);
        }
        let creds = self.credentials(address, &key, p);
        self.session.close().await;
        Ok(creds)
    }

    /// Pairs with a password. Call only after a person confirmed [`Self::fingerprint`].
    pub async fn pair_with_password(
        mut self,
        address: &str,
        user: &str,
        password: String,
        device_name: &str,
    ) -> Result<Credentials, PairError> {
        let key = KeyPair::generate()?;
        let csr = CertificateParams::default().serialize_request(&key)?;
        let reply = self
            .session
            .request(Request::PairPassword {
                user: user.to_owned(),
                password,
                csr_der: csr.der().to_vec(),
                device_name: device_name.to_owned(),
            })
            .await?;
        let Response::Paired(p) = reply else {
            return Err(PairError::Unexpected(format!("{reply:?}")));
        };
        let creds = self.credentials(address, &key, p);
        self.session.close().await;
        Ok(creds)
    }
}

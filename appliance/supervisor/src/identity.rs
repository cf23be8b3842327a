//! The appliance's identity: a CA and a server certificate, created on first start.
//!
//! Files live in `<state>/identity/`: `ca.key` and `server.key` (mode 0600), `ca.crt` and
//! `server.crt` (DER). The directory is written whole under a temporary name and renamed into
//! place, so a crash during the first start leaves either no identity or a complete one.
//! The CA signs device certificates at pairing; tablets pin the CA.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls_pki_types::{
    CertificateDer, CertificateSigningRequestDer, PrivateKeyDer, PrivatePkcs8KeyDer,
};

use periphery_protocol::pairing::fingerprint;

/// Why the identity could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A file could not be read or written.
    #[error("cannot access {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A key or certificate could not be generated or parsed.
    #[error("certificate operation failed on {what}")]
    Cert {
        /// Which object.
        what: &'static str,
        /// Why.
        #[source]
        source: rcgen::Error,
    },
    /// A private key file is readable by others.
    #[error("{path} has mode {mode:o}; private keys must be 0600 (fix with chmod 600)")]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
}

/// Why a device certificate could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The certificate request is not valid PKCS#10.
    #[error("the certificate request is invalid")]
    BadRequest(#[source] rcgen::Error),
    /// Signing failed.
    #[error("signing the device certificate failed")]
    Sign(#[source] rcgen::Error),
}

/// A certificate the appliance issued.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// DER.
    pub der: Vec<u8>,
    /// Serial number (hex).
    pub serial: String,
    /// Fingerprint.
    pub fingerprint: String,
}

/// The appliance's keys and certificates.
pub struct ApplianceIdentity {
    ca_cert: rcgen::Certificate,
    ca_key: KeyPair,
    ca_der: Vec<u8>,
    server_der: Vec<u8>,
    server_key_der: Vec<u8>,
    fingerprint: String,
}

impl std::fmt::Debug for ApplianceIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApplianceIdentity")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_owned(),
        source,
    }
}

fn cert(what: &'static str) -> impl FnOnce(rcgen::Error) -> IdentityError {
    move |source| IdentityError::Cert { what, source }
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), IdentityError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

fn read_key(path: &Path) -> Result<Vec<u8>, IdentityError> {
    let mode = fs::metadata(path).map_err(io(path))?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(IdentityError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    fs::read(path).map_err(io(path))
}

impl ApplianceIdentity {
    /// Loads the identity from `<state>/identity`, creating it on first start.
    pub fn load_or_create(state_dir: &Path, name: &str) -> Result<Self, IdentityError> {
        let dir = state_dir.join("identity");
        if !dir.exists() {
            Self::create(state_dir, &dir, name)?;
        }
        Self::load(&dir)
    }

    fn create(state_dir: &Path, dir: &Path, name: &str) -> Result<(), IdentityError> {
        let tmp = state_dir.join(format!("identity.tmp-{}", std::process::id()));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        }
        fs::create_dir(&tmp).map_err(io(&tmp))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o700)).map_err(io(&tmp))?;

        let ca_key = KeyPair::generate().map_err(cert("CA key"))?;
        let ca_cert = ca_params(name)
            .self_signed(&ca_key)
            .map_err(cert("CA certificate"))?;
        let server_key = KeyPair::generate().map_err(cert("server key"))?;
        let mut sp = CertificateParams::new(vec![
            periphery_protocol::SERVER_NAME.to_owned(),
            format!("{name}.local"),
            "localhost".to_owned(),
        ])
        .map_err(cert("server certificate"))?;
        sp.distinguished_name = dn(&format!("Periphery appliance {name}"));
        sp.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = sp
            .signed_by(&server_key, &ca_cert, &ca_key)
            .map_err(cert("server certificate"))?;

        write_file(&tmp.join("ca.key"), &ca_key.serialize_der(), 0o600)?;
        write_file(&tmp.join("ca.crt"), ca_cert.der(), 0o644)?;
        write_file(&tmp.join("server.key"), &server_key.serialize_der(), 0o600)?;
        write_file(&tmp.join("server.crt"), server_cert.der(), 0o644)?;
        fs::rename(&tmp, dir).map_err(io(dir))?;
        // Make the rename itself durable.
        fs::File::open(state_dir)
            .and_then(|d| d.sync_all())
            .map_err(io(state_dir))?;
        tracing::info!(dir = %dir.display(), "created appliance identity");
        Ok(())
    }

    fn load(dir: &Path) -> Result<Self, IdentityError> {
        let ca_key_der = read_key(&dir.join("ca.key"))?;
        let server_key_der = read_key(&dir.join("server.key"))?;
        let ca_der = fs::read(dir.join("ca.crt")).map_err(io(&dir.join("ca.crt")))?;
        let server_der = fs::read(dir.join("server.crt")).map_err(io(&dir.join("server.crt")))?;
        let ca_key = KeyPair::try_from(ca_key_der.as_slice()).map_err(cert("CA key"))?;
        // Rebuild a signing handle from the stored CA: same subject and key, so certificates it
        // signs chain to the stored `ca.crt`.
        let params = CertificateParams::from_ca_cert_der(&CertificateDer::from(ca_der.as_slice()))
            .map_err(cert("CA certificate"))?;
        let ca_cert = params
            .self_signed(&ca_key)
            .map_err(cert("CA certificate"))?;
        Ok(Self {
            fingerprint: fingerprint(&server_der),
            ca_cert,
            ca_key,
            ca_der,
            server_der,
            server_key_der,
        })
    }

    /// The server certificate's fingerprint.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The CA certificate (DER).
    pub fn ca_der(&self) -> &[u8] {
        &self.ca_der
    }

    /// The server certificate (DER).
    pub fn server_der(&self) -> &[u8] {
        &self.server_der
    }

    /// The server's certificate chain and key, for rustls.
    pub fn server_chain_and_key(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        (
            vec![
                CertificateDer::from(self.server_der.clone()),
                CertificateDer::from(self.ca_der.clone()),
            ],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key_der.clone())),
        )
    }

    /// Signs a device certificate for the key in `csr_der`. The request's own subject and
    /// extensions are ignored: the appliance decides what a device certificate says.
    pub fn issue_device_cert(
        &self,
        csr_der: &[u8],
        device_id: &str,
        serial: [u8; 16],
    ) -> Result<IssuedCert, IssueError> {
        let csr =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
                .map_err(IssueError::BadRequest)?;
        let mut serial = serial;
        serial[0] &= 0x7f; // positive
        serial[0] |= 0x01; // never zero-length after DER minimisation
        let mut p = CertificateParams::default();
        p.distinguished_name = dn(&format!("periphery device {device_id}"));
        p.serial_number = Some(SerialNumber::from_slice(&serial));
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let c = p
            .signed_by(&csr.public_key, &self.ca_cert, &self.ca_key)
            .map_err(IssueError::Sign)?;
        Ok(IssuedCert {
            fingerprint: fingerprint(c.der()),
            der: c.der().to_vec(),
            serial: serial.iter().map(|b| format!("{b:02x}")).collect(),
        })
    }
}

fn dn(cn: &str) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    d.push(DnType::OrganizationName, "Periphery");
    d.push(DnType::CommonName, cn);
    d
}

fn ca_params(name: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(&format!("Periphery appliance CA {name}"));
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_created_once_with_private_keys_and_reloads_identically() {
        let dir = tempfile::tempdir().unwrap();
        let a = ApplianceIdentity::load_or_create(dir.path(), "box").unwrap();
        let mode = fs::metadata(dir.path().join("identity/ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = ApplianceIdentity::load_or_create(dir.path(), "box").unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.ca_der(), b.ca_der());
    }

    #[test]
    fn a_world_readable_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        ApplianceIdentity::load_or_create(dir.path(), "box").unwrap();
        let key = dir.path().join("identity/server.key");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let e = ApplianceIdentity::load_or_create(dir.path(), "box").unwrap_err();
        assert!(
            matches!(e, IdentityError::Permissions { mode: 0o644, .. }),
            "{e}"
        );
    }

    #[test]
    fn device_certificates_are_issued_for_the_requested_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let id = ApplianceIdentity::load_or_create(dir.path(), "box").unwrap();
        let key = KeyPair::generate().unwrap();
        let csr = CertificateParams::default()
            .serialize_request(&key)
            .unwrap();
        let c = id.issue_device_cert(csr.der(), "d1", [0xff; 16]).unwrap();
        assert_eq!(c.serial.len(), 32);
        assert!(c.serial.starts_with("7f"));
        assert!(id.issue_device_cert(b"garbage", "d2", [1; 16]).is_err());
    }
}

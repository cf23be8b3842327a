//! Pairing: the one-time code format and the SPAKE2 exchange's transcript, shared by the
//! tablet (side A) and the appliance (side B).
//!
//! A code looks like `K7QM-4XZT`: eight characters of Crockford's base32 (no I, L, O, U).
//! The first group is the code's *slot*: it is sent in the clear so the appliance knows which
//! pending pairing is meant. The whole code is the SPAKE2 password, so it never crosses the
//! wire. After the exchange both sides hold the same key only if both knew the code.
//!
//! The exchange is bound to the TLS session it runs in: the tablet proves the code with an
//! HMAC over the fingerprint of the appliance certificate *it saw* and the hash of its
//! certificate request, so a machine in the middle (which must present its own certificate)
//! makes the proof fail; the appliance answers with an HMAC over the same fingerprint and the
//! certificates it issued, so the tablet knows the certificates came from the code's holder.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use spake2::{Ed25519Group, Identity, Password, Spake2};

/// The alphabet of codes: Crockford's base32.
pub const CODE_ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Characters in a code, without the dash.
pub const CODE_LEN: usize = 8;

/// Characters in a code's slot (the first group).
pub const SLOT_LEN: usize = 4;

const ID_TABLET: &[u8] = b"periphery/1 tablet";
const ID_APPLIANCE: &[u8] = b"periphery/1 appliance";
const LABEL_CLIENT: &[u8] = b"periphery/1 pair client confirm";
const LABEL_SERVER: &[u8] = b"periphery/1 pair server confirm";

/// A pairing code could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseCodeError {
    /// Not eight characters once dashes and spaces are removed.
    #[error("a pairing code has {CODE_LEN} characters (like K7QM-4XZT), this one has {0}")]
    Length(usize),
    /// A character outside the alphabet.
    #[error("'{0}' cannot appear in a pairing code")]
    Character(char),
}

/// A pairing code, normalised.
#[derive(Clone, PartialEq, Eq)]
pub struct PairingCode([u8; CODE_LEN]);

impl std::fmt::Debug for PairingCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PairingCode({}-****)", self.slot())
    }
}

impl std::fmt::Display for PairingCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.as_str();
        write!(f, "{}-{}", &s[..SLOT_LEN], &s[SLOT_LEN..])
    }
}

impl PairingCode {
    /// A fresh random code from `rng` (use the operating system's generator).
    pub fn generate(mut random_byte: impl FnMut() -> u8) -> Self {
        let mut c = [0u8; CODE_LEN];
        for ch in &mut c {
            *ch = CODE_ALPHABET[usize::from(random_byte() & 31)];
        }
        Self(c)
    }

    /// Reads a code as a person typed it: case, dashes and spaces do not matter, and the
    /// look-alikes O, I and L read as 0, 1 and 1.
    pub fn parse(s: &str) -> Result<Self, ParseCodeError> {
        let chars: Vec<char> = s
            .chars()
            .filter(|c| !matches!(c, '-' | ' '))
            .map(|c| match c.to_ascii_uppercase() {
                'O' => '0',
                'I' | 'L' => '1',
                c => c,
            })
            .collect();
        if chars.len() != CODE_LEN {
            return Err(ParseCodeError::Length(chars.len()));
        }
        let mut c = [0u8; CODE_LEN];
        for (slot, ch) in c.iter_mut().zip(chars) {
            if !ch.is_ascii() || !CODE_ALPHABET.contains(&(ch as u8)) {
                return Err(ParseCodeError::Character(ch));
            }
            *slot = ch as u8;
        }
        Ok(Self(c))
    }

    fn as_str(&self) -> &str {
        // Only alphabet bytes are ever stored.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The public first group.
    pub fn slot(&self) -> &str {
        &self.as_str()[..SLOT_LEN]
    }
}

/// SHA-256 of a certificate, as shown to people: `sha256:` and 64 lowercase hex digits.
pub fn fingerprint(cert_der: &[u8]) -> String {
    format!("sha256:{}", hex_lower(&Sha256::digest(cert_der)))
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `typed` names `fingerprint`: the whole fingerprint or at least its first 16 hex
/// digits, with or without the `sha256:` prefix and colons.
pub fn fingerprint_matches(fingerprint: &str, typed: &str) -> bool {
    let norm = |s: &str| {
        s.trim()
            .trim_start_matches("sha256:")
            .chars()
            .filter(|c| *c != ':' && *c != ' ')
            .collect::<String>()
            .to_ascii_lowercase()
    };
    let (full, typed) = (norm(fingerprint), norm(typed));
    typed.len() >= 16 && full.starts_with(&typed)
}

/// The SPAKE2 exchange failed: the peer's message is not a valid group element.
#[derive(Debug, thiserror::Error)]
#[error("invalid SPAKE2 message from the peer")]
pub struct BadSpakeMessage;

/// One side of a pairing exchange in progress.
pub struct PakeState(Spake2<Ed25519Group>);

impl std::fmt::Debug for PakeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PakeState")
    }
}

impl PakeState {
    /// The tablet's side: returns the state and the message to send.
    pub fn start_tablet(code: &PairingCode) -> (Self, Vec<u8>) {
        let (s, msg) = Spake2::<Ed25519Group>::start_a(
            &Password::new(code.0),
            &Identity::new(ID_TABLET),
            &Identity::new(ID_APPLIANCE),
        );
        (Self(s), msg)
    }

    /// The appliance's side.
    pub fn start_appliance(code: &PairingCode) -> (Self, Vec<u8>) {
        let (s, msg) = Spake2::<Ed25519Group>::start_b(
            &Password::new(code.0),
            &Identity::new(ID_TABLET),
            &Identity::new(ID_APPLIANCE),
        );
        (Self(s), msg)
    }

    /// Completes the exchange with the peer's message. The key matches the peer's only if
    /// both used the same code.
    pub fn finish(self, peer_msg: &[u8]) -> Result<SessionKey, BadSpakeMessage> {
        self.0
            .finish(peer_msg)
            .map(SessionKey)
            .map_err(|_| BadSpakeMessage)
    }
}

/// The key both sides derive; used only for the confirmation MACs.
pub struct SessionKey(Vec<u8>);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(..)")
    }
}

impl SessionKey {
    fn mac(&self, label: &[u8], parts: &[&[u8]]) -> Hmac<Sha256> {
        // HMAC accepts keys of any length.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(label);
        for p in parts {
            mac.update(&(p.len() as u64).to_be_bytes());
            mac.update(p);
        }
        mac
    }

    /// The tablet's proof: over the appliance certificate it saw and its request.
    pub fn client_confirm(&self, server_cert_der: &[u8], csr_der: &[u8]) -> Vec<u8> {
        let parts = [
            &Sha256::digest(server_cert_der)[..],
            &Sha256::digest(csr_der)[..],
        ];
        self.mac(LABEL_CLIENT, &parts)
            .finalize()
            .into_bytes()
            .to_vec()
    }

    /// Checks the tablet's proof in constant time.
    pub fn verify_client(&self, server_cert_der: &[u8], csr_der: &[u8], tag: &[u8]) -> bool {
        let parts = [
            &Sha256::digest(server_cert_der)[..],
            &Sha256::digest(csr_der)[..],
        ];
        self.mac(LABEL_CLIENT, &parts).verify_slice(tag).is_ok()
    }

    /// The appliance's proof: over its certificate and the certificates it issued.
    pub fn server_confirm(
        &self,
        server_cert_der: &[u8],
        cert_der: &[u8],
        ca_der: &[u8],
    ) -> Vec<u8> {
        let parts = [
            &Sha256::digest(server_cert_der)[..],
            &Sha256::digest(cert_der)[..],
            &Sha256::digest(ca_der)[..],
        ];
        self.mac(LABEL_SERVER, &parts)
            .finalize()
            .into_bytes()
            .to_vec()
    }

    /// Checks the appliance's proof in constant time.
    pub fn verify_server(
        &self,
        server_cert_der: &[u8],
        cert_der: &[u8],
        ca_der: &[u8],
        tag: &[u8],
    ) -> bool {
        let parts = [
            &Sha256::digest(server_cert_der)[..],
            &Sha256::digest(cert_der)[..],
            &Sha256::digest(ca_der)[..],
        ];
        self.mac(LABEL_SERVER, &parts).verify_slice(tag).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(s: &str) -> PairingCode {
        PairingCode::parse(s).unwrap()
    }

    #[test]
    fn codes_parse_as_people_type_them() {
        assert_eq!(code("k7qm-4xzt"), code("K7QM4XZT"));
        assert_eq!(code("O1IL 0000"), code("0111-0000"));
        assert_eq!(code("k7qm-4xzt").to_string(), "K7QM-4XZT");
        assert_eq!(code("k7qm-4xzt").slot(), "K7QM");
        assert_eq!(
            PairingCode::parse("K7QM-4XZ"),
            Err(ParseCodeError::Length(7))
        );
        assert_eq!(
            PairingCode::parse("K7QM-4XZU"),
            Err(ParseCodeError::Character('U'))
        );
    }

    #[test]
    fn generated_codes_use_the_alphabet_and_reparse() {
        let mut x = 7u8;
        let c = PairingCode::generate(|| {
            x = x.wrapping_mul(31).wrapping_add(11);
            x
        });
        assert_eq!(PairingCode::parse(&c.to_string()), Ok(c));
    }

    #[test]
    fn same_code_confirms_and_binds_the_certificate() {
        let (a, ma) = PakeState::start_tablet(&code("K7QM-4XZT"));
        let (b, mb) = PakeState::start_appliance(&code("K7QM-4XZT"));
        let ka = a.finish(&mb).unwrap();
        let kb = b.finish(&ma).unwrap();
        let tag = ka.client_confirm(b"server-cert", b"csr");
        assert!(kb.verify_client(b"server-cert", b"csr", &tag));
        // A different certificate (a machine in the middle) or request fails.
        assert!(!kb.verify_client(b"mitm-cert", b"csr", &tag));
        assert!(!kb.verify_client(b"server-cert", b"other", &tag));
        let stag = kb.server_confirm(b"server-cert", b"dev", b"ca");
        assert!(ka.verify_server(b"server-cert", b"dev", b"ca", &stag));
        assert!(!ka.verify_server(b"server-cert", b"dev2", b"ca", &stag));
    }

    #[test]
    fn different_codes_do_not_confirm() {
        let (a, ma) = PakeState::start_tablet(&code("K7QM-4XZT"));
        let (b, mb) = PakeState::start_appliance(&code("K7QM-4XZV"));
        let ka = a.finish(&mb).unwrap();
        let kb = b.finish(&ma).unwrap();
        let tag = ka.client_confirm(b"c", b"r");
        assert!(!kb.verify_client(b"c", b"r", &tag));
    }

    #[test]
    fn fingerprints_match_prefixes_of_16_or_more() {
        let fp = fingerprint(b"x");
        assert!(fingerprint_matches(&fp, &fp));
        assert!(fingerprint_matches(&fp, &fp["sha256:".len()..][..16]));
        assert!(!fingerprint_matches(&fp, &fp["sha256:".len()..][..15]));
        assert!(!fingerprint_matches(&fp, "sha256:0000000000000000"));
    }
}

//! X authorization: a random MIT-MAGIC-COOKIE-1 per workstation, so only its own processes (and
//! the supervisor) can connect to its display.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rand::RngCore;

/// The authorization protocol name.
pub const PROTOCOL: &str = "MIT-MAGIC-COOKIE-1";

/// A fresh random cookie.
pub fn cookie() -> [u8; 16] {
    let mut c = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut c);
    c
}

fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// The bytes of an Xauthority file granting `cookie` on any host and any display number (the
/// number is chosen by Xvfb at start, after the file must exist; libXau treats an empty
/// number as a wildcard).
pub fn file_bytes(cookie: &[u8; 16]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0xffffu16.to_be_bytes()); // FamilyWild: any address
    field(&mut out, b"");
    field(&mut out, b"");
    field(&mut out, PROTOCOL.as_bytes());
    field(&mut out, cookie);
    out
}

/// Writes an Xauthority file (mode 0600).
pub fn write(path: &Path, cookie: &[u8; 16]) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(&file_bytes(cookie))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_has_family_wild_any_display_and_the_cookie() {
        let b = file_bytes(&[7; 16]);
        assert_eq!(&b[..4], &[0xff, 0xff, 0, 0]);
        assert_eq!(&b[4..6], &[0, 0]);
        assert_eq!(&b[6..8], &[0, 18]);
        assert_eq!(&b[b.len() - 16..], &[7; 16]);
    }
}

//! Files by content, as the appliance stores them: their BLAKE3 hash, and the chunked
//! requests that upload them (the CLIs' inputs and the render node's outputs).

use std::path::Path;

use periphery_protocol::render::MAX_BLOB_CHUNK;
use periphery_protocol::Request;

/// The BLAKE3 hash of a file, as hex.
pub fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut h = blake3::Hasher::new();
    h.update_reader(std::fs::File::open(path)?)?;
    Ok(h.finalize().to_hex().to_string())
}

/// The chunked `BlobPut` requests that store `data` (hash `hash`) on the appliance.
pub fn blob_chunks<'a>(hash: &'a str, data: &'a [u8]) -> impl Iterator<Item = Request> + 'a {
    let n = data.len().div_ceil(MAX_BLOB_CHUNK).max(1);
    (0..n).map(move |i| {
        let (start, end) = (
            i * MAX_BLOB_CHUNK,
            ((i + 1) * MAX_BLOB_CHUNK).min(data.len()),
        );
        Request::BlobPut {
            hash: hash.to_owned(),
            offset: start as u64,
            data: data[start..end].to_vec(),
            last: i + 1 == n,
        }
    })
}

//! Secret material, handled one way everywhere in vmo: keys, tokens and kubeconfigs are written
//! readable by their owner only and synced before use; certificates are pinned by their SHA-256.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Writes `contents` to `path` with mode 0600 and syncs it.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents)?;
    f.sync_all()
}

/// Lower-case hex SHA-256 of a DER certificate: how agents publish, and the server pins, a
/// certificate.
pub fn cert_fingerprint(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

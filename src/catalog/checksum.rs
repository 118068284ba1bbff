//! sha256 of model files, with a stamp so that a verified file is not hashed on every start.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

/// The hex sha256 of a file.
pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Checks `path` against `expected` (hex sha256). A file verified before and unchanged
/// since (same size and modification time, recorded in `<file>.verified`) is trusted
/// without hashing it again.
pub fn verify_file(path: &Path, expected: &str) -> anyhow::Result<()> {
    let stamp_path = stamp_path(path);
    let identity = file_identity(path)?;
    let stamp = format!("{expected} {identity}");
    if std::fs::read_to_string(&stamp_path).is_ok_and(|s| s.trim() == stamp) {
        return Ok(());
    }
    let actual = sha256_file(path)?;
    if !actual.eq_ignore_ascii_case(expected) {
        bail!(
            "checksum mismatch for {}: expected sha256 {expected}, found {actual} (the file is \
             corrupt or not the one the registry names; delete it and fetch it again)",
            path.display()
        );
    }
    // A stamp that cannot be written only costs a re-hash next time.
    let _ = std::fs::write(&stamp_path, stamp);
    Ok(())
}

/// Records that `path` was just checked against `sha256` by other means (hashed while
/// it was assembled), so that [`verify_file`] trusts it until it changes.
pub fn record_verified(path: &Path, sha256: &str) -> anyhow::Result<()> {
    let stamp = format!("{sha256} {}", file_identity(path)?);
    std::fs::write(stamp_path(path), stamp)
        .with_context(|| format!("cannot write the stamp of {}", path.display()))
}

fn stamp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".verified");
    path.with_file_name(name)
}

fn file_identity(path: &Path) -> anyhow::Result<String> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    Ok(format!("{} {modified}", meta.len()))
}

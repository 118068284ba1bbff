//! The cluster key: 32 random bytes, written as hex, shared by every member. Everything
//! secret a node uses is derived from it with HKDF under distinct labels, so that the
//! datagram MAC key and the TLS CA key are unrelated to each other.

use std::path::Path;

use hkdf::Hkdf;
use sha2::{Digest, Sha256};

/// How many random bytes a key has.
pub const KEY_BYTES: usize = 32;

/// Why a key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the key file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// A secret that other users of the machine can read (or replace) is no secret.
    #[error(
        "the key file {path} is {how} by other users (mode {mode:04o}): `chmod 600 {path}`, and keep it so"
    )]
    Exposed {
        path: String,
        mode: u32,
        how: &'static str,
    },
    #[error(
        "the cluster key file {0} does not hold a key: expected {hex} hex digits (make one with `exo keygen --out cluster.key`)",
        hex = KEY_BYTES * 2
    )]
    Format(String),
}

/// The shared secret of a cluster.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey {
    bytes: [u8; KEY_BYTES],
}

impl ClusterKey {
    /// A fresh random key (the OS's generator).
    pub fn generate() -> Self {
        let mut bytes = [0u8; KEY_BYTES];
        rand::fill(&mut bytes);
        ClusterKey { bytes }
    }

    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> Self {
        ClusterKey { bytes }
    }

    /// The key as written to a key file: hex and a newline.
    pub fn to_file_text(&self) -> String {
        let mut text = hex(&self.bytes);
        text.push('\n');
        text
    }

    /// Parses a key file's text (hex; surrounding whitespace ignored). `origin` names it
    /// in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        if text.len() != KEY_BYTES * 2 {
            return Err(KeyError::Format(origin.to_string()));
        }
        let mut bytes = [0u8; KEY_BYTES];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2).unwrap_or("x"), 16)
                .map_err(|_| KeyError::Format(origin.to_string()))?;
        }
        Ok(ClusterKey { bytes })
    }

    /// Reads a key file; one that other users may read is refused ([`read_private_file`]).
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = read_private_file(path)?;
        Self::parse(&text, &path.display().to_string())
    }

    /// A secret derived for one purpose (`label` keeps purposes apart).
    pub fn derive(&self, label: &str) -> [u8; 32] {
        let hkdf = Hkdf::<Sha256>::new(Some(b"exo-rs cluster key v1"), &self.bytes);
        let mut out = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's limit: expand cannot fail.
        let _ = hkdf.expand(label.as_bytes(), &mut out);
        out
    }

    /// A short public name of the key (not secret: a hash of a derived value), so that
    /// operators can check in logs that every node has the same key.
    pub fn key_id(&self) -> String {
        let digest = Sha256::digest(self.derive("key id"));
        hex(&digest[..6])
    }
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret itself.
        write!(f, "ClusterKey({})", self.key_id())
    }
}

/// Reads a file that holds a secret (a cluster key, API or admin keys). One that users
/// other than its owner may read or write is refused with the `chmod` that fixes it: a
/// warning scrolls by, a node that will not start is noticed.
pub fn read_private_file(path: &Path) -> Result<String, KeyError> {
    let name = path.display().to_string();
    let read_error = |source| KeyError::Read {
        path: name.clone(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = file.metadata().map_err(read_error)?.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Exposed {
                path: name,
                mode,
                how: if mode & 0o044 != 0 {
                    "readable"
                } else {
                    "writable"
                },
            });
        }
    }
    std::io::read_to_string(file).map_err(read_error)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_survives_its_file_text() {
        let key = ClusterKey::generate();
        assert_eq!(ClusterKey::parse(&key.to_file_text(), "t").unwrap(), key);
        assert_ne!(ClusterKey::generate(), key);
    }

    #[test]
    fn bad_key_text_is_an_error_not_a_panic() {
        for text in [
            "",
            "zz",
            &"g".repeat(64),
            &"ab".repeat(31),
            "é".repeat(32).as_str(),
        ] {
            assert!(ClusterKey::parse(text, "t").is_err(), "{text:?}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_key_file_others_can_read_or_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, ClusterKey::generate().to_file_text()).unwrap();
        for (mode, ok) in [
            (0o600, true),
            (0o400, true),
            (0o640, false),
            (0o604, false),
            (0o620, false),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let outcome = ClusterKey::load(&path);
            assert_eq!(outcome.is_ok(), ok, "{mode:o}: {outcome:?}");
            if let Err(error) = outcome {
                assert!(error.to_string().contains("chmod 600"), "{error}");
            }
        }
    }

    #[test]
    fn derived_secrets_differ_by_label_and_key() {
        let key = ClusterKey::from_bytes([7; 32]);
        assert_ne!(key.derive("a"), key.derive("b"));
        assert_ne!(key.derive("a"), ClusterKey::from_bytes([8; 32]).derive("a"));
        assert!(!format!("{key:?}").contains("0707"));
    }
}

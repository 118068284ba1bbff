//! Who this node is: a node id persisted in its data directory, and a lock that keeps two
//! running nodes from sharing one directory (and so one id).

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// A node's data directory, held for as long as the node runs.
pub struct NodeIdentity {
    pub node_id: String,
    pub data_dir: PathBuf,
    /// The lock on `<data_dir>/node.lock`; released when dropped (or the process dies).
    _lock: File,
}

/// The default base for data directories: `$XDG_DATA_HOME/exo`, else `~/.local/share/exo`.
pub fn default_data_home() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(dir).join("exo");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local").join("share").join("exo"),
        None => std::env::temp_dir().join("exo"),
    }
}

impl NodeIdentity {
    /// Opens `data_dir` (creating it), locks it and reads or creates its node id. A
    /// directory in use by another running node is an error that says so.
    pub fn open(data_dir: &Path, node_id_override: Option<&str>) -> anyhow::Result<Self> {
        let lock = try_lock(data_dir)?.with_context(|| {
            format!(
                "data directory {} is in use by another running exo node; give each node its own --data-dir",
                data_dir.display()
            )
        })?;
        Self::finish(data_dir, lock, node_id_override)
    }

    /// Takes the first free slot `<home>/node-<k>` (k = 0, 1, ...): several nodes started
    /// on one host with default settings each get their own directory and id, and keep
    /// them across restarts.
    pub fn open_slot(home: &Path, node_id_override: Option<&str>) -> anyhow::Result<Self> {
        for slot in 0..64 {
            let dir = home.join(format!("node-{slot}"));
            if let Some(lock) = try_lock(&dir)? {
                return Self::finish(&dir, lock, node_id_override);
            }
        }
        bail!(
            "all 64 data directory slots under {} are in use",
            home.display()
        )
    }

    fn finish(data_dir: &Path, lock: File, node_id_override: Option<&str>) -> anyhow::Result<Self> {
        let id_path = data_dir.join("node-id");
        let node_id = match node_id_override {
            Some(id) => {
                validate_node_id(id)?;
                id.to_string()
            }
            None => match std::fs::read_to_string(&id_path) {
                Ok(text) if validate_node_id(text.trim()).is_ok() => text.trim().to_string(),
                _ => {
                    let id = uuid::Uuid::new_v4().to_string();
                    std::fs::write(&id_path, &id)
                        .with_context(|| format!("cannot write {}", id_path.display()))?;
                    id
                }
            },
        };
        Ok(NodeIdentity {
            node_id,
            data_dir: data_dir.to_path_buf(),
            _lock: lock,
        })
    }
}

/// Locks `<dir>/node.lock`; None if another process holds it.
fn try_lock(dir: &Path) -> anyhow::Result<Option<File>> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    let path = dir.join("node.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(error)) => {
            Err(error).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// Node ids travel in datagrams and plans: 1 to 128 characters, no spaces or controls.
pub fn validate_node_id(id: &str) -> anyhow::Result<()> {
    if id.is_empty() || id.len() > 128 || id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("invalid node id {id:?}: use 1 to 128 characters without spaces");
    }
    Ok(())
}

//! A partial copy of a remote file: a sparse local file with the remote file's layout
//! (same size; every fetched byte range written at its own offset, the header too; the
//! rest are holes that take no disk space), and a sidecar `<file>.parts.json` that says
//! which bytes are there and which tensors were checked.
//!
//! The engine opens the sparse file with its normal GGUF or safetensors reader (every
//! offset is where it expects) and reads only tensors the sidecar lists as verified; a
//! later plan with other layers adds to the same file. Data is fsynced before the sidecar
//! says it is there, and the sidecar is replaced atomically (write, fsync, rename), so an
//! interruption at any point leaves a state that resumes without refetching and never
//! claims bytes it does not have. A file without a sidecar is a whole file.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::range_set::RangeSet;

/// The sidecar's format version.
const SIDECAR_VERSION: u32 = 1;

/// How the tensors of a partial file were checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TensorCheck {
    /// Each tensor's sha256 matched a per-tensor manifest of the verified whole file.
    #[serde(rename = "sha256")]
    Sha256,
    /// No manifest exists for this file: each tensor has the size its header gives, and
    /// nothing more could be checked.
    #[serde(rename = "size-only")]
    SizeOnly,
}

/// What the sidecar records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sidecar {
    pub version: u32,
    /// Where the bytes come from (the resolve URL).
    pub source: String,
    /// The whole remote file's size.
    pub size: u64,
    /// The whole remote file's sha256, when known (registry or Hub).
    pub sha256: Option<String>,
    /// Bytes [0, header_len) are the header, present and parsed.
    pub header_len: Option<u64>,
    pub tensor_check: TensorCheck,
    /// Byte ranges written and fsynced.
    pub present: RangeSet,
    /// Tensors whose bytes are present and passed `tensor_check`.
    pub verified: BTreeSet<String>,
}

/// The sidecar of `path`.
pub fn sidecar_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".parts.json");
    path.with_file_name(name)
}

/// Reads the sidecar of `path`, if there is one. An unreadable sidecar is an error, not a
/// whole file: a partial file must never pass for a complete one.
pub fn read_sidecar(path: &Path) -> anyhow::Result<Option<Sidecar>> {
    let sidecar = sidecar_path(path);
    let text = match std::fs::read_to_string(&sidecar) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", sidecar.display())),
    };
    let state: Sidecar = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is damaged; delete it and {} to fetch again",
            sidecar.display(),
            path.display()
        )
    })?;
    if state.version != SIDECAR_VERSION || !state.present.is_well_formed() {
        bail!(
            "{} has an unknown version or malformed ranges; delete it and {} to fetch again",
            sidecar.display(),
            path.display()
        );
    }
    Ok(Some(state))
}

/// An open partial file and its sidecar.
pub struct SparseFile {
    path: PathBuf,
    file: File,
    pub state: Sidecar,
}

impl SparseFile {
    /// Opens the partial copy at `path` of a remote file of `size` bytes and `sha256`,
    /// creating it (full length, all holes) when there is none. A sidecar describing
    /// another file (another size or sha256: the remote file changed) is discarded with
    /// its bytes.
    pub fn open(
        path: &Path,
        source: &str,
        size: u64,
        sha256: Option<&str>,
        tensor_check: TensorCheck,
    ) -> anyhow::Result<Self> {
        let existing = if path.exists() {
            read_sidecar(path)?
        } else {
            None
        };
        let state = match existing {
            Some(state)
                if state.size == size
                    && (state.sha256.as_deref() == sha256 || sha256.is_none()) =>
            {
                let mut state = state;
                if state.sha256.is_none() {
                    state.sha256 = sha256.map(str::to_string);
                }
                state
            }
            other => {
                if other.is_some() {
                    tracing::warn!(
                        "{} belongs to another version of the file; starting it again",
                        path.display()
                    );
                }
                Sidecar {
                    version: SIDECAR_VERSION,
                    source: source.to_string(),
                    size,
                    sha256: sha256.map(str::to_string),
                    header_len: None,
                    tensor_check,
                    present: RangeSet::new(),
                    verified: BTreeSet::new(),
                }
            }
        };
        let fresh = state.present.total() == 0;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(fresh)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        if file.metadata()?.len() != size {
            file.set_len(size)
                .with_context(|| format!("cannot size {} to {size} bytes", path.display()))?;
        }
        let mut sparse = SparseFile {
            path: path.to_path_buf(),
            file,
            state,
        };
        // A check downgraded (no manifest this time) applies to what is verified next.
        if tensor_check == TensorCheck::SizeOnly {
            sparse.state.tensor_check = TensorCheck::SizeOnly;
        }
        sparse.save()?;
        Ok(sparse)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file itself, to read tensors back for their check.
    pub fn file_mut(&mut self) -> &mut File {
        &mut self.file
    }

    /// Writes `bytes` at `offset` (not yet recorded as present: see [`Self::record`]), and
    /// starts writing them to the disk at once, so that the sync in [`Self::record`] finds
    /// little left to wait for (the disk works while the next bytes arrive).
    pub fn write_at(&mut self, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
        self.file.seek(SeekFrom::Start(offset))?;
        self.file.write_all(bytes)?;
        start_writeback(&self.file, offset, bytes.len() as u64);
        Ok(())
    }

    /// Makes the bytes of `range` durable, then records them in the sidecar.
    pub fn record(&mut self, range: Range<u64>) -> anyhow::Result<()> {
        self.file
            .sync_data()
            .with_context(|| format!("cannot sync {}", self.path.display()))?;
        self.state.present.insert(range);
        self.save()
    }

    /// Drops `range` from what is present (its bytes failed a check).
    pub fn forget(&mut self, range: Range<u64>) -> anyhow::Result<()> {
        self.state.present.remove(range);
        self.save()
    }

    pub fn missing(&self, range: &Range<u64>) -> Vec<Range<u64>> {
        self.state.present.missing(range)
    }

    pub fn has(&self, range: &Range<u64>) -> bool {
        self.state.present.contains(range)
    }

    pub fn read_range(&mut self, range: Range<u64>) -> std::io::Result<Vec<u8>> {
        let mut bytes = vec![0u8; (range.end - range.start) as usize];
        self.file.seek(SeekFrom::Start(range.start))?;
        self.file.read_exact(&mut bytes)?;
        Ok(bytes)
    }

    /// sha256 of the bytes of `range` as they are on disk.
    pub fn sha256_of(&mut self, range: Range<u64>) -> std::io::Result<String> {
        hash_range(&mut self.file, range)
    }

    /// Writes the sidecar atomically.
    pub fn save(&self) -> anyhow::Result<()> {
        let sidecar = sidecar_path(&self.path);
        let text = serde_json::to_string_pretty(&self.state)?;
        write_atomically(&sidecar, text.as_bytes())
    }

    /// The file is complete and checked: drop the sidecar, leaving an ordinary whole file.
    pub fn into_whole(self) -> anyhow::Result<PathBuf> {
        self.file.sync_all()?;
        let sidecar = sidecar_path(&self.path);
        std::fs::remove_file(&sidecar)
            .with_context(|| format!("cannot remove {}", sidecar.display()))?;
        sync_parent(&self.path);
        Ok(self.path)
    }

    /// Deletes the file and its sidecar (bytes that failed the whole-file check).
    pub fn discard(self) {
        remove_partial(&self.path);
    }
}

/// Asks the kernel to start writing `len` bytes at `offset` of `file` to the disk, without
/// waiting (Linux's `sync_file_range`); a hint only, so failures and other systems are
/// ignored: durability still comes from the sync in [`SparseFile::record`].
fn start_writeback(file: &File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: the descriptor is open for the whole call; the call reads no memory.
        unsafe {
            libc::sync_file_range(
                file.as_raw_fd(),
                offset as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

/// Deletes a partial file and its sidecar, ignoring what is already gone.
pub fn remove_partial(path: &Path) {
    let _ = std::fs::remove_file(sidecar_path(path));
    let _ = std::fs::remove_file(path);
}

/// sha256 (hex) of `range` of `file`.
pub fn hash_range(file: &mut File, range: Range<u64>) -> std::io::Result<String> {
    file.seek(SeekFrom::Start(range.start))?;
    let mut hasher = Sha256::new();
    let mut left = range.end - range.start;
    let mut buffer = vec![0u8; 1 << 20];
    while left > 0 {
        let n = (left as usize).min(buffer.len());
        file.read_exact(&mut buffer[..n])?;
        hasher.update(&buffer[..n]);
        left -= n as u64;
    }
    Ok(hex(&hasher.finalize()))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `bytes` to `path` so that a reader sees the old or the new content, never a mix.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let temporary = path.with_file_name(name);
    let mut file = File::create(&temporary)
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
        .with_context(|| format!("cannot replace {}", path.display()))?;
    sync_parent(path);
    Ok(())
}

/// Makes a rename durable (best effort: not every platform can sync a directory).
fn sync_parent(path: &Path) {
    if let Some(parent) = path.parent()
        && let Ok(dir) = File::open(parent)
    {
        let _ = dir.sync_all();
    }
}

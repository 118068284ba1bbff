//! Per-tensor checksums: how a node that fetched only some tensors knows their bytes are
//! right.
//!
//! The Hub's ETag is the sha256 of the whole file: a node holding a third of the tensors
//! cannot check it. A manifest, computed once from a verified whole file
//! (`exo models manifest FILE`), lists the sha256 of the header and of every tensor, and
//! the whole file's sha256 and size it was computed from. The manifests of the verified
//! registry entries are compiled in from models/manifests/; one placed beside a weight
//! file as `<file>.manifest.json` is used too. Without a manifest a partial download can
//! only be checked for size, and its sidecar says so (`"tensor_check": "size-only"`).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::header::{HeaderLimits, read_local_header};
use super::layout::{FileLayout, TensorSpan};
use super::local_files::LocalFile;
use super::registry::WeightFormat;
use super::sparse_store::{TensorCheck, hash_range, hex};

const MANIFEST_VERSION: u32 = 1;

/// The manifests compiled into the binary, by name (the registry's `manifest` field).
const BUILTIN: &[(&str, &str)] = &[
    (
        "SmolLM2-135M-Instruct.Q4_1.gguf.json",
        include_str!("../../models/manifests/SmolLM2-135M-Instruct.Q4_1.gguf.json"),
    ),
    (
        "gemma-3-270m-q4_k_m.gguf.json",
        include_str!("../../models/manifests/gemma-3-270m-q4_k_m.gguf.json"),
    ),
    (
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf.json",
        include_str!("../../models/manifests/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf.json"),
    ),
];

/// A byte range of a file and its sha256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    pub start: u64,
    pub end: u64,
    pub sha256: String,
}

/// The checksums of one verified file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorManifest {
    pub version: u32,
    /// The file's name.
    pub file: String,
    pub format: WeightFormat,
    pub size: u64,
    /// sha256 of the whole file.
    pub sha256: String,
    pub header: Digest,
    pub tensors: BTreeMap<String, Digest>,
}

/// The outcome of checking one tensor's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TensorVerdict {
    Verified(TensorCheck),
    /// The bytes on disk are not the manifest's.
    Corrupt {
        expected: String,
        actual: String,
    },
}

impl TensorManifest {
    /// Whether this manifest describes a remote file of `size` bytes and `sha256` (when
    /// known).
    pub fn describes(&self, size: u64, sha256: Option<&str>) -> bool {
        self.size == size && sha256.is_none_or(|s| s.eq_ignore_ascii_case(&self.sha256))
    }

    /// Checks a header's bytes (they decide where every tensor is read from).
    pub fn check_header(&self, bytes: &[u8]) -> anyhow::Result<()> {
        let actual = sha256_hex(bytes);
        if bytes.len() as u64 != self.header.end - self.header.start || actual != self.header.sha256
        {
            bail!(
                "the header of {} does not match its manifest (sha256 {actual}, expected {}): \
                 the server sent other bytes than the file the manifest was made from",
                self.file,
                self.header.sha256
            );
        }
        Ok(())
    }

    /// Checks that every tensor of `layout` is where the manifest has it.
    pub fn check_layout(&self, layout: &FileLayout) -> anyhow::Result<()> {
        for tensor in &layout.tensors {
            match self.tensors.get(&tensor.name) {
                Some(d) if d.start == tensor.start && d.end == tensor.end => {}
                _ => bail!(
                    "tensor {} of {} is not where its manifest has it",
                    tensor.name,
                    self.file
                ),
            }
        }
        if layout.tensors.len() != self.tensors.len() {
            bail!(
                "{} has {} tensors, its manifest {}",
                self.file,
                layout.tensors.len(),
                self.tensors.len()
            );
        }
        Ok(())
    }

    /// JSON with one tensor per line (a diff then shows which tensors changed).
    pub fn to_json(&self) -> String {
        let line = |d: &Digest| serde_json::to_string(d).expect("a digest serializes");
        let mut out = String::from("{\n");
        out += &format!("  \"version\": {},\n", self.version);
        out += &format!(
            "  \"file\": {},\n",
            serde_json::to_string(&self.file).expect("str")
        );
        out += &format!(
            "  \"format\": {},\n",
            serde_json::to_string(&self.format).expect("format")
        );
        out += &format!("  \"size\": {},\n", self.size);
        out += &format!("  \"sha256\": \"{}\",\n", self.sha256);
        out += &format!("  \"header\": {},\n", line(&self.header));
        out += "  \"tensors\": {\n";
        let tensors: Vec<String> = self
            .tensors
            .iter()
            .map(|(name, d)| {
                format!(
                    "    {}: {}",
                    serde_json::to_string(name).expect("str"),
                    line(d)
                )
            })
            .collect();
        out += &tensors.join(",\n");
        out += "\n  }\n}\n";
        out
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let manifest: TensorManifest =
            serde_json::from_str(text).context("not a tensor manifest")?;
        if manifest.version != MANIFEST_VERSION {
            bail!("tensor manifest version {} is unknown", manifest.version);
        }
        Ok(manifest)
    }
}

/// Computes the manifest of a whole local file, in one pass over it.
pub fn build_manifest(path: &Path) -> anyhow::Result<TensorManifest> {
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let format = detect_format(&mut file)
        .with_context(|| format!("{} is neither GGUF nor safetensors", path.display()))?;
    let header = read_local_header(&mut file, format, HeaderLimits::default())
        .with_context(|| format!("reading the header of {}", path.display()))?;
    let size = header.layout.size;
    let mut spans: Vec<&TensorSpan> = header.layout.tensors.iter().collect();
    spans.sort_by_key(|t| t.start);
    if spans.windows(2).any(|w| w[0].end > w[1].start) {
        bail!("{} has overlapping tensors", path.display());
    }
    // One sequential read: every byte feeds the whole-file hash, and the bytes of each
    // tensor its own.
    let header_bytes = &header.bytes[..header.layout.header_len as usize];
    let mut whole = Sha256::new();
    whole.update(header_bytes);
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    std::io::Seek::seek(
        &mut reader,
        std::io::SeekFrom::Start(header.layout.header_len),
    )?;
    let mut position = header.layout.header_len;
    let mut tensors = BTreeMap::new();
    let mut feed = |reader: &mut std::io::BufReader<File>, n: u64, part: Option<&mut Sha256>| {
        let mut part = part;
        let mut left = n;
        let mut buffer = vec![0u8; 1 << 20];
        while left > 0 {
            let chunk = (left as usize).min(buffer.len());
            reader.read_exact(&mut buffer[..chunk])?;
            whole.update(&buffer[..chunk]);
            if let Some(part) = part.as_deref_mut() {
                part.update(&buffer[..chunk]);
            }
            left -= chunk as u64;
        }
        std::io::Result::Ok(())
    };
    for tensor in spans {
        feed(&mut reader, tensor.start - position, None)?;
        let mut hasher = Sha256::new();
        feed(&mut reader, tensor.end - tensor.start, Some(&mut hasher))?;
        position = tensor.end;
        tensors.insert(
            tensor.name.clone(),
            Digest {
                start: tensor.start,
                end: tensor.end,
                sha256: hex(&hasher.finalize()),
            },
        );
    }
    feed(&mut reader, size - position, None)?;
    Ok(TensorManifest {
        version: MANIFEST_VERSION,
        file: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        format,
        size,
        sha256: hex(&whole.finalize()),
        header: Digest {
            start: 0,
            end: header.layout.header_len,
            sha256: sha256_hex(header_bytes),
        },
        tensors,
    })
}

/// A manifest compiled into the binary.
pub fn builtin_manifest(name: &str) -> Option<TensorManifest> {
    BUILTIN
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, text)| TensorManifest::parse(text).expect("built-in manifests are tested"))
}

/// The names of the compiled-in manifests.
pub fn builtin_manifest_names() -> Vec<&'static str> {
    BUILTIN.iter().map(|(n, _)| *n).collect()
}

/// The manifest of a weight file: compiled in (named by the registry), or placed beside
/// it; only when it describes a file of `size` bytes (and `sha256`, when known). One beside
/// the file that does not parse, or one that describes another file, is not used, with a
/// warning that says so.
pub fn find_manifest(local: &LocalFile, size: u64, sha256: Option<&str>) -> Option<TensorManifest> {
    let candidate = local
        .remote
        .manifest
        .as_deref()
        .and_then(builtin_manifest)
        .or_else(|| {
            let text = std::fs::read_to_string(manifest_beside(&local.path)).ok()?;
            match TensorManifest::parse(&text) {
                Ok(manifest) => Some(manifest),
                Err(error) => {
                    tracing::warn!(
                        "ignoring {}: {error:#}",
                        manifest_beside(&local.path).display()
                    );
                    None
                }
            }
        })?;
    if candidate.describes(size, sha256) {
        Some(candidate)
    } else {
        tracing::warn!(
            "the tensor manifest for {} describes another file (size or sha256 differ); not \
             using it",
            local.remote.path
        );
        None
    }
}

/// Where a manifest for a local weight file may be placed by hand.
pub fn manifest_beside(weights: &Path) -> PathBuf {
    let mut name = weights.file_name().unwrap_or_default().to_os_string();
    name.push(".manifest.json");
    weights.with_file_name(name)
}

/// Checks one tensor's bytes in `file`: against its manifest digest when there is a
/// manifest (a manifest that places the tensor elsewhere is an error: it belongs to
/// another file), else only its size, which the caller has accounted for.
pub fn check_tensor(
    file: &mut File,
    tensor: &TensorSpan,
    manifest: Option<&TensorManifest>,
) -> anyhow::Result<TensorVerdict> {
    let Some(manifest) = manifest else {
        return Ok(TensorVerdict::Verified(TensorCheck::SizeOnly));
    };
    manifest.digest_of(tensor)?;
    let actual = hash_range(file, tensor.start..tensor.end)?;
    manifest.verdict(tensor, actual)
}

impl TensorManifest {
    /// The manifest's digest of `tensor`; an error when it places the tensor elsewhere
    /// or not at all.
    fn digest_of(&self, tensor: &TensorSpan) -> anyhow::Result<&Digest> {
        self.tensors
            .get(&tensor.name)
            .filter(|d| d.start == tensor.start && d.end == tensor.end)
            .with_context(|| {
                format!(
                    "the manifest of {} does not place tensor {} at bytes {}..{}",
                    self.file, tensor.name, tensor.start, tensor.end
                )
            })
    }

    /// The verdict on `tensor` whose bytes hash to `actual` (sha256, hex), however that
    /// hash was computed (read back from disk, or as the bytes arrived).
    pub fn verdict(&self, tensor: &TensorSpan, actual: String) -> anyhow::Result<TensorVerdict> {
        let digest = self.digest_of(tensor)?;
        Ok(if actual == digest.sha256 {
            TensorVerdict::Verified(TensorCheck::Sha256)
        } else {
            TensorVerdict::Corrupt {
                expected: digest.sha256.clone(),
                actual,
            }
        })
    }
}

fn detect_format(file: &mut File) -> anyhow::Result<WeightFormat> {
    let mut magic = [0u8; 4];
    file.read_exact(&mut magic)?;
    std::io::Seek::rewind(file)?;
    Ok(if &magic == b"GGUF" {
        WeightFormat::Gguf
    } else {
        WeightFormat::Safetensors
    })
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

//! Reading a model's tensors one by one, from GGUF or safetensors, counting the bytes.
//!
//! A shard reads only the tensors of its own layers (plus the embedding on the first
//! shard and the norm and head on the last), so a node of a three-node ring holds about a
//! third of the weights. Both formats allow that: GGUF and safetensors files index every
//! tensor by offset.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail};
use candle_core::DType;
use candle_core::quantized::{GgmlDType, gguf_file};
use half::{bf16, f16};

use super::config::{Architecture, ModelConfig};
use super::tensor_names::{GlobalTensor, LayerTensor, NameStyle, global_name, layer_name};

/// Bytes read from the model files, split between layer tensors and the rest.
#[derive(Debug, Default)]
pub struct LoadCounter {
    layer_bytes: AtomicU64,
    other_bytes: AtomicU64,
}

impl LoadCounter {
    pub fn layer_bytes(&self) -> u64 {
        self.layer_bytes.load(Ordering::Relaxed)
    }
    pub fn other_bytes(&self) -> u64 {
        self.other_bytes.load(Ordering::Relaxed)
    }
    pub fn add(&self, layer: bool, bytes: u64) {
        let counter = if layer {
            &self.layer_bytes
        } else {
            &self.other_bytes
        };
        counter.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// How a tensor's bytes are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// A GGUF tensor type (quantized blocks, or F32/F16/BF16).
    Ggml(GgmlDType),
    /// A safetensors dtype.
    Dense(DType),
}

/// A tensor as read from the file: its shape (candle's order: rows first) and bytes.
pub struct RawTensor {
    pub name: String,
    pub encoding: Encoding,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl RawTensor {
    pub fn elem_count(&self) -> usize {
        self.shape.iter().product()
    }

    /// Every value as f32 (norm weights, biases, small tables).
    pub fn to_f32(&self) -> anyhow::Result<Vec<f32>> {
        let values: Vec<f32> = match self.encoding {
            Encoding::Ggml(GgmlDType::F32) | Encoding::Dense(DType::F32) => self
                .bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Encoding::Ggml(GgmlDType::F16) | Encoding::Dense(DType::F16) => self
                .bytes
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Encoding::Ggml(GgmlDType::BF16) | Encoding::Dense(DType::BF16) => self
                .bytes
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Encoding::Ggml(dtype) => {
                let tensor = candle_core::quantized::ggml_file::qtensor_from_ggml(
                    dtype,
                    &self.bytes,
                    self.shape.clone(),
                    &candle_core::Device::Cpu,
                )?;
                tensor
                    .dequantize(&candle_core::Device::Cpu)?
                    .flatten_all()?
                    .to_vec1()?
            }
            Encoding::Dense(other) => bail!("tensor {} has unsupported dtype {other:?}", self.name),
        };
        if values.len() != self.elem_count() {
            bail!(
                "tensor {} has {} values for its shape {:?}",
                self.name,
                values.len(),
                self.shape
            );
        }
        if values.iter().any(|v| !v.is_finite()) {
            bail!("tensor {} holds NaN or infinite values", self.name);
        }
        Ok(values)
    }
}

/// Where a part of a tensor lies: its tensor's index entry, the part's absolute byte
/// ranges in that entry's file (ascending), and the part's shape.
struct Located<'a> {
    entry: &'a Entry,
    ranges: Vec<Range<u64>>,
    shape: Vec<usize>,
}

/// One tensor's place in a file.
struct Entry {
    file: usize,
    encoding: Encoding,
    shape: Vec<usize>,
    /// Absolute byte range in the file.
    start: u64,
    end: u64,
}

/// An opened model: its config, and its tensors to be read on demand.
pub struct WeightSource {
    path: PathBuf,
    style: NameStyle,
    files: Vec<PathBuf>,
    index: HashMap<String, Entry>,
    gguf: Option<gguf_file::Content>,
    config: ModelConfig,
    /// Open readers, one per file.
    readers: Mutex<HashMap<usize, BufReader<File>>>,
}

impl WeightSource {
    /// Opens a `.gguf` file, or a directory holding `config.json` and `*.safetensors`.
    /// Only headers are read here; every tensor's byte range is checked against the file
    /// size, so a truncated file is reported now and not halfway through a load.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let mut source = if path.is_dir() {
            Self::open_safetensors(path)?
        } else {
            Self::open_gguf(path)?
        };
        source.read_rope_factors()?;
        Ok(source)
    }

    fn open_gguf(path: &Path) -> anyhow::Result<Self> {
        let file = File::open(path)
            .with_context(|| format!("cannot open model file {}", path.display()))?;
        let file_len = file.metadata()?.len();
        // Our own header reader first: it checks every count, length, alignment and tensor
        // extent against the file before anything is allocated, and candle's reader panics
        // on some garbage (a `general.alignment` of 0 divides by zero; found by tests/fuzz).
        let mut file = file;
        crate::catalog::header::read_local_header(
            &mut file,
            crate::catalog::WeightFormat::Gguf,
            crate::catalog::header::HeaderLimits::default(),
        )
        .map_err(|error| {
            anyhow::anyhow!("{} is not a readable GGUF file: {error:#}", path.display())
        })?;
        file.seek(SeekFrom::Start(0))?;
        let mut reader = BufReader::new(file);
        let content = gguf_file::Content::read(&mut reader).map_err(|error| {
            anyhow::anyhow!("{} is not a readable GGUF file: {error}", path.display())
        })?;
        let mut index = HashMap::new();
        for (name, info) in &content.tensor_infos {
            let dtype = info.ggml_dtype;
            let elems = info.shape.elem_count();
            if elems % dtype.block_size() != 0 {
                bail!(
                    "tensor {name} of {} does not fill whole {dtype:?} blocks",
                    path.display()
                );
            }
            let size = (elems / dtype.block_size() * dtype.type_size()) as u64;
            let start = content.tensor_data_offset.saturating_add(info.offset);
            let end = start.saturating_add(size);
            if end > file_len {
                bail!(
                    "{} is truncated: tensor {name} ends at byte {end} but the file has {file_len} bytes",
                    path.display()
                );
            }
            index.insert(
                name.clone(),
                Entry {
                    file: 0,
                    encoding: Encoding::Ggml(dtype),
                    shape: info.shape.dims().to_vec(),
                    start,
                    end,
                },
            );
        }
        let config = ModelConfig::from_gguf(&content)
            .with_context(|| format!("reading the model config of {}", path.display()))?;
        let mut readers = HashMap::new();
        readers.insert(0, reader);
        Ok(WeightSource {
            path: path.to_path_buf(),
            style: NameStyle::Gguf,
            files: vec![path.to_path_buf()],
            index,
            gguf: Some(content),
            config,
            readers: Mutex::new(readers),
        })
    }

    fn open_safetensors(dir: &Path) -> anyhow::Result<Self> {
        let config_path = dir.join("config.json");
        let config_text = std::fs::read_to_string(&config_path)
            .with_context(|| format!("cannot read {}", config_path.display()))?;
        let config = ModelConfig::from_hf_json(&config_text)
            .with_context(|| format!("reading {}", config_path.display()))?;
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            bail!(
                "{} has a config.json but no .safetensors files",
                dir.display()
            );
        }
        let mut index = HashMap::new();
        for (file_index, file) in files.iter().enumerate() {
            for (name, entry) in read_safetensors_header(file, file_index)? {
                index.insert(name, entry);
            }
        }
        Ok(WeightSource {
            path: dir.to_path_buf(),
            style: NameStyle::HuggingFace,
            files,
            index,
            gguf: None,
            config,
            readers: Mutex::new(HashMap::new()),
        })
    }

    /// Llama 3 and Phi-3 GGUF files keep their rope frequency factors as tensors.
    fn read_rope_factors(&mut self) -> anyhow::Result<()> {
        let name = match self.config.architecture {
            Architecture::Llama => self.global_name(GlobalTensor::RopeFreqs),
            Architecture::Phi3 => self.global_name(GlobalTensor::RopeFactorsShort),
            _ => return Ok(()),
        };
        if self.has(name) {
            let factors = self.read(name, &LoadCounter::default(), false)?.to_f32()?;
            self.config.rope.freq_factors = factors;
            self.config.validate()?;
        }
        Ok(())
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF header, for the tokenizer and chat template (None for safetensors).
    pub fn gguf(&self) -> Option<&gguf_file::Content> {
        self.gguf.as_ref()
    }

    pub fn is_quantized(&self) -> bool {
        self.style == NameStyle::Gguf
    }

    pub fn layer_name(&self, layer: usize, tensor: LayerTensor) -> String {
        layer_name(self.style, self.config.architecture, layer, tensor)
    }

    pub fn global_name(&self, tensor: GlobalTensor) -> &'static str {
        global_name(self.style, tensor)
    }

    /// The bytes of every tensor (what the whole model takes loaded as it is stored).
    pub fn tensor_bytes(&self) -> u64 {
        self.index.values().map(|e| e.end - e.start).sum()
    }

    pub fn has(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// The shape of a tensor (rows first), if the file has it.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.index.get(name).map(|e| e.shape.as_slice())
    }

    /// Reads one tensor's bytes.
    pub fn read(
        &self,
        name: &str,
        counter: &LoadCounter,
        is_layer: bool,
    ) -> anyhow::Result<RawTensor> {
        self.read_part(name, &TensorPart::Whole, counter, is_layer)
    }

    /// The quantization block of a tensor, in values (1 for dense tensors); None when the
    /// file lacks it.
    pub fn block_len(&self, name: &str) -> Option<usize> {
        self.index.get(name).map(|e| match e.encoding {
            Encoding::Ggml(dtype) => dtype.block_size(),
            Encoding::Dense(_) => 1,
        })
    }

    /// The bytes of the file (its index among the source's files, and absolute ranges,
    /// ascending) that `part` of tensor `name` occupies: what a node holding that part
    /// must have, and all it reads.
    pub fn part_ranges(
        &self,
        name: &str,
        part: &TensorPart,
    ) -> anyhow::Result<(usize, Vec<Range<u64>>, Vec<usize>)> {
        let located = self.locate(name, part)?;
        Ok((located.entry.file, located.ranges, located.shape))
    }

    /// Where `part` of tensor `name` lies: the look-up that [`Self::part_ranges`] reports
    /// and [`Self::read_part`] reads.
    fn locate(&self, name: &str, part: &TensorPart) -> anyhow::Result<Located<'_>> {
        let entry = self
            .index
            .get(name)
            .with_context(|| format!("tensor {name} is missing from {}", self.path.display()))?;
        let (ranges, shape) = part.byte_ranges(name, entry)?;
        Ok(Located {
            entry,
            ranges,
            shape,
        })
    }

    /// Reads `part` of one tensor: only its bytes (see [`TensorPart`]), as a tensor of the
    /// part's shape.
    pub fn read_part(
        &self,
        name: &str,
        part: &TensorPart,
        counter: &LoadCounter,
        is_layer: bool,
    ) -> anyhow::Result<RawTensor> {
        let Located {
            entry,
            ranges,
            shape,
        } = self.locate(name, part)?;
        let size: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        let mut bytes = vec![0u8; size as usize];
        {
            let mut readers = self.readers.lock().unwrap_or_else(|p| p.into_inner());
            let reader = match readers.entry(entry.file) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    let path = &self.files[entry.file];
                    let file = File::open(path)
                        .with_context(|| format!("cannot open {}", path.display()))?;
                    v.insert(BufReader::new(file))
                }
            };
            let mut at = 0usize;
            for range in &ranges {
                let len = (range.end - range.start) as usize;
                // Seeking the buffered reader drops its buffer; the bytes are then read
                // straight from the file, so that only the part's bytes are read.
                reader.seek(SeekFrom::Start(range.start))?;
                reader
                    .get_mut()
                    .read_exact(&mut bytes[at..at + len])
                    .with_context(|| {
                        format!(
                            "cannot read tensor {name} from {}",
                            self.files[entry.file].display()
                        )
                    })?;
                at += len;
            }
        }
        counter.add(is_layer, bytes.len() as u64);
        Ok(RawTensor {
            name: name.to_string(),
            encoding: entry.encoding,
            shape,
            bytes,
        })
    }
}

/// Which part of a tensor to read. Tensors are rows first (`[rows, cols]`, or `[len]`
/// for vectors, whose rows are single values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TensorPart {
    Whole,
    /// These rows, in this order (an output split: whole rows of any format).
    Rows(Vec<Range<usize>>),
    /// These columns of every row (an input split: whole quantization blocks of each row).
    Cols(Range<usize>),
}

impl TensorPart {
    /// The absolute byte ranges of this part of `entry` (ascending, adjacent ones merged)
    /// and the part's shape.
    fn byte_ranges(
        &self,
        name: &str,
        entry: &Entry,
    ) -> anyhow::Result<(Vec<Range<u64>>, Vec<usize>)> {
        let (rows, cols) = match entry.shape.as_slice() {
            [len] => (*len, 1),
            [rows, cols] => (*rows, *cols),
            other => bail!("tensor {name} of shape {other:?} cannot be cut in parts"),
        };
        let (block, block_bytes) = match entry.encoding {
            Encoding::Ggml(dtype) => (dtype.block_size(), dtype.type_size()),
            Encoding::Dense(dtype) => (1, dtype.size_in_bytes()),
        };
        if entry.shape.len() == 1 && block != 1 {
            bail!("the quantized vector {name} cannot be cut in parts");
        }
        let row_bytes = (cols / block * block_bytes) as u64;
        let mut ranges: Vec<Range<u64>> = Vec::new();
        let mut push = |range: Range<u64>| match ranges.last_mut() {
            Some(last) if last.end == range.start => last.end = range.end,
            _ => ranges.push(range),
        };
        let shape = match self {
            TensorPart::Whole => {
                push(entry.start..entry.end);
                entry.shape.clone()
            }
            TensorPart::Rows(parts) => {
                let mut count = 0;
                for part in parts {
                    if part.start >= part.end || part.end > rows {
                        bail!(
                            "rows [{}, {}) are not a part of tensor {name}'s {rows}",
                            part.start,
                            part.end
                        );
                    }
                    push(
                        entry.start + part.start as u64 * row_bytes
                            ..entry.start + part.end as u64 * row_bytes,
                    );
                    count += part.end - part.start;
                }
                if entry.shape.len() == 1 {
                    vec![count]
                } else {
                    vec![count, cols]
                }
            }
            TensorPart::Cols(part) => {
                if entry.shape.len() != 2 {
                    bail!("tensor {name} is not a matrix: its columns cannot be cut");
                }
                if part.start >= part.end
                    || part.end > cols
                    || part.start % block != 0
                    || part.end % block != 0
                {
                    bail!(
                        "columns [{}, {}) of tensor {name} ({cols} wide) do not fall on its \
                         quantization blocks of {block} values",
                        part.start,
                        part.end
                    );
                }
                let (from, to) = (
                    (part.start / block * block_bytes) as u64,
                    (part.end / block * block_bytes) as u64,
                );
                for row in 0..rows as u64 {
                    let at = entry.start + row * row_bytes;
                    push(at + from..at + to);
                }
                vec![rows, part.end - part.start]
            }
        };
        Ok((ranges, shape))
    }
}

/// Reads the JSON header of a safetensors file: name → dtype, shape, byte range.
fn read_safetensors_header(path: &Path, file_index: usize) -> anyhow::Result<Vec<(String, Entry)>> {
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let file_len = file.metadata()?.len();
    let mut len_bytes = [0u8; 8];
    file.read_exact(&mut len_bytes)
        .with_context(|| format!("{} is too short to be safetensors", path.display()))?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > 100 << 20 || 8 + header_len > file_len {
        bail!(
            "{} has an impossible header length {header_len}",
            path.display()
        );
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header)?;
    let header: HashMap<String, serde_json::Value> = serde_json::from_slice(&header)
        .with_context(|| format!("{} has a malformed JSON header", path.display()))?;
    let data_start = 8 + header_len;
    let mut entries = Vec::new();
    for (name, value) in header {
        if name == "__metadata__" {
            continue;
        }
        let dtype = match value.get("dtype").and_then(|d| d.as_str()) {
            Some("F32") => DType::F32,
            Some("F16") => DType::F16,
            Some("BF16") => DType::BF16,
            other => bail!(
                "tensor {name} in {} has unsupported dtype {other:?} (supported: F32, F16, BF16)",
                path.display()
            ),
        };
        let shape: Vec<usize> =
            serde_json::from_value(value.get("shape").cloned().unwrap_or_default())
                .with_context(|| format!("tensor {name} has a malformed shape"))?;
        let offsets: [u64; 2] =
            serde_json::from_value(value.get("data_offsets").cloned().unwrap_or_default())
                .with_context(|| format!("tensor {name} has malformed data_offsets"))?;
        let (start, end) = (data_start + offsets[0], data_start + offsets[1]);
        let expected = shape
            .iter()
            .try_fold(dtype.size_in_bytes() as u64, |acc, &d| {
                acc.checked_mul(d as u64)
            })
            .context("tensor shape overflows")?;
        if offsets[1] < offsets[0] || end - start != expected {
            bail!(
                "tensor {name} in {} has a byte range that does not fit its shape",
                path.display()
            );
        }
        if end > file_len {
            bail!(
                "{} is truncated: tensor {name} ends at byte {end} but the file has {file_len} bytes",
                path.display()
            );
        }
        entries.push((
            name,
            Entry {
                file: file_index,
                encoding: Encoding::Dense(dtype),
                shape,
                start,
                end,
            },
        ));
    }
    Ok(entries)
}

//! Reading a model's tensors one by one, from GGUF or safetensors, counting the bytes.
//!
//! A shard reads only the tensors of its own layers (plus the embedding on the first
//! shard and the norm and head on the last), so a node of a three-node ring holds about a
//! third of the weights. Both formats allow that: GGUF and safetensors files index every
//! tensor by offset.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail};
use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{DType, Device, Tensor};

use super::config::ModelConfig;
use super::matrix::{CpuMatmul, Matrix};

/// The tensors of one decoder layer, by role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerTensor {
    AttnNorm,
    Q,
    K,
    V,
    QBias,
    KBias,
    VBias,
    Output,
    FfnNorm,
    Gate,
    Up,
    Down,
}

/// The tensors outside the layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GlobalTensor {
    Embedding,
    FinalNorm,
    Head,
}

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
    fn add(&self, layer: bool, bytes: u64) {
        let counter = if layer {
            &self.layer_bytes
        } else {
            &self.other_bytes
        };
        counter.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// One tensor's place in a safetensors file.
struct SafetensorsEntry {
    file: usize,
    dtype: DType,
    shape: Vec<usize>,
    /// Absolute byte range in the file.
    start: u64,
    end: u64,
}

enum Format {
    Gguf {
        content: gguf_file::Content,
        reader: Mutex<BufReader<File>>,
    },
    Safetensors {
        files: Vec<PathBuf>,
        index: HashMap<String, SafetensorsEntry>,
    },
}

/// An opened model: its config, and its tensors to be read on demand.
pub struct WeightSource {
    path: PathBuf,
    format: Format,
    config: ModelConfig,
}

impl WeightSource {
    /// Opens a `.gguf` file, or a directory holding `config.json` and `*.safetensors`.
    /// Only headers are read here; every tensor's byte range is checked against the file
    /// size, so a truncated file is reported now and not halfway through a load.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        if path.is_dir() {
            Self::open_safetensors(path)
        } else {
            Self::open_gguf(path)
        }
    }

    fn open_gguf(path: &Path) -> anyhow::Result<Self> {
        let file = File::open(path)
            .with_context(|| format!("cannot open model file {}", path.display()))?;
        let file_len = file.metadata()?.len();
        let mut reader = BufReader::new(file);
        let content = gguf_file::Content::read(&mut reader).map_err(|error| {
            anyhow::anyhow!("{} is not a readable GGUF file: {error}", path.display())
        })?;
        for (name, info) in &content.tensor_infos {
            let size = gguf_tensor_bytes(info);
            let end = content.tensor_data_offset + info.offset + size;
            if end > file_len {
                bail!(
                    "{} is truncated: tensor {name} ends at byte {end} but the file has {file_len} bytes",
                    path.display()
                );
            }
        }
        let config = ModelConfig::from_gguf(&content)
            .with_context(|| format!("reading the model config of {}", path.display()))?;
        Ok(WeightSource {
            path: path.to_path_buf(),
            format: Format::Gguf {
                content,
                reader: Mutex::new(reader),
            },
            config,
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
            format: Format::Safetensors { files, index },
            config,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF header, for the tokenizer and chat template (None for safetensors).
    pub fn gguf(&self) -> Option<&gguf_file::Content> {
        match &self.format {
            Format::Gguf { content, .. } => Some(content),
            Format::Safetensors { .. } => None,
        }
    }

    pub fn is_quantized(&self) -> bool {
        matches!(self.format, Format::Gguf { .. })
    }

    /// The file name of a tensor in this format.
    pub fn layer_name(&self, layer: usize, tensor: LayerTensor) -> String {
        use LayerTensor::*;
        match &self.format {
            Format::Gguf { .. } => {
                let suffix = match tensor {
                    AttnNorm => "attn_norm.weight",
                    Q => "attn_q.weight",
                    K => "attn_k.weight",
                    V => "attn_v.weight",
                    QBias => "attn_q.bias",
                    KBias => "attn_k.bias",
                    VBias => "attn_v.bias",
                    Output => "attn_output.weight",
                    FfnNorm => "ffn_norm.weight",
                    Gate => "ffn_gate.weight",
                    Up => "ffn_up.weight",
                    Down => "ffn_down.weight",
                };
                format!("blk.{layer}.{suffix}")
            }
            Format::Safetensors { .. } => {
                let suffix = match tensor {
                    AttnNorm => "input_layernorm.weight",
                    Q => "self_attn.q_proj.weight",
                    K => "self_attn.k_proj.weight",
                    V => "self_attn.v_proj.weight",
                    QBias => "self_attn.q_proj.bias",
                    KBias => "self_attn.k_proj.bias",
                    VBias => "self_attn.v_proj.bias",
                    Output => "self_attn.o_proj.weight",
                    FfnNorm => "post_attention_layernorm.weight",
                    Gate => "mlp.gate_proj.weight",
                    Up => "mlp.up_proj.weight",
                    Down => "mlp.down_proj.weight",
                };
                format!("model.layers.{layer}.{suffix}")
            }
        }
    }

    pub fn global_name(&self, tensor: GlobalTensor) -> &'static str {
        match (&self.format, tensor) {
            (Format::Gguf { .. }, GlobalTensor::Embedding) => "token_embd.weight",
            (Format::Gguf { .. }, GlobalTensor::FinalNorm) => "output_norm.weight",
            (Format::Gguf { .. }, GlobalTensor::Head) => "output.weight",
            (Format::Safetensors { .. }, GlobalTensor::Embedding) => "model.embed_tokens.weight",
            (Format::Safetensors { .. }, GlobalTensor::FinalNorm) => "model.norm.weight",
            (Format::Safetensors { .. }, GlobalTensor::Head) => "lm_head.weight",
        }
    }

    pub fn has(&self, name: &str) -> bool {
        match &self.format {
            Format::Gguf { content, .. } => content.tensor_infos.contains_key(name),
            Format::Safetensors { index, .. } => index.contains_key(name),
        }
    }

    /// A weight matrix for `x @ Wᵀ`: kept quantized when the file is quantized, otherwise
    /// a dense tensor in `dtype`.
    #[allow(clippy::too_many_arguments)]
    pub fn matrix(
        &self,
        name: &str,
        device: &Device,
        dtype: DType,
        kernels: CpuMatmul,
        counter: &LoadCounter,
        is_layer: bool,
    ) -> anyhow::Result<Matrix> {
        match &self.format {
            Format::Gguf { .. } => {
                let tensor = self.read_gguf(name, device, counter, is_layer)?;
                Matrix::from_qtensor(tensor, device, kernels)
                    .with_context(|| format!("preparing tensor {name}"))
            }
            Format::Safetensors { .. } => {
                let tensor = self.read_dense(name, device, dtype, counter, is_layer)?;
                Ok(Matrix::dense(tensor))
            }
        }
    }

    /// A dense tensor (norm weights, biases) in `dtype`, dequantized if need be.
    pub fn dense(
        &self,
        name: &str,
        device: &Device,
        dtype: DType,
        counter: &LoadCounter,
        is_layer: bool,
    ) -> anyhow::Result<Tensor> {
        match &self.format {
            Format::Gguf { .. } => {
                let tensor = self.read_gguf(name, device, counter, is_layer)?;
                Ok(tensor.dequantize(device)?.to_dtype(dtype)?)
            }
            Format::Safetensors { .. } => self.read_dense(name, device, dtype, counter, is_layer),
        }
    }

    fn read_gguf(
        &self,
        name: &str,
        device: &Device,
        counter: &LoadCounter,
        is_layer: bool,
    ) -> anyhow::Result<QTensor> {
        let Format::Gguf { content, reader } = &self.format else {
            unreachable!("read_gguf is only called for GGUF sources")
        };
        let info = content
            .tensor_infos
            .get(name)
            .with_context(|| format!("tensor {name} is missing from {}", self.path.display()))?;
        let mut reader = reader.lock().unwrap_or_else(|p| p.into_inner());
        let tensor = info
            .read(&mut *reader, content.tensor_data_offset, device)
            .map_err(|error| anyhow::anyhow!("cannot read tensor {name}: {error}"))?;
        counter.add(is_layer, gguf_tensor_bytes(info));
        Ok(tensor)
    }

    fn read_dense(
        &self,
        name: &str,
        device: &Device,
        dtype: DType,
        counter: &LoadCounter,
        is_layer: bool,
    ) -> anyhow::Result<Tensor> {
        let Format::Safetensors { files, index } = &self.format else {
            unreachable!("read_dense is only called for safetensors sources")
        };
        let entry = index
            .get(name)
            .with_context(|| format!("tensor {name} is missing from {}", self.path.display()))?;
        let path = &files[entry.file];
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(entry.start))?;
        let mut bytes = vec![0u8; (entry.end - entry.start) as usize];
        file.read_exact(&mut bytes)
            .with_context(|| format!("cannot read tensor {name} from {}", path.display()))?;
        let tensor = Tensor::from_raw_buffer(&bytes, entry.dtype, &entry.shape, &Device::Cpu)
            .with_context(|| format!("tensor {name} does not match its declared shape"))?;
        counter.add(is_layer, bytes.len() as u64);
        Ok(tensor.to_dtype(dtype)?.to_device(device)?)
    }
}

/// Bytes a GGUF tensor occupies in the file.
fn gguf_tensor_bytes(info: &gguf_file::TensorInfo) -> u64 {
    let dtype: GgmlDType = info.ggml_dtype;
    (info.shape.elem_count() / dtype.block_size() * dtype.type_size()) as u64
}

/// Reads the JSON header of a safetensors file: name → dtype, shape, byte range.
fn read_safetensors_header(
    path: &Path,
    file_index: usize,
) -> anyhow::Result<Vec<(String, SafetensorsEntry)>> {
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
                "tensor {name} in {} has unsupported dtype {other:?}",
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
        let expected = shape.iter().product::<usize>() as u64 * dtype.size_in_bytes() as u64;
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
            SafetensorsEntry {
                file: file_index,
                dtype,
                shape,
                start,
                end,
            },
        ));
    }
    Ok(entries)
}

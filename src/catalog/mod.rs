//! The model catalog: which models exist (models/registry.json), where their files come
//! from (the Hugging Face Hub, or Python packages for the verified small models), where
//! fetched files live, and checking them.
//!
//! A node fetches only the tensors of its own layers: [`fetch_layers`] reads the file's
//! header with small range requests, fetches its tensors' byte ranges into a sparse local
//! copy with the remote file's layout ([`sparse_store`]), checks each tensor
//! ([`tensor_manifest`]), and resumes after an interruption; [`presence`] says what is
//! here without the network; [`DownloadProgress`] is what the node reports.
//!
//! Layout: [`registry`] (the registry file), [`memory`] (what a cluster needs),
//! [`hub_client`] (resolve URLs, probes, ranges), [`gguf_header`] and
//! [`safetensors_header`] (headers from the first bytes), [`header`] (growing reads),
//! [`layout`] (which tensors a layer range needs), [`range_set`], [`sparse_store`]
//! (partial files and their sidecars), [`range_download`] (chunks, resume, retries,
//! servers that ignore ranges), [`tensor_manifest`] (per-tensor checksums), [`progress`],
//! [`local_files`], [`presence`], [`fetch`] (it all together, one weight file at a time in
//! `weight_file`), [`checksum`] and [`store`]
//! (whole files and `--model`).

pub mod checksum;
pub mod fetch;
pub mod gguf_header;
pub mod header;
pub mod hub_client;
mod hub_reader;
pub mod layout;
pub mod local_files;
pub mod memory;
pub mod presence;
pub mod progress;
pub mod range_download;
pub mod range_set;
pub mod registry;
pub mod safetensors_header;
pub mod sparse_store;
pub mod store;
pub mod tensor_manifest;
mod weight_file;

pub use checksum::{sha256_file, verify_file};
pub use fetch::{Fetcher, Want, fetch_layers, fetch_whole};
pub use hub_client::{HubClient, HubConfig};
pub use hub_reader::FetchOptions;
pub use layout::{ModelLayout, TensorRange, tensor_ranges};
pub use memory::{KV_RESERVE_TOKENS, MemoryNeed};
pub use presence::{LayerSet, Presence, presence};
pub use progress::{Display, DownloadProgress, DownloadState, DownloadStatus};
pub use registry::{
    Catalog, HubSource, ModelEntry, ModelFile, PackagePart, PythonPackage, WeightFormat,
};
pub use sparse_store::TensorCheck;
pub use store::{
    ModelFormat, ResolvedModel, default_models_dir, resolve_model, resolve_node_model,
    resolve_shard,
};
pub use tensor_manifest::{TensorManifest, build_manifest, check_tensor};

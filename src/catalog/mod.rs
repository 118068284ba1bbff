//! The model catalog: which models exist (models/registry.json), where their files come
//! from (Hugging Face, or a Python package for the default model), where fetched files
//! live, and checking them against their sha256.

mod checksum;
mod hub;
mod registry;
mod store;

pub use checksum::{sha256_file, verify_file};
pub use hub::fetch_from_hub;
pub use registry::{Catalog, HubSource, ModelEntry, ModelFile, PythonPackage};
pub use store::{ModelFormat, ResolvedModel, default_models_dir, resolve_model};

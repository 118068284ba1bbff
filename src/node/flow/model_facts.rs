//! What plans need to know of the model, kept apart from the engine that told it: an
//! origin whose own engine failed still plans (without its own layers) from these.

use crate::engine::{LoadedModel, ModelMemory};

/// What plans need of the model (kept from the engine's opened model).
#[derive(Debug, Clone)]
pub(super) struct ModelFacts {
    pub(super) model_id: String,
    pub(super) n_layers: usize,
    pub(super) memory: ModelMemory,
    /// Why the model cannot be split between two members of a tensor-parallel group
    /// (None: it can).
    pub(super) tensor_split: Option<String>,
}

impl ModelFacts {
    pub(super) fn of(model: &LoadedModel) -> Self {
        ModelFacts {
            model_id: model.model_id().to_string(),
            n_layers: model.config().n_layers,
            memory: model.memory_need(),
            tensor_split: model
                .split_group(&[1.0, 1.0])
                .err()
                .map(|e| format!("{e:#}")),
        }
    }
}

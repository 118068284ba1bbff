//! exo: a distributed LLM inference node.
//!
//! # Layout
//! - [`resource`]: the lifecycle pattern (states, `Managed<R>`, registry, groups, monitor);
//!   knows nothing of models or networking.
pub mod resource;

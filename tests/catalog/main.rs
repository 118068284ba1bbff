//! The model catalog: the registry, and fetching models from a Hub — only the tensors of
//! a layer range, resumed, checked — against a fake Hub on loopback (no test reaches the
//! internet).

#[path = "../support/mod.rs"]
mod support;

mod cli;
mod fake_hub;
mod fixtures;
mod headers;
mod integrity;
mod layers;
mod quirks;
mod registry;
mod resume;

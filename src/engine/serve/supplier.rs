//! What the engine needs from wherever a model's files come from when they are not all on
//! this disk yet (a node whose weights come from its peers or the Hub: `crate::supply`
//! implements it). The engine asks for the header before it opens the model, and shows
//! the source's counters in its report; it knows nothing of peers or the Hub.

use futures::future::BoxFuture;

/// A source of a model's files.
/// (`Debug`: the engine's config shows which source it has.)
pub trait WeightSupplier: Send + Sync + std::fmt::Debug {
    /// Makes sure the model's header (config, tokenizer, tensor index) is on this disk.
    fn ensure_header(&self) -> BoxFuture<'_, anyhow::Result<()>>;

    /// The source's counters (bytes from peers, from the Hub, served), for the engine's
    /// report.
    fn info(&self) -> serde_json::Value;
}

//! How weights reach the nodes: a node that lacks the tensors of its planned layers gets
//! them from a peer that holds them (`FetchWeights`, streamed in checksummed chunks into
//! the same sparse store the Hub fetcher writes), else from the Hub — only those layers'
//! bytes either way — and serves what it holds to its peers.
//!
//! Layout: [`holdings`] (what a node holds, as it tells its peers), [`serve`] (answering a
//! peer's request), [`receive`] (fetching from a peer, checking every chunk and tensor),
//! [`arriving_hashes`] (tensors hashed as they arrive), [`supplier`] (the node's supply: which source, one transfer at a time, counters).

pub mod arriving_hashes;
pub mod holdings;
pub mod receive;
pub mod serve;
pub mod supplier;

pub use holdings::{holding_covers, local_holding, shareable};
pub use receive::{PeerSource, fetch_from_peer};
pub use supplier::{SupplyConfig, SupplyStats, WeightSupply};

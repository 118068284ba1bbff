//! Prometheus metrics, written by hand: lock-free histograms that the parts of a node keep
//! (peer links, engine batches, the API's token timings) and a writer of the text
//! exposition format (version 0.0.4) that `GET /metrics` fills from every part's own
//! counters. A leaf module: it knows nothing of what it measures.
//!
//! No metrics crate: the format is a few lines of text, the node keeps its counters where
//! they already live, and a scrape only reads atomics (64 peers answer in well under a
//! millisecond; docs/BENCHMARKS.md).

mod exposition;
mod histogram;

pub use exposition::{Exposition, Kind};
pub use histogram::{Histogram, LATENCY_BUCKETS, TOKEN_BUCKETS};

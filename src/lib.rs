//! exo: a distributed LLM inference node.
//!
//! # Layout
//! Every module, lowest layer first: a module uses only modules listed before it (checked
//! by `scripts/import-graph.py`, which the tests run; docs/DESIGN.md §5 draws the graph).
//! - [`resource`]: the lifecycle pattern (states, `Managed<R>`, registry, groups, monitor);
//!   knows nothing of models or networking.
//! - [`faults`]: faults on demand for tests and chaos runs (`--enable-fault-injection`).
//! - [`metrics`]: histograms and the Prometheus text format.
//! - [`listener`]: accepting connections: caps per server and per address, keepalive,
//!   the open-file limit; used by the API and gRPC servers.
//! - [`trust`]: the cluster key, sealed discovery datagrams, key-derived mutual TLS.
//! - [`catalog`]: known models, where their files come from, fetching, checksums.
//! - [`engine`]: the sharded inference engine, a resource and a leaf: text in and out
//!   (`engine::text`), the model and its backends (`engine::model`, `engine::cpu`),
//!   serving requests (`engine::serve`: KV caches, batching, sampling).
//! - [`topology`]: device capabilities and partitioning a model over the ring.
//! - [`proto`]: the node service's wire types and both directions of every conversion.
//! - [`server`]: the gRPC node service and the handler it serves.
//! - [`peer`]: a gRPC handle per peer.
//! - [`discovery`]: UDP and manual discovery, the peer table.
//! - [`supply`]: how weights reach a node: from peers that hold them, else the Hub.
//! - [`node`]: a node's identity and the request flow across the ring.
//! - [`api`]: the HTTP API (OpenAI-compatible, admin, metrics, web UI); uses `node`.
//! - [`app`]: the assembly of a whole node, above every other part.
//! - [`cli`]: the commands (`exo node`, `run`, `chat`, …) and the benchmarks
//!   (`cli::bench`).
pub mod api;
pub mod app;
pub mod catalog;
pub mod cli;
pub mod discovery;
pub mod engine;
pub mod faults;
pub mod listener;
pub mod metrics;
pub mod node;
pub mod peer;
pub mod proto;
pub mod resource;
pub mod server;
pub mod supply;
pub mod topology;
pub mod trust;

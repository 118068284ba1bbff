//! exo: a distributed LLM inference node.
//!
//! # Layout
//! - [`resource`]: the lifecycle pattern (states, `Managed<R>`, registry, groups, monitor);
//!   knows nothing of models or networking.
//! - [`catalog`]: known models, where their files come from, checksums.
//! - [`engine`]: the sharded inference engine on candle (a resource).
//! - [`listener`]: accepting connections: caps per server and per address, keepalive,
//!   the open-file limit; used by the API and gRPC servers.
//! - [`trust`]: the cluster key, sealed discovery datagrams, key-derived mutual TLS.
//! - [`supply`]: how weights reach a node: from peers that hold them, else the Hub.
//! - [`node`]: a node's identity and the request flow across the ring.
//! - [`api`]: the HTTP API (OpenAI-compatible, admin, metrics, web UI); uses `node`.
//! - [`app`]: the assembly of a whole node, above every other part.
pub mod api;
pub mod app;
pub mod catalog;
pub mod cli;
pub mod discovery;
pub mod engine;
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

//! The assembly of a node: the one place that knows every part — engine, gRPC server,
//! discovery, peer table, request flow, HTTP API, monitor — and wires them into one
//! resource group. It sits above all of them, so the parts point one way: `api` uses
//! `node` (the request flow), and nothing below `app` imports `api`.

mod config;
mod node;
mod parts;
mod policy;

pub use config::{DiscoveryMode, NodeConfig};
pub use node::{Node, members};

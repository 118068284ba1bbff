//! Networking and the node: discovery, peer handles, the gRPC service, and the request
//! flow across processes with the HTTP API.

#[path = "../support/mod.rs"]
mod support;

mod api_access;
mod bad_input;
mod batching;
mod bounds;
mod cli;
mod discovery;
mod e2e;
mod harness;
mod netns;
mod openai_client;
mod peers_file;
mod tensors;
mod trust;

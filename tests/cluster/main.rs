//! Networking and the node: discovery, peer handles, the gRPC service, and the request
//! flow across processes with the HTTP API.

#[path = "../support/mod.rs"]
mod support;

mod agent_clients;
mod anthropic_client;
mod api_access;
mod bad_input;
mod bad_peer;
mod batching;
mod bounds;
mod cli;
mod connections;
mod discovery;
mod e2e;
#[allow(dead_code)]
#[path = "../catalog/fake_hub.rs"]
mod fake_hub;
mod faults;
mod harness;
mod host_check;
mod hub_layers;
mod logprobs;
mod memory;
mod message_caps;
mod netns;
mod not_serving;
mod ollama_client;
mod openai_client;
mod peers_file;
mod prefix_cache;
mod responses_client;
mod secrets;
mod survival;
mod tensor_parallel;
mod tensors;
mod tools;
mod tracing;
mod trust;
mod web_ui;
mod weights;

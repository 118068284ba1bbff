//! Property-based fuzzing of every parser of outside input: discovery datagrams (open and
//! sealed), the node service's protobuf messages and tensors, partition plans, chat request
//! bodies, GGUF and safetensors headers (the catalog's readers and the engine's loading) and peers files.
//!
//! Each target feeds arbitrary bytes and structure-aware mutations of valid input (a valid
//! message with bytes flipped, cut, spliced or fields set to edge values) through the same
//! code a node runs, and asserts that it never panics and either parses or returns an error;
//! where there is an encoder, encode → decode must give back what went in.
//!
//! `cargo test --test fuzz` runs a short pass (`EXO_FUZZ_CASES`, default 256 cases per
//! target); `scripts/fuzz.sh [minutes]` runs the same targets for a time budget
//! (`EXO_FUZZ_SECONDS` per target) and reports the cases run. A failure prints the shrunk
//! input; keep it as a regression test next to its target, then fix the parser.

mod harness;
#[path = "../support/mod.rs"]
mod support;

mod chat;
mod datagram;
mod gguf;
mod peers_file;
mod plan;
mod safetensors;
mod wire;

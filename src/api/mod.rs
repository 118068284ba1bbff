//! The HTTP API of a node: OpenAI-compatible chat and text completions and Responses,
//! Anthropic's
//! Messages, Ollama's API, models, topology, health, and the admin endpoints over the
//! node's resources.

mod access;
mod admin;
mod anthropic;
mod chat;
mod chat_format;
mod completions;
mod config;
mod error;
mod events;
mod group_metrics;
mod info;
mod limit;
mod logprobs;
mod metrics;
mod ollama;
mod params;
mod respond;
mod responses;
mod routes;
mod server;
mod state;
mod timing;
mod tools;
mod ui;

pub use chat::{CheckedChat, check_chat_request};
pub use config::ApiConfig;
pub use error::ApiError;
pub use limit::RequestLimiter;
pub use routes::router;
pub use server::ApiServer;
pub use state::ApiState;
pub use timing::TokenTiming;

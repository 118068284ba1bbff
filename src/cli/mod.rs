//! The command line: `exo node | run | chat | generate | models | resources | keygen`, and
//! the benchmarks (`bench`, `bench-transfer`) in their own room, [`bench`].

mod bench;
mod chat;
mod generate;
mod keygen;
mod models;
mod node;
mod resources;
mod run;
mod shared;

use clap::{Parser, Subcommand};

pub use node::{NodeArgs, shutdown_signal};
pub use shared::ModelArgs;

/// A distributed LLM inference node: nodes find each other, split a model's layers among
/// themselves and answer chat requests together.
#[derive(Debug, Parser)]
#[command(name = "exo", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// How log lines are written to stderr: `text` for people, `json` (one object per
    /// line, with the spans a line is in, request ids included) for log collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// The shape of log lines (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node: find peers, share the model with them, serve the HTTP API.
    Node(node::NodeArgs),
    /// Start a node, let the cluster settle, answer one prompt, and stop.
    Run(run::RunArgs),
    /// Ask a running node one question through its API.
    Chat(chat::ChatArgs),
    /// Inspect or reset the resources of a running node.
    Resources(resources::ResourcesArgs),
    /// Generate text from a prompt on this machine (optionally as N chained in-process shards).
    Generate(generate::GenerateArgs),
    /// Measure prefill and decode tokens/s.
    Bench(bench::BenchArgs),
    /// Make a new cluster key (`exo keygen --out cluster.key`; give it to every node
    /// with --cluster-key).
    Keygen(keygen::KeygenArgs),
    /// List or fetch models.
    #[command(subcommand)]
    Models(models::ModelsCommand),
    /// Measure a peer-to-peer weight transfer against a plain TCP copy on loopback.
    BenchTransfer(bench::transfer::TransferBenchArgs),
}

impl Cli {
    /// Runs the chosen command.
    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Node(args) => node::run(args).await,
            Command::Run(args) => run::run(args).await,
            Command::Chat(args) => chat::run(args).await,
            Command::Resources(args) => resources::run(args).await,
            Command::Generate(args) => generate::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Models(command) => models::run(command).await,
            Command::Keygen(args) => keygen::run(args),
            Command::BenchTransfer(args) => bench::transfer::run(args).await,
        }
    }

    /// Environment settings a command wants unless the user set them (applied before any
    /// thread starts).
    ///
    /// A node spends most of its time waiting for its turn in the ring, while its peers
    /// compute, often on the same cores when a cluster shares a host. candle's CPU workers
    /// spin for ~1 ms after each burst of work before they sleep; a node shortens that, so
    /// that it does not take cycles from the peer whose turn it is.
    pub fn environment_defaults(&self) -> &'static [(&'static str, &'static str)] {
        match self.command {
            Command::Node(_) | Command::Run(_) => &[("CANDLE_BARRIER_POOL_SPIN_LIMIT", "2500")],
            _ => &[],
        }
    }

    /// The log level a command wants when RUST_LOG does not say: quiet for one-shot
    /// commands, informative for long-running ones.
    pub fn default_log_filter(&self) -> &'static str {
        match self.command {
            Command::Node(_) => "info",
            _ => "warn",
        }
    }
}

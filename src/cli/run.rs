//! `exo run`: start a node, let the cluster it finds settle, answer one prompt, stop.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;

use super::node::NodeArgs;
use crate::app::Node;
use crate::engine::{ChatMessage, SamplingParams};
use crate::node::{GenerateRequest, GenerationEvent, describe};

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    /// The user's message.
    #[arg(long)]
    pub prompt: String,
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Longest wait for the cluster to settle (seconds).
    #[arg(long, default_value_t = 10)]
    pub settle_timeout: u64,
}

/// The peer set is settled when nobody joined or left for this long.
const QUIET_PERIOD: Duration = Duration::from_millis(1500);

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    if args.prompt.trim().is_empty() {
        bail!("the prompt is empty");
    }
    super::node::prepare_fd_limit(&args.node);
    let node = Node::start(args.node.config()?).await?;
    let outcome = answer(&node, &args).await;
    node.shutdown().await?;
    outcome
}

/// Waits until the joined peers stop changing (or the timeout passes).
async fn settle(node: &Node, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut joined = node.peers.subscribe();
    loop {
        let quiet = tokio::time::sleep(QUIET_PERIOD);
        tokio::select! {
            changed = joined.changed() => if changed.is_err() { return },
            _ = quiet => {
                let pending = node.peers.peers().iter().any(|p| !p.is_joined());
                if !pending { return }
            }
            _ = tokio::time::sleep_until(deadline.into()) => return,
        }
        if Instant::now() >= deadline {
            return;
        }
    }
}

async fn answer(node: &Node, args: &RunArgs) -> anyhow::Result<()> {
    settle(node, Duration::from_secs(args.settle_timeout)).await;
    let model = node.engine.ensure_ready().await?.model()?;
    let prompt = model
        .tokenizer()
        .encode_chat(&[ChatMessage::new("user", &args.prompt)])?;
    let sampling = SamplingParams {
        temperature: args.temperature,
        seed: args.seed,
        ..SamplingParams::default()
    };
    let mut events = node
        .flow
        .generate(GenerateRequest::new(prompt, args.max_tokens, sampling));
    let mut stdout = std::io::stdout();
    while let Some(event) = events.recv().await {
        match event {
            GenerationEvent::Started { partition, .. } => {
                eprintln!("ring: {}", describe(&partition))
            }
            GenerationEvent::Replanned(replan) => eprintln!(
                "\n[lost {}: planned again over {} in {:.2}s]",
                replan.lost.join(", "),
                replan.ring,
                replan.seconds
            ),
            GenerationEvent::Text(text) => {
                stdout.write_all(text.as_bytes())?;
                stdout.flush()?;
            }
            GenerationEvent::Finished(summary) => {
                println!();
                eprintln!(
                    "prompt: {} tokens in {:.2}s | decode: {} tokens at {:.1} tokens/s | finish: {}",
                    summary.prompt_tokens,
                    summary.prefill_seconds,
                    summary.completion_tokens,
                    summary.decode_tok_s(),
                    summary.finish.as_str()
                );
                return Ok(());
            }
            GenerationEvent::Logprobs(_) => {}
            GenerationEvent::Failed(error) => bail!("generation failed: {error}"),
        }
    }
    bail!("the generation ended without a result")
}

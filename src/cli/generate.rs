//! `exo generate`: one prompt, answered on this machine.

use std::io::Write;

use anyhow::bail;
use clap::Args;

use super::shared::ModelArgs;
use crate::engine::serve::local::{LocalRequest, generate};
use crate::engine::{ChatMessage, SamplingParams};
use crate::resource::scoped;

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The user's message (wrapped in the model's chat template unless --raw).
    #[arg(long)]
    pub prompt: String,
    /// An optional system message.
    #[arg(long)]
    pub system: Option<String>,
    /// Feed the prompt as is, without the chat template.
    #[arg(long)]
    pub raw: bool,
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// 0 keeps every token.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop when the text contains this (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Run the model as N in-process shards chained in order (no network): the output
    /// must be the same as with one.
    #[arg(long, default_value_t = 1)]
    pub shards: usize,
    /// Also print the generated token ids (on stderr), to compare runs and devices.
    #[arg(long)]
    pub token_ids: bool,
}

pub async fn run(args: GenerateArgs) -> anyhow::Result<()> {
    if args.prompt.trim().is_empty() {
        bail!("the prompt is empty");
    }
    let sampling = SamplingParams {
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        seed: args.seed,
    };
    sampling.validate()?;
    let engine = args.model.engine(None, args.shards)?;
    scoped(&engine, |engine| async move {
        let model = engine.ensure_ready().await?.model()?;
        let tokenizer = model.tokenizer().clone();
        let prompt = if args.raw {
            // No chat template, but the BOS the model asks for (`add_bos_token`), as
            // llama.cpp and the API's text completions feed a plain prompt.
            tokenizer.encode_prompt(&args.prompt)?
        } else {
            let mut messages = Vec::new();
            if let Some(system) = &args.system {
                messages.push(ChatMessage::new("system", system));
            }
            messages.push(ChatMessage::new("user", &args.prompt));
            tokenizer.encode_chat(&messages)?
        };
        let ranges = model.even_ranges(args.shards)?;
        let request = LocalRequest {
            prompt,
            max_tokens: args.max_tokens,
            sampling,
            stop: args.stop.clone(),
            ignore_eos: false,
        };
        let device = model.loaded_shards_backend();
        let output = tokio::task::spawn_blocking(move || {
            let mut stdout = std::io::stdout();
            generate(&model, &ranges, &request, |text| {
                let _ = stdout.write_all(text.as_bytes());
                let _ = stdout.flush();
            })
        })
        .await??;
        println!();
        if args.token_ids {
            let ids: Vec<String> = output.tokens.iter().map(u32::to_string).collect();
            eprintln!("token ids: {}", ids.join(","));
        }
        let s = output.stats;
        eprintln!(
            "prompt: {} tokens at {:.1} tokens/s | decode: {} tokens at {:.1} tokens/s | finish: {} | device: {device} | shards: {}",
            s.prompt_tokens,
            s.prefill_tok_s(),
            s.generated_tokens,
            s.decode_tok_s(),
            output.finish.as_str(),
            args.shards,
        );
        Ok(())
    })
    .await
}

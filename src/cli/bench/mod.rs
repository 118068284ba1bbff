//! The benchmark commands. `exo bench`: prefill and decode tokens/s of the engine, after a
//! warm-up (here), what a batched decode step costs ([`batch`], `--batch N`), or many
//! users at once through a node's API ([`load`]);
//! `exo bench-transfer`: a peer weight transfer against a plain TCP copy ([`transfer`]).

pub mod batch;
pub mod load;
pub mod transfer;

use clap::Args;
use serde_json::json;

use super::shared::ModelArgs;
use crate::engine::SamplingParams;
use crate::engine::serve::local::{GenerationStats, LocalRequest, generate};
use crate::resource::scoped;
use batch::BatchCost;

/// Text the benchmark prompt is cut from (any text works; this one is plain English).
const BENCH_TEXT: &str = "The quick brown fox jumps over the lazy dog while the river runs \
    past the old mill, and the people of the valley gather to watch the evening sky turn \
    from gold to violet as the first stars appear above the hills.";

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 20)]
    pub prompt_tokens: usize,
    /// Tokens to decode per run.
    #[arg(long, default_value_t = 128)]
    pub tokens: usize,
    /// Measured runs (after one warm-up run); the median is reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Split the model into N in-process shards.
    #[arg(long, default_value_t = 1)]
    pub shards: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Many users at once: N concurrent streaming requests through a node's HTTP API
    /// (each answer exactly --tokens long; prompts of about --prompt-tokens words).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// With --concurrency: the server to load (an exo node, or any OpenAI-compatible
    /// server); without it the bench starts --nodes exo nodes on loopback.
    #[arg(long)]
    pub node: Option<String>,
    /// With --concurrency and no --node: how many nodes to start (a ring of them).
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// Pin started node i to CPU core i, with one compute thread each.
    #[arg(long)]
    pub pin: bool,
    /// With --node: the model name to ask for (default: the --model id).
    #[arg(long)]
    pub served_model: Option<String>,
    /// With --concurrency: the API key to send.
    #[arg(long, env = "EXO_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// With --concurrency: read the API key from this file (readable by its owner only).
    #[arg(long, env = "EXO_API_KEY_FILE")]
    pub api_key_file: Option<std::path::PathBuf>,
    /// Also time a decode step of N rows at once (N sequences in lock-step through the
    /// engine's batch path) against a step of one row, and report what the batch costs.
    #[arg(long)]
    pub batch: Option<usize>,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if let Some(concurrency) = args.concurrency {
        return tokio::task::spawn_blocking(move || load(args, concurrency)).await?;
    }
    anyhow::ensure!(args.prompt_tokens > 0, "--prompt-tokens must be at least 1");
    anyhow::ensure!(args.tokens > 1, "--tokens must be at least 2");
    anyhow::ensure!(args.runs > 0, "--runs must be at least 1");
    let engine = args.model.engine(None, args.shards)?;
    scoped(&engine, |engine| async move {
        let model = engine.ensure_ready().await?.model()?;
        let text_tokens = model.tokenizer().encode(BENCH_TEXT)?;
        let prompt: Vec<u32> = text_tokens.iter().cycle().take(args.prompt_tokens).copied().collect();
        // Other engines are fed these exact ids, for a like-for-like comparison.
        let prompt_ids = prompt.clone();
        let ranges = model.even_ranges(args.shards)?;
        let request = LocalRequest {
            prompt,
            max_tokens: args.tokens,
            sampling: SamplingParams::greedy(),
            stop: Vec::new(),
            ignore_eos: true,
        };
        let device = model.loaded_shards_backend();
        let runs = args.runs;
        let batch = args.batch;
        anyhow::ensure!(batch != Some(0), "--batch must be at least 1");
        anyhow::ensure!(
            batch.is_none() || args.shards == 1,
            "--batch runs the whole model in one shard"
        );
        let (stats, batch): (Vec<GenerationStats>, Option<BatchCost>) =
            tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
                // The warm-up pays for first-use costs (page faults, GPU kernel compilation).
                generate(&model, &ranges, &request, |_| {})?;
                let stats = (0..runs)
                    .map(|_| generate(&model, &ranges, &request, |_| {}).map(|o| o.stats))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let batch = batch
                    .map(|rows| batch::measure(&model, &request.prompt, rows, request.max_tokens))
                    .transpose()?;
                Ok((stats, batch))
            })
            .await??;
        let prefill = median(stats.iter().map(GenerationStats::prefill_tok_s).collect());
        let decode = median(stats.iter().map(GenerationStats::decode_tok_s).collect());
        if args.json {
            println!(
                "{}",
                json!({
                    "model": args.model.model,
                    "device": device,
                    "shards": args.shards,
                    "prompt_tokens": args.prompt_tokens,
                    "tokens": args.tokens,
                    "runs": args.runs,
                    "threads": candle_core::utils::get_num_threads(),
                    "prefill_tok_s": prefill,
                    "decode_tok_s": decode,
                    "prompt_ids": prompt_ids,
                    "batch": batch,
                })
            );
        } else {
            println!(
                "{} on {device} ({} threads, {} shard(s)): prefill {prefill:.1} tokens/s ({} tokens), decode {decode:.1} tokens/s ({} tokens), median of {} runs",
                args.model.model,
                candle_core::utils::get_num_threads(),
                args.shards,
                args.prompt_tokens,
                args.tokens,
                args.runs
            );
            if let Some(b) = batch {
                println!(
                    "decode step: one row {:.2} ms, {} rows {:.2} ms ({:.2}× one row; {:.1} tokens/s in all), median of {} steps",
                    b.one_row_ms, b.rows, b.batch_ms, b.batch_over_one, b.batch_tok_s, b.steps
                );
            }
        }
        Ok(())
    })
    .await
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// `exo bench --concurrency N`.
fn load(args: BenchArgs, concurrency: usize) -> anyhow::Result<()> {
    use load::{LoadSpec, run_load, start_ring};
    anyhow::ensure!(concurrency > 0, "--concurrency must be at least 1");
    anyhow::ensure!(args.tokens > 1, "--tokens must be at least 2");
    let spec = LoadSpec {
        concurrency,
        tokens: args.tokens,
        prompt_words: args.prompt_tokens,
        rounds: args.runs,
        model: args
            .served_model
            .clone()
            .unwrap_or_else(|| args.model.model.clone()),
        api_key: super::shared::client_key(args.api_key.as_deref(), args.api_key_file.as_deref())?,
    };
    let (report, target, model) = match &args.node {
        Some(url) => (
            run_load(url.trim_end_matches('/'), &spec)?,
            url.clone(),
            spec.model.clone(),
        ),
        None => {
            let mut model_args = vec![
                "--model".to_string(),
                args.model.model.clone(),
                "--device".into(),
                args.model.device.to_string(),
                "--cpu-matmul".into(),
                args.model.cpu_matmul.to_string(),
            ];
            if let Some(dir) = &args.model.models_dir {
                model_args.push("--models-dir".into());
                model_args.push(dir.display().to_string());
            }
            let ring = start_ring(args.nodes, args.pin, &model_args)?;
            // The nodes name the model as they resolved it (a file path becomes its id).
            let spec = match &args.served_model {
                Some(_) => spec,
                None => LoadSpec {
                    model: load::served_model(&ring.api)?,
                    ..spec
                },
            };
            let report = run_load(&ring.api, &spec)?;
            (
                report,
                format!(
                    "{} local node(s){}",
                    args.nodes,
                    if args.pin { ", pinned" } else { "" }
                ),
                spec.model,
            )
        }
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&json!({ "target": target, "model": model, "report": report }))?
        );
    } else {
        println!(
            "{} streams × {} tokens against {target}: aggregate {:.1} tokens/s, per stream {:.1} tokens/s, \
             time to first token p50 {:.3} s, p99 {:.3} s (median of {} rounds)",
            report.concurrency,
            report.tokens_per_stream,
            report.aggregate_tok_s,
            report.per_stream_decode_tok_s,
            report.ttft_p50_s,
            report.ttft_p99_s,
            args.runs
        );
    }
    Ok(())
}

//! candle-transformers' quantized llama, greedy, on token ids given on the command line.
//!
//! usage: candle-reference MODEL.gguf PROMPT_IDS(comma-separated) TOKENS [RUNS]
//! Prints the generated ids of the last run, then one JSON line with the median prefill
//! and decode tokens/s over RUNS runs (after one warm-up run).

use std::time::Instant;

use anyhow::Context;
use candle_core::quantized::gguf_file;
use candle_core::{D, Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(args.len() >= 4, "usage: candle-reference MODEL.gguf IDS TOKENS [RUNS]");
    let prompt: Vec<u32> = args[2].split(',').map(|t| t.trim().parse()).collect::<Result<_, _>>()?;
    let tokens: usize = args[3].parse()?;
    let runs: usize = args.get(4).map(|r| r.parse()).transpose()?.unwrap_or(3);
    let device = Device::Cpu;
    let mut file = std::fs::File::open(&args[1]).context("cannot open the model")?;
    let content = gguf_file::Content::read(&mut file)?;
    let mut model = ModelWeights::from_gguf(content, &mut file, &device)?;

    let mut prefill = Vec::new();
    let mut decode = Vec::new();
    let mut generated = Vec::new();
    for run in 0..=runs {
        generated.clear();
        let start = Instant::now();
        let input = Tensor::new(prompt.as_slice(), &device)?.unsqueeze(0)?;
        let logits = model.forward(&input, 0)?;
        let mut next = logits.squeeze(0)?.argmax(D::Minus1)?.to_scalar::<u32>()?;
        generated.push(next);
        let first = Instant::now();
        for i in 1..tokens {
            let input = Tensor::new(&[next], &device)?.unsqueeze(0)?;
            let logits = model.forward(&input, prompt.len() + i - 1)?;
            next = logits.squeeze(0)?.argmax(D::Minus1)?.to_scalar::<u32>()?;
            generated.push(next);
        }
        let done = Instant::now();
        if run > 0 {
            prefill.push(prompt.len() as f64 / (first - start).as_secs_f64());
            decode.push((tokens - 1) as f64 / (done - first).as_secs_f64());
        }
    }
    println!("{}", generated.iter().map(u32::to_string).collect::<Vec<_>>().join(","));
    println!(
        "{{\"prefill_tok_s\": {:.2}, \"decode_tok_s\": {:.2}, \"threads\": {}}}",
        median(prefill),
        median(decode),
        candle_core::utils::get_num_threads()
    );
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

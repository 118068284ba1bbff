//! `exo models list | fetch | manifest`.

use std::ops::Range;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use crate::catalog::memory::{KV_RESERVE_TOKENS, human_bytes, human_parameters};
use crate::catalog::{
    Catalog, DownloadProgress, Fetcher, ModelEntry, Presence, build_manifest, default_models_dir,
    presence,
};
use crate::engine::model::config::is_supported_architecture;

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// The models of the registry: size, memory a cluster needs, what is here, whether
    /// this build runs it.
    List(ListArgs),
    /// Fetch a model from the Hugging Face Hub (HF_ENDPOINT, HF_TOKEN, HF_HOME honoured):
    /// whole and checked against its sha256, or only the tensors of some layers.
    Fetch(FetchArgs),
    /// Print the per-tensor sha256 manifest of a verified whole GGUF or safetensors file.
    Manifest(ManifestArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(long, env = "EXO_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct FetchArgs {
    /// The model id (`exo models list`).
    pub id: String,
    /// Only the tensors a shard of these layers needs, as START..END (END excluded).
    #[arg(long, value_parser = parse_layers)]
    pub layers: Option<Range<usize>>,
    #[arg(long, env = "EXO_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ManifestArgs {
    /// A whole weight file, already checked against its sha256.
    pub file: PathBuf,
}

fn parse_layers(text: &str) -> Result<Range<usize>, String> {
    let (start, end) = text
        .split_once("..")
        .ok_or_else(|| format!("'{text}' is not a layer range like 0..10"))?;
    let start: usize = start
        .trim()
        .parse()
        .map_err(|_| format!("'{start}' is not a layer number"))?;
    let end: usize = end
        .trim()
        .parse()
        .map_err(|_| format!("'{end}' is not a layer number"))?;
    if start >= end {
        return Err(format!("the layer range {start}..{end} is empty"));
    }
    Ok(start..end)
}

pub async fn run(command: ModelsCommand) -> anyhow::Result<()> {
    match command {
        ModelsCommand::List(args) => list(args),
        ModelsCommand::Fetch(args) => {
            let catalog = Catalog::builtin();
            let entry = catalog.require(&args.id)?.clone();
            let dir = args.models_dir.unwrap_or_else(default_models_dir);
            let path = tokio::task::spawn_blocking(move || {
                let fetcher = Fetcher::from_env(DownloadProgress::for_command_line());
                match args.layers {
                    Some(layers) => fetcher.fetch_layers(&entry, &dir, layers),
                    None => fetcher.fetch_whole(&entry, &dir),
                }
            })
            .await
            .context("the fetch stopped unexpectedly")??;
            println!("{}", path.display());
            Ok(())
        }
        ModelsCommand::Manifest(args) => {
            if !args.file.is_file() {
                bail!("{} is not a file", args.file.display());
            }
            let manifest = tokio::task::spawn_blocking(move || build_manifest(&args.file))
                .await
                .context("the manifest stopped unexpectedly")??;
            print!("{}", manifest.to_json());
            Ok(())
        }
    }
}

fn row(entry: &ModelEntry, here: &Presence, default: bool) -> serde_json::Value {
    let memory = entry.memory_need();
    serde_json::json!({
        "id": entry.id,
        "model": entry.model,
        "name": entry.name,
        "family": entry.family,
        "architecture": entry.architecture,
        "parameters": entry.parameters,
        "layers": entry.layers,
        "format": entry.format,
        "quantization": entry.quantization,
        "size": entry.size(),
        "memory": memory,
        "present": here,
        "can_run": is_supported_architecture(&entry.architecture),
        "split_files": entry.is_split(),
        "verified": entry.verified,
        "default": default,
        "instruct": entry.instruct,
        "license": entry.license,
        "huggingface": entry.huggingface,
        "files": entry.files,
        "notes": entry.notes,
    })
}

fn list(args: ListArgs) -> anyhow::Result<()> {
    let catalog = Catalog::builtin();
    let dir = args.models_dir.unwrap_or_else(default_models_dir);
    let rows: Vec<(&ModelEntry, Presence)> = catalog
        .models
        .iter()
        .map(|m| (m, presence(m, &dir)))
        .collect();
    if args.json {
        let json: Vec<serde_json::Value> = rows
            .iter()
            .map(|(m, here)| row(m, here, m.id == catalog.default))
            .collect();
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(());
    }
    println!(
        "{:<34} {:<20} {:>6} {:<6} {:>8} {:>9}  {:<14} RUNS",
        "ID", "FAMILY", "PARAMS", "QUANT", "SIZE", "MEMORY", "HERE"
    );
    for (entry, here) in &rows {
        let memory = entry.memory_need();
        let approx = if memory.weights_exact { "" } else { "~" };
        let runs = if is_supported_architecture(&entry.architecture) {
            "yes"
        } else {
            "no"
        };
        let mut id = entry.id.clone();
        if entry.id == catalog.default {
            id.push('*');
        }
        println!(
            "{:<34} {:<20} {:>6} {:<6} {:>8} {:>9}  {:<14} {runs}",
            id,
            format!("{} ({})", entry.family, entry.architecture),
            human_parameters(entry.parameters),
            entry.quantization,
            format!("{approx}{}", human_bytes(memory.weights)),
            format!("{approx}{}", human_bytes(memory.total)),
            here.describe(),
        );
    }
    println!(
        "\n* the default model. MEMORY is what a whole cluster needs: the weights plus a KV \
         cache reserve of {KV_RESERVE_TOKENS} tokens (2 × layers × kv_heads × head_dim × tokens \
         × 2 bytes; CPU nodes keep f32 caches, twice that). ~ marks sizes estimated from the \
         parameter count; the others are the files' sizes. RUNS: this build has the \
         architecture. Models dir: {}",
        dir.display()
    );
    Ok(())
}

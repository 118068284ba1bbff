//! `exo chat`: one question to a running node's API, the answer printed (a client for
//! scripts and quick checks; any OpenAI client works as well).

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::json;

#[derive(Debug, Args)]
pub struct ChatArgs {
    /// The node's API.
    #[arg(long, env = "EXO_NODE", default_value = "http://127.0.0.1:52415")]
    pub node: String,
    /// The user's message.
    #[arg(long)]
    pub prompt: String,
    /// The model to ask for (default: the one the node serves).
    #[arg(long)]
    pub model: Option<String>,
    #[arg(long, default_value_t = 128)]
    pub max_tokens: u32,
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Print the whole JSON response instead of the answer.
    #[arg(long)]
    pub json: bool,
    /// The node's API key, sent as `Authorization: Bearer` (the first, if the environment
    /// holds a comma-separated list).
    #[arg(long, env = "EXO_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Read the API key from this file (its first key; readable by its owner only).
    #[arg(long, env = "EXO_API_KEY_FILE")]
    pub api_key_file: Option<std::path::PathBuf>,
}

pub async fn run(args: ChatArgs) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || run_blocking(args)).await?
}

fn run_blocking(args: ChatArgs) -> anyhow::Result<()> {
    let base = args.node.trim_end_matches('/');
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(3))
        .timeout(Duration::from_secs(600))
        .build();
    let key = super::shared::client_key(args.api_key.as_deref(), args.api_key_file.as_deref())?;
    let authorization = super::shared::bearer(key.as_deref());
    let with_key = |request: ureq::Request| match &authorization {
        Some(value) => request.set("authorization", value),
        None => request,
    };
    let model = match args.model {
        Some(model) => model,
        None => {
            let models = answer(
                base,
                with_key(agent.get(&format!("{base}/v1/models"))).call(),
            )?;
            models["data"][0]["id"]
                .as_str()
                .context("the node lists no model")?
                .to_string()
        }
    };
    let body = json!({
        "model": model,
        "messages": [{"role": "user", "content": args.prompt}],
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
    });
    let response = answer(
        base,
        with_key(agent.post(&format!("{base}/v1/chat/completions"))).send_json(&body),
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&response)?);
        return Ok(());
    }
    println!(
        "{}",
        response["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_default()
    );
    let exo = &response["exo"];
    eprintln!(
        "ring: {} | {} prompt + {} generated tokens | decode {:.1} tokens/s",
        exo["ring"].as_str().unwrap_or("?"),
        response["usage"]["prompt_tokens"],
        response["usage"]["completion_tokens"],
        exo["decode_tokens_per_second"].as_f64().unwrap_or(0.0)
    );
    Ok(())
}

/// The JSON a node answered; its error message when it refused; or why it could not be
/// reached.
fn answer(
    base: &str,
    response: Result<ureq::Response, ureq::Error>,
) -> anyhow::Result<serde_json::Value> {
    match response {
        Ok(response) => Ok(response.into_json()?),
        Err(ureq::Error::Status(code, response)) => {
            let body: serde_json::Value = response.into_json().unwrap_or_default();
            bail!(
                "the node answered {code}: {}",
                body["error"]["message"].as_str().unwrap_or("no message")
            );
        }
        Err(error) => Err(anyhow::anyhow!("cannot reach the node at {base}: {error}")),
    }
}

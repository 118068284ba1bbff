//! `POST /v1/completions`: OpenAI's (legacy) text completion. The prompt is text the model
//! continues as it is (no chat template), streamed as `text_completion` chunks or not.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::logprobs;
use super::params::{Common, Prepared, loaded_model, parse};
use super::respond::{Format, exo_details, now, respond, usage};
use super::state::ApiState;
use crate::engine::serve::sampling::{MAX_TOP_LOGPROBS, TokenLogprobs};
use crate::engine::text::tokenizer::TextTokenizer;
use crate::node::GenerationSummary;

/// The request body. Unknown fields are ignored, as OpenAI clients send many.
#[derive(Debug, Deserialize)]
struct CompletionRequest {
    prompt: Option<Prompt>,
    /// Report each generated token's logprob and this many most likely alternatives.
    logprobs: Option<u32>,
    #[serde(default)]
    echo: bool,
    suffix: Option<String>,
    #[serde(flatten)]
    common: Common,
}

/// OpenAI takes a string, a list of strings, token ids, or lists of token ids.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
    Texts(Vec<String>),
    TokenLists(Vec<Vec<u32>>),
}

/// The prompt's tokens: text is tokenized (a BOS first when the model wants one); token
/// ids are taken as they are, once checked against the vocabulary. A list of one prompt
/// is that prompt; more than one would be a batch of choices, which is refused as `n` > 1.
fn prompt_tokens(prompt: Option<Prompt>, tokenizer: &TextTokenizer) -> Result<Vec<u32>, ApiError> {
    let batched = |count: usize| {
        ApiError::invalid_param(
            "prompt",
            format!(
                "the prompt is a list of {count} prompts; this server completes one prompt per request"
            ),
        )
    };
    let tokens = match prompt {
        None => return Err(ApiError::invalid_param("prompt", "prompt is required")),
        Some(Prompt::Text(text)) => encode(tokenizer, &text)?,
        Some(Prompt::Texts(texts)) => match <[String; 1]>::try_from(texts) {
            Ok([text]) => encode(tokenizer, &text)?,
            Err(texts) => return Err(batched(texts.len())),
        },
        Some(Prompt::TokenLists(lists)) => match <[Vec<u32>; 1]>::try_from(lists) {
            Ok([tokens]) => tokens,
            Err(lists) => return Err(batched(lists.len())),
        },
        Some(Prompt::Tokens(tokens)) => tokens,
    };
    if tokens.is_empty() {
        return Err(ApiError::invalid_param("prompt", "the prompt is empty"));
    }
    let vocab = tokenizer.vocab_size();
    if let Some(bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(ApiError::invalid_param(
            "prompt",
            format!("token id {bad} is outside the model's vocabulary of {vocab}"),
        ));
    }
    Ok(tokens)
}

fn encode(tokenizer: &TextTokenizer, text: &str) -> Result<Vec<u32>, ApiError> {
    if text.is_empty() {
        return Err(ApiError::invalid_param("prompt", "the prompt is empty"));
    }
    tokenizer
        .encode_prompt(text)
        .map_err(|e| ApiError::invalid_param("prompt", format!("{e:#}")))
}

async fn prepare(state: &ApiState, body: &[u8]) -> Result<Prepared, ApiError> {
    let request: CompletionRequest = parse(body, "completion")?;
    if request.echo {
        return Err(ApiError::invalid_param(
            "echo",
            "echo is not supported: the answer holds only the completion",
        ));
    }
    if request.suffix.is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid_param(
            "suffix",
            "suffix (insertion) is not supported",
        ));
    }
    if let Some(k) = request.logprobs
        && k as usize > MAX_TOP_LOGPROBS
    {
        return Err(ApiError::invalid_param(
            "logprobs",
            format!("logprobs is at most {MAX_TOP_LOGPROBS}, not {k}"),
        ));
    }
    let settings = request.common.check(state, request.logprobs)?;
    let loaded = loaded_model(state).await?;
    let prompt = prompt_tokens(request.prompt, loaded.tokenizer())?;
    settings.finish(loaded, prompt, "prompt")
}

pub async fn completions(State(state): State<ApiState>, body: Bytes) -> Response {
    let prepared = match prepare(&state, &body).await {
        Ok(prepared) => prepared,
        Err(error) => return error.into_response(),
    };
    let format = CompletionFormat {
        model: prepared.model.clone(),
        created: now(),
        tokenizer: prepared.loaded.tokenizer().clone(),
        logprobs: prepared.request.top_logprobs.is_some(),
        offset: 0,
    };
    respond(state, prepared, format).await
}

/// The `text_completion` object, whole or as stream chunks (OpenAI names both alike).
struct CompletionFormat {
    model: String,
    created: u64,
    tokenizer: Arc<TextTokenizer>,
    logprobs: bool,
    /// Where the next token starts in the generated text (`text_offset`).
    offset: usize,
}

impl CompletionFormat {
    fn object(&self, id: &str, choices: serde_json::Value) -> serde_json::Value {
        json!({
            "id": format!("cmpl-{id}"),
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        })
    }
}

impl Format for CompletionFormat {
    fn logprobs_of(&mut self, tokens: &[TokenLogprobs]) -> serde_json::Value {
        if self.logprobs {
            logprobs::completion(&self.tokenizer, tokens, &mut self.offset)
        } else {
            serde_json::Value::Null
        }
    }

    fn whole(
        &mut self,
        id: &str,
        text: &str,
        logprobs: &[TokenLogprobs],
        summary: &GenerationSummary,
    ) -> serde_json::Value {
        let logprobs = self.logprobs_of(logprobs);
        let mut whole = self.object(
            id,
            json!([{
                "index": 0,
                "text": text,
                "logprobs": logprobs,
                "finish_reason": summary.finish.as_str(),
            }]),
        );
        whole["usage"] = usage(summary);
        whole["exo"] = exo_details(summary);
        whole
    }

    fn opening(&mut self, _id: &str) -> Option<serde_json::Value> {
        None
    }

    fn piece(&mut self, id: &str, text: &str, logprobs: &[TokenLogprobs]) -> serde_json::Value {
        let logprobs = self.logprobs_of(logprobs);
        self.object(
            id,
            json!([{ "index": 0, "text": text, "logprobs": logprobs, "finish_reason": null }]),
        )
    }

    fn finish(
        &mut self,
        id: &str,
        logprobs: &[TokenLogprobs],
        summary: &GenerationSummary,
    ) -> serde_json::Value {
        let logprobs = self.leftover_logprobs(logprobs);
        self.object(
            id,
            json!([{
                "index": 0,
                "text": "",
                "logprobs": logprobs,
                "finish_reason": summary.finish.as_str(),
            }]),
        )
    }

    fn note(&mut self, id: &str) -> serde_json::Value {
        self.object(
            id,
            json!([{ "index": 0, "text": "", "logprobs": null, "finish_reason": null }]),
        )
    }

    fn usage_only(&mut self, id: &str, summary: &GenerationSummary) -> serde_json::Value {
        let mut chunk = self.object(id, json!([]));
        chunk["usage"] = usage(summary);
        chunk
    }
}

//! What chat and text completions share: the sampling and output parameters of a request
//! body and their checks, and the step that turns a tokenized prompt into a
//! [`GenerateRequest`].

use std::sync::Arc;

use serde::Deserialize;

use super::config::MAX_STOP_STRING_BYTES;
use super::error::ApiError;
use super::state::ApiState;
use crate::engine::serve::sampling::MAX_TOP_LOGPROBS;
use crate::engine::text::constraint::json_schema_grammar;
use crate::engine::{LoadedModel, SamplingParams};
use crate::node::{GenerateRequest, new_request_id};
use crate::topology::Parallelism;

/// Most stop strings OpenAI accepts.
const MAX_STOP_STRINGS: usize = 4;

/// The fields both endpoints take (flattened into each endpoint's body). Unknown fields
/// are ignored, as OpenAI clients send many.
#[derive(Debug, Deserialize)]
pub struct Common {
    pub model: String,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<u32>,
    seed: Option<i64>,
    stop: Option<Stop>,
    #[serde(default)]
    pub stream: bool,
    stream_options: Option<StreamOptions>,
    n: Option<u32>,
    best_of: Option<u32>,
    response_format: Option<serde_json::Value>,
    /// Go on past end-of-sequence tokens to exactly max_tokens (as llama.cpp's server and
    /// vLLM allow; for benchmarks).
    #[serde(default)]
    ignore_eos: bool,
    /// How to split the model for this request: `auto`, `pipeline` or `tensor` (an exo
    /// extension, for benchmarks; the node's `--parallelism` otherwise).
    parallelism: Option<String>,
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

/// The checked parameters, waiting for the prompt.
#[derive(Debug)]
pub struct Settings {
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    max_tokens: Option<u64>,
    ignore_eos: bool,
    top_logprobs: Option<u32>,
    /// The grammar its tokens must follow, with the parameter it came from.
    pub grammar: Option<Grammar>,
    parallelism: Option<Parallelism>,
}

/// A grammar that constrains a request's tokens (llguidance's Lark dialect).
#[derive(Debug, Clone)]
pub struct Grammar {
    /// The request field it came from (`response_format`, `tools`), for errors.
    pub param: &'static str,
    pub lark: String,
}

/// A request ready to run, with what its response needs.
pub struct Prepared {
    pub request: GenerateRequest,
    pub request_id: String,
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
    /// The model's (to write tokens of logprobs as text and bytes).
    pub loaded: Arc<LoadedModel>,
}

/// Parses a JSON body into an endpoint's request type, with errors that say what is wrong.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8], schema: &str) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "the request body is empty; expected a JSON object",
        ));
    }
    serde_json::from_slice(body).map_err(|error| {
        if error.is_syntax() || error.is_eof() {
            ApiError::bad_request(format!("the request body is not valid JSON: {error}"))
        } else {
            ApiError::bad_request(format!(
                "the request body does not match the {schema} schema: {error}"
            ))
        }
    })
}

impl Common {
    /// Checks everything but the prompt. `top_logprobs` is the endpoint's logprobs
    /// request (already checked for its own shape).
    pub fn check(self, state: &ApiState, top_logprobs: Option<u32>) -> Result<Settings, ApiError> {
        self.check_for(state.flow.model_id(), top_logprobs)
    }

    /// [`Common::check`] for a cluster serving `served_model` (no node needed: the fuzz
    /// tests run it).
    pub fn check_for(
        self,
        served_model: &str,
        top_logprobs: Option<u32>,
    ) -> Result<Settings, ApiError> {
        if self.model != served_model {
            return Err(ApiError {
                code: Some("model_not_found"),
                param: Some("model"),
                ..ApiError::not_found(format!(
                    "the model '{}' does not exist here; this cluster serves '{served_model}'",
                    self.model,
                ))
            });
        }
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::invalid_param(
                "n",
                "only n = 1 is supported: send one request per choice",
            ));
        }
        if self.best_of.is_some_and(|n| n != 1) {
            return Err(ApiError::invalid_param(
                "best_of",
                "only best_of = 1 is supported",
            ));
        }
        let grammar = check_response_format(self.response_format.as_ref())?;
        let parallelism = match self.parallelism.as_deref() {
            None => None,
            Some(name) => Some(
                Parallelism::parse(name)
                    .map_err(|e| ApiError::invalid_param("parallelism", format!("{e:#}")))?,
            ),
        };
        let temperature = self.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::invalid_param(
                "temperature",
                format!("temperature must be between 0 and 2, not {temperature}"),
            ));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::invalid_param(
                "top_p",
                format!("top_p must be in (0, 1], not {top_p}"),
            ));
        }
        let stop = match self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s],
            Some(Stop::Many(list)) => list,
        };
        if stop.len() > MAX_STOP_STRINGS {
            return Err(ApiError::invalid_param(
                "stop",
                format!("at most {MAX_STOP_STRINGS} stop strings"),
            ));
        }
        if stop.iter().any(|s| s.len() > MAX_STOP_STRING_BYTES) {
            return Err(ApiError::invalid_param(
                "stop",
                format!("stop strings have at most {MAX_STOP_STRING_BYTES} bytes"),
            ));
        }
        if self.stream_options.is_some() && !self.stream {
            return Err(ApiError::invalid_param(
                "stream_options",
                "stream_options is only allowed when stream is true",
            ));
        }
        if let Some(k) = top_logprobs
            && k as usize > MAX_TOP_LOGPROBS
        {
            return Err(ApiError::invalid_param(
                "top_logprobs",
                format!("at most {MAX_TOP_LOGPROBS} alternatives per token, not {k}"),
            ));
        }
        Ok(Settings {
            model: self.model,
            stream: self.stream,
            include_usage: self.stream_options.is_some_and(|o| o.include_usage),
            sampling: SamplingParams {
                temperature,
                top_p,
                top_k: self.top_k.unwrap_or(0) as usize,
                seed: self.seed.map(|s| s as u64),
            },
            stop,
            max_tokens: self.max_completion_tokens.or(self.max_tokens),
            ignore_eos: self.ignore_eos,
            top_logprobs,
            grammar,
            parallelism,
        })
    }
}

/// `response_format`: `text` (free text), `json_object` (any JSON object) or
/// `json_schema` (`{"json_schema": {"name", "schema", "strict"}}`: a value valid against
/// the schema); the last two constrain decoding with a grammar compiled from a schema.
/// The schema itself is checked when the grammar compiles ([`Settings::finish`]).
fn check_response_format(format: Option<&serde_json::Value>) -> Result<Option<Grammar>, ApiError> {
    let Some(format) = format else {
        return Ok(None);
    };
    let schema = match format.get("type").and_then(|t| t.as_str()) {
        Some("text") => return Ok(None),
        Some("json_object") => serde_json::json!({"type": "object"}),
        Some("json_schema") => {
            let Some(spec) = format.get("json_schema").filter(|s| s.is_object()) else {
                return Err(ApiError::invalid_param(
                    "response_format",
                    "response_format of type json_schema needs a json_schema object with a schema",
                ));
            };
            match spec.get("schema") {
                None => serde_json::json!({}),
                Some(schema) if schema.is_object() => schema.clone(),
                Some(_) => {
                    return Err(ApiError::invalid_param(
                        "response_format",
                        "response_format.json_schema.schema must be a JSON Schema object",
                    ));
                }
            }
        }
        _ => {
            return Err(ApiError::invalid_param(
                "response_format",
                "response_format must be an object whose type is text, json_object or json_schema",
            ));
        }
    };
    Ok(Some(Grammar {
        param: "response_format",
        lark: json_schema_grammar(&schema),
    }))
}

/// The engine's model, for tokenizing (through `ensure_ready`).
pub async fn loaded_model(state: &ApiState) -> Result<Arc<LoadedModel>, ApiError> {
    let engine = state.engine.ensure_ready().await.map_err(|e| {
        ApiError::unavailable(format!("the inference engine is not available: {e}"))
    })?;
    engine
        .model()
        .map_err(|e| ApiError::unavailable(format!("{e:#}")))
}

impl Settings {
    /// The settings of an endpoint that is not OpenAI's (Ollama's), which checks its own
    /// parameters: `max_tokens` None fills the room the context leaves (at most 4096).
    pub fn checked(
        model: String,
        stream: bool,
        sampling: SamplingParams,
        stop: Vec<String>,
        max_tokens: Option<u64>,
    ) -> Self {
        Settings {
            model,
            stream,
            include_usage: false,
            sampling,
            stop,
            max_tokens,
            ignore_eos: false,
            top_logprobs: None,
            grammar: None,
            parallelism: None,
        }
    }

    /// Fits the token limit to the prompt (`prompt_param` names the field the prompt came
    /// from, for errors).
    pub fn finish(
        self,
        loaded: Arc<LoadedModel>,
        prompt: Vec<u32>,
        prompt_param: &'static str,
    ) -> Result<Prepared, ApiError> {
        let context = loaded.config().context_length;
        if prompt.len() >= context {
            return Err(ApiError {
                code: Some("context_length_exceeded"),
                ..ApiError::invalid_param(
                    prompt_param,
                    format!(
                        "the {prompt_param} take {} tokens; the model's context holds {context}",
                        prompt.len()
                    ),
                )
            });
        }
        let room = (context - prompt.len()) as u64;
        let max_tokens = match self.max_tokens {
            None => room.min(4096),
            Some(0) => {
                return Err(ApiError::invalid_param(
                    "max_tokens",
                    "max_tokens must be at least 1",
                ));
            }
            Some(n) if n > room => {
                return Err(ApiError::invalid_param(
                    "max_tokens",
                    format!(
                        "max_tokens is {n}, but only {room} tokens fit after the {} prompt tokens",
                        prompt.len()
                    ),
                ));
            }
            Some(n) => n,
        };
        if let Some(grammar) = &self.grammar {
            // Compiled here to refuse a bad schema with a 400; the last shard compiles
            // it again for its matcher.
            loaded
                .grammars()
                .and_then(|g| g.matcher(&grammar.lark))
                .map_err(|e| {
                    ApiError::invalid_param(
                        grammar.param,
                        format!(
                            "{} cannot be used for constrained decoding: {e:#}",
                            grammar.param
                        ),
                    )
                })?;
        }
        let request_id = new_request_id();
        Ok(Prepared {
            request: GenerateRequest {
                prompt,
                max_tokens: max_tokens as usize,
                sampling: self.sampling,
                stop: self.stop,
                ignore_eos: self.ignore_eos,
                top_logprobs: self.top_logprobs,
                request_id: Some(request_id.clone()),
                grammar: self.grammar.map(|g| g.lark),
                parallelism: self.parallelism,
            },
            request_id,
            model: self.model,
            stream: self.stream,
            include_usage: self.include_usage,
            loaded,
        })
    }
}

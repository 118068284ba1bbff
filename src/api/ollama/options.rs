//! Ollama's `options` (sampling and length) and the request fields this server refuses,
//! turned into the flow's [`Settings`].

use serde::Deserialize;

use crate::api::config::MAX_STOP_STRING_BYTES;
use crate::api::error::ApiError;
use crate::api::params::Settings;
use crate::engine::SamplingParams;

/// The options this server honours; the others (`num_ctx`, `num_thread`, …) tune Ollama's
/// own runner and are ignored, as Ollama ignores options a model does not use.
#[derive(Debug, Default, Deserialize)]
pub struct Options {
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<i64>,
    seed: Option<i64>,
    /// Tokens to generate; -1 (or -2, "fill the context") leaves it to the context.
    num_predict: Option<i64>,
    stop: Option<Vec<String>>,
}

/// Ollama's defaults, used where a request leaves an option out.
const DEFAULT_TEMPERATURE: f32 = 0.8;
const DEFAULT_TOP_P: f32 = 0.9;
const DEFAULT_TOP_K: i64 = 40;

impl Options {
    /// The settings for a prompt of `prompt_tokens` tokens in a context of `context`
    /// (Ollama stops at the context's end rather than refusing a long `num_predict`).
    pub fn settings(
        self,
        model: String,
        stream: bool,
        prompt_tokens: usize,
        context: usize,
    ) -> Result<Settings, ApiError> {
        let sampling = SamplingParams {
            temperature: self.temperature.unwrap_or(DEFAULT_TEMPERATURE),
            top_p: self.top_p.unwrap_or(DEFAULT_TOP_P),
            top_k: match self.top_k.unwrap_or(DEFAULT_TOP_K) {
                k if k < 0 => {
                    return Err(ApiError::invalid_param(
                        "options",
                        format!("options.top_k must be at least 0, not {k}"),
                    ));
                }
                k => k as usize,
            },
            seed: self.seed.map(|s| s as u64),
        };
        sampling
            .validate()
            .map_err(|e| ApiError::invalid_param("options", format!("options: {e}")))?;
        let room = context.saturating_sub(prompt_tokens) as u64;
        let max_tokens = match self.num_predict {
            None | Some(-1) | Some(-2) => None,
            Some(n) if n > 0 => Some((n as u64).min(room.max(1))),
            Some(n) => {
                return Err(ApiError::invalid_param(
                    "options",
                    format!("options.num_predict must be positive, -1 or -2, not {n}"),
                ));
            }
        };
        let stop = self.stop.unwrap_or_default();
        if stop.iter().any(|s| s.len() > MAX_STOP_STRING_BYTES) {
            return Err(ApiError::invalid_param(
                "options",
                format!("options.stop strings have at most {MAX_STOP_STRING_BYTES} bytes"),
            ));
        }
        Ok(Settings::checked(model, stream, sampling, stop, max_tokens))
    }
}

/// Refuses, by name, a field this server cannot honour yet (structured output, images,
/// tools, template overrides): a client must hear so rather than get an answer that
/// ignored it. `present` says whether the client really used it (an empty value is not
/// a use).
pub fn refuse_if(present: bool, field: &'static str, what: &str) -> Result<(), ApiError> {
    if present {
        Err(ApiError::invalid_param(
            field,
            format!("'{field}' ({what}) is not supported by this server yet"),
        ))
    } else {
        Ok(())
    }
}

/// Whether a JSON value is a real use of a field: not null, "", [] or {}.
pub fn used(value: &Option<serde_json::Value>) -> bool {
    match value {
        None | Some(serde_json::Value::Null) => false,
        Some(serde_json::Value::String(s)) => !s.is_empty(),
        Some(serde_json::Value::Array(a)) => !a.is_empty(),
        Some(serde_json::Value::Object(o)) => !o.is_empty(),
        Some(_) => true,
    }
}

//! Text in and out: tokenizers (from `tokenizer.json`, or built from GGUF metadata by
//! [`gguf_vocab`] with [`spm`] or [`gguf_bpe`]), chat templates, text that streams out token by token
//! ([`text_stream`]) and the bookkeeping of a decoding loop ([`generation`]: stop strings,
//! token limits, end of sequence), and [`constraint`]: grammars that mask tokens (JSON
//! schemas, forced tool calls); [`tool_prompt`]: tools for templates without them.

pub mod chat_template;
pub mod constraint;
pub mod generation;
pub mod gguf_bpe;
pub mod gguf_vocab;
pub mod spm;
pub mod text_stream;
pub mod tokenizer;
pub mod tool_prompt;

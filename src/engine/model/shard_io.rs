//! What goes into a shard and what comes out: token ids or hidden states in, hidden
//! states or logits out.

/// What a shard is fed: token ids on the first shard, a hidden state on the others.
#[derive(Debug, Clone, PartialEq)]
pub enum ShardInput {
    Tokens(Vec<u32>),
    Hidden(HiddenState),
}

impl ShardInput {
    pub fn len(&self) -> usize {
        match self {
            ShardInput::Tokens(t) => t.len(),
            ShardInput::Hidden(h) => h.rows,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Rows of hidden states (f32, row-major), as they travel between shards.
#[derive(Debug, Clone, PartialEq)]
pub struct HiddenState {
    pub data: Vec<f32>,
    pub rows: usize,
    pub cols: usize,
}

/// What a shard produces: a hidden state for the next shard, or, on the last shard, the
/// logits of the last position.
#[derive(Debug, Clone, PartialEq)]
pub enum ShardOutput {
    Hidden(HiddenState),
    Logits(Vec<f32>),
}

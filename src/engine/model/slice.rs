//! Tensor-parallel slices: the part of every matrix of a layer range that one member of a
//! group holds (Megatron style), and how a group's members divide a model among them.
//!
//! A member holds, in every layer of its range:
//! - the rows of q for its query heads and of k and v for the KV heads those heads read
//!   (an *output* split: whole rows of the file's matrices), with their biases;
//! - the columns of the attention output o for its query heads (an *input* split: whole
//!   quantization blocks of every row);
//! - the rows of gate and up for its FFN columns, and those columns of down;
//! - the rows of the embedding and of the output head for its vocabulary range.
//!
//! Its o and down give partial sums that the group adds (one all-reduce after attention,
//! one after the feed-forward block); its embedding rows give the rows of tokens in its
//! range (zeros elsewhere, added likewise); its head gives the logits of its vocabulary,
//! gathered on the leader. Everything else (norms, rope, attention over its heads) is
//! computed by each member on its own.
//!
//! **What cannot split, and why.** An input split cuts every row of o and down, so a cut
//! must fall on a quantization block boundary of every layer's matrix: 32 values for
//! Q4_0…Q8_0, 256 for the K-quants (Q4_K, Q5_K, Q6_K); the activations are rounded per block
//! of the same size, which the cut must not straddle either. For o that means whole groups
//! of `block / gcd(block, head_dim)` heads (4 heads of 64 values under Q4_K); for down,
//! FFN columns in multiples of the block (4864 = 19 × 256 in Qwen2.5-0.5B: at most 19
//! members). Query heads that read one KV head must see the same number of heads per KV
//! head in every member (the attention kernel maps heads to KV heads uniformly): a member
//! takes whole KV groups, or heads inside one KV group (whose KV head it then computes
//! too: that KV head is *replicated*). So a model with 2 KV heads of 7 query heads each
//! splits 7 | 4 + 3 among three members, but not 5 | 5 | 4. A split that no boundary
//! satisfies is refused with the reason; a group never has more members than the units
//! of its finest constraint.

use std::ops::Range;

use anyhow::bail;
use serde::{Deserialize, Serialize};

use super::config::ModelConfig;
use super::tensor_names::LayerTensor;
use super::weights::WeightSource;

/// One member's part of every matrix of a layer range.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TensorSlice {
    /// This member's index in its group (0: the leader).
    pub member: usize,
    /// How many members the group has.
    pub members: usize,
    /// Query heads `[start, end)`.
    pub heads: Range<usize>,
    /// FFN columns `[start, end)` (rows of gate and up, columns of down).
    pub ffn: Range<usize>,
    /// Vocabulary rows `[start, end)` of the embedding and the output head.
    pub vocab: Range<usize>,
}

/// The finest cuts a model allows (see the module's documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitUnits {
    /// Query heads a cut between members falls on a multiple of.
    pub heads: usize,
    /// FFN columns a cut falls on a multiple of.
    pub ffn: usize,
    /// Vocabulary rows a cut falls on a multiple of.
    pub vocab: usize,
}

impl SplitUnits {
    /// The units for a model whose o matrices have quantization blocks of `o_block`
    /// values and whose down matrices have blocks of `down_block` (the largest over its
    /// layers; 1 for dense weights).
    pub fn new(config: &ModelConfig, o_block: usize, down_block: usize) -> Self {
        let o_block = o_block.max(1);
        let head_dim = config.head_dim.max(1);
        SplitUnits {
            heads: o_block / gcd(o_block, head_dim),
            // Panels of 16 rows: a cut off a multiple of 16 leaves a part-empty panel.
            ffn: lcm(down_block.max(1), 16),
            vocab: 16,
        }
    }
}

impl SplitUnits {
    /// The units of a model file: its o and down matrices' largest quantization blocks
    /// over every layer (a cut must fall on a block boundary in each layer).
    pub fn of(source: &WeightSource) -> Self {
        let config = source.config();
        let largest = |tensor: LayerTensor| {
            (0..config.n_layers)
                .filter_map(|layer| source.block_len(&source.layer_name(layer, tensor)))
                .max()
                .unwrap_or(1)
        };
        SplitUnits::new(
            config,
            largest(LayerTensor::Output),
            largest(LayerTensor::Down),
        )
    }
}

impl TensorSlice {
    /// Whether this member leads its group (runs the batches, samples).
    pub fn is_leader(&self) -> bool {
        self.member == 0
    }

    /// The KV heads this member's query heads read.
    pub fn kv_heads(&self, config: &ModelConfig) -> Range<usize> {
        let group = heads_per_kv(config);
        self.heads.start / group..(self.heads.end - 1) / group + 1
    }

    /// Checks the slice against the model: every range inside it and non-empty, cuts on
    /// the units, and the query heads spread uniformly over the KV heads they read.
    pub fn check(&self, config: &ModelConfig, units: &SplitUnits) -> anyhow::Result<()> {
        if self.members == 0 || self.member >= self.members {
            bail!(
                "member {} of a group of {} does not exist",
                self.member,
                self.members
            );
        }
        let dims = [
            ("query heads", &self.heads, config.n_heads, units.heads),
            (
                "FFN columns",
                &self.ffn,
                config.intermediate_size,
                units.ffn,
            ),
            (
                "vocabulary rows",
                &self.vocab,
                config.vocab_size,
                units.vocab,
            ),
        ];
        for (what, range, total, unit) in dims {
            if range.start >= range.end || range.end > total {
                bail!(
                    "{what} [{}, {}) are not a non-empty part of the model's {total}",
                    range.start,
                    range.end
                );
            }
            for cut in [range.start, range.end] {
                if cut != total && cut % unit != 0 {
                    bail!(
                        "{what} cannot be cut at {cut}: cuts fall on multiples of {unit} \
                         (quantization blocks and 16-row panels)"
                    );
                }
            }
        }
        if !uniform_heads(&self.heads, heads_per_kv(config)) {
            bail!(
                "query heads [{}, {}) read their KV heads unevenly ({} query heads per KV \
                 head): a member takes whole KV groups or heads of one KV group",
                self.heads.start,
                self.heads.end,
                heads_per_kv(config)
            );
        }
        Ok(())
    }
}

impl std::fmt::Display for TensorSlice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "slice {}/{} (heads [{}, {}), FFN [{}, {}), vocabulary [{}, {}))",
            self.member + 1,
            self.members,
            self.heads.start,
            self.heads.end,
            self.ffn.start,
            self.ffn.end,
            self.vocab.start,
            self.vocab.end
        )
    }
}

/// Splits a model among the members of a group in proportion to `shares` (each
/// member's speed, say): the slice of each member, leader first. Each member gets at
/// least one unit of everything; the cuts fall as near the proportional ones as the
/// units and the KV heads allow. Err names what cannot be split so many ways.
pub fn split_slices(
    config: &ModelConfig,
    units: &SplitUnits,
    shares: &[f64],
) -> anyhow::Result<Vec<TensorSlice>> {
    let members = shares.len();
    if members < 2 {
        bail!("a tensor-parallel group has at least two members, not {members}");
    }
    if shares.iter().any(|s| !s.is_finite() || *s <= 0.0) {
        bail!("every member's share must be positive: {shares:?}");
    }
    let total: f64 = shares.iter().sum();
    let mut cumulative = Vec::with_capacity(members - 1);
    let mut sum = 0.0;
    for share in &shares[..members - 1] {
        sum += share / total;
        cumulative.push(sum);
    }
    let group = heads_per_kv(config);
    let heads = cut(config.n_heads, units.heads, &cumulative, |a, b| {
        uniform_heads(&(a..b), group)
    })
    .ok_or_else(|| {
        anyhow::anyhow!(
            "{} query heads ({} KV heads, cuts on multiples of {} heads for the attention \
             output's quantization blocks) cannot be split among {members} members",
            config.n_heads,
            config.n_kv_heads,
            units.heads
        )
    })?;
    let ffn = cut(config.intermediate_size, units.ffn, &cumulative, |_, _| {
        true
    })
    .ok_or_else(|| {
        anyhow::anyhow!(
            "{} FFN columns (cuts on multiples of {}: the down matrix's quantization \
                 blocks) cannot be split among {members} members",
            config.intermediate_size,
            units.ffn
        )
    })?;
    let vocab = cut(config.vocab_size, units.vocab, &cumulative, |_, _| true).ok_or_else(|| {
        anyhow::anyhow!(
            "a vocabulary of {} cannot be split among {members} members",
            config.vocab_size
        )
    })?;
    let slices = (0..members)
        .map(|member| TensorSlice {
            member,
            members,
            heads: heads[member]..heads[member + 1],
            ffn: ffn[member]..ffn[member + 1],
            vocab: vocab[member]..vocab[member + 1],
        })
        .collect::<Vec<_>>();
    for slice in &slices {
        slice.check(config, units)?;
    }
    Ok(slices)
}

/// Checks that `slices` divide the model among a whole group: members 0..n in order,
/// each range starting where the previous one ended, from 0 to the model's size.
pub fn check_group(
    config: &ModelConfig,
    units: &SplitUnits,
    slices: &[TensorSlice],
) -> anyhow::Result<()> {
    let members = slices.len();
    let ends = [
        ("query heads", config.n_heads),
        ("FFN columns", config.intermediate_size),
        ("vocabulary rows", config.vocab_size),
    ];
    let mut next = [0usize; 3];
    for (i, slice) in slices.iter().enumerate() {
        if slice.member != i || slice.members != members {
            bail!(
                "slice {i} of the group names itself member {} of {}",
                slice.member,
                slice.members
            );
        }
        slice.check(config, units)?;
        let ranges = [&slice.heads, &slice.ffn, &slice.vocab];
        for (k, range) in ranges.iter().enumerate() {
            if range.start != next[k] {
                bail!(
                    "member {i}'s {} start at {} instead of {}",
                    ends[k].0,
                    range.start,
                    next[k]
                );
            }
            next[k] = range.end;
        }
    }
    for (k, (what, total)) in ends.iter().enumerate() {
        if next[k] != *total {
            bail!("the group's {what} cover {} of {total}", next[k]);
        }
    }
    Ok(())
}

/// Query heads per KV head.
fn heads_per_kv(config: &ModelConfig) -> usize {
    (config.n_heads / config.n_kv_heads.max(1)).max(1)
}

/// Whether heads `range` read their KV heads uniformly: whole KV groups, or heads of one.
fn uniform_heads(range: &Range<usize>, group: usize) -> bool {
    range.start < range.end
        && ((range.start.is_multiple_of(group) && range.end.is_multiple_of(group))
            || range.start / group == (range.end - 1) / group)
}

/// Cuts `0..total` into `cumulative.len() + 1` non-empty parts whose cuts fall on
/// multiples of `unit` and as near `cumulative[i] × total` as possible (least squares),
/// every part accepted by `valid(start, end)`. The cut points, 0 and `total` included;
/// None when no such cuts exist.
fn cut(
    total: usize,
    unit: usize,
    cumulative: &[f64],
    valid: impl Fn(usize, usize) -> bool,
) -> Option<Vec<usize>> {
    let unit = unit.max(1);
    let mut points: Vec<usize> = (0..total).step_by(unit).collect();
    points.push(total);
    let n = points.len();
    let cuts = cumulative.len();
    // best[i][p]: the least cost of cuts 1..=i with cut i at points[p], and where cut
    // i-1 was (dynamic programming over the few points a model has).
    let mut best: Vec<Vec<Option<(f64, usize)>>> = vec![vec![None; n]; cuts + 2];
    best[0][0] = Some((0.0, 0));
    for i in 1..=cuts + 1 {
        let target = if i <= cuts {
            cumulative[i - 1] * total as f64
        } else {
            total as f64
        };
        for p in 1..n {
            if i == cuts + 1 && p != n - 1 {
                continue;
            }
            let cost_here = (points[p] as f64 - target).powi(2);
            let mut found: Option<(f64, usize)> = None;
            for q in 0..p {
                let Some((cost, _)) = best[i - 1][q] else {
                    continue;
                };
                if !valid(points[q], points[p]) {
                    continue;
                }
                let total_cost = cost + cost_here;
                if found.is_none_or(|(c, _)| total_cost < c) {
                    found = Some((total_cost, q));
                }
            }
            best[i][p] = found;
        }
    }
    let mut at = n - 1;
    best[cuts + 1][at]?;
    let mut result = vec![points[at]];
    for i in (1..=cuts + 1).rev() {
        let (_, previous) = best[i][at]?;
        at = previous;
        result.push(points[at]);
    }
    result.reverse();
    Some(result)
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn lcm(a: usize, b: usize) -> usize {
    a / gcd(a, b) * b
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::engine::config::{Architecture, RopeLayout, RopeSpec};

    /// Qwen2.5-0.5B's shape.
    fn qwen_half_b() -> ModelConfig {
        ModelConfig {
            architecture: Architecture::Qwen2,
            n_layers: 24,
            hidden_size: 896,
            intermediate_size: 4864,
            n_heads: 14,
            n_kv_heads: 2,
            head_dim: 64,
            vocab_size: 151936,
            context_length: 32768,
            rms_norm_eps: 1e-6,
            rope: RopeSpec {
                theta: 1e6,
                rotary_dim: 64,
                layout: RopeLayout::Halves,
                freq_factors: Vec::new(),
                magnitude: 1.0,
            },
            rope_local: None,
            qkv_bias: true,
            qk_norm: false,
            post_norms: false,
            activation: crate::engine::cpu::ops::Activation::Silu,
            embedding_scale: None,
            attention_scale: 0.125,
            sliding_window: None,
            sliding_pattern: None,
            norm_offset: 0.0,
        }
    }

    #[test]
    fn two_members_split_along_kv_groups_and_blocks() {
        let c = qwen_half_b();
        let units = SplitUnits::new(&c, 32, 256);
        assert_eq!(
            units,
            SplitUnits {
                heads: 1,
                ffn: 256,
                vocab: 16
            }
        );
        let s = split_slices(&c, &units, &[1.0, 1.0]).unwrap();
        assert_eq!(s[0].heads, 0..7);
        assert_eq!(s[1].heads, 7..14);
        assert_eq!(s[0].kv_heads(&c), 0..1);
        assert_eq!(s[1].kv_heads(&c), 1..2);
        // 19 blocks of 256: 10 and 9 (or 9 and 10).
        assert_eq!(s[0].ffn.len() + s[1].ffn.len(), 4864);
        assert!(s.iter().all(|s| s.ffn.len() % 256 == 0));
        assert_eq!(s[0].vocab, 0..75968);
        check_group(&c, &units, &s).unwrap();
    }

    #[test]
    fn three_members_replicate_a_kv_head_and_split_unevenly() {
        let c = qwen_half_b();
        let units = SplitUnits::new(&c, 32, 256);
        let s = split_slices(&c, &units, &[1.0, 1.0, 1.0]).unwrap();
        // 14 heads over 2 KV heads of 7: no member may straddle a KV group unevenly.
        for slice in &s {
            slice.check(&c, &units).unwrap();
        }
        // The cuts nearest thirds (4.7 and 9.3) that keep each member inside one KV group
        // or on whole ones: 5 and 7 (0..5 and 5..7 both read KV head 0, replicated).
        let heads: Vec<_> = s.iter().map(|s| s.heads.clone()).collect();
        assert_eq!(heads, [0..5, 5..7, 7..14]);
        assert_eq!(s[0].kv_heads(&c), 0..1);
        assert_eq!(s[1].kv_heads(&c), 0..1);
        assert_eq!(s[2].kv_heads(&c), 1..2);
        check_group(&c, &units, &s).unwrap();
    }

    #[test]
    fn k_quant_attention_outputs_cut_on_whole_blocks_of_heads() {
        let mut c = qwen_half_b();
        c.n_heads = 12;
        c.n_kv_heads = 4;
        c.head_dim = 128;
        let units = SplitUnits::new(&c, 256, 256);
        assert_eq!(units.heads, 2);
        // A 2:1 split would cut at head 8, inside KV group 2 (heads 6..9) with heads of
        // group 1 beside it; the only cut on whole blocks and uniform KV reads is 6.
        let s = split_slices(&c, &units, &[2.0, 1.0]).unwrap();
        assert_eq!(s[0].heads, 0..6);
        assert_eq!(s[1].heads, 6..12);
        // The FFN columns still follow the shares.
        assert!(s[0].ffn.len() > s[1].ffn.len(), "{s:?}");
    }

    #[test]
    fn what_cannot_split_is_refused_with_the_reason() {
        let mut c = qwen_half_b();
        c.n_heads = 2;
        c.n_kv_heads = 2;
        let units = SplitUnits::new(&c, 32, 256);
        let error = split_slices(&c, &units, &[1.0; 3]).unwrap_err().to_string();
        assert!(error.contains("cannot be split among 3 members"), "{error}");
        // Two blocks of FFN columns cannot go to three members.
        let mut c = qwen_half_b();
        c.intermediate_size = 512;
        let error = split_slices(&c, &units, &[1.0; 3]).unwrap_err().to_string();
        assert!(error.contains("FFN columns"), "{error}");
        let c = qwen_half_b();
        // A slice off the units is refused when checked.
        let mut s = split_slices(&c, &units, &[1.0, 1.0]).unwrap();
        s[0].ffn = 0..2500;
        s[1].ffn = 2500..4864;
        assert!(check_group(&c, &units, &s).is_err());
        // A member reading its KV heads unevenly.
        let mut s = split_slices(&c, &units, &[1.0, 1.0]).unwrap();
        s[0].heads = 0..5;
        s[1].heads = 5..14;
        let error = check_group(&c, &units, &s).unwrap_err().to_string();
        assert!(error.contains("unevenly"), "{error}");
    }

    #[test]
    fn shares_move_the_cuts() {
        let c = qwen_half_b();
        let units = SplitUnits::new(&c, 32, 32);
        let s = split_slices(&c, &units, &[3.0, 1.0]).unwrap();
        assert!(s[0].ffn.len() > 2 * s[1].ffn.len(), "{s:?}");
        assert!(s[0].vocab.len() > 2 * s[1].vocab.len());
    }
}

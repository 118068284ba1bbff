//! Tensor-parallel groups answer as one process (DESIGN.md §3b): the real
//! Qwen2.5-Coder-0.5B (Q4_K_M) split among two and three members, each holding a slice of
//! every matrix, greedy-decodes the same tokens as the whole model in one process, with
//! logits within the bound the all-reduce's summation order allows.
//!
//! **The bound.** A member's o and down give partial sums over its input columns; the
//! group adds them. The kernels add a row's quantization blocks in f32 (a block's products
//! are exact integer sums, or f32 sums within the block), so the group's sum and one
//! process's are the same n f32 terms (n blocks per row: 28 for o, 19 for down here) added
//! in two orders, each within γ(n−1)·Σ|t| of the exact sum (γ(k) = k·u/(1 − k·u),
//! u = 2⁻²⁴): within 2γ(n−1)·Σ|t| ≈ 3.2·10⁻⁶·Σ|t| of each other. The activations are
//! rounded per block *after* each all-reduce (and the caches to f16), so that difference
//! can move a value across a rounding boundary: by one step of its rounding, 2⁻¹¹ of the
//! value for f16 or 16 bits, 1/127 of its block's largest value at 8 bits. Hence two
//! bounds, each applied to the largest logit difference over every step relative to the
//! largest |logit|:
//! - with f32 and 16-bit activations (only f16 steps can flip), 10⁻³ (measured: 1.4·10⁻⁴
//!   and 2.9·10⁻⁴);
//! - with 8-bit activations (the default), 5·10⁻² (measured: 1.9·10⁻²), the size of the
//!   8-bit path's own rounding noise (it drifts 0.7–1.2 from llama.cpp's logits,
//!   tests/engine/agreement.rs) — and the greedy tokens must be the same for 64 steps.
//!
//! A wrong slice (a partial sum missing or counted twice, a head or column off by one)
//! moves the logits by their own scale and fails either bound.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use exo::catalog::{ModelFormat, ResolvedModel};
use exo::engine::group::local_wire::local_hubs;
use exo::engine::group::{GroupHub, GroupPlacement, WireDtype};
use exo::engine::model::shard_io::ShardInput;
use exo::engine::serve::batcher::StepJob;
use exo::engine::serve::group_runs::spawn_follower;
use exo::engine::{CpuMatmul, DeviceChoice, EngineConfig, LoadedModel};
use exo::peer::{GroupLinks, loopback_hubs};

use crate::steps::{argmax, batch_logits};
use crate::support::qwen_model;

/// The largest logit difference, relative to the largest |logit|, with f32 or 16-bit
/// activations (see the module's documentation).
const WIDE_BOUND: f32 = 1e-3;
/// The same with 8-bit activations.
const INT8_BOUND: f32 = 5e-2;

const MODEL: &str = "qwen2.5-coder-0.5b";

fn open(id: &str, hub: Option<Arc<GroupHub>>, kernels: CpuMatmul) -> Arc<LoadedModel> {
    let resolved = ResolvedModel {
        id: id.into(),
        path: qwen_model().to_path_buf(),
        format: ModelFormat::Gguf,
    };
    let mut config = EngineConfig::new(resolved, DeviceChoice::Cpu);
    config.groups = hub;
    config.cpu_matmul = kernels;
    Arc::new(LoadedModel::open(&config).unwrap())
}

/// A group of `shares.len()` members in this process: the leader's model, its hub, the
/// placement, and the followers (kept alive while the group is used).
struct Group {
    leader: Arc<LoadedModel>,
    hub: Arc<GroupHub>,
    placement: Arc<GroupPlacement>,
    _followers: Vec<(Arc<LoadedModel>, Arc<GroupHub>)>,
    _links: Vec<Arc<GroupLinks>>,
}

fn group(shares: &[f64], kernels: CpuMatmul) -> Group {
    group_of(shares, MODEL, kernels)
}

/// The same group, its members' hubs joined by TCP streams on loopback (one per pair,
/// `exo::peer::GroupLinks`) instead of in-process calls.
fn group_over_sockets(shares: &[f64]) -> Group {
    let names = member_names(shares);
    let mesh = loopback_hubs(&names).unwrap();
    join(shares, names, mesh.hubs, mesh.links, MODEL, CpuMatmul::Int8)
}

/// A group whose followers serve the model file under `follower_model`'s name.
fn group_of(shares: &[f64], follower_model: &str, kernels: CpuMatmul) -> Group {
    let names = member_names(shares);
    let hubs = local_hubs(&names);
    join(shares, names, hubs, Vec::new(), follower_model, kernels)
}

fn member_names(shares: &[f64]) -> Vec<String> {
    (0..shares.len()).map(|i| format!("member-{i}")).collect()
}

/// The group of the members `names` on `hubs` (the first leads): the leader's model split
/// by `shares`, and a follower per other hub serving the model file under
/// `follower_model`'s name.
fn join(
    shares: &[f64],
    names: Vec<String>,
    hubs: Vec<Arc<GroupHub>>,
    links: Vec<Arc<GroupLinks>>,
    follower_model: &str,
    kernels: CpuMatmul,
) -> Group {
    let leader = open(MODEL, Some(hubs[0].clone()), kernels);
    let slices = leader.split_group(shares).unwrap();
    let placement = Arc::new(GroupPlacement {
        members: names,
        slices,
        wire: WireDtype::F32,
    });
    let followers = hubs[1..]
        .iter()
        .map(|hub| {
            let model = open(follower_model, Some(hub.clone()), kernels);
            spawn_follower(&model, hub).unwrap();
            (model, hub.clone())
        })
        .collect();
    Group {
        leader,
        hub: hubs[0].clone(),
        placement,
        _followers: followers,
        _links: links,
    }
}

/// Runs `steps` (request id, tokens, position) as one batch over the whole model, as a
/// group's leader when `group` is given; each step's logits.
fn batch(
    model: &LoadedModel,
    group: Option<&Arc<GroupPlacement>>,
    steps: Vec<(&str, Vec<u32>, usize)>,
) -> Vec<Vec<f32>> {
    batch_logits(model, group, 512, steps)
}

const PROMPTS: [&str; 2] = [
    "Write a Python function that checks whether a number is prime.",
    "The capital of Germany is",
];

/// Greedy-decodes every prompt side by side in one batch per step, `tokens` tokens each;
/// the tokens of each prompt and every step's logits.
fn decode(
    model: &LoadedModel,
    group: Option<&Arc<GroupPlacement>>,
    tokens: usize,
) -> (Vec<Vec<u32>>, Vec<Vec<Vec<f32>>>) {
    let tokenizer = model.tokenizer();
    let prompts: Vec<Vec<u32>> = PROMPTS
        .iter()
        .map(|p| tokenizer.encode(p).unwrap())
        .collect();
    let ids: Vec<String> = (0..PROMPTS.len()).map(|i| format!("prompt-{i}")).collect();
    let mut out = vec![Vec::new(); PROMPTS.len()];
    let mut logits = vec![Vec::new(); PROMPTS.len()];
    let mut inputs: Vec<(Vec<u32>, usize)> = prompts.iter().map(|p| (p.clone(), 0)).collect();
    for _ in 0..tokens {
        let steps = ids
            .iter()
            .zip(&inputs)
            .map(|(id, (t, at))| (id.as_str(), t.clone(), *at))
            .collect();
        let step = batch(model, group, steps);
        for (i, l) in step.into_iter().enumerate() {
            let next = argmax(&l);
            out[i].push(next);
            logits[i].push(l);
            let at = inputs[i].1 + inputs[i].0.len();
            inputs[i] = (vec![next], at);
        }
    }
    (out, logits)
}

/// The largest |a − b| over every step, and the largest |logit| of one process.
fn drift(one: &[Vec<Vec<f32>>], other: &[Vec<Vec<f32>>]) -> (f32, f32) {
    let (mut worst, mut scale) = (0f32, 0f32);
    for (a, b) in one.iter().flatten().zip(other.iter().flatten()) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            worst = worst.max((x - y).abs());
            scale = scale.max(x.abs());
        }
    }
    (worst, scale)
}

/// A group of members with `shares` greedy-decodes [`PROMPTS`] side by side for `tokens`
/// steps as one process does, logits within `bound` (relative to their scale), with two
/// all-reduces per layer per batch.
fn answers_as_one_process(shares: &[f64], tokens: usize, kernels: CpuMatmul, bound: f32) {
    answers_as(group(shares, kernels), tokens, kernels, bound);
}

fn answers_as(g: Group, tokens: usize, kernels: CpuMatmul, bound: f32) {
    let shares = &g.placement.slices;
    let one = open(MODEL, None, kernels);
    let (expected, expected_logits) = decode(&one, None, tokens);
    let before = g.hub.stats.all_reduces.load(Ordering::Relaxed);
    let (got, got_logits) = decode(&g.leader, Some(&g.placement), tokens);
    let (worst, scale) = drift(&expected_logits, &got_logits);
    eprintln!(
        "{} members {:?}: logits drift at most {worst} (largest |logit| {scale})",
        shares.len(),
        g.placement.slices
    );
    assert_eq!(got, expected, "the group's greedy tokens");
    assert!(
        worst <= bound * scale,
        "logits drift {worst} past the bound {}",
        bound * scale
    );
    // One all-reduce per layer for attention and one for the feed-forward block, plus
    // the embedding's: per batch, however many rows it holds.
    let layers = g.leader.config().n_layers as u64;
    let all_reduces = g.hub.stats.all_reduces.load(Ordering::Relaxed) - before;
    assert_eq!(all_reduces, tokens as u64 * (2 * layers + 1));
    assert_eq!(g.hub.boxes(), 0, "a batch's box left behind");
}

#[test]
fn a_pair_greedy_decodes_as_one_process() {
    answers_as_one_process(&[1.0, 1.0], 64, CpuMatmul::Int8, INT8_BOUND);
}

/// The same over real sockets: a pair and a trio (a ring all-reduce) whose frames travel
/// TCP streams on loopback.
#[test]
fn groups_over_tcp_links_decode_as_one_process() {
    answers_as(
        group_over_sockets(&[1.0, 1.0]),
        32,
        CpuMatmul::Int8,
        INT8_BOUND,
    );
    answers_as(
        group_over_sockets(&[2.0, 1.0, 1.0]),
        16,
        CpuMatmul::Int8,
        INT8_BOUND,
    );
}

/// A member whose link breaks mid-batch: the leader's step fails at once (the batch is
/// aborted), not after the part timeout.
#[test]
fn a_member_lost_mid_stream_aborts_the_leaders_batch() {
    let g = group_over_sockets(&[1.0, 1.0]);
    // Decode a few steps, then drop the follower's whole side.
    let steps = vec![("lost", vec![9707, 11], 0)];
    batch(&g.leader, Some(&g.placement), steps);
    let Group {
        leader,
        hub,
        placement,
        _followers,
        _links,
    } = g;
    drop(_followers);
    let follower_links = _links[1].clone();
    drop(follower_links);
    drop(_links);
    let started = Instant::now();
    let layers = leader.config().n_layers;
    let (sink, _unused) = tokio::sync::mpsc::unbounded_channel();
    let job = StepJob {
        request_id: "lost".into(),
        start: 0,
        end: layers,
        input: ShardInput::Tokens(vec![13]),
        position: 2,
        reserve_positions: 64,
        tag: 0,
        sink,
        group: Some(placement),
        prefix: Vec::new(),
    };
    let (done, _) = leader.run_batch(vec![job]).pop().unwrap();
    let error = format!("{:#}", done.output.unwrap_err());
    assert!(started.elapsed() < Duration::from_secs(60), "{error}");
    assert_eq!(hub.boxes(), 0);
}

#[test]
fn a_pair_with_wider_activations_stays_within_the_summation_bound() {
    answers_as_one_process(&[1.0, 1.0], 16, CpuMatmul::F32, WIDE_BOUND);
    answers_as_one_process(&[1.0, 1.0], 16, CpuMatmul::Int16, WIDE_BOUND);
}

#[test]
fn three_uneven_members_greedy_decode_as_one_process() {
    answers_as_one_process(&[2.0, 1.0, 1.0], 24, CpuMatmul::Int8, INT8_BOUND);
}

/// A member that cannot run its part gives the batch up on every member: the leader's
/// step fails with the follower's reason at once (nobody waits out a timeout), and the
/// leader keeps no box of it.
#[test]
fn a_failing_member_aborts_the_batch_everywhere() {
    // The follower serves another model: it refuses every batch of this one.
    let g = group_of(&[1.0, 1.0], "another-model", CpuMatmul::Int8);
    let started = std::time::Instant::now();
    let layers = g.leader.config().n_layers;
    let (sink, _unused) = tokio::sync::mpsc::unbounded_channel();
    let job = StepJob {
        request_id: "refused".into(),
        start: 0,
        end: layers,
        input: ShardInput::Tokens(vec![9707]),
        position: 0,
        reserve_positions: 64,
        tag: 0,
        sink,
        group: Some(g.placement.clone()),
        prefix: Vec::new(),
    };
    let (done, _) = g.leader.run_batch(vec![job]).pop().unwrap();
    let error = format!("{:#}", done.output.unwrap_err());
    assert!(error.contains("another-model"), "{error}");
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    assert_eq!(g.hub.boxes(), 0, "the leader's box left behind");
    // The follower gave the batch up before the leader heard of it.
    let follower = &g._followers[0].1;
    assert_eq!(follower.stats.aborted.load(Ordering::Relaxed), 1);
    assert_eq!(follower.stats.batches_followed.load(Ordering::Relaxed), 1);
}

//! The node service's protobuf messages, decoded from arbitrary bytes with prost and run
//! through `NodeService` (the same checks a server runs on every call), and tensors from
//! wire form to engine form (`decode_tensor`, `decode_hidden`).

use exo::engine::HiddenState;
use exo::proto::{decode_hidden, decode_tensor, encode_hidden, pb};
use exo::server::NodeService;
use pb::node_server::Node;
use proptest::prelude::*;
use prost::Message;
use std::sync::Arc;

use tonic::{Code, Request, Status};

use super::harness::{Mutation, block_on, edge_u64, fuzz, mutate, mutations};
use crate::support::stand_in::StandIn;

/// The node the messages are for: the shared stand-in, which checks that what it gets
/// is what the service promises (a plan that includes this node, tensors of the right
/// size) and counts it — a target whose inputs never get past the checks would test only
/// the refusals.
const NODE: &str = "n1";

fn small_text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(NODE.to_string()),
        Just("n2".to_string()),
        Just("n3".to_string()),
        Just(String::new()),
        "[a-z0-9:.]{0,12}",
    ]
}

fn entry() -> impl Strategy<Value = pb::PartitionEntry> {
    (small_text(), small_text(), 0..40u32, 0..40u32).prop_map(|(node_id, address, s, e)| {
        pb::PartitionEntry {
            node_id,
            address,
            start_layer: s,
            followers: Vec::new(),
            end_layer: e,
        }
    })
}

/// Plans: mostly chains over n1..n3 (valid or nearly), sometimes anything.
pub fn wire_plan() -> impl Strategy<Value = pb::PartitionPlan> {
    let valid = (
        1..40u32,
        proptest::sample::subsequence(vec!["n1", "n2", "n3"], 1..=3),
    )
        .prop_flat_map(|(n_layers, nodes)| {
            let k = nodes.len() as u32;
            let n_layers = n_layers.max(k);
            (
                Just(n_layers),
                Just(nodes),
                proptest::collection::vec(1..n_layers.max(2), k as usize - 1),
            )
        })
        .prop_map(|(n_layers, nodes, mut cuts)| {
            cuts.sort();
            cuts.dedup();
            let mut bounds = vec![0];
            bounds.extend(cuts);
            bounds.push(n_layers);
            let entries = nodes
                .iter()
                .zip(bounds.windows(2))
                .map(|(id, w)| pb::PartitionEntry {
                    node_id: id.to_string(),
                    address: format!("127.0.0.1:{}", 50000 + w[0]),
                    start_layer: w[0],
                    followers: Vec::new(),
                    end_layer: w[1],
                })
                .collect();
            pb::PartitionPlan {
                model_id: "m".into(),
                n_layers,
                entries,
            }
        });
    let any_plan = (
        small_text(),
        prop_oneof![0..64u32, any::<u32>()],
        proptest::collection::vec(entry(), 0..6),
    )
        .prop_map(|(model_id, n_layers, entries)| pb::PartitionPlan {
            model_id,
            n_layers,
            entries,
        });
    prop_oneof![3 => valid, 1 => any_plan]
}

fn sampling() -> impl Strategy<Value = pb::SamplingParams> {
    let float = prop_oneof![
        Just(0.0f32),
        Just(1.0),
        Just(-1.0),
        Just(f32::NAN),
        Just(f32::INFINITY),
        Just(f32::MIN_POSITIVE),
        any::<f32>(),
        0.0f32..2.0
    ];
    (
        float.clone(),
        float,
        any::<u32>(),
        proptest::option::of(any::<u64>()),
    )
        .prop_map(|(temperature, top_p, top_k, seed)| pb::SamplingParams {
            temperature,
            top_p,
            top_k,
            seed,
        })
}

prop_compose! {
    fn context()(
        request_id in small_text(),
        origin_node_id in small_text(),
        origin_address in small_text(),
        plan in proptest::option::of(wire_plan()),
        sampling in proptest::option::of(sampling()),
        position in any::<u32>(),
        step in any::<u64>(),
        sample in any::<bool>(),
        reserve_positions in any::<u32>(),
        (token_index, top_logprobs) in (any::<u64>(), proptest::option::of(any::<u32>())),
        // The prefix cache's blocks and a constraint: mostly none, sometimes junk.
        prefix_blocks in prop_oneof![
            4 => Just(Vec::new()),
            1 => proptest::collection::vec(any::<u64>(), 0..4),
        ],
        (constrained, grammar, constrained_tokens) in prop_oneof![
            4 => Just((false, String::new(), Vec::new())),
            1 => (
                any::<bool>(),
                small_text(),
                proptest::collection::vec(any::<u32>(), 0..4),
            ),
        ],
    ) -> pb::RequestContext {
        pb::RequestContext {
            prefix_blocks,
            constrained,
            grammar,
            constrained_tokens,
            request_id,
            origin_node_id,
            origin_address,
            plan,
            sampling,
            position,
            step,
            sample,
            reserve_positions,
            token_index,
            top_logprobs,
        }
    }
}

/// Tensors: mostly consistent (data matches dtype × shape), sometimes not.
pub fn wire_tensor() -> impl Strategy<Value = pb::Tensor> {
    let dims = proptest::collection::vec(prop_oneof![4 => 0..9u64, 1 => edge_u64()], 0..5);
    let dtype = prop_oneof![1..=3i32, any::<i32>()];
    (
        dtype,
        dims,
        any::<bool>(),
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(dtype, shape, consistent, junk)| {
            let size = match dtype {
                1 => 4u64,
                2 | 3 => 2,
                _ => 1,
            };
            let elements = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
            let data = match elements.and_then(|n| n.checked_mul(size)) {
                Some(n) if consistent && n <= 4096 => {
                    (0..n).map(|i| (i * 37 % 251) as u8).collect()
                }
                _ => junk,
            };
            pb::Tensor {
                data: data.into(),
                dtype,
                shape,
            }
        })
}

fn step_item() -> impl Strategy<Value = pb::StepItem> {
    let input = prop_oneof![
        Just(None),
        proptest::collection::vec(any::<u32>(), 0..8)
            .prop_map(|tokens| Some(pb::step_item::Input::Tokens(pb::TokenList { tokens }))),
        wire_tensor().prop_map(|t| Some(pb::step_item::Input::Tensor(t))),
    ];
    (proptest::option::of(context()), input)
        .prop_map(|(context, input)| pb::StepItem { context, input })
}

fn result_item() -> impl Strategy<Value = pb::ResultItem> {
    let outcome = prop_oneof![
        Just(None),
        any::<u32>().prop_map(|t| Some(pb::result_item::Outcome::Token(t))),
        small_text().prop_map(|e| Some(pb::result_item::Outcome::Error(e))),
        any::<bool>().prop_map(|d| Some(pb::result_item::Outcome::Done(d))),
    ];
    // Logprobs as a shard sends them, or not: any count of alternatives, lists of
    // different lengths, any floats.
    let logprobs = proptest::option::of(
        (
            any::<f32>(),
            proptest::collection::vec(any::<u32>(), 0..40),
            proptest::collection::vec(any::<f32>(), 0..40),
        )
            .prop_map(|(logprob, top_tokens, top_logprobs)| pb::TokenLogprobs {
                logprob,
                top_tokens,
                top_logprobs,
            }),
    );
    (
        proptest::option::of(context()),
        outcome,
        small_text(),
        logprobs,
    )
        .prop_map(|(context, outcome, node_id, logprobs)| pb::ResultItem {
            context,
            outcome,
            node_id,
            logprobs,
        })
}

/// A call's answer: OK with one error string per item, or a status a client can read.
fn check_ack(
    items: usize,
    answer: Result<tonic::Response<pb::BatchAck>, Status>,
) -> Result<(), TestCaseError> {
    match answer {
        Ok(ack) => prop_assert_eq!(ack.into_inner().errors.len(), items),
        Err(status) => {
            prop_assert_eq!(status.code(), Code::InvalidArgument);
            prop_assert!(!status.message().is_empty());
        }
    }
    Ok(())
}

/// Decodes `bytes` as each message the service takes and runs what decodes through it.
fn serve_bytes(service: &NodeService, bytes: &[u8]) -> Result<(), TestCaseError> {
    block_on(async {
        if let Ok(batch) = pb::StepBatch::decode(bytes) {
            let items = batch.items.len();
            check_ack(items, service.send_steps(Request::new(batch)).await)?;
        }
        if let Ok(batch) = pb::ResultBatch::decode(bytes) {
            let items = batch.items.len();
            check_ack(items, service.send_results(Request::new(batch)).await)?;
        }
        if let Ok(message) = pb::StatusMessage::decode(bytes) {
            let _ = service.send_status(Request::new(message)).await;
        }
        if let Ok(message) = pb::FinishRequestMessage::decode(bytes) {
            let _ = service.finish_request(Request::new(message)).await;
        }
        if let Ok(message) = pb::WeightRequest::decode(bytes) {
            let _ = service.fetch_weights(Request::new(message)).await;
        }
        let _ = pb::TopologyResponse::decode(bytes);
        let _ = pb::HealthCheckResponse::decode(bytes);
        let _ = pb::WeightChunk::decode(bytes);
        Ok(())
    })
}

#[test]
fn arbitrary_bytes_as_any_message_never_panic() {
    let service = NodeService::new(Arc::new(StandIn::new(NODE)));
    fuzz(
        "wire/arbitrary-bytes",
        proptest::collection::vec(any::<u8>(), 0..4096),
        |bytes| serve_bytes(&service, &bytes),
    );
}

/// Encodes `batch`, checks that decoding and encoding again gives the same bytes (byte for
/// byte: floats may be NaN, which no == would call equal), then serves the bytes, mutated
/// by `mutations` when given.
fn round_trip_and_serve<M: Message + Default>(
    service: &NodeService,
    batch: &M,
    mutations: Option<&[Mutation]>,
) -> Result<(), TestCaseError> {
    let bytes = batch.encode_to_vec();
    prop_assert_eq!(
        M::decode(bytes.as_slice()).unwrap().encode_to_vec(),
        bytes.clone()
    );
    let bytes = match mutations {
        Some(mutations) => mutate(&bytes, mutations),
        None => bytes,
    };
    serve_bytes(service, &bytes)
}

#[test]
fn step_batches_encode_decode_and_serve_without_panic() {
    let node = Arc::new(StandIn::new(NODE));
    let service = NodeService::new(node.clone());
    fuzz(
        "wire/step-batches",
        (
            proptest::collection::vec(step_item(), 0..6),
            mutations(4),
            any::<bool>(),
        ),
        |(items, mutations, mutate_it)| {
            let batch = pb::StepBatch { items };
            round_trip_and_serve(&service, &batch, mutate_it.then_some(mutations.as_slice()))
        },
    );
    assert!(node.taken().0 > 0, "no step ever passed the checks");
}

#[test]
fn result_batches_encode_decode_and_serve_without_panic() {
    let node = Arc::new(StandIn::new(NODE));
    let service = NodeService::new(node.clone());
    fuzz(
        "wire/result-batches",
        (
            proptest::collection::vec(result_item(), 0..6),
            mutations(4),
            any::<bool>(),
        ),
        |(items, mutations, mutate_it)| {
            let batch = pb::ResultBatch { items };
            round_trip_and_serve(&service, &batch, mutate_it.then_some(mutations.as_slice()))
        },
    );
    assert!(node.taken().1 > 0, "no result ever passed the checks");
}

#[test]
fn tensors_from_the_wire_decode_or_refuse() {
    fuzz("wire/tensors", wire_tensor(), |wire| {
        let size = match wire.dtype {
            1 => Some(4u64),
            2 | 3 => Some(2),
            _ => None,
        };
        let elements = wire
            .shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .filter(|&n| n > 0);
        let consistent = !wire.shape.is_empty()
            && wire.shape.len() <= 8
            && matches!((size, elements), (Some(s), Some(n)) if n.checked_mul(s) == Some(wire.data.len() as u64));
        let tensor = decode_tensor(&wire, &candle_core::Device::Cpu);
        prop_assert_eq!(tensor.is_ok(), consistent, "{:?}", tensor.as_ref().err());
        if let Ok(tensor) = tensor {
            let dims: Vec<u64> = tensor.dims().iter().map(|&d| d as u64).collect();
            prop_assert_eq!(dims, wire.shape.clone());
        }
        if let Ok(hidden) = decode_hidden(&wire) {
            prop_assert_eq!(hidden.data.len(), hidden.rows * hidden.cols);
        }
        Ok(())
    });
}

#[test]
fn hidden_states_round_trip_bit_for_bit() {
    let hidden = (1..5usize, 1..9usize).prop_flat_map(|(rows, cols)| {
        proptest::collection::vec(any::<u32>(), rows * cols).prop_map(move |bits| HiddenState {
            data: bits.into_iter().map(f32::from_bits).collect(),
            rows,
            cols,
        })
    });
    fuzz("wire/hidden-round-trip", hidden, |hidden| {
        let wire = encode_hidden(&hidden);
        let bytes = wire.encode_to_vec();
        let back = decode_hidden(&pb::Tensor::decode(bytes.as_slice()).unwrap()).unwrap();
        prop_assert_eq!((back.rows, back.cols), (hidden.rows, hidden.cols));
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        prop_assert_eq!(bits(&back.data), bits(&hidden.data));
        Ok(())
    });
}

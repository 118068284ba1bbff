//! Partition plans from the wire (`Partition::from_wire`): a plan arrives with every step
//! from another node and decides where hidden states and tokens go.

use exo::proto::pb;
use exo::topology::{MAX_PLAN_ENTRIES, NodeWeight, Partition, plan_partition};
use proptest::prelude::*;
use prost::Message;

use super::harness::{fuzz, mutate, mutations};
use super::wire::wire_plan;

#[test]
fn plans_from_the_wire_are_accepted_only_when_they_chain() {
    fuzz("plan/from-wire", wire_plan(), |wire| {
        match Partition::from_wire(&wire) {
            Ok(plan) => {
                prop_assert!(plan.validate().is_ok());
                prop_assert!(plan.entries.len() <= MAX_PLAN_ENTRIES);
                // The first entry starts at 0, the last ends at n_layers, no gaps, no node twice.
                prop_assert_eq!(plan.entries[0].start_layer, 0);
                prop_assert_eq!(plan.entries.last().unwrap().end_layer, plan.n_layers);
                prop_assert_eq!(plan.to_wire(), wire);
            }
            Err(error) => {
                let message = format!("{:#}", error);
                prop_assert!(!message.is_empty())
            }
        }
        Ok(())
    });
}

#[test]
fn mutated_plan_bytes_never_panic() {
    fuzz(
        "plan/mutated-bytes",
        (wire_plan(), mutations(6)),
        |(wire, mutations)| {
            let bytes = mutate(&wire.encode_to_vec(), &mutations);
            if let Ok(decoded) = pb::PartitionPlan::decode(bytes.as_slice())
                && let Ok(plan) = Partition::from_wire(&decoded)
            {
                prop_assert!(plan.validate().is_ok());
            }
            Ok(())
        },
    );
}

#[test]
fn oversized_plans_are_refused_before_they_are_walked() {
    let many = (MAX_PLAN_ENTRIES + 1..MAX_PLAN_ENTRIES * 4).prop_map(|n| pb::PartitionPlan {
        model_id: "m".into(),
        n_layers: n as u32,
        entries: (0..n)
            .map(|i| pb::PartitionEntry {
                node_id: format!("n{i}"),
                address: "127.0.0.1:1".into(),
                start_layer: i as u32,
                followers: Vec::new(),
                end_layer: i as u32 + 1,
            })
            .collect(),
    });
    fuzz("plan/oversized", many, |wire| {
        prop_assert!(Partition::from_wire(&wire).is_err());
        Ok(())
    });
}

/// What the planner makes, the wire carries unchanged and every node accepts.
#[test]
fn planned_partitions_round_trip_through_the_wire() {
    let nodes = proptest::collection::vec(1u64..1 << 40, 1..8).prop_map(|memories| {
        memories
            .into_iter()
            .enumerate()
            .map(|(i, memory_bytes)| NodeWeight {
                node_id: format!("node-{i}"),
                address: format!("10.0.0.{i}:50051"),
                memory_bytes,
            })
            .collect::<Vec<_>>()
    });
    fuzz(
        "plan/planned-round-trip",
        (nodes, 1usize..200),
        |(nodes, n_layers)| {
            if let Ok(plan) = plan_partition("m", n_layers, &nodes) {
                let bytes = plan.to_wire().encode_to_vec();
                let back =
                    Partition::from_wire(&pb::PartitionPlan::decode(bytes.as_slice()).unwrap());
                prop_assert_eq!(back.ok(), Some(plan));
            }
            Ok(())
        },
    );
}

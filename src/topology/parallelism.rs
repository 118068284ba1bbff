//! How a plan splits a model: by layers among a ring of nodes (pipeline), or within the
//! layers among the members of a tensor-parallel group (DESIGN.md §3b), and the plan of a
//! group.

use std::fmt;

use anyhow::bail;
use serde::{Deserialize, Serialize};

use super::partition::{GroupMember, NodeWeight, Partition, PartitionEntry, plan_partition};
use crate::engine::ModelMemory;

/// How a node (`exo node --parallelism`) or one request splits the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parallelism {
    /// The node chooses. Until link latency is measured (issue 22), it chooses pipeline:
    /// the choice that is never slower than one node by more than a ring's hops.
    Auto,
    /// Layers split among a ring of nodes: more nodes hold bigger models.
    #[default]
    Pipeline,
    /// Every layer split among a group of two nodes, joined by group links.
    Tensor,
}

impl Parallelism {
    pub fn name(self) -> &'static str {
        match self {
            Parallelism::Auto => "auto",
            Parallelism::Pipeline => "pipeline",
            Parallelism::Tensor => "tensor",
        }
    }

    pub fn parse(name: &str) -> anyhow::Result<Self> {
        match name {
            "auto" => Ok(Parallelism::Auto),
            "pipeline" => Ok(Parallelism::Pipeline),
            "tensor" => Ok(Parallelism::Tensor),
            other => bail!("unknown parallelism {other:?} (auto, pipeline or tensor)"),
        }
    }

    /// What `self` comes to, and why: `auto` is pipeline until links are measured.
    pub fn chosen(self) -> (Parallelism, &'static str) {
        match self {
            Parallelism::Auto => (
                Parallelism::Pipeline,
                "auto: link latency is not measured yet, so pipeline (never slower than one \
                 node by more than a ring's hops)",
            ),
            Parallelism::Pipeline => (Parallelism::Pipeline, "pipeline: asked for"),
            Parallelism::Tensor => (Parallelism::Tensor, "tensor: asked for"),
        }
    }
}

impl fmt::Display for Parallelism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Parallelism {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        Parallelism::parse(s)
    }
}

/// A node that may join a tensor-parallel group: as the partitioner sees it, and where its
/// group links listen (None: it has none).
#[derive(Debug, Clone)]
pub struct GroupCandidate {
    pub node: NodeWeight,
    pub link_address: Option<String>,
}

/// Plans a tensor-parallel pair over all `n_layers`: the two nodes with group links that
/// come first in ring order (most memory first, ties by node id, as [`plan_partition`]),
/// the first leading. Each member holds half of every layer, so each must have free
/// memory for half the model (`need`). None (with why) when no such pair exists: the
/// caller plans a pipeline instead.
///
/// Only pairs: members of a larger group also need links between followers, which nodes
/// do not open yet.
pub fn plan_tensor_pair(
    model_id: &str,
    n_layers: usize,
    candidates: &[GroupCandidate],
    need: ModelMemory,
) -> Result<Partition, String> {
    let half = need.total().div_ceil(2);
    let mut fitting: Vec<&GroupCandidate> = candidates
        .iter()
        .filter(|c| c.link_address.is_some() && c.node.memory_bytes >= half)
        .collect();
    fitting.sort_by(|a, b| {
        b.node
            .memory_bytes
            .cmp(&a.node.memory_bytes)
            .then_with(|| a.node.node_id.cmp(&b.node.node_id))
    });
    fitting.dedup_by(|a, b| a.node.node_id == b.node.node_id);
    let [leader, follower, ..] = fitting.as_slice() else {
        return Err(format!(
            "tensor: {} node(s) with group links and half the model's {} MB free; a pair needs two",
            fitting.len(),
            need.total() / 1_000_000
        ));
    };
    let mut plan = plan_partition(model_id, n_layers, std::slice::from_ref(&leader.node))
        .map_err(|e| format!("{e:#}"))?;
    plan.entries[0].followers.push(GroupMember {
        node_id: follower.node.node_id.clone(),
        link_address: follower.link_address.clone().unwrap_or_default(),
    });
    plan.validate().map_err(|e| format!("{e:#}"))?;
    Ok(plan)
}

/// The group of `entry` in words: "a+b[0,24)".
pub fn describe_entry(entry: &PartitionEntry) -> String {
    let members: Vec<&str> = entry.members().collect();
    format!(
        "{}[{},{})",
        members.join("+"),
        entry.start_layer,
        entry.end_layer
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(id: &str, mb: u64, links: bool) -> GroupCandidate {
        GroupCandidate {
            node: NodeWeight {
                node_id: id.into(),
                address: format!("{id}:1"),
                memory_bytes: mb * 1_000_000,
            },
            link_address: links.then(|| format!("{id}:2")),
        }
    }

    /// A model of 200 MB in all: 150 of weights, 50 of KV reserve.
    const MODEL_200_MB: ModelMemory = ModelMemory {
        weights: 150_000_000,
        kv_reserve: 50_000_000,
        reserve_tokens: 1024,
    };

    #[test]
    fn a_pair_leads_with_the_most_memory_and_covers_every_layer() {
        let nodes = [candidate("a", 100, true), candidate("b", 300, true)];
        let plan = plan_tensor_pair("m", 24, &nodes, MODEL_200_MB).unwrap();
        assert_eq!(plan.entries.len(), 1);
        assert_eq!(describe_entry(&plan.entries[0]), "b+a[0,24)");
        assert_eq!(plan.entries[0].followers[0].link_address, "a:2");
        assert_eq!(plan.nodes().collect::<Vec<_>>(), ["b", "a"]);
    }

    #[test]
    fn no_pair_without_links_or_room_for_half_the_model() {
        let nodes = [candidate("a", 100, false), candidate("b", 300, true)];
        assert!(plan_tensor_pair("m", 24, &nodes, MODEL_200_MB).is_err());
        let nodes = [candidate("a", 50, true), candidate("b", 300, true)];
        assert!(plan_tensor_pair("m", 24, &nodes, MODEL_200_MB).is_err());
    }

    #[test]
    fn auto_is_pipeline_until_links_are_measured() {
        assert_eq!(Parallelism::Auto.chosen().0, Parallelism::Pipeline);
        assert_eq!(Parallelism::parse("tensor").unwrap(), Parallelism::Tensor);
        assert!(Parallelism::parse("both").is_err());
    }
}

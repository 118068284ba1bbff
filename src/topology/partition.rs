//! Splitting a model's layers among the nodes of a ring, in proportion to their memory.

use anyhow::bail;
use serde::{Deserialize, Serialize};

use crate::engine::ModelMemory;

/// A node as the partitioner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeWeight {
    pub node_id: String,
    /// host:port of its gRPC server.
    pub address: String,
    /// The memory its share is proportional to.
    pub memory_bytes: u64,
}

/// One node's layers `[start_layer, end_layer)`; with `followers`, a tensor-parallel
/// group's: `node_id` leads it (steps go to it) and the followers hold slices of the same
/// layers (DESIGN.md §3b).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionEntry {
    pub node_id: String,
    pub address: String,
    pub start_layer: usize,
    pub end_layer: usize,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub followers: Vec<GroupMember>,
}

/// A follower of a tensor-parallel group in a plan: its node id, and where its group
/// links listen (host:port).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMember {
    pub node_id: String,
    pub link_address: String,
}

impl PartitionEntry {
    /// The entry's nodes: its leader, then its followers.
    pub fn members(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.node_id.as_str())
            .chain(self.followers.iter().map(|f| f.node_id.as_str()))
    }
}

/// Which node runs which layers, in ring order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    pub model_id: String,
    pub n_layers: usize,
    pub entries: Vec<PartitionEntry>,
}

impl Partition {
    /// Every node of the plan: each entry's leader and followers, in ring order.
    pub fn nodes(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().flat_map(PartitionEntry::members)
    }

    /// Whether an entry is a tensor-parallel group.
    pub fn has_groups(&self) -> bool {
        self.entries.iter().any(|e| !e.followers.is_empty())
    }

    /// The entry of `node_id`, if the node leads one (a follower has no entry of its own).
    pub fn entry(&self, node_id: &str) -> Option<(usize, &PartitionEntry)> {
        self.entries
            .iter()
            .enumerate()
            .find(|(_, e)| e.node_id == node_id)
    }

    /// The entry after `index` in the ring (None after the last shard).
    pub fn next(&self, index: usize) -> Option<&PartitionEntry> {
        self.entries.get(index + 1)
    }

    /// Checks the plan: entries chain from layer 0 to the last layer, none empty, no node
    /// twice. Plans arrive from other nodes, so nothing is taken on trust.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.entries.is_empty() {
            bail!("the partition plan has no nodes");
        }
        // Every entry holds at least one layer: more entries than layers cannot chain (and
        // are not worth checking one by one).
        if self.entries.len() > self.n_layers {
            bail!(
                "the partition plan has {} entries for {} layers",
                self.entries.len(),
                self.n_layers
            );
        }
        let mut seen = std::collections::HashSet::new();
        let mut next = 0;
        for (i, entry) in self.entries.iter().enumerate() {
            if entry.start_layer != next || entry.end_layer <= entry.start_layer {
                bail!(
                    "the partition plan does not chain: entry {i} ({}) has layers [{}, {}) after layer {next}",
                    entry.node_id,
                    entry.start_layer,
                    entry.end_layer
                );
            }
            if entry.followers.len() >= MAX_GROUP_MEMBERS {
                bail!(
                    "entry {i} ({}) has {} followers; a group has at most {MAX_GROUP_MEMBERS} members",
                    entry.node_id,
                    entry.followers.len()
                );
            }
            for node in entry.members() {
                if !seen.insert(node) {
                    bail!("the partition plan names node {node} twice");
                }
            }
            next = entry.end_layer;
        }
        if next != self.n_layers {
            bail!(
                "the partition plan covers {next} of {} layers",
                self.n_layers
            );
        }
        Ok(())
    }
}

/// The most entries (nodes) a plan from the wire may have: far above any real ring, and
/// a bound on what one message can make a node check and keep.
pub const MAX_PLAN_ENTRIES: usize = 256;

/// The most members of one tensor-parallel group (Qwen2.5-0.5B splits among 19 at most;
/// every member adds two all-reduces' latency to each layer).
pub const MAX_GROUP_MEMBERS: usize = 16;

/// Plans a partition of `n_layers` over `nodes`.
///
/// - Ring order: by memory, largest first, ties broken by node id, so every node that
///   computes the plan from the same view gets the same ring.
/// - Each node gets layers in proportion to its memory (largest-remainder rounding,
///   remainders tied by ring order), and at least one layer: never an empty shard.
/// - With more nodes than layers, the nodes with the least memory are left out.
pub fn plan_partition(
    model_id: &str,
    n_layers: usize,
    nodes: &[NodeWeight],
) -> anyhow::Result<Partition> {
    if n_layers == 0 {
        bail!("model {model_id} has no layers to partition");
    }
    if nodes.is_empty() {
        bail!("no nodes to run model {model_id} on");
    }
    let mut ring: Vec<&NodeWeight> = nodes.iter().collect();
    ring.sort_by(|a, b| {
        b.memory_bytes
            .cmp(&a.memory_bytes)
            .then_with(|| a.node_id.cmp(&b.node_id))
    });
    ring.dedup_by(|a, b| a.node_id == b.node_id);
    ring.truncate(n_layers);

    // Every node starts with one layer; the rest are shared by memory.
    let spare = (n_layers - ring.len()) as u128;
    let total: u128 = ring.iter().map(|n| u128::from(n.memory_bytes.max(1))).sum();
    let mut counts: Vec<usize> = Vec::with_capacity(ring.len());
    let mut remainders: Vec<(u128, usize)> = Vec::with_capacity(ring.len());
    for (i, node) in ring.iter().enumerate() {
        let share = spare * u128::from(node.memory_bytes.max(1));
        counts.push(1 + (share / total) as usize);
        remainders.push((share % total, i));
    }
    let assigned: usize = counts.iter().sum();
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, i) in remainders.iter().take(n_layers - assigned) {
        counts[i] += 1;
    }

    let mut start = 0;
    let entries = ring
        .iter()
        .zip(counts)
        .map(|(node, count)| {
            let entry = PartitionEntry {
                node_id: node.node_id.clone(),
                address: node.address.clone(),
                start_layer: start,
                end_layer: start + count,
                followers: Vec::new(),
            };
            start += count;
            entry
        })
        .collect();
    let partition = Partition {
        model_id: model_id.to_string(),
        n_layers,
        entries,
    };
    partition.validate()?;
    Ok(partition)
}

/// Plans a partition of `n_layers` over `nodes` whose `memory_bytes` is what each has
/// free for the model: as [`plan_partition`], but no node is given more layers than its
/// free memory holds (its share of the weights and of the KV reserve), and a cluster that
/// cannot hold the model is refused with the shortfall named — before anything loads or
/// downloads. A node too small for a single layer is left out.
pub fn plan_partition_fitting(
    model_id: &str,
    n_layers: usize,
    nodes: &[NodeWeight],
    need: ModelMemory,
) -> anyhow::Result<Partition> {
    if n_layers == 0 {
        bail!("model {model_id} has no layers to partition");
    }
    let per_layer = need.total().div_ceil(n_layers as u64).max(1);
    let capacity = |n: &NodeWeight| ((n.memory_bytes / per_layer) as usize).min(n_layers);
    let fitting: Vec<NodeWeight> = nodes.iter().filter(|n| capacity(n) > 0).cloned().collect();
    let holds: usize = fitting.iter().map(capacity).sum();
    if holds < n_layers {
        let free: u64 = nodes.iter().map(|n| n.memory_bytes).sum();
        let short = (n_layers - holds) as u64 * per_layer;
        let each: Vec<String> = nodes
            .iter()
            .map(|n| format!("{} {}", n.node_id, megabytes(n.memory_bytes)))
            .collect();
        bail!(
            "the cluster is too small for model {model_id}: it needs {} (weights {} + KV reserve \
             {} for {} tokens), and its {} node(s) have {} free ({}); short by {} — add a node \
             or pick a smaller model (`exo models list`)",
            megabytes(need.total()),
            megabytes(need.weights),
            megabytes(need.kv_reserve),
            need.reserve_tokens,
            nodes.len(),
            megabytes(free),
            each.join(", "),
            megabytes(short.max(need.total().saturating_sub(free)))
        );
    }
    let mut plan = plan_partition(model_id, n_layers, &fitting)?;
    // Proportional shares can round a small node past what it holds: move the excess to
    // the nodes with room, in ring order.
    let caps: Vec<usize> = plan
        .entries
        .iter()
        .map(|e| {
            fitting
                .iter()
                .find(|n| n.node_id == e.node_id)
                .map_or(0, capacity)
        })
        .collect();
    let mut counts: Vec<usize> = plan
        .entries
        .iter()
        .map(|e| e.end_layer - e.start_layer)
        .collect();
    let mut excess = 0;
    for (count, cap) in counts.iter_mut().zip(&caps) {
        if *count > *cap {
            excess += *count - *cap;
            *count = *cap;
        }
    }
    for (count, cap) in counts.iter_mut().zip(&caps) {
        let room = cap.saturating_sub(*count).min(excess);
        *count += room;
        excess -= room;
    }
    let mut start = 0;
    for (entry, count) in plan.entries.iter_mut().zip(counts) {
        entry.start_layer = start;
        entry.end_layer = start + count;
        start += count;
    }
    plan.entries.retain(|e| e.end_layer > e.start_layer);
    plan.validate()?;
    Ok(plan)
}

fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn need(total_mb: u64) -> ModelMemory {
        ModelMemory {
            weights: total_mb * 1_000_000 / 2,
            kv_reserve: total_mb * 1_000_000 / 2,
            reserve_tokens: 4096,
        }
    }

    fn mb(id: &str, megabytes: u64) -> NodeWeight {
        NodeWeight {
            node_id: id.into(),
            address: format!("{id}:1"),
            memory_bytes: megabytes * 1_000_000,
        }
    }

    #[test]
    fn a_cluster_too_small_is_refused_with_the_shortfall() {
        let error = plan_partition_fitting("m", 30, &[mb("a", 50), mb("b", 50)], need(300))
            .unwrap_err()
            .to_string();
        assert!(error.contains("too small for model m"), "{error}");
        assert!(error.contains("needs 300.0 MB"), "{error}");
        assert!(
            error.contains("have 100.0 MB free (a 50.0 MB, b 50.0 MB)"),
            "{error}"
        );
        assert!(error.contains("short by 200.0 MB"), "{error}");
    }

    #[test]
    fn no_node_gets_more_layers_than_its_free_memory_holds() {
        // 10 layers of 10 MB: proportional rounding would give "a" 2 layers; it holds 1.
        let p = plan_partition_fitting("m", 10, &[mb("a", 19), mb("b", 95)], need(100)).unwrap();
        assert_eq!(layers(&p), vec![("b".into(), 9), ("a".into(), 1)]);
        // A node that cannot hold one layer is left out.
        let p =
            plan_partition_fitting("m", 30, &[mb("big", 400), mb("tiny", 5)], need(300)).unwrap();
        assert_eq!(layers(&p), vec![("big".into(), 30)]);
        // Exactly enough, spread over three.
        let p = plan_partition_fitting(
            "m",
            30,
            &[mb("a", 100), mb("b", 100), mb("c", 100)],
            need(300),
        )
        .unwrap();
        assert_eq!(
            layers(&p),
            vec![("a".into(), 10), ("b".into(), 10), ("c".into(), 10)]
        );
    }

    fn node(id: &str, gib: u64) -> NodeWeight {
        NodeWeight {
            node_id: id.into(),
            address: format!("{id}:1"),
            memory_bytes: gib << 30,
        }
    }

    fn layers(p: &Partition) -> Vec<(String, usize)> {
        p.entries
            .iter()
            .map(|e| (e.node_id.clone(), e.end_layer - e.start_layer))
            .collect()
    }

    #[test]
    fn equal_memory_splits_evenly_and_ties_break_by_node_id() {
        let p = plan_partition("m", 30, &[node("c", 8), node("a", 8), node("b", 8)]).unwrap();
        assert_eq!(
            layers(&p),
            vec![("a".into(), 10), ("b".into(), 10), ("c".into(), 10)]
        );
        assert_eq!(p.entries[1].start_layer, 10);
    }

    #[test]
    fn memory_decides_the_share_with_largest_remainder_rounding() {
        // 64 : 32 : 16 GiB over 30 layers: 3 + 27 spare → shares 15.43, 7.71, 3.86.
        let p = plan_partition(
            "m",
            30,
            &[node("small", 16), node("big", 64), node("mid", 32)],
        )
        .unwrap();
        assert_eq!(
            layers(&p),
            vec![("big".into(), 16), ("mid".into(), 9), ("small".into(), 5)]
        );
        assert_eq!(
            p.entries
                .iter()
                .map(|e| e.end_layer - e.start_layer)
                .sum::<usize>(),
            30
        );
    }

    #[test]
    fn rounding_ties_go_to_the_earlier_node_in_the_ring() {
        let p = plan_partition("m", 5, &[node("b", 4), node("a", 4)]).unwrap();
        assert_eq!(layers(&p), vec![("a".into(), 3), ("b".into(), 2)]);
    }

    #[test]
    fn no_shard_is_ever_empty() {
        let p = plan_partition(
            "m",
            4,
            &[node("huge", 1000), node("tiny1", 1), node("tiny2", 1)],
        )
        .unwrap();
        assert!(p.entries.iter().all(|e| e.end_layer > e.start_layer));
        assert_eq!(
            layers(&p),
            vec![("huge".into(), 2), ("tiny1".into(), 1), ("tiny2".into(), 1)]
        );
        // More nodes than layers: the smallest are left out.
        let p = plan_partition("m", 2, &[node("a", 1), node("b", 3), node("c", 2)]).unwrap();
        assert_eq!(layers(&p), vec![("b".into(), 1), ("c".into(), 1)]);
    }

    #[test]
    fn the_plan_is_deterministic_whatever_the_input_order() {
        let nodes = [node("x", 3), node("y", 5), node("z", 3), node("w", 7)];
        let p1 = plan_partition("m", 30, &nodes).unwrap();
        let mut reversed = nodes.to_vec();
        reversed.reverse();
        assert_eq!(p1, plan_partition("m", 30, &reversed).unwrap());
    }

    #[test]
    fn plans_are_validated() {
        assert!(plan_partition("m", 0, &[node("a", 1)]).is_err());
        assert!(plan_partition("m", 3, &[]).is_err());
        let mut p = plan_partition("m", 10, &[node("a", 1), node("b", 1)]).unwrap();
        p.entries[1].start_layer = 6;
        assert!(
            p.validate()
                .unwrap_err()
                .to_string()
                .contains("does not chain")
        );
        let mut p = plan_partition("m", 10, &[node("a", 1), node("b", 1)]).unwrap();
        p.entries[1].node_id = "a".into();
        assert!(p.validate().unwrap_err().to_string().contains("twice"));
        let mut p = plan_partition("m", 2, &[node("a", 1), node("b", 1)]).unwrap();
        p.entries.push(p.entries[1].clone());
        assert!(
            p.validate()
                .unwrap_err()
                .to_string()
                .contains("3 entries for 2 layers")
        );
    }
}

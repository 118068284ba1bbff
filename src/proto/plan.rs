//! Partition plans on the wire, both ways: a plan arrives with every step, so the one from
//! the wire is checked whole (`Partition::validate`) and bounded in size.

use anyhow::bail;

use super::pb;
use crate::topology::{GroupMember, MAX_PLAN_ENTRIES, Partition, PartitionEntry};

impl Partition {
    pub fn to_wire(&self) -> pb::PartitionPlan {
        pb::PartitionPlan {
            model_id: self.model_id.clone(),
            n_layers: self.n_layers as u32,
            entries: self
                .entries
                .iter()
                .map(|e| pb::PartitionEntry {
                    node_id: e.node_id.clone(),
                    address: e.address.clone(),
                    start_layer: e.start_layer as u32,
                    end_layer: e.end_layer as u32,
                    followers: e
                        .followers
                        .iter()
                        .map(|f| pb::GroupMember {
                            node_id: f.node_id.clone(),
                            link_address: f.link_address.clone(),
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    pub fn from_wire(wire: &pb::PartitionPlan) -> anyhow::Result<Self> {
        if wire.entries.len() > MAX_PLAN_ENTRIES {
            bail!(
                "the plan has {} entries; at most {MAX_PLAN_ENTRIES} are accepted",
                wire.entries.len()
            );
        }
        let plan = Partition {
            model_id: wire.model_id.clone(),
            n_layers: wire.n_layers as usize,
            entries: wire
                .entries
                .iter()
                .map(|e| PartitionEntry {
                    node_id: e.node_id.clone(),
                    address: e.address.clone(),
                    start_layer: e.start_layer as usize,
                    end_layer: e.end_layer as usize,
                    followers: e
                        .followers
                        .iter()
                        .map(|f| GroupMember {
                            node_id: f.node_id.clone(),
                            link_address: f.link_address.clone(),
                        })
                        .collect(),
                })
                .collect(),
        };
        plan.validate()?;
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use crate::topology::{NodeWeight, plan_partition};

    use super::*;

    #[test]
    fn a_plan_travels_unchanged() {
        let node = NodeWeight {
            node_id: "a".into(),
            address: "a:1".into(),
            memory_bytes: 1,
        };
        let plan = plan_partition("m", 10, &[node]).unwrap();
        assert_eq!(Partition::from_wire(&plan.to_wire()).unwrap(), plan);
    }
}

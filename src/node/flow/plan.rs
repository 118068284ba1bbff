//! Which nodes a request runs on: the peers a plan may use, the partition, and the handle
//! on a node of a plan.

use std::sync::Arc;

use super::RequestFlow;
use crate::discovery::PeerInfo;
use crate::engine::LoadedModel;
use crate::peer::GrpcPeerHandle;
use crate::resource::{Managed, ResourceState};
use crate::topology::{DeviceCapabilities, NodeWeight, Partition, plan_partition_fitting};

impl RequestFlow {
    /// The peers a plan may use now: Ready (not merely Degraded) and serving our model.
    fn usable_peers(&self, model_id: &str) -> Vec<PeerInfo> {
        self.peers
            .joined()
            .into_iter()
            .filter(|p| {
                p.state == ResourceState::Ready && p.model_id == model_id && p.capabilities.is_some()
            })
            .collect()
    }

    /// The partition for a request starting now: this node and the usable peers.
    pub async fn plan(&self) -> anyhow::Result<Partition> {
        let model = self.model().await?;
        self.plan_for(&model)
    }

    pub(super) fn plan_for(&self, model: &LoadedModel) -> anyhow::Result<Partition> {
        let mut nodes = vec![NodeWeight {
            node_id: self.node_id.clone(),
            address: self.address(),
            memory_bytes: self.capabilities.free_model_memory_bytes(),
        }];
        for peer in self.usable_peers(model.model_id()) {
            nodes.push(NodeWeight {
                memory_bytes: peer
                    .capabilities
                    .as_ref()
                    .map_or(0, DeviceCapabilities::free_model_memory_bytes),
                node_id: peer.node_id,
                address: peer.address,
            });
        }
        // Each node's share of the weights and KV reserve must fit its free memory; a
        // cluster too small is refused here, before any node loads or downloads a byte.
        plan_partition_fitting(model.model_id(), model.config().n_layers, &nodes, model.memory_need())
    }

    /// The handle on a node of a plan: from the peer table, or taken on at the address
    /// the plan gives when this node has not heard of it yet.
    pub(super) fn peer(&self, node_id: &str, address: &str) -> Arc<Managed<GrpcPeerHandle>> {
        self.peers.adopt(node_id, address, &self.model_id)
    }
}

//! A node's tensor-parallel groups in the flow (DESIGN.md §3b): a plan entry with
//! followers is a group its `node_id` leads. Steps go to the leader as to any shard; the
//! leader opens its group links to the followers the first time it leads them (where it
//! learns its plan) and runs each batch with them. A follower learns of a group only from
//! the batches its leader hands it over those links.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;

use super::RequestFlow;
use crate::engine::LoadedModel;
use crate::engine::group::{GroupPlacement, WireDtype};
use crate::peer::GroupLinks;
use crate::topology::{GroupMember, PartitionEntry};

impl RequestFlow {
    /// Sets the node's group links (once, before the node serves): without them, a plan
    /// that makes this node lead or follow a group fails its steps.
    pub fn set_group_links(&self, links: Arc<GroupLinks>) {
        let _ = self.group_links.set(links);
    }

    pub fn group_links(&self) -> Option<&Arc<GroupLinks>> {
        self.group_links.get()
    }

    /// The group of `entry`, which this node leads, ready to run: a link open to every
    /// follower (opened now when missing) and each member's slice (an even split).
    pub(super) async fn lead(
        &self,
        model: &LoadedModel,
        entry: &PartitionEntry,
    ) -> anyhow::Result<Arc<GroupPlacement>> {
        let links = self
            .group_links
            .get()
            .context("this node has no group links")?;
        {
            // One connection attempt at a time: two steps arriving together must not
            // open two streams to the same follower.
            let _connecting = self.group_connecting.lock().await;
            for follower in &entry.followers {
                if !links.peers().contains(&follower.node_id) {
                    let addr = self.link_address(follower).await?;
                    links.connect(&follower.node_id, addr).await?;
                }
            }
        }
        let members: Vec<String> = entry.members().map(str::to_string).collect();
        let mut placements = self.placements.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(placement) = placements.get(&members) {
            return Ok(placement.clone());
        }
        let slices = model.split_group(&vec![1.0; members.len()])?;
        let placement = Arc::new(GroupPlacement {
            members: members.clone(),
            slices,
            wire: WireDtype::F32,
        });
        placements.insert(members, placement.clone());
        Ok(placement)
    }

    /// Where `follower`'s group links listen, as this node sees it: at the host it
    /// discovered the follower at, on the port the follower announces; the plan's address
    /// when this node does not know the follower (an open cluster only: a keyed node
    /// refused the plan already, see `check_plan_nodes`).
    async fn link_address(&self, follower: &GroupMember) -> anyhow::Result<SocketAddr> {
        let discovered = self
            .peers
            .joined()
            .into_iter()
            .find(|p| p.node_id == follower.node_id)
            .and_then(|peer| {
                let port = peer.capabilities.as_ref()?.group_link_port;
                super::plan::link_address(&peer.address, port)
            });
        let address = discovered.unwrap_or_else(|| follower.link_address.clone());
        tokio::net::lookup_host(&address)
            .await
            .ok()
            .and_then(|mut addrs| addrs.next())
            .with_context(|| {
                format!(
                    "group member {} has no usable link address ({address:?})",
                    follower.node_id
                )
            })
    }
}

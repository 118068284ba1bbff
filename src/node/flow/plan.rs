//! Which nodes a request runs on: the peers a plan may use, the partition, the handle on
//! a node of a plan, and which of a plan's nodes still answer.

use std::collections::HashSet;

use tonic::Status;

use super::RequestFlow;
use super::model_facts::ModelFacts;
use super::outbox::Item;
use crate::discovery::PeerInfo;
use crate::proto::ValidatedContext;
use crate::resource::ResourceState;
use crate::topology::{
    DeviceCapabilities, GroupCandidate, NodeWeight, Parallelism, Partition, describe_entry,
    plan_partition_fitting, plan_tensor_pair,
};

impl RequestFlow {
    /// The host part of this node's address in plans (informational: each node reaches
    /// the others at the addresses it discovered).
    pub fn set_host(&self, host: String) {
        *self.address.write().unwrap_or_else(|p| p.into_inner()) = host;
    }

    pub fn address(&self) -> String {
        let host = self
            .address
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        format!(
            "{host}:{}",
            self.grpc_port.load(std::sync::atomic::Ordering::Relaxed)
        )
    }

    /// The peers a plan may use now: Ready (not merely Degraded), serving our model with
    /// an engine that serves (a peer whose engine is down stays joined, so that results
    /// still reach it, but runs no layers), not draining, not flapping (lost twice within
    /// a minute, see `continuation`), and not in `excluded` (nodes this request has lost).
    fn usable_peers(&self, model_id: &str, excluded: &HashSet<String>) -> Vec<PeerInfo> {
        self.peers
            .joined()
            .into_iter()
            .filter(|p| {
                p.state == ResourceState::Ready
                    && p.serving
                    && p.model_id == model_id
                    && p.capabilities.is_some()
                    && !p.draining
                    && !excluded.contains(&p.node_id)
                    && !self.origin.losses.is_flapping(&p.node_id)
            })
            .collect()
    }

    /// The partition for a request starting now: this node and the usable peers.
    pub async fn plan(&self) -> anyhow::Result<Partition> {
        let model = self.model().await?;
        self.plan_for(
            &ModelFacts::of(&model),
            &HashSet::new(),
            self.config.parallelism,
        )
    }

    /// What plans need to know of the model, as this node's engine last told it (None
    /// before the engine first opened the model): a re-plan that leaves out this node's
    /// own failed engine cannot ask it.
    pub(super) fn model_facts(&self) -> Option<ModelFacts> {
        self.facts.get().cloned()
    }

    /// Nodes left out of new plans for flapping.
    pub fn flapping(&self) -> Vec<super::Flapping> {
        self.origin.losses.flapping()
    }

    /// A partition over this node and the usable peers, none of them in `excluded`. This
    /// node in `excluded` (its own engine failed) runs no layers: it keeps only the
    /// origin's part, the API and the sampling of nothing.
    /// With `parallelism` tensor (as chosen, see [`Parallelism::chosen`]), a pair of nodes
    /// with group links shares every layer; where no pair can (one node, no links, too
    /// little memory, a model that does not split in two), the plan is a pipeline.
    pub(super) fn plan_for(
        &self,
        model: &ModelFacts,
        excluded: &HashSet<String>,
        parallelism: Parallelism,
    ) -> anyhow::Result<Partition> {
        let _ = self.facts.set(model.clone());
        let mut candidates = Vec::new();
        if !excluded.contains(&self.node_id) {
            let address = self.address();
            let port = self.capabilities.group_link_port;
            candidates.push(GroupCandidate {
                link_address: link_address(&address, port)
                    .filter(|_| self.group_links.get().is_some()),
                node: NodeWeight {
                    node_id: self.node_id.clone(),
                    address,
                    memory_bytes: self.capabilities.free_model_memory_bytes(),
                },
            });
        }
        for peer in self.usable_peers(&model.model_id, excluded) {
            let capabilities = peer.capabilities.as_ref();
            let port = capabilities.map_or(0, |c| c.group_link_port);
            candidates.push(GroupCandidate {
                link_address: link_address(&peer.address, port),
                node: NodeWeight {
                    memory_bytes: capabilities
                        .map_or(0, DeviceCapabilities::free_model_memory_bytes),
                    node_id: peer.node_id,
                    address: peer.address,
                },
            });
        }
        if parallelism.chosen().0 == Parallelism::Tensor {
            let pair = match &model.tensor_split {
                Some(why) => Err(format!("the model does not split in two: {why}")),
                None => {
                    plan_tensor_pair(&model.model_id, model.n_layers, &candidates, model.memory)
                }
            };
            match pair {
                Ok(plan) => return Ok(plan),
                Err(why) => tracing::info!("no tensor-parallel pair ({why}); planning a pipeline"),
            }
        }
        let nodes: Vec<NodeWeight> = candidates.into_iter().map(|c| c.node).collect();
        // Each node's share of the weights and KV reserve must fit its free memory; a
        // cluster too small is refused here, before any node loads or downloads a byte.
        plan_partition_fitting(&model.model_id, model.n_layers, &nodes, model.memory)
    }

    /// Whether this node's own engine passes a health check now (the check runs now; a
    /// failed engine is marked so, and new plans leave it out until it recovers).
    pub(super) async fn own_engine_answers(&self) -> bool {
        self.engine.state().is_usable() && self.engine.check_health().await.healthy
    }

    /// Whether nothing but one request keeps this node's ring busy: this origin waits for
    /// one epoch only and this node has no step queued (its own engine's, of any origin).
    /// A late result then is lost rather than queued behind others (see `epoch`).
    pub(super) fn ring_looks_idle(&self) -> bool {
        self.origin.waiting() <= 1 && self.shard.queued_steps() == 0
    }

    /// Queues `item` for a node of a plan. A node this one may not take on (a keyed
    /// cluster's node that has not proven the key here, or an open node's peer off
    /// loopback) gets nothing: the item fails as undeliverable, as if the node were
    /// unreachable.
    pub(super) fn send_to(&self, node_id: &str, address: &str, item: Item) {
        match self.peers.adopt(node_id, address, &self.model_id) {
            Ok(handle) => self.outbox.send(node_id, handle, item),
            Err(reason) => self.undelivered(vec![(item, reason)]),
        }
    }

    /// Waits, at most [`VOUCH_WAIT`], until every node `contexts` name has proven the key
    /// here. A node that has just (re)started hears its peers' announcements within a
    /// second, but a step may reach it first; refused at once, its origin would plan over
    /// it again, be refused again and give the request up. Steps that still name a
    /// stranger after the wait are refused by [`Self::check_plan_nodes`].
    pub(super) async fn await_vouches<'c>(
        &self,
        contexts: impl Iterator<Item = &'c ValidatedContext> + Clone,
    ) {
        let unproven = || {
            contexts.clone().any(|context| {
                std::iter::once(context.origin_node_id.as_str())
                    .chain(context.plan.nodes())
                    .any(|id| !self.peers.vouches_for(id))
            })
        };
        let mut joined = self.peers.subscribe();
        let waited = tokio::time::timeout(VOUCH_WAIT, async {
            while unproven() {
                if joined.changed().await.is_err() {
                    return;
                }
            }
        });
        let _ = waited.await;
    }

    /// Refuses a plan (or origin) naming a node this one has not authenticated: in a keyed
    /// cluster a plan must not steer hidden states or tokens to a stranger.
    pub(super) fn check_plan_nodes(&self, context: &ValidatedContext) -> Result<(), Status> {
        let stranger = std::iter::once(context.origin_node_id.as_str())
            .chain(context.plan.nodes())
            .find(|id| !self.peers.vouches_for(id));
        match stranger {
            None => Ok(()),
            Some(id) => {
                self.count(|s| s.plans_refused += 1);
                Err(Status::permission_denied(format!(
                    "request {} names node {id}, which has not proven the cluster key to node {}",
                    context.request_id, self.node_id
                )))
            }
        }
    }
}

/// How long a step naming a node that has not proven the key here waits for its proof
/// (announcements go out twice a second) before it is refused.
const VOUCH_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// `host:port` of a node's group links, from its gRPC address (None: it has none).
pub(super) fn link_address(grpc_address: &str, port: u16) -> Option<String> {
    let (host, _) = grpc_address.rsplit_once(':')?;
    (port != 0).then(|| format!("{host}:{port}"))
}

/// "a[0,10) → b[10,20) → c[20,30)"; a tensor-parallel group as "a+b[0,24)".
pub fn describe(plan: &Partition) -> String {
    plan.entries
        .iter()
        .map(describe_entry)
        .collect::<Vec<_>>()
        .join(" → ")
}

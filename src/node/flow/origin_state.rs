//! What the origin side of the flow keeps: the epochs of the requests this node
//! originated, each waiting for its steps' results, the nodes those requests lost
//! recently (flapping ones are left out of new plans, see `continuation`), and the
//! finishes owed to nodes that did not hear them (`owed_finishes`).

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::mpsc;
use tonic::Status;

use super::continuation::LossRecord;
use super::owed_finishes::OwedFinishes;
use super::prefix_directory::PrefixDirectory;
use crate::proto::StepOutcome;

/// Where a request's results go: (step, outcome).
pub(super) type ResultSender = mpsc::UnboundedSender<(u64, StepOutcome)>;

/// The requests waiting here for results, and the losses they saw.
#[derive(Default)]
pub(super) struct OriginState {
    /// Epochs of requests this node originated, by wire id, waiting for step results.
    pending: Mutex<HashMap<String, ResultSender>>,
    /// Nodes lost recently.
    pub(super) losses: LossRecord,
    /// The blocks each node kept in its prefix cache.
    pub(super) prefixes: PrefixDirectory,
    /// Finishes of ended epochs that a node did not hear (it hung, or was cut off).
    pub(super) owed: OwedFinishes,
}

impl OriginState {
    /// Results of epoch `wire_id` go to `results` from now on.
    pub(super) fn wait_for(&self, wire_id: &str, results: ResultSender) {
        self.lock().insert(wire_id.to_string(), results);
    }

    /// Results of epoch `wire_id` find nobody waiting from now on.
    pub(super) fn stop_waiting(&self, wire_id: &str) {
        self.lock().remove(wire_id);
    }

    /// Hands a step's outcome to the origin's waiting loop.
    pub(super) fn route(
        &self,
        request_id: &str,
        step: u64,
        outcome: StepOutcome,
    ) -> Result<(), Status> {
        let pending = self.lock();
        let sender = pending.get(request_id).ok_or_else(|| {
            Status::not_found(format!(
                "unknown request id {request_id}: no such request is waiting here"
            ))
        })?;
        sender
            .send((step, outcome))
            .map_err(|_| Status::not_found(format!("request {request_id} is no longer waiting")))
    }

    /// Epochs waiting for results now.
    pub(super) fn waiting(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ResultSender>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

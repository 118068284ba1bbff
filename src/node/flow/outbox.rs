//! Messages to peers, one queue per peer: items go out in the order they were queued,
//! one message in flight per peer, and everything queued while a message travels leaves
//! together in the next one (so a hop carries a whole batch's outputs, and a request's
//! prompt chunks arrive in order). A peer that leaves (the peer table retires its handle)
//! takes its queue and sender with it; what was still queued for it fails.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use futures::FutureExt;
use tokio::sync::mpsc;

use crate::peer::GrpcPeerHandle;
use crate::proto::pb;
use crate::resource::{Managed, ResourceState};

/// What can be sent to a peer.
pub enum Item {
    Step(pb::StepItem),
    Result(pb::ResultItem),
}

/// Called with items the destination refused or that could not be delivered, and why.
pub type OnFailure = Arc<dyn Fn(Vec<(Item, String)>) + Send + Sync>;

/// Largest number of items in one message (the receiving service's cap).
const MAX_ITEMS: usize = crate::server::MAX_BATCH_ITEMS;

/// The queues by peer id (shared with their sender tasks, which remove their own).
type Queues = Mutex<HashMap<String, Queue>>;

/// The per-peer queues of a node.
pub struct Outbox {
    queues: Arc<Queues>,
    on_failure: OnFailure,
}

/// A peer's queue and the handle its task sends through.
struct Queue {
    sender: mpsc::UnboundedSender<Item>,
    handle: Arc<Managed<GrpcPeerHandle>>,
}

impl Outbox {
    pub fn new(on_failure: OnFailure) -> Self {
        Outbox {
            queues: Arc::new(Mutex::new(HashMap::new())),
            on_failure,
        }
    }

    /// Queues `item` for `peer`, through `handle`. A peer that came back under the same
    /// id has a new handle: its queue starts afresh (the old one drains and ends).
    pub fn send(&self, peer: &str, handle: Arc<Managed<GrpcPeerHandle>>, item: Item) {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = queues
            .get(peer)
            .is_none_or(|q| !Arc::ptr_eq(&q.handle, &handle) || q.sender.is_closed());
        if fresh {
            let (sender, receiver) = mpsc::unbounded_channel();
            tokio::spawn(drain(
                peer.to_string(),
                receiver,
                handle.clone(),
                self.on_failure.clone(),
                Arc::downgrade(&self.queues),
            ));
            queues.insert(peer.to_string(), Queue { sender, handle });
        }
        let queue = queues.get(peer).expect("inserted above");
        if let Err(mpsc::error::SendError(item)) = queue.sender.send(item) {
            drop(queues);
            (self.on_failure)(vec![(item, format!("the queue to {peer} was closed"))]);
        }
    }

    /// Peers with a queue (and a sender task).
    #[cfg(test)]
    fn peers(&self) -> usize {
        self.queues.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// One peer's sender: takes everything queued, sends steps and results (one message each
/// kind), reports refusals, repeats; until the peer leaves (its handle is retired), then
/// removes its queue and fails what was still in it.
async fn drain(
    peer: String,
    mut receiver: mpsc::UnboundedReceiver<Item>,
    handle: Arc<Managed<GrpcPeerHandle>>,
    on_failure: OnFailure,
    queues: Weak<Queues>,
) {
    let mut state = handle.subscribe();
    loop {
        let first = tokio::select! {
            item = receiver.recv() => match item {
                Some(item) => item,
                None => return,
            },
            _ = state.wait_for(|s| *s == ResourceState::Closed) => break,
        };
        let mut items = vec![first];
        while items.len() < MAX_ITEMS {
            match receiver.try_recv() {
                Ok(item) => items.push(item),
                Err(_) => break,
            }
        }
        let (mut steps, mut results) = (Vec::new(), Vec::new());
        for item in items {
            match item {
                Item::Step(step) => steps.push(step),
                Item::Result(result) => results.push(result),
            }
        }
        // Results first: they end steps the origin waits for.
        if !results.is_empty() {
            let message = pb::ResultBatch { items: results };
            let sent = handle
                .with_connection("SendResults", |peer| {
                    peer.send_results(message.clone()).boxed()
                })
                .await;
            report(
                sent,
                message.items.into_iter().map(Item::Result).collect(),
                &on_failure,
            );
        }
        if !steps.is_empty() {
            let message = pb::StepBatch { items: steps };
            let sent = handle
                .with_connection("SendSteps", |peer| peer.send_steps(message.clone()).boxed())
                .await;
            report(
                sent,
                message.items.into_iter().map(Item::Step).collect(),
                &on_failure,
            );
        }
    }
    // The peer left. Its queue goes (unless a newer handle of the same peer has one), and
    // nothing more can join it; what is left fails, for the origins to hear of it.
    if let Some(queues) = queues.upgrade() {
        let mut queues = queues.lock().unwrap_or_else(|p| p.into_inner());
        if queues
            .get(&peer)
            .is_some_and(|q| Arc::ptr_eq(&q.handle, &handle))
        {
            queues.remove(&peer);
        }
    }
    receiver.close();
    let mut left = Vec::new();
    while let Ok(item) = receiver.try_recv() {
        left.push((item, format!("peer {peer} left")));
    }
    if !left.is_empty() {
        on_failure(left);
    }
}

/// Hands refused or undelivered items to the failure handler.
fn report(sent: anyhow::Result<Vec<String>>, items: Vec<Item>, on_failure: &OnFailure) {
    let failed: Vec<(Item, String)> = match sent {
        Ok(errors) => items
            .into_iter()
            .zip(errors.into_iter().chain(std::iter::repeat(String::new())))
            .filter(|(_, error)| !error.is_empty())
            .collect(),
        Err(error) => {
            let message = format!("{error:#}");
            items
                .into_iter()
                .map(|item| (item, message.clone()))
                .collect()
        }
    };
    if !failed.is_empty() {
        on_failure(failed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::PeerTimeouts;

    #[tokio::test]
    async fn a_departed_peers_queue_and_sender_go_and_what_it_held_fails() {
        let failed = Arc::new(Mutex::new(Vec::new()));
        let seen = failed.clone();
        let outbox = Outbox::new(Arc::new(move |items: Vec<(Item, String)>| {
            seen.lock()
                .unwrap()
                .extend(items.into_iter().map(|(_, why)| why));
        }));
        // A peer nobody listens for: what is sent to it fails.
        let handle = Managed::new(
            "peer:gone",
            GrpcPeerHandle::new("gone", "127.0.0.1:1", PeerTimeouts::default()),
        );
        outbox.send(
            "gone",
            handle.clone(),
            Item::Result(pb::ResultItem::default()),
        );
        assert_eq!(outbox.peers(), 1);

        // The peer leaves: the peer table retires its handle.
        handle.cleanup().await.unwrap();
        let gone = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while outbox.peers() > 0 || Arc::strong_count(&handle) > 1 {
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert!(
            gone.is_ok(),
            "the queue of a departed peer is kept ({} queue(s)), and its sender task holds the handle",
            outbox.peers()
        );
        assert_eq!(
            failed.lock().unwrap().len(),
            1,
            "the queued item was reported"
        );
    }
}

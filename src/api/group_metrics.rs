//! The tensor-parallel group counters of `GET /metrics` (DESIGN.md §3b): what this node's
//! group hub led, followed and exchanged. All zero on a node that has taken part in no
//! group.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::engine::LoadedModel;
use crate::metrics::{Exposition, Kind};

/// The hub's counters, zero without a hub or a model.
pub(super) fn tensor_groups(model: Option<&LoadedModel>, out: &mut Exposition) {
    let stats = model.and_then(LoadedModel::groups).map(|hub| &hub.stats);
    let get = |pick: fn(&crate::engine::group::hub::HubStats) -> &AtomicU64| {
        stats.map_or(0, |s| pick(s).load(Ordering::Relaxed)) as f64
    };
    let counters = [
        (
            "exo_group_batches_led_total",
            "Tensor-parallel batches this node led (ran with its group's followers).",
            get(|s| &s.batches_led),
        ),
        (
            "exo_group_batches_followed_total",
            "Tensor-parallel batches this node ran as a follower.",
            get(|s| &s.batches_followed),
        ),
        (
            "exo_group_all_reduces_total",
            "All-reduces this node took part in (two per layer and batch, one per embedding).",
            get(|s| &s.all_reduces),
        ),
        (
            "exo_group_bytes_sent_total",
            "Bytes of partial sums this node sent to its group's members.",
            get(|s| &s.bytes_sent),
        ),
        (
            "exo_group_batches_aborted_total",
            "Tensor-parallel batches given up here (a member failed or was lost).",
            get(|s| &s.aborted),
        ),
    ];
    for (name, help, value) in counters {
        out.family(name, Kind::Counter, help)
            .sample(name, &[], value);
    }
}

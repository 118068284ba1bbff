//! The registry of live resources.

use std::sync::{Arc, Mutex, Weak};

use super::AnyResource;

/// Every live resource of a node (or a test), in registration order.
///
/// Holds weak references: a resource that its owner drops leaves the registry by itself,
/// so retiring a peer handle needs no bookkeeping here.
#[derive(Default)]
pub struct ResourceRegistry {
    entries: Mutex<Vec<Weak<dyn AnyResource>>>,
}

impl ResourceRegistry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn register(&self, resource: Arc<dyn AnyResource>) {
        let mut entries = self.lock();
        entries.retain(|entry| entry.strong_count() > 0);
        entries.push(Arc::downgrade(&resource));
    }

    /// The live resources, in registration order.
    pub fn list(&self) -> Vec<Arc<dyn AnyResource>> {
        let mut entries = self.lock();
        entries.retain(|entry| entry.strong_count() > 0);
        entries.iter().filter_map(Weak::upgrade).collect()
    }

    /// The live resources with this id, optionally of this type only. Ids are unique
    /// within a node, but a caller naming a type guards against a mix-up.
    pub fn find(&self, id: &str, kind: Option<&str>) -> Vec<Arc<dyn AnyResource>> {
        self.list()
            .into_iter()
            .filter(|resource| resource.id() == id && kind.is_none_or(|k| resource.kind() == k))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Weak<dyn AnyResource>>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

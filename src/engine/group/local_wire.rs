//! Members in one process: hubs wired to each other directly (`exo generate --tensor N`,
//! the engine's tests). The same batches, collectives and aborts as across nodes, without
//! the network.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use anyhow::Context;

use super::frame::Frame;
use super::hub::{GroupHub, Wire};

/// One hub's wire to the others of its process.
struct LocalWire {
    from: String,
    hubs: HashMap<String, Weak<GroupHub>>,
}

impl Wire for LocalWire {
    fn send(&self, to: &str, frame: Frame) -> anyhow::Result<()> {
        let hub = self
            .hubs
            .get(to)
            .and_then(Weak::upgrade)
            .with_context(|| format!("no member {to} in this process"))?;
        hub.deliver(&self.from, frame);
        Ok(())
    }
}

/// A hub per name, each able to reach the others.
pub fn local_hubs(names: &[String]) -> Vec<Arc<GroupHub>> {
    let hubs: Vec<Arc<GroupHub>> = names.iter().map(|n| GroupHub::new(n.clone())).collect();
    let all: HashMap<String, Weak<GroupHub>> = names
        .iter()
        .cloned()
        .zip(hubs.iter().map(Arc::downgrade))
        .collect();
    for (name, hub) in names.iter().zip(&hubs) {
        hub.set_wire(Arc::new(LocalWire {
            from: name.clone(),
            hubs: all.clone(),
        }));
    }
    hubs
}

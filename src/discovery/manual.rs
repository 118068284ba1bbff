//! Manual discovery: the peers named in a file (node id → address), reloaded when the
//! file changes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use futures::FutureExt;
use serde_json::json;
use tokio::task::JoinHandle;

use super::peer_table::{PeerTable, Sighting};
use crate::resource::Resource;
use crate::topology::DeviceCapabilities;

/// How often the file is looked at.
const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// Reads a peers file:
///
/// ```json
/// { "peers": { "node-b": "192.168.1.12:50051", "node-c": { "address": "node-c.lan", "port": 50051 } } }
/// ```
pub fn read_peers_file(path: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read peers file {}", path.display()))?;
    parse_peers_file(&text, path)
}

/// Parses the text of a peers file (`path` only names it in errors). Never panics: every
/// malformed file is an error that says what is wrong.
pub fn parse_peers_file(text: &str, path: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let value: serde_json::Value = serde_json::from_str(text)
        .with_context(|| format!("peers file {} is not JSON", path.display()))?;
    let peers = value
        .get("peers")
        .and_then(|p| p.as_object())
        .with_context(|| format!("peers file {} has no \"peers\" object", path.display()))?;
    let mut out = BTreeMap::new();
    for (id, entry) in peers {
        let address = match entry {
            serde_json::Value::String(address) => address.clone(),
            serde_json::Value::Object(fields) => {
                let host = fields.get("address").and_then(|a| a.as_str());
                let port = fields.get("port").and_then(|p| p.as_u64());
                match (host, port) {
                    (Some(host), Some(port)) if port > 0 && port <= u64::from(u16::MAX) => {
                        format!("{host}:{port}")
                    }
                    _ => bail!(
                        "peer {id} in {} needs an address and a port",
                        path.display()
                    ),
                }
            }
            _ => bail!(
                "peer {id} in {} is neither \"host:port\" nor {{address, port}}",
                path.display()
            ),
        };
        if id.is_empty() || !address.contains(':') {
            bail!(
                "peer {id:?} in {} has no usable address ({address:?})",
                path.display()
            );
        }
        out.insert(id.clone(), address);
    }
    Ok(out)
}

#[derive(Default)]
struct FileState {
    /// (modified, length) when last read, to notice changes cheaply.
    stamp: Option<(SystemTime, u64)>,
    peers: BTreeMap<String, String>,
    last_error: Option<String>,
    reloads: u64,
}

/// The manual discovery resource.
pub struct ManualDiscovery {
    path: PathBuf,
    peers: Arc<PeerTable>,
    file: Arc<Mutex<FileState>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl ManualDiscovery {
    pub fn new(path: impl Into<PathBuf>, peers: Arc<PeerTable>) -> Self {
        ManualDiscovery {
            path: path.into(),
            peers,
            file: Arc::new(Mutex::new(FileState::default())),
            task: Mutex::new(None),
        }
    }

    pub fn peers(&self) -> &Arc<PeerTable> {
        &self.peers
    }
}

/// Re-reads the file if it changed; keeps the last good list when the new one is bad.
fn reload(path: &Path, file: &Mutex<FileState>, peers: &Arc<PeerTable>) {
    let stamp = std::fs::metadata(path)
        .ok()
        .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
    let mut state = file.lock().unwrap_or_else(|p| p.into_inner());
    if stamp.is_some() && stamp == state.stamp {
        return;
    }
    state.stamp = stamp;
    match read_peers_file(path) {
        Ok(list) => {
            for gone in state.peers.keys().filter(|id| !list.contains_key(*id)) {
                peers.forget(gone);
            }
            state.peers = list;
            state.last_error = None;
            state.reloads += 1;
        }
        Err(error) => {
            tracing::warn!("{error:#}; keeping the previous peers");
            state.last_error = Some(format!("{error:#}"));
        }
    }
}

/// The peers in the file are always "heard from"; joined ones without capabilities are
/// asked for them.
async fn refresh(file: &Mutex<FileState>, peers: &Arc<PeerTable>) {
    let listed = file.lock().unwrap_or_else(|p| p.into_inner()).peers.clone();
    for (id, address) in &listed {
        peers.observe(Sighting {
            node_id: id.clone(),
            address: address.clone(),
            priority: 3,
            model_id: String::new(),
            capabilities: None,
        });
    }
    for peer in peers
        .peers()
        .into_iter()
        .filter(|p| p.is_joined() && p.capabilities.is_none())
    {
        let Some(handle) = peers.handle(&peer.node_id) else {
            continue;
        };
        if let Ok(topology) = handle
            .with_connection("CollectTopology", |h| h.collect_topology().boxed())
            .await
            && let Some(node) = topology.nodes.first().filter(|n| n.node_id == peer.node_id)
        {
            let capabilities = node
                .capabilities
                .as_ref()
                .map(DeviceCapabilities::from_wire)
                .unwrap_or_default();
            peers.set_capabilities(&peer.node_id, capabilities, node.model_id.clone());
        }
    }
}

impl Resource for ManualDiscovery {
    const KIND: &'static str = "manual_discovery";

    async fn initialize(&self) -> anyhow::Result<()> {
        // A missing or broken file at start is an error the operator should see now.
        let first = read_peers_file(&self.path)?;
        {
            let mut state = self.file.lock().unwrap_or_else(|p| p.into_inner());
            state.peers = first;
            state.stamp = std::fs::metadata(&self.path)
                .ok()
                .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
            state.reloads = 1;
        }
        let (path, file, peers) = (self.path.clone(), self.file.clone(), self.peers.clone());
        let task = tokio::spawn(async move {
            let mut reload_ticker = tokio::time::interval(RELOAD_INTERVAL);
            let mut health_ticker = tokio::time::interval(peers.config().health_interval);
            health_ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = reload_ticker.tick() => reload(&path, &file, &peers),
                    _ = health_ticker.tick() => {
                        refresh(&file, &peers).await;
                        peers.maintain().await;
                    }
                }
            }
        });
        if let Some(previous) = self
            .task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(task)
        {
            previous.abort();
        }
        Ok(())
    }

    async fn cleanup(&self) -> anyhow::Result<()> {
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
        self.peers.clear().await;
        Ok(())
    }

    async fn health(&self) -> anyhow::Result<()> {
        match &*self.task.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(task) if !task.is_finished() => Ok(()),
            _ => bail!("the peers file watcher is not running"),
        }
    }

    fn info(&self) -> serde_json::Value {
        let state = self.file.lock().unwrap_or_else(|p| p.into_inner());
        json!({
            "path": self.path.display().to_string(),
            "listed": state.peers,
            "reloads": state.reloads,
            "last_error": state.last_error,
            "peers": self.peers.peers(),
        })
    }
}

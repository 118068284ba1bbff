//! `exo node`: run one node until Ctrl-C or SIGTERM, then stop it cleanly.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, ValueEnum};

use super::shared::ModelArgs;
use crate::catalog::resolve_node_model;
use crate::discovery::{DEFAULT_DISCOVERY_PORT, InterfaceFilter, UdpDiscoveryConfig};
use crate::node::{DiscoveryMode, FlowConfig, Node, NodeConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DiscoveryKind {
    /// UDP broadcast on every suitable interface.
    Udp,
    /// The peers named in --peers.
    Manual,
    /// No peers: a node of its own.
    None,
}

/// The flags of a node (shared by `exo node` and `exo run`).
#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// HTTP API port (0 picks a free one).
    #[arg(long, env = "EXO_API_PORT", default_value_t = 52415)]
    pub api_port: u16,
    /// gRPC port for the other nodes (0 picks a free one).
    #[arg(long, env = "EXO_GRPC_PORT", default_value_t = 0)]
    pub grpc_port: u16,
    /// Address to listen on for both.
    #[arg(long, env = "EXO_LISTEN", default_value = "0.0.0.0")]
    pub listen: IpAddr,
    /// Where the node keeps its id (default: the first free slot under ~/.local/share/exo).
    #[arg(long, env = "EXO_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Use this node id instead of the persisted one.
    #[arg(long, env = "EXO_NODE_ID")]
    pub node_id: Option<String>,
    #[arg(long, env = "EXO_DISCOVERY", value_enum, default_value_t = DiscoveryKind::Udp)]
    pub discovery: DiscoveryKind,
    /// Peers file for --discovery manual: {"peers": {"node-id": "host:port"}}.
    #[arg(long, env = "EXO_PEERS")]
    pub peers: Option<PathBuf>,
    /// UDP port of discovery (every node of a network uses the same one).
    #[arg(long, env = "EXO_DISCOVERY_PORT", default_value_t = DEFAULT_DISCOVERY_PORT)]
    pub discovery_port: u16,
    /// Announce only on these interfaces (comma-separated; `eth*` matches a prefix).
    #[arg(long, env = "EXO_DISCOVERY_INTERFACES", default_value = "")]
    pub discovery_interfaces: String,
    /// Never announce on these interfaces.
    #[arg(long, env = "EXO_DISCOVERY_EXCLUDE", default_value = "")]
    pub discovery_exclude: String,
    /// How long the node that received a request waits for each token (milliseconds).
    #[arg(long, env = "EXO_STEP_TIMEOUT_MS", default_value_t = 4000)]
    pub step_timeout_ms: u64,
    /// How long a node that has nothing of its model waits for a peer that holds it
    /// before it tries the Hub (milliseconds).
    #[arg(long, env = "EXO_PEER_WAIT_MS", default_value_t = 10_000)]
    pub peer_wait_ms: u64,
    /// Use at most this much memory for the model (e.g. 8GB, 512MiB, or bytes): plans
    /// give the node no more layers than fit.
    #[arg(long, env = "EXO_MEMORY_LIMIT", value_parser = parse_bytes)]
    pub memory_limit: Option<u64>,
}

/// "8GB", "512MiB", "1.5G", "1000000" → bytes.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a size (e.g. 8GB, 512MiB)"))?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        other => return Err(format!("unknown size unit '{other}' in '{text}'")),
    };
    Ok((value * scale) as u64)
}

impl NodeArgs {
    pub fn config(&self) -> anyhow::Result<NodeConfig> {
        let (model, registered) = resolve_node_model(&self.model.model, &self.model.models_dir())?;
        let mut config = NodeConfig::new(model);
        if registered {
            config.models_dir = Some(self.model.models_dir());
        }
        config.device = self.model.device;
        config.cpu_matmul = self.model.cpu_matmul;
        config.api_listen = SocketAddr::new(self.listen, self.api_port);
        config.grpc_listen = SocketAddr::new(self.listen, self.grpc_port);
        config.data_dir = self.data_dir.clone();
        config.node_id = self.node_id.clone();
        config.discovery = match self.discovery {
            DiscoveryKind::Udp => DiscoveryMode::Udp(UdpDiscoveryConfig {
                port: self.discovery_port,
                filter: InterfaceFilter::parse(&self.discovery_interfaces, &self.discovery_exclude),
                ..UdpDiscoveryConfig::default()
            }),
            DiscoveryKind::Manual => match &self.peers {
                Some(path) => DiscoveryMode::Manual(path.clone()),
                None => bail!("--discovery manual needs --peers FILE"),
            },
            DiscoveryKind::None => DiscoveryMode::None,
        };
        config.supply.peer_wait = Duration::from_millis(self.peer_wait_ms);
        config.memory_limit = self.memory_limit;
        if self.step_timeout_ms == 0 {
            bail!("--step-timeout-ms must be at least 1");
        }
        config.flow = FlowConfig {
            step_timeout: Duration::from_millis(self.step_timeout_ms),
            ..FlowConfig::default()
        };
        Ok(config)
    }
}

pub async fn run(args: NodeArgs) -> anyhow::Result<()> {
    let node = Node::start(args.config()?).await?;
    println!(
        "node {} ready: API http://{}:{} ({} on {})",
        node.node_id(),
        args.listen,
        node.api_port(),
        args.model.model,
        node.flow.capabilities().engine_device,
    );
    let signal = shutdown_signal().await;
    tracing::info!("{signal}: shutting down");
    node.shutdown().await?;
    eprintln!("node {} stopped", node.node_id());
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM, saying which.
pub async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return "interrupted";
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => "interrupted",
            _ = terminate.recv() => "terminated",
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "interrupted"
    }
}

//! `exo node`: run one node until Ctrl-C or SIGTERM, then stop it cleanly.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, ValueEnum};

use super::shared::ModelArgs;
use crate::api::ApiConfig;
use crate::app::{DiscoveryMode, Node, NodeConfig};
use crate::catalog::resolve_node_model;
use crate::discovery::{
    DEFAULT_DISCOVERY_PORT, DEFAULT_MAX_PEERS, InterfaceFilter, UdpDiscoveryConfig,
};
use crate::listener::ConnectionLimits;
use crate::node::FlowConfig;
use crate::trust::{ClusterKey, ClusterTrust};

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
    /// Address to listen on for both. Without it the API listens on loopback only, unless
    /// it has an API key (an open API is anyone's who reaches it), and gRPC on every
    /// address (a keyed cluster) or loopback (an open one, unless --insecure).
    #[arg(long, env = "EXO_LISTEN")]
    pub listen: Option<IpAddr>,
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
    /// How long the node that received a request waits for a token without any progress
    /// before it health-checks the request's nodes (milliseconds; the wait grows with the
    /// measured step times). Nodes that do not answer are lost: the request is planned
    /// again over the others.
    #[arg(long, env = "EXO_STEP_TIMEOUT_MS", default_value_t = 250)]
    pub step_timeout_ms: u64,
    /// How many times one request may be planned again after losing nodes.
    #[arg(long, env = "EXO_MAX_REPLANS", default_value_t = 3)]
    pub max_replans: usize,
    /// On SIGTERM (or `POST /v1/admin/drain`): how long the node waits for its peers to
    /// move their requests off it and for its own requests to finish before it stops
    /// (seconds; 0 stops at once).
    #[arg(long, env = "EXO_DRAIN_TIMEOUT_SECS", default_value_t = 30)]
    pub drain_timeout_secs: u64,
    /// The cluster key file (`exo keygen --out cluster.key`): only nodes with the same key
    /// join, and nodes talk over mutual TLS. Without one the cluster is open.
    #[arg(long, env = "EXO_CLUSTER_KEY_FILE")]
    pub cluster_key: Option<PathBuf>,
    /// Run an open cluster (no key) beyond loopback anyway: anyone on the network can join.
    #[arg(long, env = "EXO_INSECURE")]
    pub insecure: bool,
    /// Bearer token required on every /v1 endpoint (repeat, or comma-separate in the
    /// environment, for several). None: the API is open.
    #[arg(
        long = "api-key",
        env = "EXO_API_KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<String>,
    /// Bearer token for the admin endpoints (/v1/resources/...). None: admin only from
    /// loopback.
    #[arg(
        long = "admin-key",
        env = "EXO_ADMIN_KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub admin_keys: Vec<String>,
    /// A file of API keys, one a line (`#` comments allowed), readable by its owner only:
    /// keeps the keys out of the command line, which other users can see.
    #[arg(long, env = "EXO_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,
    /// A file of admin keys, like --api-key-file.
    #[arg(long, env = "EXO_ADMIN_KEY_FILE")]
    pub admin_key_file: Option<PathBuf>,
    /// An origin allowed cross-site API requests (CORS); none by default.
    #[arg(long = "cors-origin", env = "EXO_CORS_ORIGIN", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// A host name clients reach the API by (e.g. exo.example.com behind a proxy). The API
    /// answers only to its IP addresses, localhost and these names, so that a web page
    /// whose name was made to point at the node (DNS rebinding) gets nothing.
    #[arg(long = "public-name", env = "EXO_PUBLIC_NAME", value_delimiter = ',')]
    pub public_names: Vec<String>,
    /// Chat requests this node serves at once.
    #[arg(long, env = "EXO_MAX_CONCURRENT_REQUESTS", default_value_t = ApiConfig::default().max_concurrent)]
    pub max_concurrent_requests: usize,
    /// The largest gRPC control message (health, topology, status, finish, weight request)
    /// this node accepts, in bytes.
    #[arg(long, env = "EXO_GRPC_MAX_CONTROL_BYTES", default_value_t = crate::server::DEFAULT_MAX_CONTROL_BYTES)]
    pub grpc_max_control_bytes: usize,
    /// The largest gRPC batch of steps or results (hidden states) this node accepts, in
    /// bytes: the default fits the largest batch of a 16,384-wide model.
    #[arg(long, env = "EXO_GRPC_MAX_BATCH_BYTES", default_value_t = crate::server::DEFAULT_MAX_BATCH_BYTES)]
    pub grpc_max_batch_bytes: usize,
    /// Connections each of the API and gRPC servers holds at once; past it new ones are
    /// closed at once (counted in /metrics).
    #[arg(long, env = "EXO_MAX_CONNECTIONS", default_value_t = ConnectionLimits::default().max_connections)]
    pub max_connections: usize,
    /// Connections one IP address may hold on each server at once.
    #[arg(long, env = "EXO_MAX_CONNECTIONS_PER_IP", default_value_t = ConnectionLimits::default().max_per_ip)]
    pub max_connections_per_ip: usize,
    /// How long a connection may stay silent where it must speak (seconds): a new one
    /// before its request headers (API) or TLS handshake (gRPC), an idle kept-alive one
    /// before its next request. It is closed then.
    #[arg(long, env = "EXO_CONNECTION_TIMEOUT_SECS", default_value_t = ConnectionLimits::default().silent_timeout.as_secs())]
    pub connection_timeout_secs: u64,
    /// The most peers a node keeps (newcomers past it are refused).
    #[arg(long, env = "EXO_MAX_PEERS", default_value_t = DEFAULT_MAX_PEERS)]
    pub max_peers: usize,
    /// `/v1/events` streams (the web UI's live view) open at once; past them, 429.
    #[arg(long, env = "EXO_MAX_EVENT_STREAMS", default_value_t = ApiConfig::default().max_event_streams)]
    pub max_event_streams: usize,
    /// Chat requests that may wait for a slot; past them the API answers 429.
    #[arg(long, env = "EXO_MAX_QUEUED_REQUESTS", default_value_t = ApiConfig::default().max_queued)]
    pub max_queued_requests: usize,
    /// How long a node that has nothing of its model waits for a peer that holds it
    /// before it tries the Hub (milliseconds).
    #[arg(long, env = "EXO_PEER_WAIT_MS", default_value_t = 10_000)]
    pub peer_wait_ms: u64,
    /// Take a model's tensors from peers even when no tensor manifest can check them (a
    /// registry model not verified here): only their sizes are checked then, so a peer
    /// could hand this node any bytes. Off: such tensors come from the Hub.
    #[arg(long, env = "EXO_TRUST_PEER_WEIGHTS")]
    pub trust_peer_weights: bool,
    /// Use at most this much memory for the model (e.g. 8GB, 512MiB, or bytes): plans
    /// give the node no more layers than fit.
    #[arg(long, env = "EXO_MEMORY_LIMIT", value_parser = parse_bytes)]
    pub memory_limit: Option<u64>,
    /// Memory for the prefix cache: the keys and values of recent prompts, so that a
    /// prompt that starts with one (a conversation's next turn, a shared system prompt)
    /// prefills only the rest (e.g. 512MiB; 0 keeps none).
    #[arg(long, env = "EXO_PREFIX_CACHE_BYTES", value_parser = parse_bytes, default_value = "512MiB")]
    pub prefix_cache_bytes: u64,
    /// How plans split the model: `pipeline` (layers among a ring of nodes), `tensor`
    /// (every layer split within a pair of nodes joined by group links), or `auto` (the
    /// node chooses; pipeline until link latency is measured). A request's `parallelism`
    /// field overrides it.
    #[arg(long, env = "EXO_PARALLELISM", default_value = "pipeline")]
    pub parallelism: crate::topology::Parallelism,
    /// For tests and scripts/chaos.sh only: lets `POST /v1/admin/faults` break this node on
    /// demand (fail its engine, drop the results it sends, panic a batch). Off, the
    /// endpoint answers 404 and nothing can switch a fault on. No environment variable
    /// turns it on.
    #[arg(long, hide = true)]
    pub enable_fault_injection: bool,
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
        config.api_listen = SocketAddr::new(self.api_listen_ip(), self.api_port);
        config.grpc_listen = SocketAddr::new(
            self.listen.unwrap_or(IpAddr::from([0, 0, 0, 0])),
            self.grpc_port,
        );
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
        config.supply.trust_peer_weights = self.trust_peer_weights;
        config.memory_limit = self.memory_limit;
        config.prefix_cache_bytes = usize::try_from(self.prefix_cache_bytes).map_err(|_| {
            anyhow::anyhow!("--prefix-cache-bytes is larger than this machine's address space")
        })?;
        if self.step_timeout_ms == 0 {
            bail!("--step-timeout-ms must be at least 1");
        }
        config.flow = FlowConfig {
            step_timeout: Duration::from_millis(self.step_timeout_ms),
            max_replans: self.max_replans,
            parallelism: self.parallelism,
            ..FlowConfig::default()
        };
        config.trust = match &self.cluster_key {
            Some(path) => Some(ClusterTrust::new(ClusterKey::load(path)?)?),
            None => None,
        };
        config.insecure = self.insecure;
        if self.enable_fault_injection {
            tracing::warn!(
                "fault injection is on: POST /v1/admin/faults can break this node (tests only)"
            );
            config.faults = Some(Default::default());
        }
        config.peers.max_peers = self.max_peers;
        if self.grpc_max_control_bytes < 1024 || self.grpc_max_batch_bytes < 1024 {
            bail!("--grpc-max-control-bytes and --grpc-max-batch-bytes must be at least 1024");
        }
        config.grpc_limits = crate::server::MessageLimits {
            control_bytes: self.grpc_max_control_bytes,
            batch_bytes: self.grpc_max_batch_bytes,
        };
        if self.max_connections == 0
            || self.max_connections_per_ip == 0
            || self.connection_timeout_secs == 0
        {
            bail!(
                "--max-connections, --max-connections-per-ip and --connection-timeout-secs must be at least 1"
            );
        }
        config.connections = ConnectionLimits {
            max_connections: self.max_connections,
            max_per_ip: self.max_connections_per_ip,
            silent_timeout: Duration::from_secs(self.connection_timeout_secs),
        };
        if self.max_concurrent_requests == 0 {
            bail!("--max-concurrent-requests must be at least 1");
        }
        let clean = |keys: &[String], flag: &str| -> anyhow::Result<Vec<String>> {
            let keys: Vec<String> = keys.iter().map(|k| k.trim().to_string()).collect();
            if keys
                .iter()
                .any(|k| k.is_empty() || k.chars().any(|c| c.is_whitespace() || c.is_control()))
            {
                bail!("{flag} must not be empty or hold whitespace");
            }
            Ok(keys)
        };
        let with_file = |keys: &[String], file: &Option<PathBuf>| -> anyhow::Result<Vec<String>> {
            let mut keys = keys.to_vec();
            if let Some(path) = file {
                keys.extend(super::shared::keys_from_file(path)?);
            }
            Ok(keys)
        };
        let api_keys = with_file(&self.api_keys, &self.api_key_file)?;
        let admin_keys = with_file(&self.admin_keys, &self.admin_key_file)?;
        config.api = ApiConfig {
            api_keys: clean(&api_keys, "--api-key")?,
            admin_keys: clean(&admin_keys, "--admin-key")?,
            cors_origins: self.cors_origins.clone(),
            public_names: self
                .public_names
                .iter()
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty())
                .collect(),
            max_concurrent: self.max_concurrent_requests,
            max_queued: self.max_queued_requests,
            max_event_streams: self.max_event_streams,
            ..ApiConfig::default()
        };
        Ok(config)
    }

    /// Where the API listens: `--listen` when given; else every address when the API has
    /// a key, and loopback when it has none.
    pub fn api_listen_ip(&self) -> IpAddr {
        let keyed = !self.api_keys.is_empty() || self.api_key_file.is_some();
        match self.listen {
            Some(ip) => ip,
            None if keyed => IpAddr::from([0, 0, 0, 0]),
            None => IpAddr::from([127, 0, 0, 1]),
        }
    }
}

/// Raises the open-file limit to what the connection caps need (each connection is a
/// descriptor), and says so when even the hard limit is short of them.
pub fn prepare_fd_limit(args: &NodeArgs) {
    let limit = crate::listener::raise_fd_limit();
    // Both servers full, plus the node's own files, peers and sockets.
    let need = 2 * args.max_connections as u64 + 1024;
    match limit.now {
        Some(now) if now < need => tracing::warn!(
            "the open-file limit is {now} (was {:?}), under the {need} that two servers of --max-connections {} need: a flood of connections could exhaust it; raise `ulimit -n` or lower --max-connections",
            limit.before,
            args.max_connections
        ),
        _ => tracing::debug!("open-file limit {:?} (was {:?})", limit.now, limit.before),
    }
}

pub async fn run(args: NodeArgs) -> anyhow::Result<()> {
    prepare_fd_limit(&args);
    let node = Node::start(args.config()?).await?;
    println!(
        "node {} ready: API http://{}:{} ({} on {})",
        node.node_id(),
        args.api_listen_ip(),
        node.api_port(),
        args.model.model,
        node.flow.capabilities().engine_device,
    );
    let reason = tokio::select! {
        signal = shutdown_signal() => signal,
        _ = node.flow.drain_requested() => "drain requested",
    };
    let bound = Duration::from_secs(args.drain_timeout_secs);
    if !bound.is_zero() {
        tracing::info!("{reason}: draining (at most {bound:?}; a second signal stops at once)");
        tokio::select! {
            _ = node.flow.drain(bound) => {}
            signal = shutdown_signal() => tracing::warn!("{signal} again: stopping without draining further"),
        }
    }
    tracing::info!("{reason}: shutting down");
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        node: NodeArgs,
    }

    fn api_ip(args: &[&str]) -> IpAddr {
        let mut argv = vec!["exo"];
        argv.extend_from_slice(args);
        Flags::try_parse_from(argv).unwrap().node.api_listen_ip()
    }

    #[test]
    fn the_api_listens_beyond_loopback_only_when_told_or_keyed() {
        // Flags can come from the environment too: this checks the defaults only when
        // none of these is set there.
        if ["EXO_LISTEN", "EXO_API_KEY", "EXO_API_KEY_FILE"]
            .iter()
            .any(|name| std::env::var_os(name).is_some())
        {
            return;
        }
        assert_eq!(api_ip(&[]), IpAddr::from([127, 0, 0, 1]));
        assert_eq!(api_ip(&["--api-key", "sk-1"]), IpAddr::from([0, 0, 0, 0]));
        assert_eq!(
            api_ip(&["--api-key-file", "/nonexistent"]),
            IpAddr::from([0, 0, 0, 0])
        );
        assert_eq!(
            api_ip(&["--listen", "10.0.0.7", "--api-key", "sk-1"]),
            IpAddr::from([10, 0, 0, 7])
        );
        assert_eq!(api_ip(&["--listen", "0.0.0.0"]), IpAddr::from([0, 0, 0, 0]));
    }
}

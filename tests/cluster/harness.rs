//! Starting nodes for tests: in-process (`Node::start`) or as `exo node` processes, on
//! loopback only, each test with a discovery port of its own.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use exo::app::{DiscoveryMode, Node, NodeConfig};
use exo::catalog::{ModelFormat, ResolvedModel};
use exo::discovery::{InterfaceFilter, PeerTableConfig, UdpDiscoveryConfig};
use exo::engine::DeviceChoice;

use crate::support::{default_model, exo_bin, models_dir};

/// How long a test waits for a cluster state before failing.
pub const WAIT: Duration = Duration::from_secs(20);

/// A UDP port no one else uses now: each test's nodes get their own discovery port, so
/// tests running at once never see each other's nodes.
pub fn free_udp_port() -> u16 {
    unused_port(|port| UdpSocket::bind(("127.0.0.1", port)).is_ok())
}

/// A TCP port no one else uses now, for a node's API to listen on.
pub fn free_tcp_port() -> u16 {
    unused_port(|port| TcpListener::bind(("127.0.0.1", port)).is_ok())
}

/// A port that is free now and that the kernel hands nobody meanwhile: below the
/// ephemeral range, which every bind to port 0 (the nodes' gRPC and group-link
/// listeners) and every outgoing connection draw from. A port taken from that range and
/// released could be given to another node's listener before the node meant to use it
/// binds it (a test then talked HTTP to a group link). Each port is handed out once per
/// test process, from a start that differs between processes.
fn unused_port(is_free: impl Fn(u16) -> bool) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static HANDED_OUT: AtomicU32 = AtomicU32::new(0);
    const LOWEST: u32 = 10_000;
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let span = ephemeral.saturating_sub(LOWEST);
    assert!(
        span > 1_000,
        "no ports below the ephemeral range ({ephemeral})"
    );
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let n = HANDED_OUT.fetch_add(1, Ordering::Relaxed);
        let port = (LOWEST + (start + n) % span) as u16;
        if is_free(port) {
            return port;
        }
    }
    panic!("no free port below the ephemeral range");
}

pub fn default_resolved() -> ResolvedModel {
    ResolvedModel {
        id: "smollm2-135m".into(),
        path: default_model().to_path_buf(),
        format: ModelFormat::Gguf,
    }
}

/// A node config on loopback: discovery on `port` over `lo` only, a data directory of its
/// own under `dir`.
pub fn loopback_config(dir: &std::path::Path, name: &str, discovery_port: u16) -> NodeConfig {
    let mut config = NodeConfig::new(default_resolved());
    config.device = DeviceChoice::Cpu;
    config.api_listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.grpc_listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.data_dir = Some(dir.join(name));
    config.node_id = Some(name.to_string());
    config.discovery = DiscoveryMode::Udp(UdpDiscoveryConfig {
        port: discovery_port,
        filter: InterfaceFilter::parse("lo", ""),
        ..UdpDiscoveryConfig::default()
    });
    config.peers = PeerTableConfig::default();
    config
}

/// Starts `names.len()` in-process nodes that find each other on loopback.
pub async fn start_nodes(dir: &std::path::Path, names: &[&str]) -> Vec<Node> {
    let port = free_udp_port();
    let mut nodes = Vec::new();
    for name in names {
        nodes.push(Node::start(loopback_config(dir, name, port)).await.unwrap());
    }
    nodes
}

/// Waits until `node` has `count` joined peers.
pub async fn wait_for_peers(node: &Node, count: usize) {
    let mut joined = node.peers.subscribe();
    tokio::time::timeout(WAIT, joined.wait_for(|peers| peers.len() == count))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "node {} did not see {count} peers: {:?}",
                node.node_id(),
                node.peers.peers()
            )
        })
        .unwrap();
}

/// An `exo node` process, killed when dropped.
pub struct NodeProcess {
    pub name: String,
    pub api_port: u16,
    pub discovery_port: u16,
    pub child: Child,
    pub log: PathBuf,
}

impl NodeProcess {
    pub fn start(dir: &std::path::Path, name: &str, discovery_port: u16) -> Self {
        Self::start_with(dir, name, discovery_port, &models_dir(), &[])
    }

    /// A node whose models directory is `models` (empty: it must get its weights from its
    /// peers or the Hub), with extra environment.
    pub fn start_with(
        dir: &std::path::Path,
        name: &str,
        discovery_port: u16,
        models: &std::path::Path,
        env: &[(&str, &str)],
    ) -> Self {
        Self::start_full(dir, name, discovery_port, models, env, &[])
    }

    /// Nodes with an empty models directory each (`<dir>/<name>-models`): what they serve
    /// comes from their peers or the Hub.
    pub fn start_without_weights(
        dir: &std::path::Path,
        names: &[&str],
        discovery_port: u16,
        env: &[(&str, &str)],
    ) -> Vec<Self> {
        names
            .iter()
            .map(|name| {
                let empty = dir.join(format!("{name}-models"));
                std::fs::create_dir_all(&empty).unwrap();
                Self::start_with(dir, name, discovery_port, &empty, env)
            })
            .collect()
    }

    /// A node with extra command-line arguments.
    pub fn start_args(
        dir: &std::path::Path,
        name: &str,
        discovery_port: u16,
        args: &[&str],
    ) -> Self {
        Self::start_full(dir, name, discovery_port, &models_dir(), &[], args)
    }

    pub fn start_full(
        dir: &std::path::Path,
        name: &str,
        discovery_port: u16,
        models: &std::path::Path,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Self {
        Self::start_serving(dir, name, discovery_port, "smollm2-135m", models, env, args)
    }

    /// A node serving `model` (from the models directory) rather than the default.
    pub fn start_model(
        dir: &std::path::Path,
        name: &str,
        discovery_port: u16,
        model: &str,
    ) -> Self {
        Self::start_serving(dir, name, discovery_port, model, &models_dir(), &[], &[])
    }

    /// A node serving `model` with more arguments.
    pub fn start_model_args(
        dir: &std::path::Path,
        name: &str,
        discovery_port: u16,
        model: &str,
        args: &[&str],
    ) -> Self {
        Self::start_serving(dir, name, discovery_port, model, &models_dir(), &[], args)
    }

    fn start_serving(
        dir: &std::path::Path,
        name: &str,
        discovery_port: u16,
        model: &str,
        models: &std::path::Path,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Self {
        let api_port = free_tcp_port();
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(exo_bin())
            .args([
                "node",
                "--model",
                model,
                "--device",
                "cpu",
                "--listen",
                "127.0.0.1",
            ])
            .args(["--api-port", &api_port.to_string()])
            .args([
                "--discovery-port",
                &discovery_port.to_string(),
                "--discovery-interfaces",
                "lo",
            ])
            .arg("--data-dir")
            .arg(dir.join(name))
            .args(["--node-id", name])
            .args(args)
            .env("EXO_MODELS_DIR", models)
            .envs(env.iter().copied())
            .env("RUST_LOG", "exo=debug,info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("cannot start exo node");
        NodeProcess {
            name: name.to_string(),
            api_port,
            discovery_port,
            child,
            log,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: the process gets no chance to say goodbye.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "node {} did not exit after SIGTERM:\n{}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GETs a JSON document.
pub fn get_json(url: &str) -> Result<serde_json::Value, String> {
    match ureq::get(url).timeout(Duration::from_secs(10)).call() {
        Ok(response) => response.into_json().map_err(|e| e.to_string()),
        Err(ureq::Error::Status(code, response)) => Err(format!(
            "{code}: {}",
            response.into_string().unwrap_or_default()
        )),
        Err(error) => Err(error.to_string()),
    }
}

/// POSTs JSON; returns the status and the body.
pub fn post_json(url: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let response = ureq::post(url)
        .timeout(Duration::from_secs(120))
        .send_json(body);
    status_and_body(url, response)
}

/// POSTs raw bytes; returns the status and the body.
pub fn post_raw(url: &str, body: &str) -> (u16, serde_json::Value) {
    let request = ureq::post(url)
        .timeout(Duration::from_secs(30))
        .set("content-type", "application/json");
    status_and_body(url, request.send_string(body))
}

/// The status and JSON body of a POST's answer, whatever the status.
fn status_and_body(
    url: &str,
    response: Result<ureq::Response, ureq::Error>,
) -> (u16, serde_json::Value) {
    match response {
        Ok(response) => (response.status(), response.into_json().unwrap()),
        Err(ureq::Error::Status(code, response)) => (
            code,
            response.into_json().unwrap_or(serde_json::Value::Null),
        ),
        Err(error) => panic!("POST {url} failed: {error}"),
    }
}

/// Runs the Python client `script` with `python`, given `node`'s URL and `prompt`; what
/// it printed, as JSON (its errors and the node's log when it fails).
pub fn run_python_client(
    python: PathBuf,
    script: &str,
    node: &NodeProcess,
    prompt: &str,
) -> serde_json::Value {
    let output = Command::new(python)
        .args(["-c", script, &node.url(), prompt])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stderr),
        node.log_text()
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Waits (checking the node's topology, never sleeping blindly) until `node` sees
/// `count` nodes in its partition.
pub fn wait_for_ring(node: &NodeProcess, count: usize) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(topology) = get_json(&format!("{}/v1/topology", node.url()))
            && topology["partition"]["entries"]
                .as_array()
                .is_some_and(|e| e.len() == count)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {} did not plan over {count} nodes:\n{}",
            node.name,
            node.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The JSON chunks of a server-sent-events response, up to `data: [DONE]`.
pub struct SseChunks {
    lines: std::io::Lines<std::io::BufReader<Box<dyn std::io::Read + Send + Sync>>>,
    /// Whether the stream ended with `data: [DONE]`.
    pub done: bool,
}

impl Iterator for SseChunks {
    type Item = serde_json::Value;

    fn next(&mut self) -> Option<serde_json::Value> {
        for line in &mut self.lines {
            let line = line.unwrap();
            let Some(data) = line.strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                self.done = true;
                return None;
            }
            return Some(serde_json::from_str(data).unwrap());
        }
        None
    }
}

/// Reads `response` as server-sent events.
pub fn sse_chunks(response: ureq::Response) -> SseChunks {
    use std::io::BufRead;
    SseChunks {
        lines: std::io::BufReader::new(response.into_reader()).lines(),
        done: false,
    }
}

//! `exo bench-transfer`: how fast weights move between two nodes, against a plain TCP
//! copy between the same two processes on loopback, in one run.
//!
//! The command starts a second process of itself (`--serve`) that serves a model's file
//! two ways: the node service's `FetchWeights` (the code a node runs: 1 MiB chunks with a
//! CRC-32 each, over gRPC) and a bare TCP socket that writes the same bytes, read the same
//! way. This process then takes the whole file from both, alternating, `--rounds` times:
//! - `tcp`: the bytes read off the socket and dropped (the ceiling);
//! - `grpc`: the `FetchWeights` stream, every chunk's CRC checked, dropped;
//! - `peer fetch`: what a node does — the stream written into a sparse file and every
//!   tensor checked against its sha256 manifest (disk and hashing included).
//!
//! It reports the median rate of each and the ratios to `tcp`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use serde_json::json;
use tonic::Status;

use crate::catalog::local_files::weight_files;
use crate::catalog::{Catalog, DownloadProgress, ModelEntry, default_models_dir};
use crate::proto::pb;
use crate::proto::pb::node_client::NodeClient;
use crate::proto::weights::{check_chunk, weight_request};
use crate::resource::Managed;
use crate::server::{GrpcServer, NodeHandler, WeightStream};
use crate::supply::serve::{CHUNK_BYTES, serve};
use crate::supply::{PeerSource, fetch_from_peer, local_holding};

/// HTTP/2 flow-control window of the measuring side.
const WINDOW_BYTES: u32 = 8 << 20;

#[derive(Debug, Args)]
pub struct TransferBenchArgs {
    /// A registry model whose file is here whole.
    #[arg(long, default_value = "smollm2-135m")]
    pub model: String,
    #[arg(long, env = "EXO_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
    /// Measured transfers of the whole file per method (after one warm-up each).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Internal: be the serving process.
    #[arg(long, hide = true)]
    pub serve: bool,
}

pub async fn run(args: TransferBenchArgs) -> anyhow::Result<()> {
    let dir = args.models_dir.clone().unwrap_or_else(default_models_dir);
    let entry = Catalog::builtin().require(&args.model)?.clone();
    let file = weight_files(&entry, &dir)?
        .and_then(|f| f.into_iter().next())
        .context("the model has no weight file")?;
    if local_holding(&entry, &dir)?.is_none_or(|h| !h.whole) {
        bail!(
            "{} is not here whole: `exo models fetch {}` first",
            file.path.display(),
            entry.id
        );
    }
    if args.serve {
        return serve_both(entry, dir, file.path).await;
    }
    measure(&args, entry, dir).await
}

/// The serving process: gRPC and bare TCP on loopback; prints both addresses, serves until
/// its stdin closes (the measuring process is gone).
async fn serve_both(entry: ModelEntry, dir: PathBuf, path: PathBuf) -> anyhow::Result<()> {
    let handler = Arc::new(BenchPeer { entry, dir });
    let server = Managed::new(
        "grpc_server",
        GrpcServer::new(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            handler,
            Arc::new(AtomicU16::new(0)),
        ),
    );
    let grpc = server
        .ensure_ready()
        .await?
        .local_addr()
        .context("the gRPC server has no address")?;
    let tcp = TcpListener::bind("127.0.0.1:0")?;
    let tcp_address = tcp.local_addr()?;
    std::thread::spawn(move || {
        for stream in tcp.incoming().flatten() {
            let path = path.clone();
            std::thread::spawn(move || {
                if let Err(error) = copy_out(stream, &path) {
                    tracing::warn!("tcp copy: {error:#}");
                }
            });
        }
    });
    println!("grpc={grpc} tcp={tcp_address}");
    std::io::stdout().flush()?;
    tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    })
    .await?;
    server.cleanup().await?;
    Ok(())
}

/// A plain TCP copy: 16 bytes ask for a byte range; the range follows, read from the file
/// in the chunks `FetchWeights` reads.
fn copy_out(mut stream: TcpStream, path: &std::path::Path) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    loop {
        let mut ask = [0u8; 16];
        if stream.read_exact(&mut ask).is_err() {
            return Ok(());
        }
        let start = u64::from_le_bytes(ask[..8].try_into()?);
        let end = u64::from_le_bytes(ask[8..].try_into()?);
        let mut file = std::fs::File::open(path)?;
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(start))?;
        let mut buffer = vec![0u8; CHUNK_BYTES];
        let mut left = end - start;
        while left > 0 {
            let n = (left as usize).min(buffer.len());
            file.read_exact(&mut buffer[..n])?;
            stream.write_all(&buffer[..n])?;
            left -= n as u64;
        }
    }
}

struct BenchPeer {
    entry: ModelEntry,
    dir: PathBuf,
}

#[tonic::async_trait]
impl NodeHandler for BenchPeer {
    fn node_id(&self) -> String {
        "bench-peer".into()
    }
    async fn topology(&self) -> Result<pb::TopologyResponse, Status> {
        let holding = local_holding(&self.entry, &self.dir)
            .map_err(|e| Status::internal(format!("{e:#}")))?;
        Ok(pb::TopologyResponse {
            nodes: vec![pb::NodeInfo {
                node_id: self.node_id(),
                holdings: holding.into_iter().collect(),
                ..Default::default()
            }],
        })
    }
    async fn fetch_weights(&self, request: pb::WeightRequest) -> Result<WeightStream, Status> {
        serve(
            &self.entry,
            &self.dir,
            &request,
            Arc::new(AtomicU64::new(0)),
        )
    }
}

/// The measuring process.
async fn measure(args: &TransferBenchArgs, entry: ModelEntry, dir: PathBuf) -> anyhow::Result<()> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["bench-transfer", "--serve", "--model", &entry.id])
        .env("EXO_MODELS_DIR", &dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start the serving process")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("no stdout")?).read_line(&mut line)?;
    let address = |key: &str| -> anyhow::Result<SocketAddr> {
        let field = line
            .split_whitespace()
            .find_map(|f| f.strip_prefix(key))
            .with_context(|| format!("the serving process said {line:?}"))?;
        Ok(field.parse()?)
    };
    let (grpc, tcp) = (address("grpc=")?, address("tcp=")?);
    let holding = local_holding(&entry, &dir)?.context("the model is not here")?;
    let size = holding.files[0].size;
    let name = holding.files[0].name.clone();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))?
        .tcp_nodelay(true)
        .initial_stream_window_size(WINDOW_BYTES)
        .initial_connection_window_size(WINDOW_BYTES)
        .max_frame_size(1 << 20)
        .connect()
        .await?;
    let client = NodeClient::new(channel);
    let mut socket = TcpStream::connect(tcp)?;
    socket.set_nodelay(true)?;

    let (mut tcp_rates, mut grpc_rates, mut fetch_rates) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..=args.rounds {
        let started = Instant::now();
        tcp_copy(&mut socket, size)?;
        let tcp_time = started.elapsed();

        let started = Instant::now();
        grpc_copy(client.clone(), &entry.id, &name, size).await?;
        let grpc_time = started.elapsed();

        let scratch = tempfile_dir()?;
        let source = bench_peer(client.clone());
        let (fetch_entry, fetch_holding, fetch_dir) =
            (entry.clone(), holding.clone(), scratch.clone());
        let started = Instant::now();
        let received = tokio::task::spawn_blocking(move || {
            let counter = AtomicU64::new(0);
            let progress = DownloadProgress::default().start(&fetch_entry.id, "bench", 0);
            let wanted = Some(0..fetch_entry.layers);
            fetch_from_peer(
                &source,
                &fetch_entry,
                &fetch_dir,
                &fetch_holding,
                &wanted,
                &counter,
                &progress,
            )
        })
        .await??;
        let fetch_time = started.elapsed();
        let _ = std::fs::remove_dir_all(&scratch);
        if round == 0 {
            continue; // warm-up
        }
        tcp_rates.push(size as f64 / tcp_time.as_secs_f64());
        grpc_rates.push(size as f64 / grpc_time.as_secs_f64());
        fetch_rates.push(received as f64 / fetch_time.as_secs_f64());
    }
    drop(child.stdin.take());
    let _ = child.wait();

    let (tcp, grpc, fetch) = (
        median(&mut tcp_rates),
        median(&mut grpc_rates),
        median(&mut fetch_rates),
    );
    if args.json {
        println!(
            "{}",
            json!({
                "model": entry.id,
                "file_bytes": size,
                "rounds": args.rounds,
                "tcp_bytes_per_second": tcp,
                "grpc_bytes_per_second": grpc,
                "peer_fetch_bytes_per_second": fetch,
                "grpc_vs_tcp": grpc / tcp,
                "peer_fetch_vs_tcp": fetch / tcp,
            })
        );
    } else {
        println!(
            "{} ({:.1} MB), {} rounds, medians, loopback:",
            entry.id,
            size as f64 / 1e6,
            args.rounds
        );
        println!("  plain TCP copy          {:>9.1} MB/s", tcp / 1e6);
        println!(
            "  FetchWeights (gRPC+CRC) {:>9.1} MB/s  {:>5.1}% of TCP",
            grpc / 1e6,
            100.0 * grpc / tcp
        );
        println!(
            "  peer fetch (to disk, sha256 per tensor) {:>9.1} MB/s  {:>5.1}% of TCP",
            fetch / 1e6,
            100.0 * fetch / tcp
        );
    }
    Ok(())
}

/// The serving process as a peer that weights come from.
fn bench_peer(client: NodeClient<tonic::transport::Channel>) -> PeerSource {
    PeerSource {
        node_id: "bench-peer".into(),
        client,
        runtime: tokio::runtime::Handle::current(),
        idle_timeout: Duration::from_secs(30),
        // The bench model has a manifest: the transfer measured is the checked one.
        trust_without_manifest: false,
    }
}

fn tcp_copy(socket: &mut TcpStream, size: u64) -> anyhow::Result<()> {
    let mut ask = [0u8; 16];
    ask[8..].copy_from_slice(&size.to_le_bytes());
    socket.write_all(&ask)?;
    let mut buffer = vec![0u8; CHUNK_BYTES];
    let mut left = size;
    while left > 0 {
        let n = socket.read(&mut buffer[..(left as usize).min(CHUNK_BYTES)])?;
        if n == 0 {
            bail!("the TCP copy ended early");
        }
        left -= n as u64;
    }
    Ok(())
}

async fn grpc_copy(
    mut client: NodeClient<tonic::transport::Channel>,
    model: &str,
    file: &str,
    size: u64,
) -> anyhow::Result<()> {
    let whole = 0..size;
    let request = weight_request(model, file, std::slice::from_ref(&whole));
    let mut stream = client.fetch_weights(request).await?.into_inner();
    let mut got = 0;
    while let Some(chunk) = stream.message().await? {
        if check_chunk(&chunk).is_err() {
            bail!("a damaged chunk");
        }
        got += chunk.data.len() as u64;
    }
    if got != size {
        bail!("the stream ended after {got} of {size} bytes");
    }
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("exo-bench-transfer-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

//! Weight transfers against peers that misbehave, over real gRPC on loopback: a peer
//! whose bytes are wrong (a bad disk: the chunks' CRCs match, the tensors' sha256 do not),
//! one whose chunks are damaged on the way (CRC mismatch), and one that stops mid-stream.
//! Each is a clear error; what was wrong is never recorded as present or verified; a later
//! transfer from an honest peer resumes with only what is still missing.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::Duration;

use exo::catalog::sparse_store::read_sidecar;
use exo::catalog::{Catalog, DownloadProgress, ModelEntry, presence};
use exo::proto::pb;
use exo::proto::pb::node_client::NodeClient;
use exo::resource::Managed;
use exo::server::{GrpcServer, WeightStream};
use exo::supply::serve::serve;
use exo::supply::{PeerSource, fetch_from_peer, local_holding};
use tonic::Status;

use crate::support::stand_in::StandIn;
use crate::support::{default_model, models_dir};

/// How a fake peer spoils what it sends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    /// Flips a byte of the chunk at this offset and sends the CRC of the flipped data.
    WrongBytes(u64),
    /// Flips a byte of the chunk at this offset, keeping the honest CRC.
    DamagedChunk(u64),
    /// Ends the stream once this many bytes went out.
    StopAfter(u64),
}

/// A peer that serves the real model file through the node's own serving code, spoiled
/// by `fault`.
fn spoiled(
    entry: &ModelEntry,
    fault: Fault,
    request: pb::WeightRequest,
) -> Result<WeightStream, Status> {
    let mut honest = serve(entry, &models_dir(), &request, Arc::new(AtomicU64::new(0)))?;
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let mut sent = 0u64;
        while let Some(item) = honest.recv().await {
            let Ok(mut chunk) = item else {
                let _ = sender.send(item).await;
                return;
            };
            if let Fault::StopAfter(limit) = fault
                && sent >= limit
            {
                return;
            }
            let covers =
                |at: u64| chunk.offset <= at && at < chunk.offset + chunk.data.len() as u64;
            match fault {
                Fault::WrongBytes(at) if covers(at) => {
                    let mut data = chunk.data.to_vec();
                    data[(at - chunk.offset) as usize] ^= 0xff;
                    chunk.crc32 = crc32fast::hash(&data);
                    chunk.data = data.into();
                }
                Fault::DamagedChunk(at) if covers(at) => {
                    let mut data = chunk.data.to_vec();
                    data[(at - chunk.offset) as usize] ^= 0xff;
                    chunk.data = data.into();
                }
                _ => {}
            }
            sent += chunk.data.len() as u64;
            if sender.send(Ok(chunk)).await.is_err() {
                return;
            }
        }
    });
    Ok(receiver)
}

fn entry() -> ModelEntry {
    default_model();
    Catalog::builtin().get("smollm2-135m").unwrap().clone()
}

/// Starts a fake peer; returns its server (keep it alive) and a source to fetch from.
async fn fake_peer(fault: Fault) -> (Arc<Managed<GrpcServer>>, PeerSource) {
    let server = Managed::new(
        "grpc_server",
        GrpcServer::new(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            Arc::new(StandIn::new("fake").serving_weights({
                let entry = entry();
                Arc::new(move |request| spoiled(&entry, fault, request))
            })),
            Arc::new(AtomicU16::new(0)),
        ),
    );
    let address = server.ensure_ready().await.unwrap().local_addr().unwrap();
    let client = NodeClient::connect(format!("http://{address}"))
        .await
        .unwrap()
        .max_decoding_message_size(64 << 20);
    let source = PeerSource {
        node_id: "fake".into(),
        client,
        runtime: tokio::runtime::Handle::current(),
        idle_timeout: Duration::from_secs(10),
        trust_without_manifest: false,
    };
    (server, source)
}

/// Fetches layers `layers` from `source` into `dir`; the bytes received and the outcome.
async fn fetch(
    source: PeerSource,
    dir: &Path,
    layers: std::ops::Range<usize>,
) -> (u64, Result<u64, String>) {
    fetch_entry(source, dir, layers, entry()).await
}

/// [`fetch`] with the receiving node's own registry entry of the model.
async fn fetch_entry(
    source: PeerSource,
    dir: &Path,
    layers: std::ops::Range<usize>,
    entry: ModelEntry,
) -> (u64, Result<u64, String>) {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let holding = local_holding(&entry, &models_dir()).unwrap().unwrap();
        let received = AtomicU64::new(0);
        let progress = DownloadProgress::default().start(&entry.id, "test", 0);
        let outcome = fetch_from_peer(
            &source,
            &entry,
            &dir,
            &holding,
            &Some(layers),
            &received,
            &progress,
        )
        .map_err(|e| format!("{e:#}"));
        (received.load(Ordering::Relaxed), outcome)
    })
    .await
    .unwrap()
}

/// The first byte of tensor `name` in the model file.
fn tensor_start(name: &str) -> (u64, u64) {
    let mut file = std::fs::File::open(default_model()).unwrap();
    let header = exo::catalog::header::read_local_header(
        &mut file,
        exo::catalog::WeightFormat::Gguf,
        Default::default(),
    )
    .unwrap();
    let t = header
        .layout
        .tensors
        .iter()
        .find(|t| t.name == name)
        .unwrap();
    (t.start, t.end)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_honest_peer_delivers_exactly_the_tensors_of_the_layers() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, source) = fake_peer(Fault::None).await;
    let (received, outcome) = fetch(source, dir.path(), 3..6).await;
    assert_eq!(outcome, Ok(received));
    let here = presence(&entry(), dir.path());
    assert!(here.covers(&(3..6), 30), "{here:?}");
    assert!(!here.covers(&(0..6), 30), "{here:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_bytes_from_a_peer_are_dropped_and_an_honest_peer_refetches_only_them() {
    let dir = tempfile::tempdir().unwrap();
    let (start, end) = tensor_start("blk.4.ffn_down.weight");
    let (_bad, source) = fake_peer(Fault::WrongBytes(start + 100)).await;
    let (_, outcome) = fetch(source, dir.path(), 3..6).await;
    let error = outcome.unwrap_err();
    assert!(
        error.contains("peer fake sent wrong bytes for 1 tensor(s)")
            && error.contains("blk.4.ffn_down.weight"),
        "{error}"
    );
    let model = dir
        .path()
        .join("smollm2-135m")
        .join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let sidecar = read_sidecar(&model).unwrap().unwrap();
    assert!(!sidecar.verified.contains("blk.4.ffn_down.weight"));
    assert!(
        !sidecar.present.contains(&(start..end)),
        "the wrong bytes are not claimed"
    );
    assert!(sidecar.verified.contains("blk.4.ffn_up.weight"));
    assert!(!presence(&entry(), dir.path()).covers(&(3..6), 30));

    let (_good, source) = fake_peer(Fault::None).await;
    let (received, outcome) = fetch(source, dir.path(), 3..6).await;
    assert_eq!(
        outcome,
        Ok(end - start),
        "only the dropped tensor travels again"
    );
    assert_eq!(received, end - start);
    assert!(presence(&entry(), dir.path()).covers(&(3..6), 30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_damaged_on_the_way_is_refused_by_its_crc() {
    let dir = tempfile::tempdir().unwrap();
    let (start, _) = tensor_start("blk.4.attn_q.weight");
    let (_bad, source) = fake_peer(Fault::DamagedChunk(start + 7)).await;
    let (_, outcome) = fetch(source, dir.path(), 3..6).await;
    let error = outcome.unwrap_err();
    assert!(error.contains("is damaged: CRC-32"), "{error}");
    let model = dir
        .path()
        .join("smollm2-135m")
        .join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let sidecar = read_sidecar(&model).unwrap().unwrap();
    assert!(
        !sidecar.present.contains(&(start..start + 8)),
        "the damaged chunk is not claimed"
    );
    assert!(!presence(&entry(), dir.path()).covers(&(3..6), 30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_mid_stream_leaves_a_copy_that_resumes() {
    let dir = tempfile::tempdir().unwrap();
    // The header (~0.7 MB) and a few more chunks go through, then the peer goes quiet.
    let (_bad, source) = fake_peer(Fault::StopAfter(3 << 20)).await;
    let (first, outcome) = fetch(source, dir.path(), 3..6).await;
    let error = outcome.unwrap_err();
    assert!(error.contains("peer fake stopped after byte"), "{error}");
    assert!(first >= 3 << 20, "{first}");
    assert!(!presence(&entry(), dir.path()).covers(&(3..6), 30));

    let fresh = tempfile::tempdir().unwrap();
    let (_good, source) = fake_peer(Fault::None).await;
    let (all, _) = fetch(source, fresh.path(), 3..6).await;

    let (_good, source) = fake_peer(Fault::None).await;
    let (rest, outcome) = fetch(source, dir.path(), 3..6).await;
    assert_eq!(outcome, Ok(rest));
    assert_eq!(
        first + rest,
        all,
        "the resumed transfer fetched only what was missing"
    );
    assert!(presence(&entry(), dir.path()).covers(&(3..6), 30));
}

/// The registry entry of a model without a tensor manifest (as every entry not verified
/// here is): a partial copy could only be checked for size.
fn entry_without_manifest() -> ModelEntry {
    let mut entry = entry();
    for file in &mut entry.files {
        file.manifest = None;
    }
    entry
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_from_a_peer_without_a_manifest_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (start, end) = tensor_start("blk.4.ffn_down.weight");
    let (_bad, source) = fake_peer(Fault::WrongBytes(start + 100)).await;
    let (_, outcome) = fetch_entry(source, dir.path(), 3..6, entry_without_manifest()).await;
    let error = outcome.expect_err("wrong bytes of the right size were taken from a peer");
    assert!(
        error.contains("no tensor manifest") && error.contains("--trust-peer-weights"),
        "{error}"
    );
    let here = presence(&entry_without_manifest(), dir.path());
    assert!(!here.covers(&(3..6), 30), "{here:?}");
    let model = dir
        .path()
        .join("smollm2-135m")
        .join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let recorded = read_sidecar(&model).ok().flatten();
    assert!(
        recorded.is_none_or(|s| !s.present.contains(&(start..end))),
        "the peer's bytes were recorded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_trust_peer_weights_a_copy_without_a_manifest_is_taken_checked_for_size_only() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, mut source) = fake_peer(Fault::None).await;
    source.trust_without_manifest = true;
    let (received, outcome) = fetch_entry(source, dir.path(), 3..6, entry_without_manifest()).await;
    assert_eq!(outcome, Ok(received));
    assert!(presence(&entry_without_manifest(), dir.path()).covers(&(3..6), 30));
    let model = dir
        .path()
        .join("smollm2-135m")
        .join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let sidecar = read_sidecar(&model).unwrap().unwrap();
    assert_eq!(sidecar.tensor_check, exo::catalog::TensorCheck::SizeOnly);
}

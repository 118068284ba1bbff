//! Getting tensors from a peer: the header first (checked against the file's manifest),
//! then the byte ranges of the tensors a shard needs, streamed by `FetchWeights` into the
//! same sparse local copy the Hub fetcher writes (`crate::catalog::sparse_store`), so a
//! later plan reuses them whichever way they came.
//!
//! Every chunk must be the next bytes asked for and match its CRC-32; bytes are recorded
//! as present only once written and synced, so a peer that stops mid-stream leaves a copy
//! that resumes where it stopped. Each tensor is then checked whole (sha256 against the
//! manifest, as its bytes arrive: [`super::arriving_hashes`]); one that fails is forgotten — never left to pass for good bytes — and the
//! transfer fails with the reason, for the caller to try another peer. Where no manifest
//! describes the file, nothing is taken from a peer unless the node trusts its peers'
//! weights (`--trust-peer-weights`; then sizes are all that is checked).
//!
//! Runs on a blocking thread (file I/O and hashing), pulling chunks from the async stream
//! through the runtime's handle.

use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::runtime::Handle;
use tonic::transport::Channel;

use super::arriving_hashes::ArrivingHashes;
use crate::catalog::header::{Header, HeaderLimits, read_header};
use crate::catalog::layout::{ModelLayout, TensorRole, TensorSpan, tensor_ranges, tensor_role};
use crate::catalog::local_files::{lock_model_dir, weight_files};
use crate::catalog::progress::ProgressHandle;
use crate::catalog::sparse_store::{SparseFile, read_sidecar};
use crate::catalog::tensor_manifest::{TensorVerdict, find_manifest};
use crate::catalog::{ModelEntry, TensorCheck, TensorManifest, check_tensor};
use crate::proto::pb;
use crate::proto::pb::node_client::NodeClient;
use crate::proto::weights::{check_chunk, weight_request};

use super::holdings::holding_file;

/// Bytes asked for in one `FetchWeights` call.
const REQUEST_BYTES: u64 = 256 << 20;

/// Received bytes are synced and recorded at least this often.
const RECORD_BYTES: u64 = 64 << 20;

/// One peer to fetch from.
pub struct PeerSource {
    pub node_id: String,
    pub client: NodeClient<Channel>,
    /// The runtime the client's connection lives on.
    pub runtime: Handle,
    /// A stream silent this long is given up (the peer hung).
    pub idle_timeout: Duration,
    /// Take this peer's tensors even where no manifest can check them (`--trust-peer-weights`):
    /// then only their sizes are checked, and a peer could send any bytes of those sizes.
    pub trust_without_manifest: bool,
}

/// What to fetch: the header and shared tensors (enough to open the model), or also the
/// tensors of a range of layers.
pub type Wanted = Option<Range<usize>>;

/// Fetches from `peer` what `wanted` needs of `entry` into `models_dir`, as the peer's
/// `holding` describes its file: the header first (it says where every tensor is), then
/// the tensors; returns the bytes received.
pub fn fetch_from_peer(
    peer: &PeerSource,
    entry: &ModelEntry,
    models_dir: &Path,
    holding: &pb::ModelHolding,
    wanted: &Wanted,
    received: &AtomicU64,
    progress: &ProgressHandle,
) -> anyhow::Result<u64> {
    let info = holding_file(holding, entry)?;
    let local = weight_files(entry, models_dir)?
        .and_then(|files| files.into_iter().next())
        .context("the registry entry names no weight file")?;
    if local.path.is_file() && read_sidecar(&local.path)?.is_none() {
        // A whole file is already here.
        return Ok(0);
    }
    // One writer per model directory at a time, across processes (as the Hub fetcher).
    let _lock = lock_model_dir(entry, models_dir)?;

    let sha256 = local
        .remote
        .sha256
        .clone()
        .or_else(|| (!info.sha256.is_empty()).then(|| info.sha256.clone()));
    let manifest = find_manifest(&local, info.size, sha256.as_deref());
    if manifest.is_none() && !peer.trust_without_manifest {
        bail!(
            "no tensor manifest describes {} ({} bytes, as peer {} has it): its tensors could be checked for size only, so they are not taken from a peer; place the file's manifest beside it (`exo models manifest FILE` on a verified copy), or start the node with --trust-peer-weights",
            info.name,
            info.size,
            peer.node_id
        );
    }
    let check = if manifest.is_some() {
        TensorCheck::Sha256
    } else {
        TensorCheck::SizeOnly
    };
    let source = format!("peer {}", peer.node_id);
    let sparse = SparseFile::open(&local.path, &source, info.size, sha256.as_deref(), check)?;
    let before = received.load(Ordering::Relaxed);
    let mut transfer = Transfer {
        peer,
        entry,
        file: &info.name,
        sparse,
        manifest,
        received,
        progress,
    };
    let header = transfer.header(info.size, info.header_len)?;
    transfer.tensors(&header, wanted)?;
    Ok(received.load(Ordering::Relaxed) - before)
}

/// One weight file on its way from a peer into the sparse local copy.
struct Transfer<'a> {
    peer: &'a PeerSource,
    entry: &'a ModelEntry,
    /// The file's name, as the peer knows it.
    file: &'a str,
    sparse: SparseFile,
    manifest: Option<TensorManifest>,
    received: &'a AtomicU64,
    progress: &'a ProgressHandle,
}

impl Transfer<'_> {
    /// Receives the first `header_len` bytes of the file (of `size`) unless they are here,
    /// and reads the header from them: the length the peer gave, and (with a manifest) the
    /// manifest's header and layout. A wrong header is forgotten.
    fn header(&mut self, size: u64, header_len: u64) -> anyhow::Result<Header> {
        let sparse = &mut self.sparse;
        if sparse.state.header_len != Some(header_len) || !sparse.has(&(0..header_len)) {
            let missing = sparse.missing(&(0..header_len));
            self.progress.set_total(header_len);
            self.receive(&missing, None)?;
        }
        let sparse = &mut self.sparse;
        // Only the header's bytes are here. The reader asks for more than it needs as it
        // grows its read: bytes past the header read as zeros (a complete header never
        // looks at them; one that needs them is not the length the peer gave, and fails
        // below).
        let header = read_header(self.entry.format, size, HeaderLimits::default(), |r| {
            let mut bytes = if r.start < header_len {
                sparse.read_range(r.start..r.end.min(header_len))?
            } else {
                Vec::new()
            };
            bytes.resize((r.end - r.start) as usize, 0);
            Ok(bytes)
        });
        let header = match header.and_then(|h| {
            if h.layout.header_len != header_len {
                bail!(
                    "the header is {} bytes long, not the {header_len} the peer said",
                    h.layout.header_len
                );
            }
            if let Some(manifest) = &self.manifest {
                manifest.check_header(&h.bytes[..header_len as usize])?;
                manifest.check_layout(&h.layout)?;
            }
            Ok(h)
        }) {
            Ok(header) => header,
            Err(error) => {
                sparse.forget(0..header_len)?;
                sparse.state.header_len = None;
                sparse.save()?;
                return Err(error.context(format!(
                    "the header {} sent for {} is wrong",
                    self.peer.node_id, self.file
                )));
            }
        };
        if sparse.state.header_len != Some(header_len) {
            sparse.state.header_len = Some(header_len);
            sparse.save()?;
        }
        Ok(header)
    }

    /// Receives the tensors `wanted` needs (the shared ones when it names no layers) that
    /// are not checked here yet, and checks each; wrong ones are forgotten and named.
    fn tensors(&mut self, header: &Header, wanted: &Wanted) -> anyhow::Result<()> {
        let entry = self.entry;
        let layout = ModelLayout {
            format: entry.format,
            files: vec![header.layout.clone()],
            n_layers: entry.layers,
        };
        let tensors: Vec<TensorSpan> = match wanted {
            Some(layers) => tensor_ranges(&layout, layers.clone())?
                .into_iter()
                .map(|t| TensorSpan {
                    name: t.name,
                    start: t.start,
                    end: t.end,
                })
                .collect(),
            None => header
                .layout
                .tensors
                .iter()
                .filter(|t| tensor_role(entry.format, &t.name) == TensorRole::Shared)
                .cloned()
                .collect(),
        };
        let todo: Vec<&TensorSpan> = tensors
            .iter()
            .filter(|t| !self.sparse.state.verified.contains(&t.name))
            .collect();
        let mut ranges: Vec<Range<u64>> = Vec::new();
        for tensor in &todo {
            for gap in self.sparse.missing(&(tensor.start..tensor.end)) {
                match ranges.last_mut() {
                    Some(last) if last.end == gap.start => last.end = gap.end,
                    _ => ranges.push(gap),
                }
            }
        }
        self.progress
            .set_total(ranges.iter().map(|r| r.end - r.start).sum());
        // With a manifest, the tensors that come whole are hashed as they arrive.
        let hashes = self.manifest.as_ref().map(|_| {
            let sparse = &self.sparse;
            ArrivingHashes::start(
                todo.iter()
                    .filter(|t| comes_whole(sparse, t))
                    .map(|t| (*t).clone())
                    .collect(),
            )
        });
        self.receive(&ranges, hashes.as_ref())?;
        let mut arrived = hashes.map(ArrivingHashes::finish).unwrap_or_default();

        let sparse = &mut self.sparse;
        let mut corrupt = Vec::new();
        for tensor in todo {
            let verdict = match (arrived.remove(&tensor.name), &self.manifest) {
                (Some(actual), Some(manifest)) => manifest.verdict(tensor, actual)?,
                _ => check_tensor(sparse.file_mut(), tensor, self.manifest.as_ref())?,
            };
            match verdict {
                TensorVerdict::Verified(_) => {
                    sparse.state.verified.insert(tensor.name.clone());
                }
                TensorVerdict::Corrupt { expected, actual } => {
                    sparse.forget(tensor.start..tensor.end)?;
                    corrupt.push(format!(
                        "{} (sha256 {actual}, expected {expected})",
                        tensor.name
                    ));
                }
            }
        }
        sparse.save()?;
        if !corrupt.is_empty() {
            bail!(
                "peer {} sent wrong bytes for {} tensor(s) of {}: {}; they were dropped",
                self.peer.node_id,
                corrupt.len(),
                self.file,
                corrupt.join(", ")
            );
        }
        Ok(())
    }

    fn receive(
        &mut self,
        ranges: &[Range<u64>],
        hashes: Option<&ArrivingHashes>,
    ) -> anyhow::Result<()> {
        let mut sink = Sink {
            sparse: &mut self.sparse,
            hashes,
        };
        receive_ranges(
            self.peer,
            self.entry,
            self.file,
            &mut sink,
            ranges,
            self.received,
            self.progress,
        )
    }
}

/// Whether every byte of `tensor` is still to come (none of it is here yet).
fn comes_whole(sparse: &SparseFile, tensor: &TensorSpan) -> bool {
    let whole = tensor.start..tensor.end;
    matches!(sparse.missing(&whole).as_slice(), [gap] if *gap == whole)
}

/// Where received bytes go: the sparse local copy, and the hashing thread when there is one.
struct Sink<'a> {
    sparse: &'a mut SparseFile,
    hashes: Option<&'a ArrivingHashes>,
}

/// Streams `ranges` (ascending, disjoint) of `file` from the peer into `sink`.
fn receive_ranges(
    peer: &PeerSource,
    entry: &ModelEntry,
    file: &str,
    sink: &mut Sink,
    ranges: &[Range<u64>],
    received: &AtomicU64,
    progress: &ProgressHandle,
) -> anyhow::Result<()> {
    let mut batch: Vec<Range<u64>> = Vec::new();
    let mut batch_bytes = 0;
    for range in ranges {
        batch.push(range.clone());
        batch_bytes += range.end - range.start;
        if batch_bytes >= REQUEST_BYTES {
            receive_batch(peer, entry, file, sink, &batch, received, progress)?;
            batch.clear();
            batch_bytes = 0;
        }
    }
    if !batch.is_empty() {
        receive_batch(peer, entry, file, sink, &batch, received, progress)?;
    }
    Ok(())
}

/// One `FetchWeights` call. What arrived intact is recorded even when the call fails.
fn receive_batch(
    peer: &PeerSource,
    entry: &ModelEntry,
    file: &str,
    sink: &mut Sink,
    ranges: &[Range<u64>],
    received: &AtomicU64,
    progress: &ProgressHandle,
) -> anyhow::Result<()> {
    let request = weight_request(&entry.id, file, ranges);
    let mut client = peer.client.clone();
    let mut stream = peer
        .runtime
        .block_on(async {
            tokio::time::timeout(peer.idle_timeout, client.fetch_weights(request)).await
        })
        .map_err(|_| {
            anyhow::anyhow!(
                "peer {} did not answer within {:?}",
                peer.node_id,
                peer.idle_timeout
            )
        })?
        .map_err(|status| anyhow::anyhow!("peer {} refused: {}", peer.node_id, status.message()))?
        .into_inner();
    let hashes = sink.hashes;
    let mut writer = RangeWriter::new(sink.sparse);
    let result = (|| {
        for range in ranges {
            let mut cursor = range.start;
            while cursor < range.end {
                let next = peer.runtime.block_on(async {
                    tokio::time::timeout(peer.idle_timeout, stream.message()).await
                });
                let chunk = match next {
                    Err(_) => bail!(
                        "peer {} went silent for {:?} mid-transfer",
                        peer.node_id,
                        peer.idle_timeout
                    ),
                    Ok(Err(status)) => bail!(
                        "peer {} failed mid-transfer: {}",
                        peer.node_id,
                        status.message()
                    ),
                    Ok(Ok(None)) => bail!(
                        "peer {} stopped after byte {cursor} of {file}, before the {} bytes asked for",
                        peer.node_id,
                        ranges.iter().map(|r| r.end - r.start).sum::<u64>()
                    ),
                    Ok(Ok(Some(chunk))) => chunk,
                };
                let len = chunk.data.len() as u64;
                if chunk.offset != cursor || len == 0 || len > range.end - cursor {
                    bail!(
                        "peer {} sent bytes {}..{} where {cursor}..{} were due",
                        peer.node_id,
                        chunk.offset,
                        chunk.offset + len,
                        range.end
                    );
                }
                if let Err(crc) = check_chunk(&chunk) {
                    bail!(
                        "a chunk from peer {} (bytes {}..{} of {file}) is damaged: CRC-32 {crc:08x}, \
                         it says {:08x}",
                        peer.node_id,
                        chunk.offset,
                        chunk.offset + len,
                        chunk.crc32
                    );
                }
                writer.write(cursor, &chunk.data)?;
                if let Some(hashes) = hashes {
                    hashes.feed(cursor, chunk.data);
                }
                cursor += len;
                received.fetch_add(len, Ordering::Relaxed);
                progress.add(len);
            }
            writer.flush()?;
        }
        Ok(())
    })();
    // Whatever arrived intact stays, for the next attempt to skip.
    let flushed = writer.flush();
    result.and(flushed)
}

/// Writes consecutive bytes into a sparse file, recording them as present in batches (a
/// sync and a sidecar write per chunk would cost more than the transfer).
struct RangeWriter<'a> {
    sparse: &'a mut SparseFile,
    pending: Option<Range<u64>>,
}

impl<'a> RangeWriter<'a> {
    fn new(sparse: &'a mut SparseFile) -> Self {
        RangeWriter {
            sparse,
            pending: None,
        }
    }

    fn write(&mut self, offset: u64, bytes: &[u8]) -> anyhow::Result<()> {
        if self.pending.as_ref().is_some_and(|p| p.end != offset) {
            self.flush()?;
        }
        self.sparse.write_at(offset, bytes)?;
        let pending = self.pending.get_or_insert(offset..offset);
        pending.end = offset + bytes.len() as u64;
        if pending.end - pending.start >= RECORD_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        if let Some(range) = self.pending.take() {
            self.sparse.record(range)?;
        }
        Ok(())
    }
}

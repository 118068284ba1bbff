//! Serving a `FetchWeights` request: check that every asked range is something this node
//! holds (a whole file: any byte; a partial copy: its header and the tensors it checked —
//! never bytes it has not verified itself), then stream the ranges in chunks from a
//! blocking reader, each chunk with its CRC-32.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tonic::Status;

use crate::catalog::ModelEntry;
use crate::catalog::header::{HeaderLimits, read_local_header};
use crate::catalog::local_files::weight_files;
use crate::catalog::range_set::RangeSet;
use crate::catalog::sparse_store::read_sidecar;
use crate::proto::pb;
use crate::proto::weights::{requested_ranges, weight_chunk};
use crate::server::WeightStream;

/// Bytes per chunk: large enough that per-message costs vanish on a LAN, small enough to
/// stay far below the gRPC message limit and to resume with little lost.
pub const CHUNK_BYTES: usize = 1 << 20;

/// Chunks read ahead of the network.
const QUEUE_CHUNKS: usize = 8;

/// Checks `request` against what is here and starts streaming it; `served` counts the
/// bytes sent.
pub fn serve(
    entry: &ModelEntry,
    models_dir: &Path,
    request: &pb::WeightRequest,
    served: Arc<AtomicU64>,
) -> Result<WeightStream, Status> {
    let (path, ranges) = check_request(entry, models_dir, request)?;
    let (sender, receiver) = tokio::sync::mpsc::channel(QUEUE_CHUNKS);
    let file = File::open(&path)
        .map_err(|e| Status::unavailable(format!("cannot open {}: {e}", path.display())))?;
    tokio::task::spawn_blocking(move || {
        if let Err(status) = stream_ranges(file, &ranges, &sender, &served) {
            let _ = sender.blocking_send(Err(status));
        }
    });
    Ok(receiver)
}

fn stream_ranges(
    mut file: File,
    ranges: &[Range<u64>],
    sender: &tokio::sync::mpsc::Sender<Result<pb::WeightChunk, Status>>,
    served: &AtomicU64,
) -> Result<(), Status> {
    for range in ranges {
        file.seek(SeekFrom::Start(range.start))
            .map_err(|e| Status::internal(format!("cannot seek the weight file: {e}")))?;
        let mut offset = range.start;
        while offset < range.end {
            let len = ((range.end - offset) as usize).min(CHUNK_BYTES);
            let data = read_chunk(&mut file, len)
                .map_err(|e| Status::internal(format!("cannot read the weight file: {e}")))?;
            let chunk = weight_chunk(offset, data);
            if sender.blocking_send(Ok(chunk)).is_err() {
                // The asking node hung up: nothing more to do.
                return Ok(());
            }
            served.fetch_add(len as u64, Ordering::Relaxed);
            offset += len as u64;
        }
    }
    Ok(())
}

/// The next `len` bytes of `file`, read into a buffer that is not zeroed first (the read
/// fills it; zeroing 1 MiB per chunk was a visible share of a transfer's CPU).
fn read_chunk(file: &mut File, len: usize) -> std::io::Result<Vec<u8>> {
    let mut data = Vec::with_capacity(len);
    file.by_ref().take(len as u64).read_to_end(&mut data)?;
    if data.len() < len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("the file ended {} bytes early", len - data.len()),
        ));
    }
    Ok(data)
}

/// The file a request names and its ranges, once each is known to be held here.
fn check_request(
    entry: &ModelEntry,
    models_dir: &Path,
    request: &pb::WeightRequest,
) -> Result<(PathBuf, Vec<Range<u64>>), Status> {
    if request.model_id != entry.id {
        return Err(Status::not_found(format!(
            "this node serves the weights of {}, not {}",
            entry.id, request.model_id
        )));
    }
    let unavailable = |e: anyhow::Error| Status::unavailable(format!("{e:#}"));
    let files = weight_files(entry, models_dir)
        .map_err(unavailable)?
        .unwrap_or_default();
    let Some(file) = files.iter().find(|f| f.remote.name() == request.file) else {
        return Err(Status::not_found(format!(
            "{} has no weight file named {:?}",
            entry.id, request.file
        )));
    };
    let size = std::fs::metadata(&file.path)
        .map_err(|_| Status::not_found(format!("{} is not here", request.file)))?
        .len();
    let mut ranges = Vec::with_capacity(request.ranges.len());
    let mut last_end = 0;
    for r in requested_ranges(request) {
        if r.start >= r.end || r.end > size || r.start < last_end {
            return Err(Status::invalid_argument(format!(
                "bad byte range {}..{} of {} ({size} bytes): ranges must be non-empty, \
                 ascending, disjoint and inside the file",
                r.start, r.end, request.file
            )));
        }
        last_end = r.end;
        ranges.push(r);
    }
    let held = held_ranges(entry, &file.path).map_err(unavailable)?;
    if let Some(held) = held
        && let Some(missing) = ranges.iter().find(|r| !held.contains(r))
    {
        return Err(Status::not_found(format!(
            "bytes {}..{} of {} are not held here (this node has only some of its layers)",
            missing.start, missing.end, request.file
        )));
    }
    Ok((file.path.clone(), ranges))
}

/// What of a partial copy may be served (its header and its checked tensors); `None` for
/// a whole file (everything).
fn held_ranges(entry: &ModelEntry, path: &Path) -> anyhow::Result<Option<RangeSet>> {
    let Some(sidecar) = read_sidecar(path)? else {
        return Ok(None);
    };
    let mut held = RangeSet::new();
    let Some(header_len) = sidecar.header_len else {
        return Ok(Some(held));
    };
    held.insert(0..header_len);
    let mut handle = File::open(path)?;
    let header = read_local_header(&mut handle, entry.format, HeaderLimits::default())?;
    for tensor in &header.layout.tensors {
        if sidecar.verified.contains(&tensor.name)
            && sidecar.present.contains(&(tensor.start..tensor.end))
        {
            held.insert(tensor.start..tensor.end);
        }
    }
    Ok(Some(held))
}

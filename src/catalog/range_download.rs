//! Fetching byte ranges of a remote file into its sparse local copy: in chunks, each one
//! fsynced and recorded before the next, so an interruption loses nothing it received;
//! retried on network trouble; and still correct from a server that ignores `Range`
//! (answers 200 with the whole file): the body is then streamed once, keeping only the
//! bytes wanted.

use std::io::Read;
use std::ops::Range;
use std::time::Duration;

use anyhow::{Context, bail};

use super::hub_client::{Body, HubClient, HubError};
use super::progress::ProgressHandle;
use super::sparse_store::SparseFile;

/// How downloads are cut up and retried.
#[derive(Debug, Clone)]
pub struct DownloadOptions {
    /// Bytes per request (and per sidecar update).
    pub chunk_bytes: u64,
    /// Tries after the first, per chunk, on network trouble (and per tensor that fails its
    /// check).
    pub retries: u32,
    /// Wait before the n-th retry: n × this.
    pub retry_delay: Duration,
    /// Tensors closer than this are fetched in one request, gap included (GGUF pads
    /// tensors to 32 bytes; one request beats two).
    pub merge_gap: u64,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        DownloadOptions {
            chunk_bytes: 32 << 20,
            retries: 4,
            retry_delay: Duration::from_secs(1),
            merge_gap: 64 << 10,
        }
    }
}

/// Sorts `ranges`, merges those closer than `gap`, and cuts the result in chunks of at
/// most `chunk` bytes.
pub fn plan_chunks(mut ranges: Vec<Range<u64>>, gap: u64, chunk: u64) -> Vec<Range<u64>> {
    ranges.retain(|r| !r.is_empty());
    ranges.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<u64>> = Vec::new();
    for range in ranges {
        match merged.last_mut() {
            Some(last) if range.start <= last.end.saturating_add(gap) => {
                last.end = last.end.max(range.end)
            }
            _ => merged.push(range),
        }
    }
    let chunk = chunk.max(1);
    let mut chunks = Vec::new();
    for range in merged {
        let mut start = range.start;
        while start < range.end {
            let end = (start + chunk).min(range.end);
            chunks.push(start..end);
            start = end;
        }
    }
    chunks
}

/// A body that started at byte 0 because the server ignored `Range`, read up to
/// `position`.
struct WholeStream {
    reader: Box<dyn Read + Send + Sync>,
    position: u64,
}

/// Downloads `ranges` of the file at `url` into `sparse`, skipping what it already has.
pub fn download_ranges(
    client: &HubClient,
    url: &str,
    sparse: &mut SparseFile,
    ranges: &[Range<u64>],
    options: &DownloadOptions,
    progress: &ProgressHandle,
) -> anyhow::Result<()> {
    let mut stream: Option<WholeStream> = None;
    for chunk in ranges {
        let mut failures = 0;
        loop {
            let missing = sparse.missing(chunk);
            let Some(piece) = missing.first().cloned() else {
                break;
            };
            if progress.cancelled() {
                bail!("the download was cancelled");
            }
            match fetch_piece(client, url, sparse, piece, &mut stream, progress) {
                Ok(()) => {}
                Err(error) if error.transient && failures < options.retries => {
                    failures += 1;
                    tracing::warn!(
                        "{url}: {} (try {} of {}, resuming where it stopped)",
                        error.error,
                        failures + 1,
                        options.retries + 1
                    );
                    stream = None;
                    std::thread::sleep(options.retry_delay * failures);
                }
                Err(error) => return Err(error.error),
            }
        }
    }
    Ok(())
}

struct PieceError {
    error: anyhow::Error,
    transient: bool,
}

impl From<HubError> for PieceError {
    fn from(error: HubError) -> Self {
        PieceError {
            transient: error.is_transient(),
            error: error.into(),
        }
    }
}

fn fatal(error: anyhow::Error) -> PieceError {
    PieceError {
        error,
        transient: false,
    }
}

/// Fetches the bytes of `piece` (one request, or on from the whole-file stream).
fn fetch_piece(
    client: &HubClient,
    url: &str,
    sparse: &mut SparseFile,
    piece: Range<u64>,
    stream: &mut Option<WholeStream>,
    progress: &ProgressHandle,
) -> Result<(), PieceError> {
    if stream.as_ref().is_some_and(|s| s.position > piece.start) {
        *stream = None;
    }
    if stream.is_none() {
        match client.open_range(url, piece.clone())? {
            Body::Partial(mut reader) => return copy(&mut *reader, url, sparse, piece, progress),
            Body::Whole(reader) => {
                tracing::warn!(
                    "{url} ignores range requests: streaming the file and keeping only the \
                     bytes needed"
                );
                *stream = Some(WholeStream {
                    reader,
                    position: 0,
                });
            }
        }
    }
    let whole = stream.as_mut().expect("a stream was just opened");
    let skip = piece.start - whole.position;
    let skipped = std::io::copy(&mut (&mut whole.reader).take(skip), &mut std::io::sink())
        .map_err(|source| HubError::Read {
            url: url.to_string(),
            source,
        })?;
    whole.position += skipped;
    if skipped < skip {
        *stream = None;
        return Err(PieceError {
            error: anyhow::anyhow!("{url}: the connection ended early"),
            transient: true,
        });
    }
    let result = copy(&mut whole.reader, url, sparse, piece.clone(), progress);
    match &result {
        Ok(()) => whole.position = piece.end,
        Err(_) => *stream = None,
    }
    result
}

/// Copies exactly `piece` from `reader` into `sparse`; on a failure midway, what arrived
/// is fsynced and recorded so that the retry asks only for the rest.
fn copy(
    reader: &mut dyn Read,
    url: &str,
    sparse: &mut SparseFile,
    piece: Range<u64>,
    progress: &ProgressHandle,
) -> Result<(), PieceError> {
    let mut buffer = vec![0u8; 256 << 10];
    let mut position = piece.start;
    let outcome: Result<(), PieceError> = loop {
        if position == piece.end {
            break Ok(());
        }
        let want = ((piece.end - position) as usize).min(buffer.len());
        match reader.read(&mut buffer[..want]) {
            Ok(0) => {
                break Err(PieceError {
                    error: anyhow::anyhow!(
                        "{url}: the connection ended after {} of {} bytes",
                        position - piece.start,
                        piece.end - piece.start
                    ),
                    transient: true,
                });
            }
            Ok(n) => {
                if let Err(e) = sparse.write_at(position, &buffer[..n]) {
                    break Err(fatal(
                        anyhow::Error::new(e)
                            .context(format!("cannot write {}", sparse.path().display())),
                    ));
                }
                position += n as u64;
                progress.add(n as u64);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => {
                break Err(HubError::Read {
                    url: url.to_string(),
                    source,
                }
                .into());
            }
        }
    };
    if position > piece.start {
        sparse
            .record(piece.start..position)
            .context("recording downloaded bytes")
            .map_err(fatal)?;
    }
    outcome
}

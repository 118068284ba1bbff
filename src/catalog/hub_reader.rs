//! The Hub as a fetch reads it: one client and the fetch's options, every call retried
//! on network trouble, and a few bytes of a remote file at a time (headers).

use std::io::Read as _;
use std::ops::Range;

use super::header::HeaderLimits;
use super::hub_client::{Body, HubClient, HubError};
use super::range_download::DownloadOptions;

/// Knobs of a fetch.
#[derive(Debug, Clone, Default)]
pub struct FetchOptions {
    pub download: DownloadOptions,
    pub header: HeaderLimits,
}

/// A Hub client with a fetch's options.
#[derive(Debug, Clone)]
pub(super) struct HubReader {
    pub(super) client: HubClient,
    pub(super) options: FetchOptions,
}

impl HubReader {
    /// A few bytes of a remote file (header growth), retried on network trouble; from a
    /// server that ignores ranges, read off the start of the whole body.
    pub(super) fn read_remote(&self, url: &str, range: Range<u64>) -> anyhow::Result<Vec<u8>> {
        self.with_retries(|| {
            let (mut reader, skip) = match self.client.open_range(url, range.clone())? {
                Body::Partial(reader) => (reader, 0),
                Body::Whole(reader) => (reader, range.start),
            };
            let read_error = |source| HubError::Read {
                url: url.to_string(),
                source,
            };
            std::io::copy(&mut (&mut reader).take(skip), &mut std::io::sink())
                .map_err(read_error)?;
            let mut bytes = Vec::with_capacity((range.end - range.start) as usize);
            (&mut reader)
                .take(range.end - range.start)
                .read_to_end(&mut bytes)
                .map_err(read_error)?;
            if bytes.len() as u64 != range.end - range.start {
                return Err(HubError::Read {
                    url: url.to_string(),
                    source: std::io::ErrorKind::UnexpectedEof.into(),
                });
            }
            Ok(bytes)
        })
        .map_err(Into::into)
    }

    pub(super) fn with_retries<T>(
        &self,
        mut attempt: impl FnMut() -> Result<T, HubError>,
    ) -> Result<T, HubError> {
        let options = &self.options.download;
        let mut failures = 0;
        loop {
            match attempt() {
                Err(error) if error.is_transient() && failures < options.retries => {
                    failures += 1;
                    tracing::warn!("{error} (try {} of {})", failures + 1, options.retries + 1);
                    std::thread::sleep(options.retry_delay * failures);
                }
                other => return other,
            }
        }
    }
}

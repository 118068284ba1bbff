//! One weight file during a fetch: probed and checked against the registry, its partial
//! copy opened and its header read (from disk when an earlier fetch left it), its tensors
//! checked once their bytes are there (fetched again when wrong), and, after a whole
//! fetch, checked whole against its sha256 — kept as a plain file, or deleted.

use std::fs::File;

use anyhow::{Context, bail};

use super::checksum::{record_verified, verify_file};
use super::header::{Header, read_header, read_local_header};
use super::hub_client::RemoteFile;
use super::hub_reader::HubReader;
use super::layout::TensorSpan;
use super::local_files::LocalFile;
use super::progress::ProgressHandle;
use super::range_download::download_ranges;
use super::registry::{HubSource, ModelEntry};
use super::sparse_store::{SparseFile, TensorCheck, read_sidecar, remove_partial};
use super::tensor_manifest::{TensorManifest, TensorVerdict, check_tensor, find_manifest};

/// One weight file during a fetch.
pub(super) struct Opened {
    pub(super) local: LocalFile,
    pub(super) url: String,
    pub(super) header: Header,
    /// `None`: the whole file is already here.
    pub(super) sparse: Option<SparseFile>,
    pub(super) manifest: Option<TensorManifest>,
    pub(super) sha256: Option<String>,
}

impl Opened {
    /// Probes a weight file, checks it against the registry, opens its partial copy and
    /// reads its header (from disk when it is there).
    pub(super) fn open(
        hub: &HubReader,
        entry: &ModelEntry,
        source: &HubSource,
        local: LocalFile,
    ) -> anyhow::Result<Opened> {
        let url = hub
            .client
            .resolve_url(&source.repo, &source.revision, &local.remote.path);
        let limits = hub.options.header;
        if local.path.is_file() && read_sidecar(&local.path)?.is_none() {
            let sound = match &local.remote.sha256 {
                Some(sha) => verify_file(&local.path, sha).is_ok(),
                None => local
                    .remote
                    .size
                    .is_none_or(|s| std::fs::metadata(&local.path).is_ok_and(|m| m.len() == s)),
            };
            if sound {
                let mut handle = File::open(&local.path)?;
                let header = read_local_header(&mut handle, entry.format, limits)
                    .with_context(|| format!("reading the header of {}", local.path.display()))?;
                return Ok(Opened {
                    sha256: local.remote.sha256.clone(),
                    local,
                    url,
                    header,
                    sparse: None,
                    manifest: None,
                });
            }
            tracing::warn!(
                "{} does not match the registry; fetching it again",
                local.path.display()
            );
            remove_partial(&local.path);
        }
        let remote = hub.with_retries(|| hub.client.probe(&url))?;
        check_against_registry(&local, &remote)?;
        let sha256 = local.remote.sha256.clone().or(remote.sha256.clone());
        let manifest = find_manifest(&local, remote.size, sha256.as_deref());
        let check = if manifest.is_some() {
            TensorCheck::Sha256
        } else {
            TensorCheck::SizeOnly
        };
        let mut sparse =
            SparseFile::open(&local.path, &url, remote.size, sha256.as_deref(), check)?;
        let header = match sparse.state.header_len {
            Some(len) if sparse.has(&(0..len)) => {
                let size = sparse.state.size;
                read_header(entry.format, size, limits, |r| Ok(sparse.read_range(r)?))?
            }
            _ => match read_header(entry.format, remote.size, limits, |r| {
                hub.read_remote(&url, r)
            }) {
                Ok(header) => {
                    // Bytes read past the header are tensor data: kept, not fetched again.
                    sparse.write_at(0, &header.bytes)?;
                    sparse.record(0..header.bytes.len() as u64)?;
                    sparse.state.header_len = Some(header.layout.header_len);
                    sparse.save()?;
                    header
                }
                Err(error) => {
                    if sparse.state.present.total() == 0 {
                        sparse.discard();
                    }
                    return Err(error.context(format!("reading the header of {url}")));
                }
            },
        };
        if let Some(manifest) = &manifest
            && let Err(error) = manifest
                .check_header(&header.bytes[..header.layout.header_len as usize])
                .and_then(|()| manifest.check_layout(&header.layout))
        {
            sparse.forget(0..header.bytes.len() as u64)?;
            sparse.state.header_len = None;
            sparse.save()?;
            return Err(error);
        }
        if manifest.is_none() {
            tracing::warn!(
                "{}: no per-tensor manifest exists for this file; its tensors can only be \
                 checked for size{}",
                local.remote.path,
                if sha256.is_some() {
                    " (a whole fetch checks its sha256)"
                } else {
                    ""
                }
            );
        }
        Ok(Opened {
            local,
            url,
            header,
            sparse: Some(sparse),
            manifest,
            sha256,
        })
    }

    /// Checks every wanted tensor not checked yet, fetching again (a bounded number of
    /// times) those whose bytes are wrong.
    pub(super) fn check_tensors(
        &mut self,
        hub: &HubReader,
        tensors: &[TensorSpan],
        progress: &ProgressHandle,
        total: &mut u64,
    ) -> anyhow::Result<()> {
        let file = self;
        let sparse = file.sparse.as_mut().expect("a partial file");
        for tensor in tensors {
            if sparse.state.verified.contains(&tensor.name) {
                continue;
            }
            let mut refetched = 0;
            loop {
                if !sparse.has(&(tensor.start..tensor.end)) {
                    bail!("tensor {} was not downloaded", tensor.name);
                }
                match check_tensor(sparse.file_mut(), tensor, file.manifest.as_ref())? {
                    TensorVerdict::Verified(_) => {
                        sparse.state.verified.insert(tensor.name.clone());
                        break;
                    }
                    TensorVerdict::Corrupt { expected, actual } => {
                        sparse.forget(tensor.start..tensor.end)?;
                        if refetched >= hub.options.download.retries {
                            bail!(
                                "tensor {} of {} is still corrupt after {} downloads (sha256 {actual}, \
                                 expected {expected}): the server keeps sending wrong bytes",
                                tensor.name,
                                file.local.remote.path,
                                refetched + 1
                            );
                        }
                        refetched += 1;
                        tracing::warn!(
                            "tensor {} of {} has sha256 {actual}, expected {expected}: fetching it again",
                            tensor.name,
                            file.local.remote.path
                        );
                        *total += tensor.len();
                        progress.set_total(*total);
                        download_ranges(
                            &hub.client,
                            &file.url,
                            sparse,
                            std::slice::from_ref(&(tensor.start..tensor.end)),
                            &hub.options.download,
                            progress,
                        )?;
                    }
                }
            }
        }
        sparse.save()
    }
}

/// The Hub's size and sha256 against the registry's, before a byte is fetched.
fn check_against_registry(local: &LocalFile, remote: &RemoteFile) -> anyhow::Result<()> {
    if let Some(size) = local.remote.size
        && size != remote.size
    {
        bail!(
            "the registry gives {} {size} bytes but {} has {}: the registry entry or its \
             revision is wrong; nothing was downloaded",
            local.remote.path,
            remote.url,
            remote.size
        );
    }
    if let (Some(ours), Some(theirs)) = (&local.remote.sha256, &remote.sha256)
        && !ours.eq_ignore_ascii_case(theirs)
    {
        bail!(
            "sha256 mismatch for {}: the registry says {ours}, the Hub's x-linked-etag says \
             {theirs} ({}): the registry entry or its revision is wrong; nothing was downloaded",
            local.remote.path,
            remote.url
        );
    }
    Ok(())
}

/// After a whole fetch: every byte is here; the file becomes a plain whole file if its
/// sha256 matches, and is deleted if not.
pub(super) fn finish_whole(file: Opened) -> anyhow::Result<()> {
    let Some(mut sparse) = file.sparse else {
        return Ok(());
    };
    let size = sparse.state.size;
    if !sparse.missing(&(0..size)).is_empty() {
        bail!("{} is still incomplete", sparse.path().display());
    }
    let Some(expected) = file.sha256 else {
        tracing::warn!(
            "{}: neither the registry nor the Hub gives a sha256; the file is whole but \
             unchecked",
            file.local.remote.path
        );
        sparse.into_whole()?;
        return Ok(());
    };
    let actual = sparse.sha256_of(0..size)?;
    if !actual.eq_ignore_ascii_case(&expected) {
        let path = sparse.path().to_path_buf();
        sparse.discard();
        bail!(
            "checksum mismatch for {}: expected sha256 {expected}, the downloaded bytes have \
             {actual}; the file was deleted",
            path.display()
        );
    }
    let path = sparse.into_whole()?;
    record_verified(&path, &expected)?;
    Ok(())
}

//! An interrupted download resumes without fetching again what it had, and its progress
//! is visible in the shared registry a node reports from.

use exo::catalog::sparse_store::read_sidecar;
use exo::catalog::{DownloadProgress, DownloadState, Fetcher, HubClient, HubConfig};

use super::fixtures::*;

#[test]
fn an_interrupted_download_resumes_without_refetching() {
    let (hub, bytes, models, entry) = tiny_on_a_hub();
    let (header_len, all) = candle_tensors(&bytes);
    let names = needed_names(&all, &(0..6), 6);
    let expected = bytes_of(&all, &names);
    // The connection drops once the store has sent the header and 300 kB of tensors.
    let cut = 2 * header_len + 300_000;
    assert!(cut < expected, "the cut must fall inside the tensors");
    hub.cut_at_total(cut);

    let progress = DownloadProgress::default();
    let client = HubClient::new(HubConfig::new(&hub.endpoint, None));
    let first = Fetcher::new(client.clone(), progress.clone()).with_options(options(0));
    let error = first.fetch_layers(&entry, models.path(), 0..6).unwrap_err();
    let text = format!("{error:#}");
    assert!(text.contains("fetching tiny (layers 0..6)"), "{text}");
    let status = progress.status("tiny").unwrap();
    assert_eq!(status.state, DownloadState::Failed);
    assert!(
        status.error.is_some() && status.bytes_done > 0,
        "{status:?}"
    );

    let local = models.path().join("tiny").join(FILE);
    let sidecar = read_sidecar(&local)
        .unwrap()
        .expect("a partial file keeps its sidecar");
    let kept = sidecar.present.total();
    assert!(
        kept > header_len,
        "what arrived before the cut is kept ({kept} bytes)"
    );
    let served_before = hub.served();
    assert!(served_before >= cut);

    let second = Fetcher::new(client, progress.clone()).with_options(options(2));
    let path = second.fetch_layers(&entry, models.path(), 0..6).unwrap();
    let served_after = hub.served() - served_before;
    // The second run fetched only what the first did not keep.
    assert!(
        served_after + kept <= expected + header_len + 32 * names.len() as u64,
        "resumed run served {served_after} after keeping {kept}, for {expected} bytes of tensors"
    );
    assert!(
        served_after < expected,
        "the resumed run started over ({served_after} bytes)"
    );
    assert_same_tensors(&path, &bytes, &names);

    let status = progress.status("tiny").unwrap();
    assert_eq!(status.state, DownloadState::Done);
    assert_eq!(status.bytes_done, status.bytes_total);
    assert_eq!(
        status.bytes_done, served_after,
        "progress counts the bytes fetched"
    );
    assert_eq!(progress.snapshot().len(), 1);
}

#[test]
fn a_download_cut_midway_is_retried_from_where_it_stopped() {
    let (hub, bytes, models, entry) = tiny_on_a_hub();
    let (header_len, _) = candle_tensors(&bytes);
    hub.cut_at_total(2 * header_len + 200_000);

    // With retries, the same fetch resumes by itself; whole, and checked against the
    // sha256 the hub announces.
    let path = fetcher(&hub, None, 2)
        .fetch_whole(&entry, models.path())
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    assert!(
        hub.served() <= bytes.len() as u64 + 2 * header_len,
        "served {} for a {}-byte file",
        hub.served(),
        bytes.len()
    );
    assert!(
        read_sidecar(&path).unwrap().is_none(),
        "a whole, checked file has no sidecar"
    );
    assert_eq!(
        exo::catalog::presence(&entry, models.path()),
        exo::catalog::Presence::Whole
    );
}

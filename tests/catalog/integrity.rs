//! Wrong bytes never pass silently: a corrupted chunk is caught by the tensor manifest
//! and fetched again; a registry or hub sha256 that does not match is a clear error that
//! leaves no file behind; a download without a manifest says it was checked by size only;
//! a truncated or garbage header is a clear error.

use std::path::Path;

use exo::catalog::sparse_store::{read_sidecar, sidecar_path};
use exo::catalog::tensor_manifest::manifest_beside;
use exo::catalog::{Catalog, TensorCheck, build_manifest, presence};

use super::fake_hub::FakeHub;
use super::fixtures::*;

/// Writes the manifest of `bytes` beside where the fetch will put the file.
fn place_manifest(bytes: &[u8], models: &Path, id: &str) {
    let scratch = tempfile::tempdir().unwrap();
    let original = scratch.path().join(FILE);
    std::fs::write(&original, bytes).unwrap();
    let manifest = build_manifest(&original).unwrap();
    let local = models.join(id).join(FILE);
    std::fs::create_dir_all(local.parent().unwrap()).unwrap();
    std::fs::write(manifest_beside(&local), manifest.to_json()).unwrap();
}

fn error_text<T: std::fmt::Debug>(result: anyhow::Result<T>) -> String {
    format!("{:#}", result.unwrap_err())
}

/// Nothing of the model is left in its directory but the lock (and a manifest placed by
/// the test).
fn assert_nothing_left(models: &Path, id: &str) {
    let dir = models.join(id);
    let left: Vec<String> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n != ".fetch.lock" && !n.ends_with(".manifest.json"))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "left behind in {}: {left:?}",
        dir.display()
    );
}

#[test]
fn a_corrupted_chunk_is_detected_by_the_manifest_and_fetched_again() {
    let hub = FakeHub::start();
    let bytes = tiny_gguf(6, false);
    let index = hub.add(REPO, REVISION, FILE, bytes.clone());
    let models = tempfile::tempdir().unwrap();
    place_manifest(&bytes, models.path(), "tiny");
    let entry = entry("tiny", REPO, FILE, 6);
    let (header_len, all) = candle_tensors(&bytes);
    let victim = all["blk.3.ffn_up.weight"].clone();
    hub.corrupt_once_at(index, victim.start + 1000);

    let path = fetcher(&hub, None, 2)
        .fetch_layers(&entry, models.path(), 2..5)
        .unwrap();

    let names = needed_names(&all, &(2..5), 6);
    assert_same_tensors(&path, &bytes, &names);
    let expected = bytes_of(&all, &names);
    let served = hub.served();
    let victim_len = victim.end - victim.start;
    assert!(
        served >= expected + header_len + victim_len,
        "the corrupted tensor was fetched twice ({served} bytes served)"
    );
    assert!(served <= expected + 2 * header_len + victim_len + 32 * names.len() as u64);
    let sidecar = read_sidecar(&path).unwrap().unwrap();
    assert_eq!(sidecar.tensor_check, TensorCheck::Sha256);
    assert!(sidecar.verified.contains("blk.3.ffn_up.weight"));
}

#[test]
fn the_built_in_manifest_catches_a_corrupted_chunk_of_the_real_model() {
    let hub = FakeHub::start();
    let bytes = smollm_bytes();
    let entry = Catalog::builtin().require("smollm2-135m").unwrap().clone();
    let source = entry.huggingface.clone().unwrap();
    let index = hub.add(
        &source.repo,
        &source.revision,
        &entry.files[0].path,
        bytes.clone(),
    );
    let (_, all) = candle_tensors(&bytes);
    hub.corrupt_once_at(index, all["blk.1.ffn_down.weight"].start + 77);
    let models = tempfile::tempdir().unwrap();
    let path = fetcher(&hub, None, 2)
        .fetch_layers(&entry, models.path(), 0..2)
        .unwrap();
    assert_same_tensors(&path, &bytes, &needed_names(&all, &(0..2), 30));
}

#[test]
fn without_a_manifest_a_partial_download_says_it_was_checked_by_size_only() {
    let hub = FakeHub::start();
    let bytes = tiny_gguf(4, false);
    hub.add(REPO, REVISION, FILE, bytes.clone());
    let models = tempfile::tempdir().unwrap();
    let entry = entry("tiny", REPO, FILE, 4);
    let path = fetcher(&hub, None, 2)
        .fetch_layers(&entry, models.path(), 0..2)
        .unwrap();
    let sidecar = std::fs::read_to_string(sidecar_path(&path)).unwrap();
    assert!(
        sidecar.contains("\"tensor_check\": \"size-only\""),
        "{sidecar}"
    );
    assert!(
        presence(&entry, models.path())
            .describe()
            .contains("size-checked")
    );
}

#[test]
fn a_whole_download_with_a_corrupted_chunk_is_repaired_through_the_manifest() {
    let hub = FakeHub::start();
    let bytes = tiny_gguf(4, false);
    let index = hub.add(REPO, REVISION, FILE, bytes.clone());
    let models = tempfile::tempdir().unwrap();
    place_manifest(&bytes, models.path(), "tiny");
    let (_, all) = candle_tensors(&bytes);
    hub.corrupt_once_at(index, all["blk.2.attn_q.weight"].start + 5);
    let entry = entry("tiny", REPO, FILE, 4);
    let path = fetcher(&hub, None, 2)
        .fetch_whole(&entry, models.path())
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    assert!(!sidecar_path(&path).exists());
}

#[test]
fn a_whole_download_with_a_corrupted_chunk_and_no_manifest_is_deleted() {
    let hub = FakeHub::start();
    let bytes = tiny_gguf(4, false);
    let index = hub.add(REPO, REVISION, FILE, bytes.clone());
    let models = tempfile::tempdir().unwrap();
    let (_, all) = candle_tensors(&bytes);
    hub.corrupt_once_at(index, all["blk.2.attn_q.weight"].start + 5);
    let entry = entry("tiny", REPO, FILE, 4);
    let text = error_text(fetcher(&hub, None, 2).fetch_whole(&entry, models.path()));
    assert!(
        text.contains("checksum mismatch") && text.contains("deleted"),
        "{text}"
    );
    assert_nothing_left(models.path(), "tiny");
}

#[test]
fn a_registry_sha256_the_hub_contradicts_is_refused_before_downloading() {
    let hub = FakeHub::start();
    let bytes = tiny_gguf(4, false);
    hub.add(REPO, REVISION, FILE, bytes.clone());
    let models = tempfile::tempdir().unwrap();
    let mut entry = entry("tiny", REPO, FILE, 4);
    entry.files[0].sha256 = Some("ab".repeat(32));
    let text = error_text(fetcher(&hub, None, 2).fetch_whole(&entry, models.path()));
    assert!(
        text.contains("sha256 mismatch")
            && text.contains(&"ab".repeat(32))
            && text.contains("nothing was downloaded"),
        "{text}"
    );
    assert_eq!(hub.served(), 0);
    assert_nothing_left(models.path(), "tiny");

    let mut entry = entry.clone();
    entry.files[0].sha256 = None;
    entry.files[0].size = Some(bytes.len() as u64 + 1);
    let text = error_text(fetcher(&hub, None, 2).fetch_layers(&entry, models.path(), 0..1));
    assert!(
        text.contains("bytes") && text.contains("nothing was downloaded"),
        "{text}"
    );
    assert_nothing_left(models.path(), "tiny");
}

#[test]
fn a_hub_announcing_a_wrong_sha256_leaves_no_file_behind() {
    let hub = FakeHub::start();
    let bytes = tiny_gguf(4, false);
    hub.add(REPO, REVISION, FILE, bytes.clone());
    hub.advertise_sha256(&"cd".repeat(32));
    let models = tempfile::tempdir().unwrap();
    let entry = entry("tiny", REPO, FILE, 4);
    let text = error_text(fetcher(&hub, None, 2).fetch_whole(&entry, models.path()));
    assert!(
        text.contains("checksum mismatch")
            && text.contains(&"cd".repeat(32))
            && text.contains("deleted"),
        "{text}"
    );
    assert_nothing_left(models.path(), "tiny");
}

#[test]
fn a_truncated_or_garbage_header_is_a_clear_error() {
    let hub = FakeHub::start();
    let bytes = tiny_gguf(4, false);
    let (header_len, _) = candle_tensors(&bytes);
    hub.add(
        REPO,
        REVISION,
        "truncated.gguf",
        bytes[..header_len as usize / 2].to_vec(),
    );
    let noise: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    hub.add(REPO, REVISION, "noise.gguf", noise);
    let mut huge_string = b"GGUF".to_vec();
    huge_string.extend_from_slice(&3u32.to_le_bytes());
    huge_string.extend_from_slice(&0u64.to_le_bytes());
    huge_string.extend_from_slice(&1u64.to_le_bytes());
    huge_string.extend_from_slice(&(u64::MAX / 2).to_le_bytes());
    huge_string.extend_from_slice(&[0u8; 5000]);
    hub.add(REPO, REVISION, "huge.gguf", huge_string);
    let models = tempfile::tempdir().unwrap();

    for (file, wanted) in [
        ("truncated.gguf", "truncated"),
        ("noise.gguf", "not a readable GGUF header"),
        ("huge.gguf", "runs past the end of the file"),
    ] {
        let entry = entry(file, REPO, file, 4);
        let text = error_text(fetcher(&hub, None, 2).fetch_layers(&entry, models.path(), 0..2));
        assert!(text.contains(wanted), "{file}: {text}");
        assert_nothing_left(models.path(), file);
    }
}

#[test]
fn a_layer_range_outside_the_model_is_refused() {
    let hub = FakeHub::start();
    let models = tempfile::tempdir().unwrap();
    let entry = entry("tiny", REPO, FILE, 4);
    let fetcher = fetcher(&hub, None, 2);
    for (range, wanted) in [
        (0..5, "outside the model"),
        (3..3, "empty"),
        (std::ops::Range { start: 2, end: 1 }, "empty"),
    ] {
        let text = error_text(fetcher.fetch_layers(&entry, models.path(), range));
        assert!(text.contains(wanted), "{text}");
    }
    assert!(hub.log().is_empty());
}

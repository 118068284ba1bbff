//! Servers as they are: one that ignores `Range`, a hub that wants a token (and must not
//! see it leak to the content store), a file that is not there.

use super::fake_hub::FakeHub;
use super::fixtures::*;

#[test]
fn a_server_that_ignores_range_still_gives_correct_bytes() {
    let hub = FakeHub::start();
    let bytes = tiny_gguf(6, false);
    hub.add(REPO, REVISION, FILE, bytes.clone());
    hub.ignore_range(true);
    let (_, all) = candle_tensors(&bytes);

    let models = tempfile::tempdir().unwrap();
    let entry = entry("tiny", REPO, FILE, 6);
    let path = fetcher(&hub, None, 2)
        .fetch_layers(&entry, models.path(), 1..4)
        .unwrap();
    assert_same_tensors(&path, &bytes, &needed_names(&all, &(1..4), 6));
    assert!(
        hub.log()
            .iter()
            .all(|r| r.range.is_none() || r.status != 206),
        "the hub never answered a range"
    );

    let whole = tempfile::tempdir().unwrap();
    let path = fetcher(&hub, None, 2)
        .fetch_whole(&entry, whole.path())
        .unwrap();
    assert_eq!(std::fs::read(path).unwrap(), bytes);
}

#[test]
fn a_token_goes_to_the_hub_and_not_to_the_content_store() {
    let hub = FakeHub::start();
    let bytes = tiny_gguf(2, false);
    hub.add(REPO, REVISION, FILE, bytes.clone());
    hub.require_token("hf_test_token");
    let models = tempfile::tempdir().unwrap();
    let entry = entry("tiny", REPO, FILE, 2);

    let error = fetcher(&hub, None, 2)
        .fetch_layers(&entry, models.path(), 0..1)
        .unwrap_err();
    let text = format!("{error:#}");
    assert!(text.contains("401") && text.contains("HF_TOKEN"), "{text}");
    let error = fetcher(&hub, Some("wrong"), 2)
        .fetch_layers(&entry, models.path(), 0..1)
        .unwrap_err();
    assert!(format!("{error:#}").contains("gated"), "{error:#}");

    let path = fetcher(&hub, Some("hf_test_token"), 2)
        .fetch_whole(&entry, models.path())
        .unwrap();
    assert_eq!(std::fs::read(path).unwrap(), bytes);
    let log = hub.log();
    assert!(log.iter().any(|r| r.path.starts_with("/cdn/")));
    for request in &log {
        if request.path.starts_with("/cdn/") && hub.cdn_on_other_host() {
            assert_eq!(
                request.authorization, None,
                "the token leaked to the content store"
            );
        }
        if request.path.contains("/resolve/") && request.status != 401 {
            assert_eq!(
                request.authorization.as_deref(),
                Some("Bearer hf_test_token")
            );
        }
    }
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let hub = FakeHub::start();
    let models = tempfile::tempdir().unwrap();
    let entry = entry("absent", REPO, "no-such-file.gguf", 2);
    let error = fetcher(&hub, None, 2)
        .fetch_layers(&entry, models.path(), 0..1)
        .unwrap_err();
    let text = format!("{error:#}");
    assert!(
        text.contains("404") && text.contains("no-such-file.gguf"),
        "{text}"
    );
    let mut entry = entry.clone();
    entry.huggingface = None;
    let error = fetcher(&hub, None, 2)
        .fetch_layers(&entry, models.path(), 0..1)
        .unwrap_err();
    assert!(
        format!("{error:#}").contains("no Hugging Face source"),
        "{error:#}"
    );
}

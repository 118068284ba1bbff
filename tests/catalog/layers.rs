//! A layer range fetches only the bytes of its tensors, into a sparse file that candle's
//! GGUF reader opens; a later range reuses what is there.

use std::collections::HashMap;

use candle_core::Device;
use exo::catalog::{Presence, TensorCheck, WeightFormat, presence};

use super::fake_hub::FakeHub;
use super::fixtures::*;

#[test]
fn a_layer_range_fetches_only_its_tensors_into_a_file_candle_reads() {
    let (hub, bytes, models, entry) = tiny_on_a_hub();
    let (header_len, all) = candle_tensors(&bytes);

    let path = fetcher(&hub, None, 2)
        .fetch_layers(&entry, models.path(), 2..4)
        .unwrap();

    let names = needed_names(&all, &(2..4), 6);
    assert!(!names.contains(&"token_embd.weight".to_string()));
    assert!(names.contains(&"rope_freqs.weight".to_string()));
    let expected = bytes_of(&all, &names);
    let served = hub.served();
    // Every byte of the needed tensors and of the header, and little else: the header
    // is read in growing ranges (at most twice its size), and padding between adjacent
    // tensors rides along (under 32 bytes each).
    assert!(
        served >= expected + header_len,
        "served {served}, expected at least {}",
        expected + header_len
    );
    assert!(
        served <= expected + 2 * header_len + 32 * names.len() as u64,
        "served {served} for {expected} bytes of tensors and a {header_len}-byte header"
    );
    assert!(
        served < bytes.len() as u64 / 2,
        "a third of the layers fetched half the file"
    );
    // The same layout as the remote file: candle reads the fetched tensors as they are.
    assert_eq!(std::fs::metadata(&path).unwrap().len(), bytes.len() as u64);
    assert_same_tensors(&path, &bytes, &names);
    // A tensor of another layer is a hole, not a copy.
    let mut file = std::fs::File::open(&path).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
    let hole = content
        .tensor(&mut file, "blk.0.attn_q.weight", &Device::Cpu)
        .unwrap();
    assert!(hole.data().unwrap().iter().all(|b| *b == 0));

    match presence(&entry, models.path()) {
        Presence::Layers(set) => {
            assert_eq!(set.layers, vec![2..4]);
            assert!(!set.embedding && !set.head && set.shared);
            assert_eq!(set.tensor_check, TensorCheck::SizeOnly);
        }
        other => panic!("expected layers 2..4, found {other:?}"),
    }
    let here = presence(&entry, models.path());
    assert!(here.covers(&(2..4), 6) && here.covers(&(3..4), 6));
    assert!(!here.covers(&(1..4), 6) && !here.covers(&(2..5), 6));
}

#[test]
fn a_second_range_reuses_what_is_on_disk() {
    let (hub, bytes, models, entry) = tiny_on_a_hub();
    let (_, all) = candle_tensors(&bytes);
    let fetcher = fetcher(&hub, None, 2);

    fetcher.fetch_layers(&entry, models.path(), 0..3).unwrap();
    let first = hub.served();
    let path = fetcher.fetch_layers(&entry, models.path(), 2..6).unwrap();
    let second = hub.served() - first;

    let had = needed_names(&all, &(0..3), 6);
    let new: Vec<String> = needed_names(&all, &(2..6), 6)
        .into_iter()
        .filter(|n| !had.contains(n))
        .collect();
    let expected = bytes_of(&all, &new);
    // Only the new tensors (and the padding between them): not the header again, not
    // layer 2 again.
    assert!(
        second >= expected,
        "second fetch served {second}, needs {expected}"
    );
    assert!(
        second <= expected + 32 * new.len() as u64,
        "second fetch served {second}, needed {expected}"
    );
    let mut every: Vec<String> = all.keys().cloned().collect();
    every.sort();
    assert_same_tensors(&path, &bytes, &every);

    let here = presence(&entry, models.path());
    assert!(here.covers(&(0..6), 6), "{here:?}");
    assert_eq!(here.describe(), "layers 0..6 (size-checked)");
    // Everything is here: a third fetch does not even ask the hub.
    let requests = hub.log().len();
    fetcher.fetch_layers(&entry, models.path(), 1..5).unwrap();
    assert_eq!(hub.log().len(), requests);
}

#[test]
fn the_last_shard_of_a_tied_model_fetches_the_embedding_as_its_head() {
    let hub = FakeHub::start();
    let bytes = tiny_gguf(4, true);
    hub.add(REPO, REVISION, FILE, bytes.clone());
    let models = tempfile::tempdir().unwrap();
    let entry = entry("tied", REPO, FILE, 4);
    let path = fetcher(&hub, None, 2)
        .fetch_layers(&entry, models.path(), 3..4)
        .unwrap();
    let (_, all) = candle_tensors(&bytes);
    let names = needed_names(&all, &(3..4), 4);
    assert!(names.contains(&"token_embd.weight".to_string()));
    assert_same_tensors(&path, &bytes, &names);
    match presence(&entry, models.path()) {
        Presence::Layers(set) => assert!(set.head && set.embedding, "{set:?}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_shard_of_the_real_default_model_is_fetched_and_checked_against_its_manifest() {
    let (hub, entry) = hub_with_smollm();
    let bytes = smollm_bytes();
    let models = tempfile::tempdir().unwrap();

    let path = fetcher(&hub, None, 2)
        .fetch_layers(&entry, models.path(), 10..20)
        .unwrap();

    let (header_len, all) = candle_tensors(&bytes);
    let names = needed_names(&all, &(10..20), 30);
    let expected = bytes_of(&all, &names);
    let served = hub.served();
    assert!(served >= expected + header_len);
    assert!(
        served <= expected + 2 * header_len + 32 * names.len() as u64,
        "served {served} for {expected} bytes of tensors"
    );
    assert_same_tensors(&path, &bytes, &names);
    // The built-in manifest of the verified file checked every tensor's sha256.
    match presence(&entry, models.path()) {
        Presence::Layers(set) => {
            assert_eq!(set.layers, vec![10..20]);
            assert_eq!(set.tensor_check, TensorCheck::Sha256);
        }
        other => panic!("{other:?}"),
    }
    // A partial file does not pass for the model when a command wants it whole.
    let error = exo::catalog::resolve_model("smollm2-135m", models.path()).unwrap_err();
    assert!(
        format!("{error:#}").contains("only part of model"),
        "{error:#}"
    );
    let shard = exo::catalog::resolve_shard("smollm2-135m", models.path(), 12..18).unwrap();
    assert_eq!(shard.path, path);
    let error = exo::catalog::resolve_shard("smollm2-135m", models.path(), 0..18).unwrap_err();
    assert!(format!("{error:#}").contains("--layers 0..18"), "{error:#}");
}

/// A safetensors checkpoint in two files with an index, as the Hub publishes them.
/// Files by name (the two weight files first), and every tensor by name.
type Checkpoint = (Vec<(String, Vec<u8>)>, HashMap<String, candle_core::Tensor>);

fn safetensors_checkpoint() -> Checkpoint {
    let device = Device::Cpu;
    let tensor = |seed: u32, n: usize| {
        let v: Vec<f32> = (0..n * HIDDEN)
            .map(|i| ((i as u32 ^ seed) % 97) as f32)
            .collect();
        candle_core::Tensor::from_vec(v, (n, HIDDEN), &device).unwrap()
    };
    let mut first = HashMap::new();
    let mut second = HashMap::new();
    first.insert("model.embed_tokens.weight".to_string(), tensor(1, 64));
    for layer in 0..4u32 {
        let target = if layer < 2 { &mut first } else { &mut second };
        target.insert(
            format!("model.layers.{layer}.self_attn.q_proj.weight"),
            tensor(10 + layer, 32),
        );
        target.insert(
            format!("model.layers.{layer}.mlp.up_proj.weight"),
            tensor(20 + layer, 48),
        );
    }
    second.insert("model.norm.weight".to_string(), tensor(3, 1));
    second.insert("lm_head.weight".to_string(), tensor(4, 64));
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    let mut weight_map = serde_json::Map::new();
    let mut all = HashMap::new();
    for (name, tensors) in [
        ("model-00001-of-00002.safetensors", first),
        ("model-00002-of-00002.safetensors", second),
    ] {
        let path = dir.path().join(name);
        candle_core::safetensors::save(&tensors, &path).unwrap();
        files.push((name.to_string(), std::fs::read(&path).unwrap()));
        for (tensor, value) in tensors {
            weight_map.insert(tensor.clone(), serde_json::Value::String(name.into()));
            all.insert(tensor, value);
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    files.push((
        "model.safetensors.index.json".into(),
        index.to_string().into_bytes(),
    ));
    files.push((
        "config.json".into(),
        br#"{"num_hidden_layers": 4, "model_type": "llama"}"#.to_vec(),
    ));
    files.push(("tokenizer.json".into(), b"{}".to_vec()));
    (files, all)
}

#[test]
fn a_safetensors_checkpoint_split_in_files_fetches_only_the_files_and_tensors_it_needs() {
    let hub = FakeHub::start();
    let (files, tensors) = safetensors_checkpoint();
    let repo = "test-org/tiny-safetensors";
    for (name, bytes) in &files {
        hub.add(repo, REVISION, name, bytes.clone());
    }
    let models = tempfile::tempdir().unwrap();
    let mut entry = entry("tiny-st", repo, "", 4);
    entry.format = WeightFormat::Safetensors;
    entry.files.clear();
    entry.index = Some("model.safetensors.index.json".into());
    entry.extra_files = vec!["config.json".into(), "tokenizer.json".into()];

    let dir = fetcher(&hub, None, 2)
        .fetch_layers(&entry, models.path(), 0..2)
        .unwrap();
    assert_eq!(dir, models.path().join("tiny-st"));
    assert!(dir.join("config.json").is_file() && dir.join("tokenizer.json").is_file());

    // The first file holds the embedding and layers 0-1: all of it but padding; of the
    // second, only its header and what the first 4 kB header read brought along.
    let first = &files[0].1;
    let second = &files[1].1;
    let second_header = 8 + u64::from_le_bytes(second[..8].try_into().unwrap());
    let small: u64 = files[2..].iter().map(|(_, b)| b.len() as u64).sum();
    let served = hub.served();
    let first_read = 4096u64.max(2 * second_header);
    assert!(
        served <= first.len() as u64 + first_read + small,
        "served {served}: more than the first file, the second's header and the small files"
    );
    let on_disk = std::fs::read(dir.join(&files[1].0)).unwrap();
    assert_eq!(on_disk.len(), second.len());
    assert!(
        on_disk[first_read as usize..].iter().all(|b| *b == 0),
        "the second file's tensors are holes"
    );

    for (name, bytes) in [&files[0], &files[1]] {
        let local = std::fs::read(dir.join(name)).unwrap();
        assert_eq!(local.len(), bytes.len());
        let loaded = candle_core::safetensors::load_buffer(&local, &Device::Cpu).unwrap();
        for (tensor, value) in loaded {
            let needed = tensor == "model.embed_tokens.weight"
                || tensor.starts_with("model.layers.0.")
                || tensor.starts_with("model.layers.1.");
            if needed {
                let diff = (value - &tensors[&tensor])
                    .unwrap()
                    .abs()
                    .unwrap()
                    .sum_all()
                    .unwrap();
                assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "tensor {tensor}");
            }
        }
    }
    let here = presence(&entry, models.path());
    assert!(
        here.covers(&(0..2), 4) && !here.covers(&(0..3), 4) && !here.covers(&(2..4), 4),
        "{here:?}"
    );
}

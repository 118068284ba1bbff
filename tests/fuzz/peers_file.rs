//! Peers files (manual discovery): `{"peers": {"id": "host:port" | {address, port}}}`.

use std::collections::BTreeMap;
use std::path::Path;

use exo::discovery::{parse_peers_file, read_peers_file};
use proptest::prelude::*;
use serde_json::{Value, json};

use super::harness::{fuzz, mutate, mutations};

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9.-]{0,16}",
        "[a-z0-9.-]{1,16}:[0-9]{1,5}",
        any::<String>(),
    ]
}

fn entry() -> impl Strategy<Value = Value> {
    let port = prop_oneof![0u64..70_000, any::<u64>()].prop_map(|p| json!(p));
    prop_oneof![
        text().prop_map(Value::String),
        (text(), port.clone()).prop_map(|(a, p)| json!({"address": a, "port": p})),
        text().prop_map(|a| json!({"address": a})),
        port,
        Just(Value::Null),
        any::<f64>().prop_map(|f| json!({"address": "h", "port": f})),
    ]
}

fn file() -> impl Strategy<Value = Value> {
    let peers = proptest::collection::btree_map(text(), entry(), 0..6)
        .prop_map(|m| Value::Object(m.into_iter().collect()));
    prop_oneof![
        6 => peers.prop_map(|p| json!({"peers": p})),
        1 => Just(json!({"peers": []})),
        1 => Just(json!([])),
        1 => text().prop_map(|t| json!({"peers": t})),
    ]
}

/// Whatever parses has a non-empty id and a `host:port` address for every peer.
fn check(text: &str) -> Result<(), TestCaseError> {
    match parse_peers_file(text, Path::new("peers.json")) {
        Ok(peers) => {
            for (id, address) in &peers {
                prop_assert!(!id.is_empty());
                prop_assert!(address.contains(':'));
            }
        }
        Err(error) => {
            let message = format!("{:#}", error);
            prop_assert!(message.contains("peers.json"))
        }
    }
    Ok(())
}

#[test]
fn arbitrary_text_never_panics() {
    fuzz("peers-file/arbitrary", any::<String>(), |text| check(&text));
}

#[test]
fn peers_files_of_every_shape_parse_or_say_why() {
    fuzz(
        "peers-file/shapes",
        (file(), mutations(4), any::<bool>()),
        |(file, mutations, mutate_it)| {
            let bytes = serde_json::to_vec(&file).unwrap();
            let bytes = if mutate_it {
                mutate(&bytes, &mutations)
            } else {
                bytes
            };
            check(&String::from_utf8_lossy(&bytes))
        },
    );
}

#[test]
fn valid_peers_files_round_trip() {
    let peers =
        proptest::collection::btree_map("[a-z0-9-]{1,12}", ("[a-z0-9.]{1,16}", 1u16..), 0..8);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("peers.json");
    fuzz("peers-file/round-trip", peers, |peers| {
        let expected: BTreeMap<String, String> = peers
            .iter()
            .map(|(id, (host, port))| (id.clone(), format!("{host}:{port}")))
            .collect();
        // Half as "host:port" strings, half as {address, port} objects.
        let entries: serde_json::Map<String, Value> = peers
            .iter()
            .enumerate()
            .map(|(i, (id, (host, port)))| {
                let entry = if i % 2 == 0 {
                    json!(format!("{host}:{port}"))
                } else {
                    json!({"address": host, "port": port})
                };
                (id.clone(), entry)
            })
            .collect();
        std::fs::write(
            &path,
            serde_json::to_vec(&json!({"peers": entries})).unwrap(),
        )
        .unwrap();
        prop_assert_eq!(read_peers_file(&path).unwrap(), expected);
        Ok(())
    });
}

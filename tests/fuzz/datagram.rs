//! Discovery datagrams, open and sealed (`Announcement::decode`, `Announcement::open`).

use std::net::IpAddr;

use exo::discovery::{Announcement, DatagramError, MAX_DATAGRAM_BYTES, PROTOCOL, PROTOCOL_VERSION};
use exo::topology::DeviceCapabilities;
use exo::trust::{ClusterKey, DatagramSeal, SealError};
use proptest::prelude::*;

use super::harness::{fuzz, mutate, mutations};

const NOW_MS: u64 = 1_800_000_000_000;
/// Where the sealed datagrams under test arrive from.
const SOURCE: [u8; 4] = [127, 0, 0, 1];

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9-]{1,24}",
        any::<String>(),
        Just(String::new()),
        "[ \t\n\u{0}-\u{1f}a-z]{0,8}",
        "x{120,140}",
    ]
}

fn capabilities() -> impl Strategy<Value = DeviceCapabilities> {
    (
        any::<u64>(),
        any::<u64>(),
        text(),
        any::<u32>(),
        text(),
        any::<u64>(),
        text(),
    )
        .prop_map(|(memory, available, cpu, cores, gpu, gpu_memory, device)| {
            DeviceCapabilities {
                memory_bytes: memory,
                available_memory_bytes: available,
                cpu_model: cpu,
                cpu_cores: cores,
                gpu_name: gpu,
                gpu_memory_bytes: gpu_memory,
                engine_device: device,
                group_link_port: cores as u16,
            }
        })
}

fn nonce() -> impl Strategy<Value = String> {
    prop_oneof!["[0-9a-f]{32}", text()]
}

/// Announcements as a node (or a liar) could send them: valid and edge-case fields alike.
fn announcement() -> impl Strategy<Value = Announcement> {
    (
        prop_oneof![Just(PROTOCOL.to_string()), text()],
        prop_oneof![Just(PROTOCOL_VERSION), any::<u32>()],
        text(),
        any::<u16>(),
        text(),
        any::<u8>(),
        capabilities(),
        (any::<bool>(), any::<bool>()),
        prop_oneof![
            Just(NOW_MS),
            any::<u64>(),
            (NOW_MS - 40_000..NOW_MS + 40_000)
        ],
        (
            nonce(),
            proptest::collection::vec(
                prop_oneof![
                    Just(IpAddr::from(SOURCE)),
                    any::<[u8; 4]>().prop_map(IpAddr::from),
                    any::<[u8; 16]>().prop_map(IpAddr::from),
                ],
                0..4,
            ),
        ),
    )
        .prop_map(
            |(
                protocol,
                version,
                node_id,
                port,
                model,
                priority,
                caps,
                (departing, draining),
                sent,
                (nonce, sender_addresses),
            )| {
                Announcement {
                    protocol,
                    version,
                    node_id,
                    grpc_port: port,
                    model_id: model,
                    interface_priority: priority,
                    capabilities: caps,
                    departing,
                    draining,
                    sent_at_ms: sent,
                    nonce,
                    sender_addresses,
                }
            },
        )
}

/// What decode must accept: exactly the announcements its documented checks allow.
fn acceptable(a: &Announcement) -> bool {
    a.protocol == PROTOCOL
        && a.version == PROTOCOL_VERSION
        && !a.node_id.is_empty()
        && a.node_id.len() <= 128
        && !a
            .node_id
            .chars()
            .any(|c| c.is_control() || c.is_whitespace())
        && a.grpc_port != 0
}

fn seal() -> DatagramSeal {
    DatagramSeal::new(&ClusterKey::from_bytes([7; 32]))
}

#[test]
fn arbitrary_bytes_never_panic_open_or_sealed() {
    let seal = seal();
    fuzz(
        "datagram/arbitrary-bytes",
        proptest::collection::vec(any::<u8>(), 0..10_000),
        |bytes| {
            let _ = Announcement::decode(&bytes);
            // Random bytes never carry a valid MAC.
            prop_assert!(Announcement::open(&bytes, Some(&seal), NOW_MS, SOURCE.into()).is_err());
            Ok(())
        },
    );
}

#[test]
fn encode_then_decode_is_identity_for_valid_announcements() {
    let seal = seal();
    fuzz("datagram/round-trip", announcement(), |a| {
        let decoded = Announcement::decode(&a.encode());
        if acceptable(&a) && a.encode().len() <= MAX_DATAGRAM_BYTES {
            prop_assert_eq!(decoded.as_ref(), Ok(&a));
        } else {
            prop_assert!(decoded.is_err(), "accepted {:?}", a);
        }
        // Sealed: opens to the same announcement when fresh and its nonce is well formed.
        let sealed = a.encode_sealed(Some(&seal));
        match Announcement::open(&sealed, Some(&seal), NOW_MS, SOURCE.into()) {
            Ok(opened) => prop_assert_eq!(opened, a),
            Err(DatagramError::Refused(SealError::Unauthenticated)) => {
                prop_assert!(false, "our own seal was refused")
            }
            Err(_) => {}
        }
        Ok(())
    });
}

#[test]
fn mutated_announcements_never_panic_and_mutated_seals_never_open() {
    let seal = seal();
    let other = DatagramSeal::new(&ClusterKey::from_bytes([8; 32]));
    fuzz(
        "datagram/mutated",
        (announcement(), mutations(6)),
        |(a, mutations)| {
            let open = mutate(&a.encode(), &mutations);
            if let Ok(decoded) = Announcement::decode(&open) {
                prop_assert!(acceptable(&decoded));
                // Whatever decoded re-encodes to something that decodes the same.
                prop_assert_eq!(Announcement::decode(&decoded.encode()), Ok(decoded));
            }
            let sealed = a.encode_sealed(Some(&seal));
            let mutated = mutate(&sealed, &mutations);
            let opened = Announcement::open(&mutated, Some(&seal), NOW_MS, SOURCE.into());
            if mutated != sealed {
                prop_assert!(opened.is_err(), "a changed datagram opened");
            }
            prop_assert!(Announcement::open(&sealed, Some(&other), NOW_MS, SOURCE.into()).is_err());
            Ok(())
        },
    );
}

/// JSON that is almost an announcement: fields of the wrong type, missing, or extra.
#[test]
fn json_values_of_any_shape_never_panic() {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        any::<u64>().prop_map(|n| serde_json::json!(n)),
        any::<f64>().prop_map(|n| serde_json::json!(n)),
        text().prop_map(serde_json::Value::String),
    ];
    let value = leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            proptest::collection::btree_map(text(), inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    });
    let field = prop_oneof![
        Just("protocol"),
        Just("version"),
        Just("node_id"),
        Just("grpc_port"),
        Just("model_id"),
        Just("interface_priority"),
        Just("capabilities"),
        Just("departing"),
        Just("sent_at_ms"),
        Just("nonce"),
        Just("memory_bytes"),
    ];
    fuzz(
        "datagram/json-shapes",
        (
            announcement(),
            proptest::collection::vec((field, value), 1..4),
        ),
        |(a, changes)| {
            let mut json = serde_json::to_value(&a).unwrap();
            for (field, value) in changes {
                if field == "memory_bytes" {
                    if let Some(caps) = json["capabilities"].as_object_mut() {
                        caps.insert(field.to_string(), value);
                    }
                } else {
                    json[field] = value;
                }
            }
            let bytes = serde_json::to_vec(&json).unwrap();
            if let Ok(decoded) = Announcement::decode(&bytes) {
                prop_assert!(acceptable(&decoded));
            }
            Ok(())
        },
    );
}

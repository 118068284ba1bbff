//! The request ids a node-to-node call carries in its gRPC metadata (`x-exo-request-id`),
//! so that each node logs a call under the requests it serves: `grep <id>` over every
//! node's log finds the request on every node it touched.
//!
//! A batch carries items of several requests; the header lists their distinct ids,
//! comma-separated, bounded (the rest are counted, not listed) so that the header stays
//! far below HTTP/2 header limits.

use tonic::metadata::{MetadataMap, MetadataValue};

/// The metadata key.
pub const REQUEST_ID_KEY: &str = "x-exo-request-id";

/// The most ids one call lists.
const MAX_IDS: usize = 32;

/// Puts the distinct `ids` (in first-seen order) into `metadata`.
pub fn attach<'a>(metadata: &mut MetadataMap, ids: impl IntoIterator<Item = &'a str>) {
    let mut distinct: Vec<&str> = Vec::new();
    let mut more = 0usize;
    for id in ids {
        if distinct.contains(&id) {
            continue;
        }
        if distinct.len() < MAX_IDS {
            distinct.push(id);
        } else {
            more += 1;
        }
    }
    if distinct.is_empty() {
        return;
    }
    let mut value = distinct.join(",");
    if more > 0 {
        value.push_str(&format!(",+{more}"));
    }
    // Ids are ours (uuid-based) or a client's checked ones; one that is not a valid
    // header value is left out rather than failing the call.
    if let Ok(value) = MetadataValue::try_from(value.as_str()) {
        metadata.insert(REQUEST_ID_KEY, value);
    }
}

/// The ids a call carries, as its header wrote them ("" when none).
pub fn read(metadata: &MetadataMap) -> String {
    metadata
        .get(REQUEST_ID_KEY)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

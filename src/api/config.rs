//! Who may use the HTTP API and how much of it at once.

use std::time::Duration;

/// The longest stop string accepted: each is matched against the text of every token.
pub const MAX_STOP_STRING_BYTES: usize = 256;

/// The API's access rules and limits (flags of `exo node`).
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Bearer tokens accepted on every /v1 endpoint; empty: the API is open.
    pub api_keys: Vec<String>,
    /// Bearer tokens for the admin endpoints; empty: admin only from loopback.
    pub admin_keys: Vec<String>,
    /// Origins allowed cross-site requests (CORS); empty: none.
    pub cors_origins: Vec<String>,
    /// Host names the API answers to besides IP addresses and `localhost` (the names
    /// clients use to reach it, e.g. behind a proxy): any other `Host` is refused, so a
    /// DNS-rebinding page gets nothing.
    pub public_names: Vec<String>,
    /// Chat requests served at once.
    pub max_concurrent: usize,
    /// Chat requests waiting for a slot; past them, 429.
    pub max_queued: usize,
    /// `/v1/events` streams open at once (each renders the cluster state four times a
    /// second); past them, 429.
    pub max_event_streams: usize,
    /// What a 429 tells the client to wait.
    pub retry_after: Duration,
    /// The largest request body accepted.
    pub max_body_bytes: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            api_keys: Vec::new(),
            admin_keys: Vec::new(),
            cors_origins: Vec::new(),
            public_names: Vec::new(),
            max_concurrent: 16,
            max_queued: 64,
            max_event_streams: 16,
            retry_after: Duration::from_secs(1),
            max_body_bytes: 4 << 20,
        }
    }
}

impl ApiConfig {
    /// What the resource report shows (never the keys themselves).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "api_keys": self.api_keys.len(),
            "admin_keys": self.admin_keys.len(),
            "admin_from": if self.admin_keys.is_empty() { "loopback" } else { "admin key" },
            "cors_origins": self.cors_origins,
            "public_names": self.public_names,
            "max_concurrent_requests": self.max_concurrent,
            "max_queued_requests": self.max_queued,
            "max_event_streams": self.max_event_streams,
            "retry_after_s": self.retry_after.as_secs(),
            "max_body_bytes": self.max_body_bytes,
            "max_stop_string_bytes": MAX_STOP_STRING_BYTES,
        })
    }
}

//! How large a gRPC message of each kind a node accepts.
//!
//! tonic caps the size of a decoded message per service, not per method. So the service is
//! built with the largest cap of any kind (tonic refuses anything bigger before buffering
//! it, with `OUT_OF_RANGE` naming the size and the limit), and each handler checks the size
//! of the message it decoded against its own kind's cap: a health check, a finish or a
//! status message need kilobytes, and only batches of steps and results carry hidden
//! states. Such a refusal is `RESOURCE_EXHAUSTED` naming the kind, the size, the cap and the
//! flag that sets it, and is counted (`oversize_messages` in the server's report). A control
//! message between its cap and the transport cap is decoded before it is refused: the
//! per-kind cap bounds what a handler acts on, the transport cap what is buffered.

use tonic::Status;

/// The kinds of messages a node receives, by what they may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// Health checks, topology requests, status and finish messages, weight requests.
    Control,
    /// `SendSteps` and `SendResults`: hidden states for up to 1024 requests at once.
    Batch,
}

impl MessageKind {
    fn name(self) -> &'static str {
        match self {
            MessageKind::Control => "control",
            MessageKind::Batch => "step/result batch",
        }
    }

    fn flag(self) -> &'static str {
        match self {
            MessageKind::Control => "--grpc-max-control-bytes",
            MessageKind::Batch => "--grpc-max-batch-bytes",
        }
    }
}

/// Per-kind caps on received messages, in bytes (as encoded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageLimits {
    pub control_bytes: usize,
    pub batch_bytes: usize,
}

/// Control messages are a few hundred bytes; a weight request naming every tensor of a
/// large model's layer range is well under this.
pub const DEFAULT_MAX_CONTROL_BYTES: usize = 1 << 20;

/// The largest batch a node can send: 1024 single-token steps plus one 256-token prompt
/// chunk, each row a hidden state of f32 — for a 16,384-wide model (the widest in common
/// use) 1280 × 16384 × 4 = 80 MiB, plus the requests' contexts. A 4,096-wide model's
/// largest batch is 20 MiB; lower the cap to fit the model you serve.
pub const DEFAULT_MAX_BATCH_BYTES: usize = 96 << 20;

impl Default for MessageLimits {
    fn default() -> Self {
        MessageLimits {
            control_bytes: DEFAULT_MAX_CONTROL_BYTES,
            batch_bytes: DEFAULT_MAX_BATCH_BYTES,
        }
    }
}

impl MessageLimits {
    /// What tonic is told: the largest cap of any kind.
    pub fn transport_bytes(&self) -> usize {
        self.control_bytes.max(self.batch_bytes)
    }

    pub fn cap(&self, kind: MessageKind) -> usize {
        match kind {
            MessageKind::Control => self.control_bytes,
            MessageKind::Batch => self.batch_bytes,
        }
    }

    /// Refuses a decoded message of `bytes` (its encoded length) over its kind's cap.
    pub fn check(&self, kind: MessageKind, bytes: usize) -> Result<(), Status> {
        let cap = self.cap(kind);
        if bytes > cap {
            return Err(Status::resource_exhausted(format!(
                "a {} message of {bytes} bytes is over this node's cap of {cap} bytes ({})",
                kind.name(),
                kind.flag()
            )));
        }
        Ok(())
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "control_bytes": self.control_bytes,
            "batch_bytes": self.batch_bytes,
            "transport_bytes": self.transport_bytes(),
        })
    }
}

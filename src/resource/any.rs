//! The object-safe view of a managed resource.

use std::any::Any;
use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::sync::{broadcast, watch};

use super::{HealthReport, ResourceError, ResourceSnapshot, ResourceState, StateChange};

/// What the registry, the monitor, the admin API and the CLI see of a resource: its
/// identity, state and lifecycle calls, without knowing its inner type (and so without a
/// way to reach its operations, which stay behind `Managed::ensure_ready`).
pub trait AnyResource: Send + Sync + 'static {
    fn id(&self) -> &str;
    /// The resource type (`peer_handle`, `inference_engine`, ...).
    fn kind(&self) -> &str;
    fn name(&self) -> &str;
    fn state(&self) -> ResourceState;
    fn subscribe(&self) -> watch::Receiver<ResourceState>;
    fn events(&self) -> broadcast::Receiver<StateChange>;
    fn snapshot(&self) -> ResourceSnapshot;
    fn initialize(&self) -> BoxFuture<'_, Result<(), ResourceError>>;
    fn check_health(&self) -> BoxFuture<'_, HealthReport>;
    fn reset(&self) -> BoxFuture<'_, Result<(), ResourceError>>;
    fn cleanup(&self) -> BoxFuture<'_, Result<(), ResourceError>>;
    /// For typed access by owners that know the type (`ResourceGroup::get`).
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
}

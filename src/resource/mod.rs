//! The lifecycle pattern every part of a node is built on (DESIGN.md §1).
//!
//! A concrete resource implements [`Resource`] (initialize, cleanup, health, and for
//! network resources reconnect). [`Managed`] wraps it with the state machine, timeouts,
//! single-flight initialize, statistics and state history, and is the only way to reach
//! it: [`Managed::ensure_ready`] hands out access only once the resource is usable.
//! [`AnyResource`] is the object-safe view that a [`ResourceRegistry`] keeps of every live
//! resource, for the [`ResourceMonitor`], the admin API and the CLI. A [`ResourceGroup`]
//! starts members in dependency order and stops them in reverse; [`scoped`] always cleans up.
//!
//! This module knows nothing of models or networking.

mod any;
mod config;
mod error;
mod group;
mod managed;
mod monitor;
mod registry;
mod report;
mod scope;
mod state;
mod stats;
mod traits;
mod wait;

pub use any::AnyResource;
pub use config::{ResourceConfig, RetryPolicy};
pub use error::ResourceError;
pub use group::{GroupError, ResourceGroup};
pub use managed::{Managed, ManagedBuilder};
pub use monitor::{MonitorStats, ResourceMonitor};
pub use registry::ResourceRegistry;
pub use report::{
    MonitorSection, ProblemResource, REPORT_SCHEMA_VERSION, ResourceReport, ResourceSummary,
    render_table,
};
pub use scope::{scoped, scoped_group};
pub use state::ResourceState;
pub use stats::{HealthReport, ResourceSnapshot, ResourceStats, StateChange, format_time};
pub use traits::Resource;
pub use wait::{WaitTimeout, wait_for_state};

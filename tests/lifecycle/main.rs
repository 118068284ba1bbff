//! The lifecycle core (src/resource): every transition of DESIGN.md §1, single-flight,
//! timeouts, cleanup during initialize, health, reconnect, retries, groups, the monitor.

mod concurrency;
mod connection;
mod group;
mod health;
mod monitor;
mod probe;
mod races;
mod scope;
mod transitions;

//! Accepting TCP connections without letting strangers exhaust the node: a cap on the
//! connections each server holds and on those from one address ([`ConnectionGate`]),
//! TCP keepalive on every accepted socket, a deadline for a new connection to say
//! something, and a file-descriptor limit raised to what the caps need. The API server
//! and the gRPC server accept through it; each counts what it refused and closed, for
//! the report and `/metrics`.

mod accept;
mod fd_limit;
mod gate;

pub use accept::{accept_admitted, bind_listener};
pub use fd_limit::{FdLimit, raise_fd_limit};
pub use gate::{Admission, ConnectionGate, ConnectionLimits, ConnectionStats};

//! The accept step both servers share: take a connection, admit it through the gate (or
//! close it at once, counted), and turn TCP keepalive on, so that a peer that vanished
//! without a word (a cable pulled, a host powered off) does not hold its place forever.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, SockRef, Socket, TcpKeepalive, Type};
use tokio::net::{TcpListener, TcpStream};

use super::gate::{Admission, ConnectionGate};

/// Keepalive probes start after this much silence, then go every `KEEPALIVE_INTERVAL`.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Connections the kernel completes before the server accepts them. A burst (a client
/// pool opening at once, or a flood) past the backlog has its handshakes dropped and
/// retried a second later; the kernel caps this at `net.core.somaxconn`.
const BACKLOG: i32 = 4096;

/// Binds a listening socket with a deep backlog (the standard library's is 128), so that
/// a burst of connections does not leave honest clients waiting out a SYN retry.
pub fn bind_listener(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
    // As the standard library does: a restarted server gets its port back at once.
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Waits for the next connection the gate admits. Refused ones are sent `refusal` (a
/// best-effort write that never blocks: an HTTP server says 503 this way) and closed.
/// `accept` errors (file descriptors run out under a flood) are counted and logged, and
/// accepting pauses a moment instead of spinning.
pub async fn accept_admitted(
    listener: &TcpListener,
    gate: &Arc<ConnectionGate>,
    refusal: &[u8],
) -> (TcpStream, SocketAddr, Admission) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let Some(admission) = gate.admit(peer.ip()) else {
                    let _ = stream.try_write(refusal);
                    continue;
                };
                let keepalive = TcpKeepalive::new()
                    .with_time(KEEPALIVE_IDLE)
                    .with_interval(KEEPALIVE_INTERVAL);
                let socket = SockRef::from(&stream);
                if let Err(error) = socket
                    .set_tcp_keepalive(&keepalive)
                    .and_then(|()| socket.set_tcp_nodelay(true))
                {
                    tracing::debug!("cannot set keepalive on a connection from {peer}: {error}");
                }
                return (stream, peer, admission);
            }
            Err(error) => {
                let errors = gate.count_accept_error();
                if errors.is_power_of_two() || errors == 0 {
                    tracing::warn!(
                        "{} server cannot accept a connection ({error}); {} failures so far",
                        gate.server(),
                        errors + 1
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

//! The connections the gRPC server serves: accepted through the node's
//! [`ConnectionGate`], then — with a cluster key — through a TLS handshake that must finish
//! within the gate's silent timeout, or — without one — a first byte within it. Failed and
//! timed-out handshakes are counted. Each connection is one task until it is ready, so a
//! stranger's silent sockets hold neither the accept loop nor each other up.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::listener::{Admission, ConnectionGate, accept_admitted};

/// One connection ready for HTTP/2, holding its place in the gate while it lives.
pub struct NodeStream {
    io: Transport,
    local: Option<SocketAddr>,
    remote: SocketAddr,
    _admission: Admission,
}

enum Transport {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Connected for NodeStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        TcpConnectInfo {
            local_addr: self.local,
            remote_addr: Some(self.remote),
        }
    }
}

impl AsyncRead for NodeStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.io {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for NodeStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Transport::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Transport::Plain(s) => s.is_write_vectored(),
            Transport::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Accepts connections on `listener` for as long as the receiver lives, and sends each
/// one on once it is ready (handshake done, or first bytes in). Run it as a task; abort
/// it to stop accepting (its handshakes in flight end with it).
pub async fn accept_connections(
    listener: TcpListener,
    gate: Arc<ConnectionGate>,
    tls: Option<Arc<ServerConfig>>,
    ready: mpsc::Sender<io::Result<NodeStream>>,
) {
    let local = listener.local_addr().ok();
    let acceptor = tls.map(TlsAcceptor::from);
    let mut handshakes = JoinSet::new();
    loop {
        let (stream, remote, admission) = tokio::select! {
            accepted = accept_admitted(&listener, &gate, b"") => accepted,
            _ = ready.closed() => return,
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => continue,
        };
        let (acceptor, ready, gate) = (acceptor.clone(), ready.clone(), gate.clone());
        handshakes.spawn(async move {
            let silent = gate.limits().silent_timeout;
            let io = match acceptor {
                Some(acceptor) => {
                    match tokio::time::timeout(silent, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => Transport::Tls(Box::new(tls)),
                        Ok(Err(error)) => {
                            tracing::debug!("TLS handshake with {remote} failed: {error}");
                            gate.count_tls_failure(false);
                            return;
                        }
                        Err(_) => {
                            tracing::debug!("TLS handshake with {remote} timed out");
                            gate.count_tls_failure(true);
                            return;
                        }
                    }
                }
                None => {
                    // Plain HTTP/2 opens with its preface: a connection that says
                    // nothing in time is not a peer.
                    match tokio::time::timeout(silent, stream.peek(&mut [0u8; 1])).await {
                        Ok(Ok(n)) if n > 0 => Transport::Plain(stream),
                        Ok(_) => return,
                        Err(_) => {
                            gate.count_timed_out();
                            return;
                        }
                    }
                }
            };
            let _ = ready
                .send(Ok(NodeStream {
                    io,
                    local,
                    remote,
                    _admission: admission,
                }))
                .await;
        });
    }
}

//! Links between the members of a tensor-parallel group: one persistent stream per pair
//! of members, both ways, set up once (no per-call setup), carrying the group's frames
//! (`crate::proto::group_frame`) length-prefixed. Nagle's delay is off: an all-reduce's
//! parts are small and wait for each other.
//!
//! In a keyed cluster the streams are mutual TLS with the node's certificate and the
//! cluster CA (`crate::trust::NodeTls`, ALPN [`GROUP_ALPN`](crate::trust::GROUP_ALPN)):
//! a host without the key can neither join a group nor read its activations. Plain TCP
//! only where the node runs without a key (an open cluster), and in tests.
//!
//! Each stream has a writer task (frames queue without blocking the member that sends
//! them) and a reader task that hands what arrives to the node's hub; a stream that
//! breaks tells the hub the peer is lost, which aborts the batches running with it and
//! any opened with it later, until a new stream to that peer joins. A writer with nothing
//! to send for [`HEARTBEAT`] sends an empty frame, and a reader that hears nothing for
//! [`SILENCE`] counts the stream as broken: a peer whose machine vanished without closing
//! its sockets is seen in seconds, not when a part's wait runs out.
//!
//! Nodes open them where they learn their plan (`crate::node`, a group's leader).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::engine::group::{Frame, GroupHub, Wire};
use crate::proto::group_frame::{MAX_FRAME_BYTES, decode, encode};
use crate::trust::{NodeTls, TLS_SERVER_NAME};

/// How long a stream's writer waits with nothing to send before it sends an empty frame.
pub const HEARTBEAT: Duration = Duration::from_millis(500);

/// How long a stream's reader hears nothing (not even a heartbeat) before it counts the
/// stream as broken; also how long a new stream has for its handshake and hello.
pub const SILENCE: Duration = Duration::from_secs(3);

/// A link's byte stream: TCP, or TLS over it.
trait LinkStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> LinkStream for T {}

/// A node's links to its group's members.
pub struct GroupLinks {
    hub: Weak<GroupHub>,
    runtime: Handle,
    tls: Option<NodeTls>,
    peers: Mutex<HashMap<String, Link>>,
    /// Held while a stream joins or leaves (not while frames are sent): a stream that
    /// broke and one that replaced it tell the hub in the order they happened.
    membership: Mutex<()>,
    streams: AtomicU64,
}

/// The stream to one member: its writer's queue, and which stream it is (a broken
/// stream's reader must not remove the one that replaced it).
struct Link {
    stream: u64,
    frames: mpsc::UnboundedSender<Vec<u8>>,
}

impl GroupLinks {
    /// Links for `hub`'s node, set as the hub's wire; their tasks run on `runtime`, and
    /// with `tls` (a keyed cluster) every stream is mutual TLS.
    pub fn new(hub: &Arc<GroupHub>, runtime: Handle, tls: Option<NodeTls>) -> Arc<Self> {
        let links = Arc::new(GroupLinks {
            hub: Arc::downgrade(hub),
            runtime,
            tls,
            peers: Mutex::new(HashMap::new()),
            membership: Mutex::new(()),
            streams: AtomicU64::new(0),
        });
        hub.set_wire(links.clone());
        links
    }

    /// Accepts the streams other members open to this node, on `listener`, for as long
    /// as the links live.
    pub fn accept(self: &Arc<Self>, listener: std::net::TcpListener) -> anyhow::Result<SocketAddr> {
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let listener = {
            let _inside = self.runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let links = Arc::downgrade(self);
        self.runtime.spawn(async move {
            loop {
                let accepted = listener.accept().await;
                let Some(links) = links.upgrade() else { return };
                let Ok((stream, from)) = accepted else {
                    continue;
                };
                // Each on a task of its own: a stranger's slow handshake holds no one up.
                tokio::spawn(async move {
                    if let Err(error) = links.join_incoming(stream).await {
                        tracing::warn!("a group link from {from} was refused: {error:#}");
                    }
                });
            }
        });
        Ok(addr)
    }

    /// Opens the stream to member `peer` at `addr` (run on the links' runtime).
    pub async fn connect(self: &Arc<Self>, peer: &str, addr: SocketAddr) -> anyhow::Result<()> {
        let hub = self.hub.upgrade().context("the node's hub is gone")?;
        let opened = async {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let mut stream: Box<dyn LinkStream> = match &self.tls {
                None => Box::new(tcp),
                Some(tls) => {
                    let name = ServerName::try_from(TLS_SERVER_NAME)?;
                    let connector = TlsConnector::from(tls.group_client_config());
                    Box::new(connector.connect(name, tcp).await?)
                }
            };
            write_frame(&mut stream, hub.node_id().as_bytes()).await?;
            stream.flush().await?;
            anyhow::Ok(stream)
        };
        let stream = tokio::time::timeout(SILENCE, opened)
            .await
            .map_err(|_| anyhow::anyhow!("no handshake within {SILENCE:?}"))
            .and_then(|opened| opened)
            .with_context(|| format!("cannot open a group link to {peer} at {addr}"))?;
        self.attach(peer.to_string(), stream)
    }

    /// Members this node has a stream with.
    pub fn peers(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// A stream another member opened: its handshake and hello, in [`SILENCE`].
    async fn join_incoming(self: &Arc<Self>, tcp: TcpStream) -> anyhow::Result<()> {
        tcp.set_nodelay(true)?;
        let joined = async {
            let mut stream: Box<dyn LinkStream> = match &self.tls {
                None => Box::new(tcp),
                Some(tls) => {
                    let acceptor = TlsAcceptor::from(tls.group_server_config());
                    Box::new(acceptor.accept(tcp).await.context("TLS handshake")?)
                }
            };
            let hello = read_frame(&mut stream).await?;
            if hello.len() > 256 {
                bail!("a group link's hello of {} bytes", hello.len());
            }
            let peer = String::from_utf8(hello).context("a group link's hello is not UTF-8")?;
            anyhow::Ok((peer, stream))
        };
        let (peer, stream) = tokio::time::timeout(SILENCE, joined)
            .await
            .map_err(|_| anyhow::anyhow!("no handshake and hello within {SILENCE:?}"))??;
        self.attach(peer, stream)
    }

    fn attach(self: &Arc<Self>, peer: String, stream: Box<dyn LinkStream>) -> anyhow::Result<()> {
        let (input, output) = tokio::io::split(stream);
        let (send, frames) = mpsc::unbounded_channel::<Vec<u8>>();
        let id = self.streams.fetch_add(1, Ordering::Relaxed);
        // In the map before its reader runs: a stream that breaks at once is detached.
        {
            let _joining = self.membership.lock().unwrap_or_else(|p| p.into_inner());
            let link = Link {
                stream: id,
                frames: send,
            };
            self.lock().insert(peer.clone(), link);
            if let Some(hub) = self.hub.upgrade() {
                hub.peer_joined(&peer);
            }
        }
        self.runtime.spawn(write_loop(output, frames, peer.clone()));
        let (links, hub) = (Arc::downgrade(self), self.hub.clone());
        self.runtime.spawn(async move {
            let reason = read_loop(input, &hub, &peer).await;
            if let Some(links) = links.upgrade() {
                links.detach(&peer, id, &format!("its link broke: {reason}"));
            }
        });
        Ok(())
    }

    /// Stream `stream` to `peer` broke: unless another replaced it, the peer is lost (its
    /// writer ends with its queue).
    fn detach(&self, peer: &str, stream: u64, reason: &str) {
        let _leaving = self.membership.lock().unwrap_or_else(|p| p.into_inner());
        if self
            .lock()
            .get(peer)
            .is_none_or(|link| link.stream != stream)
        {
            return;
        }
        // The hub hears of the loss before the link leaves the map: whoever sees the peer
        // gone from `peers()` also sees it lost (the membership lock keeps a new link from
        // joining in between).
        if let Some(hub) = self.hub.upgrade() {
            hub.peer_lost(peer, reason);
        }
        self.lock().remove(peer);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Link>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Wire for GroupLinks {
    fn send(&self, to: &str, frame: Frame) -> anyhow::Result<()> {
        let peers = self.lock();
        let link = peers
            .get(to)
            .with_context(|| format!("no link to group member {to}"))?;
        link.frames
            .send(encode(&frame))
            .map_err(|_| anyhow::anyhow!("the link to group member {to} is closed"))
    }
}

/// A stream's reader: hands each frame to the hub until the stream breaks, stays silent
/// for [`SILENCE`], or the hub goes; returns why it ended.
async fn read_loop(
    mut input: tokio::io::ReadHalf<Box<dyn LinkStream>>,
    hub: &Weak<GroupHub>,
    peer: &str,
) -> String {
    loop {
        let frame = match tokio::time::timeout(SILENCE, read_frame(&mut input)).await {
            Err(_) => return format!("nothing heard for {SILENCE:?}"),
            Ok(Err(error)) => return format!("{error:#}"),
            Ok(Ok(bytes)) if bytes.is_empty() => continue,
            Ok(Ok(bytes)) => decode(&bytes),
        };
        let Some(hub) = hub.upgrade() else {
            return "the hub is gone".into();
        };
        match frame {
            Ok(frame) => hub.deliver(peer, frame),
            Err(error) => return format!("{error:#}"),
        }
    }
}

/// A stream's writer: sends the frames queued for it (those queued meanwhile in the same
/// flush), an empty frame after [`HEARTBEAT`] with none, until the links drop its queue
/// or the stream breaks; then shuts its side down, so that the other end hears.
async fn write_loop(
    output: tokio::io::WriteHalf<Box<dyn LinkStream>>,
    mut frames: mpsc::UnboundedReceiver<Vec<u8>>,
    peer: String,
) {
    let mut out = BufWriter::new(output);
    loop {
        let mut sent = match tokio::time::timeout(HEARTBEAT, frames.recv()).await {
            Ok(Some(frame)) => write_frame(&mut out, &frame).await,
            Err(_) => write_frame(&mut out, &[]).await,
            Ok(None) => break,
        };
        while sent.is_ok()
            && let Ok(more) = frames.try_recv()
        {
            sent = write_frame(&mut out, &more).await;
        }
        let flushed = match sent {
            Ok(()) => out.flush().await.map_err(anyhow::Error::from),
            Err(error) => Err(error),
        };
        if let Err(error) = flushed {
            tracing::info!("group link to {peer} broke: {error:#}");
            break;
        }
    }
    let _ = out.shutdown().await;
}

/// A hub per name joined by group links over loopback (one stream per pair; mutual TLS
/// with `tls`), once every link is up: the socket counterpart of
/// [`local_hubs`](crate::engine::group::local_wire::local_hubs), for tests and
/// benchmarks of groups in one process. The links must be kept alive while the hubs are
/// used; their tasks run on a runtime the process's loopback groups share.
pub fn loopback_hubs(names: &[String]) -> anyhow::Result<LoopbackHubs> {
    loopback_hubs_with(names, None)
}

/// [`loopback_hubs`], with TLS when `tls` is given (one node's settings per name).
pub fn loopback_hubs_with(
    names: &[String],
    tls: Option<Vec<NodeTls>>,
) -> anyhow::Result<LoopbackHubs> {
    let runtime = loopback_runtime()?;
    let hubs: Vec<Arc<GroupHub>> = names.iter().map(|n| GroupHub::new(n.clone())).collect();
    let mut tls = tls.map(Vec::into_iter);
    let links: Vec<Arc<GroupLinks>> = hubs
        .iter()
        .map(|hub| {
            GroupLinks::new(
                hub,
                runtime.handle().clone(),
                tls.as_mut().and_then(Iterator::next),
            )
        })
        .collect();
    let addrs = links
        .iter()
        .map(|l| l.accept(std::net::TcpListener::bind("127.0.0.1:0")?))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Each member opens the streams to the members after it.
    for (i, link) in links.iter().enumerate() {
        for (name, addr) in names.iter().zip(&addrs).skip(i + 1) {
            runtime.block_on(link.connect(name, *addr))?;
        }
    }
    let deadline = Instant::now() + LINKS_UP;
    while links.iter().any(|l| l.peers().len() < names.len() - 1) {
        if Instant::now() >= deadline {
            bail!("the group links on loopback did not come up in {LINKS_UP:?}");
        }
        std::thread::yield_now();
    }
    Ok(LoopbackHubs { hubs, links })
}

/// The hubs of [`loopback_hubs`], in the order of their names, and their links.
pub struct LoopbackHubs {
    pub hubs: Vec<Arc<GroupHub>>,
    pub links: Vec<Arc<GroupLinks>>,
}

/// The runtime of the process's loopback groups, made at first use.
fn loopback_runtime() -> anyhow::Result<&'static tokio::runtime::Runtime> {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    if let Some(runtime) = RUNTIME.get() {
        return Ok(runtime);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("group-link")
        .enable_all()
        .build()?;
    Ok(RUNTIME.get_or_init(|| runtime))
}

/// How long [`loopback_hubs`] waits for its links to come up.
const LINKS_UP: Duration = Duration::from_secs(30);

async fn write_frame(out: &mut (impl AsyncWrite + Unpin), bytes: &[u8]) -> anyhow::Result<()> {
    out.write_all(&(bytes.len() as u32).to_le_bytes()).await?;
    out.write_all(bytes).await?;
    Ok(())
}

/// The next frame (empty: a heartbeat). Err when the stream breaks or the length is
/// out of bounds.
async fn read_frame(input: &mut (impl AsyncRead + Unpin)) -> anyhow::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    input.read_exact(&mut len).await?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME_BYTES {
        bail!("a group frame of {len} bytes (at most {MAX_FRAME_BYTES})");
    }
    let mut bytes = vec![0u8; len];
    input.read_exact(&mut bytes).await?;
    Ok(bytes)
}

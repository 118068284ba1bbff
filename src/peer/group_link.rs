//! Links between the members of a tensor-parallel group: one persistent TCP stream per
//! pair of members, both ways, set up once (no per-call setup), carrying the group's
//! frames (`crate::proto::group_frame`) length-prefixed. Nagle's delay is off: an
//! all-reduce's parts are small and wait for each other.
//!
//! Each stream has a writer thread (frames queue without blocking the member that sends
//! them) and a reader thread that hands what arrives to the node's hub; a stream that
//! breaks tells the hub the peer is lost, which aborts the batches running with it and
//! any opened with it later, until a new stream to that peer joins. A writer with nothing
//! to send for [`HEARTBEAT`] sends an empty frame, and a reader that hears nothing for
//! [`SILENCE`] counts the stream as broken: a peer whose machine vanished without closing
//! its sockets is seen in seconds, not when a part's wait runs out.
//!
//! Not yet: the streams are plain TCP, not the node's authenticated channel (mutual TLS
//! in keyed clusters), and nodes do not open them themselves (issue 22).

use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::engine::group::{Frame, GroupHub, Wire};
use crate::proto::group_frame::{MAX_FRAME_BYTES, decode, encode};

/// How long a stream's writer waits with nothing to send before it sends an empty frame.
pub const HEARTBEAT: Duration = Duration::from_millis(500);

/// How long a stream's reader hears nothing (not even a heartbeat) before it counts the
/// stream as broken.
pub const SILENCE: Duration = Duration::from_secs(3);

/// A node's links to its group's members.
pub struct GroupLinks {
    hub: Weak<GroupHub>,
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
    frames: Sender<Vec<u8>>,
}

impl GroupLinks {
    /// Links for `hub`'s node, set as the hub's wire.
    pub fn new(hub: &Arc<GroupHub>) -> Arc<Self> {
        let links = Arc::new(GroupLinks {
            hub: Arc::downgrade(hub),
            peers: Mutex::new(HashMap::new()),
            membership: Mutex::new(()),
            streams: AtomicU64::new(0),
        });
        hub.set_wire(links.clone());
        links
    }

    /// Accepts the streams other members open to this node, on `listener`, for as long
    /// as the links live.
    pub fn accept(self: &Arc<Self>, listener: TcpListener) -> anyhow::Result<SocketAddr> {
        let addr = listener.local_addr()?;
        let links = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("group-accept".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    let Some(links) = links.upgrade() else { return };
                    // A hello that does not come in time is refused (and frees this loop).
                    let joined = stream.map_err(anyhow::Error::from).and_then(|mut stream| {
                        stream.set_read_timeout(Some(SILENCE))?;
                        let peer = read_hello(&mut stream)?;
                        links.attach(peer, stream)
                    });
                    if let Err(error) = joined {
                        tracing::warn!("a group link was refused: {error:#}");
                    }
                }
            })?;
        Ok(addr)
    }

    /// Opens the stream to member `peer` at `addr`.
    pub fn connect(self: &Arc<Self>, peer: &str, addr: SocketAddr) -> anyhow::Result<()> {
        let hub = self.hub.upgrade().context("the node's hub is gone")?;
        let mut stream = TcpStream::connect(addr)
            .with_context(|| format!("cannot reach group member {peer} at {addr}"))?;
        write_frame(&mut stream, hub.node_id().as_bytes())?;
        self.attach(peer.to_string(), stream)
    }

    /// Members this node has a stream with.
    pub fn peers(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    fn attach(self: &Arc<Self>, peer: String, stream: TcpStream) -> anyhow::Result<()> {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(SILENCE))?;
        let reader = stream.try_clone()?;
        let (send, frames) = channel::<Vec<u8>>();
        let id = self.streams.fetch_add(1, Ordering::Relaxed);
        let writer_peer = peer.clone();
        std::thread::Builder::new()
            .name("group-write".into())
            .spawn(move || write_loop(stream, frames, &writer_peer))?;
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
        let links = Arc::downgrade(self);
        let hub = self.hub.clone();
        let reader_peer = peer.clone();
        let spawned = std::thread::Builder::new()
            .name("group-read".into())
            .spawn(move || {
                let mut input = BufReader::new(reader);
                let reason = loop {
                    let frame = read_frame(&mut input).and_then(|bytes| decode(&bytes));
                    let Some(hub) = hub.upgrade() else {
                        break "the hub is gone".into();
                    };
                    match frame {
                        Ok(frame) => hub.deliver(&reader_peer, frame),
                        Err(error) => break format!("{error:#}"),
                    }
                };
                let _ = input.get_ref().shutdown(Shutdown::Both);
                if let Some(links) = links.upgrade() {
                    links.detach(&reader_peer, id, &format!("its link broke: {reason}"));
                }
            });
        if let Err(error) = spawned {
            self.detach(&peer, id, "its reader did not start");
            return Err(error.into());
        }
        Ok(())
    }

    /// Stream `stream` to `peer` broke: unless another replaced it, the peer is lost.
    fn detach(&self, peer: &str, stream: u64, reason: &str) {
        let _leaving = self.membership.lock().unwrap_or_else(|p| p.into_inner());
        {
            let mut peers = self.lock();
            if peers.get(peer).is_none_or(|link| link.stream != stream) {
                return;
            }
            peers.remove(peer);
        }
        if let Some(hub) = self.hub.upgrade() {
            hub.peer_lost(peer, reason);
        }
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

/// A hub per name joined by group links over loopback (one TCP stream per pair), once
/// every link is up: the socket counterpart of
/// [`local_hubs`](crate::engine::group::local_wire::local_hubs), for tests and
/// benchmarks of groups in one process. The links must be kept alive while the hubs are
/// used.
pub fn loopback_hubs(names: &[String]) -> anyhow::Result<LoopbackHubs> {
    let hubs: Vec<Arc<GroupHub>> = names.iter().map(|n| GroupHub::new(n.clone())).collect();
    let links: Vec<Arc<GroupLinks>> = hubs.iter().map(GroupLinks::new).collect();
    let addrs = links
        .iter()
        .map(|l| l.accept(TcpListener::bind("127.0.0.1:0")?))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Each member opens the streams to the members after it.
    for (i, link) in links.iter().enumerate() {
        for (name, addr) in names.iter().zip(&addrs).skip(i + 1) {
            link.connect(name, *addr)?;
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

/// How long [`loopback_hubs`] waits for its links to come up.
const LINKS_UP: Duration = Duration::from_secs(30);

/// A stream's writer: sends the frames queued for it (those queued meanwhile in the same
/// flush), an empty frame after [`HEARTBEAT`] with none, until the links drop its queue
/// or the stream breaks; then shuts the stream down so that both ends' readers hear.
fn write_loop(stream: TcpStream, frames: std::sync::mpsc::Receiver<Vec<u8>>, peer: &str) {
    let mut out = BufWriter::new(stream);
    loop {
        let mut sent = match frames.recv_timeout(HEARTBEAT) {
            Ok(frame) => write_frame(&mut out, &frame),
            Err(RecvTimeoutError::Timeout) => write_frame(&mut out, &[]),
            Err(RecvTimeoutError::Disconnected) => break,
        };
        while sent.is_ok()
            && let Ok(more) = frames.try_recv()
        {
            sent = write_frame(&mut out, &more);
        }
        if let Err(error) = sent.and_then(|()| Ok(out.flush()?)) {
            tracing::info!("group link to {peer} broke: {error:#}");
            break;
        }
    }
    let _ = out.get_ref().shutdown(Shutdown::Both);
}

fn read_hello(stream: &mut TcpStream) -> anyhow::Result<String> {
    let hello = read_frame(stream)?;
    if hello.len() > 256 {
        bail!("a group link's hello of {} bytes", hello.len());
    }
    String::from_utf8(hello).context("a group link's hello is not UTF-8")
}

fn write_frame(out: &mut impl Write, bytes: &[u8]) -> anyhow::Result<()> {
    out.write_all(&(bytes.len() as u32).to_le_bytes())?;
    out.write_all(bytes)?;
    Ok(())
}

/// The next frame that is not a heartbeat. Err when the stream breaks, or stays silent
/// for its read timeout.
fn read_frame(input: &mut impl Read) -> anyhow::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    let len = loop {
        input
            .read_exact(&mut len)
            .map_err(|error| match error.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                    anyhow::anyhow!("nothing heard for {SILENCE:?}")
                }
                _ => error.into(),
            })?;
        match u32::from_le_bytes(len) as usize {
            0 => continue,
            len => break len,
        }
    };
    if len > MAX_FRAME_BYTES {
        bail!("a group frame of {len} bytes (at most {MAX_FRAME_BYTES})");
    }
    let mut bytes = vec![0u8; len];
    input.read_exact(&mut bytes)?;
    Ok(bytes)
}

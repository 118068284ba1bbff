//! Links between the members of a tensor-parallel group: one persistent TCP stream per
//! pair of members, both ways, set up once (no per-call setup), carrying the group's
//! frames (`crate::proto::group_frame`) length-prefixed. Nagle's delay is off: an
//! all-reduce's parts are small and wait for each other.
//!
//! Each stream has a writer thread (frames queue without blocking the member that sends
//! them) and a reader thread that hands what arrives to the node's hub; a stream that
//! breaks tells the hub the peer is lost, which aborts the batches running with it.
//!
//! Not yet: the streams are plain TCP, not the node's authenticated channel (mutual TLS
//! in keyed clusters), and nodes do not open them themselves (issue 22).

use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::engine::group::{Frame, GroupHub, Wire};
use crate::proto::group_frame::{MAX_FRAME_BYTES, decode, encode};

/// A node's links to its group's members.
pub struct GroupLinks {
    hub: Weak<GroupHub>,
    peers: Mutex<HashMap<String, Sender<Vec<u8>>>>,
}

impl GroupLinks {
    /// Links for `hub`'s node, set as the hub's wire.
    pub fn new(hub: &Arc<GroupHub>) -> Arc<Self> {
        let links = Arc::new(GroupLinks {
            hub: Arc::downgrade(hub),
            peers: Mutex::new(HashMap::new()),
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
                    let joined = stream.map_err(anyhow::Error::from).and_then(|mut stream| {
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
    pub fn connect(&self, peer: &str, addr: SocketAddr) -> anyhow::Result<()> {
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

    fn attach(&self, peer: String, stream: TcpStream) -> anyhow::Result<()> {
        stream.set_nodelay(true)?;
        let reader = stream.try_clone()?;
        let (send, frames) = channel::<Vec<u8>>();
        let writer_peer = peer.clone();
        std::thread::Builder::new()
            .name("group-write".into())
            .spawn(move || {
                let mut out = BufWriter::new(stream);
                while let Ok(frame) = frames.recv() {
                    let mut sent = write_frame(&mut out, &frame);
                    // Frames queued meanwhile go in the same flush.
                    while sent.is_ok()
                        && let Ok(more) = frames.try_recv()
                    {
                        sent = write_frame(&mut out, &more);
                    }
                    if let Err(error) = sent.and_then(|()| Ok(out.flush()?)) {
                        tracing::info!("group link to {writer_peer} broke: {error:#}");
                        break;
                    }
                }
                // The links are gone (or the stream broke): both ends hear of it, the
                // reader threads included.
                let _ = out.get_ref().shutdown(Shutdown::Both);
            })?;
        let hub = self.hub.clone();
        let reader_peer = peer.clone();
        std::thread::Builder::new()
            .name("group-read".into())
            .spawn(move || {
                let mut input = BufReader::new(reader);
                let reason = loop {
                    let frame = read_frame(&mut input).and_then(|bytes| decode(&bytes));
                    let Some(hub) = hub.upgrade() else { return };
                    match frame {
                        Ok(frame) => hub.deliver(&reader_peer, frame),
                        Err(error) => break format!("{error:#}"),
                    }
                };
                if let Some(hub) = hub.upgrade() {
                    hub.peer_lost(&reader_peer, &format!("its link broke: {reason}"));
                }
            })?;
        self.lock().insert(peer, send);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Sender<Vec<u8>>>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Wire for GroupLinks {
    fn send(&self, to: &str, frame: Frame) -> anyhow::Result<()> {
        let peers = self.lock();
        let link = peers
            .get(to)
            .with_context(|| format!("no link to group member {to}"))?;
        link.send(encode(&frame))
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

fn read_frame(input: &mut impl Read) -> anyhow::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    input.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME_BYTES {
        bail!("a group frame of {len} bytes (at most {MAX_FRAME_BYTES})");
    }
    let mut bytes = vec![0u8; len];
    input.read_exact(&mut bytes)?;
    Ok(bytes)
}

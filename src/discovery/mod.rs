//! Finding the other nodes: UDP broadcast announcements, or a peers file; either way the
//! peers land in one [`PeerTable`] that creates, checks and retires their handles.

mod announcement;
mod interfaces;
mod manual;
mod peer_table;
mod udp;

pub use announcement::{
    Announcement, DatagramError, DatagramStats, MAX_DATAGRAM_BYTES, MAX_SENDER_ADDRESSES, PROTOCOL,
    PROTOCOL_VERSION,
};
pub use interfaces::{BroadcastTarget, InterfaceFilter, broadcast_targets};
pub use manual::{ManualDiscovery, parse_peers_file, read_peers_file};
pub use peer_table::{DEFAULT_MAX_PEERS, PeerInfo, PeerTable, PeerTableConfig, Sighting};
pub use udp::{AnnouncementSource, DEFAULT_DISCOVERY_PORT, UdpDiscovery, UdpDiscoveryConfig};

//! What a cluster node knows of the cluster: its id, the view the control plane last gave it,
//! the peer TLS, and the nodes it just failed to reach (suspects).

use ostore_control::cluster::{ClusterView, NodeRec};
use ostore_transport::tls::{LiveIdentity, PeerTls, Revoked};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// A node this node could not reach takes no new shards from it for this long (longer than the
/// control plane takes to mark a dead node down), whatever the cluster view says.
pub const SUSPECT_FOR: Duration = Duration::from_secs(10);

/// What a cluster node knows of the cluster.
pub struct Cluster {
    pub me: u32,
    pub view: RwLock<Arc<ClusterView>>,
    pub tls: PeerTls,
    /// The certificates the cluster revoked, as the view last said: refused in every peer
    /// handshake and on every stream of a connection made before.
    pub revoked: Revoked,
    /// This node's certificate, as every TLS configuration presents it (renewed in place).
    pub identity: LiveIdentity,
    /// Nodes this node failed to reach, when (and when by the wall clock): placement keeps new
    /// shards off them for [`SUSPECT_FOR`], ahead of the control plane's verdict, or until the
    /// view shows them back up after that.
    pub suspects: std::sync::Mutex<Vec<(u32, std::time::Instant, u64)>>,
}

impl Cluster {
    pub fn new(
        me: u32,
        view: ClusterView,
        tls: PeerTls,
        revoked: Revoked,
        identity: LiveIdentity,
    ) -> Cluster {
        revoked.set(view.revoked.iter().copied());
        Cluster {
            me,
            view: RwLock::new(Arc::new(view)),
            tls,
            revoked,
            identity,
            suspects: Default::default(),
        }
    }

    pub fn view(&self) -> Arc<ClusterView> {
        self.view.read().expect("cluster view lock").clone()
    }

    /// `f` of the node holding `drive`, as the view says; `None` if no node has it.
    pub(crate) fn with_node_of<T>(&self, drive: u16, f: impl FnOnce(&NodeRec) -> T) -> Option<T> {
        self.view()
            .nodes
            .iter()
            .find(|n| n.drives.iter().any(|d| d.id == drive))
            .map(f)
    }

    /// The node holding `drive`, as the view says.
    pub fn node_of_drive(&self, drive: u16) -> Option<u32> {
        self.with_node_of(drive, |n| n.id)
    }

    /// Whether the node holding `drive` is away: down in the view, suspected here, or unknown.
    pub fn away(&self, drive: u16) -> bool {
        self.with_node_of(drive, |n| !n.up || self.suspected(n.id))
            .unwrap_or(true)
    }

    /// Takes a newer view; a suspected node that the view shows up again since the suspicion
    /// (it was marked down and came back) is suspected no more.
    pub fn set_view(&self, v: ClusterView) {
        {
            let mut s = self.suspects.lock().expect("suspects lock");
            s.retain(|(id, _, wall_ms)| {
                !v.nodes
                    .iter()
                    .any(|n| n.id == *id && n.up && n.since_ms > *wall_ms)
            });
        }
        self.revoked.set(v.revoked.iter().copied());
        *self.view.write().expect("cluster view lock") = Arc::new(v);
    }

    /// Notes that `node` could not be reached just now.
    pub fn suspect(&self, node: u32) {
        let now = std::time::Instant::now();
        let wall_ms = ostore_control::service::now_ms();
        let mut s = self.suspects.lock().expect("suspects lock");
        s.retain(|(n, at, _)| *n != node && now.duration_since(*at) < SUSPECT_FOR);
        s.push((node, now, wall_ms));
        tracing::info!("node {node} unreachable: no new shards go to it for {SUSPECT_FOR:?}");
    }

    /// Whether a suspicion younger than [`SUSPECT_FOR`] is held of a node `which` accepts.
    fn suspicion(&self, which: impl Fn(u32) -> bool) -> bool {
        let now = std::time::Instant::now();
        self.suspects
            .lock()
            .expect("suspects lock")
            .iter()
            .any(|(n, at, _)| which(*n) && now.duration_since(*at) < SUSPECT_FOR)
    }

    /// Whether any node is suspected now.
    pub fn any_suspected(&self) -> bool {
        self.suspicion(|_| true)
    }

    /// Whether `node` failed to answer within the last [`SUSPECT_FOR`] (and has not been seen
    /// coming back since).
    pub fn suspected(&self, node: u32) -> bool {
        self.suspicion(|n| n == node)
    }

    /// The peer address of the node holding `drive`, if that node is up.
    pub(crate) fn peer_of(&self, drive: u16) -> io::Result<SocketAddr> {
        self.with_node_of(drive, |n| {
            if !n.up {
                return Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    format!("node {} (drive {drive}) is down", n.id),
                ));
            }
            n.peer
                .parse()
                .map_err(|e| io::Error::other(format!("peer address {}: {e}", n.peer)))
        })
        .unwrap_or_else(|| {
            Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no node has drive {drive}"),
            ))
        })
    }
}

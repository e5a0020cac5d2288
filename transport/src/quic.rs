//! The QUIC shell: one endpoint per site process, serving and connecting, mutually
//! authenticated with site keys (see [`crate::tls`]).
//!
//! A connection carries any number of sessions. Each session is one bidirectional control
//! stream, opened by the connecting side, plus data streams opened by the session's sender.
//! Stream preambles (all integers little-endian):
//! ```text
//! control stream   kind u8 = 1 (push: the opener sends), data_streams u16
//! data stream      kind u8 = 2, session u64 (the control stream's ID), index u16
//! welcome stream   kind u8 = 3, opened by the accepting side once it accepted the peer
//! command stream   kind u8 = 4, then a request and its reply (see [`crate::command`])
//! ```
//! In TLS 1.3 the client's handshake completes before the server has checked the client's
//! certificate, so a connecting side waits for the welcome stream (or the server's refusal)
//! before it counts a connection as made.
//!
//! After its preamble a stream carries protocol frames ([`crate::protocol`]): every message
//! but `Chunk` on the control stream, `Chunk`s only on data streams. Announcing the number of
//! data streams up front lets the receiver hold the sender's `Done` until every data stream
//! has ended, so no chunk is overtaken by it; those rules are the protocol's
//! ([`crate::protocol#streams`]), the preambles are this shell's.

use crate::authz::{self, Refused, Request};
use crate::error::{Error, Result};
use crate::limits::Limits;
use crate::tls::SiteTls;
use crate::trust::TrustView;
use freight_core::{PublicIdentity, SiteCode};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Control stream preamble kind: the connecting side pushes a package.
pub(crate) const KIND_PUSH: u8 = 1;
/// Data stream preamble kind.
pub(crate) const KIND_DATA: u8 = 2;
/// The accepting side's first stream: it accepted the connecting side's certificate.
const KIND_WELCOME: u8 = 3;
/// Command stream preamble kind (see [`crate::command`]).
pub(crate) const KIND_COMMAND: u8 = 4;

/// Tunables of an endpoint. The defaults suit a LAN or WAN link; tests shorten the timeouts.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// A connection with no packet from the peer for this long is dead.
    pub idle_timeout: Duration,
    /// Keep-alive pings while a connection is open but quiet.
    pub keep_alive: Duration,
    /// Data streams per session (chunks travel on them in parallel).
    pub data_streams: u16,
    /// Receive window per stream, bytes.
    pub stream_window: u32,
    /// Receive window per connection, bytes.
    pub connection_window: u32,
    /// Unacknowledged bytes the sender keeps in flight, per connection.
    pub send_window: u64,
    /// Largest UDP payload: MTU discovery probes up to it. Loopback carries 64 KiB datagrams,
    /// most links 1500-byte frames (discovery settles there).
    pub max_udp_payload: u16,
    /// UDP packet size to start with (at least 1200).
    pub initial_mtu: u16,
    /// A handshake (TLS, the peer's certificate check, the welcome) must end within this.
    pub handshake_timeout: Duration,
    /// Each wait for a peer's next message in a session's or a command's exchange (its Hello,
    /// Offer, Need, a command request) ends after this.
    pub step_timeout: Duration,
    /// A session whose peer sends nothing (no chunk, no message) for this long, or a stream
    /// write the peer does not read for this long, is abandoned; the transfer resumes later
    /// with what was stored.
    pub progress_timeout: Duration,
    /// A command's reply (the peer's work included) must come within this.
    pub command_timeout: Duration,
    /// Connections one peer may hold at once to this node.
    pub connections_per_peer: usize,
    /// Push sessions one peer may run into this node at once.
    pub sessions_per_peer: usize,
    /// Memory for receiving (frames being assembled, chunks being verified), bytes.
    pub receive_memory: u64,
    /// Handshakes in progress at once; further connection attempts are refused at once.
    pub max_handshakes: usize,
    /// Bytes of chunks a peer's unfinished transfers may leave in this node's library before
    /// its other transfers are refused (see [`crate::limits`]); one transfer alone is never
    /// limited by it.
    pub unfinished_per_peer: u64,
    /// An unfinished transfer that stored nothing for this long no longer counts (its lease
    /// has lapsed and its chunks may be collected).
    pub unfinished_expiry: Duration,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(5),
            data_streams: 4,
            stream_window: 4 << 20,
            connection_window: 16 << 20,
            send_window: 16 << 20,
            max_udp_payload: 65_527,
            initial_mtu: 1200,
            handshake_timeout: Duration::from_secs(10),
            step_timeout: Duration::from_secs(120),
            progress_timeout: Duration::from_secs(600),
            command_timeout: Duration::from_secs(600),
            connections_per_peer: 8,
            sessions_per_peer: 8,
            receive_memory: 256 << 20,
            max_handshakes: 64,
            unfinished_per_peer: 256 << 30,
            unfinished_expiry: freight_core::library::LEASE_TIMEOUT,
        }
    }
}

impl NodeConfig {
    fn transport(&self) -> Result<quinn::TransportConfig> {
        let mut t = quinn::TransportConfig::default();
        let idle = quinn::IdleTimeout::try_from(self.idle_timeout).map_err(|_| {
            Error::Tls(format!(
                "idle timeout {:?} is out of range; use at most a few hours",
                self.idle_timeout
            ))
        })?;
        t.max_idle_timeout(Some(idle))
            .keep_alive_interval(Some(self.keep_alive))
            .stream_receive_window(self.stream_window.into())
            .receive_window(self.connection_window.into())
            .send_window(self.send_window)
            // Streams a peer may open at once: the data streams of its sessions and a few
            // command streams; anything beyond waits for QUIC credit.
            .max_concurrent_uni_streams(
                ((self.data_streams.max(1) as usize * self.sessions_per_peer.max(1)).min(1024)
                    as u32)
                    .into(),
            )
            .max_concurrent_bidi_streams(
                ((self.sessions_per_peer.max(1) + 8).min(256) as u32).into(),
            )
            .initial_mtu(self.initial_mtu.max(1200));
        let mut mtu = quinn::MtuDiscoveryConfig::default();
        // A loss burst on a busy host can look like a black hole and drop the MTU to the
        // minimum; probe again soon rather than after the default minute.
        mtu.upper_bound(self.max_udp_payload)
            .black_hole_cooldown(Duration::from_secs(10));
        t.mtu_discovery_config(Some(mtu));
        // GSO batches several datagrams into one send; with datagrams above Ethernet size
        // (loopback, jumbo frames) the batches lose packets here, while one 64 KiB datagram
        // per send already amortises the system call. Keep GSO for ordinary links only.
        t.enable_segmentation_offload(self.max_udp_payload <= 1500);
        Ok(t)
    }
}

/// One site's QUIC endpoint: accepts connections from trusted sites and connects to them.
#[derive(Debug, Clone)]
pub struct Node {
    endpoint: quinn::Endpoint,
    tls: Arc<SiteTls>,
    transport: Arc<quinn::TransportConfig>,
    config: NodeConfig,
    live: Arc<LiveConns>,
    refusals: tokio::sync::broadcast::Sender<(Refused, SocketAddr)>,
    limits: Arc<Limits>,
}

/// The node's open connections, so that a key that loses its trust loses its connections.
#[derive(Debug, Default)]
struct LiveConns(
    std::sync::Mutex<std::collections::HashMap<usize, (PublicIdentity, quinn::Connection)>>,
);

impl LiveConns {
    fn add(self: &Arc<Self>, peer: PublicIdentity, conn: &quinn::Connection) {
        let id = conn.stable_id();
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, (peer, conn.clone()));
        let (me, conn) = (Arc::downgrade(self), conn.clone());
        tokio::spawn(async move {
            conn.closed().await;
            if let Some(me) = me.upgrade() {
                me.0.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            }
        });
    }

    /// Open connections of `peer` (its key).
    fn count(&self, peer: &PublicIdentity) -> usize {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|(p, _)| p == peer)
            .count()
    }

    /// Closes every connection whose peer `trust` no longer authenticates, or whose key holds
    /// no role here any more (the table's first check, [`Request::Connect`], applied again).
    fn revalidate(&self, trust: &TrustView) {
        let conns = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for (peer, conn) in conns.values() {
            if let Err(e) = trust.authenticate(peer.code, &peer.key) {
                tracing::warn!(peer = %peer.code, fingerprint = %peer.fingerprint(), error = %e, "closing the connection of a key no longer trusted");
                conn.close(CLOSE_UNTRUSTED.into(), b"key no longer trusted");
            } else if trust.roles(peer).is_empty() {
                tracing::warn!(peer = %peer.code, fingerprint = %peer.fingerprint(), "closing the connection of a key that no longer holds a role here");
                conn.close(CLOSE_UNTRUSTED.into(), b"no role here");
            }
        }
    }
}

/// Application close code: the peer's key is not (or no longer) trusted or allowed.
pub const CLOSE_UNTRUSTED: u32 = 0x46_01;
/// Application close code: the peer is over its budget (connections); it may retry later.
pub const CLOSE_BUSY: u32 = 0x46_02;

/// How often the trust store's folder is checked for changes.
const TRUST_POLL: Duration = Duration::from_millis(500);

/// Watches the trust store: reloads the view on a change and closes connections of keys no
/// longer trusted. Runs on its own thread (file reads stay off the async runtime) until the
/// node is gone.
fn watch_trust(trust: Arc<TrustView>, live: std::sync::Weak<LiveConns>) {
    let spawned = std::thread::Builder::new()
        .name("freight-trust".into())
        .spawn(move || {
            while let Some(live) = live.upgrade() {
                match trust.reload_if_changed() {
                    Ok(true) => live.revalidate(&trust),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot read the trust store; keeping what was read before"),
                }
                drop(live);
                std::thread::sleep(TRUST_POLL);
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot watch the trust store; changes apply after a restart");
    }
}

/// An incoming connection whose handshake has not run yet. It holds one of the node's
/// handshake slots until it is established or refused.
#[derive(Debug)]
pub struct Accepting {
    incoming: quinn::Incoming,
    node: Node,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl Accepting {
    /// The peer's address.
    pub fn remote(&self) -> SocketAddr {
        self.incoming.remote_address()
    }

    /// Runs the handshake: the peer's certificate must be a trusted site's. Then welcomes the
    /// peer (see the module documentation). A refusal names the site and the key's
    /// fingerprint.
    pub async fn establish(self) -> Result<Conn> {
        let what = self.remote().to_string();
        let deadline = self.node.config.handshake_timeout;
        let inner = match tokio::time::timeout(deadline, self.incoming).await {
            Ok(r) => r.map_err(|e| conn_error(&what, e))?,
            Err(_) => {
                return Err(Error::Connection {
                    peer: what,
                    reason: format!("handshake not finished within {deadline:?}"),
                    remedy: "a slow or stalled peer; it may connect again",
                });
            }
        };
        let peer = Node::identify(&inner, &what)?;
        if self.node.live.count(&peer) >= self.node.config.connections_per_peer {
            inner.close(CLOSE_BUSY.into(), b"too many connections from this site");
            return Err(Error::PeerRefused(format!(
                "site {} (key {}) already holds {} connections to this node; refused another",
                peer.code,
                peer.fingerprint(),
                self.node.config.connections_per_peer
            )));
        }
        // The table's first check: a trusted key with no role here may not connect at all.
        let trust = self.node.tls.trust().clone();
        if let Err(refused) = authz::check(&peer, trust.roles(&peer), Request::Connect) {
            inner.close(CLOSE_UNTRUSTED.into(), b"no role here");
            let _ = self
                .node
                .refusals
                .send((refused.clone(), inner.remote_address()));
            return Err(Error::PeerRefused(refused.to_string()));
        }
        let mut s = inner.open_uni().await.map_err(|e| conn_error(&what, e))?;
        s.write_all(&[KIND_WELCOME])
            .await
            .map_err(|e| Error::Connection {
                peer: what.clone(),
                reason: format!("cannot welcome the peer: {e}"),
                remedy: "the peer went away; nothing to do",
            })?;
        let _ = s.finish();
        self.node.live.add(peer, &inner);
        Ok(Conn {
            inner,
            peer,
            config: self.node.config.clone(),
            trust,
            refusals: self.node.refusals.clone(),
            limits: self.node.limits.clone(),
        })
    }
}

/// An authenticated connection to another site.
#[derive(Debug, Clone)]
pub struct Conn {
    pub(crate) inner: quinn::Connection,
    peer: PublicIdentity,
    pub(crate) config: NodeConfig,
    trust: Arc<TrustView>,
    refusals: tokio::sync::broadcast::Sender<(Refused, SocketAddr)>,
    pub(crate) limits: Arc<Limits>,
}

impl Conn {
    /// The peer's site and key, as authenticated at the handshake.
    pub fn peer(&self) -> PublicIdentity {
        self.peer
    }

    /// Checks `request` from this peer against the authorization table, with the roles its
    /// key holds now.
    pub fn authorize(&self, request: Request) -> std::result::Result<(), Refused> {
        authz::check(&self.peer, self.trust.roles(&self.peer), request).inspect_err(|r| {
            let _ = self.refusals.send((r.clone(), self.remote()));
        })
    }

    /// The peer's address.
    pub fn remote(&self) -> SocketAddr {
        self.inner.remote_address()
    }

    /// `"PS1 at 127.0.0.1:4433"`, for messages.
    pub fn describe(&self) -> String {
        format!("{} at {}", self.peer.code, self.remote())
    }

    /// Closes the connection now (sessions on it fail).
    pub fn close(&self, reason: &str) {
        self.inner.close(0u32.into(), reason.as_bytes());
    }

    /// The underlying QUIC connection, for tools that measure the path itself (benchmarks);
    /// sessions never need it.
    pub fn connection(&self) -> &quinn::Connection {
        &self.inner
    }

    /// Current path statistics (round trip, congestion window, lost packets).
    pub fn stats(&self) -> quinn::ConnectionStats {
        self.inner.stats()
    }
}

/// Maps a connection error to the crate's error, naming the peer.
pub(crate) fn conn_error(peer: &str, e: quinn::ConnectionError) -> Error {
    use quinn::ConnectionError as C;
    let (reason, remedy) = match &e {
        C::TimedOut => (
            "no answer within the idle timeout".to_string(),
            "check that the peer runs and the network path is open; the transfer resumes where it stopped",
        ),
        C::Reset => (
            "the peer reset the connection (it restarted?)".to_string(),
            "retry; the transfer resumes where it stopped",
        ),
        C::LocallyClosed => ("closed by this side".to_string(), "nothing to do"),
        C::TransportError(t) => (
            format!("refused at the handshake or protocol level: {t}"),
            "check both sites' keys and trust stores (`freight site identity list`)",
        ),
        C::ConnectionClosed(c) => (
            format!(
                "peer closed the connection: {}",
                freight_core::text::printable(&String::from_utf8_lossy(&c.reason))
            ),
            "check both sites' keys and trust stores (`freight site identity list`), then retry",
        ),
        C::ApplicationClosed(c) => (
            format!(
                "peer closed the connection: {}",
                freight_core::text::printable(&String::from_utf8_lossy(&c.reason))
            ),
            "see the peer's log; retry to resume",
        ),
        other => (
            other.to_string(),
            "retry; the transfer resumes where it stopped",
        ),
    };
    Error::Connection {
        peer: peer.to_string(),
        reason,
        remedy,
    }
}

/// Waits for the accepting side's welcome stream: its refusal of our certificate arrives as
/// the connection's close reason instead.
async fn welcomed(conn: &quinn::Connection, what: &str) -> Result<()> {
    let mut s = conn.accept_uni().await.map_err(|e| conn_error(what, e))?;
    let mut kind = [0u8];
    s.read_exact(&mut kind).await.map_err(|e| match e {
        quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(c)) => {
            conn_error(what, c)
        }
        other => Error::Connection {
            peer: what.to_string(),
            reason: format!("no welcome from the peer: {other}"),
            remedy: "check that the peer runs Freight",
        },
    })?;
    if kind[0] != KIND_WELCOME {
        return Err(Error::Connection {
            peer: what.to_string(),
            reason: format!("first stream of kind {} instead of a welcome", kind[0]),
            remedy: "check that the peer runs a compatible Freight",
        });
    }
    Ok(())
}

/// Socket buffer size asked for: a full send window of datagrams fits, so a burst is queued
/// rather than dropped (a drop of large datagrams also looks like a path MTU black hole and
/// sends quinn back to 1200-byte packets).
const SOCKET_BUFFER: usize = 32 << 20;

fn set_socket_buffers(socket: &std::net::UdpSocket) {
    use nix::sys::socket::{setsockopt, sockopt};
    // The *Force options pass net.core.[rw]mem_max (root, as on the appliance); otherwise the
    // kernel caps the plain request at that limit.
    if setsockopt(socket, sockopt::RcvBufForce, &SOCKET_BUFFER).is_err() {
        let _ = setsockopt(socket, sockopt::RcvBuf, &SOCKET_BUFFER);
    }
    if setsockopt(socket, sockopt::SndBufForce, &SOCKET_BUFFER).is_err() {
        let _ = setsockopt(socket, sockopt::SndBuf, &SOCKET_BUFFER);
    }
}

impl Node {
    /// Binds a UDP socket at `addr` (port 0 picks one) and serves trusted sites on it. Must be
    /// called inside a Tokio runtime.
    pub fn bind(addr: SocketAddr, tls: SiteTls, config: NodeConfig) -> Result<Node> {
        let io = |what: String, remedy| {
            move |source| Error::Io {
                what,
                source,
                remedy,
            }
        };
        let socket = std::net::UdpSocket::bind(addr).map_err(io(
            format!("bind UDP {addr}"),
            "pick a free port or stop the process that holds it",
        ))?;
        set_socket_buffers(&socket);
        let transport = Arc::new(config.transport()?);
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls.server_config()?)
            .map_err(|e| Error::Tls(format!("QUIC server TLS: {e}")))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server.transport_config(transport.clone());
        let mut ep = quinn::EndpointConfig::default();
        ep.max_udp_payload_size(config.max_udp_payload)
            .map_err(|e| Error::Tls(format!("max UDP payload {}: {e}", config.max_udp_payload)))?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| Error::Misuse("Node::bind outside a Tokio runtime".to_string()))?;
        let endpoint = quinn::Endpoint::new(ep, Some(server), socket, runtime).map_err(io(
            format!("start QUIC endpoint on {addr}"),
            "check the address",
        ))?;
        let live = Arc::new(LiveConns::default());
        let limits = Limits::new(&config);
        watch_trust(tls.trust().clone(), Arc::downgrade(&live));
        Ok(Node {
            endpoint,
            tls: Arc::new(tls),
            transport,
            config,
            live,
            refusals: tokio::sync::broadcast::channel(1024).0,
            limits,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.endpoint.local_addr().map_err(|source| Error::Io {
            what: "read the endpoint's address".into(),
            source,
            remedy: "restart the process",
        })
    }

    /// This node's site.
    pub fn site(&self) -> SiteCode {
        self.tls.code()
    }

    /// This node's public identity (its site code and key).
    pub fn identity(&self) -> PublicIdentity {
        self.tls.identity()
    }

    /// The endpoint's tunables.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// Connects to site `peer` at `addr`; its certificate must be `peer`'s trusted one.
    pub async fn connect(&self, addr: SocketAddr, peer: SiteCode) -> Result<Conn> {
        let what = format!("{peer} at {addr}");
        let crypto =
            quinn::crypto::rustls::QuicClientConfig::try_from(self.tls.client_config(peer)?)
                .map_err(|e| Error::Tls(format!("QUIC client TLS: {e}")))?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        client.transport_config(self.transport.clone());
        let connecting = self
            .endpoint
            .connect_with(client, addr, &crate::tls::site_dns_name(peer))
            .map_err(|e| Error::Connection {
                peer: what.clone(),
                reason: format!("cannot start connecting: {e}"),
                remedy: "check the address",
            })?;
        let deadline = self.config.handshake_timeout;
        let inner = match tokio::time::timeout(deadline, connecting).await {
            Ok(r) => r.map_err(|e| conn_error(&what, e))?,
            Err(_) => {
                return Err(Error::Connection {
                    peer: what,
                    reason: format!("handshake not finished within {deadline:?}"),
                    remedy: "check that the peer runs and the network path is open; retry",
                });
            }
        };
        let peer = Node::identify(&inner, &what)?;
        match tokio::time::timeout(deadline, welcomed(&inner, &what)).await {
            Ok(r) => r?,
            Err(_) => {
                inner.close(0u32.into(), b"no welcome");
                return Err(Error::Connection {
                    peer: what,
                    reason: "the peer did not confirm the connection".into(),
                    remedy: "check that the peer runs Freight and trusts this site",
                });
            }
        }
        self.live.add(peer, &inner);
        Ok(Conn {
            inner,
            peer,
            config: self.config.clone(),
            trust: self.tls.trust().clone(),
            refusals: self.refusals.clone(),
            limits: self.limits.clone(),
        })
    }

    /// The trust store this node authenticates peers with, in memory.
    pub fn trust(&self) -> &Arc<TrustView> {
        self.tls.trust()
    }

    /// The requests the authorization table refuses from now on, with the peer's address (for
    /// an audit trail; a slow reader misses some and is told how many).
    pub fn refusals(&self) -> tokio::sync::broadcast::Receiver<(Refused, SocketAddr)> {
        self.refusals.subscribe()
    }

    /// Limits the `parent` and `child` roles to the site server's configured `relations`
    /// ([`crate::trust::Relations`]) and closes the connections of keys left with no role.
    pub fn set_relations(&self, relations: crate::trust::Relations) {
        self.tls.trust().set_relations(relations);
        self.live.revalidate(self.tls.trust());
    }

    /// Reads the trust store again now (blocking: call it off the async runtime) and closes
    /// the connections of keys it no longer trusts; changes are also picked up on their own
    /// within a second.
    pub fn reload_trust(&self) -> Result<()> {
        self.tls.trust().reload()?;
        self.live.revalidate(self.tls.trust());
        Ok(())
    }

    /// The next incoming connection attempt; `None` once the endpoint is closed. Its
    /// handshake runs in [`Accepting::establish`], so that a slow or refused peer never holds
    /// up the others.
    ///
    /// An attempt from an address not yet validated gets a stateless retry first (no state is
    /// kept for a spoofed source), and one beyond the node's handshake slots is refused at
    /// once, so a flood of connection attempts costs little and never queues without bound.
    pub async fn accept(&self) -> Option<Accepting> {
        loop {
            let incoming = self.endpoint.accept().await?;
            if !incoming.remote_address_validated() && incoming.may_retry() {
                if let Err(e) = incoming.retry() {
                    tracing::debug!(error = %e, "stateless retry failed");
                }
                continue;
            }
            match self.limits.handshakes.clone().try_acquire_owned() {
                Ok(slot) => {
                    return Some(Accepting {
                        incoming,
                        node: self.clone(),
                        _slot: slot,
                    });
                }
                Err(_) => {
                    tracing::debug!(from = %incoming.remote_address(), "too many handshakes in progress; refused");
                    incoming.refuse();
                }
            }
        }
    }

    /// The node's budgets.
    pub fn limits(&self) -> &Arc<Limits> {
        &self.limits
    }

    fn identify(conn: &quinn::Connection, what: &str) -> Result<PublicIdentity> {
        let certs = conn
            .peer_identity()
            .and_then(|any| {
                any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                    .ok()
            })
            .ok_or_else(|| Error::PeerRefused(format!("{what}: presented no certificate")))?;
        let first = certs
            .first()
            .ok_or_else(|| Error::PeerRefused(format!("{what}: presented no certificate")))?;
        // The handshake's verifier already checked it against the trust store.
        crate::tls::certificate_identity(first)
    }

    /// Stops accepting and closes every connection.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"shutting down");
    }

    /// Waits until every connection has closed cleanly (after [`close`](Self::close)).
    pub async fn wait_idle(&self) {
        self.endpoint.wait_idle().await;
    }
}

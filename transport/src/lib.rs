//! Freight's transport: how package versions travel between sites and distribution points.
//!
//! - [`protocol`]: the pure, deterministic, sans-IO transfer protocol (message framing and the
//!   sender/receiver state machines, which also decide which stream each message takes and
//!   when `Done` may be sent or acted on). No sockets, threads or clock.
//! - [`schedule`]: a route's bandwidth windows (weekly schedule, rate limits) and their text
//!   and TOML forms; [`throttle`]: the pure limiter that enforces them; [`clock`] and
//!   [`route_limiter`]: the injectable clock and the async shell shared by a route's streams.
//!
//! The QUIC shell builds on these. See `ARCHITECTURE.md` at the repository root for the map.

pub mod authz;
pub mod clock;
pub mod command;
pub mod error;
pub mod limits;
pub mod protocol;
pub mod quic;
pub mod route_limiter;
pub mod schedule;
pub mod session;
pub mod store;
pub mod throttle;
pub mod tls;
pub mod trust;

pub use clock::{Clock, ManualClock, Reading, SystemClock, TokioClock};
pub use error::{Error, Result};
pub use protocol::{
    ChunkVerifier, FrameDecoder, MAX_FRAME, MAX_MANIFEST_LEN, MAX_MANIFEST_PART, MAX_NEED_IDS,
    Message, ProtocolError, Receiver, ReceiverEvent, Sender, SenderEvent, Transmit, VerifiedChunk,
};
pub use route_limiter::RouteLimiter;
pub use schedule::{Allowed, Cell, CellSpan, Priority, Rate, RouteThrottle, Schedule};
pub use throttle::{Admit, Limiter, LimiterStats, Pacing, Reservation};

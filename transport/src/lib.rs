//! Freight's transport: how package versions travel between sites and distribution points.
//!
//! For now this crate holds only [`protocol`], the pure, deterministic, sans-IO transfer
//! protocol (message framing and the sender/receiver state machines). The QUIC shell and the
//! throttle build on it. See `ARCHITECTURE.md` at the repository root for the map.

pub mod error;
pub mod protocol;
pub mod quic;
pub mod session;
pub mod store;
pub mod tls;

pub use error::{Error, Result};
pub use protocol::{
    ChunkVerifier, FrameDecoder, MAX_FRAME, Message, ProtocolError, Receiver, ReceiverEvent,
    Sender, SenderEvent, VerifiedChunk,
};

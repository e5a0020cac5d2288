//! What a site server says to its DPs, and a pull DP to its sources, on QUIC command streams
//! ([`freight_transport::command`]). JSON bodies: small, rare, and readable in a packet dump.
//! Content never travels here; it moves in push sessions.

pub use crate::content::FailureKind;
use serde::{Deserialize, Serialize};

/// A request to a DP.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum DpRequest {
    /// Before a redistribute: verify every version of `package` the DP holds and drop only the
    /// chunks that fail (for every package using them), so the following push re-sends them
    /// and whatever else is missing. The installed copy keeps being served until the Install
    /// that follows swaps the repaired one in.
    Repair {
        /// Package ID.
        package: String,
    },
    /// After a push: host `version` of `package` (whose manifest hash must be `hash`), drop its
    /// older versions and the content only they used.
    Install {
        /// Package ID.
        package: String,
        /// Version pushed.
        version: u32,
        /// Hex manifest hash the site server expects.
        hash: String,
    },
    /// Drop every version of `package` and free the content no other package uses.
    Remove {
        /// Package ID.
        package: String,
    },
    /// Re-hash the content of the version of `package` the DP holds.
    Validate {
        /// Package ID.
        package: String,
    },
    /// Pull DP: fetch `version` of `package` from `sources` (best first) and host it.
    Pull {
        /// Package ID.
        package: String,
        /// Version.
        version: u32,
        /// Hex manifest hash to verify before hosting.
        hash: String,
        /// Source DPs, best first.
        sources: Vec<Source>,
    },
    /// Pull DP: how is the fetch of `version` of `package` going?
    PullStatus {
        /// Package ID.
        package: String,
        /// Version.
        version: u32,
    },
    /// Source DP: push `version` of `package` back to the asker on this connection.
    PushMe {
        /// Package ID.
        package: String,
        /// Version.
        version: u32,
    },
}

/// A source DP of a pull DP.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Source {
    /// Its key's site code (its QUIC identity).
    pub code: String,
    /// Its QUIC address.
    pub address: String,
}

/// A DP's answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum DpReply {
    /// Done; `freed` = bytes of content released (remove, repair, install).
    Ok {
        /// Bytes of pack files released.
        freed: u64,
    },
    /// Source DP: the push to the asker committed.
    Pushed {
        /// Stored chunk bytes sent.
        bytes: u64,
    },
    /// Validation result.
    Validated {
        /// Version checked (None: the DP holds no version).
        version: Option<u32>,
        /// Chunks re-hashed.
        chunks: u64,
        /// Bad chunks.
        bad: u64,
        /// Files affected (the first few).
        files: Vec<String>,
    },
    /// Pull accepted (or already running).
    Accepted,
    /// Pull DP full.
    AtCapacity {
        /// Jobs running.
        active: usize,
    },
    /// Pull progress.
    Pull(PullState),
    /// Install: this DP already holds `newer`, newer than the version offered, which it
    /// dropped (a newer version is never replaced by an older one).
    NewerHeld {
        /// The newer version held.
        newer: u32,
    },
    /// Refused or failed: one line naming the object and the fix.
    Error {
        /// The message.
        message: String,
        /// Whether retrying can help; a DP that does not say is retried.
        #[serde(default)]
        kind: FailureKind,
    },
}

/// Where a pull stands.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum PullState {
    /// Not known to this DP (never asked, or asked before a restart): notify again.
    Unknown,
    /// Downloading.
    Running {
        /// Source being tried.
        source: String,
        /// Bytes to fetch (what the DP lacks), once known.
        total: u64,
        /// Bytes received.
        done: u64,
    },
    /// Hosted and verified.
    Installed {
        /// Source it came from.
        source: String,
        /// Bytes received.
        bytes: u64,
    },
    /// Every source failed, or the version cannot be hosted here.
    Failed {
        /// Why, per source.
        reason: String,
        /// Whether another attempt can help: permanent when the failure is this DP's own and
        /// no retry changes it (a name its file system refuses, a manifest it refuses as
        /// hostile, a hash that does not match); a DP that does not say is retried.
        #[serde(default)]
        kind: FailureKind,
    },
    /// This DP already holds a newer installed version than the one asked for, which it
    /// does not fetch (informational, like an Install's [`DpReply::NewerHeld`]).
    NewerHeld {
        /// The newer version held.
        newer: u32,
    },
}

/// Encodes a request or reply.
pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("DP messages always serialise")
}

/// Decodes a reply (the caller names the peer in its error).
pub fn decode_reply(bytes: &[u8]) -> Result<DpReply, serde_json::Error> {
    serde_json::from_slice(bytes)
}

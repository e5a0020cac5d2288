//! What site servers say to each other on QUIC command streams: a parent hands its child a
//! signed instruction before the content it names is pushed (`prepare`: the child may relay it
//! onward as it arrives) and again after (`despool`: the [`despooler`] acts on it),
//! and a child reports status changes and the sites below it to its parent
//! ([`report`](super::report)). JSON bodies, like the DP commands; content never travels here.
//!
//! The ops share the DP commands' `op` namespace, so one handler answers both on a host that
//! is a site server and a DP: what is not a site op goes to the DP.
//!
//! [`despooler`]: super::despooler

use super::SiteServer;
use super::store::sends::StatusChange;
use freight_transport::authz::Request;
use freight_transport::command::{CommandHandler, Reply};
use freight_transport::quic::Conn;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A request from one site server to another.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum SiteRequest {
    /// Parent → child: act on this signed instruction (hex of its encoding); the content it
    /// names was pushed before.
    Despool {
        /// Hex of the signed instruction.
        instruction: String,
    },
    /// Parent → child, just before the content is pushed: the same signed instruction, so the
    /// child can start relaying the version onward while it arrives ([`relay`]). Acting on it
    /// still waits for `despool`.
    ///
    /// [`relay`]: super::relay
    Prepare {
        /// Hex of the signed instruction.
        instruction: String,
    },
    /// Child → parent: the sites below the child (`(code, parent)`, the child included) and
    /// status changes in order.
    Report {
        /// Sites below the reporting child.
        sites: Vec<(String, String)>,
        /// Status changes, by the child's sequence number.
        changes: Vec<StatusChange>,
        /// Package versions that arrived at the child by courier since its last report.
        #[serde(default)]
        received: Vec<(String, u32)>,
    },
}

/// A site server's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum SiteReply {
    /// Done: the instruction's package is stored and handed to DistMgr.
    Stored,
    /// The instruction offered an older version than the child holds; dropped, not a
    /// failure (seed 000, "a newer version has already arrived").
    Dropped {
        /// The version the child holds.
        newer: u32,
    },
    /// The child started relaying the prepared version to these sites and DPs (perhaps none).
    Relaying {
        /// Child sites and DPs.
        to: Vec<String>,
    },
    /// The report was applied up to `seq`.
    Acked {
        /// Highest sequence number applied.
        seq: i64,
    },
    /// Refused or failed, with the one-line reason; `permanent` when sending again cannot
    /// help (a bad signature, another destination).
    Error {
        /// One line.
        message: String,
        /// Whether a retry is useless.
        permanent: bool,
    },
}

/// Answers command streams on a site server: site ops here, anything else to the DP handler
/// when the host is also a DP.
pub struct SiteHandler {
    /// The site server.
    pub site: Arc<SiteServer>,
    /// The DP role's handler, on a host that is both.
    pub dp: Option<Arc<dyn CommandHandler>>,
}

impl CommandHandler for SiteHandler {
    fn handle(&self, conn: Conn, request: Vec<u8>) -> Reply {
        let req = match serde_json::from_slice::<SiteRequest>(&request) {
            Ok(r) => r,
            Err(e) => {
                if let Some(dp) = &self.dp {
                    return dp.handle(conn, request);
                }
                let reply = SiteReply::Error {
                    message: format!(
                        "site {}: request not understood ({e}); run the same Freight version on both sites",
                        self.site.code
                    ),
                    permanent: true,
                };
                return Box::pin(async move { encode(&reply) });
            }
        };
        let site = self.site.clone();
        Box::pin(async move { encode(&answer(site, conn, req).await) })
    }
}

async fn answer(site: Arc<SiteServer>, conn: Conn, req: SiteRequest) -> SiteReply {
    // Before anything is read or written: instructions only from the configured parent,
    // reports only from configured children (the relations limit those roles).
    let needed = match &req {
        SiteRequest::Despool { .. } | SiteRequest::Prepare { .. } => Request::SendInstruction,
        SiteRequest::Report { .. } => Request::ReportStatus,
    };
    if let Err(r) = conn.authorize(needed) {
        return SiteReply::Error {
            message: r.to_string(),
            permanent: true,
        };
    }
    let peer = conn.peer();
    match req {
        SiteRequest::Despool { instruction } => {
            super::despooler::despool(&site, &peer, &instruction).await
        }
        SiteRequest::Prepare { instruction } => {
            super::relay::prepare(&site, &peer, &instruction).await
        }
        SiteRequest::Report {
            sites,
            changes,
            received,
        } => super::report::receive(&site, &peer, &sites, &changes, &received),
    }
}

/// A request's or reply's bytes.
pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

//! A pull DP's fetches (seed 001, "pull distribution point"): told by PkgXferMgr which
//! version to host and which source DPs hold it, best first, it asks each source in turn to
//! push the version on the pull DP's own connection, checks the manifest hash and hosts it.
//!
//! A fetch runs as a background task per package version; its state lives in memory, because
//! the site server's PkgXferMgr polls and notifies again after a restart (its queue is the
//! durable one).

use super::command::{DpReply, DpRequest, PullState, Source, decode_reply, encode};
use super::error::DpError;
use crate::content;
use freight_core::{PackageId, SiteCode};
use freight_transport::authz::Request;
use freight_transport::command;
use freight_transport::quic::Node;
use freight_transport::session;
use freight_transport::store::SharedLibrary;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

/// The fetches of a pull DP (cheap to clone; clones share the state).
#[derive(Clone)]
pub struct Pulls {
    lib: SharedLibrary,
    node: Node,
    capacity: usize,
    share: Option<PathBuf>,
    states: Arc<Mutex<HashMap<(String, u32), PullState>>>,
}

impl Pulls {
    /// Fetches into `lib` through `node`, at most `capacity` at once.
    pub fn new(lib: SharedLibrary, node: Node, capacity: usize, share: Option<PathBuf>) -> Pulls {
        Pulls {
            lib,
            node,
            capacity,
            share,
            states: Arc::default(),
        }
    }

    fn states(&self) -> MutexGuard<'_, HashMap<(String, u32), PullState>> {
        self.states.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where the fetch of `version` of `package` stands.
    pub fn state(&self, package: &str, version: u32) -> PullState {
        self.states()
            .get(&(package.to_string(), version))
            .cloned()
            .unwrap_or(PullState::Unknown)
    }

    /// Starts fetching `version` of `package` from `sources` (a fetch already running or done
    /// is accepted again; a full DP answers at capacity).
    pub fn start(
        &self,
        package: String,
        version: u32,
        hash: String,
        sources: Vec<Source>,
    ) -> DpReply {
        let key = (package.clone(), version);
        {
            let mut states = self.states();
            if let Some(PullState::Running { .. } | PullState::Installed { .. }) = states.get(&key)
            {
                return DpReply::Accepted;
            }
            let active = states
                .values()
                .filter(|s| matches!(s, PullState::Running { .. }))
                .count();
            if active >= self.capacity {
                return DpReply::AtCapacity { active };
            }
            states.insert(key.clone(), running(""));
        }
        let me = self.clone();
        tokio::spawn(async move {
            let state = me.fetch(&package, version, &hash, &sources).await;
            me.states().insert(key, state);
        });
        DpReply::Accepted
    }

    /// Tries each source in order until one pushes a copy whose hash matches.
    async fn fetch(
        &self,
        package: &str,
        version: u32,
        hash: &str,
        sources: &[Source],
    ) -> PullState {
        let mut reasons = Vec::new();
        for s in sources {
            if let Some(p) = self.states().get_mut(&(package.to_string(), version)) {
                *p = running(&s.code);
            }
            match self.fetch_from(s, package, version, hash).await {
                Ok(bytes) => {
                    return PullState::Installed {
                        source: s.code.clone(),
                        bytes,
                    };
                }
                Err(e) => {
                    tracing::warn!(source = %s.code, package, version, error = %e, "pull from source failed");
                    reasons.push(format!("{}: {e}", s.code));
                }
            }
        }
        if reasons.is_empty() {
            reasons.push("no source DP was named".into());
        }
        PullState::Failed {
            reason: reasons.join("; "),
        }
    }

    async fn fetch_from(
        &self,
        s: &Source,
        package: &str,
        version: u32,
        hash: &str,
    ) -> Result<u64, DpError> {
        let code = SiteCode::parse(&s.code)?;
        let addr = s
            .address
            .parse()
            .map_err(|_| DpError::BadSourceAddress(s.address.clone()))?;
        let p = PackageId::parse(package)?;
        let conn = self.node.connect(addr, code).await?;
        // The source pushes on this connection; it answers Pushed only once this side has
        // committed, and the install below checks the manifest and its hash.
        let serving = tokio::spawn(session::serve_connection(
            conn.clone(),
            self.lib.clone(),
            None,
            None,
            Request::RequestedPush,
        ));
        let req = encode(&DpRequest::PushMe {
            package: package.to_string(),
            version,
        });
        let reply = command::request(&conn, &req).await;
        conn.close("pull done");
        serving.abort();
        let bytes = match decode_reply(&reply?) {
            Ok(DpReply::Pushed { bytes }) => bytes,
            Ok(DpReply::Error { message }) => return Err(DpError::Source(message)),
            Ok(other) => return Err(DpError::Source(format!("unexpected answer {other:?}"))),
            Err(e) => {
                return Err(DpError::Source(format!(
                    "answer not understood ({e}); run the same Freight version on both"
                )));
            }
        };
        content::install_shared(&self.lib, p, version, hash.to_string(), self.share.clone())
            .await?;
        Ok(bytes)
    }
}

fn running(source: &str) -> PullState {
    PullState::Running {
        source: source.to_string(),
        total: 0,
        done: 0,
    }
}

//! A pull DP's fetches (seed 001, "pull distribution point"): told by PkgXferMgr which
//! version to host and which source DPs hold it, best first, it asks each source in turn to
//! push the version on the pull DP's own connection, checks the manifest hash and hosts it.
//!
//! A fetch runs as a background task per package version; its state lives in memory, because
//! the site server's PkgXferMgr polls and notifies again after a restart (its queue is the
//! durable one).

use super::command::{DpReply, DpRequest, PullState, Source, decode_reply, encode};
use super::error::DpError;
use crate::content::{self, FailureKind};
use freight_core::{PackageId, SiteCode};
use freight_transport::ProtocolError;
use freight_transport::authz::Request;
use freight_transport::command;
use freight_transport::quic::Node;
use freight_transport::session;
use freight_transport::store::SharedLibrary;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The fetches of a pull DP (cheap to clone; clones share the state).
#[derive(Clone)]
pub struct Pulls {
    lib: SharedLibrary,
    node: Node,
    capacity: usize,
    deadline: Duration,
    share: Option<PathBuf>,
    states: Arc<Mutex<HashMap<(String, u32), Tracked>>>,
}

/// A fetch's state and when it last changed (finished ones are forgotten after a while).
#[derive(Clone)]
struct Tracked {
    state: PullState,
    since: Instant,
}

/// Finished fetches are remembered this long, for PkgXferMgr's polls; then forgotten (a poll
/// after that sees Unknown and notifies again, which finds the version installed).
const REMEMBER: Duration = Duration::from_secs(3600);
/// At most this many finished fetches are remembered, whatever their age.
const REMEMBER_MAX: usize = 4096;

impl Pulls {
    /// Fetches into `lib` through `node`, at most `capacity` at once.
    pub fn new(
        lib: SharedLibrary,
        node: Node,
        capacity: usize,
        deadline: Duration,
        share: Option<PathBuf>,
    ) -> Pulls {
        Pulls {
            lib,
            node,
            capacity,
            deadline,
            share,
            states: Arc::default(),
        }
    }

    fn states(&self) -> MutexGuard<'_, HashMap<(String, u32), Tracked>> {
        self.states.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, key: (String, u32), state: PullState) {
        let mut states = self.states();
        states.insert(
            key,
            Tracked {
                state,
                since: Instant::now(),
            },
        );
        // The map stays bounded: running fetches (at most `capacity`) and recent results.
        let running = |t: &Tracked| matches!(t.state, PullState::Running { .. });
        states.retain(|_, t| running(t) || t.since.elapsed() < REMEMBER);
        let finished = states.values().filter(|t| !running(t)).count();
        if finished > REMEMBER_MAX {
            let mut old: Vec<_> = states
                .iter()
                .filter(|(_, t)| !running(t))
                .map(|(k, t)| (t.since, k.clone()))
                .collect();
            old.sort();
            for (_, k) in old.into_iter().take(finished - REMEMBER_MAX) {
                states.remove(&k);
            }
        }
    }

    /// Forgets the finished fetches of `package` (before a redistribute, which must fetch the
    /// version again even where it was fetched before); running ones stay.
    pub fn forget_finished(&self, package: &str) {
        self.states()
            .retain(|(p, _), t| p != package || matches!(t.state, PullState::Running { .. }));
    }

    /// Where the fetch of `version` of `package` stands.
    pub fn state(&self, package: &str, version: u32) -> PullState {
        self.states()
            .get(&(package.to_string(), version))
            .map(|t| t.state.clone())
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
            let states = self.states();
            if let Some(
                PullState::Running { .. }
                | PullState::Installed { .. }
                | PullState::NewerHeld { .. },
            ) = states.get(&key).map(|t| &t.state)
            {
                return DpReply::Accepted;
            }
            let active = states
                .values()
                .filter(|t| matches!(t.state, PullState::Running { .. }))
                .count();
            if active >= self.capacity {
                return DpReply::AtCapacity { active };
            }
        }
        self.set(key.clone(), running(""));
        let me = self.clone();
        tokio::spawn(async move {
            let state = me.fetch(&package, version, &hash, &sources).await;
            me.set(key, state);
        });
        DpReply::Accepted
    }

    /// Tries each source in order until one pushes a copy whose hash matches. A failure that
    /// is this DP's own and permanent (see [`PullState::Failed`]) ends the fetch at once: no
    /// other source can change it. A source's own failure (unreachable, not holding the
    /// version) moves on to the next source; when all fail, the fetch failed transiently.
    async fn fetch(
        &self,
        package: &str,
        version: u32,
        hash: &str,
        sources: &[Source],
    ) -> PullState {
        // A newer version installed here is never replaced by an older one: nothing to fetch.
        if let Ok(p) = PackageId::parse(package)
            && let Ok(Some(newer)) = self
                .lib
                .read_async(move |l| content::installed_version(l, &p))
                .await
                .map(|v| v.filter(|n| *n > version))
        {
            return PullState::NewerHeld { newer };
        }
        let mut reasons = Vec::new();
        for s in sources {
            if let Some(t) = self.states().get_mut(&(package.to_string(), version)) {
                t.state = running(&s.code);
            }
            match self.fetch_from(s, package, version, hash).await {
                Ok(bytes) => {
                    return PullState::Installed {
                        source: s.code.clone(),
                        bytes,
                    };
                }
                Err(DpError::Content(content::ContentError::NewerHeld { newer, .. })) => {
                    return PullState::NewerHeld { newer };
                }
                Err(e) => {
                    tracing::warn!(source = %s.code, package, version, error = %e, "pull from source failed");
                    reasons.push(format!("{}: {e}", s.code));
                    if own_failure(&e) && e.kind() == FailureKind::Permanent {
                        return PullState::Failed {
                            reason: reasons.join("; "),
                            kind: FailureKind::Permanent,
                        };
                    }
                }
            }
        }
        if reasons.is_empty() {
            reasons.push("no source DP was named".into());
        }
        PullState::Failed {
            reason: reasons.join("; "),
            kind: FailureKind::Transient,
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
        let (events, mut received) = tokio::sync::mpsc::unbounded_channel();
        let serving = tokio::spawn(session::serve_connection(
            conn.clone(),
            self.lib.clone(),
            Some(events),
            None,
            Request::RequestedPush,
        ));
        let req = encode(&DpRequest::PushMe {
            package: package.to_string(),
            version,
        });
        // The source answers once the whole push committed: the fetch's own deadline, not a
        // command's (a stalled push ends sooner, at the session's progress deadline).
        let reply = command::request_within(&conn, &req, self.deadline).await;
        conn.close("pull done");
        let bytes = match decode_reply(&reply?) {
            Ok(DpReply::Pushed { bytes }) => bytes,
            Ok(DpReply::Error { message, .. }) => {
                // The source's push may have failed because this side refused what it
                // offered: that session's own report says why (it ends at about the same
                // moment as the source's answer).
                let mine = tokio::time::timeout(Duration::from_secs(2), received.recv()).await;
                serving.abort();
                if let Ok(Some(session::Received {
                    result: Err(e @ freight_transport::Error::Protocol { code, .. }),
                    ..
                })) = mine
                    && hostile(code)
                {
                    return Err(DpError::Hostile {
                        from: s.code.clone(),
                        reason: e.to_string(),
                    });
                }
                return Err(DpError::Source(message));
            }
            Ok(other) => {
                serving.abort();
                return Err(DpError::Source(format!("unexpected answer {other:?}")));
            }
            Err(e) => {
                serving.abort();
                return Err(DpError::Source(format!(
                    "answer not understood ({e}); run the same Freight version on both"
                )));
            }
        };
        serving.abort();
        content::install_shared(&self.lib, p, version, hash.to_string(), self.share.clone())
            .await?;
        Ok(bytes)
    }
}

/// Whether a receiving session's protocol error means this DP refused what the source offered
/// as hostile or broken (a manifest that does not decode or is too large, a malformed frame):
/// the same bytes are refused every time.
fn hostile(code: ProtocolError) -> bool {
    matches!(
        code,
        ProtocolError::BadManifest | ProtocolError::ManifestTooLarge | ProtocolError::Malformed
    )
}

/// Whether a fetch failed because of this DP (its library, its share, what it refuses), not
/// because of the source: only such a failure can be permanent for every source.
fn own_failure(e: &DpError) -> bool {
    matches!(e, DpError::Content(_) | DpError::Hostile { .. })
}

fn running(source: &str) -> PullState {
    PullState::Running {
        source: source.to_string(),
        total: 0,
        done: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_dps_own_permanent_failures_end_a_fetch_at_once() {
        // A manifest this DP refuses is refused from every source.
        for code in [
            ProtocolError::BadManifest,
            ProtocolError::ManifestTooLarge,
            ProtocolError::Malformed,
        ] {
            assert!(hostile(code), "{code:?}");
        }
        // A source that gave up or a chunk that went bad on the way: another source may work.
        for code in [ProtocolError::Aborted, ProtocolError::BadChunk] {
            assert!(!hostile(code), "{code:?}");
        }
        let refused = DpError::Hostile {
            from: "DP1".into(),
            reason: "bad manifest".into(),
        };
        assert!(own_failure(&refused) && refused.kind() == FailureKind::Permanent);
        // The share's name refused by this DP's file system: permanent, and this DP's own.
        let share = DpError::Content(content::ContentError::Share {
            path: "/share".into(),
            reason: std::io::Error::from_raw_os_error(libc::ENAMETOOLONG),
        });
        assert!(own_failure(&share) && share.kind() == FailureKind::Permanent);
        // A full disk here is this DP's own but transient: the retry policy applies.
        let full = DpError::Content(content::ContentError::Share {
            path: "/share".into(),
            reason: std::io::Error::from_raw_os_error(libc::ENOSPC),
        });
        assert_eq!(full.kind(), FailureKind::Transient);
        // A source's own refusal is not this DP's: the next source is tried.
        assert!(!own_failure(&DpError::Source("DP1: not held".into())));
    }
}

//! The DP role: hosts packages in its content library, obeys its site server's commands and,
//! as a pull DP, fetches packages from its source DPs itself.
//!
//! Every command runs library maintenance through [`SharedLibrary::exclusive`], so it never
//! races content arriving in push sessions. A pull runs as a background task per package
//! version; its state lives in memory, because the site server's PkgXferMgr polls and notifies
//! again after a restart (its queue is the durable one).

use crate::dp_proto::{DpReply, DpRequest, PullState, Source, decode_reply, encode};
use freight_core::gc::{GcReport, gc_dropping};
use freight_core::verify::verify;
use freight_core::{ChunkId, Library, PackageId, Progress, SiteCode};
use freight_transport::command::{self, CommandHandler, Reply};
use freight_transport::quic::{Conn, Node};
use freight_transport::session::{self, PushOptions, PushReport};
use freight_transport::store::SharedLibrary;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// A DP's command handler and pull state (cheap to clone; clones share the state).
#[derive(Clone)]
pub struct Dp {
    lib: SharedLibrary,
    node: Node,
    pull: bool,
    capacity: usize,
    share: Option<PathBuf>,
    pulls: Arc<Mutex<HashMap<(String, u32), PullState>>>,
}

impl Dp {
    /// A DP serving `lib`; `pull` makes it a pull DP with `capacity` concurrent fetches.
    pub fn new(
        lib: SharedLibrary,
        node: Node,
        pull: bool,
        capacity: usize,
        share: Option<PathBuf>,
    ) -> Dp {
        Dp {
            lib,
            node,
            pull,
            capacity,
            share,
            pulls: Arc::default(),
        }
    }

    fn pulls(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u32), PullState>> {
        self.pulls.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn answer(self, conn: Conn, req: DpRequest) -> DpReply {
        let res = match req {
            DpRequest::Forget { package } => self.forget(package).await,
            DpRequest::Install {
                package,
                version,
                hash,
            } => self.install(package, version, hash).await,
            DpRequest::Remove { package } => self.remove(package).await,
            DpRequest::Validate { package } => self.validate(package).await,
            DpRequest::Pull {
                package,
                version,
                hash,
                sources,
            } => Ok(self.start_pull(package, version, hash, sources)),
            DpRequest::PullStatus { package, version } => Ok(DpReply::Pull(
                self.pulls()
                    .get(&(package, version))
                    .cloned()
                    .unwrap_or(PullState::Unknown),
            )),
            DpRequest::PushMe { package, version } => self.push_to(conn, package, version).await,
        };
        res.unwrap_or_else(|message| DpReply::Error { message })
    }

    async fn maintain<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Library) -> Result<T, String> + Send + 'static,
    ) -> Result<T, String> {
        self.lib.exclusive(f).await.map_err(|e| e.to_string())?
    }

    async fn forget(&self, package: String) -> Result<DpReply, String> {
        let share = self.share.clone();
        self.maintain(move |lib| {
            let p = PackageId::parse(&package).map_err(|e| e.to_string())?;
            // Corrupt content of this package goes even where another package shares it, so
            // the redistribute that follows replaces it.
            let bad: HashSet<ChunkId> = match verify(lib, Some((&p, None)), &Progress::default()) {
                Ok(r) => r
                    .bad
                    .iter()
                    .filter_map(|b| blake3::Hash::from_hex(&b.id).ok())
                    .map(|h| ChunkId(*h.as_bytes()))
                    .collect(),
                Err(_) => HashSet::new(),
            };
            let r = drop_package(lib, &p, &bad, share.as_deref())?;
            Ok(DpReply::Ok {
                freed: r.bytes_freed,
            })
        })
        .await
    }

    async fn install(
        &self,
        package: String,
        version: u32,
        hash: String,
    ) -> Result<DpReply, String> {
        let share = self.share.clone();
        self.maintain(move |lib| install(lib, &package, version, &hash, share.as_deref()))
            .await
    }

    async fn remove(&self, package: String) -> Result<DpReply, String> {
        let share = self.share.clone();
        self.maintain(move |lib| {
            let p = PackageId::parse(&package).map_err(|e| e.to_string())?;
            let r = drop_package(lib, &p, &HashSet::new(), share.as_deref())?;
            Ok(DpReply::Ok {
                freed: r.bytes_freed,
            })
        })
        .await
    }

    async fn validate(&self, package: String) -> Result<DpReply, String> {
        let lib = self.lib.clone();
        tokio::task::spawn_blocking(move || {
            let p = PackageId::parse(&package).map_err(|e| e.to_string())?;
            let lib = lib.read();
            let Some(v) = lib.latest(&p).map_err(|e| e.to_string())? else {
                return Ok(DpReply::Validated {
                    version: None,
                    chunks: 0,
                    bad: 0,
                    files: Vec::new(),
                });
            };
            let r = verify(&lib, Some((&p, Some(v))), &Progress::default())
                .map_err(|e| e.to_string())?;
            let mut files: Vec<String> = r.bad.iter().flat_map(|b| b.files.clone()).collect();
            files.sort();
            files.dedup();
            files.truncate(8);
            Ok(DpReply::Validated {
                version: Some(v),
                chunks: r.chunks,
                bad: r.bad.len() as u64,
                files,
            })
        })
        .await
        .map_err(|e| format!("validation task failed: {e}"))?
    }

    fn start_pull(
        self,
        package: String,
        version: u32,
        hash: String,
        sources: Vec<Source>,
    ) -> DpReply {
        if !self.pull {
            return DpReply::Error {
                message: "this DP is a standard DP; it does not pull (set [dp] kind = \"pull\")"
                    .into(),
            };
        }
        let key = (package.clone(), version);
        {
            let mut pulls = self.pulls();
            if let Some(PullState::Running { .. } | PullState::Installed { .. }) = pulls.get(&key) {
                return DpReply::Accepted;
            }
            let active = pulls
                .values()
                .filter(|s| matches!(s, PullState::Running { .. }))
                .count();
            if active >= self.capacity {
                return DpReply::AtCapacity { active };
            }
            pulls.insert(
                key.clone(),
                PullState::Running {
                    source: String::new(),
                    total: 0,
                    done: 0,
                },
            );
        }
        tokio::spawn(async move {
            let state = self.fetch(&package, version, &hash, &sources).await;
            self.pulls().insert(key, state);
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
            if let Some(p) = self.pulls().get_mut(&(package.to_string(), version)) {
                *p = PullState::Running {
                    source: s.code.clone(),
                    total: 0,
                    done: 0,
                };
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
    ) -> Result<u64, String> {
        let code = SiteCode::parse(&s.code).map_err(|e| e.to_string())?;
        let addr = s
            .address
            .parse()
            .map_err(|_| format!("{:?} is not a QUIC address", s.address))?;
        let conn = self
            .node
            .connect(addr, code)
            .await
            .map_err(|e| e.to_string())?;
        // The source pushes on this connection; it answers Pushed only once this side has
        // committed, and install below checks the manifest and its hash.
        let serving = tokio::spawn(session::serve_connection(
            conn.clone(),
            self.lib.clone(),
            None,
            None,
        ));
        let req = encode(&DpRequest::PushMe {
            package: package.to_string(),
            version,
        });
        let reply = command::request(&conn, &req).await;
        conn.close("pull done");
        serving.abort();
        let reply = decode_reply(&reply.map_err(|e| e.to_string())?, &s.code)?;
        let bytes = match reply {
            DpReply::Pushed { bytes } => bytes,
            DpReply::Error { message } => return Err(message),
            other => return Err(format!("unexpected answer {other:?}")),
        };
        let share = self.share.clone();
        let (package, hash) = (package.to_string(), hash.to_string());
        self.maintain(move |lib| install(lib, &package, version, &hash, share.as_deref()))
            .await?;
        Ok(bytes)
    }

    /// Source side of a pull: pushes on the asker's connection.
    async fn push_to(&self, conn: Conn, package: String, version: u32) -> Result<DpReply, String> {
        let p = PackageId::parse(&package).map_err(|e| e.to_string())?;
        let m = self
            .lib
            .read()
            .manifest(&p, version)
            .map_err(|e| format!("this DP does not hold {package} v{version}: {e}"))?;
        let mut report = PushReport::default();
        session::push(&conn, &self.lib, &m, &PushOptions::default(), &mut report)
            .await
            .map_err(|e| e.to_string())?;
        Ok(DpReply::Pushed {
            bytes: report.bytes_sent,
        })
    }
}

impl CommandHandler for Dp {
    fn handle(&self, conn: Conn, request: Vec<u8>) -> Reply {
        let me = self.clone();
        Box::pin(async move {
            let reply = match serde_json::from_slice::<DpRequest>(&request) {
                Ok(req) => me.answer(conn, req).await,
                Err(e) => DpReply::Error {
                    message: format!(
                        "request not understood ({e}); run the same Freight version on site server and DP"
                    ),
                },
            };
            encode(&reply)
        })
    }
}

/// Share of a pack's bytes that must be garbage before an install rewrites it.
const GC_MIN_GARBAGE: f64 = 0.5;

/// Drops every version of `p` and its share folder (if `share`), then collects garbage, also
/// dropping the chunks in `bad` even where another package still names them. Used by the
/// DP's forget and remove and by the site server when a package is deleted.
pub fn drop_package(
    lib: &mut Library,
    p: &PackageId,
    bad: &HashSet<ChunkId>,
    share: Option<&std::path::Path>,
) -> Result<GcReport, String> {
    drop_versions(lib, p, |_| true)?;
    remove_share(share, p.as_str());
    gc_dropping(lib, bad, &Progress::default()).map_err(|e| e.to_string())
}

/// Removes the versions of `p` that `which` selects.
fn drop_versions(
    lib: &mut Library,
    p: &PackageId,
    which: impl Fn(u32) -> bool,
) -> Result<(), String> {
    let versions = lib.versions_of(p).map_err(|e| e.to_string())?;
    for v in versions.into_iter().filter(|v| which(*v)) {
        lib.remove_version(p, v).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Hosts `version` of `package`: checks its hash, drops older versions and their content.
fn install(
    lib: &mut Library,
    package: &str,
    version: u32,
    hash: &str,
    share: Option<&std::path::Path>,
) -> Result<DpReply, String> {
    let p = PackageId::parse(package).map_err(|e| e.to_string())?;
    let m = lib.manifest(&p, version).map_err(|e| e.to_string())?;
    let have = m.hash().to_hex();
    if have.as_str() != hash {
        return Err(format!(
            "{package} v{version} here has hash {have}, the site server expects {hash}; redistribute the package"
        ));
    }
    if let Some(newer) = lib
        .latest(&p)
        .map_err(|e| e.to_string())?
        .filter(|n| *n > version)
    {
        return Err(format!(
            "this DP already holds {package} v{newer}, newer than v{version}; a newer version is never replaced by an older one"
        ));
    }
    drop_versions(lib, &p, |v| v < version)?;
    // An update drops a little of many packs: rewrite only packs that are mostly garbage.
    let r = freight_core::gc::gc_partial(lib, GC_MIN_GARBAGE, &Progress::default())
        .map_err(|e| e.to_string())?;
    if let Some(share) = share {
        materialise_share(lib, &m, share)?;
    }
    Ok(DpReply::Ok {
        freed: r.bytes_freed,
    })
}

/// Writes the package under `SHARE/PKG` (a temporary folder renamed into place).
fn materialise_share(
    lib: &Library,
    m: &freight_core::Manifest,
    share: &std::path::Path,
) -> Result<(), String> {
    let dest = share.join(m.package.as_str());
    let tmp = share.join(format!(".{}.tmp", m.package));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(share).map_err(|e| format!("{}: {e}", share.display()))?;
    freight_core::materialize::materialize(lib, m, &tmp, &Progress::default())
        .map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::rename(&tmp, &dest).map_err(|e| format!("{}: {e}", dest.display()))
}

fn remove_share(share: Option<&std::path::Path>, package: &str) {
    if let Some(share) = share {
        let _ = std::fs::remove_dir_all(share.join(package));
    }
}

//! The DP role: hosts packages in its content library, obeys its site server's commands
//! ([`command`]), fetches packages from its source DPs as a pull DP ([`pull`]), and serves
//! content to clients over HTTP ([`http`]).
//!
//! Every command that changes the library runs through [`SharedLibrary::exclusive`], so it
//! never races content arriving in push sessions.

pub mod command;
pub mod error;
pub mod http;
pub mod http_server;
pub mod pull;

use crate::content;
use command::{DpReply, DpRequest, PullState, encode};
use error::DpError;
use freight_core::verify::verify;
use freight_core::{ChunkId, Library, PackageId, Progress};
use freight_transport::authz::Request;
use freight_transport::command::{CommandHandler, Reply};
use freight_transport::quic::{Conn, Node};
use freight_transport::session::{self, Offer, PushOptions, PushReport};
use freight_transport::store::SharedLibrary;
use std::collections::HashSet;
use std::path::PathBuf;

/// A DP's command handler and pull state (cheap to clone; clones share the state).
#[derive(Clone)]
pub struct Dp {
    lib: SharedLibrary,
    share: Option<PathBuf>,
    /// Present on a pull DP.
    pulls: Option<pull::Pulls>,
}

impl Dp {
    /// A DP serving `lib`; a pull DP (`pull`) fetches up to `capacity` packages at once
    /// through `node`, each from one source for at most `deadline`. `share` materialises
    /// installed packages under `SHARE/PKG`.
    pub fn new(
        lib: SharedLibrary,
        node: Node,
        pull: bool,
        capacity: usize,
        deadline: std::time::Duration,
        share: Option<PathBuf>,
    ) -> Dp {
        Dp {
            pulls: pull
                .then(|| pull::Pulls::new(lib.clone(), node, capacity, deadline, share.clone())),
            lib,
            share,
        }
    }

    async fn answer(self, conn: Conn, req: DpRequest) -> Result<DpReply, DpError> {
        // Before anything is read or written: only this DP's site server manages it, and only
        // a pull DP it serves may read from it.
        conn.authorize(match req {
            DpRequest::PushMe { .. } => Request::ReadContent,
            _ => Request::ManageDp,
        })?;
        match req {
            DpRequest::Repair { package } => self.repair(package).await,
            DpRequest::Install {
                package,
                version,
                hash,
            } => {
                let p = PackageId::parse(&package)?;
                let share = self.share.clone();
                match content::install_shared(&self.lib, p, version, hash, share).await {
                    Ok(freed) => Ok(DpReply::Ok { freed }),
                    // Not a failure: the older version was dropped (seed 000, "a newer version
                    // has already arrived").
                    Err(content::ContentError::NewerHeld { newer, .. }) => {
                        Ok(DpReply::NewerHeld { newer })
                    }
                    Err(e) => Err(e.into()),
                }
            }
            DpRequest::Remove { package } => self.remove(package).await,
            DpRequest::Validate { package } => self.validate(package).await,
            DpRequest::Pull {
                package,
                version,
                hash,
                sources,
            } => {
                let pulls = self.pulls.as_ref().ok_or(DpError::NotPull)?;
                Ok(pulls.start(package, version, hash, sources))
            }
            DpRequest::PullStatus { package, version } => Ok(DpReply::Pull(
                self.pulls
                    .as_ref()
                    .map_or(PullState::Unknown, |p| p.state(&package, version)),
            )),
            DpRequest::PushMe { package, version } => self.push_to(conn, package, version).await,
        }
    }

    /// Before a redistribute: the package's versions are verified under the library's read
    /// lock, beside the HTTP readers, and only the chunks that fail are dropped (on the store
    /// thread), for every package using them; the versions, the install record and the share
    /// stay, so every good file keeps being served while the push and the Install run.
    async fn repair(&self, package: String) -> Result<DpReply, DpError> {
        let p = PackageId::parse(&package)?;
        let checked = p.clone();
        let bad: HashSet<ChunkId> = self
            .lib
            .read_async(move |lib| {
                match verify(lib, Some((&checked, None)), &Progress::default()) {
                    Ok(r) => r.bad.iter().map(|b| b.id).collect(),
                    // Not held at all: the push brings everything.
                    Err(_) => HashSet::new(),
                }
            })
            .await?;
        let freed = if bad.is_empty() {
            0
        } else {
            tracing::warn!(package = %p, chunks = bad.len(), "redistribute: dropping chunks that fail verification, to be sent again");
            self.lib
                .exclusive(move |lib| content::drop_bad_chunks(lib, &p, &bad))
                .await??
        };
        // A pull DP fetches the version again even if it fetched it before.
        if let Some(pulls) = &self.pulls {
            pulls.forget_finished(&package);
        }
        crate::test_pause::point_async("repaired").await;
        Ok(DpReply::Ok { freed })
    }

    async fn remove(&self, package: String) -> Result<DpReply, DpError> {
        let p = PackageId::parse(&package)?;
        let share = self.share.clone();
        let r = self
            .lib
            .exclusive(move |lib| content::drop_package(lib, &p, &HashSet::new(), share.as_deref()))
            .await??;
        Ok(DpReply::Ok {
            freed: r.bytes_freed,
        })
    }

    async fn validate(&self, package: String) -> Result<DpReply, DpError> {
        let p = PackageId::parse(&package)?;
        let lib = self.lib.clone();
        tokio::task::spawn_blocking(move || validate(&lib.read(), &p))
            .await
            .map_err(|e| DpError::Task {
                what: "validation",
                reason: e.to_string(),
            })?
    }

    /// Source side of a pull: pushes on the asker's connection.
    async fn push_to(&self, conn: Conn, package: String, version: u32) -> Result<DpReply, DpError> {
        let p = PackageId::parse(&package)?;
        // Off the async worker: maintenance may hold the library for seconds.
        // A source serves only versions it installed, like its HTTP (a version pushed here
        // whose install failed or never came is not held, as far as others are concerned).
        let held = p.clone();
        self.lib
            .read_async(move |l| {
                if content::installed_version(l, &p).is_none_or(|i| i < version) {
                    return Err(freight_core::Error::NoSuchVersion {
                        package: p.to_string(),
                        version,
                    });
                }
                l.manifest_dir().open_manifest(&p, version).map(|_| ())
            })
            .await
            .map_err(|e| DpError::Task {
                what: "reading a manifest",
                reason: e.to_string(),
            })?
            .map_err(|reason| DpError::NotHeld {
                package,
                version,
                reason,
            })?;
        let mut report = PushReport::default();
        let offer = Offer::Stored(&held, version);
        session::push(
            &conn,
            &self.lib,
            offer,
            &PushOptions::default(),
            &mut report,
        )
        .await?;
        Ok(DpReply::Pushed {
            bytes: report.bytes_sent,
        })
    }
}

/// Re-hashes the newest version of `p` the library holds.
fn validate(lib: &Library, p: &PackageId) -> Result<DpReply, DpError> {
    let Some(v) = lib.latest(p)? else {
        return Ok(DpReply::Validated {
            version: None,
            chunks: 0,
            bad: 0,
            files: Vec::new(),
        });
    };
    let r = verify(lib, Some((p, Some(v))), &Progress::default())?;
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
}

impl CommandHandler for Dp {
    fn handle(&self, conn: Conn, request: Vec<u8>) -> Reply {
        let me = self.clone();
        Box::pin(async move {
            let res = match serde_json::from_slice::<DpRequest>(&request) {
                Ok(req) => me.answer(conn, req).await,
                Err(e) => Err(DpError::BadRequest(e)),
            };
            encode(&res.unwrap_or_else(|e| DpReply::Error {
                message: e.to_string(),
                kind: e.kind(),
            }))
        })
    }
}

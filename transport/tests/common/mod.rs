//! Helpers for the transport's integration tests: two sites that trust each other, libraries
//! with a generated package, QUIC nodes on loopback.
#![allow(dead_code)]

use freight_core::library::Access;
use freight_core::{
    IoMode, Library, LibraryConfig, Manifest, PackageId, SiteCode, SiteKey, TrustStore,
};
use freight_test_support::dataset::{DatasetSpec, generate};
use freight_transport::quic::{Conn, Node, NodeConfig};
use freight_transport::session::{self, Received};
use freight_transport::store::SharedLibrary;
use freight_transport::tls::SiteTls;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;

/// The I/O mode under test: `FREIGHT_IO` (CI runs some suites once per path), default auto.
pub fn io() -> Option<IoMode> {
    IoMode::from_env()
}

pub fn code(s: &str) -> SiteCode {
    SiteCode::parse(s).unwrap()
}

/// A site's folder: key and trust store.
pub struct Site {
    pub key: SiteKey,
    pub trust: PathBuf,
}

impl Site {
    pub fn new(dir: &Path, c: &str) -> Site {
        let key = SiteKey::load_or_create(&dir.join(format!("{c}.key")), code(c)).unwrap();
        let trust = dir.join(format!("{c}-trust"));
        TrustStore::open(&trust).unwrap();
        Site { key, trust }
    }

    pub fn trusts(&self, other: &Site) {
        TrustStore::open(&self.trust)
            .unwrap()
            .import(&other.key.identity(), freight_core::Role::Parent)
            .unwrap();
    }

    pub fn tls(&self) -> SiteTls {
        SiteTls::new(&self.key, &self.trust).unwrap()
    }
}

/// Logs to the test's output when `FREIGHT_LOG` is set (e.g. `freight_transport=debug`).
pub fn log() {
    if let Ok(filter) = std::env::var("FREIGHT_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

/// Test tunables: short timeouts so cuts are noticed quickly.
pub fn fast_config() -> NodeConfig {
    NodeConfig {
        idle_timeout: Duration::from_millis(1500),
        keep_alive: Duration::from_millis(300),
        ..NodeConfig::default()
    }
}

/// A library at `dir` opened for writing.
pub fn library(dir: &Path) -> Library {
    Library::open_or_init(dir, io()).unwrap()
}

/// A library with small chunks (64 KiB / 256 KiB / 1 MiB), so that a package of a few dozen
/// MiB has many chunks in flight; opened for writing.
pub fn small_chunk_library(dir: &Path) -> Library {
    if !dir.join("library.toml").exists() {
        let cfg = LibraryConfig {
            chunk: freight_core::ChunkParams {
                min: 64 << 10,
                avg: 256 << 10,
                max: 1 << 20,
            },
            ..LibraryConfig::default()
        };
        Library::init(dir, &cfg).unwrap();
    }
    library(dir)
}

/// Generates a mixed tree of `bytes` at `src` (unless it exists) and ingests it as `pkg`
/// version `v` into the library at `lib_dir`; returns the manifest.
pub fn ingest_tree(
    lib_dir: &Path,
    src: &Path,
    pkg: &str,
    v: u32,
    bytes: u64,
    seed: u64,
) -> Manifest {
    if !src.exists() {
        generate(src, &DatasetSpec::mixed(bytes, seed)).unwrap();
    }
    ingest_into(&mut library(lib_dir), src, pkg, v)
}

/// Ingests `src` as `pkg` version `v` into `lib`; returns the manifest.
pub fn ingest_into(lib: &mut Library, src: &Path, pkg: &str, v: u32) -> Manifest {
    freight_test_support::ingest_version(lib, src, pkg, v).unwrap();
    lib.manifest(&PackageId::parse(pkg).unwrap(), v).unwrap()
}

/// A receiving node serving `lib` on loopback; sessions are reported on the channel.
pub struct Receiving {
    pub node: Node,
    pub lib: SharedLibrary,
    pub events: mpsc::UnboundedReceiver<Received>,
}

pub fn receiving(site: &Site, lib_dir: &Path, cfg: NodeConfig) -> Receiving {
    receiving_with(site, SharedLibrary::new(library(lib_dir)), cfg)
}

/// Like [`receiving`] with a library shared by the caller.
pub fn receiving_with(site: &Site, lib: SharedLibrary, cfg: NodeConfig) -> Receiving {
    log();
    let node = Node::bind("127.0.0.1:0".parse().unwrap(), site.tls(), cfg).unwrap();
    let (tx, events) = mpsc::unbounded_channel();
    tokio::spawn(session::serve(node.clone(), lib.clone(), Some(tx), None));
    Receiving { node, lib, events }
}

/// A node of `site` on loopback with the test tunables.
pub fn node(site: &Site) -> Node {
    Node::bind("127.0.0.1:0".parse().unwrap(), site.tls(), fast_config()).unwrap()
}

/// A node of `site` connected to the receiving node `rx` of site `peer`.
pub async fn connect(site: &Site, rx: &Receiving, peer: &str) -> (Node, Conn) {
    let node = node(site);
    let conn = node
        .connect(rx.node.local_addr().unwrap(), code(peer))
        .await
        .unwrap();
    (node, conn)
}

/// Opens a library read-only (after the nodes using it are gone).
pub fn open_read(dir: &Path) -> Library {
    Library::open(dir, Access::Read, io()).unwrap()
}

pub fn config() -> LibraryConfig {
    LibraryConfig::default()
}

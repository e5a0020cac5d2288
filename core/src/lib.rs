//! Freight's data plane: content-defined chunking, package manifests, the single-instance
//! content library and the block I/O engine it runs on.
//!
//! Nothing here knows about databases or sockets; sites appear only as keys, trusted identities
//! and signed instructions (`site`, `instruction`). The transport and the appliance build on
//! these types. See `ARCHITECTURE.md` at the repository root for the map.

pub mod chunk_index;
pub mod chunk_table;
pub mod chunker;
pub mod codec;
pub mod config;
pub mod counters;
pub mod engine;
pub mod error;
pub mod gc;
pub mod id;
pub mod ingest;
pub mod instruction;
pub mod library;
pub mod manifest;
pub mod materialize;
pub mod pack;
pub mod parcel;
pub mod path_index;
pub mod progress;
pub mod repair;
pub mod site;
pub mod spill;
pub mod stats;
pub mod stream;
pub mod text;
pub mod units;
pub mod verify;
pub mod view;
pub mod walk;
pub mod writer;

pub use chunk_table::{ChunkTable, ChunkTableBuilder, ManifestChunks};
pub use chunker::ChunkParams;
pub use config::LibraryConfig;
pub use engine::{Engine, EngineKind, IoMode};
pub use error::{Error, Result};
pub use id::{ChunkId, PackageId};
pub use instruction::{Instruction, InstructionKind, SignedInstruction};
pub use library::{Library, ManifestDir};
pub use manifest::{Entry, EntryKind, Manifest};
pub use progress::Progress;
pub use site::{PublicIdentity, Role, Roles, SiteCode, SiteKey, TrustEntry, TrustStore};

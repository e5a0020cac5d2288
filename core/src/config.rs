//! Library configuration, stored as `library.toml` in the library directory.

use crate::chunker::ChunkParams;
use crate::engine::IoMode;
use crate::error::{Error, IoContext, Result};
use std::path::{Path, PathBuf};

/// File name of the configuration inside a library directory.
pub const CONFIG_FILE: &str = "library.toml";

/// How a library stores content. Written once at `init`; chunk sizes must not change after
/// content exists, or new versions stop sharing chunks with old ones.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LibraryConfig {
    /// Storage roots for pack files; relative paths are inside the library directory.
    pub roots: Vec<PathBuf>,
    /// Free space (bytes) that is never used on any root.
    pub reserve_bytes: u64,
    /// zstd level for new chunks.
    pub compression_level: i32,
    /// A pack file is sealed once it reaches this size.
    pub pack_size: u64,
    /// Content-defined chunking bounds.
    pub chunk: ChunkParams,
    /// I/O path; the `FREIGHT_IO` environment variable or `--io` overrides it.
    pub io: IoMode,
}

impl Default for LibraryConfig {
    fn default() -> Self {
        LibraryConfig {
            roots: vec![PathBuf::from("store")],
            reserve_bytes: 64 << 20,
            compression_level: 1,
            pack_size: 256 << 20,
            chunk: ChunkParams::default(),
            io: IoMode::Auto,
        }
    }
}

impl LibraryConfig {
    /// Reads and validates the configuration of the library at `dir`.
    pub fn load(dir: &Path) -> Result<LibraryConfig> {
        let path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).ctx(&path, "read")?;
        let cfg: LibraryConfig = toml::from_str(&text).map_err(|e| Error::BadLibrary {
            path: path.clone(),
            reason: format!("invalid configuration: {}", e.message()),
        })?;
        cfg.validate(&path)?;
        Ok(cfg)
    }

    /// Checks values a library cannot work with.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |reason: String| Error::BadLibrary {
            path: path.to_path_buf(),
            reason,
        };
        if self.roots.is_empty() {
            return Err(bad("no storage roots configured; add one to `roots`".into()));
        }
        self.chunk.validate().map_err(bad)?;
        if !(-7..=19).contains(&self.compression_level) {
            return Err(bad("compression_level must be between -7 and 19".into()));
        }
        if self.pack_size < (1 << 20) {
            return Err(bad("pack_size must be at least 1 MiB".into()));
        }
        Ok(())
    }

    /// Serialises for writing.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }

    /// Storage roots as absolute paths.
    pub fn resolved_roots(&self, dir: &Path) -> Vec<PathBuf> {
        self.roots.iter().map(|r| dir.join(r)).collect()
    }
}

//! The cache's configuration file: where the cache lives, how big each tier
//! may grow, and the few RocksDB knobs worth turning.

use super::CacheError;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Everything the chunk cache needs to open; read from a TOML file so a node
/// can size the cache to its memory and disk without a rebuild. Every field
/// is optional in the file and falls back to [`CacheConfig::default`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Directory holding the RocksDB disk tier. Created if missing.
    pub dir: PathBuf,
    /// Bound of the in-memory tier, in bytes of chunk data.
    pub memory_bytes: u64,
    /// Bound of the disk tier, in bytes of chunk data (RocksDB's own
    /// overhead — WAL, index blocks, not-yet-compacted deletes — comes on top).
    pub disk_bytes: u64,
    /// Free space the disk tier leaves on its filesystem: below it, chunks
    /// are no longer written to disk (they are still served), so a full
    /// disk never reaches RocksDB, which aborts the process on some write
    /// errors. At least twice `rocksdb.write_buffer_bytes` (the memtables
    /// RocksDB writes out on its own).
    pub disk_min_free_bytes: u64,
    /// RocksDB tuning for the disk tier.
    pub rocksdb: RocksDbOptions,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            dir: PathBuf::from("/var/lib/loci/cache"),
            memory_bytes: 512 * MIB,
            disk_bytes: 10 * GIB,
            disk_min_free_bytes: 256 * MIB,
            rocksdb: RocksDbOptions::default(),
        }
    }
}

impl CacheConfig {
    /// Reads a TOML config file. Errors name the file and, for a bad or
    /// unknown field, the field (toml's message carries it with the line).
    pub fn load(path: &Path) -> Result<CacheConfig, CacheError> {
        let text = std::fs::read_to_string(path).map_err(|e| CacheError::Config {
            path: path.to_path_buf(),
            reason: format!("cannot read: {e}"),
        })?;
        Self::parse(&text).map_err(|reason| CacheError::Config {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Parses TOML text; split from `load` so the error text is testable
    /// without a file.
    fn parse(text: &str) -> Result<CacheConfig, String> {
        let config: CacheConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    /// Rejects values that parse but cannot work.
    pub fn validate(&self) -> Result<(), String> {
        if self.rocksdb.max_background_jobs == 0 {
            return Err("rocksdb.max_background_jobs must be at least 1".into());
        }
        if self.rocksdb.write_buffer_bytes < MIB {
            return Err("rocksdb.write_buffer_bytes must be at least 1 MiB".into());
        }
        // RocksDB flushes a memtable per column family to disk without
        // asking loci: the reserve must hold them, or a full disk reaches
        // RocksDB, whose error paths after an ENOSPC can abort the process
        // (an assertion in Debian's build; seen in CI).
        let memtables = 2 * self.rocksdb.write_buffer_bytes;
        if self.disk_min_free_bytes < memtables {
            return Err(format!(
                "disk_min_free_bytes must be at least twice rocksdb.write_buffer_bytes ({memtables}): RocksDB writes its memtables out without loci's free-space check, and a write that meets a full disk can abort the process"
            ));
        }
        Ok(())
    }
}

/// RocksDB knobs for the disk tier. The defaults suit a node with a few
/// cores and an SSD; most deployments never touch them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RocksDbOptions {
    /// RocksDB's block cache. Chunk reads bypass it (the memory tier already
    /// holds what was read), so it mostly keeps index and filter blocks.
    pub block_cache_bytes: u64,
    /// Memtable size before a flush to an SST file.
    pub write_buffer_bytes: u64,
    /// Threads for flushes and compactions.
    pub max_background_jobs: u32,
    /// Compression of SST blocks. Off by default: chunks arrive from the
    /// registry zstd-compressed, are stored decompressed and sha256-verified
    /// on every read, so recompressing them would spend CPU on every write
    /// and read of the hot path to save disk that the byte bound already
    /// caps.
    pub compression: Compression,
}

impl Default for RocksDbOptions {
    fn default() -> Self {
        RocksDbOptions {
            block_cache_bytes: 32 * MIB,
            write_buffer_bytes: 64 * MIB,
            max_background_jobs: 2,
            compression: Compression::None,
        }
    }
}

/// Which codec RocksDB applies to SST blocks (see [`RocksDbOptions::compression`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Store chunks as they are (the default).
    None,
    /// Fast, light compression, for disks smaller than the working set.
    Lz4,
    /// Denser and slower.
    Zstd,
}

impl From<Compression> for rocksdb::DBCompressionType {
    fn from(c: Compression) -> Self {
        match c {
            Compression::None => rocksdb::DBCompressionType::None,
            Compression::Lz4 => rocksdb::DBCompressionType::Lz4,
            Compression::Zstd => rocksdb::DBCompressionType::Zstd,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(CacheConfig::parse("").unwrap(), CacheConfig::default());
    }

    #[test]
    fn partial_file_overrides_only_what_it_names() {
        let config = CacheConfig::parse(
            "dir = \"/tmp/x\"\nmemory_bytes = 1024\n[rocksdb]\ncompression = \"lz4\"\n",
        )
        .unwrap();
        assert_eq!(config.dir, PathBuf::from("/tmp/x"));
        assert_eq!(config.memory_bytes, 1024);
        assert_eq!(config.disk_bytes, CacheConfig::default().disk_bytes);
        assert_eq!(config.rocksdb.compression, Compression::Lz4);
        assert_eq!(
            config.rocksdb.block_cache_bytes,
            RocksDbOptions::default().block_cache_bytes
        );
    }

    #[test]
    fn defaults_round_trip_through_toml() {
        let text = toml::to_string(&CacheConfig::default()).unwrap();
        assert_eq!(CacheConfig::parse(&text).unwrap(), CacheConfig::default());
    }

    /// A reserve that cannot hold RocksDB's own memtable flushes is refused;
    /// one that can, with a smaller memtable, is taken.
    #[test]
    fn a_free_space_reserve_below_the_memtables_is_refused() {
        for text in [
            "disk_min_free_bytes = 0\n",
            "disk_min_free_bytes = 134217727\n",
            "[rocksdb]\nwrite_buffer_bytes = 268435456\n",
        ] {
            let err = CacheConfig::parse(text).unwrap_err();
            assert!(err.contains("disk_min_free_bytes"), "{text}: {err}");
        }
        let config = CacheConfig::parse(
            "disk_min_free_bytes = 2097152\n[rocksdb]\nwrite_buffer_bytes = 1048576\n",
        )
        .unwrap();
        assert_eq!(config.disk_min_free_bytes, 2 * MIB);
    }

    #[test]
    fn zero_background_jobs_is_refused() {
        let err = CacheConfig::parse("[rocksdb]\nmax_background_jobs = 0\n").unwrap_err();
        assert!(err.contains("max_background_jobs"), "{err}");
    }
}

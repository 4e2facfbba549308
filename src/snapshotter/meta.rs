//! Snapshot metadata that survives restarts: every snapshot's record, kept
//! in memory for lookups and written through to RocksDB, one atomic write
//! batch per operation, so a crash leaves either the old or the new state.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// The three kinds of snapshot containerd knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// Read-only, the result of a commit (or of a lazy mount).
    Committed,
    /// Writable, to be committed or removed.
    Active,
    /// Read-only view of a parent, never committed.
    View,
}

impl Kind {
    /// containerd's name for the kind, as filters spell it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Committed => "committed",
            Kind::Active => "active",
            Kind::View => "view",
        }
    }
}

/// A point in time with nanoseconds, as containerd's timestamps carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Time {
    /// Seconds since the Unix epoch.
    pub secs: i64,
    /// Nanoseconds within the second.
    pub nanos: u32,
}

impl Time {
    /// Now.
    pub fn now() -> Time {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Time {
            secs: d.as_secs() as i64,
            nanos: d.subsec_nanos(),
        }
    }
}

/// Bytes and inodes a snapshot's own layer holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Bytes of file content.
    pub size: i64,
    /// Files, directories and other entries.
    pub inodes: i64,
}

/// Where a lazily served layer's chunks come from: enough to mount it
/// again after a restart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LazySource {
    /// The image reference the layer belongs to (`cri.image-ref`).
    pub image_ref: String,
    /// The layer blob's digest (`cri.layer-digest`).
    pub layer_digest: String,
    /// The digest of the layer's TOC (`loci.toc-digest`).
    pub toc_digest: String,
    /// The diff_id the image claims for the layer (`loci.uncompressed`),
    /// which its completion verifies (absent in records of older loci:
    /// such layers are not completed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff_id: Option<String>,
    /// The image's platform manifest digest (`cri.manifest-digest`), if
    /// the pull said: a hint only, its trace lookup's head start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_digest: Option<String>,
}

/// One snapshot, under its key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Names the snapshot's directory; never reused.
    pub id: u64,
    /// Committed, active or view.
    pub kind: Kind,
    /// The committed snapshot below this one.
    pub parent: Option<String>,
    /// containerd's labels.
    pub labels: BTreeMap<String, String>,
    /// When it was created (or committed).
    pub created: Time,
    /// When its labels last changed.
    pub updated: Time,
    /// For committed snapshots, what its layer holds.
    pub usage: Usage,
    /// For lazily served layers, where they come from.
    pub lazy: Option<LazySource>,
}

/// Why the metadata store failed.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// RocksDB refused an operation.
    #[error("snapshot metadata store")]
    Db(#[from] rocksdb::Error),
    /// A stored record could not be decoded.
    #[error("snapshot metadata record {key}")]
    Decode {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

const SNAPSHOT_PREFIX: &str = "snapshot/";
const NEXT_ID: &str = "next-id";

/// The persisted snapshots, in key order.
pub struct MetaStore {
    db: rocksdb::DB,
    snapshots: BTreeMap<String, Record>,
    next_id: u64,
}

/// One atomic change: records to write and keys to delete.
#[derive(Default)]
pub struct Change {
    puts: Vec<(String, Record)>,
    deletes: Vec<String>,
}

impl Change {
    /// Writes `record` under `key`.
    pub fn put(mut self, key: &str, record: Record) -> Change {
        self.puts.push((key.to_string(), record));
        self
    }

    /// Deletes `key`.
    pub fn delete(mut self, key: &str) -> Change {
        self.deletes.push(key.to_string());
        self
    }
}

impl MetaStore {
    /// Opens (or creates) the store in `dir` and loads every record.
    pub fn open(dir: &Path) -> Result<MetaStore, MetaError> {
        let mut options = rocksdb::Options::default();
        options.create_if_missing(true);
        let db = rocksdb::DB::open(&options, dir)?;
        let mut snapshots = BTreeMap::new();
        for item in db.prefix_iterator(SNAPSHOT_PREFIX.as_bytes()) {
            let (k, v) = item?;
            let Some(key) = k.strip_prefix(SNAPSHOT_PREFIX.as_bytes()) else {
                break;
            };
            let key = String::from_utf8_lossy(key).into_owned();
            let record = serde_json::from_slice(&v).map_err(|source| MetaError::Decode {
                key: key.clone(),
                source,
            })?;
            snapshots.insert(key, record);
        }
        let next_id = match db.get(NEXT_ID)? {
            Some(v) => String::from_utf8_lossy(&v).parse().unwrap_or(1),
            None => 1,
        };
        Ok(MetaStore {
            db,
            snapshots,
            next_id,
        })
    }

    /// The record of `key`.
    pub fn get(&self, key: &str) -> Option<&Record> {
        self.snapshots.get(key)
    }

    /// Every snapshot, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Record)> {
        self.snapshots.iter()
    }

    /// A fresh directory id, persisted before it is handed out so a crash
    /// cannot hand it out twice.
    pub fn allocate_id(&mut self) -> Result<u64, MetaError> {
        let id = self.next_id;
        self.db.put(NEXT_ID, (id + 1).to_string())?;
        self.next_id = id + 1;
        Ok(id)
    }

    /// Applies `change` atomically: to disk first, then in memory.
    pub fn apply(&mut self, change: Change) -> Result<(), MetaError> {
        let mut batch = rocksdb::WriteBatch::default();
        for key in &change.deletes {
            batch.delete(format!("{SNAPSHOT_PREFIX}{key}"));
        }
        for (key, record) in &change.puts {
            let value = serde_json::to_vec(record).expect("records serialize");
            batch.put(format!("{SNAPSHOT_PREFIX}{key}"), value);
        }
        let mut write = rocksdb::WriteOptions::default();
        write.set_sync(true);
        self.db.write_opt(batch, &write)?;
        for key in change.deletes {
            self.snapshots.remove(&key);
        }
        for (key, record) in change.puts {
            self.snapshots.insert(key, record);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u64) -> Record {
        let now = Time::now();
        Record {
            id,
            kind: Kind::Active,
            parent: None,
            labels: BTreeMap::from([("a".into(), "b".into())]),
            created: now,
            updated: now,
            usage: Usage::default(),
            lazy: None,
        }
    }

    #[test]
    fn records_and_ids_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = MetaStore::open(dir.path()).unwrap();
            let a = store.allocate_id().unwrap();
            let b = store.allocate_id().unwrap();
            assert_ne!(a, b);
            store
                .apply(Change::default().put("x", record(a)).put("y", record(b)))
                .unwrap();
            store.apply(Change::default().delete("x")).unwrap();
        }
        let mut store = MetaStore::open(dir.path()).unwrap();
        assert!(store.get("x").is_none());
        let y = store.get("y").unwrap();
        assert_eq!(
            (y.id, y.labels.get("a").map(String::as_str)),
            (2, Some("b"))
        );
        assert_eq!(store.allocate_id().unwrap(), 3);
    }
}

//! The snapshotter's semantics, as containerd's `snapshots/overlay` has
//! them: active, view and committed snapshots in directories under the
//! root, overlayfs mounts over their parents, persisted metadata; plus
//! lazily served layers, committed by loci itself on Prepare.

use super::filter::{Fields, Filters};
use super::lazy::{LazyLayers, LazyRequest};
use super::meta::{Change, Kind, MetaError, MetaStore, Record, Time, Usage};
use crate::fs::takeover;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Why a snapshot operation failed; each variant maps to the gRPC code
/// containerd expects.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// No snapshot has this key.
    #[error("snapshot {0}: not found")]
    NotFound(String),
    /// A snapshot already has this key.
    #[error("snapshot {0}: already exists")]
    AlreadyExists(String),
    /// The snapshot is not in a state that allows the operation.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The request itself is wrong.
    #[error("{0}")]
    InvalidArgument(String),
    /// The metadata store failed.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// A directory operation failed.
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl SnapshotError {
    /// The gRPC status containerd maps back to its error kinds.
    pub fn code(&self) -> tonic::Code {
        match self {
            SnapshotError::NotFound(_) => tonic::Code::NotFound,
            SnapshotError::AlreadyExists(_) => tonic::Code::AlreadyExists,
            SnapshotError::FailedPrecondition(_) => tonic::Code::FailedPrecondition,
            SnapshotError::InvalidArgument(_) => tonic::Code::InvalidArgument,
            SnapshotError::Meta(_) | SnapshotError::Io { .. } => tonic::Code::Internal,
        }
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SnapshotError {
    let what = what.into();
    move |source| SnapshotError::Io { what, source }
}

/// What containerd's `Stat` and `Walk` report about a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    /// The snapshot's key.
    pub name: String,
    /// Its parent's key, empty for none.
    pub parent: String,
    /// Its kind.
    pub kind: Kind,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Creation (or commit) time.
    pub created: Time,
    /// Last change of its labels.
    pub updated: Time,
}

impl Fields for Info {
    fn field(&self, path: &[String]) -> Option<String> {
        match path.first().map(String::as_str)? {
            "name" => Some(self.name.clone()),
            "parent" => Some(self.parent.clone()),
            "kind" => Some(self.kind.name().to_string()),
            "labels" => self.labels.get(&path[1..].join(".")).cloned(),
            _ => None,
        }
    }
}

/// A mount containerd performs to use a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// Filesystem type (`bind` or `overlay`).
    pub kind: String,
    /// Source path, or `overlay`.
    pub source: String,
    /// Mount options.
    pub options: Vec<String>,
}

/// How `Prepare` was answered.
pub enum Prepared {
    /// An active snapshot to write into, mounted so.
    Mounts(Vec<Mount>),
    /// loci mounted the layer lazily and committed it as this key;
    /// containerd is told the target already exists.
    Lazy(String),
}

/// The snapshots of one root directory.
pub struct Snapshots {
    root: PathBuf,
    meta: Mutex<MetaStore>,
    lazy: LazyLayers,
    index_off: bool,
    /// Whether the lazy layers recorded before a restart are served again
    /// ([`Snapshots::recover`]); calls that mount, unmount or remove wait
    /// for it, the others answer at once.
    recovered: (Mutex<bool>, std::sync::Condvar),
}

impl Snapshots {
    /// Opens the snapshots under `root` (creating its layout). Until
    /// [`recover`](Self::recover) has run, calls that need lazy layers
    /// served wait.
    pub fn open(root: &Path, lazy: LazyLayers) -> Result<Snapshots, SnapshotError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root.join("snapshots"))
            .map_err(io_err(format!("creating {}", root.display())))?;
        let meta = MetaStore::open(&root.join("metadata"))?;
        let snapshots = Snapshots {
            root: root.to_path_buf(),
            meta: Mutex::new(meta),
            lazy,
            // As containerd's overlay snapshotter: no index where the
            // kernel has the feature (layers are not reused as uppers).
            index_off: Path::new("/sys/module/overlay/parameters/index").exists(),
            recovered: (Mutex::new(false), std::sync::Condvar::new()),
        };
        Ok(snapshots)
    }

    /// Mounts again every lazy layer a snapshot still records, then lets
    /// the calls waiting for that go on. Run once, after the daemon's
    /// socket answers, so containerd is not kept waiting by a slow (or
    /// unreachable) registry.
    pub fn recover(&self) {
        let start = std::time::Instant::now();
        self.remount_lazy();
        *self.recovered.0.lock().unwrap() = true;
        self.recovered.1.notify_all();
        tracing::info!(
            secs = start.elapsed().as_secs_f64(),
            "lazy layers recovered"
        );
    }

    /// Blocks until [`recover`](Self::recover) has run.
    fn wait_recovered(&self) {
        let mut done = self.recovered.0.lock().unwrap();
        while !*done {
            done = self.recovered.1.wait(done).unwrap();
        }
    }

    /// Serves every lazy layer a snapshot records: the connection the fd
    /// holder kept, where the mount is still there (containers started
    /// before the restart read through it), else a new mount.
    fn remount_lazy(&self) {
        let lazy: Vec<(String, Record)> = self
            .lock()
            .iter()
            .filter(|(_, r)| r.lazy.is_some())
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect();
        let mut held = self.lazy.held_connections();
        for (key, record) in lazy {
            let source = record.lazy.as_ref().expect("filtered");
            let dir = self.fs_dir(record.id);
            let kept = held
                .remove(&record.id)
                .filter(|_| takeover::is_fuse_mount(&dir));
            let resuming = kept.is_some();
            let result = self
                .lazy
                .open(source, None, Some(&dir))
                .and_then(|layer| match kept {
                    Some(connection) => self.lazy.resume(record.id, layer, &dir, connection),
                    None => {
                        // A mount left by the previous process is dead (its
                        // FUSE server exited): detach it before mounting afresh.
                        let _ = nix_umount_detach(&dir);
                        self.lazy.mount(record.id, layer, &dir)
                    }
                });
            match result {
                Ok(()) if resuming => {
                    tracing::info!(key, layer = %source.layer_digest, "serving a lazy layer again on its kept connection")
                }
                Ok(()) => tracing::info!(key, layer = %source.layer_digest, "remounted lazy layer"),
                Err(e) => {
                    tracing::error!(key, layer = %source.layer_digest, error = %e, "could not serve lazy layer; reads from it fail until it is removed");
                    if resuming {
                        // Our copy of the connection is closed; once the
                        // holder closes its own, the kernel fails the
                        // mount's reads instead of leaving them waiting.
                        let _ = nix_umount_detach(&dir);
                        self.lazy.drop_held(record.id);
                    }
                }
            }
        }
        for (id, connection) in held {
            tracing::info!(id, "dropping a kept connection no snapshot needs");
            drop(connection);
            self.lazy.drop_held(id);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MetaStore> {
        self.meta.lock().expect("metadata lock")
    }

    fn dir(&self, id: u64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string())
    }

    fn fs_dir(&self, id: u64) -> PathBuf {
        self.dir(id).join("fs")
    }

    /// Makes sure the fd holder keeps the lazy layers' connections (a new
    /// holder takes them if the old one died).
    pub fn check_holder(&self) -> usize {
        self.wait_recovered();
        self.lazy.check_holder()
    }

    /// Creates an active snapshot over `parent`, or, when the labels name
    /// a layer loci serves lazily, mounts that layer and commits it.
    pub fn prepare(
        &self,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Prepared, SnapshotError> {
        self.wait_recovered();
        if let Some(request) = LazyRequest::from_labels(&labels) {
            match self.prepare_lazy(&request, parent, &labels) {
                Ok(()) => return Ok(Prepared::Lazy(request.target)),
                Err(e @ SnapshotError::AlreadyExists(_)) => return Err(e),
                Err(e) => {
                    tracing::warn!(key, layer = %request.source.layer_digest, error = %e, "cannot serve the layer lazily; containerd will unpack it")
                }
            }
        }
        let mounts = self.create(Kind::Active, key, parent, labels)?;
        self.touch_layers_below(parent);
        Ok(Prepared::Mounts(mounts))
    }

    /// Marks the lazy layers under `parent` used now: a container starts
    /// on them, so their completed data is the last to be evicted.
    fn touch_layers_below(&self, parent: &str) {
        let ids: Vec<u64> = {
            let meta = self.lock();
            let mut ids = Vec::new();
            let mut next = (!parent.is_empty()).then(|| parent.to_string());
            while let Some(key) = next {
                let Some(record) = meta.get(&key) else { break };
                if record.lazy.is_some() {
                    ids.push(record.id);
                }
                next = record.parent.clone();
            }
            ids
        };
        for id in ids {
            self.lazy.touch(id);
        }
    }

    /// Whether an active snapshot or a view (a container's) has snapshot
    /// `id` below it.
    pub fn layer_in_use(&self, id: u64) -> bool {
        let meta = self.lock();
        let records: HashMap<&str, &Record> = meta.iter().map(|(k, r)| (k.as_str(), r)).collect();
        records
            .values()
            .filter(|r| r.kind != Kind::Committed)
            .any(|top| {
                let mut next = top.parent.as_deref();
                while let Some(key) = next {
                    let Some(record) = records.get(key) else {
                        return false;
                    };
                    if record.id == id {
                        return true;
                    }
                    next = record.parent.as_deref();
                }
                false
            })
    }

    /// Lets the lazy layers ask whether a container uses them, so the disk
    /// budget never evicts a completed layer from under one.
    pub fn share_layer_users(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        self.lazy.set_users(Box::new(move |id| {
            weak.upgrade()
                .is_none_or(|snapshots| snapshots.layer_in_use(id))
        }));
    }

    fn prepare_lazy(
        &self,
        request: &LazyRequest,
        parent: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), SnapshotError> {
        let target = &request.target;
        {
            let meta = self.lock();
            if meta.get(target).is_some() {
                return Err(SnapshotError::AlreadyExists(target.clone()));
            }
            self.check_parent(&meta, parent)?;
        }
        let signer = self.lazy.admit(request, parent).map_err(|reason| {
            SnapshotError::FailedPrecondition(format!("not admitted for lazy service: {reason}"))
        })?;
        let layer = self
            .lazy
            .open(&request.source, request.toc_offset, None)
            .map_err(|e| SnapshotError::FailedPrecondition(crate::error_chain::chain(&e)))?;
        let usage = layer.usage();
        let mut meta = self.lock();
        // Checked again: another Prepare of the same layer may have won.
        if meta.get(target).is_some() {
            return Err(SnapshotError::AlreadyExists(target.clone()));
        }
        self.check_parent(&meta, parent)?;
        let id = meta.allocate_id()?;
        let fs = self.fs_dir(id);
        mkdir(&fs, 0o755)?;
        if let Err(e) = self.lazy.mount(id, layer, &fs) {
            let _ = std::fs::remove_dir_all(self.dir(id));
            return Err(SnapshotError::FailedPrecondition(
                crate::error_chain::chain(&e),
            ));
        }
        let now = Time::now();
        let record = Record {
            id,
            kind: Kind::Committed,
            parent: (!parent.is_empty()).then(|| parent.to_string()),
            labels: labels.clone(),
            created: now,
            updated: now,
            usage,
            lazy: Some(request.source.clone()),
        };
        if let Err(e) = meta.apply(Change::default().put(target, record)) {
            self.lazy.unmount(id);
            let _ = std::fs::remove_dir_all(self.dir(id));
            return Err(e.into());
        }
        tracing::info!(target = %target, layer = %request.source.layer_digest, id, signed_by = ?signer, "layer mounted lazily");
        Ok(())
    }

    /// Creates a read-only view of `parent`.
    pub fn view(
        &self,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        self.wait_recovered();
        self.create(Kind::View, key, parent, labels)
    }

    fn check_parent(&self, meta: &MetaStore, parent: &str) -> Result<(), SnapshotError> {
        if parent.is_empty() {
            return Ok(());
        }
        match meta.get(parent) {
            None => Err(SnapshotError::NotFound(parent.to_string())),
            Some(p) if p.kind != Kind::Committed => Err(SnapshotError::InvalidArgument(format!(
                "parent {parent} is not a committed snapshot"
            ))),
            Some(_) => Ok(()),
        }
    }

    fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        let mut meta = self.lock();
        if meta.get(key).is_some() {
            return Err(SnapshotError::AlreadyExists(key.to_string()));
        }
        self.check_parent(&meta, parent)?;
        let id = meta.allocate_id()?;
        let made = mkdir(&self.fs_dir(id), 0o755).and_then(|()| match kind {
            Kind::Active => mkdir(&self.dir(id).join("work"), 0o711),
            _ => Ok(()),
        });
        let now = Time::now();
        let record = Record {
            id,
            kind,
            parent: (!parent.is_empty()).then(|| parent.to_string()),
            labels,
            created: now,
            updated: now,
            usage: Usage::default(),
            lazy: None,
        };
        if let Err(e) =
            made.and_then(|()| Ok(meta.apply(Change::default().put(key, record.clone()))?))
        {
            let _ = std::fs::remove_dir_all(self.dir(id));
            return Err(e);
        }
        Ok(self.mounts_of(&meta, &record))
    }

    /// The mounts that present snapshot `key`.
    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>, SnapshotError> {
        self.wait_recovered();
        let meta = self.lock();
        let record = meta
            .get(key)
            .ok_or_else(|| SnapshotError::NotFound(key.to_string()))?;
        Ok(self.mounts_of(&meta, record))
    }

    /// containerd's overlay mounts: a bind mount without parents (or for a
    /// view of one parent), else overlay with the parents as lower dirs
    /// (lazy layers' lower dirs are their FUSE mounts) and, for an active
    /// snapshot, its own upper and work dirs.
    fn mounts_of(&self, meta: &MetaStore, record: &Record) -> Vec<Mount> {
        let mut parents = Vec::new();
        let mut next = record.parent.as_deref();
        while let Some(key) = next {
            let Some(p) = meta.get(key) else { break };
            parents.push(p.id);
            next = p.parent.as_deref();
        }
        let path = |id: u64| self.fs_dir(id).to_string_lossy().into_owned();
        // A complete lazy layer laid out as a plain directory is used as
        // one: no FUSE under the new mount (the FUSE mount stays for the
        // containers mounted before).
        let lower = |id: u64| {
            let plain = super::lazy::lower_dir(&self.fs_dir(id));
            if plain.is_dir() {
                plain.to_string_lossy().into_owned()
            } else {
                path(id)
            }
        };
        if parents.is_empty() {
            let mode = if record.kind == Kind::View {
                "ro"
            } else {
                "rw"
            };
            return vec![Mount {
                kind: "bind".into(),
                source: path(record.id),
                options: vec![mode.into(), "rbind".into()],
            }];
        }
        let mut options = Vec::new();
        if self.index_off {
            options.push("index=off".to_string());
        }
        if record.kind == Kind::Active {
            options.push(format!(
                "workdir={}",
                self.dir(record.id).join("work").display()
            ));
            options.push(format!("upperdir={}", path(record.id)));
        } else if parents.len() == 1 {
            return vec![Mount {
                kind: "bind".into(),
                source: lower(parents[0]),
                options: vec!["ro".into(), "rbind".into()],
            }];
        }
        let lowers: Vec<String> = parents.into_iter().map(lower).collect();
        options.push(format!("lowerdir={}", lowers.join(":")));
        vec![Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            options,
        }]
    }

    /// Commits the active snapshot `key` as `name`, with `labels` (which
    /// replace the active snapshot's).
    pub fn commit(
        &self,
        name: &str,
        key: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<(), SnapshotError> {
        let (id, mut record) = {
            let meta = self.lock();
            if meta.get(name).is_some() {
                return Err(SnapshotError::AlreadyExists(name.to_string()));
            }
            let record = meta
                .get(key)
                .ok_or_else(|| SnapshotError::NotFound(key.to_string()))?;
            if record.kind != Kind::Active {
                return Err(SnapshotError::FailedPrecondition(format!(
                    "snapshot {key} is not active"
                )));
            }
            (record.id, record.clone())
        };
        let usage =
            disk_usage(&self.fs_dir(id)).map_err(io_err(format!("measuring snapshot {key}")))?;
        let mut meta = self.lock();
        if meta.get(name).is_some() {
            return Err(SnapshotError::AlreadyExists(name.to_string()));
        }
        if meta.get(key).map(|r| r.id) != Some(id) {
            return Err(SnapshotError::NotFound(key.to_string()));
        }
        let now = Time::now();
        record.kind = Kind::Committed;
        record.labels = labels;
        record.created = now;
        record.updated = now;
        record.usage = usage;
        meta.apply(Change::default().delete(key).put(name, record))?;
        Ok(())
    }

    /// Removes snapshot `key` (which no snapshot may have as parent): its
    /// record, its lazy mount, its directory.
    pub fn remove(&self, key: &str) -> Result<(), SnapshotError> {
        self.wait_recovered();
        let id = {
            let mut meta = self.lock();
            let record = meta
                .get(key)
                .ok_or_else(|| SnapshotError::NotFound(key.to_string()))?;
            if meta.iter().any(|(_, r)| r.parent.as_deref() == Some(key)) {
                return Err(SnapshotError::FailedPrecondition(format!(
                    "cannot remove snapshot {key}: it has children"
                )));
            }
            let id = record.id;
            meta.apply(Change::default().delete(key))?;
            id
        };
        self.lazy.unmount(id);
        if let Err(e) = std::fs::remove_dir_all(self.dir(id)) {
            tracing::warn!(key, id, error = %e, "removing a snapshot's directory; Cleanup will retry");
        }
        Ok(())
    }

    /// What containerd's `Stat` reports.
    pub fn stat(&self, key: &str) -> Result<Info, SnapshotError> {
        let meta = self.lock();
        let record = meta
            .get(key)
            .ok_or_else(|| SnapshotError::NotFound(key.to_string()))?;
        Ok(info(key, record))
    }

    /// Updates labels of snapshot `info.name`: all of them for no field
    /// paths or `labels`, one for each `labels.KEY`; nothing else may change.
    pub fn update(&self, update: &Info, paths: &[String]) -> Result<Info, SnapshotError> {
        let mut meta = self.lock();
        let key = update.name.as_str();
        let mut record = meta
            .get(key)
            .ok_or_else(|| SnapshotError::NotFound(key.to_string()))?
            .clone();
        if paths.is_empty() {
            record.labels = update.labels.clone();
        }
        for path in paths {
            if path == "labels" {
                record.labels = update.labels.clone();
            } else if let Some(label) = path.strip_prefix("labels.") {
                match update.labels.get(label) {
                    Some(v) => record.labels.insert(label.to_string(), v.clone()),
                    None => record.labels.remove(label),
                };
            } else {
                return Err(SnapshotError::InvalidArgument(format!(
                    "cannot update field {path:?} of snapshot {key}"
                )));
            }
        }
        record.updated = Time::now();
        meta.apply(Change::default().put(key, record.clone()))?;
        Ok(info(key, &record))
    }

    /// Bytes and inodes of the snapshot's own layer: measured now for an
    /// active snapshot, recorded at commit otherwise.
    pub fn usage(&self, key: &str) -> Result<Usage, SnapshotError> {
        let (record, id) = {
            let meta = self.lock();
            let record = meta
                .get(key)
                .ok_or_else(|| SnapshotError::NotFound(key.to_string()))?;
            (record.clone(), record.id)
        };
        if record.kind == Kind::Active {
            return disk_usage(&self.fs_dir(id))
                .map_err(io_err(format!("measuring snapshot {key}")));
        }
        Ok(record.usage)
    }

    /// Every snapshot that passes `filters`.
    pub fn walk(&self, filters: &[String]) -> Result<Vec<Info>, SnapshotError> {
        let filters =
            Filters::parse(filters).map_err(|e| SnapshotError::InvalidArgument(e.to_string()))?;
        let meta = self.lock();
        Ok(meta
            .iter()
            .map(|(k, r)| info(k, r))
            .filter(|i| filters.matches(i))
            .collect())
    }

    /// Removes directories (and mounts) no snapshot owns any more: what a
    /// failed removal or a crash left behind.
    pub fn cleanup(&self) -> Result<(), SnapshotError> {
        self.wait_recovered();
        let known: HashSet<u64> = self.lock().iter().map(|(_, r)| r.id).collect();
        let dir = self.root.join("snapshots");
        for entry in
            std::fs::read_dir(&dir).map_err(io_err(format!("listing {}", dir.display())))?
        {
            let entry = entry.map_err(io_err(format!("listing {}", dir.display())))?;
            let id = entry.file_name().to_string_lossy().parse::<u64>().ok();
            if id.is_some_and(|id| known.contains(&id)) {
                continue;
            }
            if let Some(id) = id {
                self.lazy.unmount(id);
            }
            let _ = nix_umount_detach(&entry.path().join("fs"));
            std::fs::remove_dir_all(entry.path())
                .map_err(io_err(format!("removing {}", entry.path().display())))?;
            tracing::info!(dir = %entry.path().display(), "cleaned up");
        }
        Ok(())
    }

    /// At shutdown: unmounts the lazy layers that would not survive it
    /// (see [`LazyLayers::shutdown`]).
    pub fn shutdown(&self) {
        self.wait_recovered();
        self.lazy.shutdown();
    }
}

fn info(key: &str, r: &Record) -> Info {
    Info {
        name: key.to_string(),
        parent: r.parent.clone().unwrap_or_default(),
        kind: r.kind,
        labels: r.labels.clone(),
        created: r.created,
        updated: r.updated,
    }
}

fn mkdir(path: &Path, mode: u32) -> Result<(), SnapshotError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(io_err(format!("creating {}", path.display())))?;
    // The umask must not narrow it (containerd checks 0755 roots).
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))
        .map_err(io_err(format!("chmod {}", path.display())))
}

/// Lazily detaches whatever is mounted at `dir` (a dead FUSE mount).
fn nix_umount_detach(dir: &Path) -> std::io::Result<()> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())?;
    // SAFETY: a valid NUL-terminated path; umount2 has no other inputs.
    let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Disk usage as containerd counts it: 512-byte blocks of each inode once,
/// and the number of inodes, not crossing into other filesystems.
fn disk_usage(root: &Path) -> std::io::Result<Usage> {
    let dev = std::fs::symlink_metadata(root)?.dev();
    let mut seen = HashSet::new();
    let mut usage = Usage::default();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let meta = std::fs::symlink_metadata(&path)?;
            if meta.dev() != dev {
                continue;
            }
            if seen.insert(meta.ino()) {
                usage.inodes += 1;
                usage.size += meta.blocks() as i64 * 512;
            }
            if meta.is_dir() {
                stack.push(path);
            }
        }
    }
    Ok(usage)
}

//! The inode tree a mount serves, built from the TOCs of its layers.
//!
//! Two views of the same layers: the merged image (whiteouts applied, as a
//! container sees its root), and a single layer as an overlayfs lower
//! directory (whiteouts presented the way overlayfs expects them). Inode
//! numbers are positions in build order: stable for the same layers.

pub use crate::fetch::Content;
use crate::format::{EntryKind, Toc, TocEntry};
use std::collections::BTreeMap;

/// An inode number; the root is 1.
pub type Ino = u64;
/// The root directory's inode number.
pub const ROOT: Ino = 1;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// The xattr overlayfs reads to see that a lower directory is opaque.
pub const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// How whiteouts in the layers are presented.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// All layers merged, whiteouts applied: the image's root filesystem.
    Merged,
    /// One layer as an overlayfs lower dir: `.wh.NAME` becomes a 0/0
    /// character device NAME, `.wh..wh..opq` becomes the directory's
    /// `trusted.overlay.opaque=y` xattr.
    OverlayLower,
}

/// Why a tree could not be built from the layers.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// A hardlink names a path that is not a regular file in the tree.
    #[error(
        "layer {layer}: hardlink {path:?} points to {target:?}, which is not a file in the image"
    )]
    BadHardlink {
        layer: usize,
        path: String,
        target: String,
    },
}

/// An inode's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Character device.
    CharDevice,
    /// Block device.
    BlockDevice,
    /// Named pipe.
    Fifo,
}

/// One inode.
#[derive(Clone, Debug)]
pub struct Node {
    /// Type.
    pub kind: NodeKind,
    /// Permission bits with setuid/setgid/sticky.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes (files: content; symlinks: target length).
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Device number for device nodes, as the kernel encodes it.
    pub rdev: u32,
    /// Number of names (files), or 2 + subdirectories (directories).
    pub nlink: u32,
    /// The parent directory (the root is its own parent).
    pub parent: Ino,
    /// Directory entries by name.
    pub children: BTreeMap<Vec<u8>, Ino>,
    /// Symlink target.
    pub link: Option<Vec<u8>>,
    /// Extended attributes, by name.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Regular files' content.
    pub content: Option<Content>,
    /// The layer that created this node (for opaque directories).
    layer: usize,
}

/// The inode table of a mount.
#[derive(Debug)]
pub struct Tree {
    nodes: Vec<Node>,
}

impl Tree {
    /// Builds the tree of `layers` (bottom first) in the given view.
    pub fn build(layers: &[&Toc], view: View) -> Result<Tree, TreeError> {
        let mut tree = Tree {
            nodes: vec![Node {
                kind: NodeKind::Dir,
                mode: 0o755,
                uid: 0,
                gid: 0,
                size: 0,
                mtime: 0,
                rdev: 0,
                nlink: 2,
                parent: ROOT,
                children: BTreeMap::new(),
                link: None,
                xattrs: BTreeMap::new(),
                content: None,
                layer: 0,
            }],
        };
        for (layer, toc) in layers.iter().enumerate() {
            for entry in &toc.entries {
                tree.apply(layer, entry, view)?;
            }
        }
        tree.count_links();
        Ok(tree)
    }

    /// The inode, if it exists.
    pub fn get(&self, ino: Ino) -> Option<&Node> {
        ino.checked_sub(1).and_then(|i| self.nodes.get(i as usize))
    }

    /// The child `name` of directory `parent`.
    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Option<Ino> {
        self.get(parent)?.children.get(name).copied()
    }

    /// A path of the inode (the first name found, for hardlinks), from the
    /// root, without a leading slash.
    pub fn path_of(&self, ino: Ino) -> Vec<u8> {
        let mut parts = Vec::new();
        let mut at = ino;
        while at != ROOT {
            let Some(node) = self.get(at) else { break };
            let parent = node.parent;
            match self
                .get(parent)
                .and_then(|p| p.children.iter().find(|(_, &c)| c == at))
            {
                Some((name, _)) => parts.push(name.clone()),
                None => break,
            }
            at = parent;
        }
        parts.reverse();
        parts.join(&b'/')
    }

    /// Number of inodes reachable or not (for statfs).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the tree is only the root.
    pub fn is_empty(&self) -> bool {
        self.nodes.len() == 1
    }

    /// Every path of the tree with its inode, for tests and listings.
    pub fn paths(&self) -> Vec<(Vec<u8>, Ino)> {
        let mut out = Vec::new();
        let mut stack = vec![(Vec::new(), ROOT)];
        while let Some((path, ino)) = stack.pop() {
            for (name, &child) in &self.nodes[ino as usize - 1].children {
                let mut p = path.clone();
                if !p.is_empty() {
                    p.push(b'/');
                }
                p.extend_from_slice(name);
                if self.nodes[child as usize - 1].kind == NodeKind::Dir {
                    stack.push((p.clone(), child));
                }
                out.push((p, child));
            }
        }
        out.sort();
        out
    }

    fn node_mut(&mut self, ino: Ino) -> &mut Node {
        &mut self.nodes[ino as usize - 1]
    }

    fn push(&mut self, node: Node) -> Ino {
        self.nodes.push(node);
        self.nodes.len() as Ino
    }

    /// The directory at `path`, created (0755, root-owned) where missing or
    /// where a non-directory stands in the way.
    fn ensure_dir(&mut self, path: &[u8], layer: usize) -> Ino {
        let mut ino = ROOT;
        if path.is_empty() {
            return ino;
        }
        for part in path.split(|&b| b == b'/') {
            let existing = self.lookup(ino, part);
            ino = match existing {
                Some(child) if self.nodes[child as usize - 1].kind == NodeKind::Dir => child,
                _ => {
                    let mut dir = self.nodes[0].clone();
                    dir.children.clear();
                    dir.xattrs.clear();
                    dir.parent = ino;
                    dir.layer = layer;
                    dir.mode = 0o755;
                    dir.uid = 0;
                    dir.gid = 0;
                    let child = self.push(dir);
                    self.node_mut(ino).children.insert(part.to_vec(), child);
                    child
                }
            };
        }
        ino
    }

    fn resolve(&self, path: &[u8]) -> Option<Ino> {
        let mut ino = ROOT;
        if path.is_empty() {
            return Some(ino);
        }
        for part in path.split(|&b| b == b'/') {
            ino = self.lookup(ino, part)?;
        }
        Some(ino)
    }

    fn apply(&mut self, layer: usize, entry: &TocEntry, view: View) -> Result<(), TreeError> {
        let (parent_path, name) = match entry.path.iter().rposition(|&b| b == b'/') {
            Some(i) => (&entry.path[..i], &entry.path[i + 1..]),
            None => (&b""[..], &entry.path[..]),
        };
        if entry.path.is_empty() {
            let root = self.node_mut(ROOT);
            set_attrs(root, entry);
            return Ok(());
        }
        let parent = self.ensure_dir(parent_path, layer);
        if name == OPAQUE_MARKER {
            match view {
                View::Merged => {
                    let lower: Vec<Vec<u8>> = self.nodes[parent as usize - 1]
                        .children
                        .iter()
                        .filter(|(_, &c)| self.nodes[c as usize - 1].layer < layer)
                        .map(|(n, _)| n.clone())
                        .collect();
                    let dir = self.node_mut(parent);
                    for n in lower {
                        dir.children.remove(&n);
                    }
                }
                View::OverlayLower => {
                    self.node_mut(parent)
                        .xattrs
                        .insert(OVERLAY_OPAQUE_XATTR.as_bytes().to_vec(), b"y".to_vec());
                }
            }
            return Ok(());
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            match view {
                View::Merged => {
                    self.node_mut(parent).children.remove(hidden);
                }
                View::OverlayLower => {
                    let mut node = new_node(entry, parent, layer);
                    node.kind = NodeKind::CharDevice;
                    node.mode = 0;
                    node.size = 0;
                    node.rdev = 0;
                    node.content = None;
                    let ino = self.push(node);
                    self.node_mut(parent).children.insert(hidden.to_vec(), ino);
                }
            }
            return Ok(());
        }
        if entry.kind == EntryKind::Hardlink {
            let target = entry.link.as_deref().unwrap_or_default();
            let ino = self
                .resolve(target)
                .filter(|&t| self.nodes[t as usize - 1].kind == NodeKind::File)
                .ok_or_else(|| TreeError::BadHardlink {
                    layer,
                    path: entry.display_path(),
                    target: String::from_utf8_lossy(target).into_owned(),
                })?;
            self.node_mut(parent).children.insert(name.to_vec(), ino);
            return Ok(());
        }
        if entry.kind == EntryKind::Dir {
            if let Some(existing) = self.lookup(parent, name) {
                if self.nodes[existing as usize - 1].kind == NodeKind::Dir {
                    set_attrs(self.node_mut(existing), entry);
                    return Ok(());
                }
            }
        }
        let mut node = new_node(entry, parent, layer);
        if entry.kind == EntryKind::File {
            let mut starts = Vec::with_capacity(entry.extents.len());
            let mut at = 0u64;
            for extent in &entry.extents {
                starts.push(at);
                at += u64::from(extent.len);
            }
            node.content = Some(Content {
                layer,
                extents: entry.extents.clone().into(),
                starts: starts.into(),
            });
        }
        let ino = self.push(node);
        self.node_mut(parent).children.insert(name.to_vec(), ino);
        Ok(())
    }

    /// Sets nlink from the reachable tree: names per file, 2 + subdirs per
    /// directory.
    fn count_links(&mut self) {
        let mut counts = vec![0u32; self.nodes.len()];
        counts[0] = 2;
        let mut stack = vec![ROOT];
        while let Some(dir) = stack.pop() {
            let children: Vec<Ino> = self.nodes[dir as usize - 1]
                .children
                .values()
                .copied()
                .collect();
            for child in children {
                let i = child as usize - 1;
                if self.nodes[i].kind == NodeKind::Dir {
                    counts[i] = 2;
                    counts[dir as usize - 1] += 1;
                    self.nodes[i].parent = dir;
                    stack.push(child);
                } else {
                    counts[i] += 1;
                }
            }
        }
        for (node, count) in self.nodes.iter_mut().zip(counts) {
            node.nlink = count.max(1);
        }
    }
}

fn set_attrs(node: &mut Node, entry: &TocEntry) {
    node.mode = entry.mode;
    node.uid = entry.uid;
    node.gid = entry.gid;
    node.mtime = entry.mtime;
    node.xattrs = entry
        .xattrs
        .iter()
        .filter(|x| !overlay_control(&x.name))
        .map(|x| (x.name.as_bytes().to_vec(), x.value.clone()))
        .collect();
}

/// Whether an xattr is one overlayfs acts on in a lower dir (redirects,
/// metacopy, origin...): an image's tar must not steer the kernel's overlay
/// of the layers, so these are dropped. The opaque marker is the one the
/// layer format itself has (`.wh..wh..opq`), and stays.
fn overlay_control(name: &str) -> bool {
    name.starts_with("trusted.overlay.") && name != OVERLAY_OPAQUE_XATTR
}

fn new_node(entry: &TocEntry, parent: Ino, layer: usize) -> Node {
    let kind = match entry.kind {
        EntryKind::File | EntryKind::Hardlink => NodeKind::File,
        EntryKind::Dir => NodeKind::Dir,
        EntryKind::Symlink => NodeKind::Symlink,
        EntryKind::CharDevice => NodeKind::CharDevice,
        EntryKind::BlockDevice => NodeKind::BlockDevice,
        EntryKind::Fifo => NodeKind::Fifo,
    };
    let size = match entry.kind {
        EntryKind::File => entry.size,
        EntryKind::Symlink => entry.link.as_ref().map_or(0, |l| l.len() as u64),
        _ => 0,
    };
    let mut node = Node {
        kind,
        mode: 0,
        uid: 0,
        gid: 0,
        size,
        mtime: 0,
        rdev: makedev(entry.dev_major, entry.dev_minor),
        nlink: 1,
        parent,
        children: BTreeMap::new(),
        link: (entry.kind == EntryKind::Symlink).then(|| entry.link.clone().unwrap_or_default()),
        xattrs: BTreeMap::new(),
        content: None,
        layer,
    };
    set_attrs(&mut node, entry);
    node
}

/// Linux's encoding of a device number (as `makedev(3)`), truncated to the
/// 32 bits FUSE carries.
fn makedev(major: u32, minor: u32) -> u32 {
    ((major & 0xfff) << 8) | (minor & 0xff) | ((minor & !0xff) << 12)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Toc, FORMAT_VERSION};

    fn entry(path: &str, kind: EntryKind) -> TocEntry {
        TocEntry {
            path: path.as_bytes().to_vec(),
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: 0,
            link: None,
            xattrs: vec![],
            dev_major: 0,
            dev_minor: 0,
            extents: vec![],
        }
    }

    fn toc(entries: Vec<TocEntry>) -> Toc {
        Toc {
            version: FORMAT_VERSION,
            chunks: vec![],
            entries,
        }
    }

    fn names(tree: &Tree) -> Vec<String> {
        tree.paths()
            .into_iter()
            .map(|(p, _)| String::from_utf8(p).unwrap())
            .collect()
    }

    fn layers() -> (Toc, Toc) {
        let lower = toc(vec![
            entry("d", EntryKind::Dir),
            entry("d/keep", EntryKind::File),
            entry("d/gone", EntryKind::File),
            entry("o", EntryKind::Dir),
            entry("o/old", EntryKind::File),
        ]);
        let upper = toc(vec![
            entry("d/.wh.gone", EntryKind::File),
            entry("o", EntryKind::Dir),
            entry("o/.wh..wh..opq", EntryKind::File),
            entry("o/new", EntryKind::File),
        ]);
        (lower, upper)
    }

    #[test]
    fn merged_view_applies_whiteouts_and_opaque_dirs() {
        let (lower, upper) = layers();
        let tree = Tree::build(&[&lower, &upper], View::Merged).unwrap();
        assert_eq!(names(&tree), ["d", "d/keep", "o", "o/new"]);
    }

    #[test]
    fn overlay_lower_view_presents_whiteouts_as_overlayfs_does() {
        let (_, upper) = layers();
        let tree = Tree::build(&[&upper], View::OverlayLower).unwrap();
        assert_eq!(names(&tree), ["d", "d/gone", "o", "o/new"]);
        let gone = tree
            .get(
                tree.lookup(tree.lookup(ROOT, b"d").unwrap(), b"gone")
                    .unwrap(),
            )
            .unwrap();
        assert_eq!((gone.kind, gone.rdev), (NodeKind::CharDevice, 0));
        let o = tree.get(tree.lookup(ROOT, b"o").unwrap()).unwrap();
        assert_eq!(
            o.xattrs
                .get(OVERLAY_OPAQUE_XATTR.as_bytes())
                .map(|v| &v[..]),
            Some(&b"y"[..])
        );
    }

    #[test]
    fn an_images_overlay_control_xattrs_are_dropped_but_its_own_kept() {
        let mut file = entry("f", EntryKind::File);
        file.xattrs = [
            "trusted.overlay.redirect",
            "trusted.overlay.metacopy",
            "user.kept",
            "security.capability",
        ]
        .iter()
        .map(|name| crate::format::Xattr {
            name: name.to_string(),
            value: b"v".to_vec(),
        })
        .collect();
        let tree = Tree::build(&[&toc(vec![file])], View::OverlayLower).unwrap();
        let f = tree.get(tree.lookup(ROOT, b"f").unwrap()).unwrap();
        let names: Vec<&[u8]> = f.xattrs.keys().map(Vec::as_slice).collect();
        assert_eq!(names, [&b"security.capability"[..], b"user.kept"]);
    }

    #[test]
    fn hardlinks_share_an_inode_and_count_links() {
        let mut link = entry("b", EntryKind::Hardlink);
        link.link = Some(b"a".to_vec());
        let layer = toc(vec![entry("a", EntryKind::File), link]);
        let tree = Tree::build(&[&layer], View::Merged).unwrap();
        let a = tree.lookup(ROOT, b"a").unwrap();
        assert_eq!(tree.lookup(ROOT, b"b"), Some(a));
        assert_eq!(tree.get(a).unwrap().nlink, 2);
        let mut dangling = entry("c", EntryKind::Hardlink);
        dangling.link = Some(b"missing".to_vec());
        assert!(Tree::build(&[&toc(vec![dangling])], View::Merged).is_err());
    }

    #[test]
    fn implicit_parents_are_created_and_inodes_are_stable() {
        let layer = toc(vec![entry("x/y/z", EntryKind::File)]);
        let a = Tree::build(&[&layer], View::Merged).unwrap();
        let b = Tree::build(&[&layer], View::Merged).unwrap();
        assert_eq!(a.paths(), b.paths());
        assert_eq!(names(&a), ["x", "x/y", "x/y/z"]);
        assert_eq!(a.get(ROOT).unwrap().nlink, 3);
    }
}

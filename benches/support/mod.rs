//! Input shared by the benches: a tar of real files.

use std::path::{Path, PathBuf};

const CAP: u64 = 96 << 20;

/// A tar of real files, by default /usr/lib/python3.11 and
/// /usr/lib/x86_64-linux-gnu, capped at 96 MiB (LOCI_BENCH_TREE names
/// another directory), and how many files it holds.
pub fn input_tar() -> (Vec<u8>, usize) {
    let roots: Vec<PathBuf> = match std::env::var_os("LOCI_BENCH_TREE") {
        Some(dir) => vec![dir.into()],
        None => vec![
            "/usr/lib/python3.11".into(),
            "/usr/lib/x86_64-linux-gnu".into(),
        ],
    };
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    let mut total = 0u64;
    let mut files = 0usize;
    for root in roots {
        add_tree(&mut builder, &root, &root, &mut total, &mut files);
    }
    (builder.into_inner().unwrap(), files)
}

fn add_tree(
    builder: &mut tar::Builder<Vec<u8>>,
    root: &Path,
    dir: &Path,
    total: &mut u64,
    files: &mut usize,
) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        if *total >= CAP {
            return;
        }
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let name = Path::new(root.file_name().unwrap()).join(path.strip_prefix(root).unwrap());
        if meta.is_dir() {
            add_tree(builder, root, &path, total, files);
        } else if ((meta.is_file() && std::fs::File::open(&path).is_ok())
            || meta.file_type().is_symlink())
            && builder.append_path_with_name(&path, &name).is_ok()
        {
            *total += meta.len();
            *files += 1;
        }
    }
}

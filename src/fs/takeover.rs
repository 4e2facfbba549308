//! FUSE connections that outlive the process serving them.
//!
//! The kernel keeps a FUSE connection alive for as long as any process
//! holds its `/dev/fuse` file, and queues the requests of its readers
//! until someone reads them. So a daemon that hands a duplicate of each
//! connection's fd to a holder process can exit (or crash) while
//! containers keep the mount open, and its successor can take the fd back
//! and go on serving: the readers only wait meanwhile. That needs three
//! things fuser does not do by itself: mounting with our own fd (so the
//! session does not own the mount and never unmounts it on exit), serving
//! a connection whose INIT handshake an earlier process already answered,
//! and asking the kernel to send again the requests the dead process had
//! read but not answered (`FUSE_NOTIFY_RESEND`, Linux 6.9).
//!
//! Serving depends on the new process answering every request exactly as
//! the old one would: inode numbers come from the TOCs (the same tree
//! gives the same numbers) and file handles carry no state. And every
//! request must be read through the held file itself: the kernel fails the
//! requests a cloned fd (`FUSE_DEV_IOC_CLONE`) had read when that clone is
//! closed, so sessions served here do not clone.

use fuser::{BackgroundSession, Filesystem, Session, SessionACL};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

/// `FUSE_INIT`'s opcode.
const FUSE_INIT: u32 = 26;
/// The notification asking the kernel to queue again the requests that
/// were read but never answered.
const FUSE_NOTIFY_RESEND: i32 = 7;

/// Mounts a read-only FUSE filesystem at `dir` and returns the connection's
/// fd, not yet served: the kernel's INIT request waits on it.
pub fn mount_fuse(dir: &Path) -> io::Result<OwnedFd> {
    use std::os::unix::fs::MetadataExt;
    let fuse: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map_err(|e| io::Error::new(e.kind(), format!("opening /dev/fuse: {e}")))?
        .into();
    let root_mode = std::fs::metadata(dir)?.mode() & libc::S_IFMT;
    let options = format!(
        "fd={},rootmode={:o},user_id=0,group_id=0,default_permissions,allow_other",
        fuse.as_raw_fd(),
        root_mode | 0o755,
    );
    nix::mount::mount(
        Some("loci"),
        dir,
        Some("fuse.loci"),
        nix::mount::MsFlags::MS_RDONLY,
        Some(options.as_str()),
    )
    .map_err(|e| io::Error::other(format!("mount(2) of fuse.loci at {}: {e}", dir.display())))?;
    Ok(fuse)
}

/// Serves a connection just mounted by [`mount_fuse`]: answers the kernel's
/// INIT, then runs `config.n_threads` request loops in the background.
pub fn serve_new<FS: Filesystem + Send + 'static>(
    fs: FS,
    fuse: OwnedFd,
    config: fuser::Config,
) -> io::Result<BackgroundSession> {
    Session::from_fd(fs, fuse, SessionACL::All, config)?.spawn()
}

/// Serves a connection whose INIT an earlier process already answered.
///
/// fuser insists on a handshake, so it is given one: its session starts on
/// one end of a packet socket pair where a synthetic INIT waits, and once
/// it has answered, the socket's fd number is made to point at the real
/// connection (`dup3`) before any request loop starts. Then the kernel is
/// asked to send again whatever the previous process left unanswered.
pub fn serve_resumed<FS: Filesystem + Send + 'static>(
    fs: FS,
    fuse: OwnedFd,
    config: fuser::Config,
) -> io::Result<BackgroundSession> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    nix::unistd::write(&ours, &synthetic_init())?;
    let slot = theirs.as_raw_fd();
    let session = Session::from_fd(fs, theirs, SessionACL::All, config)?;
    // SAFETY: `slot` is the fd the session owns (it wraps `theirs`) and
    // `fuse` is open; dup3 atomically makes `slot` refer to the
    // connection, so the session's fd stays valid throughout.
    if unsafe { libc::dup3(fuse.as_raw_fd(), slot, libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    drop(ours);
    if let Err(e) = resend_unanswered(&fuse) {
        tracing::warn!(error = %e, "the kernel cannot resend requests left unanswered by the previous process (Linux < 6.9?); a read in flight at the restart stays blocked");
    }
    session.spawn()
}

/// Asks the kernel to queue again the requests read but not answered on
/// this connection.
fn resend_unanswered(fuse: &OwnedFd) -> io::Result<()> {
    // struct fuse_out_header { len: u32, error: i32, unique: u64 }
    let mut notify = Vec::with_capacity(16);
    notify.extend_from_slice(&16u32.to_ne_bytes());
    notify.extend_from_slice(&FUSE_NOTIFY_RESEND.to_ne_bytes());
    notify.extend_from_slice(&0u64.to_ne_bytes());
    nix::unistd::write(fuse, &notify)?;
    Ok(())
}

/// The FUSE_INIT request fuser's handshake reads on a resumed session. Its
/// answer goes nowhere: the kernel negotiated with the first process.
fn synthetic_init() -> Vec<u8> {
    const HEADER: usize = 40; // struct fuse_in_header
    const INIT_IN: usize = 64; // struct fuse_init_in (7.36+)
    let mut m = Vec::with_capacity(HEADER + INIT_IN);
    m.extend_from_slice(&((HEADER + INIT_IN) as u32).to_ne_bytes()); // len
    m.extend_from_slice(&FUSE_INIT.to_ne_bytes()); // opcode
    m.extend_from_slice(&1u64.to_ne_bytes()); // unique
    m.extend_from_slice(&0u64.to_ne_bytes()); // nodeid
    m.extend_from_slice(&0u32.to_ne_bytes()); // uid
    m.extend_from_slice(&0u32.to_ne_bytes()); // gid
    m.extend_from_slice(&0u32.to_ne_bytes()); // pid
    m.extend_from_slice(&0u32.to_ne_bytes()); // total_extlen, padding
    m.extend_from_slice(&7u32.to_ne_bytes()); // major
    m.extend_from_slice(&31u32.to_ne_bytes()); // minor
    m.extend_from_slice(&super::fuse::KERNEL_READAHEAD.to_ne_bytes()); // max_readahead
    m.extend_from_slice(&u32::MAX.to_ne_bytes()); // flags: any capability
    m.extend_from_slice(&u32::MAX.to_ne_bytes()); // flags2
    m.resize(HEADER + INIT_IN, 0);
    m
}

/// Unmounts `dir`; a mount still in use (a container has it open) is
/// detached instead. The session's threads end when the kernel ends the
/// connection, which is when the last user of the mount goes: they are not
/// waited for.
pub fn unmount(dir: &Path, session: BackgroundSession) -> io::Result<()> {
    drop(session);
    match nix::mount::umount2(dir, nix::mount::MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EBUSY) => {
            nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH)?;
            tracing::warn!(dir = %dir.display(), "mount busy; detached");
            Ok(())
        }
        // Not mounted any more (unmounted from outside).
        Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Whether a FUSE filesystem is mounted at `dir`, read from the mount
/// table: touching the mount itself would wait on its server.
pub fn is_fuse_mount(dir: &Path) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let dir = dir.as_os_str().as_encoded_bytes();
    table.lines().any(|line| {
        let mut fields = line.split(' ');
        let point = fields.nth(4).unwrap_or("");
        // After the optional fields comes "-", then the filesystem type.
        let fstype = fields.skip_while(|f| *f != "-").nth(1).unwrap_or("");
        unescape_octal(point) == dir && (fstype == "fuse" || fstype.starts_with("fuse."))
    })
}

/// Undoes the `\ooo` escapes of /proc's mount tables.
fn unescape_octal(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let code = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], code) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_synthetic_init_is_one_whole_request() {
        let m = synthetic_init();
        assert_eq!(m.len(), 104);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 104);
        assert_eq!(u32::from_ne_bytes(m[4..8].try_into().unwrap()), FUSE_INIT);
        assert_eq!(u32::from_ne_bytes(m[40..44].try_into().unwrap()), 7);
    }

    #[test]
    fn mount_table_escapes_are_undone() {
        assert_eq!(unescape_octal(r"/a\040b\134c"), b"/a b\\c");
        assert_eq!(unescape_octal("/plain"), b"/plain");
    }
}

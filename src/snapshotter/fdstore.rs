//! The FUSE connection holder: a small process (`loci fd-holder`, started
//! by the daemon in its own process group) that keeps a duplicate of each
//! lazy layer's `/dev/fuse` fd. While it holds them, the kernel keeps the
//! connections, and so the mounts containers read through, alive across a
//! restart or crash of the daemon; the next daemon takes the fds back and
//! serves them again (see [`crate::fs::takeover`]).
//!
//! The protocol is one text message per packet on a unix `SOCK_SEQPACKET`
//! socket, fds attached as `SCM_RIGHTS`: `put ID` (with the fd), `del ID`,
//! `list` (answered by one `fd ID` per connection, with the fd, then
//! `end`); every other request is answered `ok` or `err REASON`. The
//! holder serves one daemon at a time, drops connections that ended (their
//! mounts gone), and exits when it holds nothing after its daemon goes, or
//! when its socket is removed.

use nix::sys::socket::{
    accept4, bind, connect, listen, recvmsg, sendmsg, socket, AddressFamily, Backlog,
    ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr,
};
use std::collections::{BTreeMap, HashMap};
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// The daemon's side: a connection to the holder, started when first
/// needed.
pub struct FdStore {
    socket: PathBuf,
    log: PathBuf,
    conn: Mutex<Option<OwnedFd>>,
}

impl FdStore {
    /// The holder listening on `socket`, logging to `log` when this store
    /// starts it.
    pub fn new(socket: PathBuf, log: PathBuf) -> FdStore {
        FdStore {
            socket,
            log,
            conn: Mutex::new(None),
        }
    }

    /// Every connection the holder keeps, by snapshot id (still kept);
    /// none when no holder runs.
    pub fn list(&self) -> io::Result<HashMap<u64, OwnedFd>> {
        let mut conn = self.conn.lock().expect("fd store lock");
        if conn.is_none() {
            match connect_to(&self.socket) {
                Ok(c) => *conn = Some(c),
                Err(_) => return Ok(HashMap::new()),
            }
        }
        let c = conn.as_ref().expect("connected");
        send(c, "list", None)?;
        let mut held = HashMap::new();
        loop {
            let (text, fd) = recv(c)?.ok_or_else(holder_gone)?;
            if text == "end" {
                return Ok(held);
            }
            match (text.strip_prefix("fd ").and_then(|id| id.parse().ok()), fd) {
                (Some(id), Some(fd)) => {
                    held.insert(id, fd);
                }
                _ => return Err(io::Error::other(format!("fd holder said {text:?}"))),
            }
        }
    }

    /// Hands the holder a duplicate of snapshot `id`'s connection,
    /// starting the holder if none runs.
    pub fn put(&self, id: u64, fd: &OwnedFd) -> io::Result<()> {
        let mut conn = self.conn.lock().expect("fd store lock");
        if conn.is_none() {
            *conn = Some(match connect_to(&self.socket) {
                Ok(c) => c,
                Err(_) => self.spawn_holder()?,
            });
        }
        let result = request(
            conn.as_ref().expect("connected"),
            &format!("put {id}"),
            Some(fd.as_raw_fd()),
        );
        if result.is_err() {
            *conn = None; // a new holder is started next time
        }
        result
    }

    /// Has the holder close snapshot `id`'s connection (the layer is
    /// unmounted). Nothing to do when no holder runs.
    pub fn remove(&self, id: u64) -> io::Result<()> {
        let mut conn = self.conn.lock().expect("fd store lock");
        if conn.is_none() {
            match connect_to(&self.socket) {
                Ok(c) => *conn = Some(c),
                Err(_) => return Ok(()),
            }
        }
        let result = request(
            conn.as_ref().expect("connected"),
            &format!("del {id}"),
            None,
        );
        if result.is_err() {
            *conn = None;
        }
        result
    }

    fn spawn_holder(&self) -> io::Result<OwnedFd> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut child = std::process::Command::new(std::env::current_exe()?)
            .arg("fd-holder")
            .arg("--socket")
            .arg(&self.socket)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: a signal to the daemon's group (a
            // terminal's ^C, a supervisor stopping the daemon) spares it.
            .process_group(0)
            .spawn()?;
        let pid = child.id();
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        for _ in 0..250 {
            if let Ok(c) = connect_to(&self.socket) {
                tracing::info!(pid, socket = %self.socket.display(), "started the FUSE fd holder");
                return Ok(c);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the fd holder never listened on {}", self.socket.display()),
        ))
    }
}

fn holder_gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the fd holder closed the connection",
    )
}

fn connect_to(path: &Path) -> io::Result<OwnedFd> {
    let sock = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    connect(sock.as_raw_fd(), &UnixAddr::new(path)?)?;
    Ok(sock)
}

fn request(conn: &OwnedFd, text: &str, fd: Option<RawFd>) -> io::Result<()> {
    send(conn, text, fd)?;
    match recv(conn)?.ok_or_else(holder_gone)?.0.as_str() {
        "ok" => Ok(()),
        other => Err(io::Error::other(format!("fd holder: {other}"))),
    }
}

fn send(conn: &OwnedFd, text: &str, fd: Option<RawFd>) -> io::Result<()> {
    let iov = [IoSlice::new(text.as_bytes())];
    let fds: Vec<RawFd> = fd.into_iter().collect();
    let rights = [ControlMessage::ScmRights(&fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    sendmsg::<()>(conn.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
    Ok(())
}

/// One message and the fd it carries; None at end of stream.
fn recv(conn: &OwnedFd) -> io::Result<Option<(String, Option<OwnedFd>)>> {
    let mut buf = [0u8; 256];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let (len, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let mut fds = Vec::new();
        for cmsg in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(received) = cmsg {
                // SAFETY: the kernel just installed these fds for us.
                fds.extend(
                    received
                        .into_iter()
                        .map(|f| unsafe { OwnedFd::from_raw_fd(f) }),
                );
            }
        }
        (msg.bytes, fds)
    };
    if len == 0 && fds.is_empty() {
        return Ok(None);
    }
    let text = String::from_utf8_lossy(&buf[..len]).into_owned();
    Ok(Some((text, fds.into_iter().next())))
}

/// Runs the holder on `socket` until it holds nothing after a daemon that
/// used it disconnects, or the socket is removed (its state directory is
/// gone).
pub fn run_holder(path: &Path) -> io::Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let listener = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    bind_private(|| Ok(bind(listener.as_raw_fd(), &UnixAddr::new(path)?)?))?;
    listen(&listener, Backlog::new(8)?)?;
    tracing::info!(socket = %path.display(), "fd holder listening");
    let mut held: BTreeMap<u64, OwnedFd> = BTreeMap::new();
    loop {
        // The listener, and every held connection for its end: the kernel
        // reports POLLERR once a connection is gone (its mount unmounted
        // and unused), whatever events are asked for.
        let ids: Vec<u64> = held.keys().copied().collect();
        let mut ready = vec![PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        ready.extend(
            held.values()
                .map(|fd| PollFd::new(fd.as_fd(), PollFlags::empty())),
        );
        let events = poll(&mut ready, PollTimeout::from(5000u16))?;
        let ended = |fd: &PollFd| {
            fd.revents()
                .is_some_and(|r| r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP))
        };
        let dead: Vec<u64> = ids
            .iter()
            .zip(&ready[1..])
            .filter(|(_, fd)| ended(fd))
            .map(|(id, _)| *id)
            .collect();
        let daemon_waiting = ready[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLIN));
        drop(ready);
        for id in &dead {
            held.remove(id);
            tracing::info!(id, "a held connection ended (its mount is gone); dropped");
        }
        if !dead.is_empty() && held.is_empty() && !daemon_waiting {
            let _ = std::fs::remove_file(path);
            tracing::info!("holding no connection; fd holder exiting");
            return Ok(());
        }
        if events == 0 {
            if !path.exists() {
                tracing::info!(held = held.len(), "socket removed; fd holder exiting");
                return Ok(());
            }
            continue;
        }
        if !daemon_waiting {
            continue;
        }
        let raw = accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC)?;
        // SAFETY: accept4 returned a new fd that nothing else owns.
        let conn = unsafe { OwnedFd::from_raw_fd(raw) };
        let requests = serve_daemon(&conn, &mut held).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "fd holder: daemon connection failed");
            1
        });
        if held.is_empty() && requests > 0 {
            let _ = std::fs::remove_file(path);
            tracing::info!("holding no connection; fd holder exiting");
            return Ok(());
        }
        tracing::info!(
            held = held.len(),
            "daemon gone; holding its FUSE connections"
        );
    }
}

/// Answers one daemon's requests until it goes; returns how many it made.
fn serve_daemon(conn: &OwnedFd, held: &mut BTreeMap<u64, OwnedFd>) -> io::Result<usize> {
    let mut requests = 0;
    while let Some((text, fd)) = recv(conn)? {
        requests += 1;
        let (verb, id) = text.split_once(' ').unwrap_or((text.as_str(), ""));
        let id: Option<u64> = id.parse().ok();
        match (verb, id, fd) {
            ("put", Some(id), Some(fd)) => {
                held.insert(id, fd);
                send(conn, "ok", None)?;
            }
            ("del", Some(id), None) => {
                held.remove(&id);
                send(conn, "ok", None)?;
            }
            ("list", None, None) => {
                for (id, fd) in held.iter() {
                    send(conn, &format!("fd {id}"), Some(fd.as_raw_fd()))?;
                }
                send(conn, "end", None)?;
            }
            _ => send(conn, &format!("err bad request {text:?}"), None)?,
        }
    }
    Ok(requests)
}

/// Runs `bind` with the umask at 0177, so the socket it creates is mode
/// 0600 from the first instant, not chmod-ed after others could connect.
pub(super) fn bind_private<T>(bind: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = bind();
    nix::sys::stat::umask(old);
    bound
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_keeps_fds_across_daemon_connections() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("fds.sock");
        let holder = {
            let sock = sock.clone();
            std::thread::spawn(move || run_holder(&sock))
        };
        while connect_to(&sock).is_err() {
            std::thread::sleep(Duration::from_millis(10));
        }
        let file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut &file, b"kept").unwrap();
        let first = FdStore::new(sock.clone(), dir.path().join("log"));
        first.put(3, &OwnedFd::from(file)).unwrap();
        first
            .put(4, &OwnedFd::from(tempfile::tempfile().unwrap()))
            .unwrap();
        first.remove(4).unwrap();
        drop(first); // the daemon goes; the holder stays, holding fd 3

        let second = FdStore::new(sock.clone(), dir.path().join("log"));
        let held = second.list().unwrap();
        assert_eq!(held.keys().collect::<Vec<_>>(), vec![&3]);
        let mut kept = std::fs::File::from(held.into_values().next().unwrap());
        let mut text = String::new();
        std::io::Seek::rewind(&mut kept).unwrap();
        std::io::Read::read_to_string(&mut kept, &mut text).unwrap();
        assert_eq!(text, "kept");
        second.remove(3).unwrap();
        drop(second); // holding nothing: the holder exits
        holder.join().unwrap().unwrap();
        assert!(!sock.exists());
    }
}

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
//! `end`), `quit` (close every connection and exit: the node releases
//! loci for good); every other request is answered `ok` or `err REASON`.
//! The holder serves one daemon at a time, drops connections that ended
//! (their mounts gone), and exits when it holds nothing after its daemon
//! goes, or when its socket is removed. Connections no daemon takes back
//! within the orphan timeout are closed, so their readers get an error
//! (ENOTCONN) instead of waiting forever. A daemon whose holder died hands
//! its connections to a new one ([`FdStore::holder_alive`]).

use nix::sys::socket::{
    accept4, bind, connect, listen, recvmsg, sendmsg, socket, AddressFamily, Backlog,
    ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr,
};
use std::collections::{BTreeMap, HashMap};
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// The daemon's side: a connection to the holder, started when first
/// needed.
pub struct FdStore {
    socket: PathBuf,
    log: PathBuf,
    orphan_timeout: Duration,
    conn: Mutex<Option<OwnedFd>>,
    /// Counts the connections made: a connection handed to an earlier one
    /// may be with a holder that has since died (see
    /// [`generation`](Self::generation)).
    generation: AtomicU64,
}

impl FdStore {
    /// The holder listening on `socket`, logging to `log` when this store
    /// starts it, closing what it holds once no daemon has come back for
    /// `orphan_timeout`.
    pub fn new(socket: PathBuf, log: PathBuf, orphan_timeout: Duration) -> FdStore {
        FdStore {
            socket,
            log,
            orphan_timeout,
            conn: Mutex::new(None),
            generation: AtomicU64::new(0),
        }
    }

    /// Whether the holder this store talks to is still there. False when
    /// it died (its end of the connection hung up) or none runs; a later
    /// [`put`](Self::put) starts a new one.
    pub fn holder_alive(&self) -> bool {
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        drop_if_hung_up(&mut conn);
        conn.is_some()
    }

    /// Which connection to the holder is current: it changes whenever a
    /// new one is made (to a new holder, after the last one died). What
    /// was handed over on an older one may be lost with its holder.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Connects to a running holder if not connected; whether connected.
    fn connect_existing(&self, conn: &mut Option<OwnedFd>) -> bool {
        if conn.is_none() {
            if let Ok(c) = connect_to(&self.socket) {
                *conn = Some(c);
                self.generation.fetch_add(1, Ordering::SeqCst);
            }
        }
        conn.is_some()
    }

    /// Every connection the holder keeps, by snapshot id (still kept);
    /// none when no holder runs.
    pub fn list(&self) -> io::Result<HashMap<u64, OwnedFd>> {
        let mut conn = self.conn.lock().expect("fd store lock");
        if !self.connect_existing(&mut conn) {
            return Ok(HashMap::new());
        }
        list_on(conn.as_ref().expect("connected"))
    }

    /// Connects to the holder, starting one if none runs. [`put`](Self::put)
    /// does this itself; calling it ahead (as an image's first layer
    /// opens) takes the holder's start, some 20 ms, off the first mount.
    pub fn start(&self) -> io::Result<()> {
        let mut conn = self.conn.lock().expect("fd store lock");
        self.connect_or_spawn(&mut conn)
    }

    /// Connects to the holder, or starts one: a connection to a holder
    /// that died is dropped first.
    fn connect_or_spawn(&self, conn: &mut Option<OwnedFd>) -> io::Result<()> {
        drop_if_hung_up(conn);
        if self.connect_existing(conn) {
            return Ok(());
        }
        let fresh = self.spawn_holder()?;
        // A request, so that the holder exits once this daemon goes if it
        // was never handed anything (it stays for a daemon that only
        // looked in without asking).
        list_on(&fresh)?;
        *conn = Some(fresh);
        self.generation.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// Hands the holder a duplicate of snapshot `id`'s connection,
    /// starting the holder if none runs. Returns the [`generation`] of
    /// the connection it went over.
    ///
    /// [`generation`]: Self::generation
    pub fn put(&self, id: u64, fd: &OwnedFd) -> io::Result<u64> {
        let mut conn = self.conn.lock().expect("fd store lock");
        self.connect_or_spawn(&mut conn)?;
        let result = request(
            conn.as_ref().expect("connected"),
            &format!("put {id}"),
            Some(fd.as_raw_fd()),
        );
        if result.is_err() {
            *conn = None; // a new holder is started next time
        }
        result.map(|()| self.generation())
    }

    /// Has the holder close snapshot `id`'s connection (the layer is
    /// unmounted). Nothing to do when no holder runs.
    pub fn remove(&self, id: u64) -> io::Result<()> {
        let mut conn = self.conn.lock().expect("fd store lock");
        if !self.connect_existing(&mut conn) {
            return Ok(());
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
            .arg("--orphan-timeout-secs")
            .arg(self.orphan_timeout.as_secs().to_string())
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: a signal to the daemon's group (a
            // terminal's ^C, a supervisor stopping the daemon) spares it.
            .process_group(0)
            .spawn()?;
        let pid = child.id();
        // Short polls: the first lazy mount after a daemon start waits
        // for this, and the holder listens within milliseconds.
        for _ in 0..2500 {
            if let Ok(c) = connect_to(&self.socket) {
                tracing::info!(pid, socket = %self.socket.display(), "started the FUSE fd holder");
                std::thread::spawn(move || {
                    let _ = child.wait();
                });
                return Ok(c);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        // Not left behind to listen later beside the next one started.
        let _ = child.kill();
        let _ = child.wait();
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the fd holder never listened on {}", self.socket.display()),
        ))
    }
}

/// Drops a connection whose holder hung up (it died).
fn drop_if_hung_up(conn: &mut Option<OwnedFd>) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let Some(c) = conn.as_ref() else {
        return;
    };
    let mut fds = [PollFd::new(c.as_fd(), PollFlags::POLLIN)];
    let hung_up = match poll(&mut fds, PollTimeout::ZERO) {
        // The holder never writes unasked: readable means closed.
        Ok(n) => n > 0,
        Err(_) => true,
    };
    if hung_up {
        *conn = None;
    }
}

/// Asks a holder for every connection it keeps, by snapshot id.
fn list_on(c: &OwnedFd) -> io::Result<HashMap<u64, OwnedFd>> {
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

/// Asks the holder on `socket`, if one runs, to close every connection it
/// holds and exit; returns how many it held. For releasing a node for
/// good, with the daemon stopped.
pub fn quit_holder(socket: &Path) -> io::Result<usize> {
    let Ok(conn) = connect_to(socket) else {
        return Ok(0);
    };
    send(&conn, "list", None)?;
    let mut held = 0;
    while let Some((text, _fd)) = recv(&conn)? {
        if text == "end" {
            break;
        }
        held += 1;
    }
    request(&conn, "quit", None)?;
    Ok(held)
}

/// Runs the holder on `socket` until it holds nothing after a daemon that
/// used it disconnects, the socket is removed (its state directory is
/// gone), a daemon says `quit`, or no daemon came back for
/// `orphan_timeout` (then what it holds is closed).
pub fn run_holder(path: &Path, orphan_timeout: Duration) -> io::Result<()> {
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
    // Since when no daemon has been connected while connections are held.
    let mut orphaned_since: Option<std::time::Instant> = None;
    loop {
        if let Some(since) = orphaned_since.filter(|s| s.elapsed() >= orphan_timeout) {
            tracing::error!(
                held = held.len(),
                waited_secs = since.elapsed().as_secs(),
                "no daemon took the FUSE connections back; closing them, so their readers get an error instead of waiting"
            );
            held.clear();
            let _ = std::fs::remove_file(path);
            return Ok(());
        }
        // The listener, and every held connection for its end: the kernel
        // reports POLLERR once a connection is gone (its mount unmounted
        // and unused), whatever events are asked for.
        let ids: Vec<u64> = held.keys().copied().collect();
        let mut ready = vec![PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        ready.extend(
            held.values()
                .map(|fd| PollFd::new(fd.as_fd(), PollFlags::empty())),
        );
        let events = poll(&mut ready, PollTimeout::from(1000u16))?;
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
        let served = serve_daemon(&conn, &mut held).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "fd holder: daemon connection failed");
            Served {
                requests: 1,
                quit: false,
            }
        });
        if served.quit {
            let _ = std::fs::remove_file(path);
            tracing::info!("asked to quit; closed every held connection");
            return Ok(());
        }
        if held.is_empty() && served.requests > 0 {
            let _ = std::fs::remove_file(path);
            tracing::info!("holding no connection; fd holder exiting");
            return Ok(());
        }
        tracing::info!(
            held = held.len(),
            timeout_secs = orphan_timeout.as_secs(),
            "daemon gone; holding its FUSE connections until one comes back or the timeout"
        );
        orphaned_since = (!held.is_empty()).then(std::time::Instant::now);
    }
}

/// What one daemon connection did.
struct Served {
    requests: usize,
    /// The daemon said `quit`.
    quit: bool,
}

/// Answers one daemon's requests until it goes or says `quit`.
fn serve_daemon(conn: &OwnedFd, held: &mut BTreeMap<u64, OwnedFd>) -> io::Result<Served> {
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
            ("quit", None, None) => {
                held.clear();
                send(conn, "ok", None)?;
                return Ok(Served {
                    requests,
                    quit: true,
                });
            }
            _ => send(conn, &format!("err bad request {text:?}"), None)?,
        }
    }
    Ok(Served {
        requests,
        quit: false,
    })
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
            std::thread::spawn(move || run_holder(&sock, Duration::from_secs(300)))
        };
        while connect_to(&sock).is_err() {
            std::thread::sleep(Duration::from_millis(10));
        }
        let file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut &file, b"kept").unwrap();
        let first = FdStore::new(
            sock.clone(),
            dir.path().join("log"),
            Duration::from_secs(300),
        );
        first.put(3, &OwnedFd::from(file)).unwrap();
        first
            .put(4, &OwnedFd::from(tempfile::tempfile().unwrap()))
            .unwrap();
        first.remove(4).unwrap();
        drop(first); // the daemon goes; the holder stays, holding fd 3

        let second = FdStore::new(
            sock.clone(),
            dir.path().join("log"),
            Duration::from_secs(300),
        );
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

    fn holder(sock: &Path, orphan_timeout: Duration) -> std::thread::JoinHandle<io::Result<()>> {
        let sock = sock.to_path_buf();
        let path = sock.clone();
        let handle = std::thread::spawn(move || run_holder(&path, orphan_timeout));
        while connect_to(&sock).is_err() {
            std::thread::sleep(Duration::from_millis(10));
        }
        handle
    }

    #[test]
    fn connections_no_daemon_takes_back_are_closed_after_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("fds.sock");
        let holder = holder(&sock, Duration::from_secs(1));
        let (mine, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let daemon = FdStore::new(sock.clone(), dir.path().join("log"), Duration::from_secs(1));
        daemon.put(7, &OwnedFd::from(theirs)).unwrap();
        drop(daemon);
        // The holder keeps the other end open, then closes it.
        let began = std::time::Instant::now();
        let mut buf = [0u8; 1];
        let read = std::io::Read::read(&mut &mine, &mut buf).unwrap();
        assert_eq!(read, 0, "the held end was closed");
        assert!(
            began.elapsed() >= Duration::from_millis(900),
            "closed too early"
        );
        assert!(began.elapsed() < Duration::from_secs(10), "closed too late");
        holder.join().unwrap().unwrap();
        assert!(!sock.exists());
    }

    #[test]
    fn start_ahead_connects_and_the_put_uses_that_holder() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("fds.sock");
        let holder = holder(&sock, Duration::from_secs(300));
        let daemon = FdStore::new(
            sock.clone(),
            dir.path().join("log"),
            Duration::from_secs(300),
        );
        assert!(!daemon.holder_alive(), "not connected before start");
        daemon.start().unwrap();
        assert!(daemon.holder_alive(), "connected by start");
        daemon.start().unwrap(); // again: a no-op, not a second holder
        let (_mine, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        daemon.put(2, &OwnedFd::from(theirs)).unwrap();
        assert_eq!(daemon.list().unwrap().keys().collect::<Vec<_>>(), vec![&2]);
        drop(daemon);
        assert_eq!(quit_holder(&sock).unwrap(), 1);
        holder.join().unwrap().unwrap();
        assert!(
            !dir.path().join("log").exists(),
            "no holder was spawned: the running one was used"
        );
    }

    /// A holder that answers one daemon's first request `ok`, then dies
    /// (closes the connection and goes).
    fn holder_dying_after_one_request(sock: &Path) -> std::thread::JoinHandle<()> {
        let listener = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        bind(listener.as_raw_fd(), &UnixAddr::new(sock).unwrap()).unwrap();
        listen(&listener, Backlog::new(1).unwrap()).unwrap();
        let sock = sock.to_path_buf();
        std::thread::spawn(move || {
            let raw = accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC).unwrap();
            // SAFETY: accept4 returned a new fd that nothing else owns.
            let conn = unsafe { OwnedFd::from_raw_fd(raw) };
            recv(&conn).unwrap().expect("a request");
            send(&conn, "ok", None).unwrap();
            std::fs::remove_file(&sock).unwrap();
        })
    }

    #[test]
    fn after_the_holder_dies_a_put_goes_to_a_new_holder_under_a_new_generation() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("fds.sock");
        let dying = holder_dying_after_one_request(&sock);
        let daemon = FdStore::new(
            sock.clone(),
            dir.path().join("log"),
            Duration::from_secs(300),
        );
        let (_a, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let first = daemon.put(1, &OwnedFd::from(theirs)).unwrap();
        dying.join().unwrap();
        let next = holder(&sock, Duration::from_secs(300));
        // No holder_alive() first: the put itself drops the dead
        // connection and reaches the new holder.
        let (_b, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let second = daemon.put(2, &OwnedFd::from(theirs)).unwrap();
        assert!(second > first, "generation {second} after {first}");
        assert_eq!(daemon.generation(), second);
        // What the dead holder had is not with the new one: the daemon
        // must hand it over again (LazyLayers::check_holder does).
        assert_eq!(daemon.list().unwrap().keys().collect::<Vec<_>>(), vec![&2]);
        drop(daemon);
        assert_eq!(quit_holder(&sock).unwrap(), 1);
        next.join().unwrap().unwrap();
    }

    #[test]
    fn quit_closes_every_connection() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("fds.sock");
        let holder = holder(&sock, Duration::from_secs(300));
        let (mine, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let daemon = FdStore::new(
            sock.clone(),
            dir.path().join("log"),
            Duration::from_secs(300),
        );
        daemon.put(1, &OwnedFd::from(theirs)).unwrap();
        assert!(daemon.holder_alive());
        drop(daemon);
        assert_eq!(quit_holder(&sock).unwrap(), 1);
        holder.join().unwrap().unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(std::io::Read::read(&mut &mine, &mut buf).unwrap(), 0);
    }
}

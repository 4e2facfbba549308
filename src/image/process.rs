//! How an image runs: the process its config describes (Entrypoint and
//! Cmd, Env, WorkingDir, User), resolved against the image's own
//! `/etc/passwd` and `/etc/group` the way containerd resolves it for
//! `ctr run IMAGE` and for Kubernetes pods, so a start run by loci (the
//! trace recording, a node agent's instance) is the start a platform runs.

use super::ImageError;
use oci_spec::image::ImageConfiguration;
use std::io::Read;
use std::os::fd::AsFd;
use std::path::Path;

/// PATH when the image sets no environment at all (containerd's default).
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `/etc/passwd` and `/etc/group` larger than this are refused: they come
/// from the image.
const MAX_ACCOUNT_FILE_BYTES: u64 = 4 << 20;

/// The process part of an image config, as the image's author wrote it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunConfig {
    /// `Env`, `NAME=value` each.
    pub env: Vec<String>,
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `WorkingDir` ("" when unset).
    pub working_dir: String,
    /// `User`: `name`, `uid`, `name:group`, `uid:gid` ("" when unset).
    pub user: String,
}

/// A process ready to give a runtime: what runs, where and as whom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Process {
    /// argv.
    pub args: Vec<String>,
    /// The environment.
    pub env: Vec<String>,
    /// The working directory (absolute).
    pub cwd: String,
    /// User ID.
    pub uid: u32,
    /// Primary group ID.
    pub gid: u32,
    /// Supplementary groups.
    pub additional_gids: Vec<u32>,
}

impl RunConfig {
    /// Reads the process fields of an image config.
    pub fn parse(config: &[u8]) -> Result<RunConfig, ImageError> {
        let parsed = ImageConfiguration::from_reader(config).map_err(|e| ImageError::Invalid {
            what: "image config".into(),
            reason: e.to_string(),
        })?;
        let Some(c) = parsed.config() else {
            return Ok(RunConfig::default());
        };
        Ok(RunConfig {
            env: c.env().clone().unwrap_or_default(),
            entrypoint: c.entrypoint().clone().unwrap_or_default(),
            cmd: c.cmd().clone().unwrap_or_default(),
            working_dir: c.working_dir().clone().unwrap_or_default(),
            user: c.user().clone().unwrap_or_default(),
        })
    }

    /// The process a start of this image runs: `command` when given
    /// (replacing Entrypoint and Cmd, as Kubernetes' `command` does),
    /// else Entrypoint followed by Cmd; its user looked up in `rootfs`'s
    /// account files, never following a link out of `rootfs`.
    pub fn process(&self, command: &[String], rootfs: &Path) -> Result<Process, ImageError> {
        let args = if command.is_empty() {
            self.entrypoint.iter().chain(&self.cmd).cloned().collect()
        } else {
            command.to_vec()
        };
        if args.is_empty() {
            return Err(ImageError::Invalid {
                what: "image config".into(),
                reason: "it has neither Entrypoint nor Cmd; give the command to run".into(),
            });
        }
        let env = if self.env.is_empty() {
            vec![DEFAULT_PATH.to_string()]
        } else {
            self.env.clone()
        };
        let cwd = if self.working_dir.is_empty() {
            "/".to_string()
        } else if self.working_dir.starts_with('/') {
            self.working_dir.clone()
        } else {
            format!("/{}", self.working_dir)
        };
        let passwd = read_in_root(rootfs, "etc/passwd")?;
        let group = read_in_root(rootfs, "etc/group")?;
        let user =
            resolve_user(&self.user, passwd.as_deref(), group.as_deref()).map_err(|reason| {
                ImageError::Invalid {
                    what: format!("the image's User {:?}", self.user),
                    reason,
                }
            })?;
        Ok(Process {
            args,
            env,
            cwd,
            uid: user.uid,
            gid: user.gid,
            additional_gids: user.additional_gids,
        })
    }
}

/// A user, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedUser {
    /// User ID.
    pub uid: u32,
    /// Primary group ID.
    pub gid: u32,
    /// Supplementary groups (the groups that list the user by name, when
    /// the User names no group).
    pub additional_gids: Vec<u32>,
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
}

fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    text.lines().filter_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let _password = fields.next()?;
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some(PasswdEntry { name, uid, gid })
    })
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: &'a str,
}

fn group_entries(text: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    text.lines().filter_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let _password = fields.next()?;
        let gid = fields.next()?.parse().ok()?;
        let members = fields.next().unwrap_or("");
        Some(GroupEntry { name, gid, members })
    })
}

/// Resolves an image's `User` the way containerd does: a name must be in
/// `passwd`; a numeric ID need not be (its group is then 0); a `:group`
/// part is a name from `group` or a number.
pub fn resolve_user(
    user: &str,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<ResolvedUser, String> {
    let passwd = passwd.unwrap_or("");
    let group = group.unwrap_or("");
    let (user_part, group_part) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let user_part = if user_part.is_empty() { "0" } else { user_part };
    let (uid, primary_gid, name) = match user_part.parse::<u32>() {
        Ok(uid) => match passwd_entries(passwd).find(|e| e.uid == uid) {
            Some(e) => (uid, e.gid, Some(e.name)),
            None => (uid, 0, None),
        },
        Err(_) => match passwd_entries(passwd).find(|e| e.name == user_part) {
            Some(e) => (e.uid, e.gid, Some(e.name)),
            None => return Err(format!("no user {user_part:?} in the image's /etc/passwd")),
        },
    };
    let gid = match group_part {
        None => primary_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_entries(group)
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| format!("no group {g:?} in the image's /etc/group"))?,
        },
    };
    let additional_gids = match (group_part, name) {
        (None, Some(name)) => {
            let mut gids: Vec<u32> = group_entries(group)
                .filter(|e| e.members.split(',').any(|m| m == name))
                .map(|e| e.gid)
                .collect();
            gids.sort_unstable();
            gids.dedup();
            gids
        }
        _ => Vec::new(),
    };
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
    })
}

/// The file at `path` under `root`, resolved as if `root` were `/` (a
/// link in the image cannot point out of it); None if it does not exist.
fn read_in_root(root: &Path, path: &str) -> Result<Option<String>, ImageError> {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
    let io = |source: std::io::Error| ImageError::Io {
        what: format!("reading /{path} in {}", root.display()),
        source,
    };
    let dir = std::fs::File::open(root).map_err(io)?;
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = match nix::fcntl::openat2(dir.as_fd(), path, how) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(io(e.into())),
    };
    let mut text = String::new();
    std::fs::File::from(fd)
        .take(MAX_ACCOUNT_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(io)?;
    if text.len() as u64 > MAX_ACCOUNT_FILE_BYTES {
        return Err(ImageError::Invalid {
            what: format!("/{path} in the image"),
            reason: format!("larger than {MAX_ACCOUNT_FILE_BYTES} bytes"),
        });
    }
    Ok(Some(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
        app:x:1000:1000::/home/app:/bin/sh\n\
        broken line\n\
        nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
    const GROUP: &str = "root:x:0:\n\
        daemon:x:1:\n\
        audio:x:29:app\n\
        video:x:44:daemon,app\n\
        app:x:1000:\n\
        nogroup:x:65534:\n";

    #[test]
    fn users_resolve_as_containerd_resolves_them() {
        // (User, uid, gid, supplementary groups)
        let cases: &[(&str, u32, u32, &[u32])] = &[
            ("", 0, 0, &[]),
            ("root", 0, 0, &[]),
            ("app", 1000, 1000, &[29, 44]),
            ("1000", 1000, 1000, &[29, 44]),
            ("4242", 4242, 0, &[]),
            ("app:nogroup", 1000, 65534, &[]),
            ("app:7", 1000, 7, &[]),
            ("4242:4243", 4242, 4243, &[]),
            ("nobody", 65534, 65534, &[]),
            (":44", 0, 44, &[]),
        ];
        for (user, uid, gid, extra) in cases {
            let got = resolve_user(user, Some(PASSWD), Some(GROUP)).unwrap();
            assert_eq!(
                got,
                ResolvedUser {
                    uid: *uid,
                    gid: *gid,
                    additional_gids: extra.to_vec()
                },
                "User {user:?}"
            );
        }
    }

    #[test]
    fn unknown_names_are_refused_with_the_name() {
        for (user, passwd, named) in [
            ("ghost", Some(PASSWD), "ghost"),
            ("app:ghosts", Some(PASSWD), "ghosts"),
            ("app", None, "app"),
        ] {
            let e = resolve_user(user, passwd, Some(GROUP)).unwrap_err();
            assert!(e.contains(named), "{user}: {e}");
        }
    }

    fn config(json: &str) -> RunConfig {
        RunConfig::parse(json.as_bytes()).unwrap()
    }

    #[test]
    fn the_command_replaces_entrypoint_and_cmd_and_the_config_fills_the_rest() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::fs::write(root.path().join("etc/passwd"), PASSWD).unwrap();
        std::fs::write(root.path().join("etc/group"), GROUP).unwrap();
        let c = config(
            r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},
               "config":{"Env":["PATH=/opt/bin","A=b"],"Entrypoint":["/entry"],"Cmd":["serve"],
                         "WorkingDir":"srv","User":"app"}}"#,
        );
        let own = c.process(&[], root.path()).unwrap();
        assert_eq!(own.args, ["/entry", "serve"]);
        assert_eq!(own.env, ["PATH=/opt/bin", "A=b"]);
        assert_eq!(own.cwd, "/srv");
        assert_eq!((own.uid, own.gid), (1000, 1000));
        assert_eq!(own.additional_gids, [29, 44]);
        let given = c
            .process(&["python3".into(), "-V".into()], root.path())
            .unwrap();
        assert_eq!(given.args, ["python3", "-V"]);
        assert_eq!(given.env, own.env);
    }

    #[test]
    fn an_image_without_env_gets_the_default_path_and_one_without_a_command_needs_one() {
        let root = tempfile::tempdir().unwrap();
        let c = config(
            r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#,
        );
        assert!(c.process(&[], root.path()).is_err());
        let p = c.process(&["sh".into()], root.path()).unwrap();
        assert_eq!(p.env, [DEFAULT_PATH]);
        assert_eq!((p.cwd.as_str(), p.uid, p.gid), ("/", 0, 0));
    }

    #[test]
    fn account_files_are_read_inside_the_root_only() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(
            outside.path().join("passwd"),
            "app:x:4000:4000::/:/bin/sh\n",
        )
        .unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        // An absolute link resolves inside the root, where there is no
        // such file: the host's (here: `outside`'s) is never read.
        std::os::unix::fs::symlink(
            outside.path().join("passwd"),
            root.path().join("etc/passwd"),
        )
        .unwrap();
        let c = RunConfig {
            user: "app".into(),
            ..RunConfig::default()
        };
        let e = c.process(&["true".into()], root.path()).unwrap_err();
        assert!(e.to_string().contains("no user \"app\""), "{e}");
        // A relative link climbing out stays inside as well.
        std::fs::remove_file(root.path().join("etc/passwd")).unwrap();
        let climb = format!(
            "../../../../../../../..{}",
            outside.path().join("passwd").display()
        );
        std::os::unix::fs::symlink(climb, root.path().join("etc/passwd")).unwrap();
        let e = c.process(&["true".into()], root.path()).unwrap_err();
        assert!(e.to_string().contains("no user \"app\""), "{e}");
    }
}

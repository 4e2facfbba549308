//! One start of an image, run for real by containerd (runc underneath) on
//! a root filesystem loci provides, so the start a trace records is the
//! start a platform runs: containerd's default OCI spec with the image's
//! own process (argv, Env, WorkingDir, User) put in.

use crate::image::Process;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Why a start could not be run at all.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// `ctr` could not be started or waited for.
    #[error("running ctr (containerd's client)")]
    Ctr(#[source] std::io::Error),
    /// `ctr oci spec` failed or printed something that is not a spec.
    #[error("containerd's default OCI spec: {0}")]
    Spec(String),
    /// The spec could not be written.
    #[error("writing the container's OCI spec to {path}")]
    WriteSpec {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How a start ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunOutcome {
    /// The command (or, when the runtime could not start it, `ctr`)
    /// exited with this code.
    Exited(i32),
    /// Killed at the timeout.
    TimedOut,
}

impl RunOutcome {
    /// The start completed as the image's author meant it to.
    pub fn succeeded(self) -> bool {
        self == RunOutcome::Exited(0)
    }
}

impl std::fmt::Display for RunOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunOutcome::Exited(code) => write!(f, "exited with {code}"),
            RunOutcome::TimedOut => write!(f, "was killed at the timeout"),
        }
    }
}

/// Where and how long to run a start.
pub struct ContainerRun<'a> {
    /// containerd's socket.
    pub address: &'a Path,
    /// containerd namespace.
    pub namespace: &'a str,
    /// Container ID (unique in the namespace).
    pub id: &'a str,
    /// The writable root filesystem.
    pub rootfs: &'a Path,
    /// Where the spec file is written.
    pub work: &'a Path,
    /// The start is killed after this long.
    pub timeout: Duration,
}

impl ContainerRun<'_> {
    fn ctr(&self) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(self.address)
            .args(["--namespace", self.namespace]);
        cmd
    }

    /// Runs `process` to its end or the timeout; its output goes to this
    /// process's stderr.
    pub fn run(&self, process: &Process) -> Result<RunOutcome, ContainerError> {
        let output = self
            .ctr()
            .args(["oci", "spec"])
            .stderr(Stdio::inherit())
            .output()
            .map_err(ContainerError::Ctr)?;
        if !output.status.success() {
            return Err(ContainerError::Spec(format!(
                "`ctr oci spec` {}",
                output.status
            )));
        }
        let mut spec: serde_json::Value = serde_json::from_slice(&output.stdout)
            .map_err(|e| ContainerError::Spec(e.to_string()))?;
        apply(
            &mut spec,
            process,
            self.rootfs,
            &format!("/{}/{}", self.namespace, self.id),
        )
        .map_err(ContainerError::Spec)?;
        let path = self.work.join("config.json");
        std::fs::write(&path, spec.to_string()).map_err(|source| ContainerError::WriteSpec {
            path: path.clone(),
            source,
        })?;
        let mut child = self
            .ctr()
            .args(["run", "--rm", "--config"])
            .arg(&path)
            .arg(self.id)
            .stdin(Stdio::null())
            // stdout is the caller's (a trace's digest goes there).
            .stdout(std::io::stderr())
            .spawn()
            .map_err(ContainerError::Ctr)?;
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some(status) = child.try_wait().map_err(ContainerError::Ctr)? {
                return Ok(RunOutcome::Exited(status.code().unwrap_or(-1)));
            }
            if Instant::now() > deadline {
                tracing::warn!(
                    id = self.id,
                    secs = self.timeout.as_secs(),
                    "the start ran past its timeout: killing it"
                );
                let _ = self
                    .ctr()
                    .args(["tasks", "kill", "--signal", "SIGKILL", self.id])
                    .status();
                child.wait().map_err(ContainerError::Ctr)?;
                return Ok(RunOutcome::TimedOut);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Puts `process` and `rootfs` into containerd's default spec.
fn apply(
    spec: &mut serde_json::Value,
    process: &Process,
    rootfs: &Path,
    cgroup: &str,
) -> Result<(), String> {
    let object = spec.as_object_mut().ok_or("not a JSON object")?;
    let proc = object
        .get_mut("process")
        .and_then(|p| p.as_object_mut())
        .ok_or("no process object")?;
    proc.insert("args".into(), serde_json::json!(process.args));
    proc.insert("env".into(), serde_json::json!(process.env));
    proc.insert("cwd".into(), serde_json::json!(process.cwd));
    let mut user = serde_json::json!({ "uid": process.uid, "gid": process.gid });
    if !process.additional_gids.is_empty() {
        user["additionalGids"] = serde_json::json!(process.additional_gids);
    }
    proc.insert("user".into(), user);
    object.insert(
        "root".into(),
        serde_json::json!({ "path": rootfs, "readonly": false }),
    );
    if let Some(linux) = object.get_mut("linux").and_then(|l| l.as_object_mut()) {
        linux.insert("cgroupsPath".into(), serde_json::json!(cgroup));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_and_root_replace_the_defaults_and_the_rest_is_kept() {
        let mut spec = serde_json::json!({
            "ociVersion": "1.0.2-dev",
            "process": {"user": {"uid": 0, "gid": 0}, "cwd": "/", "noNewPrivileges": true},
            "root": {"path": "rootfs"},
            "mounts": [{"destination": "/proc"}],
            "linux": {"cgroupsPath": "/default"}
        });
        let process = Process {
            args: vec!["python3".into(), "-c".into(), "pass".into()],
            env: vec!["PATH=/usr/bin".into()],
            cwd: "/srv".into(),
            uid: 1000,
            gid: 1001,
            additional_gids: vec![29],
        };
        apply(&mut spec, &process, Path::new("/tmp/r"), "/ns/id").unwrap();
        assert_eq!(spec["process"]["args"][0], "python3");
        assert_eq!(spec["process"]["env"][0], "PATH=/usr/bin");
        assert_eq!(spec["process"]["cwd"], "/srv");
        assert_eq!(
            spec["process"]["user"],
            serde_json::json!({"uid": 1000, "gid": 1001, "additionalGids": [29]})
        );
        assert_eq!(spec["process"]["noNewPrivileges"], true);
        assert_eq!(spec["root"]["path"], "/tmp/r");
        assert_eq!(spec["mounts"][0]["destination"], "/proc");
        assert_eq!(spec["linux"]["cgroupsPath"], "/ns/id");
        assert!(apply(&mut serde_json::json!([]), &process, Path::new("/"), "/x").is_err());
    }
}

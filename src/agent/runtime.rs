//! The node agent's hands: containers run through containerd's own client
//! (`ctr`), so an instance is an ordinary containerd container and task
//! (runc underneath, its root from the loci snapshotter), labelled with the
//! scheduler's instance id so a restarted agent finds what it runs.

use crate::scheduler::report::Resources;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use tokio::process::Command;

/// Label holding the scheduler's instance id.
pub const INSTANCE_LABEL: &str = "loci.instance";
/// Label holding the function name.
pub const FUNCTION_LABEL: &str = "loci.function";
/// Label holding the port the instance serves on.
pub const PORT_LABEL: &str = "loci.port";
/// Prefix of the containers' names; the id follows.
const NAME_PREFIX: &str = "loci-instance-";
/// Most bytes of ctr's output read (listings of many containers fit).
const MAX_OUTPUT_BYTES: usize = 16 << 20;

/// Why a containerd operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// `ctr` could not be run.
    #[error("running ctr: {0}")]
    Spawn(#[source] std::io::Error),
    /// `ctr` said no.
    #[error("ctr {args} failed: {stderr}")]
    Failed {
        /// What was asked.
        args: String,
        /// What ctr said.
        stderr: String,
    },
    /// `ctr` printed something this code cannot read.
    #[error("ctr {args}: unreadable output: {why}")]
    Output {
        /// What was asked.
        args: String,
        /// What was wrong with it.
        why: String,
    },
}

/// A container this agent started, as containerd has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The scheduler's instance id.
    pub instance_id: u64,
    /// Its function.
    pub function: String,
    /// Its port.
    pub port: u16,
    /// Its task is running.
    pub running: bool,
}

/// What one instance runs.
pub struct Launch<'a> {
    /// Scheduler instance id.
    pub instance_id: u64,
    /// Function name (a label).
    pub function: &'a str,
    /// Image reference, pulled into containerd already.
    pub image: &'a str,
    /// Replaces the image's Entrypoint and Cmd when not empty.
    pub command: &'a [String],
    /// Port the instance serves on, given as `$PORT`.
    pub port: u16,
    /// Its CPU and memory limits.
    pub resources: Resources,
}

/// containerd at one socket and namespace, through `ctr`.
#[derive(Clone, Debug)]
pub struct Containerd {
    /// containerd's socket.
    pub address: PathBuf,
    /// The namespace instances live in.
    pub namespace: String,
    /// The snapshotter their roots come from.
    pub snapshotter: String,
}

/// A container name for an instance.
pub fn container_name(instance_id: u64) -> String {
    format!("{NAME_PREFIX}{instance_id}")
}

impl Containerd {
    async fn ctr(&self, args: &[String]) -> Result<String, RuntimeError> {
        let output = Command::new("ctr")
            .arg("--address")
            .arg(&self.address)
            .arg("--namespace")
            .arg(&self.namespace)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(RuntimeError::Spawn)?;
        if !output.status.success() {
            return Err(RuntimeError::Failed {
                args: args.join(" "),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        if output.stdout.len() > MAX_OUTPUT_BYTES {
            return Err(RuntimeError::Output {
                args: args.join(" "),
                why: format!("more than {MAX_OUTPUT_BYTES} bytes"),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Creates and starts an instance's container, detached: host
    /// networking (it serves on `$PORT`), the image's own configuration
    /// (user, environment, working directory), the reserved resources as
    /// cgroup limits, labels that name it for a restarted agent.
    pub async fn start(&self, launch: &Launch<'_>) -> Result<(), RuntimeError> {
        let mut args: Vec<String> = vec![
            "run".into(),
            "--detach".into(),
            "--snapshotter".into(),
            self.snapshotter.clone(),
            "--net-host".into(),
            "--env".into(),
            format!("PORT={}", launch.port),
            "--label".into(),
            format!("{INSTANCE_LABEL}={}", launch.instance_id),
            "--label".into(),
            format!("{FUNCTION_LABEL}={}", launch.function),
            "--label".into(),
            format!("{PORT_LABEL}={}", launch.port),
            "--memory-limit".into(),
            (u64::from(launch.resources.memory_mib) << 20).to_string(),
            "--cpus".into(),
            format!("{:.3}", f64::from(launch.resources.cpu_millis) / 1000.0),
            launch.image.to_string(),
            container_name(launch.instance_id),
        ];
        args.extend(launch.command.iter().cloned());
        self.ctr(&args).await.map(|_| ())
    }

    /// Sends `signal` (e.g. `SIGTERM`, `SIGKILL`) to an instance's task;
    /// a task already gone is not an error.
    pub async fn signal(&self, instance_id: u64, signal: &str) -> Result<(), RuntimeError> {
        let args = [
            "task".into(),
            "kill".into(),
            "--signal".into(),
            signal.into(),
            container_name(instance_id),
        ];
        already_gone(self.ctr(&args).await)
    }

    /// Removes an instance's task (killing it) and container with its
    /// snapshot; what is already gone is skipped.
    pub async fn remove(&self, instance_id: u64) -> Result<(), RuntimeError> {
        let name = container_name(instance_id);
        already_gone(
            self.ctr(&[
                "task".into(),
                "delete".into(),
                "--force".into(),
                name.clone(),
            ])
            .await,
        )?;
        already_gone(self.ctr(&["container".into(), "delete".into(), name]).await)
    }

    /// Which tasks are running, by container name.
    async fn running_tasks(&self) -> Result<HashMap<String, bool>, RuntimeError> {
        let listing = self.ctr(&["task".into(), "list".into()]).await?;
        Ok(parse_task_list(&listing))
    }

    /// Every container this agent started (by its name and labels), with
    /// whether its task runs; one that cannot be read is skipped (logged).
    pub async fn list(&self) -> Result<Vec<Found>, RuntimeError> {
        let names = self
            .ctr(&["container".into(), "list".into(), "--quiet".into()])
            .await?;
        let tasks = self.running_tasks().await?;
        let mut found = Vec::new();
        for name in names.lines().map(str::trim) {
            let Some(id) = name.strip_prefix(NAME_PREFIX) else {
                continue;
            };
            let Ok(instance_id) = id.parse::<u64>() else {
                continue;
            };
            // One container that went meanwhile or has no labels of ours
            // does not hide the others.
            let args = ["container".into(), "info".into(), name.to_string()];
            let labels = match self.ctr(&args).await {
                Ok(info) => parse_labels(&info),
                Err(e) => Err(e.to_string()),
            };
            let (function, port) = match labels {
                Ok(labels) => labels,
                Err(why) => {
                    tracing::warn!(container = name, %why, "skipping a container that looks like an instance but cannot be read");
                    continue;
                }
            };
            found.push(Found {
                instance_id,
                function,
                port,
                running: tasks.get(name).copied().unwrap_or(false),
            });
        }
        Ok(found)
    }

    /// Whether each of these instances' tasks still runs.
    pub async fn still_running(&self) -> Result<HashMap<u64, bool>, RuntimeError> {
        Ok(self
            .running_tasks()
            .await?
            .into_iter()
            .filter_map(|(name, running)| {
                let id = name.strip_prefix(NAME_PREFIX)?.parse().ok()?;
                Some((id, running))
            })
            .collect())
    }
}

/// A `ctr` call on a task or container that no longer exists did what
/// was wanted.
fn already_gone(result: Result<String, RuntimeError>) -> Result<(), RuntimeError> {
    match result {
        Err(RuntimeError::Failed { stderr, .. }) if stderr.contains("not found") => Ok(()),
        other => other.map(|_| ()),
    }
}

/// `ctr task list`: a header, then `NAME PID STATUS` lines.
fn parse_task_list(listing: &str) -> HashMap<String, bool> {
    listing
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let name = fields.next()?;
            let status = fields.nth(1)?;
            Some((name.to_string(), status == "RUNNING"))
        })
        .collect()
}

/// The function and port labels of `ctr container info`'s JSON.
fn parse_labels(info: &str) -> Result<(String, u16), String> {
    let value: serde_json::Value = serde_json::from_str(info).map_err(|e| e.to_string())?;
    let labels = value
        .get("Labels")
        .and_then(|l| l.as_object())
        .ok_or("no Labels")?;
    let label = |key: &str| {
        labels
            .get(key)
            .and_then(|v| v.as_str())
            .ok_or(format!("no {key} label"))
    };
    let function = label(FUNCTION_LABEL)?.to_string();
    let port = label(PORT_LABEL)?
        .parse()
        .map_err(|e| format!("{PORT_LABEL}: {e}"))?;
    Ok((function, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_lists_are_read_by_column() {
        let listing = "TASK                 PID      STATUS    \nloci-instance-7      4242     RUNNING\nloci-instance-8      0        STOPPED\nbroken\n";
        let tasks = parse_task_list(listing);
        assert_eq!(tasks.get("loci-instance-7"), Some(&true));
        assert_eq!(tasks.get("loci-instance-8"), Some(&false));
        assert_eq!(tasks.len(), 2, "a line without a status is skipped");
    }

    #[test]
    fn labels_name_the_function_and_port() {
        let info = r#"{"ID":"loci-instance-7","Labels":{"loci.function":"hello","loci.port":"20001","loci.instance":"7"}}"#;
        assert_eq!(parse_labels(info), Ok(("hello".to_string(), 20001)));
        for bad in [
            r#"{"Labels":{"loci.port":"1"}}"#,
            r#"{"Labels":{"loci.function":"f","loci.port":"70000"}}"#,
            r#"{"Labels":null}"#,
            "not json",
        ] {
            assert!(parse_labels(bad).is_err(), "{bad}");
        }
    }
}

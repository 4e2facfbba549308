//! Function specifications: what the scheduler must know about a function to
//! place, route and reserve its instances.

use super::error::FieldError;
use super::policy::PolicyConfig;
use super::report::{check_name, Resources};
use serde::{Deserialize, Serialize};

/// Most concurrent invocations one instance may be configured to take.
pub const MAX_CONCURRENCY: u32 = 1_000;
/// Longest function timeout accepted (one day).
pub const MAX_TIMEOUT_S: u64 = 86_400;
/// Longest start timeout accepted (an hour).
pub const MAX_START_TIMEOUT_S: u64 = 3_600;
/// Most arguments a function's command may have.
pub const MAX_COMMAND_ARGS: usize = 256;
/// Most bytes a function's command may take, all arguments together.
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;

/// A function as registered with the scheduler (config file or
/// `POST /v1/functions`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionSpec {
    /// Function name, unique in the cluster.
    pub name: String,
    /// Image its instances run.
    pub image: String,
    /// CPU one instance reserves, in millicores.
    pub cpu_millis: u32,
    /// Memory one instance reserves, in MiB.
    pub memory_mib: u32,
    /// Invocations one instance takes at once.
    #[serde(default = "one")]
    pub concurrency: u32,
    /// An invocation running longer than this gets its instance killed.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: u64,
    /// An unreserved instance idle this long is retired.
    #[serde(default = "default_keep_alive_s")]
    pub keep_alive_s: u64,
    /// How many instances to keep ready; none means purely on demand.
    #[serde(default)]
    pub policy: Option<PolicyConfig>,
    /// The command an instance runs instead of the image's Entrypoint and
    /// Cmd; it must serve HTTP on the port in `$PORT`.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// An instance not ready (its HTTP port answering) this long after it
    /// was placed is stopped, and invocations waiting for it fail.
    #[serde(default = "super::report::default_start_timeout_s")]
    pub start_timeout_s: u64,
}

fn one() -> u32 {
    1
}

fn default_timeout_s() -> u64 {
    60
}

fn default_keep_alive_s() -> u64 {
    600
}

impl FunctionSpec {
    /// What one instance reserves on its node.
    pub fn resources(&self) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis,
            memory_mib: self.memory_mib,
        }
    }

    /// Checks every field, naming the first bad one.
    pub fn validate(&self) -> Result<(), FieldError> {
        check_name("name", &self.name)?;
        check_name("image", &self.image)?;
        if self.cpu_millis == 0 {
            return Err(FieldError::new("cpu_millis", "must be positive"));
        }
        if self.memory_mib == 0 {
            return Err(FieldError::new("memory_mib", "must be positive"));
        }
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            return Err(FieldError::new(
                "concurrency",
                format!(
                    "must be within 1..={MAX_CONCURRENCY}, got {}",
                    self.concurrency
                ),
            ));
        }
        if !(1..=MAX_TIMEOUT_S).contains(&self.timeout_s) {
            return Err(FieldError::new(
                "timeout_s",
                format!("must be within 1..={MAX_TIMEOUT_S}, got {}", self.timeout_s),
            ));
        }
        if !(1..=MAX_START_TIMEOUT_S).contains(&self.start_timeout_s) {
            return Err(FieldError::new(
                "start_timeout_s",
                format!(
                    "must be within 1..={MAX_START_TIMEOUT_S}, got {}",
                    self.start_timeout_s
                ),
            ));
        }
        if let Some(command) = &self.command {
            check_command(command)?;
        }
        if let Some(policy) = &self.policy {
            policy.compile().map_err(|e| e.within("policy"))?;
        }
        Ok(())
    }
}

/// A command is passed to the container runtime as its argv: it must have
/// a program, stay small, and hold no NUL (which argv cannot carry).
fn check_command(command: &[String]) -> Result<(), FieldError> {
    if command.is_empty() {
        return Err(FieldError::new(
            "command",
            "must name a program (leave it out for the image's own)",
        ));
    }
    if command.len() > MAX_COMMAND_ARGS {
        return Err(FieldError::new(
            "command",
            format!(
                "{} arguments, at most {MAX_COMMAND_ARGS} allowed",
                command.len()
            ),
        ));
    }
    let bytes: usize = command.iter().map(String::len).sum();
    if bytes > MAX_COMMAND_BYTES {
        return Err(FieldError::new(
            "command",
            format!("{bytes} bytes, at most {MAX_COMMAND_BYTES} allowed"),
        ));
    }
    if let Some(i) = command.iter().position(|a| a.contains('\0')) {
        return Err(FieldError::new(
            format!("command[{i}]"),
            "must not contain NUL",
        ));
    }
    if command[0].is_empty() {
        return Err(FieldError::new("command[0]", "must not be empty"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_in_and_policy_errors_are_nested() {
        let json = r#"{"name":"f","image":"i","cpu_millis":250,"memory_mib":128,
            "policy":{"kind":"utilisation","target":0.7,"min":4,"max":2}}"#;
        let spec: FunctionSpec = serde_json::from_str(json).unwrap();
        assert_eq!(
            (spec.concurrency, spec.timeout_s, spec.keep_alive_s),
            (1, 60, 600)
        );
        assert_eq!(spec.validate().unwrap_err().field, "policy.min");
    }

    #[test]
    fn bad_commands_and_start_timeouts_are_named() {
        let cases = [
            (r#""command":[]"#, "command"),
            (r#""command":[""]"#, "command[0]"),
            (r#""command":["sh","a\u0000b"]"#, "command[1]"),
            (r#""start_timeout_s":0"#, "start_timeout_s"),
            (r#""start_timeout_s":3601"#, "start_timeout_s"),
        ];
        for (field, named) in cases {
            let json =
                format!(r#"{{"name":"f","image":"i","cpu_millis":1,"memory_mib":1,{field}}}"#);
            let spec: FunctionSpec = serde_json::from_str(&json).unwrap();
            assert_eq!(spec.validate().unwrap_err().field, named, "{json}");
        }
        let long = format!(
            r#"{{"name":"f","image":"i","cpu_millis":1,"memory_mib":1,"command":["{}"]}}"#,
            "x".repeat(MAX_COMMAND_BYTES + 1)
        );
        let spec: FunctionSpec = serde_json::from_str(&long).unwrap();
        assert_eq!(spec.validate().unwrap_err().field, "command");
    }

    #[test]
    fn zero_concurrency_is_named() {
        let json = r#"{"name":"f","image":"i","cpu_millis":250,"memory_mib":128,"concurrency":0}"#;
        let spec: FunctionSpec = serde_json::from_str(json).unwrap();
        assert_eq!(spec.validate().unwrap_err().field, "concurrency");
    }
}

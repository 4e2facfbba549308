//! Who may call the scheduler: a bearer token from a file, for every call
//! that changes state and for node agents' reports. The file holds one
//! token a line and is read again whenever it changes, so tokens rotate
//! without a restart (list the new one beside the old until every client
//! has it). Read-only cluster views may be left open by configuration.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

/// Largest token file read: a file this size is a mistake, not tokens.
const MAX_TOKEN_FILE_BYTES: u64 = 64 << 10;

/// The `[access]` section of the scheduler's configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessConfig {
    /// File of accepted bearer tokens, one a line (blank lines and `#`
    /// comments skipped).
    pub token_file: Option<PathBuf>,
    /// Let anyone read the cluster views (`GET` calls and the Kubernetes
    /// extender's filter and prioritize) without a token.
    pub open_reads: bool,
    /// Serve without any token: anyone who reaches the address may place,
    /// route and report. Only for a scheduler on a private loopback.
    pub insecure_no_token: bool,
    /// Hosts (names or addresses) a node may report its instances'
    /// endpoints at besides its own address: invocations are sent there,
    /// so a report cannot point the scheduler anywhere else.
    pub instance_hosts: Vec<String>,
}

/// The accepted tokens, re-read when their file changes.
pub struct Tokens {
    path: PathBuf,
    /// The file as last read.
    seen: Mutex<Option<Read>>,
}

/// A token file as read: its (modification time, length), and its tokens.
type Read = ((SystemTime, u64), Vec<String>);

impl Tokens {
    /// Tokens from `path`, read now (so a missing or empty file is an error
    /// at startup, not a locked-out service later).
    pub fn open(path: &Path) -> Result<Tokens, String> {
        let tokens = Tokens {
            path: path.to_path_buf(),
            seen: Mutex::new(None),
        };
        match tokens.current() {
            Some(list) if !list.is_empty() => Ok(tokens),
            _ => Err(format!(
                "{}: no token in it (or unreadable)",
                path.display()
            )),
        }
    }

    /// Whether `presented` is one of the tokens (compared in constant time
    /// for a given length). A file that cannot be read now keeps the
    /// tokens last read.
    pub fn allows(&self, presented: &str) -> bool {
        self.current().is_some_and(|tokens| {
            tokens
                .iter()
                .any(|t| same(t.as_bytes(), presented.as_bytes()))
        })
    }

    fn current(&self) -> Option<Vec<String>> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let stamp = std::fs::metadata(&self.path)
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
        let fresh = match (&*seen, stamp) {
            (Some((was, _)), Some(now)) => *was != now,
            (None, Some(_)) => true,
            (_, None) => false,
        };
        if fresh {
            if let Some(tokens) = read_tokens(&self.path) {
                *seen = Some((stamp.expect("fresh only with a stamp"), tokens));
            }
        }
        seen.as_ref().map(|(_, tokens)| tokens.clone())
    }
}

/// The tokens of a token file (one a line, blank lines and `#` comments
/// skipped); None when it cannot be read or is larger than a token file
/// can be. Node agents send the first.
pub fn read_tokens(path: &Path) -> Option<Vec<String>> {
    let len = std::fs::metadata(path).ok()?.len();
    if len > MAX_TOKEN_FILE_BYTES {
        tracing::warn!(file = %path.display(), len, "token file too large; keeping the tokens read before");
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    Some(
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect(),
    )
}

/// Equal bytes, in time that depends on the length only.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_rotate_when_the_file_changes_and_bad_files_keep_the_old_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        assert!(Tokens::open(&path).is_err(), "a missing file is refused");
        std::fs::write(&path, "# comment\n\n").unwrap();
        assert!(
            Tokens::open(&path).is_err(),
            "a file without tokens is refused"
        );
        std::fs::write(&path, "old-token\n").unwrap();
        let tokens = Tokens::open(&path).unwrap();
        assert!(tokens.allows("old-token"));
        assert!(!tokens.allows("old-toke") && !tokens.allows("") && !tokens.allows("old-token2"));
        std::fs::write(&path, "old-token\nnew-token-longer\n").unwrap();
        assert!(tokens.allows("new-token-longer") && tokens.allows("old-token"));
        std::fs::write(&path, "new-token-longer\n").unwrap();
        assert!(
            !tokens.allows("old-token"),
            "a token removed from the file is refused"
        );
        std::fs::write(&path, vec![b'x'; MAX_TOKEN_FILE_BYTES as usize + 1]).unwrap();
        assert!(
            tokens.allows("new-token-longer"),
            "an oversized file keeps the last tokens"
        );
    }
}

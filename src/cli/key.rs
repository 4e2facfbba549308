//! `loci key generate`: the key pair `loci convert --sign-key` signs with
//! and the snapshotter's `trusted_keys` believe.

use crate::format::SigningKey;
use anyhow::Context;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

/// Manage layer signing keys.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: KeyCommand,
}

#[derive(clap::Subcommand, Debug)]
enum KeyCommand {
    /// Write a new Ed25519 key pair: PRIVATE (mode 0600) and PRIVATE.pub.
    Generate {
        /// Where the private key goes; the public key goes beside it, with
        /// `.pub` appended. An existing file is never overwritten.
        private: PathBuf,
    },
}

/// Runs the key subcommand.
pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        KeyCommand::Generate { private } => {
            let key = SigningKey::generate();
            let mut public = private.clone().into_os_string();
            public.push(".pub");
            let public = PathBuf::from(public);
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&private)
                .and_then(|mut f| f.write_all(key.to_text().as_bytes()))
                .with_context(|| format!("writing {}", private.display()))?;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&public)
                .and_then(|mut f| f.write_all(key.public().to_text().as_bytes()))
                .with_context(|| format!("writing {}", public.display()))?;
            println!(
                "key {} written to {} and {}",
                key.public().id(),
                private.display(),
                public.display()
            );
            Ok(())
        }
    }
}

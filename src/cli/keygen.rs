//! `exo keygen`: make a fresh cluster key, into a file only its owner can read (or on
//! stdout).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::trust::ClusterKey;

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Write the key to this file, created readable by its owner only (0600); an existing
    /// file is never replaced. Without it the key goes to stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(args: KeygenArgs) -> anyhow::Result<()> {
    let key = ClusterKey::generate();
    match &args.out {
        Some(path) => {
            write_private(path, key.to_file_text().as_bytes())?;
            eprintln!(
                "cluster key {} written to {} (mode 0600): copy it to every node over a safe channel, start each with --cluster-key FILE",
                key.key_id(),
                path.display()
            );
        }
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(key.to_file_text().as_bytes())?;
            out.flush()?;
            eprintln!(
                "cluster key {} written to stdout: keep it secret (chmod 600), copy it to every node, start each with --cluster-key FILE",
                key.key_id()
            );
        }
    }
    Ok(())
}

/// Creates `path` with `bytes`, readable and writable by its owner only from the moment
/// it exists (no window in which others could open it), and synced to disk.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = match options.open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => anyhow::bail!(
            "{} already exists: a key is never replaced (nodes may hold it); remove it first, or choose another file",
            path.display()
        ),
        Err(error) => {
            return Err(error).with_context(|| format!("cannot create {}", path.display()));
        }
    };
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

//! `exo keygen`: print a fresh cluster key on stdout.

use std::io::Write;

use crate::trust::ClusterKey;

pub fn run() -> anyhow::Result<()> {
    let key = ClusterKey::generate();
    let mut out = std::io::stdout().lock();
    out.write_all(key.to_file_text().as_bytes())?;
    out.flush()?;
    eprintln!(
        "cluster key {} written to stdout: keep it secret (chmod 600), copy it to every node, start each with --cluster-key FILE",
        key.key_id()
    );
    Ok(())
}

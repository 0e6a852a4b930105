//! Input checks done before llama.cpp sees a file, so that a bad file gets
//! one clear line naming it and what is wrong instead of a crash or a log
//! dump from deep inside the loader.

use std::path::Path;

use anyhow::{bail, Result};

/// A model path must exist, be a regular file, and be a structurally sound
/// GGUF file whose tensor data lies inside the file.
pub fn model_file(path: &Path) -> Result<()> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("{}: no such file", path.display())
        }
        Err(e) => bail!("{}: {e}", path.display()),
    };
    if !meta.is_file() {
        bail!("{}: not a regular file", path.display());
    }
    crate::gguf::GgufFile::open(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

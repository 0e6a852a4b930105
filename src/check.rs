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

/// A catalogue name or a path (default: the default model); a catalogue
/// model that is not cached yet is fetched (and made, for the quantized
/// variants) first.
pub fn resolve_model(m: Option<&str>) -> Result<std::path::PathBuf> {
    use crate::models;
    let name = m.unwrap_or(models::DEFAULT_MODEL);
    if models::spec(name).is_some() && !Path::new(name).exists() {
        return models::fetch(name, &|src, dst, ftype| {
            crate::llama::quantize(src, dst, ftype, 2)?;
            Ok(())
        });
    }
    Ok(std::path::PathBuf::from(name))
}

/// Flag values, checked by clap before any work starts, so a bad value is
/// one line naming the flag and the value (`value_parser = check::threads`).
pub mod flags {
    /// More threads than this is a typo, not a machine.
    pub const MAX_THREADS: i64 = 1024;
    /// Trace slots: 2^36 records are 8 TiB of (sparse) file, above what
    /// common file systems hold in one file; the default is 2^26.
    pub const MAX_TRACE_CAPACITY: u64 = 1 << 36;
    /// Context and batch sizes: llama.cpp's positions are i32; 2^24 tokens
    /// is far past any model this tool runs.
    pub const MAX_TOKENS: u64 = 1 << 24;

    fn int<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, String> {
        s.trim()
            .parse::<T>()
            .map_err(|_| format!("{s:?} is not {what}"))
    }

    /// Worker threads: 1 to [`MAX_THREADS`].
    pub fn threads(s: &str) -> Result<i32, String> {
        let n: i64 = int(s, "a whole number")?;
        if !(1..=MAX_THREADS).contains(&n) {
            return Err(format!("{n} threads: must be 1 to {MAX_THREADS}"));
        }
        Ok(n as i32)
    }

    /// Trace capacity in records: 1 to [`MAX_TRACE_CAPACITY`].
    pub fn trace_capacity(s: &str) -> Result<u64, String> {
        let n: u64 = int(s, "a record count (a whole number of at least 1)")?;
        if n == 0 || n > MAX_TRACE_CAPACITY {
            return Err(format!(
                "{n} records: must be 1 to {MAX_TRACE_CAPACITY} (2^36 records are 8 TiB of trace file)"
            ));
        }
        Ok(n)
    }

    /// A context or batch size in tokens: 1 to [`MAX_TOKENS`].
    pub fn tokens(s: &str) -> Result<u32, String> {
        let n: u64 = int(s, "a token count (a whole number of at least 1)")?;
        if n == 0 || n > MAX_TOKENS {
            return Err(format!("{n} tokens: must be 1 to {MAX_TOKENS}"));
        }
        Ok(n as u32)
    }

    /// Tokens to generate or steps to run: 0 to [`MAX_TOKENS`].
    pub fn steps(s: &str) -> Result<usize, String> {
        let n: u64 = int(s, "a whole number of steps (0 or more)")?;
        if n > MAX_TOKENS {
            return Err(format!("{n} steps: must be at most {MAX_TOKENS}"));
        }
        Ok(n as usize)
    }

    /// Repetitions of a benchmark: 1 to 10000.
    pub fn reps(s: &str) -> Result<usize, String> {
        let n: u64 = int(s, "a whole number of repetitions")?;
        if !(1..=10_000).contains(&n) {
            return Err(format!("{n} repetitions: must be 1 to 10000"));
        }
        Ok(n as usize)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn bounds() {
            assert_eq!(threads("2"), Ok(2));
            assert!(threads("0").unwrap_err().contains("must be 1 to 1024"));
            assert!(threads("-3").is_err() && threads("x").is_err());
            assert!(threads("99999999999").is_err());
            assert_eq!(trace_capacity("100"), Ok(100));
            assert!(trace_capacity("99999999999999999").is_err());
            assert!(trace_capacity("0").is_err());
            assert!(tokens("0").is_err() && tokens("2048").is_ok());
            assert!(steps("0").is_ok() && steps("-1").is_err());
            assert!(reps("0").is_err() && reps("7").is_ok());
        }
    }
}

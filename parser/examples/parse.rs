//! The parser's commands without the rest of cktrace (no llama.cpp build),
//! for trying them by hand:
//!
//! ```text
//! cargo run -p cktrace-parser --release --example parse -- parse DIR --stats
//! cargo run -p cktrace-parser --release --example parse -- export DIR --chrome t.json
//! cargo run -p cktrace-parser --release --example parse -- synth DIR --mib 64
//! ```

use std::path::PathBuf;

use cktrace_parser::cli::{ExportArgs, ParseArgs};
use cktrace_parser::synth::{self, SynthSpec};
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Parse(ParseArgs),
    Export(ExportArgs),
    /// Write a synthetic trace bundle of about MIB MiB into DIR.
    Synth {
        dir: PathBuf,
        #[arg(long, default_value_t = 16)]
        mib: u64,
    },
}

fn main() {
    let mut out = std::io::stdout().lock();
    let code = match Cli::parse().cmd {
        Cmd::Parse(a) => a.run(&mut out),
        Cmd::Export(a) => a.run(&mut out),
        Cmd::Synth { dir, mib } => synth::write_synthetic(&dir, &SynthSpec::for_bytes(mib << 20))
            .map(|n| {
                println!("wrote {n} records to {}", dir.display());
                0
            })
            .map_err(Into::into),
    };
    match code {
        Ok(c) => std::process::exit(c),
        Err(e) => {
            eprintln!("cktrace: {e:#}");
            std::process::exit(2);
        }
    }
}

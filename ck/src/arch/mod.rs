//! Model architectures: for each, which tensors it needs (names, shapes,
//! types, checked against the file), which intermediates it writes (named
//! after llama.cpp's graph), and its forward pass. The engine dispatches on
//! [`Model`]; an architecture is a variant and a file (`llama.rs`,
//! `gemma3.rs`, which reuses llama's matmul and weight helpers).

pub mod gemma3;
pub mod llama;

use crate::config::{Arch, Config};
use crate::error::Result;
use crate::layout::{LayoutOptions, Plan};
use crate::model::ModelFile;

/// An architecture's view of a planned model: the ids of its regions.
pub enum Model {
    Llama(llama::Llama),
    Gemma3(gemma3::Gemma3),
}

/// Checks the file's tensors for `config.arch` and plans the layout.
pub fn plan(file: &ModelFile, config: &Config, options: &LayoutOptions) -> Result<(Plan, Model)> {
    match config.arch {
        Arch::Llama => {
            let (plan, m) = llama::plan(file, config, options)?;
            Ok((plan, Model::Llama(m)))
        }
        Arch::Gemma3 => {
            let (plan, m) = gemma3::plan(file, config, options)?;
            Ok((plan, Model::Gemma3(m)))
        }
    }
}

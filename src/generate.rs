//! Text generation through llama.cpp: prompt prefill, then one decode per
//! generated token, with per-step hooks so the tracer can label records with
//! the step, position and phase, and flush at every decode boundary.

use std::time::Instant;

use crate::llama::{Context, LlamaError, Result, Sampler};
use crate::stop::{self, StopReason};

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenParams {
    pub prompt: String,
    pub n_predict: usize,
    pub temp: f32,
    pub seed: u32,
    /// Keep generating past an end-of-generation token.
    pub ignore_eos: bool,
}

/// Called around every `llama_decode`: step 0 is the prompt.
pub trait StepHook {
    fn before(&mut self, _step: u32, _pos: i32, _tokens: &[i32]) {}
    fn after(&mut self, _step: u32) {}
}

/// A hook that does nothing.
pub struct NoHook;
impl StepHook for NoHook {}

/// Why generation ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EndReason {
    /// `n_predict` tokens, or an end-of-generation token.
    #[default]
    Done,
    /// A stop request (a signal, a closed stdout) at a step boundary.
    Stopped(StopReason),
    /// The next token did not fit in the context: `needed` tokens would have
    /// (prompt + `n_predict`), the context holds `n_ctx`.
    ContextFull { n_ctx: u32, needed: usize },
}

/// What a generation produced, with timings.
#[derive(Clone, Debug, Default)]
pub struct GenOutput {
    /// Why it ended.
    pub end: EndReason,
    pub prompt_tokens: Vec<i32>,
    /// Generated token ids (the first is sampled from the prompt's logits).
    pub tokens: Vec<i32>,
    /// Tokens fed at each step (step 0 = the prompt).
    pub step_tokens: Vec<Vec<i32>>,
    pub text: String,
    pub prefill_s: f64,
    /// Wall time of the single-token decodes, step hooks included.
    pub decode_s: f64,
    pub n_decode: usize,
}

impl GenOutput {
    pub fn prompt_tps(&self) -> f64 {
        self.prompt_tokens.len() as f64 / self.prefill_s.max(1e-12)
    }
    pub fn decode_tps(&self) -> f64 {
        self.n_decode as f64 / self.decode_s.max(1e-12)
    }
    /// The line `cktrace run` prints after the text.
    pub fn timing_line(&self) -> String {
        format!(
            "prompt: {} tokens, {:.1} tok/s | generated: {} tokens, {:.1} tok/s ({} decode steps in {:.3} s)",
            self.prompt_tokens.len(),
            self.prompt_tps(),
            self.tokens.len(),
            self.decode_tps(),
            self.n_decode,
            self.decode_s
        )
    }
}

/// Generate from `params.prompt`. `on_text` receives printable text as soon
/// as it forms complete UTF-8.
pub fn generate(
    ctx: &mut Context,
    params: &GenParams,
    hook: &mut dyn StepHook,
    on_text: impl FnMut(&str),
) -> Result<GenOutput> {
    generate_from(ctx, params, None, hook, on_text)
}

/// As [`generate`], with the prompt given as token ids when `tokens` is set
/// (`params.prompt` is then not tokenized).
pub fn generate_from(
    ctx: &mut Context,
    params: &GenParams,
    tokens: Option<&[i32]>,
    hook: &mut dyn StepHook,
    mut on_text: impl FnMut(&str),
) -> Result<GenOutput> {
    let model = ctx.model();
    let prompt_tokens = match tokens {
        Some(t) => t.to_vec(),
        None => model.tokenize(&params.prompt, true)?,
    };
    let mut sampler = Sampler::new(params.temp, params.seed);
    let mut out = GenOutput {
        prompt_tokens: prompt_tokens.clone(),
        ..Default::default()
    };
    let mut pending: Vec<u8> = Vec::new();

    let n_ctx = ctx.n_ctx();
    if prompt_tokens.len() > n_ctx as usize {
        return Err(LlamaError::PromptTooLong(format!(
            "the prompt has {} tokens, more than the context holds (--ctx {n_ctx}); use --ctx {} or more",
            prompt_tokens.len(),
            prompt_tokens.len() + params.n_predict
        )));
    }
    let t0 = Instant::now();
    hook.before(0, 0, &prompt_tokens);
    ctx.decode(&prompt_tokens, 0)?;
    hook.after(0);
    out.prefill_s = t0.elapsed().as_secs_f64();
    out.step_tokens.push(prompt_tokens.clone());

    let mut pos = prompt_tokens.len() as i32;
    for step in 1..=params.n_predict as u32 {
        if let Some(r) = stop::requested() {
            out.end = EndReason::Stopped(r);
            break;
        }
        let tok = sampler.sample(ctx);
        let eog = model.is_eog(tok);
        if eog && !params.ignore_eos {
            break;
        }
        out.tokens.push(tok);
        pending.extend(model.token_bytes(tok));
        flush_utf8(&mut pending, &mut out.text, &mut on_text);
        if step as usize == params.n_predict {
            break;
        }
        if pos as u32 >= n_ctx {
            out.end = EndReason::ContextFull {
                n_ctx,
                needed: prompt_tokens.len() + params.n_predict,
            };
            break;
        }
        // A stop asked for while this token was sampled or printed (a closed
        // stdout) ends the run before one more step.
        if let Some(r) = stop::requested() {
            out.end = EndReason::Stopped(r);
            break;
        }
        // Timed: the decode and the step hooks (a tracer's flush is part of
        // what tracing costs), not the sampling.
        let t = Instant::now();
        hook.before(step, pos, &[tok]);
        ctx.decode(&[tok], pos)?;
        hook.after(step);
        out.decode_s += t.elapsed().as_secs_f64();
        out.n_decode += 1;
        out.step_tokens.push(vec![tok]);
        pos += 1;
    }
    if !pending.is_empty() {
        let s = String::from_utf8_lossy(&pending).into_owned();
        on_text(&s);
        out.text.push_str(&s);
    }
    Ok(out)
}

/// Move the longest valid UTF-8 prefix of `pending` to `text` / `on_text`
/// (shared by the ggml and ck generation loops).
pub fn flush_utf8(pending: &mut Vec<u8>, text: &mut String, on_text: &mut impl FnMut(&str)) {
    let valid = match std::str::from_utf8(pending) {
        Ok(_) => pending.len(),
        Err(e) if e.error_len().is_some() => pending.len(), // invalid, not just incomplete
        Err(e) => e.valid_up_to(),
    };
    if valid == 0 {
        return;
    }
    let s = String::from_utf8_lossy(&pending[..valid]).into_owned();
    pending.drain(..valid);
    on_text(&s);
    text.push_str(&s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_is_held_until_complete() {
        let mut pending = vec![0xe2, 0x82];
        let mut text = String::new();
        let mut seen = Vec::new();
        flush_utf8(&mut pending, &mut text, &mut |s: &str| {
            seen.push(s.to_string())
        });
        assert!(seen.is_empty());
        pending.push(0xac);
        flush_utf8(&mut pending, &mut text, &mut |s: &str| {
            seen.push(s.to_string())
        });
        assert_eq!(text, "€");
    }
}

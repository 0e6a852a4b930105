//! The tiny MoE model from `cktrace::testmodel` loads and runs in llama.cpp,
//! and its feed-forward layers go through `MUL_MAT_ID` on quantized experts.

use std::ffi::{c_char, c_void, CStr, CString};
use std::path::Path;
use std::ptr::NonNull;

use cktrace::ffi;
use cktrace::gguf::GgmlType;
use cktrace::testmodel::{write_tiny_moe, write_tiny_moe_with, TinyMoeConfig, TinyVocab};

/// One graph node that llama.cpp computed, as seen by the eval callback.
#[derive(Debug, Clone)]
struct Node {
    op: ffi::ggml_op,
    name: String,
    /// Type and name of the first source (the weight, for a matmul).
    src0: Option<(ffi::ggml_type, String)>,
}

/// The `cb_eval` callback: asks for every node, then records it.
///
/// # Safety
/// llama.cpp calls it with a live tensor and the `user_data` we passed,
/// which points to a `Vec<Node>` that outlives the decode.
unsafe extern "C" fn record_node(
    t: *mut ffi::ggml_tensor,
    ask: bool,
    user_data: *mut c_void,
) -> bool {
    if ask {
        return true;
    }
    // SAFETY: see the function's contract; the tensor and its sources are
    // live for the duration of the call, names are NUL-terminated arrays.
    unsafe {
        let nodes = &mut *(user_data as *mut Vec<Node>);
        let t = &*t;
        let src0 = NonNull::new(t.src[0]).map(|s| {
            let s = s.as_ref();
            (
                s.type_,
                CStr::from_ptr(s.name.as_ptr())
                    .to_string_lossy()
                    .into_owned(),
            )
        });
        nodes.push(Node {
            op: t.op,
            name: CStr::from_ptr(t.name.as_ptr())
                .to_string_lossy()
                .into_owned(),
            src0,
        });
    }
    true
}

/// Keeps llama.cpp's log to errors only, so test output stays readable.
unsafe extern "C" fn quiet_log(level: ffi::ggml_log_level, text: *const c_char, _: *mut c_void) {
    if level == ffi::GGML_LOG_LEVEL_ERROR {
        // SAFETY: llama.cpp passes a NUL-terminated message.
        eprint!("{}", unsafe { CStr::from_ptr(text) }.to_string_lossy());
    }
}

/// What one run of the model produced.
struct Run {
    n_vocab: usize,
    logits: Vec<f32>,
    nodes: Vec<Node>,
}

/// Hide the AMX buffer type on CPUs that have it, once, before the first
/// backend init of this test process (ggml reads `GGML_CPU_NO_AMX` when the
/// CPU backend registers). Why: the extra-buffer-type test below is about
/// the CPU_REPACK path of the Q4_0 experts, the path every machine without
/// AMX takes; the AMX path of the same model is covered by the census test
/// `census_tiny_moe_exercises_mul_mat_id` (its default run), which proves
/// every MUL_MAT_ID tiled on AMX CPUs.
fn init_backend() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let amx = std::fs::read_to_string("/proc/cpuinfo")
            .is_ok_and(|s| s.split_whitespace().any(|w| w == "amx_tile"));
        if amx {
            // Every test of this binary calls init_backend before touching
            // llama.cpp, and the Once makes the others wait, so no thread
            // reads the environment while it is set.
            std::env::set_var("GGML_CPU_NO_AMX", "1");
        }
        // SAFETY: plain FFI initialisation, idempotent in llama.cpp.
        unsafe { ffi::llama_backend_init() };
    });
}

/// Loads `path` (with or without the CPU extra buffer types), decodes the
/// prompt (token ids, or text to tokenize), then one more token, and returns
/// the last logits and every node computed.
fn run(path: &Path, prompt: Result<&[i32], &str>, extra_bufts: bool) -> Run {
    let c_path = CString::new(path.to_str().unwrap()).unwrap();
    let mut nodes: Vec<Node> = Vec::new();
    // SAFETY: plain FFI calls in the documented order: backend init, load,
    // context, decode, read logits, free. Every pointer is checked for NULL
    // before use; `tokens` outlives each batch that points into it; `nodes`
    // outlives the context that holds a pointer to it (freed below, before
    // `nodes` is read).
    unsafe {
        ffi::llama_log_set(Some(quiet_log), std::ptr::null_mut());
        init_backend();
        let mut mparams = ffi::llama_model_default_params();
        mparams.use_extra_bufts = extra_bufts;
        let model = ffi::llama_model_load_from_file(c_path.as_ptr(), mparams);
        assert!(
            !model.is_null(),
            "llama.cpp could not load {}",
            path.display()
        );
        let vocab = ffi::llama_model_get_vocab(model);
        let n_vocab = ffi::llama_vocab_n_tokens(vocab) as usize;

        let mut tokens: Vec<i32> = match prompt {
            Ok(ids) => ids.to_vec(),
            Err(text) => {
                let mut buf = vec![0i32; text.len() + 8];
                let n = ffi::llama_tokenize(
                    vocab,
                    text.as_ptr().cast(),
                    text.len() as i32,
                    buf.as_mut_ptr(),
                    buf.len() as i32,
                    true,
                    false,
                );
                assert!(n > 0, "tokenize returned {n}");
                buf.truncate(n as usize);
                buf
            }
        };

        let mut cparams = ffi::llama_context_default_params();
        cparams.n_ctx = 64;
        cparams.n_batch = 64;
        cparams.n_ubatch = 64;
        cparams.n_threads = 2;
        cparams.n_threads_batch = 2;
        cparams.cb_eval = Some(record_node);
        cparams.cb_eval_user_data = (&mut nodes as *mut Vec<Node>).cast();
        let ctx = ffi::llama_init_from_model(model, cparams);
        assert!(!ctx.is_null(), "llama_init_from_model failed");

        let rc = ffi::llama_decode(
            ctx,
            ffi::llama_batch_get_one(tokens.as_mut_ptr(), tokens.len() as i32),
        );
        assert_eq!(rc, 0, "llama_decode of the prompt returned {rc}");
        // One generation step, on the prompt's last token.
        let mut next = [*tokens.last().unwrap()];
        let rc = ffi::llama_decode(ctx, ffi::llama_batch_get_one(next.as_mut_ptr(), 1));
        assert_eq!(rc, 0, "llama_decode of one token returned {rc}");

        let logits = ffi::llama_get_logits_ith(ctx, -1);
        assert!(!logits.is_null());
        let logits = std::slice::from_raw_parts(logits, n_vocab).to_vec();

        ffi::llama_free(ctx);
        ffi::llama_model_free(model);
        Run {
            n_vocab,
            logits,
            nodes,
        }
    }
}

fn check_moe_ran(r: &Run) {
    assert!(
        r.logits.iter().all(|v| v.is_finite()),
        "non-finite logits: {:?}",
        r.logits
    );
    assert!(
        r.logits.iter().any(|&v| v != r.logits[0]),
        "all logits equal"
    );

    let moe: Vec<&Node> = r
        .nodes
        .iter()
        .filter(|n| n.op == ffi::GGML_OP_MUL_MAT_ID)
        .collect();
    assert!(
        !moe.is_empty(),
        "no MUL_MAT_ID node ran; ops seen: {:?}",
        r.nodes.iter().map(|n| n.op).collect::<Vec<_>>()
    );
    // 2 layers x 3 expert matmuls (gate, up, down) x 2 decodes.
    assert_eq!(moe.len(), 2 * 3 * 2, "MUL_MAT_ID nodes: {moe:?}");
    for n in &moe {
        let (ty, weight) = n.src0.as_ref().expect("MUL_MAT_ID without a weight");
        let want = if weight.contains("ffn_down_exps") {
            GgmlType::Q8_0
        } else {
            GgmlType::Q4_0
        };
        assert!(weight.ends_with("_exps.weight"), "MUL_MAT_ID on {weight}");
        assert_eq!(*ty, want.id(), "{weight} is ggml type {ty}");
        assert!(
            n.name.starts_with("ffn_moe_"),
            "MUL_MAT_ID node named {}",
            n.name
        );
    }
}

#[test]
fn tiny_moe_runs_mul_mat_id_with_a_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny-moe.gguf");
    let info = write_tiny_moe(&path, 42).unwrap();
    let r = run(&path, Err("Hello, experts!"), false);
    assert_eq!(r.n_vocab, info.n_vocab as usize);
    assert_eq!(r.logits.len(), 259);
    check_moe_ran(&r);
}

#[test]
fn tiny_moe_without_a_vocab_runs_on_token_ids() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny-moe-novocab.gguf");
    let cfg = TinyMoeConfig {
        vocab: TinyVocab::None { n_vocab: 256 },
        ..TinyMoeConfig::default()
    };
    let info = write_tiny_moe_with(&path, 7, &cfg).unwrap();
    assert_eq!(info.n_vocab, 256);
    let r = run(&path, Ok(&[1, 17, 200, 255, 3]), false);
    assert_eq!(r.n_vocab, 256);
    assert_eq!(r.logits.len(), 256);
    check_moe_ran(&r);
}

/// The default model parameters, where ggml repacks the Q4_0 experts for
/// its CPU_REPACK extra buffer type (AMX hidden, see `init_backend`).
#[test]
fn tiny_moe_runs_with_extra_buffer_types() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny-moe.gguf");
    write_tiny_moe(&path, 5).unwrap();
    check_moe_ran(&run(&path, Err("repack"), true));
}

//! Which of ggml's CPU matmul paths each weight takes on this machine, so
//! that the ck engine can compute that path's float arithmetic
//! ([`MatArith`]). One place decides, from the CPU at engine start, what
//! llama.cpp's default (ggml built for the host, `GGML_NATIVE`) decides per
//! weight:
//!
//! - **CPU_REPACK** (ggml-cpu/repack.cpp,
//!   `ggml_repack_get_optimal_repack_type`): with AVX2, a 2-D Q4_0 weight
//!   with a multiple of 8 rows becomes `q4_0_8x8_q8_0`, a Q4_K one
//!   `q4_K_8x8_q8_K`. llama.cpp puts a weight in that buffer only when its
//!   first use is a matmul: the embedding table (GET_ROWS) is not repacked,
//!   and neither is the output head that shares it (tied embeddings). A
//!   repacked matmul of `n` tokens runs the GEMM kernel on the first `n -
//!   n % 4` tokens and the GEMV kernel on the rest (`forward_mul_mat` and
//!   `forward_mul_mat_one_chunk`); for Q4_0 both add in the same order.
//! - **tiled** (ggml-cpu/tiled/tiled.cpp, `ggml_compute_forward_mul_mat_tiled`,
//!   tried first by `ggml_compute_forward_mul_mat`): a K-quant weight that
//!   is not repacked, in a matmul of at least 8 tokens, on an x86 build with
//!   AVX2 (or AVX / AVX-512 VNNI); `GGML_CPU_TILED_MM=0` turns it off, as
//!   it does in ggml (read once, like ggml's `std::call_once`).
//! - everything else: `ggml_vec_dot_*`, or llamafile's tinyBLAS for prompt
//!   matmuls of the types it takes, which the `vec_dot` kernels already
//!   match.
//!
//! Not modelled: AMX (ggml's default on a CPU with AMX tiles takes AMX
//! kernels for Q4_0, Q4_1, Q8_0, Q4_K and Q6_K; the ck engine follows
//! ggml with AMX hidden, `GGML_CPU_NO_AMX=1`), KleidiAI, ARM and RISC-V
//! repacks, NUMA, `--use-ref`. The choice changes arithmetic only, never
//! the layout: layout.json does not depend on it.

use crate::gguf::GgmlType;
use crate::quant::MatArith;

/// Which buffer ggml keeps a weight in, which decides whether it can be
/// repacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightBuffer {
    /// A matmul weight: the CPU_REPACK extra buffer when its type and shape
    /// qualify.
    Matmul,
    /// A tensor whose first use is GET_ROWS (the embedding table, also
    /// when it is the tied output head): the plain CPU buffer.
    Embedding,
}

/// What ggml's CPU backend built for this machine does with a matmul.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GgmlProfile {
    /// The x86 repacks (`ggml_cpu_has_avx2()`).
    pub repack_x86: bool,
    /// The tiled K-quant matmul (x86 with AVX2, AVX or AVX-512 VNNI, and
    /// `GGML_CPU_TILED_MM` not 0).
    pub tiled: bool,
}

/// Fewest tokens for which ggml takes the tiled path
/// (`ggml_tiled_min_batch`).
pub const TILED_MIN_TOKENS: usize = 8;

impl GgmlProfile {
    /// What ggml built for this CPU does.
    pub fn detect() -> GgmlProfile {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2");
            let vnni = is_x86_feature_detected!("avx512vnni");
            let avx = is_x86_feature_detected!("avx");
            let tiled_env = std::env::var("GGML_CPU_TILED_MM")
                .map(|v| atoi(&v) != 0)
                .unwrap_or(true);
            GgmlProfile {
                repack_x86: avx2,
                tiled: (avx2 || avx || vnni) && tiled_env,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            GgmlProfile::plain()
        }
    }

    /// `vec_dot` for every matmul (ggml with repack and tiled off).
    pub fn plain() -> GgmlProfile {
        GgmlProfile {
            repack_x86: false,
            tiled: false,
        }
    }

    /// What ggml does with its extra buffer types off (llama.cpp's
    /// `use_extra_bufts = false`, cktrace's `--no-repack`): no repacked
    /// weights, the tiled path unchanged.
    pub fn without_repack(self) -> GgmlProfile {
        GgmlProfile {
            repack_x86: false,
            ..self
        }
    }

    /// Whether ggml repacks a 2-D weight of type `ty` with `rows` rows kept
    /// in `buffer`.
    pub fn repacked(&self, ty: GgmlType, rows: usize, buffer: WeightBuffer) -> bool {
        buffer == WeightBuffer::Matmul
            && self.repack_x86
            && matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_K)
            && rows.is_multiple_of(8)
    }

    /// The arithmetic of token `t` of an `n`-token matmul with a weight of
    /// type `ty`, `rows` rows of `k`, kept in `buffer`.
    pub fn arith(
        &self,
        ty: GgmlType,
        rows: usize,
        k: usize,
        buffer: WeightBuffer,
        n: usize,
        t: usize,
    ) -> MatArith {
        if self.repacked(ty, rows, buffer) {
            return match ty {
                GgmlType::Q4_0 => MatArith::RepackQ4_0,
                _ if t < n - n % 4 => MatArith::RepackQ4KGemm,
                _ => MatArith::RepackQ4KGemv,
            };
        }
        if self.tiled && n >= TILED_MIN_TOKENS && k.is_multiple_of(256) && MatArith::Tiled.takes(ty)
        {
            return MatArith::Tiled;
        }
        MatArith::VecDot
    }
}

/// C's `atoi`, as ggml reads its switches: leading white space, an
/// optional sign, then the digits up to the first other character (none:
/// 0).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn atoi(s: &str) -> i64 {
    let s = s.trim_start();
    let (neg, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let mut v = 0i64;
    for b in digits.bytes().take_while(u8::is_ascii_digit) {
        v = v.saturating_mul(10).saturating_add((b - b'0') as i64);
    }
    if neg {
        -v
    } else {
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ON: GgmlProfile = GgmlProfile {
        repack_x86: true,
        tiled: true,
    };

    #[test]
    fn repacked_weights_split_gemm_and_gemv_like_ggml() {
        use MatArith::*;
        let a = |t| ON.arith(GgmlType::Q4_K, 576, 1536, WeightBuffer::Matmul, 10, t);
        let got: Vec<MatArith> = (0..10).map(a).collect();
        let mut want = vec![RepackQ4KGemm; 8];
        want.extend([RepackQ4KGemv; 2]);
        assert_eq!(got, want);
        // One token, or three: the GEMV only.
        assert_eq!(
            ON.arith(GgmlType::Q4_K, 576, 1536, WeightBuffer::Matmul, 3, 0),
            RepackQ4KGemv
        );
        assert_eq!(
            ON.arith(GgmlType::Q4_0, 192, 576, WeightBuffer::Matmul, 9, 0),
            RepackQ4_0
        );
    }

    #[test]
    fn embedding_and_odd_row_counts_are_not_repacked() {
        use MatArith::*;
        let t = GgmlType::Q4_0;
        assert_eq!(
            ON.arith(t, 49152, 576, WeightBuffer::Embedding, 1, 0),
            VecDot
        );
        assert_eq!(ON.arith(t, 36, 576, WeightBuffer::Matmul, 1, 0), VecDot);
        // A Q4_K weight ggml does not repack takes the tiled path for a
        // prompt of 8 tokens or more.
        let q4k = GgmlType::Q4_K;
        assert_eq!(
            ON.arith(q4k, 49152, 256, WeightBuffer::Embedding, 8, 0),
            Tiled
        );
        assert_eq!(
            ON.arith(q4k, 49152, 256, WeightBuffer::Embedding, 7, 0),
            VecDot
        );
    }

    #[test]
    fn switches_read_like_atoi() {
        for (s, v) in [
            ("0", 0),
            ("1", 1),
            (" 2x", 2),
            ("-3", -3),
            ("on", 0),
            ("", 0),
        ] {
            assert_eq!(atoi(s), v, "{s:?}");
        }
    }

    #[test]
    fn tiled_takes_k_quants_from_eight_tokens() {
        use MatArith::*;
        let m = WeightBuffer::Matmul;
        assert_eq!(ON.arith(GgmlType::Q6_K, 576, 1536, m, 8, 3), Tiled);
        assert_eq!(ON.arith(GgmlType::Q6_K, 576, 1536, m, 7, 3), VecDot);
        assert_eq!(ON.arith(GgmlType::Q5_K, 576, 1536, m, 64, 0), Tiled);
        assert_eq!(ON.arith(GgmlType::Q5_0, 576, 1536, m, 64, 0), VecDot);
        assert_eq!(ON.arith(GgmlType::Q8_0, 576, 1536, m, 64, 0), VecDot);
        let plain = GgmlProfile::plain();
        for ty in [GgmlType::Q4_0, GgmlType::Q4_K, GgmlType::Q6_K] {
            assert_eq!(plain.arith(ty, 576, 1536, m, 64, 0), VecDot);
        }
    }
}

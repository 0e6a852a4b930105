//! Q5_0 weights packed sixteen rows at a time, for the layer matrices.
//!
//! Most of Gemma-3-270M's layer bytes (Q, K, V, gate and up: 44 MB of
//! 68) and most of SmolLM2's are Q5_0. In the GGUF layout a kernel
//! decodes each 22-byte block of each row on its own (nibbles spread to
//! bytes, 32 `qh` bits to a mask) and feeds two rows to a 512-bit
//! register, so it is compute-bound at well under memory speed. Packed,
//! sixteen rows' block `b` is one 352-byte chunk laid out for 512-bit
//! registers:
//!
//! * bytes `0..32`: the sixteen f16 scales, in row order;
//! * bytes `32..288`: four 64-byte nibble groups; group `g` holds bytes
//!   `4g..4g + 4` of each row's `qs` (row `i` at `4i`), so its low
//!   nibbles are values `4g..4g + 4` of the sixteen rows (lane `g`) and
//!   its high nibbles values `16 + 4g..` (lane `g + 4`);
//! * bytes `288..352`: eight little-endian u64 masks; bit `4i + t` of
//!   mask `l` is bit 4 of row `i`'s value `4l + t`.
//!
//! One AND (or shift and AND), one masked byte add of 16 and one
//! `vpdpbusd` (from the offset `-16 x` the lane's activation sum) then
//! give the sixteen rows' exact integer lane `l` of ggml's AVX2
//! `vec_dot_q5_0_q8_0`, and one FMA applies sixteen scale products: the
//! same float operations on the same values per row as the plain kernels,
//! so the same bits (tested below at every level). Chunks follow each
//! other by block, then by group of rows, so a group is one sequential
//! stream. For a pass of several tokens each chunk is decoded once per
//! pair of tokens.
//!
//! The packing is a permutation of the bits: a packed tensor has exactly
//! the size of the GGUF one (22 bytes per 32 values). Only tensors with a
//! multiple of sixteen rows are packed.

use super::q5_0::{vec_dot_q5_0_q8_0, BlockQ5_0, QK5_0};
use super::q8_0::BlockQ8_0;
#[cfg(target_arch = "x86_64")]
use super::q8_0_x16::Prepared;
use super::q8_0_x16::{pack_group_bytes, whole};
use super::{cast, check_len, mul, row_bytes_for, KernelLevel, Kernels, QuantError};
use crate::gguf::GgmlType;

/// Rows per packed group.
pub const PACK_ROWS: usize = 16;
/// Bytes of one group's block.
const CHUNK: usize = PACK_ROWS * 22;
const LANES: usize = 8;
const NIB: usize = 32;
const MASKS: usize = 288;
/// Bytes ahead of the chunk being read that the kernels prefetch.
#[cfg(target_arch = "x86_64")]
const PF_AHEAD: usize = 8192;

impl Kernels {
    /// Packs `src` (rows of `k` Q5_0 values in the GGUF layout, a
    /// multiple of [`PACK_ROWS`] rows) into `dst`, of the same size.
    pub fn pack_q5_0_x16(&self, k: usize, src: &[u8], dst: &mut [u8]) -> Result<(), QuantError> {
        let group = pack_group_bytes("pack_q5_0_x16", GgmlType::Q5_0, k, src, dst)?;
        let nb = k / QK5_0;
        for (gs, gd) in src.chunks_exact(group).zip(dst.chunks_exact_mut(group)) {
            let rows: &[BlockQ5_0] = cast(gs);
            for (b, chunk) in gd.chunks_exact_mut(CHUNK).enumerate() {
                chunk.fill(0);
                for i in 0..PACK_ROWS {
                    let blk = &rows[i * nb + b];
                    chunk[2 * i..2 * i + 2].copy_from_slice(&blk.d);
                    for g in 0..4 {
                        let at = NIB + 64 * g + 4 * i;
                        chunk[at..at + 4].copy_from_slice(&blk.qs[4 * g..4 * g + 4]);
                    }
                    let qh = u32::from_le_bytes(blk.qh);
                    for l in 0..LANES {
                        let bits = (qh >> (4 * l)) & 0xF;
                        let at = MASKS + 8 * l + i / 2;
                        chunk[at] |= (bits as u8) << (4 * (i % 2));
                    }
                }
            }
        }
        Ok(())
    }

    /// `out[c * n_rows + r] = dot(row r, x_c)` for the `n_rows` packed
    /// rows in `packed` (see [`Kernels::pack_q5_0_x16`]; a multiple of 16)
    /// and `n_cols` activations `xs_q` quantized to Q8_0, back to back:
    /// the bits of [`Kernels::mat_vec`] on the same rows unpacked.
    #[allow(clippy::too_many_arguments)]
    pub fn mat_mat_q5_0_x16(
        &self,
        k: usize,
        packed: &[u8],
        n_rows: usize,
        xs_q: &[u8],
        n_cols: usize,
        out: &mut [f32],
    ) -> Result<(), QuantError> {
        const OP: &str = "mat_mat_q5_0_x16";
        let rb = row_bytes_for(OP, GgmlType::Q5_0, k)?;
        let xb = row_bytes_for(OP, GgmlType::Q8_0, k)?;
        let want = mul(OP, "the activation data", xb, n_cols)?;
        check_len(OP, "the activation data", "bytes", xs_q.len(), want)?;
        let want = mul(OP, "the weight data", rb, n_rows)?;
        check_len(OP, "the weight data", "bytes", packed.len(), want)?;
        let want = mul(OP, "the output", n_rows, n_cols)?;
        check_len(OP, "the output", "values", out.len(), want)?;
        whole(
            OP,
            "the rows (whole groups of 16)",
            "rows",
            n_rows,
            PACK_ROWS,
        )?;
        if k == 0 {
            out.fill(0.0);
            return Ok(());
        }
        let xs: &[BlockQ8_0] = cast(xs_q);
        let nb = k / QK5_0;
        match self.level() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a `Kernels` at this level proves the CPU features;
            // the lengths were checked above.
            KernelLevel::Avx512 => unsafe { avx512::mat_mat(packed, xs, nb, n_rows, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            KernelLevel::Avx2 => unsafe { avx2::mat_mat(packed, xs, nb, n_rows, out) },
            _ => mat_mat_scalar(packed, xs, nb, n_rows, out),
        }
        Ok(())
    }

    /// [`Kernels::mat_mat_q5_0_x16`] for one activation.
    pub fn mat_vec_q5_0_x16(
        &self,
        k: usize,
        packed: &[u8],
        x_q: &[u8],
        out: &mut [f32],
    ) -> Result<(), QuantError> {
        self.mat_mat_q5_0_x16(k, packed, out.len(), x_q, 1, out)
    }
}

/// Row `i` of the group of chunks `group`, block `b`, in the GGUF layout.
fn unpack(chunk: &[u8], i: usize) -> BlockQ5_0 {
    let mut blk = BlockQ5_0 {
        d: [chunk[2 * i], chunk[2 * i + 1]],
        qh: [0; 4],
        qs: [0; 16],
    };
    for g in 0..4 {
        let at = NIB + 64 * g + 4 * i;
        blk.qs[4 * g..4 * g + 4].copy_from_slice(&chunk[at..at + 4]);
    }
    let mut qh = 0u32;
    for l in 0..LANES {
        let bits = (chunk[MASKS + 8 * l + i / 2] >> (4 * (i % 2))) & 0xF;
        qh |= (bits as u32) << (4 * l);
    }
    blk.qh = qh.to_le_bytes();
    blk
}

/// The reference: each row unpacked, then the scalar `vec_dot`.
fn mat_mat_scalar(packed: &[u8], xs: &[BlockQ8_0], nb: usize, n_rows: usize, out: &mut [f32]) {
    let mut row = vec![
        BlockQ5_0 {
            d: [0; 2],
            qh: [0; 4],
            qs: [0; 16]
        };
        nb
    ];
    for g in 0..n_rows / PACK_ROWS {
        let group = &packed[g * nb * CHUNK..(g + 1) * nb * CHUNK];
        for i in 0..PACK_ROWS {
            for (b, blk) in row.iter_mut().enumerate() {
                *blk = unpack(&group[b * CHUNK..(b + 1) * CHUNK], i);
            }
            for (c, x) in xs.chunks_exact(nb).enumerate() {
                out[c * n_rows + g * PACK_ROWS + i] = vec_dot_q5_0_q8_0(&row, x);
            }
        }
    }
}

/// AVX-512 F + BW + VNNI: sixteen rows per register, two tokens per
/// decoded chunk.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{BlockQ8_0, Prepared, CHUNK, LANES, MASKS, NIB, PACK_ROWS, PF_AHEAD};
    use std::arch::x86_64::*;

    /// Tokens per pass over a group.
    const COLS: usize = 2;

    /// # Safety
    ///
    /// The CPU must have this function's features; `packed` holds
    /// `n_rows / 16` groups of `nb` chunks, `xs` whole tokens of `nb`
    /// blocks and `out` `n_rows` values per token (checked by the caller).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn mat_mat(
        packed: &[u8],
        xs: &[BlockQ8_0],
        nb: usize,
        n_rows: usize,
        out: &mut [f32],
    ) {
        let p = Prepared::new(xs, nb, -16);
        let n_cols = xs.len() / nb;
        for g in 0..n_rows / PACK_ROWS {
            let group = &packed[g * nb * CHUNK..(g + 1) * nb * CHUNK];
            let mut c = 0;
            while c < n_cols {
                let (r, done) = if c + COLS <= n_cols {
                    // SAFETY: the features of this function; the group and
                    // the tokens are whole (checked by the caller).
                    (unsafe { group_dot::<COLS>(group, &p, c) }, COLS)
                } else {
                    let mut r = [_mm512_setzero_ps(); COLS];
                    // SAFETY: as above, one token.
                    [r[0]] = unsafe { group_dot::<1>(group, &p, c) };
                    (r, 1)
                };
                for (j, v) in r.iter().take(done).enumerate() {
                    let o = &mut out[(c + j) * n_rows + g * PACK_ROWS..][..PACK_ROWS];
                    // SAFETY: `o` is 16 f32s.
                    unsafe { _mm512_storeu_ps(o.as_mut_ptr(), *v) };
                }
                c += done;
            }
        }
    }

    /// Sixteen rows (one group of `nb` chunks) against tokens `c0..c0 +
    /// C`: per token the sixteen dots, in ggml's per-row float order.
    ///
    /// # Safety
    ///
    /// The features of [`mat_mat`]; `group` is `p.nb` chunks and `p`
    /// holds tokens `c0..c0 + C`.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn group_dot<const C: usize>(group: &[u8], p: &Prepared, c0: usize) -> [__m512; C] {
        let nb = p.nb;
        assert!(group.len() == nb * CHUNK && (c0 + C) * nb <= p.dx.len());
        let low = _mm512_set1_epi8(0x0F);
        let sixteen = _mm512_set1_epi8(16);
        let mut acc = [[_mm512_setzero_ps(); LANES]; C];
        for (b, chunk) in group.chunks_exact(CHUNK).enumerate() {
            let ch = chunk.as_ptr();
            let pf = ch.wrapping_add(PF_AHEAD);
            for i in 0..CHUNK.div_ceil(64) {
                // A hint with no memory effects: it never faults, past
                // the end too.
                _mm_prefetch::<_MM_HINT_T0>(pf.wrapping_add(64 * i).cast());
            }
            // SAFETY: the chunk is CHUNK (352) bytes: scales at 0..32,
            // nibble group g at 32 + 64g .. 96 + 64g, mask l at 288 + 8l.
            let dw = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(ch.cast()) });
            let d: [__m512; C] = core::array::from_fn(|j| {
                _mm512_mul_ps(dw, _mm512_set1_ps(p.dx[(c0 + j) * nb + b]))
            });
            for l in 0..LANES {
                // SAFETY: inside the chunk, as above.
                let nib = unsafe { _mm512_loadu_si512(ch.add(NIB + 64 * (l % 4)).cast()) };
                let lo = if l < 4 {
                    _mm512_and_si512(nib, low)
                } else {
                    _mm512_and_si512(_mm512_srli_epi16::<4>(nib), low)
                };
                // SAFETY: inside the chunk, as above (unaligned u64).
                let bits = unsafe { ch.add(MASKS + 8 * l).cast::<u64>().read_unaligned() };
                let w = _mm512_mask_add_epi8(lo, _cvtu64_mask64(bits), lo, sixteen);
                for j in 0..C {
                    let t = (c0 + j) * nb + b;
                    let q = _mm512_dpbusd_epi32(
                        _mm512_set1_epi32(p.off[t][l]),
                        w,
                        _mm512_set1_epi32(p.q[t][l]),
                    );
                    acc[j][l] = _mm512_fmadd_ps(d[j], _mm512_cvtepi32_ps(q), acc[j][l]);
                }
            }
        }
        // ggml's hsum_float_8 per row: ((l0 + l4) + (l2 + l6)) +
        // ((l1 + l5) + (l3 + l7)).
        core::array::from_fn(|j| {
            let a = &acc[j];
            let t: [__m512; 4] = core::array::from_fn(|i| _mm512_add_ps(a[i + 4], a[i]));
            _mm512_add_ps(_mm512_add_ps(t[0], t[2]), _mm512_add_ps(t[1], t[3]))
        })
    }
}

/// AVX2 + FMA + F16C: eight rows per register, one token at a time.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{BlockQ8_0, Prepared, CHUNK, LANES, MASKS, NIB, PACK_ROWS, PF_AHEAD};
    use crate::quant::x86::bytes_from_bits_32;
    use std::arch::x86_64::*;

    /// # Safety
    ///
    /// As for the AVX-512 `mat_mat`, with this function's features.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn mat_mat(
        packed: &[u8],
        xs: &[BlockQ8_0],
        nb: usize,
        n_rows: usize,
        out: &mut [f32],
    ) {
        let p = Prepared::new(xs, nb, -16);
        let n_cols = xs.len() / nb;
        let low = _mm256_set1_epi8(0x0F);
        let sixteen = _mm256_set1_epi8(16);
        let ones = _mm256_set1_epi16(1);
        for g in 0..n_rows / PACK_ROWS {
            let group = &packed[g * nb * CHUNK..(g + 1) * nb * CHUNK];
            for c in 0..n_cols {
                for half in 0..2 {
                    let mut acc = [_mm256_setzero_ps(); LANES];
                    for (b, chunk) in group.chunks_exact(CHUNK).enumerate() {
                        let ch = chunk.as_ptr();
                        if half == 0 {
                            let pf = ch.wrapping_add(PF_AHEAD);
                            for i in 0..CHUNK.div_ceil(64) {
                                // A hint: it never faults.
                                _mm_prefetch::<_MM_HINT_T0>(pf.wrapping_add(64 * i).cast());
                            }
                        }
                        let t = c * nb + b;
                        // SAFETY: the half's eight scales are bytes 16 *
                        // half .. + 16 of the 352-byte chunk.
                        let dw =
                            _mm256_cvtph_ps(unsafe { _mm_loadu_si128(ch.add(16 * half).cast()) });
                        let d = _mm256_mul_ps(dw, _mm256_set1_ps(p.dx[t]));
                        for l in 0..LANES {
                            // SAFETY: the half's 32 bytes of nibble group
                            // l % 4 are inside the chunk.
                            let nib = unsafe {
                                _mm256_loadu_si256(ch.add(NIB + 64 * (l % 4) + 32 * half).cast())
                            };
                            let lo = if l < 4 {
                                _mm256_and_si256(nib, low)
                            } else {
                                _mm256_and_si256(_mm256_srli_epi16::<4>(nib), low)
                            };
                            // SAFETY: the half's 32 mask bits are inside
                            // the chunk (unaligned u32).
                            let bits = unsafe {
                                ch.add(MASKS + 8 * l + 4 * half)
                                    .cast::<u32>()
                                    .read_unaligned()
                            };
                            let hi = _mm256_and_si256(bytes_from_bits_32(bits), sixteen);
                            let w = _mm256_or_si256(lo, hi);
                            let y = _mm256_set1_epi32(p.q[t][l]);
                            let dot = _mm256_add_epi32(
                                _mm256_madd_epi16(_mm256_maddubs_epi16(w, y), ones),
                                _mm256_set1_epi32(p.off[t][l]),
                            );
                            acc[l] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot), acc[l]);
                        }
                    }
                    let t: [__m256; 4] =
                        core::array::from_fn(|i| _mm256_add_ps(acc[i + 4], acc[i]));
                    let r = _mm256_add_ps(_mm256_add_ps(t[0], t[2]), _mm256_add_ps(t[1], t[3]));
                    let o = &mut out[c * n_rows + g * PACK_ROWS + 8 * half..][..8];
                    // SAFETY: `o` is 8 f32s.
                    unsafe { _mm256_storeu_ps(o.as_mut_ptr(), r) };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::testutil;

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// Packed products equal the plain kernels' (and the scalar
    /// reference's) bit for bit at every level, for one token and for
    /// passes of several (odd counts included), with extreme values.
    #[test]
    fn packed_mat_mat_equals_plain_mat_vec() {
        let k = 640;
        let rows = 48;
        let rb = 20 * 22;
        let scalar = Kernels::scalar();
        let mut rng = testutil::Rng::new(5);
        let mut w = Vec::new();
        for _ in 0..rows {
            w.extend(testutil::random_row(GgmlType::Q5_0, k, &mut rng));
        }
        // Row 7, block 2: every value 0 (q - 16 = -16) and row 9, block 4:
        // every value 31.
        w[7 * rb + 2 * 22 + 2..7 * rb + 3 * 22].fill(0);
        w[9 * rb + 4 * 22 + 2..9 * rb + 5 * 22].fill(0xFF);
        let n_cols = 5;
        let mut xs = Vec::new();
        for _ in 0..n_cols {
            let xv = testutil::random_activation_f32(k, &mut rng);
            xs.extend(testutil::quantize_activation(GgmlType::Q5_0, &xv));
        }
        let xb = xs.len() / n_cols;
        let mut plain = vec![0f32; rows * n_cols];
        for (c, o) in plain.chunks_exact_mut(rows).enumerate() {
            scalar
                .mat_vec(GgmlType::Q5_0, k, &w, &xs[c * xb..(c + 1) * xb], o)
                .unwrap();
        }
        let mut packed = vec![0u8; w.len()];
        scalar.pack_q5_0_x16(k, &w, &mut packed).unwrap();
        assert_ne!(packed, w);
        for (g, chunk) in packed.chunks_exact(CHUNK).enumerate() {
            let (grp, b) = (g / 20, g % 20);
            for i in 0..PACK_ROWS {
                let off = (grp * PACK_ROWS + i) * rb + b * 22;
                assert_eq!(unpack(chunk, i), cast::<BlockQ5_0>(&w[off..off + 22])[0]);
            }
        }
        for kern in testutil::all_kernels() {
            for n in [1, 2, 3, n_cols] {
                let mut got = vec![0f32; rows * n];
                kern.mat_mat_q5_0_x16(k, &packed, rows, &xs[..n * xb], n, &mut got)
                    .unwrap();
                assert_eq!(
                    bits(&got),
                    bits(&plain[..rows * n]),
                    "{:?} packed, {n} tokens",
                    kern.level()
                );
            }
            let mut want = vec![0f32; rows];
            kern.mat_vec(GgmlType::Q5_0, k, &w, &xs[..xb], &mut want)
                .unwrap();
            assert_eq!(
                bits(&want),
                bits(&plain[..rows]),
                "{:?} plain",
                kern.level()
            );
            let mut got = vec![0f32; rows];
            kern.mat_vec_q5_0_x16(k, &packed, &xs[..xb], &mut got)
                .unwrap();
            assert_eq!(
                bits(&got),
                bits(&plain[..rows]),
                "{:?} mat_vec",
                kern.level()
            );
        }
    }

    #[test]
    fn packing_rejects_partial_groups_and_wrong_lengths() {
        let kern = Kernels::scalar();
        let w = vec![0u8; 15 * 44];
        let mut d = vec![0u8; w.len()];
        assert!(kern.pack_q5_0_x16(64, &w, &mut d).is_err());
        let w = vec![0u8; 16 * 44];
        let mut d = vec![0u8; w.len() - 1];
        assert!(kern.pack_q5_0_x16(64, &w, &mut d).is_err());
        let mut out = vec![0f32; 32];
        let x = vec![0u8; 2 * 68];
        assert!(kern
            .mat_mat_q5_0_x16(64, &w[..100], 16, &x, 2, &mut out)
            .is_err());
        assert!(kern
            .mat_mat_q5_0_x16(64, &w, 16, &x[..68], 2, &mut out)
            .is_err());
        assert!(kern
            .mat_mat_q5_0_x16(64, &w, 16, &x, 2, &mut out[..31])
            .is_err());
        assert!(kern
            .mat_mat_q5_0_x16(64, &w[..15 * 44], 15, &x, 2, &mut out[..30])
            .is_err());
        assert!(kern.mat_mat_q5_0_x16(64, &w, 16, &x, 2, &mut out).is_ok());
        assert!(kern
            .mat_vec_q5_0_x16(64, &w, &x[..68], &mut out[..16])
            .is_ok());
    }
}

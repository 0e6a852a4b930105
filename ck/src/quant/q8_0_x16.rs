//! Q8_0 weights packed sixteen rows at a time, for the output head.
//!
//! The head of a Q8_0 model (Gemma-3's tied 262144 x 640 table, 178 MB)
//! is most of a decode step's weight bytes, read once per token by one
//! matrix-vector product. In the GGUF layout each row is a run of 34-byte
//! blocks: a kernel assembles the scales of its rows one by one and loads
//! quants that straddle cache lines, and does not keep up with memory.
//! Packed, sixteen rows' block `b` is one 544-byte chunk: their sixteen f16
//! scales (32 bytes), then eight 64-byte lanes, lane `l` holding bytes
//! `4l..4l + 4` of each of the sixteen rows in row order. A 512-bit
//! register then holds lane `l` of sixteen rows, one `vpdpbusd` makes the
//! sixteen exact integer sums ggml's AVX2 `vec_dot` computes in its lane
//! `l`, and one FMA applies sixteen scales: the same float operations on
//! the same values per row, so the bits are ggml's (and those of the
//! plain kernels), tested below. Chunks follow each other by block, then
//! by group of rows, so one group is one sequential stream.
//!
//! The packing is a permutation of the bytes: a packed tensor has exactly
//! the size of the GGUF one (34 bytes per 32 values). Only tensors with a
//! multiple of sixteen rows are packed.

use super::q8_0::{vec_dot_q8_0_q8_0, BlockQ8_0, QK8_0};
use super::{cast, check_len, mul, row_bytes_for, KernelLevel, Kernels, QuantError};
use crate::gguf::GgmlType;

/// Rows per packed group.
pub const PACK_ROWS: usize = 16;
/// Bytes of one group's block: 16 scales, then 16 x 32 quants.
const CHUNK: usize = PACK_ROWS * 34;
const LANES: usize = 8;
const PF_AHEAD: usize = 8192;

/// The offset in a group's chunk of row `i`'s scale, and of its quant
/// byte `j`.
#[inline(always)]
fn scale_at(i: usize) -> usize {
    2 * i
}
#[inline(always)]
fn quant_at(i: usize, j: usize) -> usize {
    32 + (j / 4) * 64 + i * 4 + j % 4
}

/// An error unless `got` is a multiple of `group`.
pub(super) fn whole(
    op: &'static str,
    what: &'static str,
    unit: &'static str,
    got: usize,
    group: usize,
) -> Result<(), QuantError> {
    check_len(op, what, unit, got, got / group * group)
}

/// The checks of a sixteen-row packing of `src` (rows of `k` values of
/// type `ty`) into `dst`: the same size, whole groups. Returns the bytes
/// of one group.
pub(super) fn pack_group_bytes(
    op: &'static str,
    ty: GgmlType,
    k: usize,
    src: &[u8],
    dst: &[u8],
) -> Result<usize, QuantError> {
    let rb = row_bytes_for(op, ty, k)?;
    check_len(op, "dst", "bytes", dst.len(), src.len())?;
    let group = mul(op, "a group", 16, rb)?;
    whole(
        op,
        "the weight data (whole groups of 16 rows)",
        "bytes",
        src.len(),
        group,
    )?;
    Ok(group)
}

impl Kernels {
    /// Packs `src` (rows of `k` Q8_0 values in the GGUF layout, a
    /// multiple of [`PACK_ROWS`] rows) into `dst`, of the same size.
    pub fn pack_q8_0_x16(&self, k: usize, src: &[u8], dst: &mut [u8]) -> Result<(), QuantError> {
        let group = pack_group_bytes("pack_q8_0_x16", GgmlType::Q8_0, k, src, dst)?;
        let nb = k / QK8_0;
        for (gs, gd) in src.chunks_exact(group).zip(dst.chunks_exact_mut(group)) {
            let rows: &[BlockQ8_0] = cast(gs);
            for (b, chunk) in gd.chunks_exact_mut(CHUNK).enumerate() {
                for i in 0..PACK_ROWS {
                    let blk = &rows[i * nb + b];
                    chunk[scale_at(i)..scale_at(i) + 2].copy_from_slice(&blk.d);
                    for (j, &q) in blk.qs.iter().enumerate() {
                        chunk[quant_at(i, j)] = q as u8;
                    }
                }
            }
        }
        Ok(())
    }

    /// `out[r] = dot(row r, x)` for the packed rows in `packed` (see
    /// [`Kernels::pack_q8_0_x16`]; `out.len()` rows, a multiple of 16) and
    /// one activation `x_q` quantized to Q8_0, in the bits of
    /// [`Kernels::mat_vec`] on the same rows unpacked.
    pub fn mat_vec_q8_0_x16(
        &self,
        k: usize,
        packed: &[u8],
        x_q: &[u8],
        out: &mut [f32],
    ) -> Result<(), QuantError> {
        const OP: &str = "mat_vec_q8_0_x16";
        let rb = row_bytes_for(OP, GgmlType::Q8_0, k)?;
        check_len(OP, "the activation data", "bytes", x_q.len(), rb)?;
        let want = mul(OP, "the weight data", rb, out.len())?;
        check_len(OP, "the weight data", "bytes", packed.len(), want)?;
        whole(
            OP,
            "the output (whole groups of 16 rows)",
            "rows",
            out.len(),
            PACK_ROWS,
        )?;
        if k == 0 {
            out.fill(0.0);
            return Ok(());
        }
        let x: &[BlockQ8_0] = cast(x_q);
        match self.level() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a `Kernels` at this level proves the CPU features;
            // the lengths were checked above.
            KernelLevel::Avx512 => unsafe { avx512::mat_vec(packed, x, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            KernelLevel::Avx2 => unsafe { avx2::mat_vec(packed, x, out) },
            _ => mat_vec_scalar(packed, x, out),
        }
        Ok(())
    }
}

/// The reference: each row unpacked, then the scalar `vec_dot`.
fn mat_vec_scalar(packed: &[u8], x: &[BlockQ8_0], out: &mut [f32]) {
    let nb = x.len();
    let mut row = vec![BlockQ8_0::ZERO; nb];
    for (g, outs) in out.chunks_exact_mut(PACK_ROWS).enumerate() {
        let group = &packed[g * nb * CHUNK..(g + 1) * nb * CHUNK];
        for (i, o) in outs.iter_mut().enumerate() {
            for (b, blk) in row.iter_mut().enumerate() {
                let chunk = &group[b * CHUNK..(b + 1) * CHUNK];
                blk.d.copy_from_slice(&chunk[scale_at(i)..scale_at(i) + 2]);
                for (j, q) in blk.qs.iter_mut().enumerate() {
                    *q = chunk[quant_at(i, j)] as i8;
                }
            }
            *o = vec_dot_q8_0_q8_0(&row, x);
        }
    }
}

/// Activations prepared once per call for the packed kernels (here and
/// in `q5_0_x16`): per token and block the scale, and per lane the four
/// bytes and `bias x` their sum (the `vpdpbusd` offset that turns the
/// kernel's unsigned weight bytes back into the signed values).
#[cfg(target_arch = "x86_64")]
pub(super) struct Prepared {
    pub(super) nb: usize,
    /// `[token * nb + block]`.
    pub(super) dx: Vec<f32>,
    /// `[token * nb + block][lane]`, the lane's four bytes as one
    /// little-endian i32.
    pub(super) q: Vec<[i32; LANES]>,
    /// `[token * nb + block][lane]`, `bias * (sum of the lane's values)`.
    pub(super) off: Vec<[i32; LANES]>,
}

#[cfg(target_arch = "x86_64")]
impl Prepared {
    /// `xs`: whole tokens of `nb` blocks.
    pub(super) fn new(xs: &[BlockQ8_0], nb: usize, bias: i32) -> Prepared {
        let mut p = Prepared {
            nb,
            dx: Vec::with_capacity(xs.len()),
            q: Vec::with_capacity(xs.len()),
            off: Vec::with_capacity(xs.len()),
        };
        for blk in xs {
            p.dx.push(blk.d());
            let mut q = [0i32; LANES];
            let mut off = [0i32; LANES];
            for l in 0..LANES {
                let b = &blk.qs[4 * l..4 * l + 4];
                q[l] = i32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8]);
                off[l] = bias * b.iter().map(|&v| v as i32).sum::<i32>();
            }
            p.q.push(q);
            p.off.push(off);
        }
        p
    }
}

/// AVX-512 F + VNNI: sixteen rows per register.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{BlockQ8_0, Prepared, CHUNK, LANES, PACK_ROWS, PF_AHEAD};
    use std::arch::x86_64::*;

    /// Bytes ahead of the chunk being read that the kernel prefetches.
    const AHEAD: usize = PF_AHEAD;

    /// Touches the cache lines of the chunk `AHEAD` bytes on: a hint,
    /// never dereferenced (prefetches do not fault), past the end too.
    #[inline(always)]
    fn prefetch_ahead(c: *const u8) {
        let p = c.wrapping_add(AHEAD);
        for i in 0..(CHUNK + 63) / 64 {
            // SAFETY: prefetch has no memory effects and never faults.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(64 * i).cast()) };
        }
    }

    /// # Safety
    ///
    /// The CPU must have this function's features; `packed` holds
    /// `out.len() / 16` groups of `x.len()` chunks and `out.len()` is a
    /// multiple of 16 (checked by the caller).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn mat_vec(packed: &[u8], x: &[BlockQ8_0], out: &mut [f32]) {
        let nb = x.len();
        let p = Prepared::new(x, nb, -128);
        let flip = _mm512_set1_epi8(-128);
        for (g, outs) in out.chunks_exact_mut(PACK_ROWS).enumerate() {
            let group = &packed[g * nb * CHUNK..(g + 1) * nb * CHUNK];
            let mut acc = [_mm512_setzero_ps(); LANES];
            for (b, chunk) in group.chunks_exact(CHUNK).enumerate() {
                let c = chunk.as_ptr();
                prefetch_ahead(c);
                // SAFETY: `chunk` is CHUNK (544) bytes: the scales are its
                // first 32, lane l its bytes 32 + 64l .. 96 + 64l.
                let dw = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(c.cast()) });
                let d = _mm512_mul_ps(dw, _mm512_set1_ps(p.dx[b]));
                for l in 0..LANES {
                    // SAFETY: lane l's 64 bytes are inside the chunk.
                    let w = unsafe { _mm512_loadu_si512(c.add(32 + 64 * l).cast()) };
                    let q = _mm512_dpbusd_epi32(
                        _mm512_set1_epi32(p.off[b][l]),
                        _mm512_xor_si512(w, flip),
                        _mm512_set1_epi32(p.q[b][l]),
                    );
                    acc[l] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(q), acc[l]);
                }
            }
            // ggml's hsum_float_8 per row: ((l0 + l4) + (l2 + l6)) +
            // ((l1 + l5) + (l3 + l7)).
            let t: [__m512; 4] = core::array::from_fn(|i| _mm512_add_ps(acc[i + 4], acc[i]));
            let r = _mm512_add_ps(_mm512_add_ps(t[0], t[2]), _mm512_add_ps(t[1], t[3]));
            // SAFETY: `outs` is 16 f32s.
            unsafe { _mm512_storeu_ps(outs.as_mut_ptr(), r) };
        }
    }
}

/// AVX2 + FMA + F16C: eight rows per register, ggml's sign trick.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{BlockQ8_0, Prepared, CHUNK, LANES, PACK_ROWS};
    use std::arch::x86_64::*;

    /// # Safety
    ///
    /// As for the AVX-512 `mat_vec`, with this function's features.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn mat_vec(packed: &[u8], x: &[BlockQ8_0], out: &mut [f32]) {
        let nb = x.len();
        let p = Prepared::new(x, nb, -128);
        let ones = _mm256_set1_epi16(1);
        for (g, outs) in out.chunks_exact_mut(PACK_ROWS).enumerate() {
            let group = &packed[g * nb * CHUNK..(g + 1) * nb * CHUNK];
            for half in 0..2 {
                let mut acc = [_mm256_setzero_ps(); LANES];
                for (b, chunk) in group.chunks_exact(CHUNK).enumerate() {
                    let c = chunk.as_ptr();
                    // SAFETY: `chunk` is 544 bytes; the half's eight
                    // scales are bytes 16 * half .. 16 * half + 16, lane
                    // l's eight rows bytes 32 + 64l + 32 * half .. + 32.
                    let dw = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(c.add(16 * half).cast()) });
                    let d = _mm256_mul_ps(dw, _mm256_set1_ps(p.dx[b]));
                    for l in 0..LANES {
                        // SAFETY: the half's 32 bytes of lane l are inside the chunk.
                        let w =
                            unsafe { _mm256_loadu_si256(c.add(32 + 64 * l + 32 * half).cast()) };
                        let y = _mm256_set1_epi32(p.q[b][l]);
                        // ggml's mul_sum_i8_pairs_float: |w| times y with
                        // w's sign, pairs to i16, then pairs of pairs.
                        let ax = _mm256_sign_epi8(w, w);
                        let sy = _mm256_sign_epi8(y, w);
                        let dot = _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), ones);
                        acc[l] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot), acc[l]);
                    }
                }
                let t: [__m256; 4] = core::array::from_fn(|i| _mm256_add_ps(acc[i + 4], acc[i]));
                let r = _mm256_add_ps(_mm256_add_ps(t[0], t[2]), _mm256_add_ps(t[1], t[3]));
                // SAFETY: `outs` is 16 f32s; this half is 8 of them.
                unsafe { _mm256_storeu_ps(outs.as_mut_ptr().add(8 * half), r) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::testutil;

    fn data(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = testutil::Rng::new(seed);
        (0..n).map(|_| rng.range(-2.0, 2.0)).collect()
    }

    /// Packed products equal the plain kernels' (and the scalar
    /// reference's) bit for bit at every level, with extreme values
    /// (-128 quants, whose sign trick saturates as in ggml) included.
    #[test]
    fn packed_mat_vec_equals_plain_mat_vec() {
        let k = 640;
        let rows = 48;
        let scalar = Kernels::scalar();
        let mut w = vec![0u8; rows * 680];
        let vals = data(rows * k, 7);
        for (r, dst) in w.chunks_exact_mut(680).enumerate() {
            scalar
                .quantize_row(GgmlType::Q8_0, &vals[r * k..(r + 1) * k], dst)
                .unwrap();
        }
        // Row 5, block 3: all -128 (amax at a negative value).
        for q in &mut w[5 * 680 + 3 * 34 + 2..5 * 680 + 4 * 34] {
            *q = 0x80;
        }
        let mut x = vec![0u8; 680];
        let mut xv = data(k, 11);
        xv[96..128].iter_mut().for_each(|v| *v = -1.0);
        scalar.quantize_row(GgmlType::Q8_0, &xv, &mut x).unwrap();
        let mut plain = vec![0f32; rows];
        scalar
            .mat_vec(GgmlType::Q8_0, k, &w, &x, &mut plain)
            .unwrap();
        let mut packed = vec![0u8; w.len()];
        scalar.pack_q8_0_x16(k, &w, &mut packed).unwrap();
        assert_ne!(packed, w);
        for kern in testutil::all_kernels() {
            let mut got = vec![0f32; rows];
            kern.mat_vec_q8_0_x16(k, &packed, &x, &mut got).unwrap();
            let mut want = vec![0f32; rows];
            kern.mat_vec(GgmlType::Q8_0, k, &w, &x, &mut want).unwrap();
            assert_eq!(
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                plain.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{:?} plain",
                kern.level()
            );
            assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                plain.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{:?} packed",
                kern.level()
            );
        }
    }

    #[test]
    fn packing_rejects_partial_groups_and_wrong_lengths() {
        let kern = Kernels::scalar();
        let w = vec![0u8; 15 * 68];
        let mut d = vec![0u8; w.len()];
        assert!(kern.pack_q8_0_x16(64, &w, &mut d).is_err());
        let w = vec![0u8; 16 * 68];
        let mut d = vec![0u8; w.len() - 1];
        assert!(kern.pack_q8_0_x16(64, &w, &mut d).is_err());
        let mut out = vec![0f32; 16];
        let x = vec![0u8; 68];
        assert!(kern.mat_vec_q8_0_x16(64, &w[..100], &x, &mut out).is_err());
        assert!(kern.mat_vec_q8_0_x16(64, &w, &x[..34], &mut out).is_err());
        assert!(kern
            .mat_vec_q8_0_x16(64, &w[..15 * 68], &x, &mut out[..15])
            .is_err());
        assert!(kern.mat_vec_q8_0_x16(64, &w, &x, &mut out).is_ok());
    }
}

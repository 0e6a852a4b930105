//! AVX2 twins of the repack arithmetic in [`super::repack`]: the integer
//! block sums in vector registers, the float chain of each output element
//! exactly as the scalar code runs it (one lane per weight row, the same
//! FMA per block), so both return the same bits. The AVX-512 level runs
//! these too (its features include AVX2, FMA and F16C).

use std::arch::x86_64::*;

use super::q4_0::BlockQ4_0;
use super::q4_k::BlockQ4K;
use super::q8_0::BlockQ8_0;
use super::q8_k::BlockQ8K;
use super::x86::{bytes_from_nibbles_32, dot_u8i8_lanes, hsum_i32_8, sum4_times};

/// Eight vectors of eight i32 lanes to one vector of their eight sums
/// (lane `i` = the sum of `v[i]`); exact.
///
/// # Safety
///
/// AVX2.
#[inline(always)]
unsafe fn hsum_8x8(v: [__m256i; 8]) -> __m256i {
    let h01 = _mm256_hadd_epi32(v[0], v[1]);
    let h23 = _mm256_hadd_epi32(v[2], v[3]);
    let h45 = _mm256_hadd_epi32(v[4], v[5]);
    let h67 = _mm256_hadd_epi32(v[6], v[7]);
    let h0123 = _mm256_hadd_epi32(h01, h23);
    let h4567 = _mm256_hadd_epi32(h45, h67);
    let lo = _mm256_permute2x128_si256(h0123, h4567, 0x20);
    let hi = _mm256_permute2x128_si256(h0123, h4567, 0x31);
    _mm256_add_epi32(lo, hi)
}

/// The repacked Q4_0 arithmetic (`acc = fma(isum, dw * da, acc)` per
/// block) for `out.len()` rows of `x.len()` blocks, eight rows at a time
/// in the lanes, the remaining rows by `tail`.
///
/// # Safety
///
/// AVX2, FMA and F16C; `rows.len() == out.len() * x.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn rows_repack_q4_0(
    rows: &[BlockQ4_0],
    x: &[BlockQ8_0],
    out: &mut [f32],
    tail: fn(&[BlockQ4_0], &[BlockQ8_0]) -> f32,
) {
    let nb = x.len();
    assert_eq!(rows.len(), nb * out.len(), "repack: rows/blocks mismatch");
    let groups = out.len() / 8;
    for g in 0..groups {
        let rg = &rows[8 * g * nb..8 * (g + 1) * nb];
        let mut acc = _mm256_setzero_ps();
        for (b, xb) in x.iter().enumerate() {
            // SAFETY (loads): every pointer is into a block borrowed above;
            // unaligned loads.
            let y = _mm256_loadu_si256(xb.qs.as_ptr().cast());
            let off = sum4_times(y, 8);
            let mut v = [_mm256_setzero_si256(); 8];
            let mut d = [0i16; 8];
            for i in 0..8 {
                let w = &rg[i * nb + b];
                v[i] = _mm256_sub_epi32(dot_u8i8_lanes(bytes_from_nibbles_32(&w.qs), y), off);
                d[i] = i16::from_le_bytes(w.d);
            }
            let isum = hsum_8x8(v);
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(d.as_ptr().cast()));
            let da = _mm256_set1_ps(xb.d());
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(dw, da), acc);
        }
        _mm256_storeu_ps(out[8 * g..].as_mut_ptr(), acc);
    }
    for (r, o) in out.iter_mut().enumerate().skip(8 * groups) {
        *o = tail(&rows[r * nb..(r + 1) * nb], x);
    }
}

/// The scaled 4-bit sums of the four 64-value chunks of a Q4_K
/// super-block: chunk `c` is `sc_2c * dot_2c + sc_2c+1 * dot_2c+1`
/// (exact: a `maddubs` pair is at most 2 * 15 * 127).
///
/// # Safety
///
/// AVX2.
#[inline(always)]
unsafe fn q4k_chunk_sums(w: &BlockQ4K, x: &BlockQ8K, sc: &[u8; 8]) -> [i32; 4] {
    let m4 = _mm256_set1_epi8(0x0F);
    let mut out = [0i32; 4];
    for c in 0..4 {
        // SAFETY (loads): 32 bytes inside `w.qs` / `x.qs`; unaligned.
        let q = _mm256_loadu_si256(w.qs[32 * c..].as_ptr().cast());
        let lo = _mm256_and_si256(q, m4);
        let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
        let ylo = _mm256_loadu_si256(x.qs[64 * c..].as_ptr().cast());
        let yhi = _mm256_loadu_si256(x.qs[64 * c + 32..].as_ptr().cast());
        let plo = _mm256_maddubs_epi16(lo, ylo);
        let phi = _mm256_maddubs_epi16(hi, yhi);
        let s = _mm256_add_epi32(
            _mm256_madd_epi16(plo, _mm256_set1_epi16(sc[2 * c] as i16)),
            _mm256_madd_epi16(phi, _mm256_set1_epi16(sc[2 * c + 1] as i16)),
        );
        out[c] = hsum_i32_8(s);
    }
    out
}

/// The exact integer parts of one Q4_K super-block against one Q8_K
/// block: the per-chunk scaled sums ([`q4k_chunk_sums`]) and the mins
/// term of each chunk (`m_2c * bsum_2c + m_2c+1 * bsum_2c+1`).
///
/// # Safety
///
/// AVX2.
#[inline(always)]
unsafe fn q4k_parts(w: &BlockQ4K, x: &BlockQ8K) -> ([i32; 4], [i32; 4]) {
    let (sc, m) = super::kquant::scales_mins_k4(&w.scales);
    let sums = q4k_chunk_sums(w, x, &sc);
    let mut mins = [0i32; 4];
    for (c, o) in mins.iter_mut().enumerate() {
        let b0 = x.bsum(4 * c) as i32 + x.bsum(4 * c + 1) as i32;
        let b1 = x.bsum(4 * c + 2) as i32 + x.bsum(4 * c + 3) as i32;
        *o = m[2 * c] as i32 * b0 + m[2 * c + 1] as i32 * b1;
    }
    (sums, mins)
}

/// Which Q4_K float chain [`rows_q4k`] runs (see [`super::repack`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Q4KChain {
    Gemv,
    Gemm,
    Tiled,
}

/// `out[r]` for each row of Q4_K blocks against one Q8_K activation, with
/// the float chain `chain`, exactly as the scalar code adds.
///
/// # Safety
///
/// AVX2, FMA and F16C; `rows.len() == out.len() * x.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn rows_q4k(rows: &[BlockQ4K], x: &[BlockQ8K], out: &mut [f32], chain: Q4KChain) {
    let nb = x.len();
    assert_eq!(rows.len(), nb * out.len(), "repack: rows/blocks mismatch");
    for (o, row) in out.iter_mut().zip(rows.chunks_exact(nb)) {
        let (mut acc, mut accm) = (0.0f32, 0.0f32);
        for (a, b) in row.iter().zip(x) {
            let (sums, mins) = q4k_parts(a, b);
            let da = b.d();
            match chain {
                Q4KChain::Gemv => {
                    let sumi: i32 = sums.iter().sum();
                    let summ: i32 = mins.iter().sum();
                    acc = (sumi as f32).mul_add(a.d() * da, acc);
                    accm = (summ as f32).mul_add(a.dmin() * da, accm);
                }
                Q4KChain::Gemm => {
                    let (s, sm) = (a.d() * da, a.dmin() * da);
                    for c in 0..4 {
                        acc = (sums[c] as f32).mul_add(s, acc);
                        accm = (mins[c] as f32).mul_add(sm, accm);
                    }
                }
                Q4KChain::Tiled => {
                    let sumi: i32 = sums.iter().sum();
                    let summ: i32 = mins.iter().sum();
                    let res = (-a.dmin()).mul_add(summ as f32, sumi as f32 * a.d());
                    acc = res.mul_add(da, acc);
                }
            }
        }
        *o = acc - accm;
    }
}

/// The repacked Q4_K GEMM chain (`Q4KChain::Gemm`) for eight rows (in the
/// vector lanes) against `C` tokens: each weight block's nibbles and
/// scales are decoded once for all `C` tokens, and each chunk's eight row
/// sums are folded together ([`hsum_8x8`]). Per (row, token) the float
/// chain is [`rows_q4k`]'s: per chunk `acc = fma(sum, d * da, acc)` and
/// `accm = fma(min, dmin * da, accm)`, then `acc - accm`.
///
/// # Safety
///
/// AVX2, FMA and F16C; `rows.len() == 8 * nb`, each `xs[j].len() == nb`.
#[inline(always)]
unsafe fn q4k_gemm_tile<const C: usize>(rows: &[BlockQ4K], xs: [&[BlockQ8K]; C]) -> [__m256; C] {
    let nb = xs[0].len();
    assert_eq!(rows.len(), 8 * nb, "repack: gemm tile rows/blocks mismatch");
    for x in &xs {
        assert_eq!(x.len(), nb, "repack: gemm tile activation length");
    }
    let m4 = _mm256_set1_epi8(0x0F);
    let mut acc = [_mm256_setzero_ps(); C];
    let mut accm = [_mm256_setzero_ps(); C];
    for b in 0..nb {
        // The eight rows' scales (i16, for `madd`) and mins (i32 lanes).
        let mut sc = [[0i16; 8]; 8];
        let mut mn = [[0i32; 8]; 8];
        let mut d = [0i16; 8];
        let mut dm = [0i16; 8];
        for i in 0..8 {
            let w = &rows[i * nb + b];
            let (s, m) = super::kquant::scales_mins_k4(&w.scales);
            for k in 0..8 {
                sc[i][k] = s[k] as i16;
                mn[k][i] = m[k] as i32;
            }
            d[i] = i16::from_le_bytes(w.d);
            dm[i] = i16::from_le_bytes(w.dmin);
        }
        let dw = _mm256_cvtph_ps(_mm_loadu_si128(d.as_ptr().cast()));
        let dmw = _mm256_cvtph_ps(_mm_loadu_si128(dm.as_ptr().cast()));
        let mut s = [_mm256_setzero_ps(); C];
        let mut sm = [_mm256_setzero_ps(); C];
        for j in 0..C {
            let da = _mm256_set1_ps(xs[j][b].d());
            s[j] = _mm256_mul_ps(dw, da);
            sm[j] = _mm256_mul_ps(dmw, da);
        }
        for c in 0..4 {
            let mut lo = [_mm256_setzero_si256(); 8];
            let mut hi = [_mm256_setzero_si256(); 8];
            for i in 0..8 {
                // SAFETY (loads): 32 bytes inside the block's `qs`.
                let q = _mm256_loadu_si256(rows[i * nb + b].qs[32 * c..].as_ptr().cast());
                lo[i] = _mm256_and_si256(q, m4);
                hi[i] = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            }
            let mlo = _mm256_loadu_si256(mn[2 * c].as_ptr().cast());
            let mhi = _mm256_loadu_si256(mn[2 * c + 1].as_ptr().cast());
            for j in 0..C {
                let x = &xs[j][b];
                // SAFETY (loads): 64 bytes inside the block's `qs`.
                let ylo = _mm256_loadu_si256(x.qs[64 * c..].as_ptr().cast());
                let yhi = _mm256_loadu_si256(x.qs[64 * c + 32..].as_ptr().cast());
                let mut v = [_mm256_setzero_si256(); 8];
                for i in 0..8 {
                    let plo = _mm256_maddubs_epi16(lo[i], ylo);
                    let phi = _mm256_maddubs_epi16(hi[i], yhi);
                    v[i] = _mm256_add_epi32(
                        _mm256_madd_epi16(plo, _mm256_set1_epi16(sc[i][2 * c])),
                        _mm256_madd_epi16(phi, _mm256_set1_epi16(sc[i][2 * c + 1])),
                    );
                }
                let sums = hsum_8x8(v);
                let b0 = x.bsum(4 * c) as i32 + x.bsum(4 * c + 1) as i32;
                let b1 = x.bsum(4 * c + 2) as i32 + x.bsum(4 * c + 3) as i32;
                let mins = _mm256_add_epi32(
                    _mm256_mullo_epi32(mlo, _mm256_set1_epi32(b0)),
                    _mm256_mullo_epi32(mhi, _mm256_set1_epi32(b1)),
                );
                acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), s[j], acc[j]);
                accm[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(mins), sm[j], accm[j]);
            }
        }
    }
    let mut out = [_mm256_setzero_ps(); C];
    for j in 0..C {
        out[j] = _mm256_sub_ps(acc[j], accm[j]);
    }
    out
}

/// `out[c * n_rows + r]` = row `r` against token `c` with the repacked
/// Q4_K GEMM chain, bit for bit [`rows_q4k`] with `Q4KChain::Gemm` per
/// token: eight rows by four tokens per tile, the rows past the last
/// multiple of eight by `rows_q4k`.
///
/// # Safety
///
/// AVX2, FMA and F16C; `rows.len() == n_rows * nb`, `xs.len() == n_cols *
/// nb`, `out.len() == n_rows * n_cols`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn mat_mat_q4k_gemm(
    rows: &[BlockQ4K],
    xs: &[BlockQ8K],
    nb: usize,
    out: &mut [f32],
) {
    assert!(nb > 0, "repack: gemm of empty rows");
    let n_rows = rows.len() / nb;
    let n_cols = xs.len() / nb;
    assert!(
        rows.len() == n_rows * nb && xs.len() == n_cols * nb && out.len() == n_rows * n_cols,
        "repack: gemm shape mismatch"
    );
    let col = |c: usize| &xs[c * nb..(c + 1) * nb];
    let groups = n_rows / 8;
    let mut c = 0;
    while c < n_cols {
        let take = (n_cols - c).min(4);
        for g in 0..groups {
            let rg = &rows[8 * g * nb..8 * (g + 1) * nb];
            let mut res = [_mm256_setzero_ps(); 4];
            match take {
                4 => res = q4k_gemm_tile::<4>(rg, [col(c), col(c + 1), col(c + 2), col(c + 3)]),
                3 => res[..3]
                    .copy_from_slice(&q4k_gemm_tile::<3>(rg, [col(c), col(c + 1), col(c + 2)])),
                2 => res[..2].copy_from_slice(&q4k_gemm_tile::<2>(rg, [col(c), col(c + 1)])),
                _ => res[0] = q4k_gemm_tile::<1>(rg, [col(c)])[0],
            }
            for (j, v) in res[..take].iter().enumerate() {
                let at = (c + j) * n_rows + 8 * g;
                // SAFETY: `at + 8 <= (c + j + 1) * n_rows <= out.len()`
                // (the slice below is bounds-checked).
                _mm256_storeu_ps(out[at..at + 8].as_mut_ptr(), *v);
            }
        }
        for j in c..c + take {
            let tail = &mut out[j * n_rows + 8 * groups..(j + 1) * n_rows];
            rows_q4k(&rows[8 * groups * nb..], col(j), tail, Q4KChain::Gemm);
        }
        c += take;
    }
}

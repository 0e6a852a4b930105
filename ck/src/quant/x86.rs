//! x86-64 SIMD helpers shared by the kernels (AVX2/FMA/F16C and AVX-512),
//! after ggml-cpu/arch/x86/quants.c.

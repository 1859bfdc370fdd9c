// The CPU kernels are chosen once, through one table. Every kernel family (activation quantizer, ternary
// matmul, f16 head, int8 head, attention) for one instruction set is one KernelTable, filled in
// dispatch.cpp from the feature probe (cpu_features.h); BLLAMA_KERNEL forces a kind for tests and benchmarks.
//
// The files of csrc/kernels, llama.cpp ggml-cpu style:
//   cpu_features  what this CPU and OS can run (x86: cpuid + xgetbv; aarch64: getauxval / sysctl)
//   dispatch      this table, the choice of kind, and the checked entry points of ternary.h / head_f16.h /
//                 head_q8.h (they validate arguments, then make one indirect call)
//   pack          weights into the kernels' layouts (TernaryMatrix from GGUF blocks, Q8Head from f16/f32;
//                 head_q4.cpp: Q4Head)
//   ref           the portable scalar reference of every family: what every SIMD file must reproduce
//   <family>_<isa>.cpp  one family for one instruction set (ternary, ternary1 (base-3), head_f16, head_q8, attention x avx2,
//                 avx512 on x86; neon, dotprod, i8mm on aarch64), built with that ISA's flags (CMakeLists.txt keys
//                 them on the file suffix and compiles only the target architecture's files)
//   neon_tiles.h  the aarch64 tile drivers that the neon, dotprod and i8mm files share (each instantiates its own)
#pragma once

#include <cstdint>

namespace bllama {

struct QuantizedActs;
class TernaryMatrix;
class Q8Head;
class Q4Head;

// Neon: plain Advanced SIMD (every aarch64 core, e.g. the Raspberry Pi 3/4's Cortex-A53/A72). Dotprod: + sdot
// (Armv8.2 dot product: Apple M1 and later, Graviton2/3/4, Ampere Altra, Cortex-A76 and later). I8mm: dotprod
// with the prompt's ternary GEMM on smmla (Armv8.6 int8 matrix multiply: Apple M2 and later, Graviton3/4).
enum class KernelKind { Scalar, Avx2, Avx512Vnni, Neon, Dotprod, I8mm };
// Every kind, supported here or not (tests iterate it), in order of preference within an architecture.
constexpr KernelKind kAllKernelKinds[] = {KernelKind::Scalar, KernelKind::Avx2, KernelKind::Avx512Vnni,
                                          KernelKind::Neon, KernelKind::Dotprod, KernelKind::I8mm};

KernelKind best_kernel();                 // decided once from the feature probe; BLLAMA_KERNEL overrides
bool kernel_from_name(const char* name, KernelKind* kind);  // BLLAMA_KERNEL: scalar|avx2|avx512|neon|dotprod|i8mm
bool kernel_supported(KernelKind kind);   // this CPU (and this build) can run it
const char* kernel_name(KernelKind kind);

// The contracts are in the family headers named below; a kind's entries all obey them.
struct KernelTable {
    // ternary.h: quantize_acts (rows [t0, t1) of x into out, already sized), ternary_matmul (bit-identical across
    // kinds)
    void (*quantize)(const float* x, int64_t t0, int64_t t1, int64_t cols, QuantizedActs& out);
    void (*ternary_matmul)(const TernaryMatrix& w, const QuantizedActs& x, float* y, int64_t ldy,
                           int64_t row_begin, int64_t row_end);
    // head_f16.h: f16_matmul
    void (*f16_matmul)(const uint16_t* w, int64_t cols, const float* x, int64_t n_tokens, float* y,
                       int64_t ldy, int64_t row_begin, int64_t row_end);
    // head_q8.h: q8_head_matmul (bit-identical across kinds)
    void (*q8_head_matmul)(const Q8Head& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t row_begin,
                           int64_t row_end);
    // Attention, one head for one query over the KV cache (at long contexts the largest cost after the
    // weights): out[0, hd) = sum_j softmax_j(scale * q.k_j) v_j for j in [0, len), with k_j = k + j * stride
    // and v_j = v + j * stride; scores is scratch for len floats. The cache holds fp32 (exactly the model's
    // function) or fp16 (half the bytes, opt-in); to_f16 rounds to nearest even.
    void (*attend_f32)(const float* q, const float* k, const float* v, int64_t stride, int64_t len, int64_t hd,
                       float scale, float* scores, float* out);
    void (*attend_f16)(const float* q, const uint16_t* k, const uint16_t* v, int64_t stride, int64_t len,
                       int64_t hd, float scale, float* scores, float* out);
    void (*to_f16)(const float* x, uint16_t* y, int64_t n);
    // head_q4.h: q4_head_matmul (bit-identical across kinds)
    void (*q4_head_matmul)(const Q4Head& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t row_begin,
                           int64_t row_end);
    // ternary.h: ternary_matmul of a TernaryLayout::Base3 matrix (the 1.6-bit TQ1_0 path; ternary_matmul above
    // takes the 2-bit layout only); nullptr where the kind has none (the scalar reference runs it).
    void (*ternary_matmul_base3)(const TernaryMatrix& w, const QuantizedActs& x, float* y, int64_t ldy,
                                 int64_t row_begin, int64_t row_end);
    // The SiLU gate of the feed-forward: g[i] = silu(g[i]) * u[i] (silu(z) = z / (1 + exp(-z))), to float rounding
    // and the exp polynomial of the attention kernels (~2e-7 relative); a value's result does not depend on n or
    // on its index, so prompt and decode rows get the same bits.
    void (*silu_mul)(float* g, const float* u, int64_t n);
    // fp16 to fp32 (exact: every kind gives the same bits); attention copies a prompt chunk's keys with it.
    void (*to_f32)(const uint16_t* x, float* y, int64_t n);
    // attend_f16 for `heads` query heads that share one kv head (grouped-query attention): head h reads
    // q + h * hd and writes out + h * hd; scores is scratch for heads * len floats. Each head's output is
    // bit-identical to this kind's attend_f16 alone (a kind may simply loop over the heads).
    void (*attend_group_f16)(const float* q, int64_t heads, const uint16_t* k, const uint16_t* v, int64_t stride,
                             int64_t len, int64_t hd, float scale, float* scores, float* out);
    // n attend_f32 calls over the same fp32 keys and values (a prompt chunk's fp32 copy of them): vector i reads
    // q[i], sees positions 0 .. len[i] - 1 and writes out[i], bit-identical to attend_f32 alone; scores is scratch
    // for 4 * max(len) floats. A kind with a kernel for it loads each key and value once for several vectors.
    void (*attend_many_f32)(const float* const* q, const int64_t* len, int64_t n, const float* k, const float* v,
                            int64_t stride, int64_t hd, float scale, float* scores, float* const* out);
};

// The table of a kind. Throws std::invalid_argument when this CPU or build cannot run it.
const KernelTable& kernel_table(KernelKind kind = best_kernel());

}  // namespace bllama

// Private to csrc/kernels: the entry points each <family>_<isa>.cpp defines, which dispatch.cpp gathers into
// that ISA's KernelTable. Signatures as in KernelTable (dispatch.h); a new ISA adds its block here.
#pragma once

#include <cstdint>

#include "kernels/dispatch.h"

namespace bllama {

#if defined(__x86_64__) || defined(__i386__)
#define BLLAMA_KERNELS_X86 1

void quantize_rows_avx2(const float* x, int64_t t0, int64_t t1, int64_t cols, QuantizedActs& out);
void ternary_matmul_avx2(const TernaryMatrix& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb,
                         int64_t re);
void f16_matmul_avx2(const uint16_t* w, int64_t cols, const float* x, int64_t n_tokens, float* y, int64_t ldy,
                     int64_t rb, int64_t re);
void q8_head_matmul_avx2(const Q8Head& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb, int64_t re);
void q4_head_matmul_avx2(const Q4Head& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb, int64_t re);
void attend_f32_avx2(const float* q, const float* k, const float* v, int64_t stride, int64_t len, int64_t hd,
                     float scale, float* scores, float* out);
void attend_f16_avx2(const float* q, const uint16_t* k, const uint16_t* v, int64_t stride, int64_t len,
                     int64_t hd, float scale, float* scores, float* out);
void attend_group_f16_avx2(const float* q, int64_t heads, const uint16_t* k, const uint16_t* v, int64_t stride,
                           int64_t len, int64_t hd, float scale, float* scores, float* out);
void attend_many_f32_avx2(const float* const* q, const int64_t* len, int64_t n, const float* k, const float* v,
                          int64_t stride, int64_t hd, float scale, float* scores, float* const* out);
void to_f16_avx2(const float* x, uint16_t* y, int64_t n);
void to_f32_avx2(const uint16_t* x, float* y, int64_t n);
void silu_mul_avx2(float* g, const float* u, int64_t n);
// ternary_matmul_avx2's tiles for the rows of group g in [rb, re), every token, reading the group's 2-bit codes
// from panel (w.cols * 4 bytes, pack.h's layout, 32-byte aligned): the base-3 prompt path expands a group into it.
void ternary_gemm_group_avx2(const TernaryMatrix& w, const uint8_t* panel, int64_t g, const QuantizedActs& x, float* y,
                             int64_t ldy, int64_t rb, int64_t re);
// Group g of a base-3 matrix in the 2-bit layout (w.cols * 4 bytes at out, 32-byte aligned), by compares.
void expand_base3_group_avx2(const TernaryMatrix& w, int64_t g, uint8_t* out);
// ternary1_avx2.cpp: the base-3 layout (TernaryLayout::Base3).
void ternary1_matmul_avx2(const TernaryMatrix& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb,
                          int64_t re);

void quantize_rows_avx512(const float* x, int64_t t0, int64_t t1, int64_t cols, QuantizedActs& out);
void silu_mul_avx512(float* g, const float* u, int64_t n);
void ternary_matmul_avx512(const TernaryMatrix& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb,
                           int64_t re);
void f16_matmul_avx512(const uint16_t* w, int64_t cols, const float* x, int64_t n_tokens, float* y, int64_t ldy,
                       int64_t rb, int64_t re);
void q4_head_matmul_avx512(const Q4Head& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb,
                           int64_t re);
void q8_head_matmul_avx512(const Q8Head& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb,
                           int64_t re);
void attend_f32_avx512(const float* q, const float* k, const float* v, int64_t stride, int64_t len, int64_t hd,
                       float scale, float* scores, float* out);
void attend_f16_avx512(const float* q, const uint16_t* k, const uint16_t* v, int64_t stride, int64_t len,
                       int64_t hd, float scale, float* scores, float* out);
void to_f16_avx512(const float* x, uint16_t* y, int64_t n);
void to_f32_avx512(const uint16_t* x, float* y, int64_t n);
// The prompt GEMM of ternary_matmul_avx512 for the r <= ternary_gemm_panel_groups_avx512(w) groups from g, reading
// their 2-bit codes from panel (r * cols * 4 bytes, the layout of pack.h, group after group) when it is not null:
// the base-3 kernels expand a panel into it and reuse the 2-bit tiles.
int ternary_gemm_panel_groups_avx512(const TernaryMatrix& w);
void ternary_gemm_panel_avx512(const TernaryMatrix& w, const uint8_t* panel, int64_t g, int r, const QuantizedActs& x,
                               float* y, int64_t ldy, int64_t rb, int64_t re);
// Group g of a base-3 matrix in the 2-bit layout (w.cols * 4 bytes at out, 64-byte aligned): by table lookups
// (vbmi: needs cpu_features().avx512_vbmi) or by compares; the prompt GEMM's expansion, exposed for the tests.
void expand_base3_group_avx512(const TernaryMatrix& w, int64_t g, uint8_t* out, bool vbmi);
void ternary1_matmul_avx512(const TernaryMatrix& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb,
                            int64_t re);

#endif

#if defined(__aarch64__) || defined(_M_ARM64)
#define BLLAMA_KERNELS_ARM 1

// *_neon.cpp: plain Advanced SIMD (armv8-a, every aarch64 core).
void quantize_rows_neon(const float* x, int64_t t0, int64_t t1, int64_t cols, QuantizedActs& out);
void ternary_matmul_neon(const TernaryMatrix& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb,
                         int64_t re);
void f16_matmul_neon(const uint16_t* w, int64_t cols, const float* x, int64_t n_tokens, float* y, int64_t ldy,
                     int64_t rb, int64_t re);
void q8_head_matmul_neon(const Q8Head& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb, int64_t re);
void q4_head_matmul_neon(const Q4Head& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb, int64_t re);
void attend_f32_neon(const float* q, const float* k, const float* v, int64_t stride, int64_t len, int64_t hd,
                     float scale, float* scores, float* out);
void attend_f16_neon(const float* q, const uint16_t* k, const uint16_t* v, int64_t stride, int64_t len,
                     int64_t hd, float scale, float* scores, float* out);
void to_f16_neon(const float* x, uint16_t* y, int64_t n);
void to_f32_neon(const uint16_t* x, float* y, int64_t n);
// ternary1_neon.cpp: the base-3 layout (TernaryLayout::Base3). expand_base3_group_neon writes group g in the 2-bit
// layout (w.cols * 4 bytes at out): the prompt path of every aarch64 kind, exposed for the tests.
void ternary1_matmul_neon(const TernaryMatrix& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb,
                          int64_t re);
void expand_base3_group_neon(const TernaryMatrix& w, int64_t g, uint8_t* out);

// *_dotprod.cpp: + the Armv8.2 dot product (sdot).
void ternary_matmul_dotprod(const TernaryMatrix& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb,
                            int64_t re);
void q8_head_matmul_dotprod(const Q8Head& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb,
                            int64_t re);
void q4_head_matmul_dotprod(const Q4Head& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb,
                            int64_t re);
void ternary1_matmul_dotprod(const TernaryMatrix& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb,
                             int64_t re);

// *_i8mm.cpp: + the Armv8.6 int8 matrix multiply (smmla), for the prompt; one token goes to the dotprod GEMV.
void ternary_matmul_i8mm(const TernaryMatrix& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb,
                         int64_t re);
void ternary1_matmul_i8mm(const TernaryMatrix& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb,
                          int64_t re);

#endif

}  // namespace bllama

// The portable scalar reference of every kernel family (the Scalar KernelTable, and the baseline of the
// tests): every SIMD kernel must reproduce these bit for bit (ternary, quantizer, int8 head) or within the
// documented tolerance (f16 head, attention). Signatures as in KernelTable (dispatch.h).
#pragma once

#include <cstdint>

#include "kernels/dispatch.h"

namespace bllama {

void quantize_ref(const float* x, int64_t n_tokens, int64_t cols, QuantizedActs& out);  // resize + all rows
void quantize_rows_ref(const float* x, int64_t t0, int64_t t1, int64_t cols, QuantizedActs& out);
void ternary_matmul_ref(const TernaryMatrix& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb,
                        int64_t re);
void f16_matmul_ref(const uint16_t* w, int64_t cols, const float* x, int64_t n_tokens, float* y, int64_t ldy,
                    int64_t rb, int64_t re);
void q8_head_matmul_ref(const Q8Head& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb, int64_t re);
void q4_head_matmul_ref(const Q4Head& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb, int64_t re);
void attend_f32_ref(const float* q, const float* k, const float* v, int64_t stride, int64_t len, int64_t hd,
                    float scale, float* scores, float* out);
void attend_f16_ref(const float* q, const uint16_t* k, const uint16_t* v, int64_t stride, int64_t len, int64_t hd,
                    float scale, float* scores, float* out);
void to_f16_ref(const float* x, uint16_t* y, int64_t n);
void to_f32_ref(const uint16_t* x, float* y, int64_t n);
void silu_mul_ref(float* g, const float* u, int64_t n);

}  // namespace bllama

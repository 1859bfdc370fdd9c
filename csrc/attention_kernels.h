// One attention head for one query over the KV cache, per instruction set: the portable loop and
// AVX2 / AVX-512 versions in their own files (built with those flags, chosen at run time from the
// same KernelKind as the matmuls). At long contexts this is the largest cost after the weights.
#pragma once

#include <cstdint>

#include "kernels/ternary.h"

namespace bllama {

// out[0, hd) = sum_j softmax_j(scale * q.k_j) v_j for j in [0, len), with k_j = k + j * stride and
// v_j = v + j * stride. scores is scratch for len floats.
using AttendFn = void (*)(const float* q, const float* k, const float* v, int64_t stride, int64_t len, int64_t hd,
                          float scale, float* scores, float* out);

void attend_scalar(const float* q, const float* k, const float* v, int64_t stride, int64_t len, int64_t hd,
                   float scale, float* scores, float* out);
void attend_avx2(const float* q, const float* k, const float* v, int64_t stride, int64_t len, int64_t hd,
                 float scale, float* scores, float* out);
void attend_avx512(const float* q, const float* k, const float* v, int64_t stride, int64_t len, int64_t hd,
                   float scale, float* scores, float* out);

// The variant for a kernel kind (falls back to scalar for kinds this CPU cannot run).
AttendFn attend_for(KernelKind kind);

}  // namespace bllama

// One attention head for one query over the KV cache, per instruction set: the portable loop and
// AVX2 / AVX-512 versions in their own files (built with those flags, chosen at run time from the
// same KernelKind as the matmuls). At long contexts this is the largest cost after the weights.
// The cache holds fp32 (exactly the model's function) or fp16 (half the bytes, opt-in).
#pragma once

#include <cstdint>

#include "kernels/ternary.h"

namespace bllama {

// out[0, hd) = sum_j softmax_j(scale * q.k_j) v_j for j in [0, len), with k_j = k + j * stride and
// v_j = v + j * stride. scores is scratch for len floats.
template <class KV>
using AttendFn = void (*)(const float* q, const KV* k, const KV* v, int64_t stride, int64_t len, int64_t hd,
                          float scale, float* scores, float* out);
using ToF16Fn = void (*)(const float* x, uint16_t* y, int64_t n);  // round to nearest even

struct AttentionKernels {
    AttendFn<float> attend_f32;
    AttendFn<uint16_t> attend_f16;
    ToF16Fn to_f16;
};

extern const AttentionKernels kAttentionScalar, kAttentionAvx2, kAttentionAvx512;

// The set for a kernel kind (falls back to scalar for kinds this CPU cannot run).
const AttentionKernels& attention_kernels(KernelKind kind);

}  // namespace bllama

#include "attention_kernels.h"

#include <cmath>

namespace bllama {

void attend_scalar(const float* q, const float* k, const float* v, int64_t stride, int64_t len, int64_t hd,
                   float scale, float* scores, float* out) {
    float mx = -INFINITY;
    for (int64_t j = 0; j < len; ++j) {
        const float* kj = k + j * stride;
        float s = 0.0f;
        for (int64_t i = 0; i < hd; ++i) s += q[i] * kj[i];
        s *= scale;
        scores[j] = s;
        mx = s > mx ? s : mx;
    }
    float sum = 0.0f;
    for (int64_t j = 0; j < len; ++j) {
        scores[j] = std::exp(scores[j] - mx);
        sum += scores[j];
    }
    const float inv = 1.0f / sum;
    for (int64_t i = 0; i < hd; ++i) out[i] = 0.0f;
    for (int64_t j = 0; j < len; ++j) {
        const float w = scores[j] * inv;
        const float* vj = v + j * stride;
        for (int64_t i = 0; i < hd; ++i) out[i] += w * vj[i];
    }
}

AttendFn attend_for(KernelKind kind) {
    if (!kernel_supported(kind)) return attend_scalar;
    switch (kind) {
        case KernelKind::Avx512Vnni: return attend_avx512;
        case KernelKind::Avx2: return attend_avx2;
        default: return attend_scalar;
    }
}

}  // namespace bllama

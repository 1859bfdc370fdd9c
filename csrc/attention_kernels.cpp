#include "attention_kernels.h"

#include <cmath>

#include "kernels/half.h"

namespace bllama {

namespace {

inline float ld(const float* p) { return *p; }
inline float ld(const uint16_t* p) { return f16_to_f32(*p); }

template <class KV>
void attend(const float* q, const KV* k, const KV* v, int64_t stride, int64_t len, int64_t hd, float scale,
            float* scores, float* out) {
    float mx = -INFINITY;
    for (int64_t j = 0; j < len; ++j) {
        const KV* kj = k + j * stride;
        float s = 0.0f;
        for (int64_t i = 0; i < hd; ++i) s += q[i] * ld(kj + i);
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
        const KV* vj = v + j * stride;
        for (int64_t i = 0; i < hd; ++i) out[i] += w * ld(vj + i);
    }
}

void to_f16(const float* x, uint16_t* y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] = f32_to_f16(x[i]);
}

}  // namespace

const AttentionKernels kAttentionScalar = {attend<float>, attend<uint16_t>, to_f16};

const AttentionKernels& attention_kernels(KernelKind kind) {
    if (!kernel_supported(kind)) return kAttentionScalar;
    switch (kind) {
        case KernelKind::Avx512Vnni: return kAttentionAvx512;
        case KernelKind::Avx2: return kAttentionAvx2;
        default: return kAttentionScalar;
    }
}

}  // namespace bllama

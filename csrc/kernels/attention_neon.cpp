// NEON attention head (armv8.0: fp16 KV via fcvtl/fcvtn, no FEAT_FP16 arithmetic). Same structure and the same
// exp approximation as attention_avx2.cpp, 4 lanes wide.
#if defined(__aarch64__) || defined(_M_ARM64)
#include <arm_neon.h>

#include <cmath>

#include "kernels/ref.h"
#include "kernels/simd.h"

namespace bllama {

namespace {

inline float32x4_t load4(const float* p) { return vld1q_f32(p); }
inline float32x4_t load4(const uint16_t* p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }

// exp(x) for x <= 0 (softmax after max subtraction): 2^n * p(r), |r| <= ln2/2, relative error ~2e-7.
inline float32x4_t exp_neg(float32x4_t x) {
    x = vmaxq_f32(x, vdupq_n_f32(-87.0f));
    const float32x4_t n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(1.44269504088896341f)));
    float32x4_t r = vfmsq_f32(x, n, vdupq_n_f32(0.693359375f));
    r = vfmsq_f32(r, n, vdupq_n_f32(-2.12194440e-4f));
    float32x4_t p = vdupq_n_f32(1.9875691500e-4f);
    p = vfmaq_f32(vdupq_n_f32(1.3981999507e-3f), p, r);
    p = vfmaq_f32(vdupq_n_f32(8.3334519073e-3f), p, r);
    p = vfmaq_f32(vdupq_n_f32(4.1665795894e-2f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.6666665459e-1f), p, r);
    p = vfmaq_f32(vdupq_n_f32(5.0000001201e-1f), p, r);
    p = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0f)), p, vmulq_f32(r, r));
    const int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtnq_s32_f32(n), vdupq_n_s32(127)), 23);
    return vmulq_f32(p, vreinterpretq_f32_s32(e));
}

template <class KV>
void attend(const float* q, const KV* k, const KV* v, int64_t stride, int64_t len, int64_t hd, float scale,
            float* scores, float* out) {
    if (hd % 8 != 0) {
        if constexpr (sizeof(KV) == 4) return attend_f32_ref(q, k, v, stride, len, hd, scale, scores, out);
        else return attend_f16_ref(q, k, v, stride, len, hd, scale, scores, out);
    }
    float mx = -INFINITY;
    for (int64_t j = 0; j < len; ++j) {
        const KV* kj = k + j * stride;
        float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0;
        for (int64_t i = 0; i < hd; i += 8) {
            a0 = vfmaq_f32(a0, vld1q_f32(q + i), load4(kj + i));
            a1 = vfmaq_f32(a1, vld1q_f32(q + i + 4), load4(kj + i + 4));
        }
        const float s = vaddvq_f32(vaddq_f32(a0, a1)) * scale;
        scores[j] = s;
        mx = s > mx ? s : mx;
    }
    const float32x4_t vmx = vdupq_n_f32(mx);
    float32x4_t vsum = vdupq_n_f32(0.0f);
    int64_t j = 0;
    for (; j + 4 <= len; j += 4) {
        const float32x4_t e = exp_neg(vsubq_f32(vld1q_f32(scores + j), vmx));
        vst1q_f32(scores + j, e);
        vsum = vaddq_f32(vsum, e);
    }
    float sum = vaddvq_f32(vsum);
    for (; j < len; ++j) {
        scores[j] = std::exp(scores[j] - mx);
        sum += scores[j];
    }
    const float inv = 1.0f / sum;
    // One pass over the V rows, up to 64 output lanes held in registers.
    for (int64_t i0 = 0; i0 < hd; i0 += 64) {
        const int nb = static_cast<int>((hd - i0 < 64 ? hd - i0 : 64) / 4);
        float32x4_t acc[16];
        for (int b = 0; b < 16; ++b) acc[b] = vdupq_n_f32(0.0f);
        for (int64_t t = 0; t < len; ++t) {
            const float32x4_t w = vdupq_n_f32(scores[t]);
            const KV* vt = v + t * stride + i0;
#pragma GCC unroll 16
            for (int b = 0; b < 16; ++b)
                if (b < nb) acc[b] = vfmaq_f32(acc[b], w, load4(vt + 4 * b));
        }
        const float32x4_t vinv = vdupq_n_f32(inv);
        for (int b = 0; b < nb; ++b) vst1q_f32(out + i0 + 4 * b, vmulq_f32(acc[b], vinv));
    }
}

}  // namespace

// fcvtn rounds to nearest even (the FPCR default) like to_f16_ref, subnormals and overflow included (NaN
// payloads may differ: the tests use finite values, as for the F16C path).
void to_f16_neon(const float* x, uint16_t* y, int64_t n) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1_u16(y + i, vreinterpret_u16_f16(vcvt_f16_f32(vld1q_f32(x + i))));
    if (i < n) to_f16_ref(x + i, y + i, n - i);
}

void to_f32_neon(const uint16_t* x, float* y, int64_t n) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(x + i))));
    if (i < n) to_f32_ref(x + i, y + i, n - i);
}

void attend_f32_neon(const float* q, const float* k, const float* v, int64_t stride, int64_t len, int64_t hd,
                     float scale, float* scores, float* out) {
    attend(q, k, v, stride, len, hd, scale, scores, out);
}
void attend_f16_neon(const float* q, const uint16_t* k, const uint16_t* v, int64_t stride, int64_t len,
                     int64_t hd, float scale, float* scores, float* out) {
    attend(q, k, v, stride, len, hd, scale, scores, out);
}

}  // namespace bllama

#endif

// Plain NEON (armv8-a: every aarch64 core, the Raspberry Pi 3/4's Cortex-A53/A72 included): the activation
// quantizer and the ternary matmul without sdot.
//
// The widening ternary product (WideningDot) is in neon_tiles.h, where the base-3 prompt path (ternary1_neon.cpp)
// runs it too.
#if defined(__aarch64__) || defined(_M_ARM64)
#include <arm_neon.h>

#include <algorithm>
#include <cmath>

#include "kernels/neon_tiles.h"
#include "kernels/pack.h"
#include "kernels/simd.h"

namespace bllama {

void quantize_rows_neon(const float* x, int64_t t0, int64_t t1, int64_t cols, QuantizedActs& out) {
    const int64_t nb = (cols + kBlock - 1) / kBlock;
    const float32x4_t lo = vdupq_n_f32(-128.0f), hi = vdupq_n_f32(127.0f);
    for (int64_t t = t0; t < t1; ++t) {
        const float* xt = x + t * cols;
        // fmaxnm ignores a NaN operand, as std::max(amax, NaN) in ref.cpp does.
        float32x4_t m = vdupq_n_f32(0.0f);
        int64_t k = 0;
        for (; k + 4 <= cols; k += 4) m = vmaxnmq_f32(m, vabsq_f32(vld1q_f32(xt + k)));
        float amax = vmaxnmvq_f32(m);
        for (; k < cols; ++k) amax = std::max(amax, std::fabs(xt[k]));
        const float a = (1.0f / std::max(amax, 1e-5f)) * 127.0f;  // as PyTorch: see ref.cpp
        out.act_scale[static_cast<size_t>(t)] = a;
        const float32x4_t av = vdupq_n_f32(a);
        int8_t* qt = out.q.data() + t * cols;
        // frintn rounds half to even, as nearbyint in the default mode; the clamp makes the narrowing exact.
        auto q4 = [&](int64_t i) {
            const float32x4_t v = vrndnq_f32(vmulq_f32(vld1q_f32(xt + i), av));
            return vcvtq_s32_f32(vminq_f32(vmaxq_f32(v, lo), hi));
        };
        int32_t total = 0;
        for (int64_t b = 0; b < nb; ++b) {
            const int64_t end = std::min(cols, (b + 1) * kBlock);
            int32x4_t s = vdupq_n_s32(0);
            for (k = b * kBlock; k + 16 <= end; k += 16) {
                const int32x4_t i0 = q4(k), i1 = q4(k + 4), i2 = q4(k + 8), i3 = q4(k + 12);
                s = vaddq_s32(s, vaddq_s32(vaddq_s32(i0, i1), vaddq_s32(i2, i3)));
                const int16x8_t h0 = vcombine_s16(vqmovn_s32(i0), vqmovn_s32(i1));
                const int16x8_t h1 = vcombine_s16(vqmovn_s32(i2), vqmovn_s32(i3));
                vst1q_s8(qt + k, vcombine_s8(vqmovn_s16(h0), vqmovn_s16(h1)));
            }
            int32_t bs = vaddvq_s32(s);
            for (; k < end; ++k) {
                float v = std::nearbyint(xt[k] * a);
                v = v < -128.0f ? -128.0f : (v > 127.0f ? 127.0f : v);
                qt[k] = static_cast<int8_t>(v);
                bs += qt[k];
            }
            out.block_sums[static_cast<size_t>(t * nb + b)] = bs;
            total += bs;
        }
        out.row_sums[static_cast<size_t>(t)] = total;
    }
}

void ternary_matmul_neon(const TernaryMatrix& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb,
                         int64_t re) {
    ternary_matmul_groups<WideningDot, 2>(w, x, y, ldy, rb, re);
}

}  // namespace bllama

#endif

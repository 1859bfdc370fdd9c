// The aarch64 4-bit head's row loop, shared by head_q4_neon.cpp (widening multiplies) and head_q4_dotprod.cpp
// (sdot): each instantiates it with its own block product, inside an anonymous namespace, so the linker never
// keeps a copy compiled for armv8.2-a for the plain-NEON kind (the rule of neon_tiles.h).
#pragma once
#if defined(__aarch64__) || defined(_M_ARM64)
#include <arm_neon.h>

#include <cstdint>

#include "kernels/half.h"
#include "kernels/head_q4.h"

namespace bllama {
namespace {

// Block product: lo/hi = int32 lanes 0-3 / 4-7 of head_q4.h (sums of 4 consecutive columns of q * x), from the
// signed 4-bit values w (cols 0-15 in w0, 16-31 in w1) and the activations x0/x1.
template <class BlockDot>
void q4_rows(const Q4Head& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb, int64_t re, BlockDot dot) {
    const int64_t cols = w.cols(), nb = w.blocks();
    const uint8x16_t low = vdupq_n_u8(0x0F);
    const int8x16_t eight = vdupq_n_s8(8);
    for (int64_t r = rb; r < re; ++r) {
        const uint8_t* nib = w.row(r);
        const uint16_t* sc = w.scales(r);
        for (int64_t t = 0; t < x.n_tokens; ++t) {
            const int8_t* q = x.q.data() + t * cols;
            float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = acc0;
            for (int64_t b = 0; b < nb; ++b) {
                const uint8x16_t raw = vld1q_u8(nib + b * 16);
                const int8x16_t w0 = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(raw, low)), eight);
                const int8x16_t w1 = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(raw, 4)), eight);
                int32x4_t lo, hi;
                dot(w0, w1, vld1q_s8(q + b * kQ4Block), vld1q_s8(q + b * kQ4Block + 16), lo, hi);
                const float32x4_t d = vdupq_n_f32(f16_to_f32(sc[b]));
                acc0 = vfmaq_f32(acc0, vcvtq_f32_s32(lo), d);  // fused, as head_q4.h defines
                acc1 = vfmaq_f32(acc1, vcvtq_f32_s32(hi), d);
            }
            const float32x4_t v4 = vaddq_f32(acc0, acc1);                            // a_j + a_(j+4)
            const float32x2_t v2 = vadd_f32(vget_low_f32(v4), vget_high_f32(v4));    // (a0+a4)+(a2+a6), (a1+a5)+(a3+a7)
            y[t * ldy + r] = (vget_lane_f32(v2, 0) + vget_lane_f32(v2, 1)) / x.act_scale[static_cast<size_t>(t)];
        }
    }
}

}  // namespace
}  // namespace bllama
#endif

// 4-bit head, plain NEON: widening multiply-accumulates of each 4-row x 4-column group by its four activations
// (int16 lanes: 8 products of |u * x| <= 15 * 128 per block, no overflow), then pairwise widening adds to each
// row's int32 block sum. The tile loop is head_q4_arm.h's.
#if defined(__aarch64__) || defined(_M_ARM64)
#include "kernels/head_q4_arm.h"
#include "kernels/simd.h"

namespace bllama {

void q4_head_matmul_neon(const Q4Head& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb, int64_t re) {
    q4_tiles(w, x, y, ldy, rb, re, [](const uint8_t* p, const int8_t* xb, int32x4_t* s) {
        const uint8x16_t mask = vdupq_n_u8(0x0F);
        for (int j = 0; j < 4; ++j) {
            int16x8_t r01 = vdupq_n_s16(0), r23 = r01;  // rows 4j, 4j+1 / 4j+2, 4j+3, four columns each
            for (int c = 0; c < 4; ++c) {
                const uint8x16_t v = vld1q_u8(p + 64 * c + 16 * j);
                const int8x16_t lo = vreinterpretq_s8_u8(vandq_u8(v, mask)), hi = vreinterpretq_s8_u8(vshrq_n_u8(v, 4));
                const int8x16_t xl = q4_broadcast4(xb + 4 * c), xh = q4_broadcast4(xb + 16 + 4 * c);
                r01 = vmlal_s8(r01, vget_low_s8(lo), vget_low_s8(xl));
                r23 = vmlal_high_s8(r23, lo, xl);
                r01 = vmlal_s8(r01, vget_low_s8(hi), vget_low_s8(xh));
                r23 = vmlal_high_s8(r23, hi, xh);
            }
            s[j] = vaddq_s32(s[j], vpaddq_s32(vpaddlq_s16(r01), vpaddlq_s16(r23)));
        }
    });
}

}  // namespace bllama

#endif

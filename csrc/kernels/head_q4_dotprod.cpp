// 4-bit head with the Armv8.2 dot product: one sdot per 4 rows x 4 columns of a nibble plane, by the four
// activations broadcast to every lane, accumulates each row's int32 block sum. The tile loop is head_q4_arm.h's.
#if defined(__aarch64__) || defined(_M_ARM64)
#include "kernels/head_q4_arm.h"
#include "kernels/simd.h"

namespace bllama {

void q4_head_matmul_dotprod(const Q4Head& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb,
                            int64_t re) {
    q4_tiles(w, x, y, ldy, rb, re, [](const uint8_t* p, const int8_t* xb, int32x4_t* s) {
        const uint8x16_t mask = vdupq_n_u8(0x0F);
        for (int c = 0; c < 4; ++c) {
            const int8x16_t xl = q4_broadcast4(xb + 4 * c), xh = q4_broadcast4(xb + 16 + 4 * c);
            for (int j = 0; j < 4; ++j) {
                const uint8x16_t v = vld1q_u8(p + 64 * c + 16 * j);
                s[j] = vdotq_s32(s[j], vreinterpretq_s8_u8(vandq_u8(v, mask)), xl);
                s[j] = vdotq_s32(s[j], vreinterpretq_s8_u8(vshrq_n_u8(v, 4)), xh);
            }
        }
    });
}

}  // namespace bllama

#endif

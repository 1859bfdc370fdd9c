// 4-bit head with the Armv8.2 dot product: one sdot per 16 columns gives exactly the four-column int32 sums of
// head_q4.h. The row loop is head_q4_arm.h's.
#if defined(__aarch64__) || defined(_M_ARM64)
#include "kernels/head_q4_arm.h"
#include "kernels/simd.h"

namespace bllama {

void q4_head_matmul_dotprod(const Q4Head& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb,
                            int64_t re) {
    q4_rows(w, x, y, ldy, rb, re, [](int8x16_t w0, int8x16_t w1, int8x16_t x0, int8x16_t x1, int32x4_t& lo,
                                     int32x4_t& hi) {
        lo = vdotq_s32(vdupq_n_s32(0), w0, x0);
        hi = vdotq_s32(vdupq_n_s32(0), w1, x1);
    });
}

}  // namespace bllama

#endif

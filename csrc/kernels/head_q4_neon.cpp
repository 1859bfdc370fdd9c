// 4-bit head, plain NEON: the products by widening multiplies (|q * x| <= 1024 fits int16), pairwise widening
// adds to the four-column int32 sums of head_q4.h. The row loop is head_q4_arm.h's.
#if defined(__aarch64__) || defined(_M_ARM64)
#include "kernels/head_q4_arm.h"
#include "kernels/simd.h"

namespace bllama {

namespace {
inline int32x4_t four_sums(int8x16_t w, int8x16_t x) {  // lanes: columns 0-3, 4-7, 8-11, 12-15
    const int16x8_t p0 = vmull_s8(vget_low_s8(w), vget_low_s8(x)), p1 = vmull_high_s8(w, x);
    return vpaddq_s32(vpaddlq_s16(p0), vpaddlq_s16(p1));
}
}  // namespace

void q4_head_matmul_neon(const Q4Head& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb, int64_t re) {
    q4_rows(w, x, y, ldy, rb, re, [](int8x16_t w0, int8x16_t w1, int8x16_t x0, int8x16_t x1, int32x4_t& lo,
                                     int32x4_t& hi) {
        lo = four_sums(w0, x0);
        hi = four_sums(w1, x1);
    });
}

}  // namespace bllama

#endif

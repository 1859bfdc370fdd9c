// Int8 head, plain NEON: smull/smlal2 multiply 8 + 8 int8 pairs into int16 lanes (each lane the sum of two
// products: |w| <= 127 and |x| <= 128, so at most 32512: exact), sadalp widens pairs into int32. Tiles in
// neon_tiles.h.
#if defined(__aarch64__) || defined(_M_ARM64)
#include <arm_neon.h>

#include "kernels/neon_tiles.h"
#include "kernels/simd.h"

namespace bllama {

namespace {
struct WideningDot16 {
    static int32x4_t dot(int32x4_t acc, int8x16_t w, int8x16_t x) {
        return vpadalq_s16(acc, vmlal_high_s8(vmull_s8(vget_low_s8(w), vget_low_s8(x)), w, x));
    }
};
}  // namespace

void q8_head_matmul_neon(const Q8Head& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb, int64_t re) {
    q8_head_rows<WideningDot16>(w, x, y, ldy, rb, re);
}

}  // namespace bllama

#endif

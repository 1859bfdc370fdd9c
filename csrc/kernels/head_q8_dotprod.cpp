// Int8 head with sdot: 16 signed int8 products summed into 4 int32 lanes per instruction, exact for every
// pair (no bias trick needed, unlike vpdpbusd's unsigned x signed). Tiles in neon_tiles.h.
#if defined(__aarch64__) || defined(_M_ARM64)
#include <arm_neon.h>

#include "kernels/neon_tiles.h"
#include "kernels/simd.h"

namespace bllama {

namespace {
struct SdotDot16 {
    static int32x4_t dot(int32x4_t acc, int8x16_t w, int8x16_t x) { return vdotq_s32(acc, w, x); }
};
}  // namespace

void q8_head_matmul_dotprod(const Q8Head& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb,
                            int64_t re) {
    q8_head_rows<SdotDot16>(w, x, y, ldy, rb, re);
}

}  // namespace bllama

#endif

// The base-3 layout (pack.h) with sdot (FEAT_DotProd): decode streams the packed bytes through SdotDot3, prompts
// expand each group to 2 bits (ternary1_neon.cpp) and run ternary_dotprod.cpp's SdotDot tiles over it
// (ternary1_arm.h says how).
#if defined(__aarch64__) || defined(_M_ARM64)
#include <arm_neon.h>

#include "kernels/neon_tiles.h"
#include "kernels/pack.h"
#include "kernels/simd.h"
#include "kernels/ternary1_arm.h"

namespace bllama {

void ternary1_matmul_dotprod(const TernaryMatrix& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb,
                             int64_t re) {
    ternary1_matmul_arm<SdotDot3, SdotDot, 4>(w, x, y, ldy, rb, re);
}

}  // namespace bllama

#endif

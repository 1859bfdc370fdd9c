// Ternary matmul with sdot (FEAT_DotProd: Apple M1+, Graviton2+, Ampere Altra, Cortex-A76+).
//
// sdot's lane form multiplies 16 bytes (4 rows x 4 columns of one plane, pack.h) by one broadcast activation
// dword and adds each row's 4 products into its int32 lane: one instruction per 4 rows x 4 columns, the
// NEON counterpart of vpdpbusd. Decode (one token) skips the shift of the middle planes: w & 0x0c is 4x the
// plane-1 code and w & 0x30 16x the plane-2 code, both still small positive int8, so they go into their own
// accumulators whose sums are exact multiples of 4 and 16, divided out exactly (ssra) once per block. One
// and/ushr per 16 weights instead of 1.5. The GEMM unpacks the planes once per chunk and reuses them for up
// to 4 tokens (16 int32 accumulators). The code (SdotDot) is in neon_tiles.h: the i8mm kind's one-token tiles
// use it too.
#if defined(__aarch64__) || defined(_M_ARM64)
#include <arm_neon.h>

#include "kernels/neon_tiles.h"
#include "kernels/pack.h"
#include "kernels/simd.h"

namespace bllama {

void ternary_matmul_dotprod(const TernaryMatrix& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb,
                            int64_t re) {
    ternary_matmul_groups<SdotDot, 4>(w, x, y, ldy, rb, re);
}

}  // namespace bllama

#endif

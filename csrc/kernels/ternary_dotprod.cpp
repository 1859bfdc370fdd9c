// Ternary matmul with sdot (FEAT_DotProd: Apple M1+, Graviton2+, Ampere Altra, Cortex-A76+).
//
// sdot's lane form multiplies 16 bytes (4 rows x 4 columns of one plane, pack.h) by one broadcast activation
// dword and adds each row's 4 products into its int32 lane: one instruction per 4 rows x 4 columns, the
// NEON counterpart of vpdpbusd. Decode (one token) skips the shift of the middle planes: w & 0x0c is 4x the
// plane-1 code and w & 0x30 16x the plane-2 code, both still small positive int8, so they go into their own
// accumulators whose sums are exact multiples of 4 and 16, divided out exactly (ssra) once per block. One
// and/ushr per 16 weights instead of 1.5. The GEMM unpacks the planes once per chunk and reuses them for up
// to 4 tokens (16 int32 accumulators).
#if defined(__aarch64__) || defined(_M_ARM64)
#include <arm_neon.h>

#include "kernels/neon_tiles.h"
#include "kernels/pack.h"
#include "kernels/simd.h"

namespace bllama {

namespace {

struct SdotDot {
    template <int N>
    static void block(int32x4_t (&acc)[4][N], const uint8_t* wp, const int8_t* const (&qp)[N], int64_t b) {
        constexpr int64_t kChunksPerBlock = kBlock / kChunkCols;
        const int64_t c0 = b * kChunksPerBlock, c1 = c0 + kChunksPerBlock;
        if constexpr (N == 1) {
            const uint8x16_t m1 = vdupq_n_u8(0x0c), m2 = vdupq_n_u8(0x30), m0 = vdupq_n_u8(0x03);
            int32x4_t a1[4], a4[4], a16[4];  // planes 0 and 3; plane 1 (x4); plane 2 (x16)
            for (int i = 0; i < 4; ++i) a1[i] = a4[i] = a16[i] = vdupq_n_s32(0);
            for (int64_t c = c0; c < c1; ++c) {
                const int8x16_t xv = vld1q_s8(qp[0] + c * kChunkCols);
                for (int i = 0; i < 4; ++i) {
                    const uint8x16_t wv = vld1q_u8(wp + c * kChunkBytes + 16 * i);
                    a1[i] = vdotq_laneq_s32(a1[i], vreinterpretq_s8_u8(vandq_u8(wv, m0)), xv, 0);
                    a4[i] = vdotq_laneq_s32(a4[i], vreinterpretq_s8_u8(vandq_u8(wv, m1)), xv, 1);
                    a16[i] = vdotq_laneq_s32(a16[i], vreinterpretq_s8_u8(vandq_u8(wv, m2)), xv, 2);
                    a1[i] = vdotq_laneq_s32(a1[i], vreinterpretq_s8_u8(vshrq_n_u8(wv, 6)), xv, 3);
                }
            }
            for (int i = 0; i < 4; ++i)
                acc[i][0] = vsraq_n_s32(vsraq_n_s32(vaddq_s32(acc[i][0], a1[i]), a4[i], 2), a16[i], 4);
        } else {
            for (int64_t c = c0; c < c1; ++c) {
                uint8x16_t wv[4];
                for (int i = 0; i < 4; ++i) wv[i] = vld1q_u8(wp + c * kChunkBytes + 16 * i);
                int8x16_t xv[N];
                for (int t = 0; t < N; ++t) xv[t] = vld1q_s8(qp[t] + c * kChunkCols);
                auto plane = [&](auto jc) {
                    constexpr int J = decltype(jc)::value;
                    for (int i = 0; i < 4; ++i) {
                        const int8x16_t code = ternary_plane<J>(wv[i]);
                        for (int t = 0; t < N; ++t) acc[i][t] = vdotq_laneq_s32(acc[i][t], code, xv[t], J);
                    }
                };
                plane(std::integral_constant<int, 0>{});
                plane(std::integral_constant<int, 1>{});
                plane(std::integral_constant<int, 2>{});
                plane(std::integral_constant<int, 3>{});
            }
        }
    }
};

}  // namespace

void ternary_matmul_dotprod(const TernaryMatrix& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb,
                            int64_t re) {
    ternary_matmul_groups<SdotDot, 4>(w, x, y, ldy, rb, re);
}

}  // namespace bllama

#endif

// Ternary prompt GEMM with smmla (FEAT_I8MM, Armv8.6: Apple M2 and later, Graviton3/4, Neoverse V1/V2/N2,
// Cortex-A510/A710 and later). Decode (one token) stays on the sdot GEMV: smmla multiplies 2 rows by 2 tokens,
// so with one token half of every instruction would be wasted.
//
// smmla acc, a, b adds the 2x2 product of a (2 rows x 8 int8) and b^T (2 tokens x 8 int8) into acc's lanes
// [r0t0, r0t1, r1t0, r1t1]: 32 multiply-adds per instruction against sdot's 16. Our packed layout (pack.h) gives,
// per 16-byte vector and plane J, 4 rows x columns 4J..4J+3; zip1/zip2 of the 32-bit lanes of planes 0 and 1 (or
// 2 and 3) is then 2 rows x columns 0..7 (or 8..15) in column order, exactly smmla's operand, and the activations
// need only a zip of the 64-bit halves of two tokens' rows. A 16-row x 16-column chunk x 4 tokens is 32 smmla
// where the sdot GEMM takes 64. The 2x2 tiles are transposed back into the shared driver's rows-per-lane
// accumulators once per 256-column block (neon_tiles.h), so the float epilogue is the same code as every kind's.
#if defined(__aarch64__) || defined(_M_ARM64)
#include <arm_neon.h>

#include "kernels/neon_tiles.h"
#include "kernels/pack.h"
#include "kernels/simd.h"

namespace bllama {

namespace {

struct SmmlaDot {
    // N tokens as ceil(N / 2) token pairs; an odd N pairs its last token with itself (the duplicate's lanes are
    // dropped), so every tail size goes through the same instructions.
    template <int N>
    static void block(int32x4_t (&acc)[4][N], const uint8_t* wp, const int8_t* const (&qp)[N], int64_t b) {
        constexpr int P = (N + 1) / 2;
        constexpr int64_t kChunksPerBlock = kBlock / kChunkCols;
        const int64_t c0 = b * kChunksPerBlock, c1 = c0 + kChunksPerBlock;
        // mm[2i + h][p]: rows 4i + 2h, 4i + 2h + 1 x tokens 2p, 2p + 1.
        int32x4_t mm[8][P];
        for (int r = 0; r < 8; ++r)
            for (int p = 0; p < P; ++p) mm[r][p] = vdupq_n_s32(0);
        for (int64_t c = c0; c < c1; ++c) {
            int8x16_t lo[P], hi[P];  // columns 0..7 / 8..15 of the chunk for tokens 2p and 2p + 1
            for (int p = 0; p < P; ++p) {
                const int64_t ta = 2 * p, tb = 2 * p + 1 < N ? 2 * p + 1 : 2 * p;
                const int64x2_t xa = vreinterpretq_s64_s8(vld1q_s8(qp[ta] + c * kChunkCols));
                const int64x2_t xb = vreinterpretq_s64_s8(vld1q_s8(qp[tb] + c * kChunkCols));
                lo[p] = vreinterpretq_s8_s64(vzip1q_s64(xa, xb));
                hi[p] = vreinterpretq_s8_s64(vzip2q_s64(xa, xb));
            }
            for (int i = 0; i < 4; ++i) {
                const uint8x16_t wv = vld1q_u8(wp + c * kChunkBytes + 16 * i);
                const int32x4_t p0 = vreinterpretq_s32_s8(ternary_plane<0>(wv));
                const int32x4_t p1 = vreinterpretq_s32_s8(ternary_plane<1>(wv));
                const int32x4_t p2 = vreinterpretq_s32_s8(ternary_plane<2>(wv));
                const int32x4_t p3 = vreinterpretq_s32_s8(ternary_plane<3>(wv));
                const int8x16_t w01lo = vreinterpretq_s8_s32(vzip1q_s32(p0, p1));  // rows 4i, 4i+1; cols 0..7
                const int8x16_t w23lo = vreinterpretq_s8_s32(vzip2q_s32(p0, p1));  // rows 4i+2, 4i+3; cols 0..7
                const int8x16_t w01hi = vreinterpretq_s8_s32(vzip1q_s32(p2, p3));  // rows 4i, 4i+1; cols 8..15
                const int8x16_t w23hi = vreinterpretq_s8_s32(vzip2q_s32(p2, p3));
                for (int p = 0; p < P; ++p) {
                    mm[2 * i][p] = vmmlaq_s32(vmmlaq_s32(mm[2 * i][p], w01lo, lo[p]), w01hi, hi[p]);
                    mm[2 * i + 1][p] = vmmlaq_s32(vmmlaq_s32(mm[2 * i + 1][p], w23lo, lo[p]), w23hi, hi[p]);
                }
            }
        }
        // [r0t0, r0t1, r1t0, r1t1] and [r2t0, r2t1, r3t0, r3t1]: the even lanes are token 2p's rows r0..r3,
        // the odd lanes token 2p + 1's.
        for (int i = 0; i < 4; ++i)
            for (int p = 0; p < P; ++p) {
                acc[i][2 * p] = vaddq_s32(acc[i][2 * p], vuzp1q_s32(mm[2 * i][p], mm[2 * i + 1][p]));
                if (2 * p + 1 < N)
                    acc[i][2 * p + 1] = vaddq_s32(acc[i][2 * p + 1], vuzp2q_s32(mm[2 * i][p], mm[2 * i + 1][p]));
            }
    }
};

}  // namespace

void ternary_matmul_i8mm(const TernaryMatrix& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb,
                         int64_t re) {
    if (x.n_tokens == 1) return ternary_matmul_dotprod(w, x, y, ldy, rb, re);
    ternary_matmul_groups<SmmlaDot, 4>(w, x, y, ldy, rb, re);
}

}  // namespace bllama

#endif

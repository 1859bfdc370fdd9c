// Ternary prompt GEMM with smmla (FEAT_I8MM, Armv8.6: Apple M2 and later, Graviton3/4, Neoverse V1/V2/N2,
// Cortex-A510/A710 and later). One-token tiles (decode, and a prompt's tail of one) stay on dotprod's sdot code
// (neon_tiles.h): smmla multiplies 2 rows by 2 tokens, so with one token half of every instruction is wasted.
//
// smmla acc, a, b adds the 2x2 product of a (2 rows x 8 int8) and b^T (2 tokens x 8 int8) into acc's lanes
// [r0t0, r0t1, r1t0, r1t1]: 32 multiply-adds per instruction against sdot's 16. Our packed layout (pack.h) gives,
// per 16-byte vector, 4 rows x 16 columns with column 4J + s at bits 2J of byte s. zip1/zip2 of the 32-bit lanes
// of w and w >> 4 puts each row's dword next to itself shifted by two planes, so one and (& 3) gives 2 rows x
// columns {0..3, 8..11} (planes 0 and 2) and one more shift the columns {4..7, 12..15} (planes 1 and 3): smmla's
// operands in 9 instructions per 16 bytes, one fewer than unpacking the four planes and zipping them. The
// activations match with uzp1/uzp2 of the 32-bit lanes of two tokens' rows. A 16-row x 16-column chunk x 4
// tokens is 32 smmla where the sdot GEMM takes 64 (bench/NOTES-kernels.md counts the whole loop). The 2x2
// tiles are transposed back into the shared driver's rows-per-lane accumulators once per 256-column block
// (neon_tiles.h), so the float epilogue is the same code as every kind's.
#if defined(__aarch64__) || defined(_M_ARM64)
#include <arm_neon.h>

#include "kernels/neon_tiles.h"
#include "kernels/pack.h"
#include "kernels/simd.h"
#include "kernels/ternary1_arm.h"

namespace bllama {

namespace {

struct SmmlaDot {
    // N tokens as ceil(N / 2) token pairs; N = 3 pairs its last token with itself (the duplicate's lanes are
    // dropped), which in the loop costs about what sdot's 3-token tile does.
    template <int N>
    static void block(int32x4_t (&acc)[4][N], const uint8_t* wp, const int8_t* const (&qp)[N], int64_t b) {
        if constexpr (N == 1) SdotDot::block<1>(acc, wp, qp, b);
        else smmla_block<N>(acc, wp, qp, b);
    }

    template <int N>
    static void smmla_block(int32x4_t (&acc)[4][N], const uint8_t* wp, const int8_t* const (&qp)[N], int64_t b) {
        constexpr int P = (N + 1) / 2;
        constexpr int64_t kChunksPerBlock = kBlock / kChunkCols;
        const int64_t c0 = b * kChunksPerBlock, c1 = c0 + kChunksPerBlock;
        // mm[2i + h][p]: rows 4i + 2h, 4i + 2h + 1 x tokens 2p, 2p + 1.
        int32x4_t mm[8][P];
        for (int r = 0; r < 8; ++r)
            for (int p = 0; p < P; ++p) mm[r][p] = vdupq_n_s32(0);
        for (int64_t c = c0; c < c1; ++c) {
            int8x16_t x02[P], x13[P];  // tokens 2p, 2p + 1: columns {0..3, 8..11} / {4..7, 12..15} of the chunk
            for (int p = 0; p < P; ++p) {
                const int64_t ta = 2 * p, tb = 2 * p + 1 < N ? 2 * p + 1 : 2 * p;
                const int32x4_t xa = vreinterpretq_s32_s8(vld1q_s8(qp[ta] + c * kChunkCols));
                const int32x4_t xb = vreinterpretq_s32_s8(vld1q_s8(qp[tb] + c * kChunkCols));
                x02[p] = vreinterpretq_s8_s32(vuzp1q_s32(xa, xb));
                x13[p] = vreinterpretq_s8_s32(vuzp2q_s32(xa, xb));
            }
            const uint8x16_t m3 = vdupq_n_u8(3);
            for (int i = 0; i < 4; ++i) {
                const uint8x16_t wv = vld1q_u8(wp + c * kChunkBytes + 16 * i);
                const uint32x4_t w32 = vreinterpretq_u32_u8(wv), w32s4 = vreinterpretq_u32_u8(vshrq_n_u8(wv, 4));
                const uint8x16_t z01 = vreinterpretq_u8_u32(vzip1q_u32(w32, w32s4));  // rows 4i, 4i + 1
                const uint8x16_t z23 = vreinterpretq_u8_u32(vzip2q_u32(w32, w32s4));  // rows 4i + 2, 4i + 3
                const int8x16_t w01p02 = vreinterpretq_s8_u8(vandq_u8(z01, m3));
                const int8x16_t w01p13 = vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(z01, 2), m3));
                const int8x16_t w23p02 = vreinterpretq_s8_u8(vandq_u8(z23, m3));
                const int8x16_t w23p13 = vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(z23, 2), m3));
                for (int p = 0; p < P; ++p) {
                    mm[2 * i][p] = vmmlaq_s32(vmmlaq_s32(mm[2 * i][p], w01p02, x02[p]), w01p13, x13[p]);
                    mm[2 * i + 1][p] = vmmlaq_s32(vmmlaq_s32(mm[2 * i + 1][p], w23p02, x02[p]), w23p13, x13[p]);
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
    ternary_matmul_groups<SmmlaDot, 4>(w, x, y, ldy, rb, re);
}

// The base-3 layout (ternary1_arm.h): decode on dotprod's SdotDot3, prompts on smmla over each group expanded to 2 bits.
void ternary1_matmul_i8mm(const TernaryMatrix& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb,
                          int64_t re) {
    ternary1_matmul_arm<SdotDot3, SmmlaDot, 4>(w, x, y, ldy, rb, re);
}

}  // namespace bllama

#endif

// Plain NEON (armv8-a) kernels for the base-3 layout (pack.h; how the planes are read: ternary1_arm.h): the
// widening product of ternary_neon.cpp on base-3 planes, and the expansion of a group to the 2-bit layout that the
// prompt paths of every aarch64 kind run their 2-bit tiles over.
#if defined(__aarch64__) || defined(_M_ARM64)
#include <arm_neon.h>

#include "kernels/neon_tiles.h"
#include "kernels/pack.h"
#include "kernels/simd.h"
#include "kernels/ternary1_arm.h"

namespace bllama {

namespace {

// WideningDot (neon_tiles.h) on base-3 planes: int16 lanes take products of the negated code (0..2) and an int8,
// in [-254, 256], 64 per lane and 256-column block (12 chunks x 5 planes + 4, as many as the 2-bit layout's), so a
// lane's sum stays in [-16256, 16384]: exact in int16.
struct WideningDot3 {
    template <int K, int N>
    static void chunk(int16x8_t (&lo)[4][N], int16x8_t (&hi)[4][N], const uint8_t* src, const int8_t* const (&qp)[N],
                      int64_t col, const NegTrits& tr) {
        uint8x16_t wv[4];
        int8x16_t xl[N], xh[N];
        load_chunk<K, N>(src, qp, col, wv, xl, xh);
        each_plane(
            [&](auto nc) {
                constexpr int n = decltype(nc)::value;
                int8x16_t xb[N];  // columns 4n..4n+3, repeated for every row
                for (int t = 0; t < N; ++t) xb[t] = plane_acts<n>(xl[t], xh[t]);
                for (int i = 0; i < 4; ++i) {
                    const int8x16_t code = tr.neg_top(wv[i]);
                    for (int t = 0; t < N; ++t) {
                        lo[i][t] = vmlal_s8(lo[i][t], vget_low_s8(code), vget_low_s8(xb[t]));
                        hi[i][t] = vmlal_high_s8(hi[i][t], code, xb[t]);
                    }
                    if (n + 1 < K) wv[i] = tr.next(wv[i]);
                }
            },
            std::make_integer_sequence<int, K>{});
    }

    template <int N>
    static void block(int32x4_t (&acc)[4][N], const uint8_t* wp, const int8_t* const (&qp)[N], int64_t b) {
        const NegTrits tr;
        int16x8_t lo[4][N], hi[4][N];  // lo: rows 4i, 4i+1; hi: rows 4i+2, 4i+3 (4 column lanes each)
        for (int i = 0; i < 4; ++i)
            for (int t = 0; t < N; ++t) lo[i][t] = hi[i][t] = vdupq_n_s16(0);
        const uint8_t* blk = wp + b * kB3BlockBytes;
        const int64_t col0 = b * kBlock;
        for (int64_t c = 0; c < kB3FullChunks; ++c)
            chunk<5, N>(lo, hi, blk + c * kChunkBytes, qp, col0 + c * kB3ChunkCols, tr);
        chunk<4, N>(lo, hi, blk + kB3FullChunks * kChunkBytes, qp, col0 + kB3TailCol, tr);
        for (int i = 0; i < 4; ++i)
            for (int t = 0; t < N; ++t)
                acc[i][t] = vsubq_s32(acc[i][t], vpaddq_s32(vpaddlq_s16(lo[i][t]), vpaddlq_s16(hi[i][t])));
    }
};

}  // namespace

// Plane m of a block (columns 4m..4m+3) is trit m % 5 of base-3 chunk m / 5 (m < 60) or trit m - 60 of the tail
// chunk, and field m % 4 of 2-bit chunk m / 4: each 16-byte row quad decodes its 64 planes in order, and sli puts
// four at a time into a byte (codes are at most 2, so each fits its 2-bit field). Padding rows expand to code 1,
// exactly the 2-bit layout's padding. (tbl looks up 64 bytes at a time, so a 256-entry table, as AVX-512 VBMI's
// expansion uses, would take four lookups a vector here: not tried without hardware to time it on.)
void expand_base3_group_neon(const TernaryMatrix& m, int64_t g, uint8_t* out) {
    const TernaryMatrix::Impl& w = m.impl();
    const NegTrits tr;
    const uint8_t* wp = w.group_ptr3(g);
    constexpr int64_t kPlanes = kBlock / 4;  // 64 per block
    for (int64_t b = 0; b < w.nb; ++b)
        for (int64_t i = 0; i < 4; ++i) {
            const uint8_t* blk = wp + b * kB3BlockBytes + 16 * i;
            uint8x16_t p[kPlanes];
            for (int64_t c = 0; c <= kB3FullChunks; ++c) {
                const int k = c < kB3FullChunks ? 5 : 4;
                uint8x16_t x = vld1q_u8(blk + c * kChunkBytes);
                for (int n = 0; n < k; ++n) {
                    p[c * 5 + n] = vreinterpretq_u8_s8(vnegq_s8(tr.neg_top(x)));
                    x = tr.next(x);
                }
            }
            uint8_t* ob = out + b * kBlock * 4 + 16 * i;
            for (int64_t j = 0; j < kPlanes / 4; ++j) {
                const uint8x16_t v =
                    vsliq_n_u8(vsliq_n_u8(vsliq_n_u8(p[4 * j], p[4 * j + 1], 2), p[4 * j + 2], 4), p[4 * j + 3], 6);
                vst1q_u8(ob + j * kChunkBytes, v);
            }
        }
}

void ternary1_matmul_neon(const TernaryMatrix& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb,
                          int64_t re) {
    ternary1_matmul_arm<WideningDot3, WideningDot, 2>(w, x, y, ldy, rb, re);
}

}  // namespace bllama

#endif

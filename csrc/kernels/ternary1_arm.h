// Private to the aarch64 kernel files: the base-3 layout (pack.h: five trits per byte, 1.625 bits a weight) on
// NEON, shared by ternary1_neon.cpp, ternary1_dotprod.cpp and ternary_i8mm.cpp. Anonymous namespace, as in
// neon_tiles.h: each file instantiates its own copy with its own ISA flags.
//
// A 16-byte load of a 64-byte base-3 chunk is rows 4i..4i+3 x 4 columns, like a 2-bit chunk's, and each of its five
// trit planes (four in a block's tail chunk) is one 4-column plane: code (0..2) of row 4i + r, column 4n + s in byte
// 4r + s, against the activation dword of columns 4n..4n+3. The top trit of a byte x is [x >= 86] + [x >= 171];
// two cmhs give those as all-ones masks, so their byte sum is minus the code, and x * 3 (mod 256) brings up the
// next trit: four instructions per plane and 16 weights, where the 2-bit layout takes one or two. The products of
// the negated codes are added into accumulators that are negated before and after each block (exact in int32), so
// the tile drivers of neon_tiles.h (row groups, token tiles, the float epilogue) serve both layouts unchanged.
//
// Decode (up to MaxN tokens, one token tile) streams the packed bytes. A prompt (more than one token tile) expands
// each 16-row group once into the 2-bit layout (expand_base3_group_neon, cols * 4 bytes, in L1/L2) and runs that
// kind's 2-bit tiles over it, as the x86 kernels do: decoding planes in every token tile cost 0.6x on AVX2.
#pragma once

#if defined(__aarch64__) || defined(_M_ARM64)
#include <arm_neon.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels/neon_tiles.h"
#include "kernels/pack.h"
#include "kernels/simd.h"

namespace bllama {
namespace {

struct NegTrits {
    uint8x16_t t1 = vdupq_n_u8(86), t2 = vdupq_n_u8(171), three = vdupq_n_u8(3);
    // Minus the top trit of every byte: 0, -1 or -2.
    int8x16_t neg_top(uint8x16_t x) const { return vreinterpretq_s8_u8(vaddq_u8(vcgeq_u8(x, t1), vcgeq_u8(x, t2))); }
    uint8x16_t next(uint8x16_t x) const { return vmulq_u8(x, three); }  // 3x mod 256: the next trit on top
};

// f(std::integral_constant<int, n>) for n = 0 .. K-1: plane indices as constants, which the lane intrinsics need.
template <class F, int... n>
inline void each_plane(F&& f, std::integer_sequence<int, n...>) {
    (f(std::integral_constant<int, n>{}), ...);
}

// The activation dword of plane n of a chunk at column col: columns col + 4n .. col + 4n + 3. lo = 16 bytes from
// col (planes 0..3 as dword lanes 0..3), hi = 16 bytes from col + 4 (plane 4 in lane 3; read only for 5-trit
// chunks, which end at least 16 columns before their block does, so the load stays inside the row).
template <int n>
inline int8x16_t plane_acts(int8x16_t lo, int8x16_t hi) {
    const int8x16_t src = n < 4 ? lo : hi;
    return vreinterpretq_s8_u32(vdupq_laneq_u32(vreinterpretq_u32_s8(src), n < 4 ? n : 3));
}

// A chunk's four row-quad vectors (wv) and each token's activations for it (lo, hi: as plane_acts reads them).
template <int K, int N>
inline void load_chunk(const uint8_t* src, const int8_t* const (&qp)[N], int64_t col, uint8x16_t (&wv)[4],
                       int8x16_t (&lo)[N], int8x16_t (&hi)[N]) {
    for (int i = 0; i < 4; ++i) wv[i] = vld1q_u8(src + 16 * i);
    for (int t = 0; t < N; ++t) {
        lo[t] = vld1q_s8(qp[t] + col);
        hi[t] = K == 5 ? vld1q_s8(qp[t] + col + 4) : lo[t];
    }
}

#if defined(__ARM_FEATURE_DOTPROD)
// sdot's lane form, as SdotDot (neon_tiles.h): one instruction per plane, 4 rows and a token. Only files compiled
// with +dotprod see it (ternary1_dotprod.cpp, ternary_i8mm.cpp).
struct SdotDot3 {
    template <int K, int N>
    static void chunk(int32x4_t (&acc)[4][N], const uint8_t* src, const int8_t* const (&qp)[N], int64_t col,
                      const NegTrits& tr) {
        uint8x16_t wv[4];
        int8x16_t lo[N], hi[N];
        load_chunk<K, N>(src, qp, col, wv, lo, hi);
        each_plane(
            [&](auto nc) {
                constexpr int n = decltype(nc)::value;
                for (int i = 0; i < 4; ++i) {
                    const int8x16_t code = tr.neg_top(wv[i]);
                    for (int t = 0; t < N; ++t)
                        acc[i][t] = vdotq_laneq_s32(acc[i][t], code, n < 4 ? lo[t] : hi[t], n < 4 ? n : 3);
                    if (n + 1 < K) wv[i] = tr.next(wv[i]);
                }
            },
            std::make_integer_sequence<int, K>{});
    }

    // Dot::block of neon_tiles.h on a base-3 group stream wp.
    template <int N>
    static void block(int32x4_t (&acc)[4][N], const uint8_t* wp, const int8_t* const (&qp)[N], int64_t b) {
        const NegTrits tr;
        const uint8_t* blk = wp + b * kB3BlockBytes;
        const int64_t col0 = b * kBlock;
        for (int i = 0; i < 4; ++i)
            for (int t = 0; t < N; ++t) acc[i][t] = vnegq_s32(acc[i][t]);
        for (int64_t c = 0; c < kB3FullChunks; ++c)
            chunk<5, N>(acc, blk + c * kChunkBytes, qp, col0 + c * kB3ChunkCols, tr);
        chunk<4, N>(acc, blk + kB3FullChunks * kChunkBytes, qp, col0 + kB3TailCol, tr);
        for (int i = 0; i < 4; ++i)
            for (int t = 0; t < N; ++t) acc[i][t] = vnegq_s32(acc[i][t]);
    }
};
#endif

// Rows [rb, re) of a base-3 matrix for every token: Dot3 reads the base-3 stream (up to MaxN tokens, one tile),
// Dot2 the 2-bit panel a prompt's groups are expanded into (any number of tokens, tiles of MaxN).
template <class Dot3, class Dot2, int MaxN>
void ternary1_matmul_arm(const TernaryMatrix& m, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb,
                         int64_t re) {
    const TernaryMatrix::Impl& w = m.impl();
    const int64_t g_begin = rb / kGroupRows, g_end = (re + kGroupRows - 1) / kGroupRows;
    if (x.n_tokens <= MaxN) {
        for (int64_t g = g_begin; g < g_end; ++g)
            ternary_tile_upto<Dot3, MaxN>(x.n_tokens, w, w.group_ptr3(g), x, y, ldy, rb, re, g, 0);
        return;
    }
    // Each thread keeps its own panel, grown once (a prompt's first chunk); decode never touches it.
    thread_local std::vector<uint8_t, AlignedAllocator<uint8_t>> panel;
    if (panel.size() < static_cast<size_t>(w.cols * 4)) panel.resize(static_cast<size_t>(w.cols * 4));
    for (int64_t g = g_begin; g < g_end; ++g) {
        expand_base3_group_neon(m, g, panel.data());
        for (int64_t t = 0; t < x.n_tokens; t += MaxN)
            ternary_tile_upto<Dot2, MaxN>(std::min<int64_t>(MaxN, x.n_tokens - t), w, panel.data(), x, y, ldy, rb, re, g,
                                          t);
    }
}

}  // namespace
}  // namespace bllama

#endif

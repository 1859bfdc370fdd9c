// 4-bit head for the AVX-512 VNNI kind: one tile (16 rows, head_q4.h's layout) in the 16 int32 / fp32 lanes of
// a zmm register. Per block, each 64-byte load is 16 rows x 4 columns in each nibble plane: the low plane is
// `v & 0x0F`, the high plane `v & 0xF0` (= 16u, so its vpdpbusd sums are 16x and one exact shift by 4 undoes
// that), and each vpdpbusd multiplies by four activations broadcast from memory. The int32 chain starts at the
// block's -8 * sum(x), so p is exactly head_q4.h's block sum; one fma per block and tile, in block order, gives
// every row's reference result. No lane crosses another. Up to four tokens share one decode of a tile.
#if defined(__x86_64__) || defined(__i386__)
// GCC 12's AVX-512 headers trip -W(maybe-)uninitialized inside _mm512_cvtph_ps / set1 (the false positive of
// head_q8_avx512.cpp); silence it for this file only.
#pragma GCC diagnostic ignored "-Wuninitialized"
#ifndef __clang__  // a gcc-only warning (clang warns about the unknown name instead)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/head_q4.h"
#include "kernels/simd.h"

namespace bllama {

namespace {

inline __m512i broadcast4(const int8_t* x) {  // x[0..4) as one int32, in every lane
    int32_t v;
    std::memcpy(&v, x, sizeof v);
    return _mm512_set1_epi32(v);
}

// acc[t] (lane i = row 16 * tile + i) for tokens x[0..N), offs[t] = q4_offset_sums of token t.
template <int N>
void tile_dot(const Q4Head& w, int64_t tile, const int8_t* const* x, const int32_t* const* offs, __m512* acc) {
    const int64_t nb = w.blocks();
    const uint8_t* nib = w.tile_nibbles(tile);
    const uint16_t* sc = w.tile_scales(tile);
    const __m512i lo_mask = _mm512_set1_epi8(0x0F), hi_mask = _mm512_set1_epi8(static_cast<char>(0xF0));
    for (int t = 0; t < N; ++t) acc[t] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* p = nib + b * kQ4TileBlockBytes;
        __m512i lo[4], hi[4];
        for (int c = 0; c < 4; ++c) {
            const __m512i v = _mm512_load_si512(p + 64 * c);
            lo[c] = _mm512_and_si512(v, lo_mask);
            hi[c] = _mm512_and_si512(v, hi_mask);
        }
        const __m512 d = _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(sc + b * kQ4Tile)));
        for (int t = 0; t < N; ++t) {
            const int8_t* xb = x[t] + b * kQ4Block;
            __m512i sl = _mm512_set1_epi32(offs[t][b]), sh = _mm512_setzero_si512();
            for (int c = 0; c < 4; ++c) {
                sl = _mm512_dpbusd_epi32(sl, lo[c], broadcast4(xb + 4 * c));
                sh = _mm512_dpbusd_epi32(sh, hi[c], broadcast4(xb + 16 + 4 * c));
            }
            const __m512i sum = _mm512_add_epi32(sl, _mm512_srai_epi32(sh, 4));
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), d, acc[t]);
        }
    }
}

template <int N>
void tiles(const Q4Head& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb, int64_t re, int64_t t0) {
    const int64_t cols = w.cols(), nb = w.blocks();
    const int8_t* xq[N];
    const Q4GroupOffsets offs(x, cols, nb, t0, N);
    const int32_t* off[N];
    __m512 inv_a[N];
    for (int t = 0; t < N; ++t) {
        xq[t] = x.q.data() + (t0 + t) * cols;
        off[t] = offs.rows[t];
        inv_a[t] = _mm512_set1_ps(x.act_scale[static_cast<size_t>(t0 + t)]);
    }
    for (int64_t tile = rb / kQ4Tile; tile * kQ4Tile < re; ++tile) {
        __m512 acc[N];
        tile_dot<N>(w, tile, xq, off, acc);
        const int64_t r0 = tile * kQ4Tile;
        const int64_t lo = rb > r0 ? rb - r0 : 0, hi = re < r0 + kQ4Tile ? re - r0 : kQ4Tile;
        const __mmask16 m = static_cast<__mmask16>(((1u << hi) - 1) & ~((1u << lo) - 1));
        for (int t = 0; t < N; ++t)
            _mm512_mask_storeu_ps(y + (t0 + t) * ldy + r0, m, _mm512_div_ps(acc[t], inv_a[t]));
    }
}

}  // namespace

void q4_head_matmul_avx512(const Q4Head& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb, int64_t re) {
    if (rb >= re) return;
    int64_t t = 0;
    for (; t + 4 <= x.n_tokens; t += 4) tiles<4>(w, x, y, ldy, rb, re, t);
    for (; t + 2 <= x.n_tokens; t += 2) tiles<2>(w, x, y, ldy, rb, re, t);
    if (t < x.n_tokens) tiles<1>(w, x, y, ldy, rb, re, t);
}

}  // namespace bllama

#endif

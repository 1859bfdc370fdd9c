// 4-bit head, AVX2: one tile (16 rows, head_q4.h's layout) as two halves of 8 rows, each in the 8 lanes of a
// ymm register. Per block, a 32-byte load is 8 rows x 4 columns in each nibble plane (`v & 0x0F`,
// `(v >> 4) & 0x0F`: u = q + 8); vpmaddubsw by four activations broadcast to every lane gives each row's int16
// pair sums, which add up over the block's 32 columns without overflow (16 products of |u * x| <= 15 * 128:
// 30720 < 32768); one vpmaddwd with ones per block makes the row's int32 sum, plus the block's -8 * sum(x), so p
// is exactly head_q4.h's block sum and one fma per block gives the reference result. No lane crosses another.
// Two tokens share one decode of a tile.
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/head_q4.h"
#include "kernels/simd.h"
#include "kernels/ternary_avx2.h"

namespace bllama {

namespace {

inline __m256i broadcast4(const int8_t* x) {  // x[0..4) as one int32, in every lane
    int32_t v;
    std::memcpy(&v, x, sizeof v);
    return _mm256_set1_epi32(v);
}

// acc[t][h] (lane i = row 16 * tile + 8h + i) for tokens x[0..N), offs[t] = q4_offset_sums of token t.
template <int N>
void tile_dot(const Q4Head& w, int64_t tile, const int8_t* const* x, const int32_t* const* offs, __m256 (*acc)[2],
              const uint8_t* stream_end) {
    const int64_t nb = w.blocks();
    const uint8_t* nib = w.tile_nibbles(tile);
    const uint16_t* sc = w.tile_scales(tile);
    const __m256i mask = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    for (int t = 0; t < N; ++t) acc[t][0] = acc[t][1] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* p = nib + b * kQ4TileBlockBytes;
        // The nibble stream, prefetched as the ternary GEMV's (ternary_avx2.h): the head job went from ~12.6 to
        // ~14.8 GB/s on one Zen 3 core.
        if (p + kGemvPrefetch < stream_end)
            for (int c = 0; c < 4; ++c) _mm_prefetch(reinterpret_cast<const char*>(p + kGemvPrefetch + 64 * c), _MM_HINT_T0);
        for (int h = 0; h < 2; ++h) {
            __m256i s16[N];
            for (int t = 0; t < N; ++t) s16[t] = _mm256_setzero_si256();
            for (int c = 0; c < 4; ++c) {
                const __m256i v = _mm256_load_si256(reinterpret_cast<const __m256i*>(p + 64 * c + 32 * h));
                const __m256i lo = _mm256_and_si256(v, mask), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
                for (int t = 0; t < N; ++t) {
                    const int8_t* xb = x[t] + b * kQ4Block;
                    s16[t] = _mm256_add_epi16(s16[t], _mm256_maddubs_epi16(lo, broadcast4(xb + 4 * c)));
                    s16[t] = _mm256_add_epi16(s16[t], _mm256_maddubs_epi16(hi, broadcast4(xb + 16 + 4 * c)));
                }
            }
            const __m256 d = _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(sc + b * kQ4Tile + 8 * h)));
            for (int t = 0; t < N; ++t) {
                const __m256i sum = _mm256_add_epi32(_mm256_madd_epi16(s16[t], ones), _mm256_set1_epi32(offs[t][b]));
                acc[t][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), d, acc[t][h]);
            }
        }
    }
}

template <int N>
void tiles(const Q4Head& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb, int64_t re, int64_t t0) {
    const int64_t cols = w.cols(), nb = w.blocks();
    const int8_t* xq[N];
    const Q4GroupOffsets offs(x, cols, nb, t0, N);
    const int32_t* off[N];
    for (int t = 0; t < N; ++t) {
        xq[t] = x.q.data() + (t0 + t) * cols;
        off[t] = offs.rows[t];
    }
    const uint8_t* stream_end = w.tile_nibbles((re + kQ4Tile - 1) / kQ4Tile);
    for (int64_t tile = rb / kQ4Tile; tile * kQ4Tile < re; ++tile) {
        __m256 acc[N][2];
        tile_dot<N>(w, tile, xq, off, acc, stream_end);
        const int64_t r0 = tile * kQ4Tile;
        const bool whole = r0 >= rb && r0 + kQ4Tile <= re;
        for (int t = 0; t < N; ++t) {
            const __m256 a = _mm256_set1_ps(x.act_scale[static_cast<size_t>(t0 + t)]);
            float* yt = y + (t0 + t) * ldy + r0;
            if (whole) {
                _mm256_storeu_ps(yt, _mm256_div_ps(acc[t][0], a));
                _mm256_storeu_ps(yt + 8, _mm256_div_ps(acc[t][1], a));
                continue;
            }
            alignas(32) float v[kQ4Tile];
            _mm256_store_ps(v, _mm256_div_ps(acc[t][0], a));
            _mm256_store_ps(v + 8, _mm256_div_ps(acc[t][1], a));
            for (int64_t i = 0; i < kQ4Tile; ++i)
                if (r0 + i >= rb && r0 + i < re) yt[i] = v[i];
        }
    }
}

}  // namespace

void q4_head_matmul_avx2(const Q4Head& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb, int64_t re) {
    if (rb >= re) return;
    int64_t t = 0;
    for (; t + 2 <= x.n_tokens; t += 2) tiles<2>(w, x, y, ldy, rb, re, t);
    if (t < x.n_tokens) tiles<1>(w, x, y, ldy, rb, re, t);
}

}  // namespace bllama

#endif

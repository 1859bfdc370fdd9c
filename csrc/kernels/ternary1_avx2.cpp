// AVX2 kernels for the base-3 layout (pack.h), one ymm = 8 rows x 4 columns as in ternary_avx2.cpp. AVX2 has
// no unsigned byte compare: the top trit of x is read as two signed compares of x ^ 0x80 (each -1 where set),
// whose sum's absolute value is the code 0..2. Products go through vpmaddubsw into int16 sums per 256-column
// block: a block is 64 planes (12 chunks x 5 + 4), as many as the 2-bit layout's, so the same bound keeps the
// int16 sums exact (ternary_avx2.cpp).
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "kernels/pack.h"
#include "kernels/simd.h"
#include "kernels/ternary_avx2.h"

namespace bllama {

namespace {

struct Trits {
    // x >= 86 and x >= 171 as signed compares after flipping the sign bit: x ^ 0x80 > 85 - 128, > 170 - 128.
    __m256i bias = _mm256_set1_epi8(static_cast<char>(0x80)), t1 = _mm256_set1_epi8(85 - 128),
            t2 = _mm256_set1_epi8(170 - 128);
    __m256i top(__m256i x) const {
        const __m256i xs = _mm256_xor_si256(x, bias);
        return _mm256_abs_epi8(_mm256_add_epi8(_mm256_cmpgt_epi8(xs, t1), _mm256_cmpgt_epi8(xs, t2)));
    }
    static __m256i next(__m256i x) { return _mm256_add_epi8(x, _mm256_add_epi8(x, x)); }  // 3x mod 256
};

struct Args {
    const TernaryMatrix::Impl* w;
    const QuantizedActs* x;
    float* y;
    int64_t ldy, rb, re;
    int64_t h0, t0;  // first 8-row half, first token
};

template <int R, int N, int K>
inline void dot_chunk(__m256i (&acc16)[R][N], const uint8_t* const (&wp)[R], const int8_t* const (&qp)[N], int64_t off,
                      int64_t col, const Trits& tr) {
    __m256i xv[R];
#pragma GCC unroll 2
    for (int r = 0; r < R; ++r) xv[r] = _mm256_load_si256(reinterpret_cast<const __m256i*>(wp[r] + off));
#pragma GCC unroll 5
    for (int n = 0; n < K; ++n) {
        __m256i xb[N];
#pragma GCC unroll 2
        for (int t = 0; t < N; ++t) xb[t] = bcast(qp[t] + col + 4 * n);
#pragma GCC unroll 2
        for (int r = 0; r < R; ++r) {
            const __m256i c = tr.top(xv[r]);
#pragma GCC unroll 2
            for (int t = 0; t < N; ++t) acc16[r][t] = _mm256_add_epi16(acc16[r][t], _mm256_maddubs_epi16(c, xb[t]));
            if (n + 1 < K) xv[r] = Trits::next(xv[r]);
        }
    }
}

// int16 sums of block b into acc16 (reset here).
template <int R, int N>
inline void block_dot16(__m256i (&acc16)[R][N], const uint8_t* const (&wp)[R], const int8_t* const (&qp)[N], int64_t b,
                        const Trits& tr) {
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < N; ++t) acc16[r][t] = _mm256_setzero_si256();
    const int64_t base = b * kB3BlockBytes, col0 = b * kBlock;
    for (int64_t c = 0; c < kB3FullChunks; ++c)
        dot_chunk<R, N, 5>(acc16, wp, qp, base + c * kChunkBytes, col0 + c * kB3ChunkCols, tr);
    dot_chunk<R, N, 4>(acc16, wp, qp, base + kB3FullChunks * kChunkBytes, col0 + kB3TailCol, tr);
}

template <int R, int N, bool PerBlock>
void tile(const Args& a) {
    const TernaryMatrix::Impl& w = *a.w;
    const QuantizedActs& x = *a.x;
    const uint8_t* wp[R];
    const int8_t* qp[N];
    for (int r = 0; r < R; ++r) wp[r] = w.group_ptr3((a.h0 + r) / 2) + ((a.h0 + r) % 2) * 32;
    for (int t = 0; t < N; ++t) qp[t] = x.q.data() + (a.t0 + t) * w.cols;
    const Trits tr;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i acc[R][N];
    __m256 s[R][N];
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < N; ++t) {
            acc[r][t] = _mm256_setzero_si256();
            s[r][t] = _mm256_setzero_ps();
        }
    for (int64_t b = 0; b < w.nb; ++b) {
        __m256i acc16[R][N];
        block_dot16<R, N>(acc16, wp, qp, b, tr);
        for (int r = 0; r < R; ++r) {
            if constexpr (!PerBlock) {
                for (int t = 0; t < N; ++t) acc[r][t] = _mm256_add_epi32(acc[r][t], _mm256_madd_epi16(acc16[r][t], ones));
            } else {
                const int64_t h = a.h0 + r;
                const __m256 d = _mm256_load_ps(w.d_ptr(h / 2) + b * kGroupRows + (h % 2) * 8);
                for (int t = 0; t < N; ++t) {
                    const size_t tt = static_cast<size_t>(a.t0 + t);
                    const __m256i v = _mm256_sub_epi32(_mm256_madd_epi16(acc16[r][t], ones),
                                                       _mm256_set1_epi32(x.block_sums[tt * static_cast<size_t>(w.nb) + static_cast<size_t>(b)]));
                    const __m256 p = _mm256_mul_ps(_mm256_cvtepi32_ps(v), _mm256_div_ps(d, _mm256_set1_ps(x.act_scale[tt])));
                    s[r][t] = _mm256_add_ps(s[r][t], no_contract(p));
                }
            }
        }
    }
    for (int t = 0; t < N; ++t) {
        const size_t tt = static_cast<size_t>(a.t0 + t);
        for (int r = 0; r < R; ++r) {
            const int64_t h = a.h0 + r;
            __m256 v = s[r][t];
            if constexpr (!PerBlock) {
                const __m256i rs = _mm256_set1_epi32(x.row_sums[tt]);
                v = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(acc[r][t], rs)),
                                  _mm256_set1_ps(w.scale / x.act_scale[tt]));
            }
            store_half(a.y + static_cast<int64_t>(tt) * a.ldy + h * 8, v, h, a.rb, a.re);
        }
    }
}

using TileFn = void (*)(const Args&);
// 16 ymm: 2*R*N accumulators + R code bytes + N broadcasts + 3 constants; both halves of a group per tile, so the
// stream is read linearly (as the 2-bit AVX2 kernel).
constexpr int kMaxR = 2, kMaxN = 2;
const TileFn kTiles[2][kMaxR][kMaxN] = {{{tile<1, 1, false>, tile<1, 2, false>}, {tile<2, 1, false>, tile<2, 2, false>}},
                                        {{tile<1, 1, true>, tile<1, 2, true>}, {tile<2, 1, true>, tile<2, 2, true>}}};

}  // namespace

// Both 8-row halves of group g, the planes of a block decoded by compares and put four to a byte. Codes are at most
// 2, so 16-bit shifts never carry into the neighbouring byte.
void expand_base3_group_avx2(const TernaryMatrix& m, int64_t g, uint8_t* out) {
    const TernaryMatrix::Impl& w = m.impl();
    const Trits tr;
    const uint8_t* wp = w.group_ptr3(g);
    constexpr int64_t kPlanes = kBlock / 4;  // 64 per block
    for (int64_t b = 0; b < w.nb; ++b)
        for (int64_t h = 0; h < 2; ++h) {
            const uint8_t* blk = wp + b * kB3BlockBytes + h * 32;
            __m256i p[kPlanes];
            for (int64_t c = 0; c <= kB3FullChunks; ++c) {
                const int k = c < kB3FullChunks ? 5 : 4;
                __m256i x = _mm256_load_si256(reinterpret_cast<const __m256i*>(blk + c * kChunkBytes));
                for (int n = 0; n < k; ++n) {
                    p[c * 5 + n] = tr.top(x);
                    x = Trits::next(x);
                }
            }
            uint8_t* ob = out + b * kBlock * 4 + h * 32;
            for (int64_t j = 0; j < kPlanes / 4; ++j) {
                const __m256i v = _mm256_or_si256(_mm256_or_si256(p[4 * j], _mm256_slli_epi16(p[4 * j + 1], 2)),
                                                  _mm256_or_si256(_mm256_slli_epi16(p[4 * j + 2], 4), _mm256_slli_epi16(p[4 * j + 3], 6)));
                _mm256_store_si256(reinterpret_cast<__m256i*>(ob + j * kChunkBytes), v);
            }
        }
}

void ternary1_matmul_avx2(const TernaryMatrix& m, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb,
                          int64_t re) {
    const TernaryMatrix::Impl& w = m.impl();
    const int64_t h_begin = rb / 8, h_end = (re + 7) / 8;
    if (x.n_tokens > kMaxN) {
        // More than one token tile: each group is expanded once to the 2-bit layout (cols * 4 bytes, in L1/L2) and
        // the 2-bit tiles run over it; decoding planes in every tile ran at 0.6x the 2-bit prompt GEMM.
        thread_local std::vector<uint8_t, AlignedAllocator<uint8_t>> panel;
        if (panel.size() < static_cast<size_t>(w.cols * 4)) panel.resize(static_cast<size_t>(w.cols * 4));
        for (int64_t g = rb / kGroupRows; g < (re + kGroupRows - 1) / kGroupRows; ++g) {
            expand_base3_group_avx2(m, g, panel.data());
            ternary_gemm_group_avx2(m, panel.data(), g, x, y, ldy, rb, re);
        }
        return;
    }
    Args a{&w, &x, y, ldy, rb, re, 0, 0};
    for (int64_t h = h_begin; h < h_end; h += kMaxR) {
        const int r = static_cast<int>(std::min<int64_t>(kMaxR, h_end - h));
        a.h0 = h;
        for (int64_t t = 0; t < x.n_tokens; t += kMaxN) {
            const int n = static_cast<int>(std::min<int64_t>(kMaxN, x.n_tokens - t));
            a.t0 = t;
            kTiles[w.uniform ? 0 : 1][r - 1][n - 1](a);
        }
    }
}

}  // namespace bllama

#endif

// AVX-512 VNNI kernels. Weights stay as 2-bit codes in memory (the layout in pack.h); a
// shift+mask turns 64 stored bytes into four vectors of unsigned codes 0..2, and vpdpbusd multiplies
// them against broadcast int8 activation dwords. sum(code * q) - sum(q) = sum((code - 1) * q) makes the
// ternary product exact with one subtraction per output instead of sign handling per weight.
#if defined(__x86_64__) || defined(__i386__)
// gcc 12's own avx512fintrin.h trips -Wuninitialized (_mm512_undefined_* in cvtph_ps/reduce helpers).
#pragma GCC diagnostic ignored "-Wuninitialized"
#ifndef __clang__  // a gcc-only warning (clang warns about the unknown name instead)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <utility>
#include <cmath>

#include "kernels/pack.h"
#include "kernels/simd.h"
#include "kernels/ternary_avx512.h"

namespace bllama {

namespace {

// ---- activations -----------------------------------------------------------------------------

}  // namespace

void quantize_rows_avx512(const float* x, int64_t t0, int64_t t1, int64_t cols, QuantizedActs& out) {
    const int64_t nb = (cols + kBlock - 1) / kBlock;
    const __m512 sign = _mm512_set1_ps(-0.0f), lo = _mm512_set1_ps(-128.0f), hi = _mm512_set1_ps(127.0f);
    for (int64_t t = t0; t < t1; ++t) {
        const float* xt = x + t * cols;
        __m512 m = _mm512_setzero_ps();
        int64_t k = 0;
        for (; k + 16 <= cols; k += 16) m = _mm512_max_ps(m, _mm512_andnot_ps(sign, _mm512_loadu_ps(xt + k)));
        if (k < cols) {
            const __mmask16 mk = static_cast<__mmask16>((1u << (cols - k)) - 1);
            m = _mm512_max_ps(m, _mm512_andnot_ps(sign, _mm512_maskz_loadu_ps(mk, xt + k)));
        }
        const float amax = _mm512_reduce_max_ps(m);
        const float a = (1.0f / std::max(amax, 1e-5f)) * 127.0f;  // as PyTorch: see ref.cpp
        out.act_scale[static_cast<size_t>(t)] = a;
        const __m512 av = _mm512_set1_ps(a);
        int8_t* qt = out.q.data() + t * cols;
        int32_t total = 0;
        for (int64_t b = 0; b < nb; ++b) {
            const int64_t end = std::min(cols, (b + 1) * kBlock);
            __m512i s = _mm512_setzero_si512();
            for (k = b * kBlock; k < end; k += 16) {
                const __mmask16 mk = end - k >= 16 ? __mmask16(0xffff) : static_cast<__mmask16>((1u << (end - k)) - 1);
                __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, xt + k), av);
                v = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
                const __m512i i = _mm512_cvtps_epi32(v);
                s = _mm512_add_epi32(s, i);  // masked-off lanes are 0
                _mm_mask_storeu_epi8(qt + k, mk, _mm512_cvtepi32_epi8(i));
            }
            const int32_t bs = _mm512_reduce_add_epi32(s);
            out.block_sums[static_cast<size_t>(t * nb + b)] = bs;
            total += bs;
        }
        out.row_sums[static_cast<size_t>(t)] = total;
    }
}

namespace {

// ---- ternary tiles: R groups of 16 rows x N tokens ----------------------------------------------

struct TileArgs {
    const TernaryMatrix::Impl* w;
    const QuantizedActs* x;
    float* y;
    int64_t ldy, rb, re;
    int64_t g0, t0;
    const uint8_t* panel = nullptr;  // set: the tile's groups' 2-bit codes, group after group (not w's own)
    // Decode: the end of the range's codes. The stream's prefetch stops there: past it lie rows another thread's
    // chunk reads (fetched twice, and into the wrong core's cache): 1.7B decode 1.014x (1.003-1.045, 5 rounds).
    const uint8_t* stream_end = nullptr;
};

// Decode (one token). One 16-row group at a time, so the whole matrix is read as a single linear
// stream (groups are contiguous): concurrent streams measured slower here. U chunks per
// iteration with one accumulator per (chunk, plane) keep the vpdpbusd chains short; kGemvPrefetch
// (ternary_avx512.h) took one core to the measured read bandwidth.

template <int J>
inline __m512i plane(__m512i w, __m512i m3) {
    // A 16-bit shift is fine: the mask drops whatever crosses in from the neighbouring byte.
    if constexpr (J == 0) return _mm512_and_si512(w, m3);
    else return _mm512_and_si512(_mm512_srli_epi16(w, 2 * J), m3);
}

template <int R, int N, int J>
inline void dot_plane(__m512i (&acc)[R][N], const __m512i (&wv)[R], const int8_t* const (&qp)[N], int64_t off,
                      __m512i m3) {
    __m512i xb[N];
#pragma GCC unroll 8
    for (int t = 0; t < N; ++t) xb[t] = _mm512_set1_epi32(load_i32(qp[t] + off + 4 * J));
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
        const __m512i c = plane<J>(wv[r], m3);
#pragma GCC unroll 8
        for (int t = 0; t < N; ++t) acc[r][t] = _mm512_dpbusd_epi32(acc[r][t], c, xb[t]);
    }
}

// Integer dot products of chunks [c0, c1) into acc (not reset).
template <int R, int N>
inline void dot_chunks(__m512i (&acc)[R][N], const uint8_t* const (&wp)[R], const int8_t* const (&qp)[N], int64_t c0,
                       int64_t c1) {
    const __m512i m3 = _mm512_set1_epi8(3);
    for (int64_t c = c0; c < c1; ++c) {
        __m512i wv[R];
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
            wv[r] = _mm512_load_si512(wp[r] + c * kChunkBytes);
        }
        const int64_t off = c * kChunkCols;
        dot_plane<R, N, 0>(acc, wv, qp, off, m3);
        dot_plane<R, N, 1>(acc, wv, qp, off, m3);
        dot_plane<R, N, 2>(acc, wv, qp, off, m3);
        dot_plane<R, N, 3>(acc, wv, qp, off, m3);
    }
}

template <int R, int N>
void tile_uniform(const TileArgs& a) {
    const TernaryMatrix::Impl& w = *a.w;
    const QuantizedActs& x = *a.x;
    const uint8_t* wp[R];
    const int8_t* qp[N];
    for (int r = 0; r < R; ++r) wp[r] = a.panel ? a.panel + r * w.cols * 4 : w.group_ptr(a.g0 + r);
    for (int t = 0; t < N; ++t) qp[t] = x.q.data() + (a.t0 + t) * w.cols;
    __m512i acc[R][N];
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < N; ++t) acc[r][t] = _mm512_setzero_si512();
    dot_chunks<R, N>(acc, wp, qp, 0, w.cols / kChunkCols);
    for (int t = 0; t < N; ++t) {
        const int64_t tt = a.t0 + t;
        const __m512i rs = _mm512_set1_epi32(x.row_sums[static_cast<size_t>(tt)]);
        const __m512 f = _mm512_set1_ps(w.scale / x.act_scale[static_cast<size_t>(tt)]);
        for (int r = 0; r < R; ++r) {
            const int64_t g = a.g0 + r;
            const __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][t], rs)), f);
            _mm512_mask_storeu_ps(a.y + tt * a.ldy + g * kGroupRows, row_mask(g, a.rb, a.re), v);
        }
    }
}

// N tokens (1..4) against one group. acc[u][t][j]: chunk parity u (decode only), token t, plane j.
// PerBlock: the per-block scale epilogue after every 256 columns (non-uniform matrices).
template <int N, int U, bool PerBlock>
void tile_stream(const TileArgs& a) {
    const TernaryMatrix::Impl& w = *a.w;
    const QuantizedActs& x = *a.x;
    const uint8_t* wp = w.group_ptr(a.g0);
    const int8_t* qp[N];
    for (int t = 0; t < N; ++t) qp[t] = x.q.data() + (a.t0 + t) * w.cols;
    const __m512i m3 = _mm512_set1_epi8(3);
    __m512i acc[U][N][4];
    auto reset = [&] {
        for (int u = 0; u < U; ++u)
            for (int t = 0; t < N; ++t)
                for (int j = 0; j < 4; ++j) acc[u][t][j] = _mm512_setzero_si512();
    };
    auto total = [&](int t) {
        __m512i s = _mm512_setzero_si512();
        for (int u = 0; u < U; ++u)
            s = _mm512_add_epi32(s, _mm512_add_epi32(_mm512_add_epi32(acc[u][t][0], acc[u][t][1]),
                                                     _mm512_add_epi32(acc[u][t][2], acc[u][t][3])));
        return s;
    };
    // Whole row (uniform) or one block (PerBlock) of chunks [c0, c1); both are multiples of 16.
    auto run = [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; c += U) {
#pragma GCC unroll 4
            for (int u = 0; u < U; ++u) {
                const uint8_t* ahead = wp + (c + u) * kChunkBytes + kGemvPrefetch;
                if (ahead < a.stream_end) _mm_prefetch(reinterpret_cast<const char*>(ahead), _MM_HINT_T0);
                const __m512i v = _mm512_load_si512(wp + (c + u) * kChunkBytes);
                const __m512i p0 = plane<0>(v, m3), p1 = plane<1>(v, m3), p2 = plane<2>(v, m3), p3 = plane<3>(v, m3);
#pragma GCC unroll 4
                for (int t = 0; t < N; ++t) {
                    const int8_t* qc = qp[t] + (c + u) * kChunkCols;
                    acc[u][t][0] = _mm512_dpbusd_epi32(acc[u][t][0], p0, _mm512_set1_epi32(load_i32(qc)));
                    acc[u][t][1] = _mm512_dpbusd_epi32(acc[u][t][1], p1, _mm512_set1_epi32(load_i32(qc + 4)));
                    acc[u][t][2] = _mm512_dpbusd_epi32(acc[u][t][2], p2, _mm512_set1_epi32(load_i32(qc + 8)));
                    acc[u][t][3] = _mm512_dpbusd_epi32(acc[u][t][3], p3, _mm512_set1_epi32(load_i32(qc + 12)));
                }
            }
        }
    };
    const __mmask16 mask = row_mask(a.g0, a.rb, a.re);
    if constexpr (!PerBlock) {
        reset();
        run(0, w.cols / kChunkCols);
        for (int t = 0; t < N; ++t) {
            const size_t tt = static_cast<size_t>(a.t0 + t);
            const __m512i rs = _mm512_set1_epi32(x.row_sums[tt]);
            const __m512 f = _mm512_set1_ps(w.scale / x.act_scale[tt]);
            const __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(total(t), rs)), f);
            _mm512_mask_storeu_ps(a.y + static_cast<int64_t>(tt) * a.ldy + a.g0 * kGroupRows, mask, v);
        }
    } else {
        constexpr int64_t kChunksPerBlock = kBlock / kChunkCols;
        __m512 s[N];
        for (int t = 0; t < N; ++t) s[t] = _mm512_setzero_ps();
        for (int64_t b = 0; b < w.nb; ++b) {
            reset();
            run(b * kChunksPerBlock, (b + 1) * kChunksPerBlock);
            const __m512 d = _mm512_load_ps(w.d_ptr(a.g0) + b * kGroupRows);
            for (int t = 0; t < N; ++t) {
                const size_t tt = static_cast<size_t>(a.t0 + t);
                const __m512i bs = _mm512_set1_epi32(x.block_sums[tt * static_cast<size_t>(w.nb) + static_cast<size_t>(b)]);
                const __m512 p = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(total(t), bs)),
                                               _mm512_div_ps(d, _mm512_set1_ps(x.act_scale[tt])));
                s[t] = _mm512_add_ps(s[t], no_contract(p));
            }
        }
        for (int t = 0; t < N; ++t) _mm512_mask_storeu_ps(a.y + (a.t0 + t) * a.ldy + a.g0 * kGroupRows, mask, s[t]);
    }
}

template <int R, int N>
void tile_blocks(const TileArgs& a) {
    const TernaryMatrix::Impl& w = *a.w;
    const QuantizedActs& x = *a.x;
    const uint8_t* wp[R];
    const int8_t* qp[N];
    for (int r = 0; r < R; ++r) wp[r] = a.panel ? a.panel + r * w.cols * 4 : w.group_ptr(a.g0 + r);
    for (int t = 0; t < N; ++t) qp[t] = x.q.data() + (a.t0 + t) * w.cols;
    __m512 s[R][N];
    __m512 av[N];
    for (int t = 0; t < N; ++t) av[t] = _mm512_set1_ps(x.act_scale[static_cast<size_t>(a.t0 + t)]);
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < N; ++t) s[r][t] = _mm512_setzero_ps();
    constexpr int64_t kChunksPerBlock = kBlock / kChunkCols;
    for (int64_t b = 0; b < w.nb; ++b) {
        __m512i acc[R][N];
        for (int r = 0; r < R; ++r)
            for (int t = 0; t < N; ++t) acc[r][t] = _mm512_setzero_si512();
        dot_chunks<R, N>(acc, wp, qp, b * kChunksPerBlock, (b + 1) * kChunksPerBlock);
        for (int r = 0; r < R; ++r) {
            const __m512 d = _mm512_load_ps(w.d_ptr(a.g0 + r) + b * kGroupRows);
            for (int t = 0; t < N; ++t) {
                const __m512i bs = _mm512_set1_epi32(x.block_sums[static_cast<size_t>((a.t0 + t) * w.nb + b)]);
                const __m512 p = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][t], bs)), _mm512_div_ps(d, av[t]));
                s[r][t] = _mm512_add_ps(s[r][t], no_contract(p));
            }
        }
    }
    for (int t = 0; t < N; ++t)
        for (int r = 0; r < R; ++r) {
            const int64_t g = a.g0 + r;
            _mm512_mask_storeu_ps(a.y + (a.t0 + t) * a.ldy + g * kGroupRows, row_mask(g, a.rb, a.re), s[r][t]);
        }
}

using TileFn = void (*)(const TileArgs&);

// Register budget (32 zmm): R*N accumulators + R weight vectors + N broadcasts + mask + a code
// vector. 4x4 measured fastest (about two vpdpbusd per cycle); larger tiles spill (bench/NOTES-kernels.md).
constexpr int kMaxR = 4, kMaxN = 4;
constexpr int kMaxRB = 2, kMaxNB = 4;  // per-block path also holds R*N float sums

template <int R, int... Ns>
constexpr std::array<TileFn, sizeof...(Ns)> uniform_row(std::integer_sequence<int, Ns...>) {
    return {tile_uniform<R, Ns + 1>...};
}
template <int R, int... Ns>
constexpr std::array<TileFn, sizeof...(Ns)> blocks_row(std::integer_sequence<int, Ns...>) {
    return {tile_blocks<R, Ns + 1>...};
}

const std::array<TileFn, kMaxN> kUniform[kMaxR] = {
    uniform_row<1>(std::make_integer_sequence<int, kMaxN>{}), uniform_row<2>(std::make_integer_sequence<int, kMaxN>{}),
    uniform_row<3>(std::make_integer_sequence<int, kMaxN>{}), uniform_row<4>(std::make_integer_sequence<int, kMaxN>{})};
const std::array<TileFn, kMaxNB> kBlocks[kMaxRB] = {blocks_row<1>(std::make_integer_sequence<int, kMaxNB>{}),
                                                   blocks_row<2>(std::make_integer_sequence<int, kMaxNB>{})};

}  // namespace

void ternary_matmul_avx512(const TernaryMatrix& m, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb,
                           int64_t re) {
    const TernaryMatrix::Impl& w = m.impl();
    const int64_t g_begin = rb / kGroupRows, g_end = (re + kGroupRows - 1) / kGroupRows;
    TileArgs a{&w, &x, y, ldy, rb, re, 0, 0};
    // Up to 4 tokens the weights dominate the traffic: stream one group at a time (see kGemvPrefetch).
    static const TileFn kStream[2][4] = {
        {tile_stream<1, 2, false>, tile_stream<2, 1, false>, tile_stream<3, 1, false>, tile_stream<4, 1, false>},
        {tile_stream<1, 2, true>, tile_stream<2, 1, true>, tile_stream<3, 1, true>, tile_stream<4, 1, true>}};
    if (x.n_tokens <= 4) {
        a.stream_end = w.group_ptr(g_end);
        for (a.g0 = g_begin; a.g0 < g_end; ++a.g0) kStream[w.uniform ? 0 : 1][x.n_tokens - 1](a);
        return;
    }
    // Groups outer, tokens inner: an R-group weight panel (R * cols/4 bytes) stays in L2 while every
    // token tile streams past it.
    const int maxr = ternary_gemm_panel_groups_avx512(m);
    for (int64_t g = g_begin; g < g_end; g += maxr)
        ternary_gemm_panel_avx512(m, nullptr, g, static_cast<int>(std::min<int64_t>(maxr, g_end - g)), x, y, ldy, rb, re);
}

int ternary_gemm_panel_groups_avx512(const TernaryMatrix& m) { return m.impl().uniform ? kMaxR : kMaxRB; }

void ternary_gemm_panel_avx512(const TernaryMatrix& m, const uint8_t* panel, int64_t g, int r, const QuantizedActs& x,
                               float* y, int64_t ldy, int64_t rb, int64_t re) {
    const TernaryMatrix::Impl& w = m.impl();
    TileArgs a{&w, &x, y, ldy, rb, re, g, 0, panel};
    const int maxn = w.uniform ? kMaxN : kMaxNB;
    for (int64_t t = 0; t < x.n_tokens; t += maxn) {
        const int n = static_cast<int>(std::min<int64_t>(maxn, x.n_tokens - t));
        a.t0 = t;
        (w.uniform ? kUniform[r - 1][n - 1] : kBlocks[r - 1][n - 1])(a);
    }
}

}  // namespace bllama

#endif

// Float head, AVX-512: vcvtph2ps widens 16 halves, FMA into fp32 accumulators. Decode batches (up to
// kF16ExactTokens tokens) read the head as one linear stream; prompt chunks use register tiles (head_f16.h).
#if defined(__x86_64__) || defined(__i386__)
// gcc 12's own avx512fintrin.h trips -Wuninitialized (_mm512_undefined_* in cvtph_ps/reduce helpers).
#pragma GCC diagnostic ignored "-Wuninitialized"
#ifndef __clang__  // a gcc-only warning (clang warns about the unknown name instead)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "kernels/head_f16.h"
#include "kernels/simd.h"

namespace bllama {

namespace {

// The ternary GEMV's prefetch distance (measured in ternary_avx512.cpp), used here as it was before the split.
constexpr int64_t kGemvPrefetch = 8192;

// Several tokens: R rows x N tokens of fp32 accumulators, the row tile reused (from L1) by every token
// tile. 6x4 and 8x3 measured fastest, 4x4 a little slower; 3x8 and 2x8 spill (bench/NOTES-kernels.md).
template <int R, int N>
void f16_tile(const uint16_t* w, int64_t cols, const float* x, float* y, int64_t ldy, int64_t r0, int64_t t0) {
    __m512 acc[R][N];
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < N; ++t) acc[r][t] = _mm512_setzero_ps();
    const uint16_t* wr[R];
    const float* xt[N];
    for (int r = 0; r < R; ++r) wr[r] = w + (r0 + r) * cols;
    for (int t = 0; t < N; ++t) xt[t] = x + (t0 + t) * cols;
    int64_t k = 0;
    for (; k + 16 <= cols; k += 16) {
        __m512 xv[N];
#pragma GCC unroll 8
        for (int t = 0; t < N; ++t) xv[t] = _mm512_loadu_ps(xt[t] + k);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
            const __m512 wv = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr[r] + k)));
#pragma GCC unroll 8
            for (int t = 0; t < N; ++t) acc[r][t] = _mm512_fmadd_ps(wv, xv[t], acc[r][t]);
        }
    }
    if (k < cols) {
        const __mmask16 mk = static_cast<__mmask16>((1u << (cols - k)) - 1);
        for (int r = 0; r < R; ++r) {
            const __m512 wv = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mk, wr[r] + k));
            for (int t = 0; t < N; ++t) acc[r][t] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(mk, xt[t] + k), acc[r][t]);
        }
    }
    for (int t = 0; t < N; ++t)
        for (int r = 0; r < R; ++r) y[(t0 + t) * ldy + r0 + r] = _mm512_reduce_add_ps(acc[r][t]);
}

// Decode-sized batches: one row at a time with four accumulators per token, so the matrix is read as one
// linear stream with a prefetch ahead (concurrent row streams measured well below bandwidth). Every
// (row, token) sum is added in the same order whatever N, so a token's logits do not depend on the batch it
// is in (batched decoding equals decoding alone, bit for bit).
template <int N>
void f16_gemv_rows(const uint16_t* w, int64_t cols, const float* x, float* y, int64_t ldy, int64_t rb, int64_t re) {
    for (int64_t r = rb; r < re; ++r) {
        const uint16_t* wr = w + r * cols;
        __m512 acc[N][4];
        for (int t = 0; t < N; ++t) acc[t][0] = acc[t][1] = acc[t][2] = acc[t][3] = _mm512_setzero_ps();
        int64_t k = 0;
        for (; k + 64 <= cols; k += 64) {
            _mm_prefetch(reinterpret_cast<const char*>(wr + k) + kGemvPrefetch, _MM_HINT_T0);
            _mm_prefetch(reinterpret_cast<const char*>(wr + k) + kGemvPrefetch + 64, _MM_HINT_T0);
            __m512 wv[4];
            for (int j = 0; j < 4; ++j)
                wv[j] = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr + k + 16 * j)));
            for (int t = 0; t < N; ++t)
                for (int j = 0; j < 4; ++j)
                    acc[t][j] = _mm512_fmadd_ps(wv[j], _mm512_loadu_ps(x + t * cols + k + 16 * j), acc[t][j]);
        }
        for (; k < cols; k += 16) {
            const __mmask16 mk = cols - k >= 16 ? __mmask16(0xffff) : static_cast<__mmask16>((1u << (cols - k)) - 1);
            const __m512 wv = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mk, wr + k));
            for (int t = 0; t < N; ++t)
                acc[t][0] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(mk, x + t * cols + k), acc[t][0]);
        }
        for (int t = 0; t < N; ++t)
            y[t * ldy + r] = _mm512_reduce_add_ps(
                _mm512_add_ps(_mm512_add_ps(acc[t][0], acc[t][1]), _mm512_add_ps(acc[t][2], acc[t][3])));
    }
}

}  // namespace

void f16_matmul_avx512(const uint16_t* w, int64_t cols, const float* x, int64_t n_tokens, float* y, int64_t ldy,
                       int64_t rb, int64_t re) {
    if (n_tokens > kF16ExactTokens) {  // prompt chunks: register tiles (another summation order)
        f16_tiles<6, 4>(rb, re, n_tokens, [&](auto rows, auto tokens, int64_t r, int64_t t) {
            f16_tile<decltype(rows)::value, decltype(tokens)::value>(w, cols, x, y, ldy, r, t);
        });
        return;
    }
    for (int64_t t = 0; t < n_tokens; t += 4) {  // up to 4 tokens per pass over the rows (16 accumulators)
        const float* xt = x + t * cols;
        float* yt = y + t * ldy;
        switch (std::min<int64_t>(4, n_tokens - t)) {
            case 1: f16_gemv_rows<1>(w, cols, xt, yt, ldy, rb, re); break;
            case 2: f16_gemv_rows<2>(w, cols, xt, yt, ldy, rb, re); break;
            case 3: f16_gemv_rows<3>(w, cols, xt, yt, ldy, rb, re); break;
            default: f16_gemv_rows<4>(w, cols, xt, yt, ldy, rb, re); break;
        }
    }
}

}  // namespace bllama

#endif

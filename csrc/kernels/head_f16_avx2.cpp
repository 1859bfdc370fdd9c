// Float head, AVX2 + F16C: vcvtph2ps widens 8 halves, FMA into fp32 accumulators. Decode batches (up to
// kF16ExactTokens tokens) read the head as one linear stream; prompt chunks use register tiles (head_f16.h).
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include <cstdint>

#include "kernels/half.h"
#include "kernels/head_f16.h"
#include "kernels/simd.h"

namespace bllama {

namespace {

inline float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

template <int R, int N>
void f16_tile(const uint16_t* w, int64_t cols, const float* x, float* y, int64_t ldy, int64_t r0, int64_t t0) {
    __m256 acc[R][N];
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < N; ++t) acc[r][t] = _mm256_setzero_ps();
    const uint16_t* wr[R];
    const float* xt[N];
    for (int r = 0; r < R; ++r) wr[r] = w + (r0 + r) * cols;
    for (int t = 0; t < N; ++t) xt[t] = x + (t0 + t) * cols;
    int64_t k = 0;
    for (; k + 8 <= cols; k += 8) {
        __m256 xv[N];
#pragma GCC unroll 8
        for (int t = 0; t < N; ++t) xv[t] = _mm256_loadu_ps(xt[t] + k);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
            const __m256 wv = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wr[r] + k)));
#pragma GCC unroll 8
            for (int t = 0; t < N; ++t) acc[r][t] = _mm256_fmadd_ps(wv, xv[t], acc[r][t]);
        }
    }
    for (int t = 0; t < N; ++t)
        for (int r = 0; r < R; ++r) {
            float s = hsum_ps(acc[r][t]);
            for (int64_t kk = k; kk < cols; ++kk) s += f16_to_f32(wr[r][kk]) * xt[t][kk];
            y[(t0 + t) * ldy + r0 + r] = s;
        }
}

// Decode-sized batches: one row at a time, four accumulators per token, prefetch ahead: the matrix is one
// linear stream. Every (row, token) sum is added in the same order whatever N (batched decoding equals decoding
// alone, bit for bit).
template <int N>
void f16_gemv_rows(const uint16_t* w, int64_t cols, const float* x, float* y, int64_t ldy, int64_t rb, int64_t re) {
    auto cvt = [](const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); };
    for (int64_t r = rb; r < re; ++r) {
        const uint16_t* wr = w + r * cols;
        __m256 acc[N][4];
        for (int t = 0; t < N; ++t) acc[t][0] = acc[t][1] = acc[t][2] = acc[t][3] = _mm256_setzero_ps();
        int64_t k = 0;
        for (; k + 32 <= cols; k += 32) {
            _mm_prefetch(reinterpret_cast<const char*>(wr + k) + 8192, _MM_HINT_T0);
            __m256 wv[4];
            for (int j = 0; j < 4; ++j) wv[j] = cvt(wr + k + 8 * j);
            for (int t = 0; t < N; ++t)
                for (int j = 0; j < 4; ++j)
                    acc[t][j] = _mm256_fmadd_ps(wv[j], _mm256_loadu_ps(x + t * cols + k + 8 * j), acc[t][j]);
        }
        const int64_t k8 = k;
        for (int t = 0; t < N; ++t) {
            const float* xt = x + t * cols;
            for (k = k8; k + 8 <= cols; k += 8) acc[t][0] = _mm256_fmadd_ps(cvt(wr + k), _mm256_loadu_ps(xt + k), acc[t][0]);
            float s = hsum_ps(_mm256_add_ps(_mm256_add_ps(acc[t][0], acc[t][1]), _mm256_add_ps(acc[t][2], acc[t][3])));
            for (; k < cols; ++k) s += f16_to_f32(wr[k]) * xt[k];
            y[t * ldy + r] = s;
        }
    }
}

}  // namespace

void f16_matmul_avx2(const uint16_t* w, int64_t cols, const float* x, int64_t n_tokens, float* y, int64_t ldy,
                     int64_t rb, int64_t re) {
    if (n_tokens > kF16ExactTokens) {  // prompt chunks: register tiles (another summation order)
        f16_tiles<4, 2>(rb, re, n_tokens, [&](auto rows, auto tokens, int64_t r, int64_t t) {
            f16_tile<decltype(rows)::value, decltype(tokens)::value>(w, cols, x, y, ldy, r, t);
        });
        return;
    }
    for (int64_t t = 0; t < n_tokens; t += 2) {  // up to 2 tokens per pass over the rows (8 accumulators)
        if (n_tokens - t >= 2) f16_gemv_rows<2>(w, cols, x + t * cols, y + t * ldy, ldy, rb, re);
        else f16_gemv_rows<1>(w, cols, x + t * cols, y + t * ldy, ldy, rb, re);
    }
}

}  // namespace bllama

#endif

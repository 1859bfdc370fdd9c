// Int8 head, AVX2: both operands sign-extended to int16 (vpmovsxbw) and multiplied with vpmaddwd into
// int32 pairs. Exact for every int8 pair (|pair sum| <= 2 * 128 * 128), unlike vpmaddubsw, whose int16
// pair sums would saturate for biased activations (2 * 255 * 127 > 32767). 16 columns per step; the
// column tail (cols % 16) is added in scalar. Tiles of R rows x N tokens as in head_q8_avx512.cpp.
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include <cstdint>

#include "kernels/head_q8.h"
#include "kernels/simd.h"

namespace bllama {

namespace {

inline int32_t hsum_i32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

inline __m256i load16(const int8_t* p) {
    return _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

template <int R, int N>
void tile(const Q8Head& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t r0, int64_t t0) {
    const int64_t cols = w.cols();
    const int8_t* wp[R];
    const int8_t* qp[N];
    for (int r = 0; r < R; ++r) wp[r] = w.row(r0 + r);
    for (int t = 0; t < N; ++t) qp[t] = x.q.data() + (t0 + t) * cols;
    __m256i acc[R][N];
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < N; ++t) acc[r][t] = _mm256_setzero_si256();
    int64_t c = 0;
    for (; c + 16 <= cols; c += 16) {
        __m256i a[N];
        for (int t = 0; t < N; ++t) a[t] = load16(qp[t] + c);
        for (int r = 0; r < R; ++r) {
            const __m256i wv = load16(wp[r] + c);
            for (int t = 0; t < N; ++t) acc[r][t] = _mm256_add_epi32(acc[r][t], _mm256_madd_epi16(wv, a[t]));
        }
    }
    for (int t = 0; t < N; ++t) {
        const float a = x.act_scale[static_cast<size_t>(t0 + t)];
        for (int r = 0; r < R; ++r) {
            const int64_t rr = r0 + r;
            int32_t s = hsum_i32(acc[r][t]);
            for (int64_t k = c; k < cols; ++k) s += static_cast<int32_t>(wp[r][k]) * qp[t][k];
            y[(t0 + t) * ldy + rr] = static_cast<float>(s) * (w.scale(rr) / a);
        }
    }
}

// One token: one row at a time, four accumulators, prefetch ahead: one linear stream (see the AVX-512 file).
constexpr int64_t kPrefetch = 4096;

void gemv_rows(const Q8Head& w, const QuantizedActs& x, float* y, int64_t rb, int64_t re) {
    const int64_t cols = w.cols();
    const int8_t* q = x.q.data();
    const float a = x.act_scale[0];
    for (int64_t r = rb; r < re; ++r) {
        const int8_t* wr = w.row(r);
        __m256i acc0 = _mm256_setzero_si256(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
        int64_t k = 0;
        for (; k + 64 <= cols; k += 64) {
            _mm_prefetch(reinterpret_cast<const char*>(wr + k) + kPrefetch, _MM_HINT_T0);
            acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(load16(wr + k), load16(q + k)));
            acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(load16(wr + k + 16), load16(q + k + 16)));
            acc2 = _mm256_add_epi32(acc2, _mm256_madd_epi16(load16(wr + k + 32), load16(q + k + 32)));
            acc3 = _mm256_add_epi32(acc3, _mm256_madd_epi16(load16(wr + k + 48), load16(q + k + 48)));
        }
        for (; k + 16 <= cols; k += 16) acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(load16(wr + k), load16(q + k)));
        int32_t s = hsum_i32(_mm256_add_epi32(_mm256_add_epi32(acc0, acc1), _mm256_add_epi32(acc2, acc3)));
        for (; k < cols; ++k) s += static_cast<int32_t>(wr[k]) * q[k];
        y[r] = static_cast<float>(s) * (w.scale(r) / a);
    }
}

template <int R>
void row_block(const Q8Head& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t r0) {
    int64_t t = 0;
    for (; t + 2 <= x.n_tokens; t += 2) tile<R, 2>(w, x, y, ldy, r0, t);
    if (t < x.n_tokens) tile<R, 1>(w, x, y, ldy, r0, t);
}

}  // namespace

void q8_head_matmul_avx2(const Q8Head& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb, int64_t re) {
    if (x.n_tokens == 1) return gemv_rows(w, x, y, rb, re);
    int64_t r = rb;
    for (; r + 4 <= re; r += 4) row_block<4>(w, x, y, ldy, r);
    for (; r < re; ++r) row_block<1>(w, x, y, ldy, r);
}

}  // namespace bllama

#endif

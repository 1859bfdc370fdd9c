// Int8 head, AVX-512 VNNI: vpdpbusd multiplies unsigned by signed bytes, so the activations are biased
// to u = q + 128 in [0, 255] (one xor with 0x80 per loaded vector) and 128 * rowsum(w), kept per row at
// load, is subtracted at the end: sum_k u_k w_k - 128 sum_k w_k = sum_k q_k w_k, exactly in int32
// (the biased sum is at most 255 * 127 * kQ8HeadMaxCols < 2^31). Tiles of R rows x N tokens: one
// weight vector feeds N tokens, one activation vector feeds R rows. The column tail (cols % 64) uses
// zero-masked loads: a masked weight byte is 0, so its biased activation byte contributes nothing.
#if defined(__x86_64__) || defined(__i386__)
// GCC 12's AVX-512 headers trip -W(maybe-)uninitialized inside _mm512_reduce_add_epi32 (a known false
// positive, see attention_avx512.cpp); silence it for this file only.
#pragma GCC diagnostic ignored "-Wuninitialized"
#ifndef __clang__  // a gcc-only warning (clang warns about the unknown name instead)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <cstdint>

#include "kernels/head_q8.h"
#include "kernels/simd.h"

namespace bllama {

namespace {

template <int R, int N>
void tile(const Q8Head& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t r0, int64_t t0) {
    const int64_t cols = w.cols();
    const int8_t* wp[R];
    const int8_t* qp[N];
    for (int r = 0; r < R; ++r) wp[r] = w.row(r0 + r);
    for (int t = 0; t < N; ++t) qp[t] = x.q.data() + (t0 + t) * cols;
    const __m512i bias = _mm512_set1_epi8(static_cast<char>(0x80));
    __m512i acc[R][N];
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < N; ++t) acc[r][t] = _mm512_setzero_si512();
    auto step = [&](int64_t c, __mmask64 m) {
        __m512i a[N];
        for (int t = 0; t < N; ++t) a[t] = _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, qp[t] + c), bias);
        for (int r = 0; r < R; ++r) {
            const __m512i wv = _mm512_maskz_loadu_epi8(m, wp[r] + c);
            for (int t = 0; t < N; ++t) acc[r][t] = _mm512_dpbusd_epi32(acc[r][t], a[t], wv);
        }
    };
    int64_t c = 0;
    for (; c + 64 <= cols; c += 64) step(c, ~0ull);
    if (c < cols) step(c, ~0ull >> (64 - (cols - c)));
    for (int t = 0; t < N; ++t) {
        const float a = x.act_scale[static_cast<size_t>(t0 + t)];
        for (int r = 0; r < R; ++r) {
            const int64_t rr = r0 + r;
            const int64_t biased = static_cast<uint32_t>(_mm512_reduce_add_epi32(acc[r][t]));
            const int32_t s = static_cast<int32_t>(biased - 128 * static_cast<int64_t>(w.row_sum(rr)));
            y[(t0 + t) * ldy + rr] = static_cast<float>(s) * (w.scale(rr) / a);
        }
    }
}

// One token: one row at a time with four accumulators and a prefetch ahead, so the head is read as one
// linear stream (as the f16 GEMV in ternary_avx512.cpp: concurrent row streams measured slower there).
constexpr int64_t kPrefetch = 4096;

void gemv_rows(const Q8Head& w, const QuantizedActs& x, float* y, int64_t rb, int64_t re) {
    const int64_t cols = w.cols();
    const int8_t* q = x.q.data();
    const float a = x.act_scale[0];
    const __m512i bias = _mm512_set1_epi8(static_cast<char>(0x80));
    for (int64_t r = rb; r < re; ++r) {
        const int8_t* wr = w.row(r);
        __m512i acc0 = _mm512_setzero_si512(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
        int64_t k = 0;
        for (; k + 256 <= cols; k += 256) {
            _mm_prefetch(reinterpret_cast<const char*>(wr + k) + kPrefetch, _MM_HINT_T0);
            _mm_prefetch(reinterpret_cast<const char*>(wr + k) + kPrefetch + 64, _MM_HINT_T0);
            _mm_prefetch(reinterpret_cast<const char*>(wr + k) + kPrefetch + 128, _MM_HINT_T0);
            _mm_prefetch(reinterpret_cast<const char*>(wr + k) + kPrefetch + 192, _MM_HINT_T0);
            acc0 = _mm512_dpbusd_epi32(acc0, _mm512_xor_si512(_mm512_loadu_si512(q + k), bias), _mm512_loadu_si512(wr + k));
            acc1 = _mm512_dpbusd_epi32(acc1, _mm512_xor_si512(_mm512_loadu_si512(q + k + 64), bias), _mm512_loadu_si512(wr + k + 64));
            acc2 = _mm512_dpbusd_epi32(acc2, _mm512_xor_si512(_mm512_loadu_si512(q + k + 128), bias), _mm512_loadu_si512(wr + k + 128));
            acc3 = _mm512_dpbusd_epi32(acc3, _mm512_xor_si512(_mm512_loadu_si512(q + k + 192), bias), _mm512_loadu_si512(wr + k + 192));
        }
        for (; k < cols; k += 64) {
            const __mmask64 m = cols - k >= 64 ? ~0ull : ~0ull >> (64 - (cols - k));
            acc0 = _mm512_dpbusd_epi32(acc0, _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, q + k), bias),
                                       _mm512_maskz_loadu_epi8(m, wr + k));
        }
        const int64_t biased = static_cast<uint32_t>(
            _mm512_reduce_add_epi32(_mm512_add_epi32(_mm512_add_epi32(acc0, acc1), _mm512_add_epi32(acc2, acc3))));
        const int32_t s = static_cast<int32_t>(biased - 128 * static_cast<int64_t>(w.row_sum(r)));
        y[r] = static_cast<float>(s) * (w.scale(r) / a);
    }
}

// Rows [r0, r0 + R) against every token, 4 tokens at a time.
template <int R>
void row_block(const Q8Head& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t r0) {
    int64_t t = 0;
    for (; t + 4 <= x.n_tokens; t += 4) tile<R, 4>(w, x, y, ldy, r0, t);
    switch (x.n_tokens - t) {
        case 3: tile<R, 3>(w, x, y, ldy, r0, t); break;
        case 2: tile<R, 2>(w, x, y, ldy, r0, t); break;
        case 1: tile<R, 1>(w, x, y, ldy, r0, t); break;
        default: break;
    }
}

}  // namespace

void q8_head_matmul_avx512(const Q8Head& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb, int64_t re) {
    if (x.n_tokens == 1) return gemv_rows(w, x, y, rb, re);
    int64_t r = rb;
    for (; r + 4 <= re; r += 4) row_block<4>(w, x, y, ldy, r);
    for (; r < re; ++r) row_block<1>(w, x, y, ldy, r);
}

}  // namespace bllama

#endif

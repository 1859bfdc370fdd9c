// 4-bit head, AVX2 (also the AVX-512 kind's path for several tokens). Per 32-column
// block: the 16 nibble bytes widen to 32 unsigned bytes u = q + 8; vpmaddubsw(u, x) - vpmaddubsw(8, x) gives
// the int16 pair sums of q * x exactly (|pair| <= 2 * 8 * 128), vpmaddwd with ones the eight int32 lanes of
// 4-column sums that head_q4.h defines, and one fma per block adds them times the block's scale into the
// row's eight fp32 lanes. A row is decoded once for up to four tokens.
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include <cstdint>

#include "kernels/half.h"
#include "kernels/head_q4.h"
#include "kernels/simd.h"

namespace bllama {

namespace {

constexpr int64_t kPrefetch = 2048;  // bytes ahead in the row stream

inline float reduce(__m256 acc) {  // ((a0+a4) + (a2+a6)) + ((a1+a5) + (a3+a7)), as head_q4.h defines
    const __m128 v4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    const __m128 v2 = _mm_add_ps(v4, _mm_movehl_ps(v4, v4));
    return _mm_cvtss_f32(_mm_add_ss(v2, _mm_shuffle_ps(v2, v2, 1)));
}

template <int N>
void rows_tokens(const Q4Head& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb, int64_t re,
                 int64_t t0) {
    const int64_t cols = w.cols(), nb = w.blocks();
    const __m256i low = _mm256_set1_epi8(0x0F), eight = _mm256_set1_epi8(8), ones = _mm256_set1_epi16(1);
    const int8_t* q[N];
    for (int t = 0; t < N; ++t) q[t] = x.q.data() + (t0 + t) * cols;
    for (int64_t r = rb; r < re; ++r) {
        const uint8_t* nib = w.row(r);
        const uint16_t* sc = w.scales(r);
        __m256 acc[N];
        for (int t = 0; t < N; ++t) acc[t] = _mm256_setzero_ps();
        alignas(32) float d[8];
        for (int64_t b = 0; b < nb; ++b) {
            if (b % 8 == 0) {
                if (b + 8 <= nb) _mm256_store_ps(d, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sc + b))));
                else
                    for (int64_t j = b; j < nb; ++j) d[j - b] = f16_to_f32(sc[j]);
                _mm_prefetch(reinterpret_cast<const char*>(nib + b * 16) + kPrefetch, _MM_HINT_T0);
            }
            const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(nib + b * 16));
            const __m256i u = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), low);
            const __m256 db = _mm256_broadcast_ss(d + b % 8);
            for (int t = 0; t < N; ++t) {
                const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q[t] + b * kQ4Block));
                const __m256i p16 = _mm256_sub_epi16(_mm256_maddubs_epi16(u, xv), _mm256_maddubs_epi16(eight, xv));
                const __m256i p32 = _mm256_madd_epi16(p16, ones);
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p32), db, acc[t]);
            }
        }
        for (int t = 0; t < N; ++t) y[(t0 + t) * ldy + r] = reduce(acc[t]) / x.act_scale[static_cast<size_t>(t0 + t)];
    }
}

// One token, two rows at a time: the activation loads and the 8 * x correction are shared by both rows, and the
// two rows' accumulators are independent chains. Each row's lanes see the same operations as in rows_tokens.
void two_rows(const Q4Head& w, const int8_t* q, float a, float* y, int64_t r) {
    const int64_t nb = w.blocks();
    const uint8_t* n0 = w.row(r);
    const uint8_t* n1 = w.row(r + 1);
    const uint16_t* s0 = w.scales(r);
    const uint16_t* s1 = w.scales(r + 1);
    const __m256i low = _mm256_set1_epi8(0x0F), eight = _mm256_set1_epi8(8), ones = _mm256_set1_epi16(1);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0;
    alignas(32) float d0[8], d1[8];
    for (int64_t b = 0; b < nb; ++b) {
        if (b % 8 == 0) {
            if (b + 8 <= nb) {
                _mm256_store_ps(d0, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s0 + b))));
                _mm256_store_ps(d1, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s1 + b))));
            } else {
                for (int64_t j = b; j < nb; ++j) d0[j - b] = f16_to_f32(s0[j]), d1[j - b] = f16_to_f32(s1[j]);
            }
            _mm_prefetch(reinterpret_cast<const char*>(n0 + b * 16) + kPrefetch, _MM_HINT_T0);
            _mm_prefetch(reinterpret_cast<const char*>(n1 + b * 16) + kPrefetch, _MM_HINT_T0);
        }
        const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + b * kQ4Block));
        const __m256i corr = _mm256_maddubs_epi16(eight, xv);
        const __m128i raw0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(n0 + b * 16));
        const __m128i raw1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(n1 + b * 16));
        const __m256i u0 = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw0, 4), raw0), low);
        const __m256i u1 = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw1, 4), raw1), low);
        const __m256i p0 = _mm256_madd_epi16(_mm256_sub_epi16(_mm256_maddubs_epi16(u0, xv), corr), ones);
        const __m256i p1 = _mm256_madd_epi16(_mm256_sub_epi16(_mm256_maddubs_epi16(u1, xv), corr), ones);
        acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_broadcast_ss(d0 + b % 8), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1), _mm256_broadcast_ss(d1 + b % 8), acc1);
    }
    y[r] = reduce(acc0) / a;
    y[r + 1] = reduce(acc1) / a;
}

}  // namespace

void q4_head_matmul_avx2(const Q4Head& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb, int64_t re) {
    if (x.n_tokens == 1) {
        int64_t r = rb;
        for (; r + 2 <= re; r += 2) two_rows(w, x.q.data(), x.act_scale[0], y, r);
        if (r < re) rows_tokens<1>(w, x, y, ldy, r, re, 0);
        return;
    }
    // Rows in groups that stay in L1/L2 while up to four tokens reuse them.
    constexpr int64_t kRows = 16;
    for (int64_t r = rb; r < re; r += kRows) {
        const int64_t e = r + kRows < re ? r + kRows : re;
        int64_t t = 0;
        for (; t + 4 <= x.n_tokens; t += 4) rows_tokens<4>(w, x, y, ldy, r, e, t);
        for (; t + 2 <= x.n_tokens; t += 2) rows_tokens<2>(w, x, y, ldy, r, e, t);
        if (t < x.n_tokens) rows_tokens<1>(w, x, y, ldy, r, e, t);
    }
}

}  // namespace bllama

#endif

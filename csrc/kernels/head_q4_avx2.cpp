// 4-bit head, AVX2 (the AVX-512 kind uses it too: one token is bandwidth-bound at 256 bits). Per 32-column
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

}  // namespace

void q4_head_matmul_avx2(const Q4Head& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb, int64_t re) {
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

// 4-bit head for the AVX-512 VNNI kind, one token (the decode GEMV): head_q4_avx2.cpp's two-row loop with the
// 256-bit vpdpbusd (AVX512VL + VNNI; 512-bit registers measured slower here: their lane shuffles all queue on one
// port). Per block, p = vpdpbusd(-(8 * x four-column sums), u, x) is exactly the int32 four-column sums of q * x
// of head_q4.h (u = q + 8), so one instruction replaces AVX2's vpmaddubsw / vpsubw / vpmaddwd and the result is
// bit-identical. Several tokens and an odd last row take the AVX2 path.
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include <cstdint>

#include "kernels/half.h"
#include "kernels/head_q4.h"
#include "kernels/simd.h"

namespace bllama {

namespace {

constexpr int64_t kPrefetch = 2048;

inline float reduce8(__m256 acc) {  // ((a0+a4) + (a2+a6)) + ((a1+a5) + (a3+a7)), as head_q4.h defines
    const __m128 v4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    const __m128 v2 = _mm_add_ps(v4, _mm_movehl_ps(v4, v4));
    return _mm_cvtss_f32(_mm_add_ss(v2, _mm_shuffle_ps(v2, v2, 1)));
}

void two_rows(const Q4Head& w, const int8_t* q, float a, float* y, int64_t r) {
    const int64_t nb = w.blocks();
    const uint8_t* n0 = w.row(r);
    const uint8_t* n1 = w.row(r + 1);
    const uint16_t* s0 = w.scales(r);
    const uint16_t* s1 = w.scales(r + 1);
    const __m256i low = _mm256_set1_epi8(0x0F), eight = _mm256_set1_epi8(8);
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
        const __m256i neg = _mm256_sub_epi32(_mm256_setzero_si256(),
                                             _mm256_dpbusd_epi32(_mm256_setzero_si256(), eight, xv));
        const __m128i raw0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(n0 + b * 16));
        const __m128i raw1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(n1 + b * 16));
        const __m256i u0 = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw0, 4), raw0), low);
        const __m256i u1 = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw1, 4), raw1), low);
        const __m256i p0 = _mm256_dpbusd_epi32(neg, u0, xv);
        const __m256i p1 = _mm256_dpbusd_epi32(neg, u1, xv);
        acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_broadcast_ss(d0 + b % 8), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1), _mm256_broadcast_ss(d1 + b % 8), acc1);
    }
    y[r] = reduce8(acc0) / a;
    y[r + 1] = reduce8(acc1) / a;
}

}  // namespace

void q4_head_matmul_avx512(const Q4Head& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb, int64_t re) {
    if (x.n_tokens != 1) return q4_head_matmul_avx2(w, x, y, ldy, rb, re);
    int64_t r = rb;
    for (; r + 2 <= re; r += 2) two_rows(w, x.q.data(), x.act_scale[0], y, r);
    if (r < re) q4_head_matmul_avx2(w, x, y, ldy, r, re);
}

}  // namespace bllama

#endif

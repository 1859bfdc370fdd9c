// AVX2 + FMA + F16C attention head (compiled with those flags; called only when the CPU has them).
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include <cmath>

#include "kernels/exp_avx2.h"
#include "kernels/prefetch_rows_x86.h"
#include "kernels/ref.h"
#include "kernels/simd.h"

namespace bllama {

namespace {

inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }

template <class KV>
void attend(const float* q, const KV* k, const KV* v, int64_t stride, int64_t len, int64_t hd, float scale,
            float* scores, float* out) {
    if (hd % 8 != 0) {
        if constexpr (sizeof(KV) == 4) return attend_f32_ref(q, k, v, stride, len, hd, scale, scores, out);
        else return attend_f16_ref(q, k, v, stride, len, hd, scale, scores, out);
    }
    constexpr int64_t kAhead = kAttendPrefetchRows;  // prefetch_rows_x86.h says why
    float mx = -INFINITY;
    for (int64_t j = 0; j < len; ++j) {
        const KV* kj = k + j * stride;
        if (j + kAhead < len) prefetch_row(kj + kAhead * stride, hd);
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        int64_t i = 0;
        for (; i + 16 <= hd; i += 16) {
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), load8(kj + i), a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8), load8(kj + i + 8), a1);
        }
        for (; i < hd; i += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), load8(kj + i), a0);
        const float s = hsum(_mm256_add_ps(a0, a1)) * scale;
        scores[j] = s;
        mx = s > mx ? s : mx;
    }
    const __m256 vmx = _mm256_set1_ps(mx);
    __m256 vsum = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= len; j += 8) {
        const __m256 e = exp_neg(_mm256_sub_ps(_mm256_loadu_ps(scores + j), vmx));
        _mm256_storeu_ps(scores + j, e);
        vsum = _mm256_add_ps(vsum, e);
    }
    float sum = hsum(vsum);
    for (; j < len; ++j) {
        scores[j] = std::exp(scores[j] - mx);
        sum += scores[j];
    }
    const float inv = 1.0f / sum;
    // One pass over the V rows, up to 64 output lanes held in registers.
    for (int64_t i0 = 0; i0 < hd; i0 += 64) {
        const int nb = static_cast<int>((hd - i0 < 64 ? hd - i0 : 64) / 8);
        __m256 acc[8];
        for (int b = 0; b < 8; ++b) acc[b] = _mm256_setzero_ps();
        for (int64_t t = 0; t < len; ++t) {
            const __m256 w = _mm256_set1_ps(scores[t]);
            const KV* vt = v + t * stride + i0;
            if (i0 == 0 && t + kAhead < len) prefetch_row(vt + kAhead * stride, hd);
#pragma GCC unroll 8
            for (int b = 0; b < 8; ++b)
                if (b < nb) acc[b] = _mm256_fmadd_ps(w, load8(vt + 8 * b), acc[b]);
        }
        const __m256 vinv = _mm256_set1_ps(inv);
        for (int b = 0; b < nb; ++b) _mm256_storeu_ps(out + i0 + 8 * b, _mm256_mul_ps(acc[b], vinv));
    }
}

}  // namespace

void to_f16_avx2(const float* x, uint16_t* y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(y + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    if (i < n) to_f16_ref(x + i, y + i, n - i);
}

void to_f32_avx2(const uint16_t* x, float* y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i))));
    if (i < n) to_f32_ref(x + i, y + i, n - i);
}

void attend_f32_avx2(const float* q, const float* k, const float* v, int64_t stride, int64_t len, int64_t hd,
                     float scale, float* scores, float* out) {
    attend(q, k, v, stride, len, hd, scale, scores, out);
}
void attend_f16_avx2(const float* q, const uint16_t* k, const uint16_t* v, int64_t stride, int64_t len,
                     int64_t hd, float scale, float* scores, float* out) {
    attend(q, k, v, stride, len, hd, scale, scores, out);
}

}  // namespace bllama

#endif

// AVX-512 attention head (compiled with -mavx512f...; called only when the CPU has it).
// GCC 12's AVX-512 headers trip -Wmaybe-uninitialized on their own _mm512_undefined_ps() (a known
// false positive in _mm512_reduce_add_ps and friends); silence it for this file only.
#if defined(__x86_64__) || defined(__i386__)
#ifndef __clang__  // a gcc-only warning (clang warns about the unknown name instead)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <cmath>

#include "kernels/simd.h"

namespace bllama {

namespace {

inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

// exp(x) for x <= 0 (softmax after max subtraction): 2^n * p(r), |r| <= ln2/2, relative error ~2e-7.
inline __m512 exp_neg(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

template <class KV>
void attend(const float* q, const KV* k, const KV* v, int64_t stride, int64_t len, int64_t hd, float scale,
            float* scores, float* out) {
    if (hd % 16 != 0) {
        if constexpr (sizeof(KV) == 4) return attend_f32_avx2(q, k, v, stride, len, hd, scale, scores, out);
        else return attend_f16_avx2(q, k, v, stride, len, hd, scale, scores, out);
    }
    // One head's K and V rows are hd values every `stride` (a whole cache row of all kv heads, 4 KiB at 1.7B's
    // shapes): the hardware prefetchers do not follow a stride that crosses a page per row, so every row was a
    // demand miss. A software prefetch kAhead rows ahead keeps several rows in flight.
    constexpr int64_t kAhead = 16;  // 0 / 4 / 8 / 16 / 32 / 64 tried: bench/NOTES-kernels.md
    const int64_t row_bytes = hd * static_cast<int64_t>(sizeof(KV));
    auto prefetch_row = [&](const KV* r) {
        const char* c = reinterpret_cast<const char*>(r);
        for (int64_t b = 0; b < row_bytes; b += 64) _mm_prefetch(c + b, _MM_HINT_T0);
    };
    float mx = -INFINITY;
    for (int64_t j = 0; j < len; ++j) {
        const KV* kj = k + j * stride;
        if (j + kAhead < len) prefetch_row(kj + kAhead * stride);
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
        int64_t i = 0;
        for (; i + 32 <= hd; i += 32) {
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), load16(kj + i), a0);
            a1 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i + 16), load16(kj + i + 16), a1);
        }
        for (; i < hd; i += 16) a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), load16(kj + i), a0);
        const float s = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)) * scale;
        scores[j] = s;
        mx = s > mx ? s : mx;
    }
    const __m512 vmx = _mm512_set1_ps(mx);
    __m512 vsum = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 16 <= len; j += 16) {
        const __m512 e = exp_neg(_mm512_sub_ps(_mm512_loadu_ps(scores + j), vmx));
        _mm512_storeu_ps(scores + j, e);
        vsum = _mm512_add_ps(vsum, e);
    }
    if (j < len) {
        const __mmask16 m = static_cast<__mmask16>((1u << (len - j)) - 1);
        const __m512 e = exp_neg(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, scores + j), vmx));
        _mm512_mask_storeu_ps(scores + j, m, e);
        vsum = _mm512_add_ps(vsum, _mm512_maskz_mov_ps(m, e));
    }
    const float inv = 1.0f / _mm512_reduce_add_ps(vsum);
    // One pass over the V rows, up to 128 output lanes held in registers.
    for (int64_t i0 = 0; i0 < hd; i0 += 128) {
        const int nb = static_cast<int>((hd - i0 < 128 ? hd - i0 : 128) / 16);
        __m512 acc[8];
        for (int b = 0; b < 8; ++b) acc[b] = _mm512_setzero_ps();
        for (int64_t t = 0; t < len; ++t) {
            const __m512 w = _mm512_set1_ps(scores[t]);
            const KV* vt = v + t * stride + i0;
            if (i0 == 0 && t + kAhead < len) prefetch_row(vt + kAhead * stride);
#pragma GCC unroll 8
            for (int b = 0; b < 8; ++b)
                if (b < nb) acc[b] = _mm512_fmadd_ps(w, load16(vt + 16 * b), acc[b]);
        }
        const __m512 vinv = _mm512_set1_ps(inv);
        for (int b = 0; b < nb; ++b) _mm512_storeu_ps(out + i0 + 16 * b, _mm512_mul_ps(acc[b], vinv));
    }
}

}  // namespace

void to_f16_avx512(const float* x, uint16_t* y, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i),
                            _mm512_cvtps_ph(_mm512_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    if (i < n) to_f16_avx2(x + i, y + i, n - i);
}

void attend_f32_avx512(const float* q, const float* k, const float* v, int64_t stride, int64_t len, int64_t hd,
                       float scale, float* scores, float* out) {
    attend(q, k, v, stride, len, hd, scale, scores, out);
}
void attend_f16_avx512(const float* q, const uint16_t* k, const uint16_t* v, int64_t stride, int64_t len,
                       int64_t hd, float scale, float* scores, float* out) {
    attend(q, k, v, stride, len, hd, scale, scores, out);
}

}  // namespace bllama

#endif

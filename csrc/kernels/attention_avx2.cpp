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

// scores[j] = exp(scores[j] - mx) for j < len; returns 1 / their sum.
inline float softmax_exp(float* scores, int64_t len, float mx) {
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
    return 1.0f / sum;
}

// out[i0, i0 + 8 NB) = inv * sum_t scores[t] v_t[i0, i0 + 8 NB). NB is a template argument so that the
// accumulators stay in registers with no per-lane test: with a run-time lane count, gcc 12 branched before every
// FMA and kept flags on the stack (the V pass was ~2x slower than the score pass).
template <int NB, class KV>
inline void v_block(const float* scores, const KV* v, int64_t stride, int64_t len, int64_t i0, int64_t hd, float inv,
                    float* out) {
    constexpr int64_t kAhead = kAttendPrefetchRows;
    __m256 acc[NB];
#pragma GCC unroll 8
    for (int b = 0; b < NB; ++b) acc[b] = _mm256_setzero_ps();
    for (int64_t t = 0; t < len; ++t) {
        const __m256 w = _mm256_set1_ps(scores[t]);
        const KV* vt = v + t * stride + i0;
        if (i0 == 0 && t + kAhead < len) prefetch_row(vt + kAhead * stride, hd);
#pragma GCC unroll 8
        for (int b = 0; b < NB; ++b) acc[b] = _mm256_fmadd_ps(w, load8(vt + 8 * b), acc[b]);
    }
    const __m256 vinv = _mm256_set1_ps(inv);
#pragma GCC unroll 8
    for (int b = 0; b < NB; ++b) _mm256_storeu_ps(out + i0 + 8 * b, _mm256_mul_ps(acc[b], vinv));
}

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
    const float inv = softmax_exp(scores, len, mx);
    // One pass over the V rows per 64 output lanes, held in registers.
    for (int64_t i0 = 0; i0 < hd; i0 += 64) {
        switch ((hd - i0 < 64 ? hd - i0 : 64) / 8) {
            case 8: v_block<8>(scores, v, stride, len, i0, hd, inv, out); break;
            case 7: v_block<7>(scores, v, stride, len, i0, hd, inv, out); break;
            case 6: v_block<6>(scores, v, stride, len, i0, hd, inv, out); break;
            case 5: v_block<5>(scores, v, stride, len, i0, hd, inv, out); break;
            case 4: v_block<4>(scores, v, stride, len, i0, hd, inv, out); break;
            case 3: v_block<3>(scores, v, stride, len, i0, hd, inv, out); break;
            case 2: v_block<2>(scores, v, stride, len, i0, hd, inv, out); break;
            default: v_block<1>(scores, v, stride, len, i0, hd, inv, out); break;
        }
    }
}

// H query vectors over the same keys and values in one pass over the keys and one per 16 value lanes: each key and
// value is loaded (and, fp16, converted) once for all H instead of once per vector. Vector h reads q[h], sees
// positions 0 .. len[h] - 1 and writes out[h]: the query heads of one kv head (grouped-query attention) share a
// length; a prompt chunk's consecutive rows see one more key each. Every vector's arithmetic is attend()'s, in
// attend()'s order (the same two score accumulators, the same softmax, the same per-lane sum over positions), so
// each output is bit-identical to attend() alone. Needs hd % 16 == 0; scores: H * max(len) floats.
template <int H, class KV>
void attend_vectors(const float* const* q, const int64_t* len, const KV* k, const KV* v, int64_t stride, int64_t hd,
                    float scale, float* scores, float* const* out) {
    constexpr int64_t kAhead = kAttendPrefetchRows;
    int64_t most = len[0], least = len[0];
    for (int h = 1; h < H; ++h) {
        most = len[h] > most ? len[h] : most;
        least = len[h] < least ? len[h] : least;
    }
    float mx[H];
    for (int h = 0; h < H; ++h) mx[h] = -INFINITY;
    for (int64_t j = 0; j < most; ++j) {
        const KV* kj = k + j * stride;
        if (j + kAhead < most) prefetch_row(kj + kAhead * stride, hd);
        __m256 a0[H], a1[H];
#pragma GCC unroll 8
        for (int h = 0; h < H; ++h) a0[h] = a1[h] = _mm256_setzero_ps();
        for (int64_t i = 0; i < hd; i += 16) {
            const __m256 k0 = load8(kj + i), k1 = load8(kj + i + 8);
#pragma GCC unroll 8
            for (int h = 0; h < H; ++h) {
                a0[h] = _mm256_fmadd_ps(_mm256_loadu_ps(q[h] + i), k0, a0[h]);
                a1[h] = _mm256_fmadd_ps(_mm256_loadu_ps(q[h] + i + 8), k1, a1[h]);
            }
        }
#pragma GCC unroll 8
        for (int h = 0; h < H; ++h) {
            const float s = hsum(_mm256_add_ps(a0[h], a1[h])) * scale;
            scores[h * most + j] = s;  // past len[h]: computed, never used
            if (j < len[h]) mx[h] = s > mx[h] ? s : mx[h];
        }
    }
    float inv[H];
    for (int h = 0; h < H; ++h) inv[h] = softmax_exp(scores + h * most, len[h], mx[h]);
    // 16 value lanes per pass: 2H accumulators, 2 converted values and a broadcast stay in registers.
    for (int64_t i0 = 0; i0 < hd; i0 += 16) {
        __m256 acc0[H], acc1[H];
#pragma GCC unroll 8
        for (int h = 0; h < H; ++h) acc0[h] = acc1[h] = _mm256_setzero_ps();
        for (int64_t t = 0; t < least; ++t) {
            const KV* vt = v + t * stride + i0;
            if (i0 == 0 && t + kAhead < most) prefetch_row(vt + kAhead * stride, hd);
            const __m256 v0 = load8(vt), v1 = load8(vt + 8);
#pragma GCC unroll 8
            for (int h = 0; h < H; ++h) {
                const __m256 w = _mm256_broadcast_ss(scores + h * most + t);
                acc0[h] = _mm256_fmadd_ps(w, v0, acc0[h]);
                acc1[h] = _mm256_fmadd_ps(w, v1, acc1[h]);
            }
        }
        for (int64_t t = least; t < most; ++t) {  // the longer vectors' last positions
            const KV* vt = v + t * stride + i0;
            const __m256 v0 = load8(vt), v1 = load8(vt + 8);
#pragma GCC unroll 8
            for (int h = 0; h < H; ++h)
                if (t < len[h]) {
                    const __m256 w = _mm256_broadcast_ss(scores + h * most + t);
                    acc0[h] = _mm256_fmadd_ps(w, v0, acc0[h]);
                    acc1[h] = _mm256_fmadd_ps(w, v1, acc1[h]);
                }
        }
#pragma GCC unroll 8
        for (int h = 0; h < H; ++h) {
            const __m256 vinv = _mm256_set1_ps(inv[h]);
            _mm256_storeu_ps(out[h] + i0, _mm256_mul_ps(acc0[h], vinv));
            _mm256_storeu_ps(out[h] + i0 + 8, _mm256_mul_ps(acc1[h], vinv));
        }
    }
}

// n vectors in blocks of up to 4 (8 score accumulators in registers); a block's scores take 4 * max(len) floats at
// most. A lone vector (a group of one, or one left over) runs attend() itself: nothing to share, and its 64-lane
// value pass is faster than the grouped kernel's 16-lane passes.
template <class KV>
void attend_many(const float* const* q, const int64_t* len, int64_t n, const KV* k, const KV* v, int64_t stride,
                 int64_t hd, float scale, float* scores, float* const* out) {
    for (int64_t i = 0; i < n;) {
        const int64_t b = hd % 16 != 0 ? 1 : (n - i >= 4 ? 4 : n - i);
        switch (b) {
            case 4: attend_vectors<4>(q + i, len + i, k, v, stride, hd, scale, scores, out + i); break;
            case 3: attend_vectors<3>(q + i, len + i, k, v, stride, hd, scale, scores, out + i); break;
            case 2: attend_vectors<2>(q + i, len + i, k, v, stride, hd, scale, scores, out + i); break;
            default: attend(q[i], k, v, stride, len[i], hd, scale, scores, out[i]); break;
        }
        i += b;
    }
}

}  // namespace

void attend_group_f16_avx2(const float* q, int64_t heads, const uint16_t* k, const uint16_t* v, int64_t stride,
                           int64_t len, int64_t hd, float scale, float* scores, float* out) {
    for (int64_t h0 = 0; h0 < heads; h0 += 4) {  // the heads' pointers, 4 at a time
        const float* qs[4];
        float* os[4];
        int64_t lens[4];
        const int64_t n = heads - h0 < 4 ? heads - h0 : 4;
        for (int64_t i = 0; i < n; ++i) {
            qs[i] = q + (h0 + i) * hd;
            os[i] = out + (h0 + i) * hd;
            lens[i] = len;
        }
        attend_many(qs, lens, n, k, v, stride, hd, scale, scores, os);
    }
}
void attend_many_f32_avx2(const float* const* q, const int64_t* len, int64_t n, const float* k, const float* v,
                          int64_t stride, int64_t hd, float scale, float* scores, float* const* out) {
    attend_many(q, len, n, k, v, stride, hd, scale, scores, out);
}

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

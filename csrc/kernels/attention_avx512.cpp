// AVX-512 attention head (compiled with -mavx512f...; called only when the CPU has it).
// GCC 12's AVX-512 headers trip -Wmaybe-uninitialized on their own _mm512_undefined_ps() (a known
// false positive in _mm512_reduce_add_ps and friends); silence it for this file only.
#if defined(__x86_64__) || defined(__i386__)
#ifndef __clang__  // a gcc-only warning (clang warns about the unknown name instead)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <cmath>

#include "kernels/exp_avx512.h"
#include "kernels/prefetch_rows_x86.h"
#include "kernels/simd.h"

namespace bllama {

namespace {

inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

constexpr int64_t kAhead = kAttendPrefetchRows;

// Lane j of the result = the sum of the 16 lanes of a[j]: a transpose-and-add tree (45 shuffles and adds for 16
// sums, against ~8 each for a horizontal reduction per vector). A lane's summation order does not depend on the
// other vectors, so a key's score is the same bits whichever block position it takes.
inline __m512 sum16(const __m512* a) {
    __m512 r[8], u[4], w[2];
    for (int i = 0; i < 8; ++i)
        r[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
    for (int i = 0; i < 4; ++i)
        u[i] = _mm512_add_ps(_mm512_shuffle_ps(r[2 * i], r[2 * i + 1], 0x44), _mm512_shuffle_ps(r[2 * i], r[2 * i + 1], 0xEE));
    for (int i = 0; i < 2; ++i)
        w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], 0x44),
                             _mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], 0xEE));
    return _mm512_add_ps(_mm512_shuffle_f32x4(w[0], w[1], 0x88), _mm512_shuffle_f32x4(w[0], w[1], 0xDD));
}

// q.k for one key: products of 32 columns at a time into two accumulators (the even and odd 16-column halves).
// scores_fixed (head sizes 64 and 128, q held in registers) and scores_any run exactly these operations.
template <class KV>
inline __m512 dot_any(const float* q, const KV* kj, int64_t hd) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= hd; i += 32) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), load16(kj + i), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i + 16), load16(kj + i + 16), a1);
    }
    for (; i < hd; i += 16) a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), load16(kj + i), a0);
    return _mm512_add_ps(a0, a1);
}

// Block j0's scores (keys j0 .. j0+nk-1, scaled) stored, and folded into the running max vmx.
inline void store_block(const __m512* acc, int nk, float scale, float* scores, __m512& vmx) {
    const __mmask16 m = static_cast<__mmask16>(nk == 16 ? 0xFFFFu : (1u << nk) - 1);
    const __m512 s = _mm512_mul_ps(sum16(acc), _mm512_set1_ps(scale));
    _mm512_mask_storeu_ps(scores, m, s);
    vmx = _mm512_mask_max_ps(vmx, m, vmx, s);
}

template <class KV>
void scores_any(const float* q, const KV* k, int64_t stride, int64_t len, int64_t hd, float scale, float* scores,
                __m512& vmx) {
    for (int64_t j0 = 0; j0 < len; j0 += 16) {
        const int nk = static_cast<int>(len - j0 < 16 ? len - j0 : 16);
        __m512 acc[16];
        for (int kk = 0; kk < 16; ++kk) {
            if (j0 + kk + kAhead < len) prefetch_row(k + (j0 + kk + kAhead) * stride, hd);
            acc[kk] = kk < nk ? dot_any(q, k + (j0 + kk) * stride, hd) : _mm512_setzero_ps();
        }
        store_block(acc, nk, scale, scores + j0, vmx);
    }
}

// NQ = hd / 16 (4 or 8): q stays in registers and the 16 keys of a block unroll. A short last block repeats its
// last key in the unused lanes (never stored) instead of reading past the cache.
template <class KV, int NQ>
void scores_fixed(const float* q, const KV* k, int64_t stride, int64_t len, float scale, float* scores, __m512& vmx) {
    __m512 qv[NQ];
    for (int n = 0; n < NQ; ++n) qv[n] = _mm512_loadu_ps(q + 16 * n);
    for (int64_t j0 = 0; j0 < len; j0 += 16) {
        const int nk = static_cast<int>(len - j0 < 16 ? len - j0 : 16);
        __m512 acc[16];
#pragma GCC unroll 16
        for (int kk = 0; kk < 16; ++kk) {
            const KV* kj = k + (j0 + (kk < nk ? kk : nk - 1)) * stride;
            if (j0 + kk + kAhead < len) prefetch_row(kj + kAhead * stride, NQ * 16);
            __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
#pragma GCC unroll 4
            for (int n = 0; n < NQ; n += 2) {
                a0 = _mm512_fmadd_ps(qv[n], load16(kj + 16 * n), a0);
                a1 = _mm512_fmadd_ps(qv[n + 1], load16(kj + 16 * n + 16), a1);
            }
            acc[kk] = _mm512_add_ps(a0, a1);
        }
        store_block(acc, nk, scale, scores + j0, vmx);
    }
}

// out = inv * sum_t scores[t] v_t for head sizes 16 * NB (64, 128), no branches in the loop. With 4 output
// vectors (too few independent FMA chains to hide their latency) even and odd keys go to separate accumulators.
template <class KV, int NB>
void pv_fixed(const KV* v, int64_t stride, int64_t len, const float* scores, float inv, float* out) {
    constexpr int S = NB <= 4 ? 2 : 1;  // accumulator sets
    __m512 acc[S][NB];
    for (int s = 0; s < S; ++s)
        for (int b = 0; b < NB; ++b) acc[s][b] = _mm512_setzero_ps();
    int64_t t = 0;
    for (; t + S <= len; t += S) {
#pragma GCC unroll 2
        for (int s = 0; s < S; ++s) {
            const __m512 w = _mm512_set1_ps(scores[t + s]);
            const KV* vt = v + (t + s) * stride;
            if (t + s + kAhead < len) prefetch_row(vt + kAhead * stride, NB * 16);
#pragma GCC unroll 8
            for (int b = 0; b < NB; ++b) acc[s][b] = _mm512_fmadd_ps(w, load16(vt + 16 * b), acc[s][b]);
        }
    }
    for (; t < len; ++t) {
        const __m512 w = _mm512_set1_ps(scores[t]);
        const KV* vt = v + t * stride;
        for (int b = 0; b < NB; ++b) acc[0][b] = _mm512_fmadd_ps(w, load16(vt + 16 * b), acc[0][b]);
    }
    const __m512 vinv = _mm512_set1_ps(inv);
    for (int b = 0; b < NB; ++b) {
        __m512 sum = acc[0][b];
        for (int s = 1; s < S; ++s) sum = _mm512_add_ps(sum, acc[s][b]);
        _mm512_storeu_ps(out + 16 * b, _mm512_mul_ps(sum, vinv));
    }
}

template <class KV>
void attend(const float* q, const KV* k, const KV* v, int64_t stride, int64_t len, int64_t hd, float scale,
            float* scores, float* out) {
    if (hd % 16 != 0) {
        if constexpr (sizeof(KV) == 4) return attend_f32_avx2(q, k, v, stride, len, hd, scale, scores, out);
        else return attend_f16_avx2(q, k, v, stride, len, hd, scale, scores, out);
    }
    // Scores 16 keys at a time: each key's products summed over 16 lanes, the 16 lane sums in one tree (sum16).
    __m512 vmx = _mm512_set1_ps(-INFINITY);
    if (hd == 64) scores_fixed<KV, 4>(q, k, stride, len, scale, scores, vmx);
    else if (hd == 128) scores_fixed<KV, 8>(q, k, stride, len, scale, scores, vmx);
    else scores_any(q, k, stride, len, hd, scale, scores, vmx);
    const __m512 vmax = _mm512_set1_ps(_mm512_reduce_max_ps(vmx));
    __m512 vsum = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 16 <= len; j += 16) {
        const __m512 e = exp_neg(_mm512_sub_ps(_mm512_loadu_ps(scores + j), vmax));
        _mm512_storeu_ps(scores + j, e);
        vsum = _mm512_add_ps(vsum, e);
    }
    if (j < len) {
        const __mmask16 m = static_cast<__mmask16>((1u << (len - j)) - 1);
        const __m512 e = exp_neg(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, scores + j), vmax));
        _mm512_mask_storeu_ps(scores + j, m, e);
        vsum = _mm512_add_ps(vsum, _mm512_maskz_mov_ps(m, e));
    }
    const float inv = 1.0f / _mm512_reduce_add_ps(vsum);
    // One pass over the V rows, up to 128 output lanes held in registers.
    if (hd == 64) return pv_fixed<KV, 4>(v, stride, len, scores, inv, out);
    if (hd == 128) return pv_fixed<KV, 8>(v, stride, len, scores, inv, out);
    for (int64_t i0 = 0; i0 < hd; i0 += 128) {
        const int nb = static_cast<int>((hd - i0 < 128 ? hd - i0 : 128) / 16);
        __m512 acc[8];
        for (int b = 0; b < 8; ++b) acc[b] = _mm512_setzero_ps();
        for (int64_t t = 0; t < len; ++t) {
            const __m512 w = _mm512_set1_ps(scores[t]);
            const KV* vt = v + t * stride + i0;
            if (i0 == 0 && t + kAhead < len) prefetch_row(vt + kAhead * stride, hd);
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

void to_f32_avx512(const uint16_t* x, float* y, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(y + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i))));
    if (i < n) to_f32_avx2(x + i, y + i, n - i);
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

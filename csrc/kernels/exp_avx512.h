// AVX-512F: the exp polynomial that AVX-512 kernels share (attention's softmax, the SiLU activation). Include only
// from *_avx512.cpp files: they are compiled with that instruction set's flags.
#pragma once
// GCC 12's AVX-512 headers trip -Wmaybe-uninitialized on their own _mm512_undefined_ps() inside the masked forms
// that _mm512_max_ps and friends expand to (a known false positive); silenced for the files that use these.
#ifndef __clang__
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

namespace bllama {
// Internal linkage: each including file (one instruction set) keeps its own copy.
namespace {

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

// The logistic function 1 / (1 + exp(-z)) for any z, through exp of -|z| only (which cannot overflow).
inline __m512 sigmoid(__m512 z) {
    const __m512 e = exp_neg(_mm512_or_ps(_mm512_set1_ps(-0.0f), z));  // exp(-|z|)
    const __m512 one = _mm512_set1_ps(1.0f);
    const __m512 d = _mm512_div_ps(one, _mm512_add_ps(one, e));            // 1 / (1 + exp(-|z|)) = sigmoid(|z|)
    return _mm512_mask_mul_ps(d, _mm512_cmp_ps_mask(z, _mm512_setzero_ps(), _CMP_LT_OQ), e, d);  // z < 0: sigmoid(-|z|) = exp(-|z|) * sigmoid(|z|)
}

}  // namespace
}  // namespace bllama

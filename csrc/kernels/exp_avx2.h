// AVX2 + FMA: the exp polynomial that AVX2 kernels share (attention's softmax, the SiLU activation). Include only
// from *_avx2.cpp files: they are compiled with that instruction set's flags.
#pragma once
#include <immintrin.h>

namespace bllama {
// Internal linkage: each including file (one instruction set) keeps its own copy.
namespace {

// exp(x) for x <= 0 (softmax after max subtraction): 2^n * p(r), |r| <= ln2/2, relative error ~2e-7.
inline __m256 exp_neg(__m256 x) {
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

// The logistic function 1 / (1 + exp(-z)) for any z, through exp of -|z| only (which cannot overflow).
inline __m256 sigmoid(__m256 z) {
    const __m256 e = exp_neg(_mm256_or_ps(_mm256_set1_ps(-0.0f), z));  // exp(-|z|)
    const __m256 one = _mm256_set1_ps(1.0f);
    const __m256 d = _mm256_div_ps(one, _mm256_add_ps(one, e));            // 1 / (1 + exp(-|z|)) = sigmoid(|z|)
    return _mm256_blendv_ps(d, _mm256_mul_ps(e, d), z);  // z < 0: sigmoid(-|z|) = exp(-|z|) * sigmoid(|z|)
}

}  // namespace
}  // namespace bllama

// AVX2 + FMA SiLU gating (compiled with those flags; called only when the CPU has them).
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include "kernels/exp_avx2.h"
#include "kernels/simd.h"

namespace bllama {

void silu_mul_avx2(float* g, const float* u, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 z = _mm256_loadu_ps(g + i);
        _mm256_storeu_ps(g + i, _mm256_mul_ps(_mm256_mul_ps(z, sigmoid(z)), _mm256_loadu_ps(u + i)));
    }
    if (i < n) {  // the same arithmetic on a padded copy: a value's result does not depend on where it sits
        float zb[8] = {0}, ub[8] = {0};
        for (int64_t j = i; j < n; ++j) zb[j - i] = g[j], ub[j - i] = u[j];
        const __m256 z = _mm256_loadu_ps(zb);
        _mm256_storeu_ps(zb, _mm256_mul_ps(_mm256_mul_ps(z, sigmoid(z)), _mm256_loadu_ps(ub)));
        for (int64_t j = i; j < n; ++j) g[j] = zb[j - i];
    }
}

}  // namespace bllama

#endif

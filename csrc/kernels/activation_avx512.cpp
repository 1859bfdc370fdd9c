// AVX-512 SiLU gating (compiled with -mavx512f...; called only when the CPU has it).
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include "kernels/exp_avx512.h"
#include "kernels/simd.h"

namespace bllama {

void silu_mul_avx512(float* g, const float* u, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 z = _mm512_loadu_ps(g + i);
        _mm512_storeu_ps(g + i, _mm512_mul_ps(_mm512_mul_ps(z, sigmoid(z)), _mm512_loadu_ps(u + i)));
    }
    if (i < n) {  // the same arithmetic on a masked vector: a value's result does not depend on where it sits
        const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
        const __m512 z = _mm512_maskz_loadu_ps(m, g + i);
        _mm512_mask_storeu_ps(g + i, m, _mm512_mul_ps(_mm512_mul_ps(z, sigmoid(z)), _mm512_maskz_loadu_ps(m, u + i)));
    }
}

}  // namespace bllama

#endif

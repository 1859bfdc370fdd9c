// Private to ternary_avx2.cpp and ternary1_avx2.cpp (the 2-bit and the base-3 layout on AVX2): the small helpers
// both use, once (head_q4_avx2.cpp takes the prefetch distance too). Include it only from files built with the AVX2
// flags (the _avx2.cpp suffix, CMakeLists.txt).
// Anonymous namespace, as in neon_tiles.h: each file keeps its own copy, compiled with its own flags, and the
// linker can never hand one ISA's copy to another's file.
#pragma once

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace bllama {
namespace {

// Keeps gcc (-ffp-contract=fast in GNU mode) from fusing the per-block product into the following add: the scalar
// reference rounds the product and the sum separately, and so must we.
inline __m256 no_contract(__m256 v) {
    __asm__("" : "+x"(v));
    return v;
}

inline int32_t load_i32(const int8_t* p) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return v;
}

// Decode streams (the ternary GEMV, the 4-bit head) prefetch this far ahead, up to their range's end. Zen 3 (AVX2, no
// AVX-512), 1.7B decode: 1.2x at one thread and 1.15-1.2x at two; the hardware prefetchers alone left a core at ~55%
// of the bandwidth probe (bench/NOTES-kernels.md, "Sixth session").
constexpr int64_t kGemvPrefetch = 8192;

// Four int8 activations as one dword in every lane.
inline __m256i bcast(const int8_t* p) { return _mm256_set1_epi32(load_i32(p)); }

// Lane i set (all ones) when row 8h + i lies in [rb, re).
inline __m256i half_mask(int64_t h, int64_t rb, int64_t re) {
    const __m256i idx = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int32_t>(h * 8)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    const __m256i ge = _mm256_cmpgt_epi32(idx, _mm256_set1_epi32(static_cast<int32_t>(rb - 1)));
    const __m256i lt = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int32_t>(re)), idx);
    return _mm256_and_si256(ge, lt);
}

// Rows 8h..8h+7 of v to dst, those in [rb, re) only. A plain store when all are: vmaskmovps to memory is slow on
// AMD (it was 5% of a Zen 3 prompt profile).
inline void store_half(float* dst, __m256 v, int64_t h, int64_t rb, int64_t re) {
    if (h * 8 >= rb && h * 8 + 8 <= re) _mm256_storeu_ps(dst, v);
    else _mm256_maskstore_ps(dst, half_mask(h, rb, re), v);
}

}  // namespace
}  // namespace bllama

#endif

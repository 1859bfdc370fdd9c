// Private to ternary_avx512.cpp and ternary1_avx512.cpp (the 2-bit and the base-3 layout on AVX-512 VNNI): the
// small helpers both use, once. Include it only from files built with the AVX-512 flags (the _avx512.cpp suffix,
// CMakeLists.txt). Anonymous namespace, as in neon_tiles.h: each file keeps its own copy, compiled with its own
// flags, and the linker can never hand one ISA's copy to another's file.
#pragma once

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kernels/pack.h"

namespace bllama {
namespace {

// Keeps gcc (-ffp-contract=fast in GNU mode) from fusing the per-block product into the following add: the scalar
// reference rounds the product and the sum separately, and so must we.
inline __m512 no_contract(__m512 v) {
    __asm__("" : "+v"(v));
    return v;
}

inline int32_t load_i32(const int8_t* p) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return v;
}

// Four int8 activations as one dword in every lane.
inline __m512i bcast(const int8_t* p) { return _mm512_set1_epi32(load_i32(p)); }

// Bit i set when row 16g + i lies in [rb, re).
inline __mmask16 row_mask(int64_t g, int64_t rb, int64_t re) {
    const int64_t lo = std::max<int64_t>(rb - g * kGroupRows, 0), hi = std::min<int64_t>(re - g * kGroupRows, kGroupRows);
    if (hi <= lo) return 0;
    return static_cast<__mmask16>(((1u << hi) - 1) & ~((1u << lo) - 1));
}

// Decode streams: a software prefetch 8 KiB ahead (it runs on into the next group, which is read next) took one core
// to the measured read bandwidth (numbers and distances tried: bench/NOTES-kernels.md).
constexpr int64_t kGemvPrefetch = 8192;

}  // namespace
}  // namespace bllama

#endif

// The attention kernels' software prefetch of K / V rows, shared by the AVX2 and AVX-512 files (_mm_prefetch is
// baseline x86, so one copy serves both instruction sets). Rows `stride` apart whose stride crosses a page per row
// are not followed by the hardware prefetchers: every row was a demand miss while the engine's cache interleaved all
// kv heads per position. The cache is now one stream per kv head (Model::cache_head), where this mostly repeats the
// hardware's work; it stays for callers with strided rows (the kernels' contract takes any stride).
#pragma once
#include <xmmintrin.h>

#include <cstdint>

namespace bllama {
namespace {

constexpr int64_t kAttendPrefetchRows = 16;  // rows ahead; 0 / 4 / 8 / 16 / 32 / 64 tried: bench/NOTES-kernels.md

template <class KV>
inline void prefetch_row(const KV* r, int64_t hd) {
    const char* c = reinterpret_cast<const char*>(r);
    for (int64_t b = 0; b < hd * static_cast<int64_t>(sizeof(KV)); b += 64) _mm_prefetch(c + b, _MM_HINT_T0);
}

}  // namespace
}  // namespace bllama

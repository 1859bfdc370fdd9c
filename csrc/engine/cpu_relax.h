// The pause a spinning thread executes between polls (x86 `pause`, Arm `yield`): it frees the core's shared
// resources for its SMT sibling and saves power, and it never enters the kernel.
#pragma once

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
namespace bllama {
inline void cpu_relax() { _mm_pause(); }
}  // namespace bllama
#elif defined(__aarch64__)
namespace bllama {
inline void cpu_relax() { __asm__ __volatile__("yield"); }
}  // namespace bllama
#else
namespace bllama {
inline void cpu_relax() {}
}  // namespace bllama
#endif

#include "kernels/huge_pages.h"

#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "engine/env_options.h"

namespace bllama {

void advise_huge_pages(void* p, size_t bytes) noexcept {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (bytes < kHugePage) return;
    // BLLAMA_HUGE_PAGES=0 keeps 4 KiB pages (A/B runs, or a machine where huge pages cost more than they give).
    static const bool off = !env_switch("BLLAMA_HUGE_PAGES").value_or(true);
    if (off) return;
    const uintptr_t b = (reinterpret_cast<uintptr_t>(p) + kHugePage - 1) & ~(kHugePage - 1);
    const uintptr_t e = (reinterpret_cast<uintptr_t>(p) + bytes) & ~(kHugePage - 1);
    if (e > b) madvise(reinterpret_cast<void*>(b), e - b, MADV_HUGEPAGE);
#else
    (void)p;
    (void)bytes;
#endif
}

}  // namespace bllama

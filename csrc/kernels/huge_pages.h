// Transparent huge pages for the large buffers a decode step streams (packed ternary weights, the 4-bit / int8
// heads). A token reads ~0.4-1.2 GB; on 4 KiB pages that is one TLB entry per 4 KiB and a page walk every few
// cache lines once the STLB is exhausted, which the 2 MiB pages avoid (bench/NOTES-kernels.md, "Huge pages").
// Linux only; elsewhere the advice is a no-op. With /sys/kernel/mm/transparent_hugepage/enabled at `madvise`
// (the common default) nothing gets huge pages unless asked, so the ask is made here, before the first touch.
#pragma once

#include <cstddef>

namespace bllama {

constexpr size_t kHugePage = size_t(2) << 20;

// Alignment a buffer of `bytes` should be allocated with: 2 MiB from one huge page up (so the whole of it can be
// backed by huge pages), else `align`.
inline size_t large_alignment(size_t bytes, size_t align) { return bytes >= kHugePage ? kHugePage : align; }

// Asks for huge pages on the whole 2 MiB pages inside [p, p + bytes) (madvise MADV_HUGEPAGE); call before the
// memory is first written. Best effort: the buffer works the same if the kernel says no.
void advise_huge_pages(void* p, size_t bytes) noexcept;

}  // namespace bllama

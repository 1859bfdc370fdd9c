// Memory read bandwidth of this machine, measured the way the decode loop reads weights: every thread
// streams its own contiguous slice of a buffer far larger than the caches.
#pragma once

#include <cstddef>

namespace bllama {

// Bytes per second (best of `repeats`), reading `bytes` of memory with `threads` threads.
double measure_read_bandwidth(int threads, size_t bytes = size_t(1) << 30, int repeats = 3);

}  // namespace bllama

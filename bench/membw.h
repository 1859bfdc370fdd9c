// Memory read bandwidth of this machine, measured the way the decode loop reads weights: every thread
// streams its own contiguous slice of a buffer far larger than the caches, with the widest loads the CPU has.
#pragma once

#include <cstddef>
#include <cstdint>

namespace bllama {

// Reads n bytes from p (64-byte aligned, n a multiple of 256) with the widest vector loads available and
// returns a value that depends on every byte, so the reads cannot be optimized away.
uint64_t read_stream(const uint8_t* p, size_t n);

// Bytes per second (best of `repeats`), reading `bytes` of memory with `threads` threads. huge_pages: the buffer
// asks for 2 MiB pages as the engine's weight buffers do (kernels/huge_pages.h), so the probe measures what the
// decode loop's reads could reach; false: 4 KiB pages (what the probe measured before 2026-12-06's fourth session).
double measure_read_bandwidth(int threads, size_t bytes = size_t(1) << 30, int repeats = 5, bool huge_pages = true);

}  // namespace bllama

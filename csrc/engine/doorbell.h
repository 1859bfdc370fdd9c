// A counter one thread rings and another waits on by spinning in user space: a server's engine thread waiting for
// its next request (`bllama serve --poll`). Why spin: on a VM whose vCPUs halt when idle, the first ~25 ms of work
// after a sleep ran about 2x slower than on a core kept busy (the engine's own steps for one 150-token prompt: 27 ms
// after a 200 ms sleep, 14 ms after a 200 ms user-space spin, 23 ms after a loop of zero-length sleeps, which enter
// the kernel; bench/NOTES-serve.md, item 8). So the wait never makes a system call: it polls with a pause.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <stdexcept>

#include "engine/cpu_relax.h"

namespace bllama {

class Doorbell {
public:
    void ring() { rings_.fetch_add(1, std::memory_order_release); }
    uint64_t rings() const { return rings_.load(std::memory_order_acquire); }

    // Spins until rings() differs from `seen` (true: read `seen` before checking for work, so a ring between that
    // check and this call is not missed) or timeout_s seconds pass (false). std::invalid_argument unless
    // 0 <= timeout_s <= 3600.
    bool wait(uint64_t seen, double timeout_s) const {
        if (!(timeout_s >= 0.0 && timeout_s <= 3600.0))  // NaN fails both
            throw std::invalid_argument("Doorbell.wait: timeout must be in [0, 3600] seconds");
        using Clock = std::chrono::steady_clock;
        const auto end =
            Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s));
        for (int i = 0;; ++i) {
            if (rings() != seen) return true;
            if (i % 64 == 0 && Clock::now() >= end) return rings() != seen;  // a clock read per ~64 pauses
            cpu_relax();
        }
    }

private:
    std::atomic<uint64_t> rings_{0};
};

}  // namespace bllama

// A counter one thread rings and another waits on by spinning in user space: a server's engine thread waiting for
// its next request (`bllama serve --poll`). Why spin: on a VM whose vCPUs halt when idle, the first ~25 ms of work
// after a sleep ran about 2x slower than on a core kept busy (the engine's own steps for one 150-token prompt: 27 ms
// after a 200 ms sleep, 14 ms after a 200 ms user-space spin, 23 ms after a loop of zero-length sleeps, which enter
// the kernel; bench/NOTES-serve.md, item 8). So the wait never makes a system call: it polls with a pause.
//
// A spin is only free while a core would otherwise idle. Under load the threads that receive and tokenize the next
// requests need that core, so a wait that keeps finding itself descheduled gives up and lets its caller sleep: the
// spin then costs about two scheduler slices (NOTES-serve.md, item 10).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <stdexcept>

#include "engine/cpu_relax.h"

namespace bllama {

class Doorbell {
public:
    enum class Wait { rang, timed_out, preempted };

    void ring() { rings_.fetch_add(1, std::memory_order_release); }
    uint64_t rings() const { return rings_.load(std::memory_order_acquire); }

    // Spins until rings() differs from `seen` (rang: read `seen` before checking for work, so a ring between that
    // check and this call is not missed), timeout_s seconds pass (timed_out) or the spin finds it lost the core for
    // much of its time (preempted, see below). std::invalid_argument unless 0 <= timeout_s <= 3600.
    Wait wait(uint64_t seen, double timeout_s) const {
        if (!(timeout_s >= 0.0 && timeout_s <= 3600.0))  // NaN fails both
            throw std::invalid_argument("Doorbell.wait: timeout must be in [0, 3600] seconds");
        using Clock = std::chrono::steady_clock;
        const auto start = Clock::now();
        const auto end = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s));
        auto last = start;
        Clock::duration lost{0};
        for (int i = 0;; ++i) {
            if (rings() != seen) return Wait::rang;
            if (i % 64 == 0) {  // a clock read per ~64 pauses (~2 us)
                const auto t = Clock::now();
                if (t - last > kStall) {
                    lost += t - last;
                    if (lost > kMaxLost && lost * 4 > t - start) return rings() != seen ? Wait::rang : Wait::preempted;
                }
                if (t >= end) return rings() != seen ? Wait::rang : Wait::timed_out;
                last = t;
            }
            cpu_relax();
        }
    }

private:
    // A gap this long between two clock reads is time the spin did not run. On a quiet 2-vCPU VM the host stalls a
    // spinning vCPU like that now and then (20 s: 27 gaps over 0.5 ms, 13 over 1 ms, the longest 3.1 ms); with
    // another thread runnable on the same core, the gaps are that thread's scheduler slices (2-10 ms, every few ms).
    // So one gap proves nothing; giving up takes more than kMaxLost lost in all and over a quarter of the wait.
    static constexpr std::chrono::microseconds kStall{200};
    static constexpr std::chrono::milliseconds kMaxLost{5};

    std::atomic<uint64_t> rings_{0};
};

}  // namespace bllama

// engine/doorbell.h: a wait returns `rang` as soon as the bell rings after `seen` was read (from another thread, or
// before the wait began), `timed_out` after its timeout when nobody rings, `preempted` when another thread keeps
// taking its core (Linux: both pinned to one CPU), and refuses a timeout outside [0, 3600] s.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <stdexcept>
#include <thread>

#if defined(__linux__)
#include <pthread.h>
#include <sched.h>
#endif

#include "check_msg.h"
#include "engine/doorbell.h"

using namespace bllama;
using Clock = std::chrono::steady_clock;

using Wait = Doorbell::Wait;

static double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Under load (a parallel ctest on two cores, or qemu) a spin may lose its core and give way (preempted), as it should;
// its caller then waits again for the rest of the time. Checks of ringing and timing out do the same, so that what
// they catch is a ring missed or a wait that ends early, not a busy machine.
static Wait wait_through(const Doorbell& bell, uint64_t seen, double timeout_s) {
    const auto t0 = Clock::now();
    Wait w = bell.wait(seen, timeout_s);
    while (w == Wait::preempted) w = bell.wait(seen, std::max(0.0, timeout_s - since(t0)));
    return w;
}

#if defined(__linux__)
static bool pin_to(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return pthread_setaffinity_np(pthread_self(), sizeof set, &set) == 0;
}

// A thread that spins on the waiter's CPU until told to stop: the scheduler then shares that CPU between the two,
// and the wait must notice and give up long before its timeout (and before the hog's own 20 s limit).
static void check_gives_way_to_a_thread_on_its_core(Doorbell& bell) {
    cpu_set_t before;  // this thread's affinity, given back at the end
    const int cpu = sched_getcpu();
    if (cpu < 0 || pthread_getaffinity_np(pthread_self(), sizeof before, &before) != 0 || !pin_to(cpu)) {
        std::printf("skipped the preemption check: cannot pin to a CPU\n");
        return;
    }
    std::atomic<bool> stop{false};
    std::thread hog([&] {
        pin_to(cpu);
        const auto t0 = Clock::now();
        while (!stop.load(std::memory_order_relaxed) && since(t0) < 20.0) {
        }
    });
    const auto t0 = Clock::now();
    const Wait w = bell.wait(bell.rings(), 60.0);
    const double waited = since(t0);
    stop = true;
    hog.join();
    CHECK(w == Wait::preempted, "a wait sharing its CPU with a spinning thread ended %s after %.3f s",
          w == Wait::rang ? "rang" : "timed out", waited);
    CHECK(waited < 10.0, "a wait sharing its CPU took %.3f s to give way", waited);
    pthread_setaffinity_np(pthread_self(), sizeof before, &before);
}
#endif

int main() {
    Doorbell bell;
    CHECK(bell.rings() == 0, "a new bell has rung %llu times", static_cast<unsigned long long>(bell.rings()));

    // Nobody rings: false, after (not before) the timeout.
    auto t0 = Clock::now();
    CHECK(wait_through(bell, bell.rings(), 0.05) == Wait::timed_out, "a wait with no ring did not time out");
    const double idle = since(t0);
    CHECK(idle >= 0.05, "the wait returned after %.4f s, before its 0.05 s timeout", idle);

    // A zero timeout: one look.
    CHECK(bell.wait(bell.rings(), 0.0) == Wait::timed_out, "a zero-timeout wait with no ring did not time out");

    // A ring after `seen` was read but before the wait: true at once.
    uint64_t seen = bell.rings();
    bell.ring();
    t0 = Clock::now();
    CHECK(bell.wait(seen, 10.0) == Wait::rang, "a ring before the wait was missed");
    CHECK(since(t0) < 1.0, "a wait for a ring that already came took %.3f s", since(t0));

    // A ring from another thread 30 ms into a 10 s wait ends it then.
    for (int round = 0; round < 5; ++round) {
        seen = bell.rings();
        std::thread ringer([&] {
            std::this_thread::sleep_for(std::chrono::milliseconds(30));
            bell.ring();
        });
        t0 = Clock::now();
        const bool rang = wait_through(bell, seen, 10.0) == Wait::rang;
        const double waited = since(t0);
        ringer.join();
        CHECK(rang, "round %d: a ring from another thread was missed", round);
        CHECK(waited >= 0.02 && waited < 5.0, "round %d: the wait took %.3f s for a ring at 0.03 s", round, waited);
    }
    CHECK(bell.rings() == 6, "6 rings counted as %llu", static_cast<unsigned long long>(bell.rings()));

#if defined(__linux__)
    check_gives_way_to_a_thread_on_its_core(bell);
#endif

    // Timeouts outside [0, 3600] s (negative, NaN, huge) are refused.
    for (double bad : {-1.0, std::nan(""), 1e9}) {
        bool threw = false;
        try {
            bell.wait(bell.rings(), bad);
        } catch (const std::invalid_argument&) {
            threw = true;
        }
        CHECK(threw, "timeout %g was accepted", bad);
    }

    std::printf("%d checks, %d failures\n", g_checks, g_failures);
    return g_failures ? 1 : 0;
}

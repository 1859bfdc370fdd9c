// engine/doorbell.h: a wait returns true as soon as the bell rings after `seen` was read (from another thread, or
// before the wait began), false after its timeout when nobody rings, and refuses a timeout outside [0, 3600] s.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <stdexcept>
#include <thread>

#include "check_msg.h"
#include "engine/doorbell.h"

using namespace bllama;
using Clock = std::chrono::steady_clock;

static double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

int main() {
    Doorbell bell;
    CHECK(bell.rings() == 0, "a new bell has rung %llu times", static_cast<unsigned long long>(bell.rings()));

    // Nobody rings: false, after (not before) the timeout.
    auto t0 = Clock::now();
    CHECK(!bell.wait(bell.rings(), 0.05), "a wait with no ring returned true");
    const double idle = since(t0);
    CHECK(idle >= 0.05, "the wait returned after %.4f s, before its 0.05 s timeout", idle);

    // A zero timeout: one look.
    CHECK(!bell.wait(bell.rings(), 0.0), "a zero-timeout wait with no ring returned true");

    // A ring after `seen` was read but before the wait: true at once.
    uint64_t seen = bell.rings();
    bell.ring();
    t0 = Clock::now();
    CHECK(bell.wait(seen, 10.0), "a ring before the wait was missed");
    CHECK(since(t0) < 1.0, "a wait for a ring that already came took %.3f s", since(t0));

    // A ring from another thread 30 ms into a 10 s wait ends it then.
    for (int round = 0; round < 5; ++round) {
        seen = bell.rings();
        std::thread ringer([&] {
            std::this_thread::sleep_for(std::chrono::milliseconds(30));
            bell.ring();
        });
        t0 = Clock::now();
        const bool rang = bell.wait(seen, 10.0);
        const double waited = since(t0);
        ringer.join();
        CHECK(rang, "round %d: a ring from another thread was missed", round);
        CHECK(waited >= 0.02 && waited < 5.0, "round %d: the wait took %.3f s for a ring at 0.03 s", round, waited);
    }
    CHECK(bell.rings() == 6, "6 rings counted as %llu", static_cast<unsigned long long>(bell.rings()));

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

// The forward pass's thread pool (csrc/engine/threadpool.h) under random jobs: every chunk runs exactly once, on a
// thread index in range that no other running chunk holds at the same time (per-thread scratch relies on it),
// whatever the pool size (oversubscribed too: more threads than this machine's cores), the spin budget (0: workers
// always sleep; huge: they never do) or a worker that is descheduled mid-chunk (sleeps). Exceptions thrown by
// chunks reach the caller and leave the pool usable; the handoff counter counts exactly the jobs handed out. A pool
// that asks for too many threads, or cannot start them, throws instead of aborting.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <stdexcept>
#include <thread>
#include <string>
#include <vector>

#include <csignal>

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check_msg.h"
#include "engine/env_options.h"
#include "engine/threadpool.h"

using namespace bllama;

namespace {

// Runs `jobs` random jobs on `pool`; with sleepy, some chunks run by workers sleep (a descheduled worker).
void random_jobs(ThreadPool& pool, int jobs, bool sleepy, uint32_t seed, const char* what) {
    std::mt19937 rng(seed);
    std::vector<std::unique_ptr<std::atomic<int>>> busy;  // per thread index: chunks running on it right now
    for (int t = 0; t < pool.size(); ++t) busy.push_back(std::make_unique<std::atomic<int>>(0));
    uint64_t expected_handoffs = pool.handoffs();
    for (int j = 0; j < jobs; ++j) {
        const int n = std::uniform_int_distribution<int>(0, j % 10 == 0 ? 2000 : 40)(rng);
        const int sleeper = sleepy ? std::uniform_int_distribution<int>(0, 4 * n + 1)(rng) : -1;
        std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
        for (auto& h : hits) h.store(0);
        std::atomic<int> bad_thread{0}, shared_thread{0};
        pool.run(n, [&](int chunk, int thread) {
            if (thread < 0 || thread >= pool.size()) {
                bad_thread.fetch_add(1);
                return;
            }
            if (busy[static_cast<size_t>(thread)]->fetch_add(1) != 0) shared_thread.fetch_add(1);
            if (chunk == sleeper && thread != 0) std::this_thread::sleep_for(std::chrono::milliseconds(2));
            hits[static_cast<size_t>(chunk)].fetch_add(1, std::memory_order_relaxed);
            busy[static_cast<size_t>(thread)]->fetch_sub(1);
        });
        int wrong = 0;
        for (auto& h : hits) wrong += h.load() != 1;
        CHECK(wrong == 0, "%s: job %d of %d chunks: %d chunks not run exactly once", what, j, n, wrong);
        CHECK(bad_thread.load() == 0, "%s: job %d: thread index out of range", what, j);
        CHECK(shared_thread.load() == 0, "%s: job %d: two chunks ran on one thread index at once", what, j);
        if (n > 1 && pool.size() > 1) ++expected_handoffs;
    }
    CHECK(pool.handoffs() == expected_handoffs, "%s: %llu handoffs counted, %llu jobs handed out", what,
          (unsigned long long)pool.handoffs(), (unsigned long long)expected_handoffs);
}

// Chunks that throw: run() rethrows one of them once no chunk runs any more (none runs after run() returns; chunks
// not started yet may be skipped), and the next jobs run normally.
void exceptions(ThreadPool& pool, const char* what) {
    for (int j = 0; j < 50; ++j) {
        const int n = 1 + j % 17;
        std::atomic<int> ran{0}, after{0};
        std::atomic<bool> returned{false};
        bool caught = false;
        try {
            pool.run(n, [&](int chunk, int) {
                if (returned.load()) after.fetch_add(1);
                ran.fetch_add(1);
                if (chunk % 3 == j % 3) throw std::runtime_error("chunk " + std::to_string(chunk));
            });
        } catch (const std::runtime_error&) {
            caught = true;
        }
        returned.store(true);
        const bool should_throw = n > j % 3;
        CHECK(caught == should_throw, "%s: job %d of %d chunks: exception %s", what, j, n, caught ? "thrown" : "lost");
        // One thread stops at the first exception; with workers the claimed chunks all finish.
        const int at_least = should_throw ? 1 + j % 3 : n;  // the serial path runs chunks in order
        CHECK(ran.load() >= at_least && ran.load() <= n, "%s: job %d: %d of %d chunks ran", what, j, ran.load(), n);
        std::atomic<int> sum{0};
        pool.run(64, [&](int chunk, int) { sum.fetch_add(chunk); });
        CHECK(sum.load() == 64 * 63 / 2, "%s: job after a throwing one: sum %d", what, sum.load());
        CHECK(after.load() == 0, "%s: a chunk ran after run() returned", what);
    }
}

// A job that finishes only once every thread index has run one of its chunks: the workers do take part (a pool
// whose caller ran everything would pass the other checks), and a chunk that waits for a late or descheduled
// worker does not stop the others. A hang here is the failure (ctest's timeout).
void every_thread_joins(ThreadPool& pool) {
    const int n = pool.size();
    std::vector<std::atomic<int>> ran(static_cast<size_t>(n));
    for (auto& r : ran) r.store(0);
    auto all_ran = [&] {
        for (auto& r : ran)
            if (r.load() == 0) return false;
        return true;
    };
    pool.run(n, [&](int, int thread) {
        ran[static_cast<size_t>(thread)].fetch_add(1);
        while (!all_ran()) std::this_thread::yield();
    });
}

// BLLAMA_PIN=yes meant off, BLLAMA_HUGE_PAGES=no on, BLLAMA_SPIN_US=abc 0 us (and turned off the oversubscribed
// pool's no-spin rule): the values the engine accepts, and nothing else.
void env_values() {
    for (const char* on : {"1", "on", "ON", "true", "True", "yes"}) CHECK(parse_switch(on) == true, "%s", on);
    for (const char* off : {"0", "off", "false", "FALSE", "no"}) CHECK(parse_switch(off) == false, "%s", off);
    for (const char* bad : {"", "2", "yes please", " 1", "y", "enable"}) CHECK(!parse_switch(bad), "'%s'", bad);
    CHECK(parse_count("0", 100) == 0L && parse_count("50", 100) == 50L && parse_count("100", 100) == 100L, "counts");
    for (const char* bad : {"", "abc", "-5", "+5", " 5", "5 ", "5us", "101", "99999999999999999999999", "1e3"})
        CHECK(!parse_count(bad, 100), "'%s'", bad);
}

}  // namespace

// GuidedChunks: for any thread count, total and alignment, the chunks tile [0, total) in order with aligned
// boundaries; the first takes 1/(2 x threads) of the job (to within one aligned unit: fractions round down), the sizes never grow until the
// minimum part is reached, and there are few enough that claiming them costs nothing.
void guided_chunks() {
    for (int threads = 1; threads <= 16; ++threads) {
        const GuidedChunks g(threads);
        CHECK(threads > 1 || g.count() == 1, "one thread: %d chunks", g.count());
        CHECK(g.count() <= GuidedChunks::kMinParts, "%d threads: %d chunks", threads, g.count());
        CHECK(threads == 1 || g.count() >= 2 * threads, "%d threads: only %d chunks", threads, g.count());
        for (int64_t total : {1, 15, 16, 100, 2048, 2560, 6912, 8192, 128256}) {
            for (int64_t align : {1, 16, 64}) {
                int64_t prev_end = 0, prev_size = total + 1;
                bool grew_early = false;
                for (int i = 0; i < g.count(); ++i) {
                    int64_t b, e;
                    g.range(total, i, align, b, e);
                    CHECK(b == prev_end && e >= b, "%d threads, total %lld, align %lld: chunk %d is [%lld, %lld) after %lld",
                          threads, (long long)total, (long long)align, i, (long long)b, (long long)e,
                          (long long)prev_end);
                    CHECK((b % align == 0) && (e % align == 0 || e == total), "chunk %d [%lld, %lld) not on %lld",
                          i, (long long)b, (long long)e, (long long)align);
                    const int64_t units = (total + align - 1) / align, min_size = align * (units / GuidedChunks::kMinParts);
                    if (e - b > prev_size + align && prev_size > min_size + align) grew_early = true;
                    if (i == 0 && threads > 1)
                        CHECK(b == 0 && std::llabs(e - std::min(total, align * (units / (2 * threads)))) <= align,
                              "%d threads, total %lld: first chunk ends at %lld", threads, (long long)total, (long long)e);
                    prev_end = e;
                    if (i + 1 < g.count()) prev_size = e - b;
                }
                CHECK(prev_end == total, "%d threads: chunks end at %lld of %lld", threads, (long long)prev_end,
                      (long long)total);
                CHECK(!grew_early, "%d threads, total %lld, align %lld: a chunk grew before the minimum size", threads,
                      (long long)total, (long long)align);
            }
        }
    }
}

// Thread counts past kMaxThreads are refused up front; a pool whose threads cannot all start (their stacks do not
// fit an address-space limit, set in a child process) joins the ones that did and throws, where an unjoined
// std::thread used to terminate the process.
void thread_limits() {
    try {
        ThreadPool pool(ThreadPool::kMaxThreads + 1);
        CHECK(false, "a pool of %d threads was created", pool.size());
    } catch (const std::invalid_argument& e) {
        CHECK(std::string(e.what()).find("at most 256") != std::string::npos, "message: %s", e.what());
    }
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)  // sanitizers reserve more than the limit
    std::fflush(stdout);
    const pid_t child = fork();
    if (child == 0) {
        const rlim_t limit = rlim_t(512) << 20;  // 512 MiB: about 60 default 8 MiB thread stacks
        const rlimit rl{limit, limit};
        if (setrlimit(RLIMIT_AS, &rl) != 0) _exit(3);
        try {
            ThreadPool pool(ThreadPool::kMaxThreads);
            _exit(4);  // every thread started: the limit did not bite
        } catch (const std::runtime_error& e) {
            _exit(std::string(e.what()).find("could not start engine thread") != std::string::npos ? 0 : 5);
        }
    }
    int status = 0;
    bool ended = false;  // a pool left half built can also hang (its condition variable destroyed under waiters)
    for (int i = 0; i < 3000 && !ended; ++i) {
        ended = waitpid(child, &status, WNOHANG) == child;
        if (!ended) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (!ended) {
        kill(child, SIGKILL);
        waitpid(child, &status, 0);
    }
    if (ended && WIFEXITED(status) && WEXITSTATUS(status) == 4) {  // e.g. qemu-user, which keeps RLIMIT_AS to itself
        std::printf("note: the address-space limit did not stop thread creation here; that check was skipped\n");
        return;
    }
    CHECK(ended && WIFEXITED(status) && WEXITSTATUS(status) == 0, "a pool that could not start its threads: %s %d",
          !ended ? "hung for 30 s, status" : WIFEXITED(status) ? "exit status" : "killed by signal",
          WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
#endif
}

int main() {
    env_values();
    guided_chunks();
    thread_limits();
    const int sizes[] = {1, 2, 3, 5, 8};  // 5 and 8 oversubscribe a 2-core machine
    const int spins[] = {0, 50, 1000000};  // never spin, the default, spin "forever" (bounded by preemption only)
    uint32_t seed = 1;
    for (int n : sizes)
        for (int spin : spins) {
            char what[64];
            std::snprintf(what, sizeof what, "%d threads, spin %d us", n, spin);
            ThreadPool pool(n, false, spin);
            CHECK(pool.size() == n, "%s: size %d", what, pool.size());
            every_thread_joins(pool);
            random_jobs(pool, 300, false, seed++, what);
            random_jobs(pool, 60, true, seed++, what);
            exceptions(pool, what);
            if (spin == 0 && n > 1) {  // a worker that never spins sleeps after every job (a hang is the failure)
                every_thread_joins(pool);
                while (pool.sleeps() == 0) std::this_thread::yield();
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(5));  // idle: workers go to sleep
            every_thread_joins(pool);
            random_jobs(pool, 20, false, seed++, what);
        }
    // The default spin budget: the env's or 50 us for a pool that fits the cores, none for an oversubscribed one
    // (its polling threads would hold cores that its other threads need); an explicit budget is kept either way.
    if (std::getenv("BLLAMA_SPIN_US") == nullptr) {
        const int cores = default_thread_count();
        CHECK(ThreadPool(cores).spin_budget().count() == 50, "a pool of %d threads on %d cores: spin %lld us", cores,
              cores, static_cast<long long>(ThreadPool(cores).spin_budget().count()));
        CHECK(ThreadPool(cores + 1).spin_budget().count() == 0, "an oversubscribed pool (%d threads) spins", cores + 1);
        CHECK(ThreadPool(cores + 1, false, 30).spin_budget().count() == 30, "an explicit spin budget was overridden");
    }
    // Pools created and destroyed at once, with workers still starting, spinning or asleep.
    for (int i = 0; i < 50; ++i) {
        ThreadPool pool(1 + i % 4, false, i % 3 == 0 ? 0 : 50);
        if (i % 2) pool.run(8, [](int, int) {});
    }
    // Pinning is best effort: it may be refused (fewer cores than threads), but the pool works either way.
    {
        ThreadPool pool(2, true);
        random_jobs(pool, 50, false, seed++, "pinned");
    }
    std::printf("%d checks, %d failures\n", g_checks, g_failures);
    return g_failures ? 1 : 0;
}

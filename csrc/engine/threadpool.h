// A persistent pool for fork-join work in the forward pass. Workers are created once; run() splits
// a job into chunks that the calling thread and the workers claim dynamically (one atomic CAS per
// chunk), and returns when every chunk is done. Dynamic claiming matters on shared machines: when a
// worker is descheduled, the others take its chunks instead of the whole step waiting for it.
// Workers spin for a bounded time after each job (the next matmul is microseconds away during a forward) and
// then sleep on a condition variable, so an idle engine costs nothing; a thread that finds itself descheduled
// while spinning (an oversubscribed machine) stops spinning at once and spins less for a while.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace bllama {

// Physical cores this process may run on (affinity mask, SMT siblings counted once); >= 1.
int default_thread_count();
// One CPU of each physical core this process may run on (the first of its SMT siblings), in core order: where
// pinned workers go. Empty where the topology cannot be read (pinning is then skipped).
std::vector<int> physical_core_cpus();

class ThreadPool {
public:
    // The most threads a pool takes: past the cores there is nothing to gain, and every thread costs the model its
    // own scratch; 100,000 asked for used to create threads until the machine could not start a process.
    static constexpr int kMaxThreads = 256;

    // n_threads: total threads, the caller included; <= 0 -> default; over kMaxThreads -> std::invalid_argument. pin: worker i runs only on the i-th physical
    // core (physical_core_cpus(); the caller's own thread is left as it is, it belongs to the application), so
    // the OS cannot stack two workers on one core or move a worker away from its cache; also set by
    // BLLAMA_PIN=1. Off by default: on a machine shared with other busy processes a pinned worker cannot flee
    // to an idle core (docs/engine.md, "Threads").
    // spin_us: how long a waiting thread polls before it sleeps (< 0: BLLAMA_SPIN_US, default 50, or 0 for a pool
    // with more threads than default_thread_count() cores; 0: never polls).
    explicit ThreadPool(int n_threads, bool pin = false, int spin_us = -1);
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    int size() const { return n_threads_; }
    std::chrono::microseconds spin_budget() const { return spin_for_; }
    bool pinned() const { return pinned_; }
    // Jobs handed to the workers so far (run() calls with more than one chunk on more than one thread): what a
    // forward pass pays in synchronization, counted by benchmarks.
    uint64_t handoffs() const { return handoffs_.load(std::memory_order_relaxed); }
    // Times a worker gave up spinning and slept: each costs the next job a wake-up (a futex call and the
    // scheduler's latency) on that worker.
    uint64_t sleeps() const { return sleeps_.load(std::memory_order_relaxed); }

    // Calls f(chunk, thread) for every chunk in [0, n_chunks), each exactly once, on any of the
    // pool's threads (thread in [0, size()), 0 is the caller; use it to pick per-thread scratch),
    // and waits for all. No allocation: f is passed by address. Rethrows the first exception once no chunk runs (chunks
    // not started by then may be skipped).
    template <class F>
    void run(int n_chunks, F&& f) {
        using Fn = std::remove_reference_t<F>;
        dispatch(n_chunks, [](void* ctx, int chunk, int thread) { (*static_cast<Fn*>(ctx))(chunk, thread); },
                 const_cast<void*>(static_cast<const void*>(&f)));
    }

private:
    void stop_workers() noexcept;  // ends and joins every started worker
    using Thunk = void (*)(void*, int, int);
    struct SpinState {  // one per waiting thread: how far its spin budget is cut after preemptions
        int shift = 0, calm = 0;
    };
    template <class Ready>
    bool spin_until(SpinState& st, Ready&& ready) const;
    void dispatch(int n_chunks, Thunk fn, void* ctx);
    void run_chunks(uint64_t gen, int thread);
    void worker(int index);
    void record_error();

    int n_threads_;
    bool pinned_ = false;
    std::atomic<uint64_t> handoffs_{0}, sleeps_{0};
    SpinState caller_spin_;  // run() is called by one thread at a time
    std::chrono::microseconds spin_for_;
    std::vector<std::thread> workers_;
    Thunk fn_ = nullptr;
    void* ctx_ = nullptr;
    // work_ packs (generation:24 | next chunk:20 | chunk count:20). A chunk is claimed by a CAS that
    // only succeeds for the live generation, so a late worker can never touch a finished job.
    std::atomic<uint64_t> work_{0};
    std::atomic<int> done_{0};
    uint64_t gen_ = 0;
    std::atomic<int> sleeping_{0};
    std::atomic<bool> stop_{false};
    std::mutex mu_;
    std::condition_variable cv_;
    std::mutex error_mu_;
    std::exception_ptr error_;
};

// [begin, end) of part i out of n for `total` items, boundaries on multiples of `align`.
inline void split_range(int64_t total, int i, int n, int64_t align, int64_t& begin, int64_t& end) {
    const int64_t units = (total + align - 1) / align;
    const int64_t b = units * i / n, e = units * (i + 1) / n;
    begin = b * align < total ? b * align : total;
    end = e * align < total ? e * align : total;
}

// Chunks of a pool job that shrink as the job goes on (guided self-scheduling). The pool hands chunks out in index
// order, so the large ones go first and a job ends on small ones: a thread that finishes early waits for at most a
// small chunk of another's, where equal chunks (split_range with 4 per thread) left it up to a whole one, 1/8 of the
// job at 2 threads. Chunk i covers the fractions [starts[i], starts[i + 1]) of any total, so one GuidedChunks serves
// every matrix of a model and a job whose chunks cover two totals at once (q rows and k/v rows).
class GuidedChunks {
public:
    // Each chunk takes 1/(2 x threads) of what is still unclaimed, and at least 1/kMinParts of the whole; one thread:
    // one chunk.
    static constexpr int kMinParts = 64;
    explicit GuidedChunks(int threads);
    int count() const { return static_cast<int>(starts_.size()) - 1; }
    // [begin, end) of chunk i of `total` items, boundaries on multiples of `align` (as split_range); may be empty
    // when total is small.
    void range(int64_t total, int i, int64_t align, int64_t& begin, int64_t& end) const {
        const int64_t units = (total + align - 1) / align;
        const auto at = [&](int k) {
            const int64_t u = static_cast<int64_t>(static_cast<double>(units) * starts_[static_cast<size_t>(k)]);
            return std::min(u * align, total);
        };
        begin = at(i);
        end = at(i + 1);
    }

private:
    std::vector<double> starts_;  // starts_[0] = 0 < ... < starts_.back() = 1
};

}  // namespace bllama

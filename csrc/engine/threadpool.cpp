#include "engine/threadpool.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>

#if defined(__linux__)
#include <pthread.h>
#include <sched.h>
#endif

#include "engine/cpu_relax.h"
#include "engine/env_options.h"

namespace bllama {

namespace {
// How long a thread keeps polling (for the next job, or for the job's last chunk) before it sleeps or yields its
// core. Long enough to cover the serial work between two jobs of a decode step (an rmsnorm over the FFN width is
// ~10 us), so back-to-back jobs find the workers awake. BLLAMA_SPIN_US overrides it (read once); the constructor's
// spin_us overrides both.
constexpr long kDefaultSpinUs = 50;
constexpr long kMaxEnvSpinUs = 60L * 1000 * 1000;
// BLLAMA_SPIN_US when it is set to a valid count (read once), else nothing.
std::optional<std::chrono::microseconds> env_spin() {
    static const std::optional<std::chrono::microseconds> v = [] () -> std::optional<std::chrono::microseconds> {
        if (const std::optional<long> us = env_count("BLLAMA_SPIN_US", kMaxEnvSpinUs)) return std::chrono::microseconds(*us);
        return std::nullopt;
    }();
    return v;
}
std::chrono::microseconds spin_from_env() { return env_spin().value_or(std::chrono::microseconds(kDefaultSpinUs)); }
constexpr int kSpinCheckEvery = 16;  // pause instructions between clock reads (~0.2-1 us)
// A gap this long between two clock reads of a spin means the thread was descheduled: the machine has more
// runnable threads than cores, and spinning on would burn the timeslice of a thread that everyone waits for
// (measured: 300 us spins made 2 threads 2x slower than 1 under load, bench/NOTES-kernels.md).
constexpr std::chrono::microseconds kPreemptedGap{20};
// A spin's first microseconds only poll (most jobs of a decode step follow the previous one within this); after
// that each poll also yields the core, so on an oversubscribed machine a thread queued behind the spinner (often
// the caller with the next job's serial work) runs at once instead of after the whole spin.
constexpr std::chrono::microseconds kPureSpin{10};
// After a preemption a thread's spin budget shrinks 4x (to nothing after kMaxShift halvings) and grows back 2x per
// kCalmWaits waits without one: a decode token waits ~100 times, so it recovers within a few tokens of quiet.
constexpr int kMaxShift = 8, kCalmWaits = 32;

using Clock = std::chrono::steady_clock;
}  // namespace

// Polls ready() with a pause between polls for at most this thread's budget; true as soon as ready() is. Returns
// early (false) when the thread is found descheduled, and adapts the budget (see kMaxShift).
template <class Ready>
bool ThreadPool::spin_until(SpinState& st, Ready&& ready) const {
    if (ready()) return true;
    const std::chrono::nanoseconds budget(st.shift >= kMaxShift ? 0 : std::chrono::nanoseconds(spin_for_).count() >> st.shift);
    bool preempted = false, ok = false;
    if (budget.count() > 0) {
        const auto start = Clock::now();
        auto last = start;
        for (int i = 1;; ++i) {
            if (ready()) {
                ok = true;
                break;
            }
            cpu_relax();
            if (i % kSpinCheckEvery) continue;
            const auto t = Clock::now();
            if (t - last > kPreemptedGap) {
                preempted = true;
                break;
            }
            if (t - start > budget) break;
            if (t - start > kPureSpin) {
                std::this_thread::yield();
                last = Clock::now();  // a yield that ran another thread for a while: a preemption
                if (last - t > kPreemptedGap) {
                    preempted = true;
                    break;
                }
            } else {
                last = t;
            }
        }
    }
    if (preempted) {
        st.shift = std::min(st.shift + 2, kMaxShift);
        st.calm = 0;
    } else if (st.shift > 0 && ++st.calm >= kCalmWaits) {
        --st.shift;
        st.calm = 0;
    }
    return ok || ready();
}

namespace {

#if defined(__linux__)
int read_int(const std::string& path) {
    std::ifstream f(path);
    int v = -1;
    if (!(f >> v)) return -1;
    return v;
}
#endif
}  // namespace

std::vector<int> physical_core_cpus() {
    std::vector<int> cpus;
#if defined(__linux__)
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) != 0) return cpus;
    std::set<std::pair<int, int>> seen;  // (package, core)
    for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
        if (!CPU_ISSET(cpu, &set)) continue;
        const std::string base = "/sys/devices/system/cpu/cpu" + std::to_string(cpu) + "/topology/";
        const int core = read_int(base + "core_id"), pkg = read_int(base + "physical_package_id");
        if (core < 0) return {};  // unknown topology: do not guess
        if (seen.emplace(pkg, core).second) cpus.push_back(cpu);
    }
#endif
    return cpus;
}

namespace {
bool pin_from_env() {
    static const bool v = env_switch("BLLAMA_PIN").value_or(false);
    return v;
}

// Pins the calling thread to one CPU; false where that is not possible (another OS, a CPU outside the mask).
bool pin_current_thread(int cpu) {
#if defined(__linux__)
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return pthread_setaffinity_np(pthread_self(), sizeof set, &set) == 0;
#else
    (void)cpu;
    return false;
#endif
}
}  // namespace

int default_thread_count() {
#if defined(__linux__)  // sched_getaffinity and the sysfs topology are Linux's; elsewhere every hardware thread
    cpu_set_t set;
    CPU_ZERO(&set);
    int allowed = 0;
    std::set<std::pair<int, int>> cores;  // (package, core)
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
            if (!CPU_ISSET(cpu, &set)) continue;
            ++allowed;
            const std::string base = "/sys/devices/system/cpu/cpu" + std::to_string(cpu) + "/topology/";
            const int core = read_int(base + "core_id"), pkg = read_int(base + "physical_package_id");
            cores.emplace(pkg, core < 0 ? 100000 + cpu : core);  // unknown topology: count the CPU itself
        }
    }
    if (!cores.empty()) return static_cast<int>(cores.size());
    if (allowed > 0) return allowed;
#endif
    const unsigned hc = std::thread::hardware_concurrency();
    return hc ? static_cast<int>(hc) : 1;
}

// A pool with more threads than the cores it may use never polls by default: a polling thread holds a core that
// another of the pool's threads needs for its chunk (4 threads on 2 cores, 1.7B decode: 27.6 tok/s without the spin,
// 26.0 with it; bench/NOTES-kernels.md). BLLAMA_SPIN_US or spin_us still set it.
static std::chrono::microseconds default_spin(int n_threads) {
    if (!env_spin() && n_threads > default_thread_count()) return std::chrono::microseconds(0);
    return spin_from_env();
}

static int checked_threads(int n_threads) {
    if (n_threads > ThreadPool::kMaxThreads)
        throw std::invalid_argument("threads must be at most " + std::to_string(ThreadPool::kMaxThreads) +
                                    " (this machine has " + std::to_string(default_thread_count()) + " cores), got " +
                                    std::to_string(n_threads));
    return n_threads > 0 ? n_threads : default_thread_count();
}

ThreadPool::ThreadPool(int n_threads, bool pin, int spin_us)
    : n_threads_(checked_threads(n_threads)),
      spin_for_(spin_us < 0 ? default_spin(n_threads_) : std::chrono::microseconds(spin_us)) {
    std::vector<int> cpus;
    if (pin || pin_from_env()) cpus = physical_core_cpus();
    // Worker i takes core i; core 0 is left to the caller's thread. More workers than cores: no pinning at all
    // (two pinned workers on one core would wait for each other at every job).
    pinned_ = n_threads_ > 1 && static_cast<int>(cpus.size()) >= n_threads_;
    workers_.reserve(n_threads_ - 1);
    for (int i = 1; i < n_threads_; ++i) {
        const int cpu = pinned_ ? cpus[static_cast<size_t>(i)] : -1;
        try {
            workers_.emplace_back([this, i, cpu] {
                if (cpu >= 0) pin_current_thread(cpu);
                worker(i);
            });
        } catch (const std::system_error& e) {  // the started ones must be joined: a joinable std::thread terminates
            stop_workers();
            throw std::runtime_error("could not start engine thread " + std::to_string(i + 1) + " of " +
                                     std::to_string(n_threads_) + ": " + e.what() + " (ask for fewer threads)");
        }
    }
}

ThreadPool::~ThreadPool() { stop_workers(); }

void ThreadPool::stop_workers() noexcept {
    {
        std::lock_guard<std::mutex> lk(mu_);
        stop_.store(true);
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
}

void ThreadPool::record_error() {
    std::lock_guard<std::mutex> lk(error_mu_);
    if (!error_) error_ = std::current_exception();
}

namespace {
constexpr uint64_t kFieldBits = 20, kFieldMask = (1ull << kFieldBits) - 1;
inline uint64_t pack(uint64_t gen, uint64_t next, uint64_t count) {
    return (gen << (2 * kFieldBits)) | (next << kFieldBits) | count;
}
inline uint64_t gen_of(uint64_t w) { return w >> (2 * kFieldBits); }
inline uint64_t next_of(uint64_t w) { return (w >> kFieldBits) & kFieldMask; }
inline uint64_t count_of(uint64_t w) { return w & kFieldMask; }
}  // namespace

void ThreadPool::run_chunks(uint64_t gen, int thread) {
    uint64_t w = work_.load(std::memory_order_acquire);
    for (;;) {
        if (gen_of(w) != gen || next_of(w) >= count_of(w)) return;
        if (!work_.compare_exchange_weak(w, w + (1ull << kFieldBits), std::memory_order_acq_rel,
                                         std::memory_order_acquire))
            continue;  // w now holds the current value
        // The claimed chunk keeps the job alive (dispatch waits for it), so fn_/ctx_ are valid.
        try {
            fn_(ctx_, static_cast<int>(next_of(w)), thread);
        } catch (...) {
            record_error();
        }
        done_.fetch_add(1, std::memory_order_acq_rel);
        w = work_.load(std::memory_order_acquire);
    }
}

void ThreadPool::dispatch(int n_chunks, Thunk fn, void* ctx) {
    if (n_chunks <= 0) return;
    if (n_threads_ == 1 || n_chunks == 1) {
        for (int c = 0; c < n_chunks; ++c) fn(ctx, c, 0);
        return;
    }
    if (static_cast<uint64_t>(n_chunks) > kFieldMask) throw std::invalid_argument("ThreadPool: too many chunks");
    fn_ = fn;
    ctx_ = ctx;
    handoffs_.fetch_add(1, std::memory_order_relaxed);
    done_.store(0, std::memory_order_relaxed);
    gen_ = (gen_ + 1) & ((1ull << (64 - 2 * kFieldBits)) - 1);
    work_.store(pack(gen_, 0, static_cast<uint64_t>(n_chunks)), std::memory_order_seq_cst);  // publishes fn_/ctx_
    // A worker bumps sleeping_ (under mu_) before re-checking work_, so either it sees the new job
    // or we see it asleep and wake it: no lost wake-ups, and no lock while everyone spins.
    if (sleeping_.load(std::memory_order_seq_cst) > 0) {
        { std::lock_guard<std::mutex> lk(mu_); }
        cv_.notify_all();
    }
    run_chunks(gen_, 0);
    // Every chunk is claimed now; the ones still running belong to workers. Past the spin, yield the core: the
    // thread we wait for may be queued behind us.
    auto finished = [&] { return done_.load(std::memory_order_acquire) == n_chunks; };
    if (!spin_until(caller_spin_, finished))
        while (!finished()) std::this_thread::yield();
    if (error_) {
        std::exception_ptr e;
        {
            std::lock_guard<std::mutex> lk(error_mu_);
            std::swap(e, error_);
        }
        std::rethrow_exception(e);
    }
}

void ThreadPool::worker(int index) {
    SpinState spin;
    // The generation before any job (not the current one): a worker that starts late still joins a job that is
    // already running, so a live job's unclaimed chunks never wait on a sleeping worker.
    uint64_t seen = 0;
    auto new_job = [&] { return gen_of(work_.load(std::memory_order_acquire)) != seen || stop_.load(std::memory_order_relaxed); };
    for (;;) {
        if (!spin_until(spin, new_job)) {
            std::unique_lock<std::mutex> lk(mu_);
            sleeping_.fetch_add(1, std::memory_order_seq_cst);
            sleeps_.fetch_add(1, std::memory_order_relaxed);
            cv_.wait(lk, [&] { return gen_of(work_.load(std::memory_order_seq_cst)) != seen || stop_.load(); });
            sleeping_.fetch_sub(1, std::memory_order_relaxed);
        }
        if (stop_.load(std::memory_order_relaxed)) return;
        seen = gen_of(work_.load(std::memory_order_acquire));
        run_chunks(seen, index);
    }
}

GuidedChunks::GuidedChunks(int threads) {
    starts_.push_back(0.0);
    if (threads > 1) {
        const double min_part = 1.0 / kMinParts;
        double left = 1.0;
        while (left > 1.5 * min_part) {
            const double part = std::max(left / (2.0 * threads), min_part);
            left -= part;
            starts_.push_back(1.0 - left);
        }
    }
    starts_.push_back(1.0);  // the last chunk takes what is left (under 1.5 / kMinParts), exactly up to 1
}

}  // namespace bllama

#include "threadpool.h"

#include <chrono>
#include <fstream>
#include <set>
#include <string>
#include <utility>

#include <sched.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
static inline void cpu_relax() { _mm_pause(); }
#else
static inline void cpu_relax() {}
#endif

namespace bllama {

namespace {
// How long a worker keeps polling for the next job before sleeping, and how long the caller polls
// for completion before yielding its core (others may share this machine).
constexpr auto kSpinFor = std::chrono::microseconds(300);
constexpr int kSpinCheckEvery = 64;

int read_int(const std::string& path) {
    std::ifstream f(path);
    int v = -1;
    if (!(f >> v)) return -1;
    return v;
}
}  // namespace

int default_thread_count() {
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
    const unsigned hc = std::thread::hardware_concurrency();
    return hc ? static_cast<int>(hc) : 1;
}

ThreadPool::ThreadPool(int n_threads) : n_threads_(n_threads > 0 ? n_threads : default_thread_count()) {
    workers_.reserve(n_threads_ - 1);
    for (int i = 1; i < n_threads_; ++i) workers_.emplace_back([this, i] { worker(i); });
}

ThreadPool::~ThreadPool() {
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

void ThreadPool::dispatch(Thunk fn, void* ctx) {
    if (n_threads_ == 1) {
        fn(ctx, 0, 1);
        return;
    }
    fn_ = fn;
    ctx_ = ctx;
    pending_.store(n_threads_ - 1, std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_seq_cst);  // publishes fn_/ctx_/pending_
    // A worker bumps sleeping_ (under mu_) before re-checking generation_, so either it sees the new
    // generation or we see it asleep and wake it: no lost wake-ups, and no lock when all spin.
    if (sleeping_.load(std::memory_order_seq_cst) > 0) {
        { std::lock_guard<std::mutex> lk(mu_); }
        cv_.notify_all();
    }
    try {
        fn(ctx, 0, n_threads_);
    } catch (...) {
        record_error();
    }
    auto start = std::chrono::steady_clock::now();
    for (int spins = 0; pending_.load(std::memory_order_acquire) != 0; ++spins) {
        cpu_relax();
        if (spins % kSpinCheckEvery == 0 && std::chrono::steady_clock::now() - start > kSpinFor)
            std::this_thread::yield();
    }
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
    uint64_t seen = 0;
    for (;;) {
        uint64_t g = generation_.load(std::memory_order_acquire);
        auto start = std::chrono::steady_clock::now();
        for (int spins = 1; g == seen && !stop_.load(std::memory_order_relaxed); ++spins) {
            cpu_relax();
            if (spins % kSpinCheckEvery == 0 && std::chrono::steady_clock::now() - start > kSpinFor) {
                std::unique_lock<std::mutex> lk(mu_);
                sleeping_.fetch_add(1, std::memory_order_seq_cst);
                cv_.wait(lk, [&] { return generation_.load(std::memory_order_seq_cst) != seen || stop_.load(); });
                sleeping_.fetch_sub(1, std::memory_order_relaxed);
                start = std::chrono::steady_clock::now();
            }
            g = generation_.load(std::memory_order_acquire);
        }
        if (stop_.load(std::memory_order_relaxed)) return;
        seen = g;
        try {
            fn_(ctx_, index, n_threads_);
        } catch (...) {
            record_error();
        }
        pending_.fetch_sub(1, std::memory_order_acq_rel);
    }
}

}  // namespace bllama

// A persistent pool for fork-join work in the forward pass. Workers are created once; run() wakes
// them, the calling thread takes share 0, and run() returns when every share is done. Workers spin
// briefly after each job (the next matmul is microseconds away during a forward) and then sleep on
// a condition variable, so an idle engine costs nothing.
#pragma once

#include <atomic>
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

class ThreadPool {
public:
    explicit ThreadPool(int n_threads);  // total threads, the caller included; <= 0 -> default
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    int size() const { return n_threads_; }

    // Calls f(index, size()) once on each of size() threads (index 0 on the caller) and waits.
    // No allocation: f is passed by address. The first exception thrown by any share is rethrown.
    template <class F>
    void run(F&& f) {
        using Fn = std::remove_reference_t<F>;
        dispatch([](void* ctx, int i, int n) { (*static_cast<Fn*>(ctx))(i, n); },
                 const_cast<void*>(static_cast<const void*>(&f)));
    }

private:
    using Thunk = void (*)(void*, int, int);
    void dispatch(Thunk fn, void* ctx);
    void worker(int index);
    void record_error();

    int n_threads_;
    std::vector<std::thread> workers_;
    Thunk fn_ = nullptr;
    void* ctx_ = nullptr;
    std::atomic<uint64_t> generation_{0};
    std::atomic<int> pending_{0};
    std::atomic<int> sleeping_{0};
    std::atomic<bool> stop_{false};
    std::mutex mu_;
    std::condition_variable cv_;
    std::mutex error_mu_;
    std::exception_ptr error_;
};

// [begin, end) of share i out of n for `total` items, boundaries on multiples of `align`.
inline void split_range(int64_t total, int i, int n, int64_t align, int64_t& begin, int64_t& end) {
    const int64_t units = (total + align - 1) / align;
    const int64_t b = units * i / n, e = units * (i + 1) / n;
    begin = b * align < total ? b * align : total;
    end = e * align < total ? e * align : total;
}

}  // namespace bllama

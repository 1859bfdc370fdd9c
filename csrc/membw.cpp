#include "membw.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <thread>
#include <vector>

namespace bllama {
namespace {

// Four independent accumulators keep several loads in flight; the XOR result is returned so the compiler
// cannot drop the reads. Vectorized by the compiler at -O3.
uint64_t read_slice(const uint64_t* p, size_t n) {
    uint64_t a = 0, b = 0, c = 0, d = 0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        a ^= p[i] ^ p[i + 4];
        b ^= p[i + 1] ^ p[i + 5];
        c ^= p[i + 2] ^ p[i + 6];
        d ^= p[i + 3] ^ p[i + 7];
    }
    for (; i < n; ++i) a ^= p[i];
    return a ^ b ^ c ^ d;
}

}  // namespace

double measure_read_bandwidth(int threads, size_t bytes, int repeats) {
    if (threads < 1) throw std::invalid_argument("threads must be >= 1");
    const size_t words = bytes / sizeof(uint64_t);
    std::vector<uint64_t> buf(words);
    for (size_t i = 0; i < words; i += 512) buf[i] = i;  // fault every page in before timing
    const size_t per = words / threads;
    double best = 0;
    std::atomic<uint64_t> sink{0};
    for (int r = 0; r < repeats; ++r) {
        std::atomic<int> ready{0};
        std::atomic<bool> go{false};
        std::vector<std::thread> pool;
        for (int t = 0; t < threads; ++t) {
            pool.emplace_back([&, t] {
                ready.fetch_add(1);
                while (!go.load(std::memory_order_acquire)) {
                }
                sink.fetch_xor(read_slice(buf.data() + t * per, per));
            });
        }
        while (ready.load() < threads) {
        }
        const auto t0 = std::chrono::steady_clock::now();
        go.store(true, std::memory_order_release);
        for (auto& th : pool) th.join();
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        best = std::max(best, static_cast<double>(per * threads * sizeof(uint64_t)) / s);
    }
    if (sink.load() == 0x5bd1e995) std::memset(buf.data(), 0, 8);  // keeps `sink` observable
    return best;
}

}  // namespace bllama

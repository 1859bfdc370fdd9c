#include "membw.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#elif defined(__aarch64__)
#include <arm_neon.h>
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <thread>
#include <vector>

#include "kernels/cpu_features.h"
#include "kernels/huge_pages.h"

namespace bllama {
namespace {

#if defined(__x86_64__) || defined(__i386__)
// Four independent accumulators keep several loads in flight.
__attribute__((target("avx512f"))) uint64_t read_avx512(const uint8_t* p, size_t n) {
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i < n; i += 256) {
        a0 = _mm512_xor_si512(a0, _mm512_load_si512(p + i));
        a1 = _mm512_xor_si512(a1, _mm512_load_si512(p + i + 64));
        a2 = _mm512_xor_si512(a2, _mm512_load_si512(p + i + 128));
        a3 = _mm512_xor_si512(a3, _mm512_load_si512(p + i + 192));
    }
    const __m512i x = _mm512_xor_si512(_mm512_xor_si512(a0, a1), _mm512_xor_si512(a2, a3));
    return static_cast<uint64_t>(_mm_cvtsi128_si64(_mm512_castsi512_si128(x)));
}

__attribute__((target("avx2"))) uint64_t read_avx2(const uint8_t* p, size_t n) {
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i < n; i += 128) {
        a0 = _mm256_xor_si256(a0, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i)));
        a1 = _mm256_xor_si256(a1, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 32)));
        a2 = _mm256_xor_si256(a2, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 64)));
        a3 = _mm256_xor_si256(a3, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 96)));
    }
    const __m256i x = _mm256_xor_si256(_mm256_xor_si256(a0, a1), _mm256_xor_si256(a2, a3));
    return static_cast<uint64_t>(_mm_cvtsi128_si64(_mm256_castsi256_si128(x)));
}
#elif defined(__aarch64__)
// 128-bit NEON loads are the widest aarch64 has (SVE aside); four accumulators as above.
uint64_t read_neon(const uint8_t* p, size_t n) {
    uint8x16_t a0 = vdupq_n_u8(0), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i < n; i += 64) {
        a0 = veorq_u8(a0, vld1q_u8(p + i));
        a1 = veorq_u8(a1, vld1q_u8(p + i + 16));
        a2 = veorq_u8(a2, vld1q_u8(p + i + 32));
        a3 = veorq_u8(a3, vld1q_u8(p + i + 48));
    }
    return vgetq_lane_u64(vreinterpretq_u64_u8(veorq_u8(veorq_u8(a0, a1), veorq_u8(a2, a3))), 0);
}
#endif

#if !defined(__aarch64__)  // aarch64 always has NEON
uint64_t read_scalar(const uint8_t* p, size_t n) {
    uint64_t a = 0, b = 0;
    for (size_t i = 0; i < n; i += 16) {
        uint64_t x, y;
        std::memcpy(&x, p + i, 8);
        std::memcpy(&y, p + i + 8, 8);
        a ^= x;
        b ^= y;
    }
    return a ^ b;
}
#endif

}  // namespace

uint64_t read_stream(const uint8_t* p, size_t n) {
#if defined(__x86_64__) || defined(__i386__)
    static const auto fn = cpu_features().avx512_vnni ? read_avx512 : cpu_features().avx2 ? read_avx2 : read_scalar;
#elif defined(__aarch64__)
    static const auto fn = read_neon;
#else
    static const auto fn = read_scalar;
#endif
    return fn(p, n);
}

double measure_read_bandwidth(int threads, size_t bytes, int repeats, bool huge_pages) {
    if (threads < 1) throw std::invalid_argument("threads must be >= 1");
    const size_t per = bytes / threads / 4096 * 4096;
    if (per == 0) throw std::invalid_argument("buffer too small for the thread count");
    const size_t align = huge_pages ? kHugePage : 64, size = (per * threads + align - 1) / align * align;
    std::unique_ptr<uint8_t[], void (*)(void*)> buf(static_cast<uint8_t*>(std::aligned_alloc(align, size)), std::free);
    if (!buf) throw std::bad_alloc();
    if (huge_pages) advise_huge_pages(buf.get(), per * threads);
    std::memset(buf.get(), 1, per * threads);  // fault every page in before timing
    double best = 0;
    std::atomic<uint64_t> sink{0};
    for (int r = 0; r < repeats; ++r) {
        // threads - 1 workers plus this thread: no more runnable threads than the reads use, so none of them
        // waits for a scheduler tick while the clock runs.
        std::atomic<int> ready{0};
        std::atomic<bool> go{false};
        std::vector<std::thread> pool;
        for (int t = 1; t < threads; ++t) {
            pool.emplace_back([&, t] {
                ready.fetch_add(1);
                while (!go.load(std::memory_order_acquire)) {
                }
                sink.fetch_xor(read_stream(buf.get() + t * per, per));
            });
        }
        while (ready.load() < threads - 1) {
        }
        const auto t0 = std::chrono::steady_clock::now();
        go.store(true, std::memory_order_release);
        sink.fetch_xor(read_stream(buf.get(), per));
        for (auto& th : pool) th.join();
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        best = std::max(best, static_cast<double>(per * threads) / s);
    }
    if (sink.load() == 0x5bd1e995) buf[0] = 0;  // keeps `sink` observable
    return best;
}

}  // namespace bllama

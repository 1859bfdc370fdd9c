// Kernel benchmark: ternary GEMV (decode) against measured memory bandwidth, ternary GEMM (prefill)
// in GMAC/s, and the f16 head GEMV.
//
// Usage: bench_kernels [--json] [--kernel scalar|avx2|avx512] [--reps N]
//
// Method. Weights are rotated through a set larger than L3 (>= 96 MiB of packed codes per column
// width), so every GEMV streams from DRAM, as decode does. Threads: one worker thread is spawned once
// and spins on a generation counter; each matmul is split in two row ranges at 16-row boundaries and
// ends in a barrier, like one model step, so the per-call sync cost is inside the timing (it is what
// the model pays) but thread creation is not. Every figure is the median of --reps sweeps after one
// warm-up sweep.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

// gcc 12 headers trip -Wuninitialized in the AVX-512 helpers used below.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "half.h"
#include "kernels/cpu_features.h"
#include "kernels/ternary.h"

using namespace bllama;
using Clock = std::chrono::steady_clock;

namespace {

double now_s() { return std::chrono::duration<double>(Clock::now().time_since_epoch()).count(); }

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Two-thread fork/join: the caller runs part 0, one persistent worker runs part 1.
class Pair {
public:
    Pair() : worker_([this] { loop(); }) {}
    ~Pair() {
        stop_.store(true);
        gen_.fetch_add(1);
        worker_.join();
    }
    void run(int nthreads, const std::function<void(int, int)>& fn) {
        if (nthreads == 1) {
            fn(0, 1);
            return;
        }
        job_ = &fn;
        done_.store(0, std::memory_order_relaxed);
        gen_.fetch_add(1, std::memory_order_release);
        fn(0, 2);
        for (int spins = 0; done_.load(std::memory_order_acquire) == 0;) {
            if (++spins < 20000) _mm_pause();
            else std::this_thread::yield();  // the worker may have been descheduled (shared machine)
        }
    }

private:
    void loop() {
        uint64_t seen = 0;
        for (;;) {
            int spins = 0;
            while (gen_.load(std::memory_order_acquire) == seen) {
                // Spin briefly for low wake-up latency, then yield: the machine is shared.
                if (++spins < 200000) _mm_pause();
                else std::this_thread::yield();
            }
            seen = gen_.load(std::memory_order_acquire);
            if (stop_.load()) return;
            (*job_)(1, 2);
            done_.store(1, std::memory_order_release);
        }
    }
    std::atomic<uint64_t> gen_{0};
    std::atomic<int> done_{0};
    std::atomic<bool> stop_{false};
    const std::function<void(int, int)>* job_ = nullptr;
    std::thread worker_;
};

// Splits [0, n) in `parts` pieces aligned to `align`.
std::pair<int64_t, int64_t> split(int64_t n, int part, int parts, int64_t align) {
    const int64_t units = (n + align - 1) / align;
    const int64_t b = units * part / parts * align, e = units * (part + 1) / parts * align;
    return {std::min(b, n), std::min(e, n)};
}

// ---- memory read bandwidth -----------------------------------------------------------------------
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

struct Row {
    std::string section, name;
    int threads;
    double value;      // GB/s or GMAC/s
    std::string unit;
    double extra;      // % of bandwidth, or implied tok/s (0 when n/a)
    std::string extra_unit;
    double ms;         // median ms per call
};

struct Bench {
    Pair pool;
    int reps = 7;
    KernelKind kind = best_kernel();
    std::vector<Row> rows;
    double bw[3] = {0, 0, 0};

    void bandwidth() {
        const size_t n = size_t(1) << 30;
        std::unique_ptr<uint8_t[], void (*)(void*)> buf(static_cast<uint8_t*>(std::aligned_alloc(64, n)), std::free);
        std::memset(buf.get(), 1, n);
        const bool z = cpu_features().avx512_vnni;
        std::atomic<uint64_t> sink{0};
        for (int nt : {1, 2}) {
            std::vector<double> ts;
            for (int rep = 0; rep < std::max(3, reps / 2) + 1; ++rep) {
                const double t0 = now_s();
                pool.run(nt, [&](int part, int parts) {
                    const auto [b, e] = split(static_cast<int64_t>(n), part, parts, 4096);
                    sink += z ? read_avx512(buf.get() + b, size_t(e - b)) : read_avx2(buf.get() + b, size_t(e - b));
                });
                if (rep) ts.push_back(now_s() - t0);
            }
            const double t = median(ts);
            bw[nt] = n / t / 1e9;
            rows.push_back({"bandwidth", z ? "read 1 GiB, AVX-512 loads" : "read 1 GiB, AVX2 loads", nt, bw[nt], "GB/s", 0, "", t * 1e3});
        }
    }

    // A matrix of `copies` stacked [R, cols] weights (packed >= 96 MiB), built from random TQ2_0 bytes.
    static TernaryMatrix big_matrix(int64_t cols, int64_t rows_total) {
        const int64_t nblk = rows_total * cols / 256;
        std::vector<uint8_t> blocks(static_cast<size_t>(nblk * 66));
        uint64_t s = 0x9e3779b97f4a7c15ull;
        for (int64_t i = 0; i < nblk; ++i) {
            uint8_t* b = &blocks[static_cast<size_t>(i * 66)];
            for (int k = 0; k < 64; k += 8) {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                uint64_t v = s;
                v &= ~(((v & (v >> 1)) & 0x5555555555555555ull) << 1);  // field 3 -> 1: ternary codes only
                std::memcpy(b + k, &v, 8);
            }
            const uint16_t d = f32_to_f16(0.02f);
            b[64] = static_cast<uint8_t>(d & 0xff);
            b[65] = static_cast<uint8_t>(d >> 8);
        }
        return TernaryMatrix::from_tq2_0(blocks.data(), rows_total, cols);
    }

    static QuantizedActs acts(int64_t n, int64_t cols) {
        std::vector<float> x(static_cast<size_t>(n * cols));
        std::mt19937 g(7);
        std::normal_distribution<float> nd;
        for (auto& v : x) v = nd(g);
        QuantizedActs qa;
        quantize_acts(x.data(), n, cols, qa);
        return qa;
    }

    // Time one sweep of `calls` matmuls of [R, cols] over rotating row ranges; returns median s/call.
    double time_ternary(const TernaryMatrix& w, int64_t R, const QuantizedActs& qa, std::vector<float>& y, int nt,
                        int64_t calls, int reps_) {
        const int64_t copies = w.rows() / R;
        std::vector<double> ts;
        int64_t next = 0;
        for (int rep = 0; rep <= reps_; ++rep) {
            const double t0 = now_s();
            for (int64_t c = 0; c < calls; ++c) {
                const int64_t base = (next++ % copies) * R;
                pool.run(nt, [&](int part, int parts) {
                    const auto [b, e] = split(R, part, parts, kTernaryRowGranule);
                    ternary_matmul(w, qa, y.data(), w.rows(), base + b, base + e, kind);
                });
            }
            if (rep) ts.push_back((now_s() - t0) / calls);
        }
        return median(ts);
    }

    struct Shape { const char* name; int64_t rows, cols; int per_layer; };

    void ternary(const char* model, const std::vector<Shape>& shapes, int layers, bool gemm) {
        double gemm_s[2][2] = {{0, 0}, {0, 0}};  // [n index][threads-1] seconds per layer
        std::vector<int64_t> col_set;
        for (const auto& s : shapes)
            if (std::find(col_set.begin(), col_set.end(), s.cols) == col_set.end()) col_set.push_back(s.cols);
        for (int64_t cols : col_set) {
            int64_t lcm = 1;
            for (const auto& s : shapes)
                if (s.cols == cols) lcm = std::max(lcm, s.rows);  // rows of other shapes divide evenly or nearly
            const int64_t want_rows = (96ll << 20) / (cols / 4);
            const int64_t rows_total = (want_rows + lcm - 1) / lcm * lcm;
            const TernaryMatrix w = big_matrix(cols, rows_total);
            std::vector<float> y(static_cast<size_t>(rows_total * 512));
            const QuantizedActs q1 = acts(1, cols);
            for (const auto& s : shapes) {
                if (s.cols != cols) continue;
                const double bytes = static_cast<double>((s.rows + 15) / 16 * 16) * s.cols / 4;
                const int64_t calls = std::max<int64_t>(rows_total / s.rows, 8);
                for (int nt : {1, 2}) {
                    const double t = time_ternary(w, s.rows, q1, y, nt, calls, reps);
                    rows.push_back({std::string("gemv ") + model, std::string(s.name) + " " + std::to_string(s.rows) + "x" + std::to_string(s.cols), nt,
                                    bytes / t / 1e9, "GB/s", 100.0 * bytes / t / 1e9 / bw[nt], "% of bw", t * 1e3});
                }
            }
            if (!gemm) continue;
            int ni = 0;
            for (int64_t n : {128, 512}) {
                const QuantizedActs qn = acts(n, cols);
                for (const auto& s : shapes) {
                    if (s.cols != cols) continue;
                    for (int nt : {1, 2}) {
                        const int r = std::max(2, reps / 3);
                        const double t = time_ternary(w, s.rows, qn, y, nt, 1, r);
                        const double macs = static_cast<double>(s.rows) * s.cols * n;
                        gemm_s[ni][nt - 1] += t * s.per_layer;
                        rows.push_back({std::string("gemm ") + model + " n=" + std::to_string(n),
                                        std::string(s.name) + " " + std::to_string(s.rows) + "x" + std::to_string(s.cols), nt,
                                        macs / t / 1e9, "GMAC/s", 0, "", t * 1e3});
                    }
                }
                ++ni;
            }
        }
        if (!gemm) return;
        double macs_layer = 0;
        for (const auto& s : shapes) macs_layer += static_cast<double>(s.rows) * s.cols * s.per_layer;
        int ni = 0;
        for (int64_t n : {128, 512}) {
            for (int nt : {1, 2}) {
                const double t = gemm_s[ni][nt - 1];
                rows.push_back({std::string("gemm ") + model + " n=" + std::to_string(n), "all ternary projections, one layer", nt,
                                macs_layer * n / t / 1e9, "GMAC/s", n / (t * layers), "tok/s (x" + std::to_string(layers) + " layers)", t * 1e3});
            }
            ++ni;
        }
    }

    void f16_head(int64_t V, int64_t D) {
        std::vector<uint16_t> w(static_cast<size_t>(V * D));
        uint64_t s = 88172645463325252ull;
        for (auto& v : w) {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            v = f32_to_f16(static_cast<float>(static_cast<int64_t>(s % 2001) - 1000) * 1e-4f);
        }
        std::vector<float> x(static_cast<size_t>(D), 0.5f), y(static_cast<size_t>(V));
        const double bytes = static_cast<double>(V) * D * 2;
        for (int nt : {1, 2}) {
            std::vector<double> ts;
            for (int rep = 0; rep <= reps; ++rep) {
                const double t0 = now_s();
                pool.run(nt, [&](int part, int parts) {
                    const auto [b, e] = split(V, part, parts, 16);
                    f16_matmul(w.data(), D, x.data(), 1, y.data(), V, b, e, kind);
                });
                if (rep) ts.push_back(now_s() - t0);
            }
            const double t = median(ts);
            rows.push_back({"f16 head", "gemv " + std::to_string(V) + "x" + std::to_string(D), nt, bytes / t / 1e9, "GB/s",
                            100.0 * bytes / t / 1e9 / bw[nt], "% of bw", t * 1e3});
        }
    }

    void print(bool json) const {
        if (json) {
            std::printf("{\"kernel\": \"%s\", \"results\": [\n", kernel_name(kind));
            for (size_t i = 0; i < rows.size(); ++i) {
                const Row& r = rows[i];
                std::printf("  {\"section\": \"%s\", \"name\": \"%s\", \"threads\": %d, \"value\": %.3f, \"unit\": \"%s\", "
                            "\"extra\": %.3f, \"extra_unit\": \"%s\", \"ms\": %.4f}%s\n",
                            r.section.c_str(), r.name.c_str(), r.threads, r.value, r.unit.c_str(), r.extra, r.extra_unit.c_str(),
                            r.ms, i + 1 < rows.size() ? "," : "");
            }
            std::printf("]}\n");
            return;
        }
        std::string last;
        for (const Row& r : rows) {
            if (r.section != last) {
                std::printf("\n== %s\n", r.section.c_str());
                last = r.section;
            }
            std::printf("  %-42s %dT %9.2f %-7s %9.3f ms", r.name.c_str(), r.threads, r.value, r.unit.c_str(), r.ms);
            if (!r.extra_unit.empty()) std::printf("  %7.1f %s", r.extra, r.extra_unit.c_str());
            std::printf("\n");
        }
    }
};

}  // namespace

int main(int argc, char** argv) {
    Bench b;
    bool json = false;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--json") json = true;
        else if (a == "--reps" && i + 1 < argc) b.reps = std::max(1, std::atoi(argv[++i]));
        else if (a == "--kernel" && i + 1 < argc) {
            const std::string k = argv[++i];
            b.kind = k == "scalar" ? KernelKind::Scalar : k == "avx2" ? KernelKind::Avx2 : KernelKind::Avx512Vnni;
            if (!kernel_supported(b.kind)) {
                std::fprintf(stderr, "kernel %s not supported here\n", k.c_str());
                return 2;
            }
        } else {
            std::fprintf(stderr, "usage: %s [--json] [--kernel scalar|avx2|avx512] [--reps N]\n", argv[0]);
            return 2;
        }
    }
    const double t0 = now_s();
    if (!json) std::printf("bench_kernels: kernel %s, %u hw threads, reps %d (median)\n", kernel_name(b.kind),
                           std::thread::hardware_concurrency(), b.reps);
    b.bandwidth();
    const bool gemm = b.kind != KernelKind::Scalar;  // scalar prefill would take minutes
    b.ternary("1.7B", {{"attn q/k/v/o", 2048, 2048, 4}, {"ffn gate/up", 8192, 2048, 2}, {"ffn down", 2048, 8192, 1}}, 24, gemm);
    b.ternary("2B4T", {{"attn q/o", 2560, 2560, 2}, {"attn k/v", 640, 2560, 2}, {"ffn gate/up", 6912, 2560, 2}, {"ffn down", 2560, 6912, 1}}, 30, gemm);
    b.f16_head(32000, 2048);
    b.print(json);
    if (!json) std::printf("\ntotal %.1f s\n", now_s() - t0);
    return 0;
}

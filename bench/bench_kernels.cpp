// Kernel benchmark: ternary GEMV (decode) against measured memory bandwidth, ternary GEMM (prefill)
// in GMAC/s, and the LM heads (f16, q8, q4 alternating) at the 1.7B and 2B4T shapes; --small: the ternary
// matmuls of the `small` preset only (hidden 512, FFN 1536: the serving benchmark's model, whose prompts are what a
// request waits for at light load; bench/NOTES-serve.md).
//
// Usage: bench_kernels [--json] [--kernel scalar|avx2|avx512|neon|dotprod] [--reps N] [--heads-only | --small]
//
// Method. Weights are rotated through a set larger than L3 (kRotateBytes = 256 MiB of packed codes per column
// width), so every GEMV streams from DRAM, as decode does. Threads: one worker thread is spawned once
// and spins on a generation counter; each matmul is split in two row ranges at 16-row boundaries and
// ends in a barrier, like one model step, so the per-call sync cost is inside the timing (it is what
// the model pays) but thread creation is not. Every figure is the median of --reps sweeps after one
// warm-up sweep, reported twice: by wall clock, and by "busy" time (per call, the larger of the two
// threads' CPU times), because other processes share these cores (see Timing below). Percent of
// bandwidth compares like with like (wall with wall, busy with busy).
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

#include <time.h>
#include <vector>

// gcc 12 headers trip -Wuninitialized in the AVX-512 helpers used below.
#pragma GCC diagnostic ignored "-Wuninitialized"
#ifndef __clang__  // a gcc-only warning (clang warns about the unknown name instead)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
static inline void spin_pause() { _mm_pause(); }
#elif defined(__aarch64__)
static inline void spin_pause() { __asm__ __volatile__("yield"); }
#else
static inline void spin_pause() {}
#endif

#include "kernels/cpu_features.h"
#include "kernels/half.h"
#include "kernels/head_f16.h"
#include "kernels/head_q4.h"
#include "kernels/head_q8.h"
#include "kernels/ternary.h"
#include "membw.h"

using namespace bllama;
using Clock = std::chrono::steady_clock;

namespace {

double now_s() { return std::chrono::duration<double>(Clock::now().time_since_epoch()).count(); }

double thread_cpu_s() {
    timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + ts.tv_nsec * 1e-9;
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Two-thread fork/join: the caller runs part 0, one persistent worker runs part 1 (or the caller does,
// when the worker is not running in time).
class Pair {
public:
    Pair() : worker_([this] { loop(); }) {}
    ~Pair() {
        stop_.store(true);
        gen_.fetch_add(1);
        worker_.join();
    }
    // Returns the larger of the parts' thread CPU times: what the call would take on otherwise idle
    // cores (this machine is shared, so wall time also counts other people's processes).
    double run(int nthreads, const std::function<void(int, int)>& fn) {
        if (nthreads == 1) {
            const double c0 = thread_cpu_s();
            fn(0, 1);
            return thread_cpu_s() - c0;
        }
        job_ = &fn;
        done_.store(0, std::memory_order_relaxed);
        claim_.store(0, std::memory_order_release);
        gen_.fetch_add(1, std::memory_order_release);
        const double c0 = thread_cpu_s();
        fn(0, 2);
        // If the worker has not picked up its half yet (its core is busy with someone else's process),
        // run it here rather than wait a scheduler tick (4 ms) for it.
        for (int spins = 0; spins < 2000 && claim_.load(std::memory_order_acquire) == 0; ++spins) spin_pause();
        if (claim_.exchange(1, std::memory_order_acq_rel) == 0) {
            fn(1, 2);
            return thread_cpu_s() - c0;
        }
        const double mine = thread_cpu_s() - c0;
        for (int spins = 0; done_.load(std::memory_order_acquire) == 0;) {
            if (++spins < 20000) spin_pause();
            else std::this_thread::yield();
        }
        return std::max(mine, worker_cpu_);
    }

private:
    void loop() {
        uint64_t seen = 0;
        for (;;) {
            int spins = 0;
            while (gen_.load(std::memory_order_acquire) == seen) {
                // Spin briefly for low wake-up latency, then yield: the machine is shared.
                if (++spins < 200000) spin_pause();
                else std::this_thread::yield();
            }
            seen = gen_.load(std::memory_order_acquire);
            if (stop_.load()) return;
            if (claim_.exchange(1, std::memory_order_acq_rel) != 0) continue;  // the caller took it
            const double c0 = thread_cpu_s();
            (*job_)(1, 2);
            worker_cpu_ = thread_cpu_s() - c0;
            done_.store(1, std::memory_order_release);
        }
    }
    std::atomic<uint64_t> gen_{0};
    std::atomic<int> done_{0};
    std::atomic<int> claim_{1};  // 0 while part 1 of the current job is unclaimed
    std::atomic<bool> stop_{false};
    const std::function<void(int, int)>* job_ = nullptr;
    double worker_cpu_ = 0;  // published by the release store to done_
    std::thread worker_;
};

// Splits [0, n) in `parts` pieces aligned to `align`.
std::pair<int64_t, int64_t> split(int64_t n, int part, int parts, int64_t align) {
    const int64_t units = (n + align - 1) / align;
    const int64_t b = units * part / parts * align, e = units * (part + 1) / parts * align;
    return {std::min(b, n), std::min(e, n)};
}

// One measurement: median seconds per call by the wall clock and by "busy" time (per call, the larger
// of the threads' CPU times). On an idle machine the two agree; when other processes share the cores,
// busy time shows what the kernel itself costs and wall time what this run actually got.
struct Timing {
    double wall = 0, busy = 0;
};

// Packed weights cycled through per shape: 8x L3 (32 MiB here), so decode reads come from DRAM.
constexpr int64_t kRotateBytes = 256ll << 20;

struct Row {
    std::string section, name;
    int threads;
    double work;       // bytes or MACs per call
    std::string unit;  // "GB/s" or "GMAC/s"
    Timing t;
    std::string extra_unit;  // "% of bw" or "tok/s ..." ("" when none)
    double extra_wall = 0, extra_busy = 0;
    double wall_rate() const { return work / t.wall / 1e9; }
    double busy_rate() const { return work / t.busy / 1e9; }
};

struct Bench {
    Pair pool;
    int reps = 7;
    KernelKind kind = best_kernel();
    std::vector<Row> rows;
    Timing bw_rate[3];  // GB/s (stored in the Timing fields) for 1 and 2 threads

    // Runs `sweep` (which performs `calls` parallel calls and returns their summed busy time) reps+1
    // times, drops the warm-up, returns medians per call.
    template <class F>
    Timing measure(int reps_, int64_t calls, F&& sweep) {
        std::vector<double> wall, busy;
        for (int rep = 0; rep <= reps_; ++rep) {
            const double t0 = now_s();
            const double b = sweep();
            if (rep) {
                wall.push_back((now_s() - t0) / calls);
                busy.push_back(b / calls);
            }
        }
        return {median(wall), median(busy)};
    }

    void add_bw_row(Row r, int nt) {
        r.extra_unit = "% of bw";
        r.extra_wall = 100.0 * r.wall_rate() / bw_rate[nt].wall;
        r.extra_busy = 100.0 * r.busy_rate() / bw_rate[nt].busy;
        rows.push_back(r);
    }

    void bandwidth() {
        const size_t n = size_t(1) << 30;
        std::unique_ptr<uint8_t[], void (*)(void*)> buf(static_cast<uint8_t*>(std::aligned_alloc(64, n)), std::free);
        std::memset(buf.get(), 1, n);
        const bool z = cpu_features().avx512_vnni;
        std::atomic<uint64_t> sink{0};
        for (int nt : {1, 2}) {
            const Timing t = measure(std::max(3, reps / 2), 1, [&] {
                return pool.run(nt, [&](int part, int parts) {
                    const auto [b, e] = split(static_cast<int64_t>(n), part, parts, 4096);
                    sink += read_stream(buf.get() + b, size_t(e - b));
                });
            });
            Row r{"bandwidth", z ? "read 1 GiB, AVX-512 loads" : cpu_features().avx2 ? "read 1 GiB, AVX2 loads" : "read 1 GiB, widest loads", nt, double(n), "GB/s", t, "", 0, 0};
            bw_rate[nt] = {r.wall_rate(), r.busy_rate()};
            rows.push_back(r);
        }
    }

    // `copies` stacked [R, cols] weights in one matrix (>= kRotateBytes packed), from random TQ2_0 bytes.
    static TernaryMatrix big_matrix(int64_t cols, int64_t rows_total) {
        const int64_t nblk = rows_total * cols / 256;
        std::vector<uint8_t> blocks(static_cast<size_t>(nblk * 66));
        uint64_t s = 0x9e3779b97f4a7c15ull;
        const uint16_t d = f32_to_f16(0.02f);
        for (int64_t i = 0; i < nblk; ++i) {
            uint8_t* b = &blocks[static_cast<size_t>(i * 66)];
            for (int k = 0; k < 64; k += 8) {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                uint64_t v = s;
                v &= ~(((v & (v >> 1)) & 0x5555555555555555ull) << 1);  // field 3 -> 1: ternary codes only
                std::memcpy(b + k, &v, 8);
            }
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

    // `calls` matmuls of [R, cols] over rotating row ranges of w (so decode reads from DRAM).
    Timing time_ternary(const TernaryMatrix& w, int64_t R, const QuantizedActs& qa, std::vector<float>& y, int nt,
                        int64_t calls, int reps_) {
        const int64_t copies = w.rows() / R;
        int64_t next = 0;
        return measure(reps_, calls, [&] {
            double busy = 0;
            for (int64_t c = 0; c < calls; ++c) {
                const int64_t base = (next++ % copies) * R;
                busy += pool.run(nt, [&](int part, int parts) {
                    const auto [b, e] = split(R, part, parts, kTernaryRowGranule);
                    ternary_matmul(w, qa, y.data(), w.rows(), base + b, base + e, kind);
                });
            }
            return busy;
        });
    }

    struct Shape { const char* name; int64_t rows, cols; int per_layer; };

    void ternary(const char* model, const std::vector<Shape>& shapes, int layers, bool gemm) {
        Timing layer[2][3];  // [n index][threads] seconds per layer, summed over shapes
        std::vector<int64_t> col_set;
        for (const auto& s : shapes)
            if (std::find(col_set.begin(), col_set.end(), s.cols) == col_set.end()) col_set.push_back(s.cols);
        for (int64_t cols : col_set) {
            int64_t unit = 1;
            for (const auto& s : shapes)
                if (s.cols == cols) unit = std::max(unit, s.rows);
            const int64_t want_rows = (kRotateBytes) / (cols / 4);
            const int64_t rows_total = (want_rows + unit - 1) / unit * unit;
            const TernaryMatrix w = big_matrix(cols, rows_total);
            std::vector<float> y(static_cast<size_t>(rows_total * 512));
            const QuantizedActs q1 = acts(1, cols);
            for (const auto& s : shapes) {
                if (s.cols != cols) continue;
                const double bytes = static_cast<double>((s.rows + 15) / 16 * 16) * s.cols / 4;
                // Consecutive sweeps continue the rotation, so capping the calls per sweep keeps every read
                // cold while bounding the run time when the worker thread is starved by other jobs.
                const int64_t calls = std::min<int64_t>(std::max<int64_t>(rows_total / s.rows, 8), 48);
                for (int nt : {1, 2})
                    add_bw_row({std::string("gemv ") + model, std::string(s.name) + " " + std::to_string(s.rows) + "x" + std::to_string(s.cols),
                                nt, bytes, "GB/s", time_ternary(w, s.rows, q1, y, nt, calls, reps), "", 0, 0}, nt);
            }
            if (!gemm) continue;
            int ni = 0;
            for (int64_t n : {128, 512}) {
                const QuantizedActs qn = acts(n, cols);
                for (const auto& s : shapes) {
                    if (s.cols != cols) continue;
                    for (int nt : {1, 2}) {
                        const Timing t = time_ternary(w, s.rows, qn, y, nt, 1, std::max(2, reps / 3));
                        layer[ni][nt].wall += t.wall * s.per_layer;
                        layer[ni][nt].busy += t.busy * s.per_layer;
                        rows.push_back({std::string("gemm ") + model + " n=" + std::to_string(n),
                                        std::string(s.name) + " " + std::to_string(s.rows) + "x" + std::to_string(s.cols), nt,
                                        static_cast<double>(s.rows) * s.cols * n, "GMAC/s", t, "", 0, 0});
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
                const Timing t = layer[ni][nt];
                rows.push_back({std::string("gemm ") + model + " n=" + std::to_string(n), "all ternary projections, 1 layer", nt,
                                macs_layer * n, "GMAC/s", t, "tok/s (" + std::to_string(layers) + " layers)",
                                n / (t.wall * layers), n / (t.busy * layers)});
            }
            ++ni;
        }
    }

    // The three LM head formats at one shape on the same values (head="f16" / "q8" / "q4"), in GB/s of the bytes
    // each reads per token. The formats alternate call by call within every rep, so a change of load on this
    // shared machine hits all three alike and their ratios are same-run ratios.
    void heads(int64_t V, int64_t D) {
        std::vector<float> w(static_cast<size_t>(V * D));
        uint64_t s = 88172645463325252ull;
        for (auto& v : w) {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            v = static_cast<float>(static_cast<int64_t>(s % 2001) - 1000) * 1e-4f;
        }
        std::vector<uint16_t> wh(w.size());
        for (size_t i = 0; i < w.size(); ++i) wh[i] = f32_to_f16(w[i]);
        const Q8Head q8 = Q8Head::from_f32(w.data(), V, D);
        const Q4Head q4 = Q4Head::from_f32(w.data(), V, D);
        std::vector<float>().swap(w);
        std::vector<float> x(static_cast<size_t>(D)), y(static_cast<size_t>(V));
        for (int64_t i = 0; i < D; ++i) x[static_cast<size_t>(i)] = static_cast<float>(i % 17) - 8.0f;
        QuantizedActs qa;
        quantize_acts(x.data(), 1, D, qa, kind);
        const std::string shape = "gemv " + std::to_string(V) + "x" + std::to_string(D);
        const char* names[3] = {"f16 head", "q8 head", "q4 head"};
        const double bytes[3] = {static_cast<double>(V) * D * 2, static_cast<double>(q8.bytes()),
                                 static_cast<double>(q4.bytes())};
        auto call = [&](int h, int nt) {
            return pool.run(nt, [&](int part, int parts) {
                const auto [b, e] = split(V, part, parts, 64);
                if (h == 0) f16_matmul(wh.data(), D, x.data(), 1, y.data(), V, b, e, kind);
                else if (h == 1) q8_head_matmul(q8, qa, y.data(), V, b, e, kind);
                else q4_head_matmul(q4, qa, y.data(), V, b, e, kind);
            });
        };
        for (int nt : {1, 2}) {
            std::vector<double> wall[3], busy[3];
            for (int rep = 0; rep <= reps; ++rep)
                for (int h = 0; h < 3; ++h) {
                    const double t0 = now_s();
                    const double b = call(h, nt);
                    if (rep) {  // rep 0 warms up
                        wall[h].push_back(now_s() - t0);
                        busy[h].push_back(b);
                    }
                }
            for (int h = 0; h < 3; ++h)
                add_bw_row({names[h], shape, nt, bytes[h], "GB/s", {median(wall[h]), median(busy[h])}, "", 0, 0}, nt);
        }
    }

    void print(bool json) const {
        if (json) {
            std::printf("{\"kernel\": \"%s\", \"results\": [\n", kernel_name(kind));
            for (size_t i = 0; i < rows.size(); ++i) {
                const Row& r = rows[i];
                std::printf("  {\"section\": \"%s\", \"name\": \"%s\", \"threads\": %d, \"unit\": \"%s\", \"wall\": %.3f, "
                            "\"busy\": %.3f, \"ms_wall\": %.4f, \"ms_busy\": %.4f, \"extra_unit\": \"%s\", \"extra_wall\": %.2f, "
                            "\"extra_busy\": %.2f}%s\n",
                            r.section.c_str(), r.name.c_str(), r.threads, r.unit.c_str(), r.wall_rate(), r.busy_rate(),
                            r.t.wall * 1e3, r.t.busy * 1e3, r.extra_unit.c_str(), r.extra_wall, r.extra_busy,
                            i + 1 < rows.size() ? "," : "");
            }
            std::printf("]}\n");
            return;
        }
        std::printf("\n%-40s %3s %10s %10s %-7s %9s", "", "thr", "wall", "busy", "unit", "ms(wall)");
        std::printf("  %8s %8s\n", "wall", "busy");
        std::string last;
        for (const Row& r : rows) {
            if (r.section != last) {
                std::printf("== %s\n", r.section.c_str());
                last = r.section;
            }
            std::printf("  %-38s %2dT %10.2f %10.2f %-7s %9.3f", r.name.c_str(), r.threads, r.wall_rate(), r.busy_rate(),
                        r.unit.c_str(), r.t.wall * 1e3);
            if (!r.extra_unit.empty()) std::printf("  %8.1f %8.1f %s", r.extra_wall, r.extra_busy, r.extra_unit.c_str());
            std::printf("\n");
        }
    }
};

}  // namespace

int main(int argc, char** argv) {
    Bench b;
    bool json = false, heads_only = false, small = false;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--json") json = true;
        else if (a == "--heads-only") heads_only = true;
        else if (a == "--small") small = true;
        else if (a == "--reps" && i + 1 < argc) b.reps = std::max(1, std::atoi(argv[++i]));
        else if (a == "--kernel" && i + 1 < argc) {
            const std::string k = argv[++i];
            if (!kernel_from_name(k.c_str(), &b.kind) || !kernel_supported(b.kind)) {
                std::fprintf(stderr, "kernel %s not supported here\n", k.c_str());
                return 2;
            }
        } else {
            std::fprintf(stderr, "usage: %s [--json] [--kernel scalar|avx2|avx512|neon|dotprod] [--reps N] [--heads-only | --small]\n", argv[0]);
            return 2;
        }
    }
    const double t0 = now_s();
    double load1 = -1;
    if (FILE* f = std::fopen("/proc/loadavg", "r")) {
        if (std::fscanf(f, "%lf", &load1) != 1) load1 = -1;
        std::fclose(f);
    }
    if (!json)
        std::printf("bench_kernels: kernel %s, %u hw threads, reps %d (median), load average at start %.2f\n",
                    kernel_name(b.kind), std::thread::hardware_concurrency(), b.reps, load1);
    b.bandwidth();
    const bool gemm = b.kind != KernelKind::Scalar;  // scalar prefill would take minutes
    if (small) {
        b.ternary("small", {{"attn q/k/v/o", 512, 512, 4}, {"ffn gate/up", 1536, 512, 2}, {"ffn down", 512, 1536, 1}}, 8, gemm);
        b.print(json);
        return 0;
    }
    if (!heads_only) b.ternary("1.7B", {{"attn q/k/v/o", 2048, 2048, 4}, {"ffn gate/up", 8192, 2048, 2}, {"ffn down", 2048, 8192, 1}}, 24, gemm);
    if (!heads_only) b.ternary("2B4T", {{"attn q/o", 2560, 2560, 2}, {"attn k/v", 640, 2560, 2}, {"ffn gate/up", 6912, 2560, 2}, {"ffn down", 2560, 6912, 1}}, 30, gemm);
    b.heads(32000, 2048);   // the 1.7B preset's head (tests/support/random_gguf.h)
    b.heads(128256, 2560);  // 2B4T's
    b.print(json);
    if (!json) std::printf("\ntotal %.1f s\n", now_s() - t0);
    return 0;
}

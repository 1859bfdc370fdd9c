// Load-time cost of the 4-bit head's quantization (csrc/kernels/head_q4.h): quantizes a random f16 head of the
// given shape (default 2B4T's 128256 x 2560) with the same split over the pool that Model::load uses, for each
// scale rule (absmax, searched, searched with column importance), the rules alternating round by round; prints
// the median wall and process CPU seconds of each and the mean squared reconstruction error it reached.
//
//   bench_head_quant [rows] [cols] [threads] [rounds]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <random>
#include <string>
#include <vector>

#include "engine/threadpool.h"
#include "kernels/half.h"
#include "kernels/head_q4.h"

using namespace bllama;

namespace {

double cpu_seconds() { return static_cast<double>(std::clock()) / CLOCKS_PER_SEC; }

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

void quantize(Q4Head& h, const uint16_t* w, ThreadPool& pool, Q4ScaleRule rule, const float* importance) {
    const int nc = pool.size() * 4;  // as Model::load_weights
    pool.run(nc, [&](int i, int) {
        int64_t b, e;
        split_range(h.rows(), i, nc, 64, b, e);
        if (b < e) h.quantize_rows_f16(w, b, e, importance, rule);
    });
}

// Mean over the matrix of importance-weighted squared error (importance null: uniform), on a row sample.
double mean_sq_error(const Q4Head& h, const uint16_t* w, const float* importance) {
    double err = 0.0;
    int64_t n = 0;
    for (int64_t r = 0; r < h.rows(); r += 97, ++n)
        for (int64_t k = 0; k < h.cols(); ++k) {
            const double d = f16_to_f32(w[r * h.cols() + k]) - double(h.value(r, k)) * h.scale(r, k);
            err += (importance ? importance[k] : 1.0) * d * d;
        }
    return err / double(n * h.cols());
}

}  // namespace

int main(int argc, char** argv) {
    const int64_t rows = argc > 1 ? std::atoll(argv[1]) : 128256;
    const int64_t cols = argc > 2 ? std::atoll(argv[2]) : 2560;
    const int threads = argc > 3 ? std::atoi(argv[3]) : 2;
    const int rounds = argc > 4 ? std::atoi(argv[4]) : 3;

    std::mt19937 rng(5);
    std::normal_distribution<float> nd(0.0f, 0.02f);
    std::vector<uint16_t> w(static_cast<size_t>(rows * cols));
    for (auto& v : w) v = f32_to_f16(nd(rng));
    // A final-norm-like gain per column: mostly near 1, a few columns several times larger.
    std::lognormal_distribution<float> gain(0.0f, 0.5f);
    std::vector<float> importance(static_cast<size_t>(cols));
    for (auto& v : importance) {
        const float g = gain(rng);
        v = g * g;
    }

    ThreadPool pool(threads);
    Q4Head h(rows, cols);
    struct Rule {
        const char* name;
        Q4ScaleRule rule;
        const float* importance;
        std::vector<double> wall, cpu;
        double err = 0.0;
    };
    std::vector<Rule> rules = {{"absmax", Q4ScaleRule::AbsMax, nullptr, {}, {}, 0.0},
                               {"search", Q4ScaleRule::Search, nullptr, {}, {}, 0.0},
                               {"search+importance", Q4ScaleRule::Search, importance.data(), {}, {}, 0.0}};
    for (int r = 0; r < rounds; ++r)
        for (Rule& x : rules) {
            const double c0 = cpu_seconds();
            const auto t0 = std::chrono::steady_clock::now();
            quantize(h, w.data(), pool, x.rule, x.importance);
            x.wall.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
            x.cpu.push_back(cpu_seconds() - c0);
            if (r == 0) x.err = mean_sq_error(h, w.data(), importance.data());
        }
    std::printf("head %lld x %lld, %d threads, %d rounds (medians)\n", (long long)rows, (long long)cols, threads, rounds);
    std::printf("%-18s %9s %9s %22s\n", "rule", "wall s", "cpu s", "importance-weighted mse");
    for (const Rule& x : rules)
        std::printf("%-18s %9.3f %9.3f %22.4e\n", x.name, median(x.wall), median(x.cpu), x.err);
    return 0;
}

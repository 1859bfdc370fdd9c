// min / median time of ternary_matmul (AVX2 kind) for [rows x cols] x n tokens, one thread, warm weights. Build against a
// build folder B: g++ -O2 -std=c++17 -I csrc -I B -o gemm_min gemm_min.cpp B/libbllama_engine.a -lpthread
// Run: gemm_min ROWS COLS N ITERS
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>
#include "kernels/ternary.h"
#include "kernels/dispatch.h"
#include "kernels/half.h"
using namespace bllama;
int main(int argc, char** argv) {
    const int64_t rows = std::atoll(argv[1]), cols = std::atoll(argv[2]), n = std::atoll(argv[3]);
    const int iters = std::atoi(argv[4]);
    const int64_t nblk = rows * cols / 256;
    std::vector<uint8_t> blocks(nblk * 66);
    std::mt19937_64 g(1);
    for (int64_t i = 0; i < nblk; ++i) {
        uint8_t* b = &blocks[i * 66];
        for (int k = 0; k < 64; k += 8) { uint64_t v = g(); v &= ~(((v & (v >> 1)) & 0x5555555555555555ull) << 1); std::memcpy(b + k, &v, 8); }
        uint16_t d = f32_to_f16(0.02f); b[64] = d & 0xff; b[65] = d >> 8;
    }
    TernaryMatrix w = TernaryMatrix::from_tq2_0(blocks.data(), rows, cols);
    std::vector<float> x(n * cols); std::normal_distribution<float> nd; for (auto& v : x) v = nd(g);
    QuantizedActs qa; quantize_acts(x.data(), n, cols, qa);
    std::vector<float> y(n * rows);
    std::vector<double> ts;
    for (int it = 0; it < iters; ++it) {
        auto t0 = std::chrono::steady_clock::now();
        ternary_matmul(w, qa, y.data(), rows, 0, rows, KernelKind::Avx2);
        ts.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(ts.begin(), ts.end());
    const double mac = double(rows) * cols * n;
    std::printf("%lldx%lld n=%lld: min %.1f GMAC/s, median %.1f\n", (long long)rows, (long long)cols, (long long)n, mac / ts[0] / 1e9, mac / ts[ts.size() / 2] / 1e9);
}

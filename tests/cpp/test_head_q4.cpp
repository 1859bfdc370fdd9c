// 4-bit head (csrc/kernels/head_q4.h): every SIMD kind equals the scalar reference bit for bit (split row
// ranges, 1-9 tokens, block counts that do and do not fill a group of eight), the reference equals the exact
// integer formula evaluated in double within its fp32 rounding bound, and the per-block packing round-trips
// (values in [-8, 7], the largest magnitude maps to -8, zero blocks stay zero, bad shapes and NaN refused).
// Plain C++, nonzero exit on failure.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/half.h"
#include "kernels/head_q4.h"
#include "kernels/ref.h"
#include "kernels/ternary.h"

#include "check_msg.h"
#include "head_kinds.h"

using namespace bllama;

template <class F>
static bool throws(F f) {
    try {
        f();
    } catch (const std::invalid_argument&) {
        return true;
    }
    return false;
}

static void test_random_shapes() {
    std::mt19937 rng(11);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    const int64_t rows_list[] = {1, 7, 16, 17, 33, 131};
    const int64_t cols_list[] = {32, 64, 224, 256, 288, 2048, 2560};
    int shape = 0;
    for (int64_t rows : rows_list)
        for (int64_t cols : cols_list) {
            if (rows * cols > 300000) continue;
            std::vector<float> w(static_cast<size_t>(rows * cols));
            for (float& v : w) v = nd(rng) * 0.05f;
            if (rows > 2) std::fill(w.begin() + cols, w.begin() + 2 * cols, 0.0f);  // a zero row
            w[static_cast<size_t>(cols / 2)] = 0.9f;                               // an outlier in row 0
            const Q4Head h = Q4Head::from_f32(w.data(), rows, cols);
            const int64_t n = 1 + shape++ % 9;
            std::vector<float> xs(static_cast<size_t>(n * cols));
            for (float& v : xs) v = nd(rng) * 3.0f;
            QuantizedActs qa;
            quantize_acts(xs.data(), n, cols, qa, KernelKind::Scalar);
            const std::string what = std::to_string(rows) + "x" + std::to_string(cols) + ", " + std::to_string(n) + " tokens";
            check_kinds_equal(h, qa, what, q4_head_matmul_ref, q4_head_matmul);

            // The reference against the same integers in double: the eight lanes' fma chains and the final sum
            // and division round at most nb + 4 times, each by 2^-24 of a partial sum bounded by the sum of |terms|.
            std::vector<float> y(static_cast<size_t>(rows * n));
            q4_head_matmul(h, qa, y.data(), rows, 0, rows, KernelKind::Scalar);
            for (int64_t t = 0; t < n; ++t)
                for (int64_t r = 0; r < rows; ++r) {
                    double exact = 0.0, mag = 0.0;
                    for (int64_t k = 0; k < cols; ++k) {
                        const double term = h.value(r, k) * double(qa.q[static_cast<size_t>(t * cols + k)]) * h.scale(r, k);
                        exact += term;
                        mag += std::fabs(term);
                    }
                    const double a = qa.act_scale[static_cast<size_t>(t)];
                    const double got = y[static_cast<size_t>(t * rows + r)];
                    const double lim = (h.blocks() + 5) * std::ldexp(1.0, -24) * mag / a + 1e-30;
                    CHECK(std::fabs(got - exact / a) <= lim, "%s: r %lld t %lld got %.9g exact %.9g", what.c_str(),
                          (long long)r, (long long)t, got, exact / a);
                }
        }
}

static void test_packing() {
    const int64_t cols = 64;
    std::vector<float> w(2 * cols, 0.0f);
    for (int64_t k = 0; k < 32; ++k) w[static_cast<size_t>(k)] = 0.01f * static_cast<float>(k - 16);
    w[5] = 1.6f;  // the block's largest magnitude: maps to -8 with a negative scale
    // block 1 of row 0 stays zero; row 1: one negative extreme
    w[static_cast<size_t>(cols + 40)] = -0.8f;
    w[static_cast<size_t>(cols + 41)] = 0.1f;
    const Q4Head h = Q4Head::from_f32(w.data(), 2, cols);
    CHECK(h.tiles() == 1 && h.bytes() == kQ4Tile * (cols / 2 + 2 * 2), "bytes %zu", h.bytes());  // rows padded to a tile
    CHECK(h.value(0, 5) == -8 && h.scale(0, 5) == f16_to_f32(f32_to_f16(1.6f / -8.0f)), "outlier %d %g", h.value(0, 5),
          h.scale(0, 5));
    for (int64_t k = 0; k < cols; ++k) {
        CHECK(h.value(0, k) >= -8 && h.value(0, k) <= 7, "range");
        if (k >= 32) CHECK(h.value(0, k) == 0 && h.scale(0, k) == 0.0f, "zero block col %lld", (long long)k);
        // the stored value times the block scale is within half a step of the weight
        const float d = h.scale(0, k);
        if (k < 32) CHECK(std::fabs(h.value(0, k) * d - w[static_cast<size_t>(k)]) <= 0.5f * std::fabs(d) * 1.0001f, "step");
    }
    CHECK(h.value(1, 40) == -8 && h.value(1, 41) == 1 && h.value(1, 0) == 0, "row 1: %d %d", h.value(1, 40),
          h.value(1, 41));
    CHECK(throws([] { Q4Head(1, 48); }), "cols not a multiple of 32 accepted");
    CHECK(throws([] { Q4Head(1, 0); }), "cols 0 accepted");
    std::vector<float> bad(32, 0.0f);
    bad[3] = NAN;
    CHECK(throws([&] { Q4Head::from_f32(bad.data(), 1, 32); }), "NaN accepted");
    bad[3] = 1e6f;
    CHECK(throws([&] { Q4Head::from_f32(bad.data(), 1, 32); }), "scale overflow accepted");
    QuantizedActs qa;
    std::vector<float> x(32, 1.0f);
    quantize_acts(x.data(), 1, 32, qa, KernelKind::Scalar);
    std::vector<float> y(2);
    CHECK(throws([&] { q4_head_matmul(h, qa, y.data(), 2, 0, 2); }), "cols mismatch accepted");
}

int main() {
    test_packing();
    test_random_shapes();
    std::printf("%d checks, %d failures\n", g_checks, g_failures);
    return g_failures ? 1 : 0;
}

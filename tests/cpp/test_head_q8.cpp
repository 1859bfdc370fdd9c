// Int8 head (csrc/kernels/head_q8.h): every SIMD kind equals the scalar reference bit for bit, the
// scalar reference equals a naive double formula within its rounding bound and the unquantized product
// within the proven quantization bound, and row quantization handles zero rows, ties and bad input.
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
#include "kernels/head_q8.h"
#include "kernels/ref.h"
#include "kernels/ternary.h"

#include "check_msg.h"
#include "head_kinds.h"

using namespace bllama;

static const auto& kKinds = kAllKernelKinds;

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
    std::mt19937 rng(7);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    const int64_t rows_list[] = {1, 7, 8, 9, 17, 64, 131};
    const int64_t cols_list[] = {256, 2048, 2560, 64, 100, 17, 320, 1000, 1};
    const int64_t tok_list[] = {1, 2, 3, 4, 5, 7, 9};
    int shape = 0;
    for (int64_t rows : rows_list)
        for (int64_t cols : cols_list) {
            if (rows * cols > 400000) continue;
            std::vector<float> w(static_cast<size_t>(rows * cols));
            for (float& v : w) v = nd(rng) * 0.05f;
            if (rows > 2) std::fill(w.begin() + cols, w.begin() + 2 * cols, 0.0f);  // one zero row
            const Q8Head h = Q8Head::from_f32(w.data(), rows, cols);
            const int64_t n = tok_list[shape++ % 7];
            std::vector<float> xs(static_cast<size_t>(n * cols));
            for (float& v : xs) v = nd(rng) * 3.0f;
            QuantizedActs qa;
            quantize_acts(xs.data(), n, cols, qa, KernelKind::Scalar);
            const std::string what = std::to_string(rows) + "x" + std::to_string(cols) + ", " + std::to_string(n) + " tokens";
            check_kinds_equal(h, qa, what, q8_head_matmul_ref, q8_head_matmul);

            // Scalar vs a naive double formula. acc is an exact integer; y = fl(fl(acc) * fl(d / a)): three
            // roundings, so |y - exact| <= 3 * 2^-24 * |exact| (+ a little for the products of (1+e)).
            std::vector<float> y(static_cast<size_t>(rows * n));
            q8_head_matmul(h, qa, y.data(), rows, 0, rows, KernelKind::Scalar);
            double worst_q = 0.0;
            for (int64_t t = 0; t < n; ++t)
                for (int64_t r = 0; r < rows; ++r) {
                    double acc = 0.0, bound_q = 0.0, exact_f = 0.0;
                    const double a = qa.act_scale[static_cast<size_t>(t)], d = h.scale(r);
                    for (int64_t k = 0; k < cols; ++k) {
                        const double qw = h.row(r)[k], qx = qa.q[static_cast<size_t>(t * cols + k)];
                        acc += qw * qx;
                        const double wk = w[static_cast<size_t>(r * cols + k)], xk = xs[static_cast<size_t>(t * cols + k)];
                        exact_f += wk * xk;
                        // |w x - (d qw)(qx / a)| <= |w| |x - qx/a| + |qx/a| |w - d qw| <= |w| / (2a) + |qx/a| d / 2
                        bound_q += std::fabs(wk) * (0.5 / a) + std::fabs(qx / a) * d * 0.5;
                    }
                    const double ref = acc * (d / a);
                    const double got = y[static_cast<size_t>(t * rows + r)];
                    CHECK(std::fabs(got - ref) <= 4.0 * std::ldexp(1.0, -24) * std::fabs(ref), "%s: r %lld t %lld got %.9g ref %.9g",
                          what.c_str(), (long long)r, (long long)t, got, ref);
                    // and against the unquantized product (the bound also covers the fp32 rounding of a and d)
                    const double err = std::fabs(got - exact_f), lim = bound_q * 1.001 + 1e-6 * std::fabs(exact_f) + 1e-12;
                    CHECK(err <= lim, "%s: quantization error %.3g > bound %.3g", what.c_str(), err, lim);
                    worst_q = std::max(worst_q, bound_q > 0 ? err / bound_q : 0.0);
                }
        }
}

// The int32 range: cols at the maximum with every product at its extreme, both signs (the VNNI path's
// biased sum reaches 255 * 127 * 65536, just under 2^31).
static void test_extremes() {
    const int64_t cols = kQ8HeadMaxCols, rows = 9, n = 3;
    std::vector<float> w(static_cast<size_t>(rows * cols));
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t k = 0; k < cols; ++k) w[static_cast<size_t>(r * cols + k)] = (r % 2 ? -1.0f : 1.0f);
    const Q8Head h = Q8Head::from_f32(w.data(), rows, cols);
    QuantizedActs qa;
    qa.n_tokens = n;
    qa.cols = cols;
    qa.act_scale = {1.0f, 2.0f, 0.5f};
    qa.q.assign(static_cast<size_t>(n * cols), 0);
    for (int64_t k = 0; k < cols; ++k) {
        qa.q[static_cast<size_t>(k)] = 127;
        qa.q[static_cast<size_t>(cols + k)] = -128;
        qa.q[static_cast<size_t>(2 * cols + k)] = static_cast<int8_t>(k % 2 ? -128 : 127);
    }
    check_kinds_equal(h, qa, "extremes", q8_head_matmul_ref, q8_head_matmul);
    std::vector<float> y(static_cast<size_t>(rows * n));
    for (KernelKind k : kKinds) {
        if (!kernel_supported(k)) continue;
        q8_head_matmul(h, qa, y.data(), rows, 0, rows, k);
        CHECK(y[0] == static_cast<float>(127LL * 127 * cols) * (h.scale(0) / 1.0f), "%s: +127*+127 sum", kernel_name(k));
        CHECK(y[static_cast<size_t>(rows + 1)] == static_cast<float>(127LL * 128 * cols) * (h.scale(1) / 2.0f),
              "%s: -127*-128 sum", kernel_name(k));
    }
}

static void test_row_quantization() {
    // d = 127 / 127 = 1 exactly, so w / d are the values themselves: halves round to even.
    const float row[] = {127.0f, 0.5f, 1.5f, 2.5f, -0.5f, -1.5f, -2.5f, 3.5f, 126.5f, -127.0f};
    const int8_t want[] = {127, 0, 2, 2, 0, -2, -2, 4, 126, -127};
    const int64_t cols = 10;
    std::vector<float> w(2 * cols, 0.0f);  // row 0: zeros, row 1: the ties
    std::copy(row, row + cols, w.begin() + cols);
    std::vector<uint16_t> w16(w.size());
    for (size_t i = 0; i < w.size(); ++i) w16[i] = f32_to_f16(w[i]);  // all exact in f16
    for (const Q8Head& h : {Q8Head::from_f32(w.data(), 2, cols), Q8Head::from_f16(w16.data(), 2, cols)}) {
        CHECK(h.scale(0) == 0.0f && h.row_sum(0) == 0, "zero row scale %g sum %d", h.scale(0), h.row_sum(0));
        for (int64_t k = 0; k < cols; ++k) CHECK(h.row(0)[k] == 0, "zero row q[%lld] = %d", (long long)k, h.row(0)[k]);
        CHECK(h.scale(1) == 1.0f, "scale %g", h.scale(1));
        int32_t s = 0;
        for (int64_t k = 0; k < cols; ++k) {
            CHECK(h.row(1)[k] == want[k], "tie q[%lld] = %d, want %d", (long long)k, h.row(1)[k], want[k]);
            s += want[k];
        }
        CHECK(h.row_sum(1) == s, "row sum %d want %d", h.row_sum(1), s);
        // A zero row gives exactly 0 logits on every kind, whatever the activations.
        QuantizedActs qa;
        std::vector<float> xs(static_cast<size_t>(cols), 0.25f);
        quantize_acts(xs.data(), 1, cols, qa, KernelKind::Scalar);
        for (KernelKind k : kKinds) {
            if (!kernel_supported(k)) continue;
            float y[2] = {1.0f, 0.0f};
            q8_head_matmul(h, qa, y, 2, 0, 2, k);
            CHECK(y[0] == 0.0f, "%s: zero row gives %g", kernel_name(k), y[0]);
        }
    }
    // Random rows: |q| <= 127 with 127 reached, |w - d q| <= d / 2 (one rounding of w / d aside).
    std::mt19937 rng(3);
    std::uniform_real_distribution<float> ud(-2.0f, 2.0f);
    const int64_t rows = 50, c2 = 300;
    std::vector<float> wr(static_cast<size_t>(rows * c2));
    for (float& v : wr) v = ud(rng) * (1 + (&v - wr.data()) / c2);
    const Q8Head h = Q8Head::from_f32(wr.data(), rows, c2);
    for (int64_t r = 0; r < rows; ++r) {
        int maxq = 0;
        for (int64_t k = 0; k < c2; ++k) {
            const int q = h.row(r)[k];
            maxq = std::max(maxq, std::abs(q));
            const double err = std::fabs(wr[static_cast<size_t>(r * c2 + k)] - static_cast<double>(h.scale(r)) * q);
            CHECK(err <= h.scale(r) * (0.5 + 1e-5), "row %lld col %lld error %g > d/2 = %g", (long long)r, (long long)k, err, h.scale(r) * 0.5);
        }
        CHECK(maxq == 127, "row %lld max |q| %d", (long long)r, maxq);
    }
    // Bad input.
    CHECK(throws([] { Q8Head(4, 0); }), "cols 0 accepted");
    CHECK(throws([] { Q8Head(4, kQ8HeadMaxCols + 1); }), "cols over the int32 limit accepted");
    const float bad[] = {1.0f, NAN};
    CHECK(throws([&] { Q8Head::from_f32(bad, 1, 2); }), "NaN weight accepted");
    const float inf[] = {INFINITY, 1.0f};
    CHECK(throws([&] { Q8Head::from_f32(inf, 1, 2); }), "inf weight accepted");
    QuantizedActs qa;
    std::vector<float> xs(301, 1.0f);
    quantize_acts(xs.data(), 1, 301, qa, KernelKind::Scalar);
    std::vector<float> y(static_cast<size_t>(rows));
    CHECK(throws([&] { q8_head_matmul(h, qa, y.data(), rows, 0, rows); }), "cols mismatch accepted");
    quantize_acts(xs.data(), 1, c2, qa, KernelKind::Scalar);
    CHECK(throws([&] { q8_head_matmul(h, qa, y.data(), rows, 0, rows + 1); }), "row range past the end accepted");
    CHECK(throws([&] { q8_head_matmul(h, qa, y.data(), rows, 5, 4); }), "reversed row range accepted");
}

int main() {
    for (KernelKind k : kKinds) std::printf("kernel %s: %s\n", kernel_name(k), kernel_supported(k) ? "tested" : "not supported here");
    test_row_quantization();
    test_random_shapes();
    test_extremes();
    std::printf("%d checks, %d failures\n", g_checks, g_failures);
    return g_failures ? 1 : 0;
}

// The SIMD SiLU gates equal the portable one to float rounding and the exp polynomial, for every length (the
// vector tails included), and give a value the same bits wherever it sits in a call (prompt and decode rows of
// the same token must agree exactly for prefix reuse).
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "gguf_test_writer.h"
#include "kernels/dispatch.h"
#include "kernels/ref.h"

using namespace bllama;

int main() {
    std::mt19937 rng(11);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    int checked = 0;
    for (KernelKind kind : kAllKernelKinds) {
        if (!kernel_supported(kind)) continue;
        const KernelTable& kt = kernel_table(kind);
        for (int64_t n : {1, 7, 8, 9, 15, 16, 17, 33, 1000}) {
            std::vector<float> g(n), u(n);
            for (int64_t i = 0; i < n; ++i) {
                // scales from tiny to past exp's range (|z| > 88: exp(-z) overflows in the reference)
                const float s = std::pow(10.0f, static_cast<float>(i % 5) - 2.0f);
                g[i] = 30.0f * s * normal(rng);
                u[i] = normal(rng);
            }
            g[0] = n > 1 ? -100.0f : g[0];
            std::vector<float> want = g, got = g;
            silu_mul_ref(want.data(), u.data(), n);
            kt.silu_mul(got.data(), u.data(), n);
            for (int64_t i = 0; i < n; ++i) {
                CHECK(std::isfinite(got[i]));
                // relative to the larger of the value and the input scale: silu's relative error blows up near
                // its zero only where both are tiny
                const double tol = 1e-6 * std::max(std::fabs(double(want[i])), 1e-3 * std::fabs(double(u[i])));
                if (std::fabs(double(got[i]) - double(want[i])) > tol) {
                    std::fprintf(stderr, "  %s n %lld i %lld: z %.9g u %.9g got %.9g want %.9g\n", kernel_name(kind),
                                 (long long)n, (long long)i, g[i], u[i], got[i], want[i]);
                    CHECK(false);
                }
                float one = g[i];  // the same value alone
                kt.silu_mul(&one, &u[i], 1);
                CHECK(one == got[i]);
            }
            ++checked;
        }
    }
    if (testutil::failures()) {
        std::fprintf(stderr, "test_activation: %d failure(s)\n", testutil::failures());
        return 1;
    }
    std::printf("test_activation: ok (%d cases)\n", checked);
    return 0;
}

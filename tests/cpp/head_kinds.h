// Every supported kernel kind of one LM head format (head_q8.h, head_q4.h) against its scalar reference, bit for
// bit. The rows are computed in three uneven ranges (as threads split them; the boundaries fall inside the q4
// head's 16-row tiles), and one middle range alone must leave every row outside it untouched.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/ternary.h"

#include "check_msg.h"

// ref(h, x, y, ldy, rb, re) is the scalar reference, matmul(h, x, y, ldy, rb, re, kind) the checked entry point.
template <class Head, class Ref, class Matmul>
void check_kinds_equal(const Head& h, const bllama::QuantizedActs& x, const std::string& what, Ref ref,
                       Matmul matmul) {
    using bllama::KernelKind;
    const int64_t rows = h.rows(), n = x.n_tokens;
    std::vector<float> want(static_cast<size_t>(rows * n), -1.0f);
    ref(h, x, want.data(), rows, 0, rows);
    const int64_t a = rows / 3, b = a + (rows - a) / 2;
    for (KernelKind k : bllama::kAllKernelKinds) {
        if (!bllama::kernel_supported(k)) continue;
        std::vector<float> y(want.size(), -2.0f);
        matmul(h, x, y.data(), rows, 0, a, k);
        matmul(h, x, y.data(), rows, a, b, k);
        matmul(h, x, y.data(), rows, b, rows, k);
        CHECK(std::memcmp(y.data(), want.data(), want.size() * sizeof(float)) == 0, "%s: kind %s != scalar",
              what.c_str(), bllama::kernel_name(k));
        std::vector<float> part(want.size(), -2.0f);
        matmul(h, x, part.data(), rows, a, b, k);
        bool ok = true;
        for (int64_t t = 0; t < n; ++t)
            for (int64_t r = 0; r < rows; ++r) {
                const size_t i = static_cast<size_t>(t * rows + r);
                const float expect = r >= a && r < b ? want[i] : -2.0f;
                ok = ok && std::memcmp(&part[i], &expect, sizeof(float)) == 0;
            }
        CHECK(ok, "%s: kind %s, rows [%lld, %lld) alone: a row outside the range changed or one inside differs",
              what.c_str(), bllama::kernel_name(k), static_cast<long long>(a), static_cast<long long>(b));
    }
}

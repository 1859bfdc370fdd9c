// Every supported kernel kind against a reference, bit for bit, over the row ranges that threads split a matmul
// into (test_kernels.cpp's ternary kinds, test_ternary1.cpp's base-3 kernels). The output is pre-filled with -7.5 so
// that a kind writing a row outside its range (or a padding row) differs from the reference, which leaves it alone.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "kernels/dispatch.h"

#include "check_msg.h"

// The kinds this CPU and build can run, the scalar one included (its table entry must be the reference too).
inline std::vector<bllama::KernelKind> supported_kinds() {
    std::vector<bllama::KernelKind> k;
    for (bllama::KernelKind kind : bllama::kAllKernelKinds)
        if (bllama::kernel_supported(kind)) k.push_back(kind);
    return k;
}

// Rows [rb, re) of an n-token output with ldy = rows + 3, by ref(y, ldy, rb, re) and, for every supported kind, by
// run(kind, y, ldy, rb, re), over four ranges: all rows, both ends trimmed, an odd start, one middle row. `what`
// names the case in failure messages. Returns the number of ranges checked.
template <class Ref, class Run>
int check_kinds_over_ranges(int64_t rows, int64_t n, const std::string& what, Ref ref, Run run) {
    const int64_t ldy = rows + 3;
    const std::vector<std::pair<int64_t, int64_t>> ranges = {
        {0, rows}, {rows > 3 ? 1 : 0, rows > 3 ? rows - 2 : rows}, {rows / 3 | 1, rows}, {rows / 2, rows / 2 + 1}};
    int checked = 0;
    for (auto [rb, re] : ranges) {
        if (rb > re || re > rows) continue;
        std::vector<float> want(static_cast<size_t>(n * ldy), -7.5f);
        ref(want.data(), ldy, rb, re);
        for (bllama::KernelKind k : supported_kinds()) {
            std::vector<float> y(want.size(), -7.5f);
            run(k, y.data(), ldy, rb, re);
            CHECK(std::memcmp(y.data(), want.data(), y.size() * sizeof(float)) == 0, "%s: %s differs: range=[%ld,%ld)",
                  what.c_str(), bllama::kernel_name(k), long(rb), long(re));
        }
        ++checked;
    }
    return checked;
}

// The GPU weight layout (cuda/layout.h), checked on the CPU: codes round-trip from both the CPU matrix
// and raw codes, the host reference of the GPU matmul equals the CPU engine's ternary_matmul bit for bit,
// and a file with per-block scales is refused.
#include <cstring>
#include <random>
#include <vector>

#include "check_msg.h"
#include "cuda/layout.h"
#include "engine/config.h"

using namespace bllama;

int main() {
    std::mt19937 rng(7);
    for (int trial = 0; trial < 6; ++trial) {
        const int64_t rows = 1 + rng() % 70, cols = 256 * (1 + rng() % 4), n = 1 + rng() % 5;
        std::vector<int8_t> q(static_cast<size_t>(rows * cols));
        for (auto& v : q) v = static_cast<int8_t>(static_cast<int>(rng() % 3) - 1);
        const float scale = 0.01f + (rng() % 1000) / 1000.0f;
        TernaryMatrix m = TernaryMatrix::from_codes(q.data(), rows, cols, scale);
        TernaryRows a = ternary_rows_from_matrix(m, "w");
        TernaryRows b = ternary_rows_from_codes(q.data(), rows, cols, scale);
        CHECK(a.words == b.words, "trial %d: layouts from the CPU matrix and from codes differ", trial);
        int bad = 0;
        for (int64_t r = 0; r < rows; ++r)
            for (int64_t c = 0; c < cols; ++c) bad += a.code(r, c) != q[static_cast<size_t>(r * cols + c)];
        CHECK(bad == 0, "trial %d: %d codes do not round-trip", trial, bad);

        std::vector<float> x(static_cast<size_t>(n * cols));
        std::normal_distribution<float> nd(0.0f, 1.0f);
        for (auto& v : x) v = nd(rng) * (1 + rng() % 8);
        QuantizedActs qa;
        quantize_acts(x.data(), n, cols, qa, KernelKind::Scalar);
        std::vector<float> want(static_cast<size_t>(n * rows)), got(want.size(), -1.0f);
        ternary_matmul(m, qa, want.data(), rows, 0, rows, KernelKind::Scalar);
        ternary_rows_matmul_ref(a, qa, got.data(), rows);
        CHECK(std::memcmp(want.data(), got.data(), want.size() * 4) == 0,
              "trial %d (%lld x %lld, %lld tokens): GPU-layout reference != CPU ternary_matmul", trial,
              (long long)rows, (long long)cols, (long long)n);
    }

    // Per-block scales: the CPU handles them, the GPU layout refuses them by name.
    {
        const int64_t rows = 4, cols = 512;
        std::vector<uint8_t> blocks(static_cast<size_t>(rows * 2 * 66), 0x55);  // every code 0 (u = 1)
        for (int64_t i = 0; i < rows * 2; ++i) {
            uint8_t* blk = blocks.data() + i * 66;
            blk[0] = 0x56;  // one nonzero code per block
            const uint16_t d = (i % 2) ? 0x3C00 : 0x4000;  // 1.0 and 2.0
            std::memcpy(blk + 64, &d, 2);
        }
        TernaryMatrix m = TernaryMatrix::from_tq2_0(blocks.data(), rows, cols);
        bool threw = false;
        try {
            ternary_rows_from_matrix(m, "blk.0.attn_q.weight");
        } catch (const ModelError& e) {
            threw = std::strstr(e.what(), "blk.0.attn_q.weight") != nullptr;
        }
        CHECK(!m.uniform_scale() && threw, "per-block scales were not refused with the tensor's name");
    }
    std::printf("test_cuda_layout: %d checks, %d failures\n", g_checks, g_failures);
    return g_failures ? 1 : 0;
}

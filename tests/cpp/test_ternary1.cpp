// The 1.6-bit base-3 layout of TQ1_0 files (TernaryLayout::Base3, kernels/pack.h): it holds exactly the codes the
// 2-bit layout holds, every kernel kind's base-3 matmul equals the 2-bit scalar reference bit for bit (integer
// sums, the same float epilogue) on odd shapes, token counts, row ranges and per-block scales, and a TQ1_0 model
// gives bit-identical logits through either layout. Plain C++, nonzero exit on failure.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <stdexcept>
#include <utility>
#include <vector>

#include "cpu/model.h"
#include "engine/engine.h"
#include "kernels/cpu_features.h"
#include "kernels/dispatch.h"
#include "kernels/pack.h"
#include "kernels/simd.h"
#include "kernels/half.h"
#include "kernels/ref.h"
#include "kernels/ternary.h"

#include "gguf_test_writer.h"
#include "ternary_encoders.h"
#undef CHECK  // the model writer's one-argument CHECK; this file uses check_msg.h's
#include "check_msg.h"
#include "kind_ranges.h"

using namespace bllama;

static std::mt19937 rng(20261206);

// Codes in {-1, 0, 1}, a fraction `zero_blocks` of the 256-blocks all zero (their scale is never used).
static std::vector<int8_t> random_codes(int64_t rows, int64_t cols, double zero_blocks) {
    std::vector<int8_t> c(static_cast<size_t>(rows * cols));
    std::uniform_int_distribution<int> tri(-1, 1);
    std::bernoulli_distribution zero(zero_blocks);
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t b = 0; b < cols / 256; ++b) {
            const bool z = zero(rng);
            for (int64_t k = b * 256; k < (b + 1) * 256; ++k) c[static_cast<size_t>(r * cols + k)] = z ? 0 : static_cast<int8_t>(tri(rng));
        }
    return c;
}

// A TQ1_0 tensor with one scale per block: uniform, or drawn per block.
static std::vector<uint8_t> to_tq1(const std::vector<int8_t>& c, int64_t rows, int64_t cols, bool uniform) {
    std::vector<uint8_t> out;
    std::uniform_real_distribution<float> ud(0.01f, 3.0f);
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t b = 0; b < cols / 256; ++b) {
            const std::vector<int8_t> blk(c.begin() + r * cols + b * 256, c.begin() + r * cols + (b + 1) * 256);
            const auto e = testutil::encode_tq1_0(blk, 1, 256, uniform ? 0.0625f : ud(rng));
            out.insert(out.end(), e.begin(), e.end());
        }
    return out;
}

static std::vector<float> make_acts(int64_t n, int64_t cols) {
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> x(static_cast<size_t>(n * cols));
    for (auto& v : x) v = nd(rng);
    return x;
}

// Every code (and padding) survives the base-3 packing: both constructors, against the 2-bit layout. A 64 x 2560
// matrix holds ~30000 five-trit bytes, so every one of the 243 values appears (and the 81 four-trit ones).
static void test_layout() {
    for (int64_t rows : {1, 17, 64})
        for (int64_t cols : {256, 2560}) {
            const auto c = random_codes(rows, cols, 0.1);
            const TernaryMatrix a = TernaryMatrix::from_codes(c.data(), rows, cols, 0.5f, TernaryLayout::Base3);
            const auto t1 = to_tq1(c, rows, cols, false);
            const TernaryMatrix b = TernaryMatrix::from_tq1_0(t1.data(), rows, cols, TernaryLayout::Base3);
            const TernaryMatrix two = TernaryMatrix::from_tq1_0(t1.data(), rows, cols);
            CHECK(a.layout() == TernaryLayout::Base3 && b.layout() == TernaryLayout::Base3 &&
                      two.layout() == TernaryLayout::TwoBit, "layouts");
            int bad = 0;
            for (int64_t r = 0; r < rows; ++r)
                for (int64_t k = 0; k < cols; ++k) {
                    const int8_t want = c[static_cast<size_t>(r * cols + k)];
                    bad += a.code(r, k) != want || b.code(r, k) != want || two.code(r, k) != want;
                    if (k % 256 == 0) bad += b.block_scale(r, k) != two.block_scale(r, k);
                }
            CHECK(bad == 0, "rows=%ld cols=%ld: %d codes or scales differ", long(rows), long(cols), bad);
            CHECK(b.uniform_scale() == two.uniform_scale(), "uniform flag");
            // 1.625 bits per code + the same fp32 block scales: 0.81x the 2-bit codes' bytes.
            const size_t scales = static_cast<size_t>((rows + 15) / 16 * 16 * (cols / 256) * 4);
            CHECK((b.bytes() - scales) * 64 == (two.bytes() - scales) * 52, "bytes %zu vs %zu", b.bytes(), two.bytes());
        }
    // Bad input is refused as for the 2-bit layout.
    std::vector<uint8_t> buf(54 * 4, 0);
    bool threw = false;
    try { (void)TernaryMatrix::from_tq1_0(buf.data(), 2, 128, TernaryLayout::Base3); } catch (const std::invalid_argument&) { threw = true; }
    CHECK(threw, "cols %% 256 != 0 must throw");
    std::vector<int8_t> c(256, 0);
    c[3] = 2;
    threw = false;
    try { (void)TernaryMatrix::from_codes(c.data(), 1, 256, 1.0f, TernaryLayout::Base3); } catch (const std::invalid_argument&) { threw = true; }
    CHECK(threw, "code 2 must throw");
}

// The prompt GEMMs' expansion of a base-3 group to the 2-bit layout gives exactly the 2-bit matrix's bytes (padding
// rows included), by every path this CPU can run. 2560 columns: every one of the 243 (and 81) byte values occurs.
static void test_expand() {
    for (int64_t rows : {16, 40}) {
        const int64_t cols = 2560;
        const auto c = random_codes(rows, cols, 0.1);
        const TernaryMatrix w3 = TernaryMatrix::from_codes(c.data(), rows, cols, 0.5f, TernaryLayout::Base3);
        const TernaryMatrix w2 = TernaryMatrix::from_codes(c.data(), rows, cols, 0.5f);
        std::vector<uint8_t, AlignedAllocator<uint8_t>> out(static_cast<size_t>(cols * 4));
        for (int64_t g = 0; g < (rows + 15) / 16; ++g) {
            const uint8_t* want = w2.impl().group_ptr(g);
            auto same = [&] { return std::memcmp(out.data(), want, out.size()) == 0; };
#ifdef BLLAMA_KERNELS_ARM
            expand_base3_group_neon(w3, g, out.data());
            CHECK(same(), "neon expansion: rows=%ld group %ld", long(rows), long(g));
#endif
#ifdef BLLAMA_KERNELS_X86
            if (cpu_features().avx2) {
                expand_base3_group_avx2(w3, g, out.data());
                CHECK(same(), "avx2 expansion: rows=%ld group %ld", long(rows), long(g));
            }
            for (bool vbmi : {false, true}) {
                if (!cpu_features().avx512_vnni || (vbmi && !cpu_features().avx512_vbmi)) continue;
                expand_base3_group_avx512(w3, g, out.data(), vbmi);
                CHECK(same(), "avx512 expansion (vbmi=%d): rows=%ld group %ld", int(vbmi), long(rows), long(g));
            }
#endif
            (void)same;
        }
    }
#ifdef BLLAMA_KERNELS_ARM
    std::printf("  expansions: neon\n");
#endif
#ifdef BLLAMA_KERNELS_X86
    std::printf("  expansions: avx2=%d avx512=%d vbmi=%d\n", int(cpu_features().avx2), int(cpu_features().avx512_vnni),
                int(cpu_features().avx512_vbmi));
#endif
}

// Every kind on the base-3 matrix == the scalar reference on the 2-bit one, bit for bit.
static void test_kernels() {
    int configs = 0;
    for (int64_t cols : {256, 768, 2048, 2816})
        for (int64_t rows : {1, 5, 16, 17, 40, 100})
            for (int64_t n : {1, 2, 3, 4, 5, 7, 9, 16, 33}) {
                if (rows * cols * n > 6'000'000) continue;
                const bool uniform = (rows + n + cols / 256) % 3 != 0;
                const auto c = random_codes(rows, cols, 0.15);
                const auto t1 = to_tq1(c, rows, cols, uniform);
                const TernaryMatrix w2 = TernaryMatrix::from_tq1_0(t1.data(), rows, cols);
                const TernaryMatrix w3 = TernaryMatrix::from_tq1_0(t1.data(), rows, cols, TernaryLayout::Base3);
                CHECK(w3.uniform_scale() == w2.uniform_scale() && (!uniform || w3.uniform_scale()), "uniform=%d", int(uniform));
                const auto x = make_acts(n, cols);
                QuantizedActs qa;
                quantize_acts(x.data(), n, cols, qa);
                configs += check_kinds_over_ranges(
                    rows, n,
                    "base3 vs 2-bit scalar: rows=" + std::to_string(rows) + " cols=" + std::to_string(cols) +
                        " n=" + std::to_string(n) + " uniform=" + std::to_string(uniform),
                    [&](float* y, int64_t ldy, int64_t rb, int64_t re) {
                        ternary_matmul(w2, qa, y, ldy, rb, re, KernelKind::Scalar);
                    },
                    [&](KernelKind k, float* y, int64_t ldy, int64_t rb, int64_t re) {
                        ternary_matmul(w3, qa, y, ldy, rb, re, k);
                    });
            }
    std::printf("  base3 kernels vs 2-bit scalar: %d configurations x %zu kinds\n", configs, supported_kinds().size());
}

// A TQ1_0 model's logits (prompt chunks and decode steps) are bit-identical through either layout, on the best
// kind; the load option and its default pick the layouts they say.
static void test_model() {
    testutil::Spec s;
    s.tq1 = true;
    s.dim = 512;
    s.ffn = 768;
    s.seed = 7;
    const auto g = testutil::random_model(s, nullptr);
    auto load = [&](Tq1Layout l) {
        LoadOptions o;
        o.head = HeadType::F16;
        o.kv_f16 = false;
        o.threads = 2;
        o.max_batch = 8;
        o.tq1_layout = l;
        return Model::load(GgufFile::from_bytes(g.build()), o);
    };
    std::vector<int32_t> ids(21);
    for (auto& t : ids) t = static_cast<int32_t>(rng() % s.vocab);
    Engine e2(load(Tq1Layout::TwoBit)), e3(load(Tq1Layout::Base3));
    const auto a = e2.logits(ids), b = e3.logits(ids);  // 21 tokens in chunks of 8: GEMM tiles and tails
    CHECK(a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 4) == 0, "prompt logits differ");
    auto m2 = load(Tq1Layout::TwoBit), m3 = load(Tq1Layout::Base3);
    std::vector<float> y2(static_cast<size_t>(s.vocab)), y3(y2.size());
    int bad = 0;
    for (int64_t t = 0; t < 12; ++t) {  // decode: the GEMV path
        m2->forward(&ids[static_cast<size_t>(t)], 1, t, y2.data(), false);
        m3->forward(&ids[static_cast<size_t>(t)], 1, t, y3.data(), false);
        bad += std::memcmp(y2.data(), y3.data(), y2.size() * 4) != 0;
    }
    CHECK(bad == 0, "%d decode steps differ", bad);
    CHECK(resolve_tq1_layout(Tq1Layout::TwoBit, best_kernel()) == TernaryLayout::TwoBit, "2bit");
    CHECK(resolve_tq1_layout(Tq1Layout::Base3, KernelKind::Scalar) == TernaryLayout::Base3, "base3");
    if (!std::getenv("BLLAMA_TQ1_LAYOUT")) {
        CHECK(resolve_tq1_layout(Tq1Layout::Auto, KernelKind::Scalar) == TernaryLayout::TwoBit, "auto on scalar");
        // The auto rule (resolve_tq1_layout): base 3 only where decode measured faster, AVX-512 VNNI with VBMI.
        const bool fast = best_kernel() == KernelKind::Avx512Vnni && cpu_features().avx512_vbmi;
        CHECK(resolve_tq1_layout(Tq1Layout::Auto, best_kernel()) == (fast ? TernaryLayout::Base3 : TernaryLayout::TwoBit),
              "auto on best");
        for (KernelKind k : {KernelKind::Avx2, KernelKind::Neon, KernelKind::Dotprod, KernelKind::I8mm})
            CHECK(resolve_tq1_layout(Tq1Layout::Auto, k) == TernaryLayout::TwoBit, "auto on %s", kernel_name(k));
    }
    bool threw = false;
    try { (void)parse_tq1_layout("1.6"); } catch (const std::invalid_argument&) { threw = true; }
    CHECK(threw, "parse_tq1_layout must refuse unknown names");
}

int main() {
    test_layout();
    test_expand();
    test_kernels();
    test_model();
    std::printf("test_ternary1: %d checks, %d failures\n", g_checks, g_failures);
    return g_failures ? 1 : 0;
}

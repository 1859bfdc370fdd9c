// The GPU weight layout (cuda/layout.h), checked on the CPU: codes round-trip from both the CPU matrix
// and raw codes, the load path straight from a GGUF tensor's bytes (TQ2_0, TQ1_0, I2_S) gives the same words and
// scale as the path through the CPU matrix, the host reference of the GPU matmul equals the CPU engine's
// ternary_matmul bit for bit, and a file with per-block scales (or a bad code / scale) is refused by name.
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "check_msg.h"
#include "cuda/layout.h"
#include "engine/config.h"
#include "kernels/pack.h"
#include "ternary_encoders.h"

using namespace bllama;

namespace {

const char* kTypeName[] = {"TQ2_0", "TQ1_0", "I2_S"};
const GgmlType kTypes[] = {GgmlType::TQ2_0, GgmlType::TQ1_0, GgmlType::I2_S};

// A GGUF tensor view over bytes in memory, as GgufFile hands them to the loaders.
GgufTensor tensor_view(const char* name, GgmlType type, int64_t rows, int64_t cols, const std::vector<uint8_t>& bytes) {
    GgufTensor t;
    t.name = name;
    t.type = static_cast<uint32_t>(type);
    t.n_dims = 2;
    t.dims[0] = cols;
    t.dims[1] = rows;
    t.n_elements = rows * cols;
    t.nbytes = bytes.size();
    t.data = bytes.data();
    return t;
}

std::vector<uint8_t> encode(int type, const std::vector<int8_t>& q, int64_t rows, int64_t cols, float scale) {
    if (type == 0) return testutil::encode_tq2_0(q, rows, cols, scale);
    if (type == 1) return testutil::encode_tq1_0(q, rows, cols, scale);
    return testutil::encode_i2_s(q, scale);
}

TernaryMatrix cpu_matrix(int type, const std::vector<uint8_t>& bytes, int64_t rows, int64_t cols) {
    if (type == 0) return TernaryMatrix::from_tq2_0(bytes.data(), rows, cols);
    if (type == 1) return TernaryMatrix::from_tq1_0(bytes.data(), rows, cols);
    return TernaryMatrix::from_i2_s(bytes.data(), rows, cols);
}

// The GPU loader's old path, kept as the reference of the new one: the CPU matrix's per-row dwords with the 16-row
// interleave undone (the layouts share the dword), and the matrix's scale.
TernaryRows rows_via_cpu_matrix(const TernaryMatrix& m) {
    const TernaryMatrix::Impl& im = m.impl();
    TernaryRows t;
    t.rows = im.rows;
    t.cols = im.cols;
    t.scale = im.scale;
    const int64_t wpr = t.words_per_row();
    t.words.resize(static_cast<size_t>(t.rows * wpr));
    for (int64_t r = 0; r < t.rows; ++r) {
        const uint8_t* g = im.group_ptr(r / kGroupRows) + (r % kGroupRows) * 4;
        uint32_t* dst = t.words.data() + r * wpr;
        for (int64_t c = 0; c < wpr; ++c) std::memcpy(dst + c, g + c * kChunkBytes, 4);
    }
    return t;
}

uint32_t bits(float f) {
    uint32_t b;
    std::memcpy(&b, &f, 4);
    return b;
}

// The load path (file bytes -> TernaryRows in one repack) against the old path through the CPU matrix (file bytes ->
// TernaryMatrix -> TernaryRows), for random codes of a logical width zero-padded to whole 256-blocks (as the
// exporter stores D and F), row counts off the 16-row groups, all-zero rows whose blocks carry a garbage d (inf,
// nan: it must be ignored) and, last, a tensor with every code 0.
void test_from_gguf(std::mt19937& rng) {
    for (int type = 0; type < 3; ++type)
        for (int trial = 0; trial < 8; ++trial) {
            const int64_t rows = 1 + rng() % 70, cols = 256 * (1 + rng() % 4);
            const int64_t width = trial % 2 ? cols - static_cast<int64_t>(rng() % 256) : cols;
            const bool all_zero = trial == 7;
            std::vector<int8_t> q(static_cast<size_t>(rows * cols), 0);
            std::vector<bool> zero_row(static_cast<size_t>(rows));
            for (int64_t r = 0; r < rows; ++r) {
                zero_row[static_cast<size_t>(r)] = all_zero || rng() % 6 == 0;
                if (zero_row[static_cast<size_t>(r)]) continue;
                for (int64_t c = 0; c < width; ++c)
                    q[static_cast<size_t>(r * cols + c)] = static_cast<int8_t>(static_cast<int>(rng() % 3) - 1);
            }
            const float scale = f16_to_f32(f32_to_f16(0.01f + (rng() % 1000) / 1000.0f));
            std::vector<uint8_t> bytes = encode(type, q, rows, cols, scale);
            if (type < 2) {  // a garbage d in the all-zero blocks
                const int64_t block_bytes = type == 0 ? 66 : 54, d_at = type == 0 ? 64 : 52;
                for (int64_t r = 0; r < rows; ++r)
                    for (int64_t b = 0; b < cols / 256; ++b) {
                        bool zero = true;
                        for (int64_t c = b * 256; c < (b + 1) * 256; ++c) zero = zero && q[static_cast<size_t>(r * cols + c)] == 0;
                        const uint16_t garbage = (r + b) % 2 ? 0x7c00 : 0x7e00;
                        if (zero) std::memcpy(&bytes[static_cast<size_t>((r * cols / 256 + b) * block_bytes + d_at)], &garbage, 2);
                    }
            }
            const TernaryRows got = ternary_rows_from_gguf(tensor_view("blk.1.ffn_down.weight", kTypes[type], rows, cols, bytes));
            const TernaryRows want = rows_via_cpu_matrix(cpu_matrix(type, bytes, rows, cols));
            CHECK(got.rows == rows && got.cols == cols && got.words == want.words,
                  "%s trial %d (%lld x %lld, width %lld): words differ from the path through the CPU matrix",
                  kTypeName[type], trial, (long long)rows, (long long)cols, (long long)width);
            CHECK(bits(got.scale) == bits(want.scale), "%s trial %d: scale %g, through the CPU matrix %g", kTypeName[type],
                  trial, got.scale, want.scale);
            CHECK(got.words == ternary_rows_from_codes(q.data(), rows, cols, scale).words,
                  "%s trial %d: words differ from the codes' own", kTypeName[type], trial);
            const float want_scale = all_zero && type < 2 ? 0.0f : scale;
            CHECK(bits(got.scale) == bits(want_scale), "%s trial %d: scale %g, want %g", kTypeName[type], trial,
                  got.scale, want_scale);
        }
}

// What the load path refuses, each as a ModelError naming the tensor: a code 3 (TQ2_0, I2_S), an I2_S scale
// that is not finite.
void test_from_gguf_errors() {
    const int64_t rows = 3, cols = 256;
    const std::vector<int8_t> q(static_cast<size_t>(rows * cols), 1);
    for (int type : {0, 2}) {
        std::vector<uint8_t> bytes = encode(type, q, rows, cols, 1.0f);
        bytes[static_cast<size_t>(type == 0 ? 66 + 5 : 64 + 5)] = 0xff;  // row 1: four codes of 3
        std::string msg;
        try {
            ternary_rows_from_gguf(tensor_view("blk.0.attn_k.weight", kTypes[type], rows, cols, bytes));
        } catch (const ModelError& e) {
            msg = e.what();
        }
        CHECK(msg.find("blk.0.attn_k.weight") != std::string::npos && msg.find("code 3") != std::string::npos &&
                  msg.find("row 1") != std::string::npos,
              "%s code 3: got '%s'", kTypeName[type], msg.c_str());
    }
    std::vector<uint8_t> bytes = encode(2, q, rows, cols, NAN);
    std::string msg;
    try {
        ternary_rows_from_gguf(tensor_view("blk.0.attn_v.weight", GgmlType::I2_S, rows, cols, bytes));
    } catch (const ModelError& e) {
        msg = e.what();
    }
    CHECK(msg.find("blk.0.attn_v.weight") != std::string::npos && msg.find("not finite") != std::string::npos,
          "I2_S nan scale: got '%s'", msg.c_str());
}

}  // namespace

int main() {
    std::mt19937 rng(7);
    for (int trial = 0; trial < 6; ++trial) {
        const int64_t rows = 1 + rng() % 70, cols = 256 * (1 + rng() % 4), n = 1 + rng() % 5;
        std::vector<int8_t> q(static_cast<size_t>(rows * cols));
        for (auto& v : q) v = static_cast<int8_t>(static_cast<int>(rng() % 3) - 1);
        const float scale = 0.01f + (rng() % 1000) / 1000.0f;
        TernaryMatrix m = TernaryMatrix::from_codes(q.data(), rows, cols, scale);
        TernaryRows a = rows_via_cpu_matrix(m);
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
            ternary_rows_from_gguf(tensor_view("blk.0.attn_q.weight", GgmlType::TQ2_0, rows, cols, blocks));
        } catch (const ModelError& e) {
            threw = std::strstr(e.what(), "blk.0.attn_q.weight") != nullptr &&
                    std::strstr(e.what(), "different scales") != nullptr;
        }
        CHECK(!m.uniform_scale() && threw, "per-block scales were not refused with the tensor's name");
    }
    test_from_gguf(rng);
    test_from_gguf_errors();
    std::printf("test_cuda_layout: %d checks, %d failures\n", g_checks, g_failures);
    return g_failures ? 1 : 0;
}

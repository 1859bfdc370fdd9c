// Kernel tests: every SIMD kind equals the scalar reference bit for bit on the ternary path, the
// scalar reference equals a naive formula, GGUF TQ2_0/TQ1_0 decode matches the gguf package, and the
// f16 head agrees within a proven summation-error bound. Plain C++, nonzero exit on failure.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/dispatch.h"
#include "kernels/half.h"
#include "kernels/head_f16.h"
#include "kernels/head_q8.h"
#include "kernels/ref.h"
#include "kernels/ternary.h"

#include "check_msg.h"
#include "kind_ranges.h"

using namespace bllama;

// ---- vectors written by gguf 0.19.0 (gguf.quants.quantize of a 2 x 512 ternary x d matrix) --------
// Generated with:
//   rng = np.random.default_rng(1234); codes = rng.integers(-1, 2, size=(2, 512)).astype(np.int8)
//   codes[1, 256:] = 0; codes[0, 0] = 1
//   d = np.array([[0.0123, 0.5], [2.0, 7.0]], dtype=np.float16).astype(np.float32)
//   x = codes * np.repeat(d, 256, axis=1); quants.quantize(x, TQ2_0 / TQ1_0)
// kCodes holds code + 1 per element, row-major.
static const char* kCodes =
    "222102000010202022201101221212210220202210020201100211110010121102222022102220211220222202112121"
    "002021020110221201012202100212220011212001011220101001202020021110000210120022012020221120001122"
    "112202101001101011120200112020022002001121020012221022200120101122122221022120200212002201022021"
    "011020010020111110222212120020102001221002222000210000100111222012212120120221021002210002122101"
    "010010201022220022202202202011221202222110100201121002001021011120101212100020011222102110002111"
    "122100112000110102120112210211010101121020201000011011221102121010012112001101222022211111200021"
    "120220111021012100010020110102112222011221212020011001021012001120122220022111100112100021210011"
    "000120002220210021011202122000221220110020011000120121221222010221020012201112010022110011220022"
    "111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111"
    "111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111"
    "1111111111111111111111111111111111111111111111111111111111111111"
;
static const char* kTQ2Hex =
    "022aaa21a84228a814406128a288629416622248a5a524a542221592659aa695941021a10229564094490091190a5284"
    "9990592088a986041a50a200640649694c2262868552aa62920540a22aa1a64406846412098a8848160a04995092aa60"
    "26416489904819285a6495000602624a005416aa66a0124a609296400a8461551656003894a180a5294655989240a654"
    "8114a81808414918094526865515489201225954926021861a124280a80a4a515985014018258196655820285669aaa1"
    "001089a90040555555555555555555555555555555555555555555555555555555555555555555555555555555555555"
    "555555555555555555555555555555555555555555550000"
;
static const char* kTQ1Hex =
    "abf7fe6a55af4e5326056c4dc642c32dd2c1bf3d8c8d328cb0be7ebb88f6e2839d0d501c39fd7d1e9daf070cd7c84497"
    "e7eea5044c22c1cf79b8fec1bd7205c4f971e322c82335b791ea423fd1e61f9f0fbbfe18dd5b89ec2fb3b8f7bc6d8100"
    "8f1d1bcc208017d472fa00382f6f088ea4cd8149bb06e32b5d275443395a93459075dbce817d3fbc56be9c2b48371378"
    "d7460842e0eaeb11b65b39412626c4c40040808080808080808080808080808080808080808080808080808080808080"
    "8080808080808080808080808080808080807f7f7f7f0000"
;

static std::vector<uint8_t> from_hex(const char* s) {
    std::vector<uint8_t> out;
    for (size_t i = 0; s[i] && s[i + 1]; i += 2) out.push_back(static_cast<uint8_t>(std::stoi(std::string(s + i, 2), nullptr, 16)));
    return out;
}

// ---- independent encoders (the GGUF formulas, written from the gguf docs, not from the kernels) ----
static void encode_tq2_block(const int8_t* q, uint16_t d, uint8_t* out) {
    std::memset(out, 0, 64);
    for (int i = 0; i < 256; ++i) {
        const int h = i / 128, j = (i % 128) / 32, m = i % 32;
        out[h * 32 + m] |= static_cast<uint8_t>((q[i] + 1) << (2 * j));
    }
    out[64] = static_cast<uint8_t>(d & 0xff);
    out[65] = static_cast<uint8_t>(d >> 8);
}

static uint8_t tq1_pack(const int* trits, int n) {  // n trits, first is the most significant
    int v = 0;
    for (int i = 0; i < n; ++i) v = v * 3 + trits[i];
    for (int i = n; i < 5; ++i) v *= 3;
    return static_cast<uint8_t>((v * 256 + 242) / 243);
}

static void encode_tq1_block(const int8_t* q, uint16_t d, uint8_t* out) {
    int t[5];
    for (int m = 0; m < 32; ++m) {
        for (int n = 0; n < 5; ++n) t[n] = q[n * 32 + m] + 1;
        out[m] = tq1_pack(t, 5);
    }
    for (int m = 0; m < 16; ++m) {
        for (int n = 0; n < 5; ++n) t[n] = q[160 + n * 16 + m] + 1;
        out[32 + m] = tq1_pack(t, 5);
    }
    for (int m = 0; m < 4; ++m) {
        for (int n = 0; n < 4; ++n) t[n] = q[240 + n * 4 + m] + 1;
        out[48 + m] = tq1_pack(t, 4);
    }
    out[52] = static_cast<uint8_t>(d & 0xff);
    out[53] = static_cast<uint8_t>(d >> 8);
}

// ---- helpers -----------------------------------------------------------------------------------
static std::mt19937_64 rng(20240611);

static std::vector<int8_t> random_codes(int64_t rows, int64_t cols, double p_zero_block = 0.0) {
    std::vector<int8_t> c(static_cast<size_t>(rows * cols));
    std::uniform_int_distribution<int> u(-1, 1);
    std::uniform_real_distribution<double> ur(0, 1);
    for (auto& v : c) v = static_cast<int8_t>(u(rng));
    if (p_zero_block > 0)
        for (int64_t r = 0; r < rows; ++r)
            for (int64_t b = 0; b < cols / 256; ++b)
                if (ur(rng) < p_zero_block) std::memset(&c[static_cast<size_t>(r * cols + b * 256)], 0, 256);
    return c;
}

static bool block_is_zero(const int8_t* q) {
    for (int i = 0; i < 256; ++i)
        if (q[i]) return false;
    return true;
}

// TQ2_0 bytes for codes with per-block d chosen by dfun(r, b); zero blocks get a garbage d (inf).
template <class F>
static std::vector<uint8_t> to_tq2(const std::vector<int8_t>& c, int64_t rows, int64_t cols, F dfun) {
    std::vector<uint8_t> out(static_cast<size_t>(rows * cols / 256 * 66));
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t b = 0; b < cols / 256; ++b) {
            const int8_t* q = &c[static_cast<size_t>(r * cols + b * 256)];
            encode_tq2_block(q, block_is_zero(q) ? uint16_t(0x7c00) : dfun(r, b), &out[static_cast<size_t>((r * cols / 256 + b) * 66)]);
        }
    return out;
}

enum class ActStyle { Normal, Zero, Huge, Tiny, Ties, Outlier };

static std::vector<float> make_acts(int64_t n_tokens, int64_t cols) {
    std::vector<float> x(static_cast<size_t>(n_tokens * cols));
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::uniform_int_distribution<int> ui(-127, 127);
    for (int64_t t = 0; t < n_tokens; ++t) {
        float* xt = &x[static_cast<size_t>(t * cols)];
        const auto style = static_cast<ActStyle>(t % 6);
        for (int64_t k = 0; k < cols; ++k) {
            switch (style) {
                case ActStyle::Normal: xt[k] = nd(rng); break;
                case ActStyle::Zero: xt[k] = 0.0f; break;
                case ActStyle::Huge: xt[k] = nd(rng) * 1e30f; break;
                case ActStyle::Tiny: xt[k] = nd(rng) * 1e-7f; break;  // absmax < 1e-5: a = 127 / 1e-5
                case ActStyle::Ties: xt[k] = static_cast<float>(ui(rng)) + 0.5f * (k % 2 ? 1.0f : -1.0f); break;
                case ActStyle::Outlier: xt[k] = nd(rng) * (k % 97 == 0 ? 300.0f : 1.0f); break;
            }
        }
        // Ties: absmax exactly 127 makes a == 1, so x * a lands exactly on .5 (round half to even).
        if (style == ActStyle::Ties) xt[cols / 2] = 127.0f;
    }
    return x;
}

// ---- tests --------------------------------------------------------------------------------------
static void test_gguf_vectors() {
    const int64_t rows = 2, cols = 512;
    const float d[2][2] = {{0.012298583984375f, 0.5f}, {2.0f, 7.0f}};
    const auto tq2 = from_hex(kTQ2Hex), tq1 = from_hex(kTQ1Hex);
    CHECK(tq2.size() == 4 * 66, "tq2 vector size %zu", tq2.size());
    CHECK(tq1.size() == 4 * 54, "tq1 vector size %zu", tq1.size());
    for (int which = 0; which < 2; ++which) {
        const TernaryMatrix m = which == 0 ? TernaryMatrix::from_tq2_0(tq2.data(), rows, cols)
                                           : TernaryMatrix::from_tq1_0(tq1.data(), rows, cols);
        int bad = 0;
        for (int64_t r = 0; r < rows; ++r)
            for (int64_t c = 0; c < cols; ++c) bad += m.code(r, c) != kCodes[r * cols + c] - '1';
        CHECK(bad == 0, "%s decode: %d codes differ from gguf", which ? "TQ1_0" : "TQ2_0", bad);
        CHECK(!m.uniform_scale(), "gguf vectors have 3 different nonzero-block scales");
        for (int64_t r = 0; r < rows; ++r)
            for (int64_t b = 0; b < 2; ++b)
                if (!(r == 1 && b == 1))
                    CHECK(m.block_scale(r, b * 256 + 7) == d[r][b], "block scale (%ld,%ld)", long(r), long(b));
    }
    // Our encoders reproduce gguf's bytes exactly, so the random round trips below test gguf's format.
    std::vector<int8_t> q(static_cast<size_t>(rows * cols));
    for (size_t i = 0; i < q.size(); ++i) q[i] = static_cast<int8_t>(kCodes[i] - '1');
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t b = 0; b < 2; ++b) {
            const int8_t* qb = &q[static_cast<size_t>(r * cols + b * 256)];
            const uint16_t dh = (r == 1 && b == 1) ? 0 : f32_to_f16(d[r][b]);
            uint8_t e2[66], e1[54];
            encode_tq2_block(qb, dh, e2);
            encode_tq1_block(qb, dh, e1);
            CHECK(std::memcmp(e2, &tq2[static_cast<size_t>((r * 2 + b) * 66)], 66) == 0, "TQ2_0 encoder block %ld", long(r * 2 + b));
            CHECK(std::memcmp(e1, &tq1[static_cast<size_t>((r * 2 + b) * 54)], 54) == 0, "TQ1_0 encoder block %ld", long(r * 2 + b));
        }
}

static void test_round_trips() {
    for (int64_t rows : {1, 5, 17, 40})
        for (int64_t cols : {256, 768, 2048}) {
            const auto c = random_codes(rows, cols, 0.1);
            const TernaryMatrix a = TernaryMatrix::from_codes(c.data(), rows, cols, 0.25f);
            std::vector<uint8_t> t2(static_cast<size_t>(rows * cols / 256 * 66)), t1(static_cast<size_t>(rows * cols / 256 * 54));
            const uint16_t dh = f32_to_f16(0.25f);
            for (int64_t i = 0; i < rows * cols / 256; ++i) {
                encode_tq2_block(&c[static_cast<size_t>(i * 256)], dh, &t2[static_cast<size_t>(i * 66)]);
                encode_tq1_block(&c[static_cast<size_t>(i * 256)], dh, &t1[static_cast<size_t>(i * 54)]);
            }
            const TernaryMatrix b = TernaryMatrix::from_tq2_0(t2.data(), rows, cols);
            const TernaryMatrix e = TernaryMatrix::from_tq1_0(t1.data(), rows, cols);
            int bad = 0;
            for (int64_t r = 0; r < rows; ++r)
                for (int64_t k = 0; k < cols; ++k) {
                    const int8_t want = c[static_cast<size_t>(r * cols + k)];
                    bad += a.code(r, k) != want || b.code(r, k) != want || e.code(r, k) != want;
                }
            CHECK(bad == 0, "round trip %ldx%ld: %d codes differ", long(rows), long(cols), bad);
            CHECK(a.rows() == rows && a.cols() == cols && b.rows() == rows && e.cols() == cols, "shape");
            CHECK(a.uniform_scale() && b.uniform_scale() && e.uniform_scale(), "uniform");
            CHECK(a.bytes() > 0 && a.bytes() < static_cast<size_t>((rows + 16) * cols), "bytes ~2 bits/weight: %zu", a.bytes());
        }
    // Uniform even though zero blocks carry other d values (bLLaMa export rule).
    const auto c = random_codes(9, 1024, 0.3);
    const auto t2 = to_tq2(c, 9, 1024, [](int64_t, int64_t) { return f32_to_f16(0.125f); });
    const TernaryMatrix m = TernaryMatrix::from_tq2_0(t2.data(), 9, 1024);
    CHECK(m.uniform_scale(), "zero blocks with other d must not break uniform_scale");
}

static void test_bad_shapes() {
    std::vector<uint8_t> buf(66 * 16, 0x55);
    bool threw = false;
    try { (void)TernaryMatrix::from_tq2_0(buf.data(), 2, 300); } catch (const std::invalid_argument&) { threw = true; }
    CHECK(threw, "from_tq2_0 cols %% 256 != 0 must throw");
    threw = false;
    try { (void)TernaryMatrix::from_tq1_0(buf.data(), 2, 128); } catch (const std::invalid_argument&) { threw = true; }
    CHECK(threw, "from_tq1_0 cols %% 256 != 0 must throw");
    threw = false;
    std::vector<uint8_t> bad(66 * 4, 0x55);
    bad[66 * 3 + 17] = 0x5d;  // one field == 3 in the last block
    try { (void)TernaryMatrix::from_tq2_0(bad.data(), 2, 512); } catch (const std::invalid_argument&) { threw = true; }
    CHECK(threw, "from_tq2_0 with a code of 3 must throw");
    threw = false;
    std::vector<int8_t> codes(512, 0);
    try { (void)TernaryMatrix::from_codes(codes.data(), 1, 511, 1.0f); } catch (const std::invalid_argument&) { threw = true; }
    CHECK(threw, "from_codes cols %% 256 != 0 must throw");
}

// bitnet.cpp's I2_S, written the way its quantize_i2_s writes it (element by element over the tensor's values in
// blocks of 128: value j of a block goes to byte j % 32 at shift 6 - 2 (j / 32), as q + 1), then the fp32 scale
// and zero padding to a 32-byte tail. Independent of the word-at-a-time decoder under test.
static std::vector<uint8_t> to_i2_s(const std::vector<int8_t>& c, float scale) {
    std::vector<uint8_t> out(c.size() / 4 + 32, 0);
    for (size_t i = 0; i < c.size(); ++i) {
        const size_t blk = i / 128, j = i % 128;
        out[blk * 32 + j % 32] |= static_cast<uint8_t>((c[i] + 1) << (6 - 2 * (j / 32)));
    }
    std::memcpy(&out[c.size() / 4], &scale, 4);
    return out;
}

static void test_i2_s() {
    // Two bytes checked by hand: byte 0 holds columns 0, 32, 64, 96 (codes +1, -1, 0, +1 -> 2, 0, 1, 2 =
    // 0b10000110); byte 40 holds columns 136, 168, 200, 232 of row 0 (0, 0, -1, 0 -> 0b01010001).
    std::vector<int8_t> hand(512, 0);
    hand[0] = 1, hand[32] = -1, hand[96] = 1, hand[200] = -1;
    const auto hb = to_i2_s(hand, 0.5f);
    CHECK(hb.size() == 512 / 4 + 32 && hb[0] == 0x86 && hb[40] == 0x51, "I2_S hand bytes %02x %02x", hb[0], hb[40]);
    const TernaryMatrix hm = TernaryMatrix::from_i2_s(hb.data(), 2, 256);
    int bad = 0;
    for (int64_t k = 0; k < 512; ++k) bad += hm.code(k / 256, k % 256) != hand[static_cast<size_t>(k)];
    CHECK(bad == 0, "I2_S hand vector: %d codes differ", bad);

    // Random tensors: the same codes and scale as from_codes, so the same matrix (codes, scales, products).
    for (int64_t rows : {1, 5, 17, 40})
        for (int64_t cols : {256, 768, 2560}) {
            const auto c = random_codes(rows, cols, 0.1);
            const float scale = 0.0371f;
            const auto bytes = to_i2_s(c, scale);
            const TernaryMatrix a = TernaryMatrix::from_codes(c.data(), rows, cols, scale);
            const TernaryMatrix b = TernaryMatrix::from_i2_s(bytes.data(), rows, cols);
            int wrong = 0;
            for (int64_t r = 0; r < rows; ++r)
                for (int64_t k = 0; k < cols; ++k) wrong += b.code(r, k) != c[static_cast<size_t>(r * cols + k)];
            CHECK(wrong == 0, "I2_S %ldx%ld: %d codes differ", long(rows), long(cols), wrong);
            CHECK(b.uniform_scale() && b.rows() == rows && b.cols() == cols && b.bytes() == a.bytes(), "I2_S shape/scale");
            const auto x = make_acts(3, cols);
            QuantizedActs qa;
            quantize_acts(x.data(), 3, cols, qa);
            std::vector<float> ya(static_cast<size_t>(3 * rows)), yb(ya.size());
            ternary_matmul(a, qa, ya.data(), rows, 0, rows);
            ternary_matmul(b, qa, yb.data(), rows, 0, rows);
            CHECK(std::memcmp(ya.data(), yb.data(), ya.size() * 4) == 0, "I2_S %ldx%ld: products differ from from_codes",
                  long(rows), long(cols));
        }

    auto throws = [](const std::vector<uint8_t>& d, int64_t rows, int64_t cols) {
        try {
            (void)TernaryMatrix::from_i2_s(d.data(), rows, cols);
        } catch (const std::invalid_argument&) {
            return true;
        }
        return false;
    };
    std::vector<uint8_t> ok = to_i2_s(std::vector<int8_t>(512, 0), 1.0f);
    CHECK(!throws(ok, 2, 256), "a valid all-zero I2_S tensor must load");
    std::vector<uint8_t> bad3 = ok;
    bad3[77] = 0x57;  // one field == 3
    CHECK(throws(bad3, 2, 256), "I2_S with a code of 3 must throw");
    CHECK(throws(ok, 4, 128), "I2_S cols %% 256 != 0 must throw");
    std::vector<uint8_t> nan_scale = ok;
    const float nan = std::nanf("");
    std::memcpy(&nan_scale[128], &nan, 4);
    CHECK(throws(nan_scale, 2, 256), "I2_S with a NaN scale must throw");
}

static void test_quantize() {
    // Hand-checked ties: absmax 127 gives a == 1 exactly ((1/127) * 127 rounds to 1 in fp32).
    {
        std::vector<float> x = {127.0f, 2.5f, 3.5f, -2.5f, -3.5f, 0.5f, 1.5f, -0.5f, 126.5f, -127.0f};
        const int8_t want[] = {127, 2, 4, -2, -4, 0, 2, 0, 126, -127};
        for (KernelKind k : supported_kinds()) {
            QuantizedActs qa;
            quantize_acts(x.data(), 1, static_cast<int64_t>(x.size()), qa, k);
            CHECK(qa.act_scale[0] == 1.0f, "%s a", kernel_name(k));
            CHECK(std::memcmp(qa.q.data(), want, sizeof want) == 0, "%s ties to even", kernel_name(k));
            int s = 0;
            for (int8_t v : want) s += v;
            CHECK(qa.row_sums[0] == s && qa.block_sums[0] == s, "%s sums", kernel_name(k));
        }
        QuantizedActs qa;
        std::vector<float> z(300, 0.0f);
        quantize_acts(z.data(), 1, 300, qa, KernelKind::Scalar);
        CHECK(qa.act_scale[0] == (1.0f / 1e-5f) * 127.0f, "zero row a = (1/1e-5) * 127");
    }
    for (int64_t cols : {1, 7, 63, 64, 100, 256, 1000, 2816, 8192}) {
        const int64_t n = 13;
        const auto x = make_acts(n, cols);
        QuantizedActs ref;
        quantize_ref(x.data(), n, cols, ref);
        // Scalar against the formula written out here once more.
        int bad = 0;
        for (int64_t t = 0; t < n; ++t) {
            float amax = 0;
            for (int64_t k = 0; k < cols; ++k) amax = std::fmax(amax, std::fabs(x[static_cast<size_t>(t * cols + k)]));
            const float a = (1.0f / std::fmax(amax, 1e-5f)) * 127.0f;  // PyTorch's 127.0 / t
            bad += ref.act_scale[static_cast<size_t>(t)] != a;
            for (int64_t k = 0; k < cols; ++k) {
                const float v = std::fmin(std::fmax(std::nearbyint(x[static_cast<size_t>(t * cols + k)] * a), -128.0f), 127.0f);
                bad += ref.q[static_cast<size_t>(t * cols + k)] != static_cast<int8_t>(v);
            }
        }
        CHECK(bad == 0, "scalar quantize vs formula cols=%ld: %d", long(cols), bad);
        for (KernelKind k : supported_kinds()) {
            QuantizedActs qa;
            // Pre-size with junk to check that buffers are reused and fully overwritten.
            qa.q.assign(static_cast<size_t>(n * cols + 5), 99);
            quantize_acts(x.data(), n, cols, qa, k);
            CHECK(qa.n_tokens == n && qa.cols == cols, "%s shape", kernel_name(k));
            CHECK(std::memcmp(qa.q.data(), ref.q.data(), static_cast<size_t>(n * cols)) == 0, "%s q cols=%ld", kernel_name(k), long(cols));
            CHECK(std::memcmp(qa.act_scale.data(), ref.act_scale.data(), static_cast<size_t>(n) * 4) == 0, "%s a cols=%ld", kernel_name(k), long(cols));
            CHECK(qa.block_sums == ref.block_sums && qa.row_sums == ref.row_sums, "%s sums cols=%ld", kernel_name(k), long(cols));
        }
    }
}

// y for one (row, token) straight from code(r, k), with exact int64 sums, in the documented fp32 form;
// also checked against a double evaluation.
static float naive_y(const TernaryMatrix& w, const QuantizedActs& x, int64_t r, int64_t t, float scale, double* dbl) {
    const int64_t cols = w.cols();
    const int8_t* q = x.q.data() + t * cols;
    const float a = x.act_scale[static_cast<size_t>(t)];
    if (w.uniform_scale()) {
        int64_t acc = 0;
        for (int64_t k = 0; k < cols; ++k) acc += static_cast<int64_t>(w.code(r, k)) * q[k];
        *dbl = static_cast<double>(acc) * scale / a;
        return static_cast<float>(acc) * (scale / a);
    }
    float y = 0.0f;
    double yd = 0.0;
    for (int64_t b = 0; b < cols / 256; ++b) {
        int64_t acc = 0;
        for (int64_t k = b * 256; k < (b + 1) * 256; ++k) acc += static_cast<int64_t>(w.code(r, k)) * q[k];
        const float d = w.block_scale(r, b * 256);
        y += static_cast<float>(acc) * (d / a);
        yd += static_cast<double>(acc) * d / a;
    }
    *dbl = yd;
    return y;
}

static void test_scalar_vs_naive() {
    for (bool uniform : {true, false})
        for (int64_t cols : {256, 1280}) {
            const int64_t rows = 19, n = 6;
            const auto c = random_codes(rows, cols, 0.2);
            std::uniform_int_distribution<int> ud(0, 0x5bff);  // positive finite halves
            const auto t2 = to_tq2(c, rows, cols, [&](int64_t, int64_t) { return uniform ? f32_to_f16(0.03125f) : uint16_t(ud(rng)); });
            const TernaryMatrix w = TernaryMatrix::from_tq2_0(t2.data(), rows, cols);
            CHECK(w.uniform_scale() == uniform, "uniform flag");
            const auto x = make_acts(n, cols);
            QuantizedActs qa;
            quantize_ref(x.data(), n, cols, qa);
            std::vector<float> y(static_cast<size_t>(n * rows));
            ternary_matmul_ref(w, qa, y.data(), rows, 0, rows);
            int bad = 0, far = 0;
            for (int64_t t = 0; t < n; ++t)
                for (int64_t r = 0; r < rows; ++r) {
                    double yd;
                    const float want = naive_y(w, qa, r, t, 0.03125f, &yd);
                    const float got = y[static_cast<size_t>(t * rows + r)];
                    bad += std::memcmp(&want, &got, 4) != 0;
                    // fp32 epilogue vs double: a few ulps per block at most.
                    far += std::fabs(got - yd) > 1e-5 * (std::fabs(yd) + 1e-30) * (cols / 256 + 2) && std::fabs(got - yd) > 1e-37;
                }
            CHECK(bad == 0, "scalar vs naive uniform=%d cols=%ld: %d", int(uniform), long(cols), bad);
            CHECK(far == 0, "scalar vs double uniform=%d cols=%ld: %d", int(uniform), long(cols), far);
        }
}

static void test_simd_vs_scalar() {
    int configs = 0;
    for (int64_t cols : {256, 768, 2048, 2816, 8192})
        for (int64_t rows : {1, 3, 17, 63, 100})
            // x86 1-4: streaming decode kernels; 5+: GEMM tiles + tails; AVX2 from 8: the unpacked-block path, whose
            // 4-token tiles end in a tail of 3 (11), 2 (14) or 1 (33). aarch64 (4-token tiles): 7 is a full tile
            // then an odd tail, which i8mm's token pairs cover by pairing the last token with itself.
            for (int64_t n : {1, 2, 3, 4, 5, 7, 11, 14, 16, 33}) {
                if (rows * cols * n > 12'000'000 && !(rows == 100 && n == 1)) continue;
                const bool uniform = (rows + n + cols / 256) % 3 != 0;
                const auto c = random_codes(rows, cols, 0.15);
                std::uniform_int_distribution<int> ud(0x1000, 0x5bff);
                const auto t2 = to_tq2(c, rows, cols, [&](int64_t, int64_t) { return uniform ? f32_to_f16(0.0625f) : uint16_t(ud(rng)); });
                const TernaryMatrix w = TernaryMatrix::from_tq2_0(t2.data(), rows, cols);
                const auto x = make_acts(n, cols);
                QuantizedActs qa;
                quantize_acts(x.data(), n, cols, qa);
                configs += check_kinds_over_ranges(
                    rows, n,
                    "vs scalar: rows=" + std::to_string(rows) + " cols=" + std::to_string(cols) + " n=" + std::to_string(n) +
                        " uniform=" + std::to_string(uniform),
                    [&](float* y, int64_t ldy, int64_t rb, int64_t re) { ternary_matmul_ref(w, qa, y, ldy, rb, re); },
                    [&](KernelKind k, float* y, int64_t ldy, int64_t rb, int64_t re) {
                        ternary_matmul(w, qa, y, ldy, rb, re, k);
                    });
            }
    std::printf("  simd vs scalar: %d configurations x %zu kinds\n", configs, supported_kinds().size());
}

static void test_f16() {
    const auto ks = supported_kinds();
    std::normal_distribution<float> nd(0.0f, 1.0f);
    for (int64_t cols : {16, 100, 256, 2048, 2560})
        for (int64_t rows : {1, 3, 17, 40})
            for (int64_t n : {1, 2, 5, 9}) {
                std::vector<uint16_t> w(static_cast<size_t>(rows * cols));
                for (auto& v : w) v = f32_to_f16(nd(rng) * 0.05f);
                std::vector<float> x(static_cast<size_t>(n * cols));
                for (auto& v : x) v = nd(rng);
                const int64_t ldy = rows + 1;
                std::vector<float> ref(static_cast<size_t>(n * ldy), 3.0f);
                f16_matmul_ref(w.data(), cols, x.data(), n, ref.data(), ldy, 0, rows);
                // Rigorous bound for recursive fp32 summation of n products: |err| <= gamma_n * sum|w x|
                // with gamma_n = n u / (1 - n u), u = 2^-24 (Higham, Accuracy and Stability, 3.1). Any
                // order or FMA use obeys the same bound, so two fp32 results differ by at most twice it.
                int bad_ref = 0, bad_simd = 0;
                std::vector<double> bound(static_cast<size_t>(n * ldy)), exact(static_cast<size_t>(n * ldy));
                for (int64_t t = 0; t < n; ++t)
                    for (int64_t r = 0; r < rows; ++r) {
                        double s = 0, sa = 0;
                        for (int64_t k = 0; k < cols; ++k) {
                            const double p = static_cast<double>(f16_to_f32(w[static_cast<size_t>(r * cols + k)])) * x[static_cast<size_t>(t * cols + k)];
                            s += p;
                            sa += std::fabs(p);
                        }
                        const double u = std::ldexp(1.0, -24), g = cols * u / (1 - cols * u);
                        const size_t i = static_cast<size_t>(t * ldy + r);
                        exact[i] = s;
                        bound[i] = g * sa + 1e-30;
                        bad_ref += std::fabs(ref[i] - s) > bound[i];
                    }
                CHECK(bad_ref == 0, "f16 scalar vs double rows=%ld cols=%ld n=%ld: %d", long(rows), long(cols), long(n), bad_ref);
                for (KernelKind k : ks) {
                    if (k == KernelKind::Scalar) continue;
                    for (auto [rb, re] : {std::pair<int64_t, int64_t>{0, rows}, {rows / 3 | 1, rows}}) {
                        if (rb > rows) continue;
                        std::vector<float> y(static_cast<size_t>(n * ldy), 3.0f);
                        f16_matmul(w.data(), cols, x.data(), n, y.data(), ldy, rb, re, k);
                        for (int64_t t = 0; t < n; ++t)
                            for (int64_t r = 0; r < ldy; ++r) {
                                const size_t i = static_cast<size_t>(t * ldy + r);
                                if (r < rb || r >= re) bad_simd += y[i] != 3.0f;
                                else bad_simd += std::fabs(y[i] - ref[i]) > 2 * bound[i] || std::fabs(y[i] - exact[i]) > bound[i];
                            }
                        CHECK(bad_simd == 0, "f16 %s vs scalar rows=%ld cols=%ld n=%ld: %d", kernel_name(k), long(rows), long(cols), long(n), bad_simd);
                    }
                }
            }
}

// The one table: the Scalar kind is exactly the reference functions, every supported kind fills every
// family, and a kind this CPU/build cannot run is refused rather than silently replaced.
static void test_dispatch_table() {
    const KernelTable& sc = kernel_table(KernelKind::Scalar);
    CHECK(sc.quantize == quantize_rows_ref && sc.ternary_matmul == ternary_matmul_ref && sc.f16_matmul == f16_matmul_ref &&
              sc.q8_head_matmul == q8_head_matmul_ref && sc.attend_f32 == attend_f32_ref &&
              sc.attend_f16 == attend_f16_ref && sc.to_f16 == to_f16_ref && sc.silu_mul == silu_mul_ref &&
              sc.to_f32 == to_f32_ref,
          "the scalar table is the reference");
    CHECK(&kernel_table() == &kernel_table(best_kernel()), "default table is the best kind's");
    for (KernelKind k : kAllKernelKinds) {
        if (!kernel_supported(k)) {
            bool threw = false;
            try {
                kernel_table(k);
            } catch (const std::invalid_argument&) {
                threw = true;
            }
            CHECK(threw, "%s: unsupported kind must throw", kernel_name(k));
            continue;
        }
        const KernelTable& t = kernel_table(k);
        CHECK(t.quantize && t.ternary_matmul && t.f16_matmul && t.q8_head_matmul && t.attend_f32 && t.attend_f16 &&
                  t.to_f16 && t.silu_mul && t.to_f32,
              "%s: every family filled", kernel_name(k));
    }
}

// Matrices packed into a WeightArena hold the same codes and give the same products as matrices that own their
// memory; the arena hands out 64-byte aligned, disjoint pieces, refuses what does not fit (the matrix then owns
// its codes), and its buffer lives as long as any matrix carved from it (ASan, in CI, checks the last use below).
static void test_weight_arena() {
    const int64_t rows = 40, cols = 512;  // 3 groups of 16 rows: 6144 bytes of 2-bit codes, base-3 fewer
    const auto c = random_codes(rows, cols);
    const auto tq2 = to_tq2(c, rows, cols, [](int64_t, int64_t) { return uint16_t(0x3c00); });
    CHECK(TernaryMatrix::packed_bytes(rows, cols, TernaryLayout::TwoBit) == 3 * 512 * 4, "2-bit packed bytes");
    CHECK(TernaryMatrix::packed_bytes(rows, 300, TernaryLayout::TwoBit) == 0, "no such shape: 0 bytes");
    const auto x_f = make_acts(3, cols);
    QuantizedActs x;
    quantize_acts(x_f.data(), 3, cols, x, KernelKind::Scalar);
    std::vector<float> want(static_cast<size_t>(3 * rows)), got(want.size());
    const TernaryMatrix own = TernaryMatrix::from_tq2_0(tq2.data(), rows, cols);
    ternary_matmul(own, x, want.data(), rows, 0, rows);
    std::vector<TernaryMatrix> carved;
    {
        WeightArena arena(2 * TernaryMatrix::packed_bytes(rows, cols, TernaryLayout::TwoBit) + 100);
        CHECK(arena.size() % kHugePage == 0 && arena.size() > 0, "arena rounded to huge pages");
        uint8_t* odd = arena.take(1);  // a 1-byte piece still takes a whole aligned line
        CHECK(odd && reinterpret_cast<uintptr_t>(odd) % 64 == 0 && arena.used() == 64, "aligned pieces");
        carved.push_back(TernaryMatrix::from_tq2_0(tq2.data(), rows, cols, &arena));
        carved.push_back(TernaryMatrix::from_tq2_0(tq2.data(), rows, cols, &arena));
        CHECK(arena.used() == 64 + 2 * 6144, "two matrices carved");
        CHECK(arena.take(arena.size()) == nullptr, "an arena without room refuses");
        WeightArena tiny(1);
        uint8_t* all = tiny.take(tiny.size());
        CHECK(all != nullptr && tiny.take(64) == nullptr, "full arena");
        carved.push_back(TernaryMatrix::from_tq2_0(tq2.data(), rows, cols, &tiny));  // falls back to its own memory
    }  // the arenas' objects are gone; their buffers are not
    for (const TernaryMatrix& m : carved) {
        for (int64_t r = 0; r < rows; r += 7)
            for (int64_t k = 0; k < cols; k += 37) CHECK(m.code(r, k) == own.code(r, k), "same codes");
        ternary_matmul(m, x, got.data(), rows, 0, rows);
        CHECK(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)) == 0, "same products");
    }
}

int main() {
    std::printf("kernels supported:");
    for (KernelKind k : supported_kinds()) std::printf(" %s", kernel_name(k));
    std::printf(" (best: %s)\n", kernel_name(best_kernel()));
    struct { const char* name; void (*fn)(); } tests[] = {
        {"gguf_vectors", test_gguf_vectors}, {"round_trips", test_round_trips}, {"bad_shapes", test_bad_shapes},
        {"i2_s", test_i2_s},
        {"quantize", test_quantize},         {"scalar_vs_naive", test_scalar_vs_naive},
        {"simd_vs_scalar", test_simd_vs_scalar}, {"f16", test_f16},
        {"dispatch_table", test_dispatch_table}, {"weight_arena", test_weight_arena},
    };
    for (auto& t : tests) {
        const int before = g_failures;
        try {
            t.fn();
        } catch (const std::exception& e) {
            ++g_failures;
            std::fprintf(stderr, "FAIL %s: exception %s\n", t.name, e.what());
        }
        std::printf("%-16s %s\n", t.name, g_failures == before ? "ok" : "FAILED");
    }
    std::printf("%d checks, %d failures\n", g_checks, g_failures);
    return g_failures ? 1 : 0;
}

// The SIMD attention heads equal the portable one (to float rounding, the exp approximation
// included) for head sizes and lengths that exercise every tail path.
#include <cmath>
#include <cstdio>
#include <algorithm>
#include <cstring>
#include <random>
#include <vector>

#include "gguf_test_writer.h"
#include "kernels/dispatch.h"
#include "kernels/ref.h"

using namespace bllama;

int main() {
    std::mt19937 rng(3);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    int checked = 0;
    for (KernelKind kind : kAllKernelKinds) {
        if (kind == KernelKind::Scalar) continue;  // the reference itself
        if (!kernel_supported(kind)) {
            std::printf("  %s: not supported here, skipped\n", kernel_name(kind));
            continue;
        }
        const KernelTable& ak = kernel_table(kind);
        for (int64_t hd : {6, 8, 64, 72, 80, 128, 256}) {
            for (int64_t len : {1, 2, 7, 16, 17, 33, 300}) {
                const int64_t stride = hd * 3 + 8;  // a row of several kv heads
                std::vector<float> q(hd), k(len * stride), v(len * stride), sc(len), want(hd), got(hd);
                for (auto& x : q) x = 3.0f * normal(rng);
                for (auto& x : k) x = normal(rng);
                for (auto& x : v) x = normal(rng);
                const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
                attend_f32_ref(q.data(), k.data() + 5, v.data() + 5, stride, len, hd, scale, sc.data(), want.data());
                ak.attend_f32(q.data(), k.data() + 5, v.data() + 5, stride, len, hd, scale, sc.data(), got.data());
                double err = 0;
                for (int64_t i = 0; i < hd; ++i) err = std::max(err, double(std::fabs(got[i] - want[i])));
                // fp16 cache: the SIMD conversion equals the portable one bit for bit, and the head
                // over the fp16 values matches the portable fp16 head.
                std::vector<uint16_t> k16(k.size()), v16(v.size()), k16s(k.size());
                ak.to_f16(k.data(), k16.data(), static_cast<int64_t>(k.size()));
                ak.to_f16(v.data(), v16.data(), static_cast<int64_t>(v.size()));
                to_f16_ref(k.data(), k16s.data(), static_cast<int64_t>(k.size()));
                CHECK(k16 == k16s);
                std::vector<float> want16(hd), got16(hd);
                attend_f16_ref(q.data(), k16.data() + 5, v16.data() + 5, stride, len, hd, scale, sc.data(),
                               want16.data());
                ak.attend_f16(q.data(), k16.data() + 5, v16.data() + 5, stride, len, hd, scale, sc.data(),
                              got16.data());
                for (int64_t i = 0; i < hd; ++i) err = std::max(err, double(std::fabs(got16[i] - want16[i])));
                if (err > 1e-5) std::fprintf(stderr, "  %s hd %lld len %lld: err %.3g\n", kernel_name(kind),
                                             (long long)hd, (long long)len, err);
                CHECK(err <= 1e-5);
                ++checked;
            }
        }
    }
    // fp16 -> fp32 is exact, so every kind converts every non-NaN half the same way; and a head over fp16 keys and
    // values equals the head over their fp32 copies, bit for bit (Model::attend_rows relies on both).
    for (KernelKind kind : kAllKernelKinds) {
        if (!kernel_supported(kind)) continue;
        const KernelTable& ak = kernel_table(kind);
        std::vector<uint16_t> all(65536);
        for (int i = 0; i < 65536; ++i) all[static_cast<size_t>(i)] = static_cast<uint16_t>(i);
        std::vector<float> want(65536), got(65536);
        to_f32_ref(all.data(), want.data(), 65536);
        ak.to_f32(all.data() + 3, got.data() + 3, 65533);  // an odd start and length: the tails too
        to_f32_ref(all.data(), got.data(), 3);
        int differ = 0;
        for (int i = 0; i < 65536; ++i)
            if (!std::isnan(want[static_cast<size_t>(i)]) && std::memcmp(&want[static_cast<size_t>(i)], &got[static_cast<size_t>(i)], 4) != 0) ++differ;
        CHECK(differ == 0);
        for (int64_t hd : {64, 72, 128}) {
            const int64_t len = 37, stride = hd * 2;
            std::vector<float> q(hd), kv(len * stride), k32(len * hd), v32(len * hd), sc(len), a(hd), b(hd);
            std::vector<uint16_t> k16(len * stride), v16(len * stride);
            for (auto& x : q) x = normal(rng);
            for (auto& x : kv) x = normal(rng);
            to_f16_ref(kv.data(), k16.data(), len * stride);
            for (auto& x : kv) x = normal(rng);
            to_f16_ref(kv.data(), v16.data(), len * stride);
            for (int64_t j = 0; j < len; ++j) {
                ak.to_f32(k16.data() + j * stride, k32.data() + j * hd, hd);
                ak.to_f32(v16.data() + j * stride, v32.data() + j * hd, hd);
            }
            ak.attend_f16(q.data(), k16.data(), v16.data(), stride, len, hd, 0.125f, sc.data(), a.data());
            ak.attend_f32(q.data(), k32.data(), v32.data(), hd, len, hd, 0.125f, sc.data(), b.data());
            CHECK(std::memcmp(a.data(), b.data(), hd * sizeof(float)) == 0);
        }
    }
    // Grouped heads (Model::attend_rows: decode) and many vectors over one fp32 copy (prompt chunks): every kind's
    // attend_group_f16 and attend_many_f32 give each vector exactly the bits of its own attend_f16 / attend_f32
    // alone, for counts that take every block of the AVX2 kernel (4 + a remainder), head sizes on and off its
    // hd % 16 path and lengths that differ within a block; scores must be only heads * len (4 * max len) floats.
    for (KernelKind kind : kAllKernelKinds) {
        if (!kernel_supported(kind)) continue;
        const KernelTable& ak = kernel_table(kind);
        for (int64_t heads : {1, 2, 3, 4, 5, 8}) {
            for (int64_t hd : {16, 64, 72, 128}) {
                for (int64_t len : {1, 9, 40, 301}) {
                    const int64_t stride = hd * 2 + 16;
                    std::vector<float> q(heads * hd), kv(len * stride), sc(heads * len), sc1(len);
                    std::vector<float> want(heads * hd), got(heads * hd, -1.0f);
                    std::vector<uint16_t> k16(len * stride), v16(len * stride);
                    for (auto& x : q) x = 3.0f * normal(rng);
                    for (auto& x : kv) x = normal(rng);
                    ak.to_f16(kv.data(), k16.data(), len * stride);
                    for (auto& x : kv) x = normal(rng);
                    ak.to_f16(kv.data(), v16.data(), len * stride);
                    for (int64_t h = 0; h < heads; ++h)
                        ak.attend_f16(q.data() + h * hd, k16.data() + 3, v16.data() + 3, stride, len, hd, 0.125f,
                                      sc1.data(), want.data() + h * hd);
                    ak.attend_group_f16(q.data(), heads, k16.data() + 3, v16.data() + 3, stride, len, hd, 0.125f,
                                        sc.data(), got.data());
                    bool same = std::memcmp(want.data(), got.data(), want.size() * sizeof(float)) == 0;
                    if (!same)
                        std::fprintf(stderr, "  %s grouped heads %lld hd %lld len %lld differ from one at a time\n",
                                     kernel_name(kind), (long long)heads, (long long)hd, (long long)len);
                    CHECK(same);
                    // The fp32 form (a prompt chunk's copy of the keys and values), on the same values widened:
                    // `heads` vectors as consecutive prompt rows, each seeing one more key than the one before.
                    std::vector<float> k32(len * stride), v32(len * stride), sc4(4 * len);
                    ak.to_f32(k16.data(), k32.data(), len * stride);
                    ak.to_f32(v16.data(), v32.data(), len * stride);
                    std::vector<const float*> qs(heads);
                    std::vector<float*> os(heads);
                    std::vector<int64_t> lens(heads);
                    const int64_t first = std::max<int64_t>(1, len - heads);
                    for (int64_t h = 0; h < heads; ++h) {
                        qs[h] = q.data() + h * hd;
                        os[h] = got.data() + h * hd;
                        lens[h] = std::min(len, first + h);  // rising; equal where len runs out (len 1)
                        ak.attend_f32(qs[h], k32.data() + 3, v32.data() + 3, stride, lens[h], hd, 0.125f, sc1.data(),
                                      want.data() + h * hd);
                    }
                    std::fill(got.begin(), got.end(), -1.0f);
                    ak.attend_many_f32(qs.data(), lens.data(), heads, k32.data() + 3, v32.data() + 3, stride, hd,
                                       0.125f, sc4.data(), os.data());
                    same = std::memcmp(want.data(), got.data(), want.size() * sizeof(float)) == 0;
                    if (!same)
                        std::fprintf(stderr, "  %s attend_many_f32 %lld vectors hd %lld len %lld differ from one at a time\n",
                                     kernel_name(kind), (long long)heads, (long long)hd, (long long)len);
                    CHECK(same);
                    checked += 2;
                }
            }
        }
    }
    // Extreme scores: one key dominates completely (exp underflow must give 0, not NaN).
    if (kernel_supported(KernelKind::Avx512Vnni) || kernel_supported(KernelKind::Avx2) || kernel_supported(KernelKind::Neon)) {
        const int64_t hd = 64, len = 40;
        std::vector<float> q(hd, 0.0f), k(len * hd, 0.0f), v(len * hd), sc(len), out(hd);
        q[0] = 1000.0f;
        k[7 * hd] = 1000.0f;
        for (int64_t i = 0; i < len * hd; ++i) v[i] = static_cast<float>(i / hd);
        kernel_table().attend_f32(q.data(), k.data(), v.data(), hd, len, hd, 0.125f, sc.data(), out.data());
        for (float x : out) CHECK(x == 7.0f);
    }
    if (testutil::failures()) {
        std::fprintf(stderr, "test_attention: %d failure(s)\n", testutil::failures());
        return 1;
    }
    std::printf("test_attention: ok (%d cases)\n", checked);
    return 0;
}

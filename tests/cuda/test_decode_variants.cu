// The decode-step experiments of issue #18 (CudaOptions fused_argmax and
// CudaModel::decode_steps, all off by default) against the default path, on a small random model. The GPU script
// (bench/gpu_check.sh, section "vcheck") runs this before any timing.
//   - fused_argmax (greedy token inside the head kernel): the same tokens and bit-identical logits;
//   - decode_steps(K): exactly the tokens of K decode_step calls, K = 1, 5, 8, batch 1 and 3, with and without
//     the fused argmax;
//   - (a variant whose logits may move within fp32 rounding is compared with a tolerance: 1e-4 of the largest
//     logit; none is listed now, see bench/NOTES-cuda.md for the attention-split variant that was withdrawn.)
// Steps are teacher-forced: after each step the variant is given the default path's token, so one near-tie
// cannot make the two sequences (and every later comparison) diverge. Exits 77 (skipped) without a GPU.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "check_msg.h"
#include "cuda/cuda_model.h"
#include "random_gguf.h"

using namespace bllama;
using namespace bllama::cuda;

namespace {

const bench::Shape kShape{"test", 512, 256, 2, 4, 2, 512, 256, false, 10000.0f};

std::vector<int32_t> make_ids(int n, int salt, int V) {
    std::vector<int32_t> v(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) v[static_cast<size_t>(i)] = static_cast<int32_t>((i * 7919 + 13 + salt * 104729) % V);
    return v;
}

struct Variant {
    const char* name;
    bool argmax, kv_f16;
    bool exact;  // bit-identical logits expected
};

std::unique_ptr<CudaModel> make(const GgufFile& f, const Variant& v, int slots, bool graphs) {
    CudaOptions o;
    o.slots = slots;
    o.graphs = graphs;
    o.kv_f16 = v.kv_f16;
    o.fused_argmax = v.argmax;
    return std::make_unique<CudaModel>(f, o);
}

void start(CudaModel& m, int B, int prompt_len, const SamplingParams& sp) {
    const int V = static_cast<int>(kShape.vocab);
    for (int b = 0; b < B; ++b) {
        const auto p = make_ids(prompt_len + 7 * b, 11 + b, V);
        m.begin_sequence(b, p, sp);
        m.prefill(b, p.data(), static_cast<int64_t>(p.size()), 0, nullptr);
        m.sample_after_prefill(b, static_cast<int64_t>(p.size()));
    }
}

void test_variant(const GgufFile& f, const Variant& v) {
    const int V = static_cast<int>(kShape.vocab), steps = 40;
    SamplingParams greedy;  // greedy, no repetition penalty: the case fused_argmax serves
    for (bool graphs : {true, false})
        for (int B : {1, 3}) {
            Variant base_v{"default", false, v.kv_f16, true};
            auto base = make(f, base_v, 3, graphs);
            auto var = make(f, v, 3, graphs);
            start(*base, B, 100, greedy);
            start(*var, B, 100, greedy);
            std::vector<int32_t> ta(static_cast<size_t>(B)), tb(ta.size());
            std::vector<float> la(static_cast<size_t>(B) * V), lb(la.size());
            int tok_diff = 0, bad_steps = 0, first_bad = -1;
            double worst = 0;
            for (int i = 0; i < steps; ++i) {
                base->decode_step(B, ta.data());
                var->decode_step(B, tb.data());
                base->download_logits(B, la.data());
                var->download_logits(B, lb.data());
                bool bad;
                if (v.exact) {
                    bad = std::memcmp(la.data(), lb.data(), la.size() * 4) != 0 || ta != tb;
                } else {
                    float amax = 0, dmax = 0;
                    for (size_t k = 0; k < la.size(); ++k) {
                        amax = std::max(amax, std::fabs(la[k]));
                        dmax = std::max(dmax, std::fabs(la[k] - lb[k]));
                        if (!std::isfinite(lb[k])) dmax = INFINITY;
                    }
                    worst = std::max(worst, static_cast<double>(dmax / amax));
                    bad = !(dmax <= 1e-4f * amax);
                }
                tok_diff += ta != tb;
                if (bad && first_bad < 0) first_bad = i;
                bad_steps += bad;
                for (int b = 0; b < B; ++b)  // teacher forcing: the variant continues from the default's token
                    if (ta[static_cast<size_t>(b)] != tb[static_cast<size_t>(b)])
                        var->set_pending(b, ta[static_cast<size_t>(b)], base->pending_pos(b));
            }
            CHECK(bad_steps == 0, "%s (graphs %d, B=%d): %d of %d steps differ (first %d; worst relative logit diff %.2e, "
                  "%d token differences)", v.name, graphs, B, bad_steps, steps, first_bad, worst, tok_diff);
            if (graphs && B == 1)
                std::printf("%s: %s; worst relative logit difference %.2e, %d of %d tokens differ (teacher-forced)\n",
                            v.name, v.exact ? "bit-identical expected" : "tolerance 1e-4", worst, tok_diff, steps);
        }
}

void test_decode_steps(const GgufFile& f) {
    for (bool argmax : {false, true})
        for (int B : {1, 3})
            for (int K : {1, 5, 8}) {
                Variant base_v{"default", false, false, true};
                Variant kv{"decode_steps", argmax, false, true};
                auto base = make(f, base_v, 3, true);
                auto var = make(f, kv, 3, true);
                SamplingParams greedy;
                start(*base, B, 60, greedy);
                start(*var, B, 60, greedy);
                const int rounds = 3;
                std::vector<int32_t> want, got(static_cast<size_t>(K) * B), one(static_cast<size_t>(B));
                for (int i = 0; i < rounds * K; ++i) {
                    base->decode_step(B, one.data());
                    want.insert(want.end(), one.begin(), one.end());
                }
                int diff = 0;
                for (int r = 0; r < rounds; ++r) {
                    var->decode_steps(B, K, got.data());
                    for (size_t k = 0; k < got.size(); ++k) diff += got[k] != want[static_cast<size_t>(r) * got.size() + k];
                }
                CHECK(diff == 0, "decode_steps K=%d B=%d argmax %d: %d of %d tokens differ from single steps", K, B, argmax,
                      diff, rounds * K * B);
                CHECK(var->pending_pos(0) == base->pending_pos(0), "decode_steps K=%d: position %lld, want %lld", K,
                      static_cast<long long>(var->pending_pos(0)), static_cast<long long>(base->pending_pos(0)));
            }
}

}  // namespace

int main() {
    if (device_count() == 0) {
        std::printf("SKIP: %s\n", device_description());
        return 77;
    }
    std::printf("%s\n", device_description());
    const std::string path = "/tmp/bllama_test_decode_variants_" + std::to_string(getpid()) + ".gguf";
    try {
        bench::write_model(kShape, false, path);
        const GgufFile file = GgufFile::open(path);
        const Variant variants[] = {
            {"fused_argmax", true, false, true},
            {"fused_argmax fp16 KV", true, true, true},
        };
        for (const Variant& v : variants) test_variant(file, v);
        test_decode_steps(file);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "FAIL: exception: %s\n", e.what());
        ++g_failures;
    }
    unlink(path.c_str());
    std::printf("%d checks, %d failures\n", g_checks, g_failures);
    return g_failures ? 1 : 0;
}

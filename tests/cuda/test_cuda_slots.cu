// Continuous batching on the CUDA backend (engine/slots.h over csrc/cuda/cuda_backend.cu) on a small random model:
// requests with mixed sampling settings (seeded sampling, greedy with and without a repetition penalty, logprobs)
// share steps, and a request joining a running batch gets exactly the tokens and logprobs it gets alone in the
// slots (each slot samples on the host with its own Sampler; the device's batched decode rows and chunked prompt
// logits are bit-identical to one-at-a-time runs, tests/cuda/test_cuda_model.cu). Greedy requests also equal
// Engine::generate on the GPU (its device sampler agrees with the host's argmax). Exits 77 (ctest: skipped)
// without a GPU.
#include <unistd.h>

#include <cstdio>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "random_gguf.h"
#include "check_msg.h"
#include "engine/engine.h"

using namespace bllama;

namespace {

// vocab, D, layers, heads, kv heads, FFN, context: test_cuda_model.cu's shape with room for a 600-token prompt.
const bench::Shape kShape{"test", 512, 256, 2, 4, 2, 512, 1024, false, 10000.0f};

std::vector<int32_t> make_ids(int n, int salt, int V) {
    std::vector<int32_t> v(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) v[static_cast<size_t>(i)] = static_cast<int32_t>((i * 7919 + 13 + salt * 104729) % V);
    return v;
}

Engine make_engine(const std::string& path, int sequences) {
    LoadOptions o;
    o.device = Device::Cuda;
    o.sequences = sequences;
    o.kv_f16 = false;
    o.head = HeadType::F16;
    return Engine(make_cuda_backend(path, o));
}

struct Req {
    std::vector<int32_t> prompt;
    int64_t max_new;
    SamplingParams p;
    int top;  // logprob alternatives, -1: none
};

struct Got {
    std::vector<int32_t> tokens;
    std::vector<TokenLogprobs> lps;
};

SamplingParams sampled(uint64_t seed, float temperature, int top_k, float top_p) {
    SamplingParams p;
    p.do_sample = true, p.temperature = temperature, p.top_k = top_k, p.top_p = top_p, p.seed = seed;
    return p;
}

// Runs reqs through e's slots: `start` of them at step 0, the rest one per step from step 2 while a slot is free.
std::vector<Got> run(Engine& e, const std::vector<Req>& reqs, size_t start) {
    Slots& slots = e.slots();
    std::vector<Got> got(reqs.size());
    std::map<int, size_t> req_of;
    size_t added = 0;
    auto add = [&]() {
        const Req& r = reqs[added];
        req_of[slots.add(SlotRequest{r.prompt, r.max_new, r.p, {}, r.top >= 0, r.top > 0 ? r.top : 0})] = added++;
    };
    for (int step = 0; step < 2000 && (added < reqs.size() || slots.active() > 0); ++step) {
        if (step == 0)
            while (added < start) add();
        if (step >= 2 && added < reqs.size() && slots.active() < slots.capacity()) add();
        for (const SlotEvent& ev : slots.step()) {
            Got& g = got[req_of.at(ev.slot)];
            if (ev.token >= 0) g.tokens.push_back(ev.token);
            if (ev.has_logprob) g.lps.push_back(ev.logprobs);
        }
    }
    CHECK(added == reqs.size() && slots.active() == 0, "the slots never went idle");
    return got;
}

void test_joining_requests_equal_their_solo_runs(const std::string& path) {
    const int V = static_cast<int>(kShape.vocab);
    SamplingParams penalty;
    penalty.repetition_penalty = 1.3f;
    const std::vector<Req> reqs = {
        {make_ids(40, 1, V), 24, sampled(11, 0.9f, 40, 0.95f), 3},
        {make_ids(5, 2, V), 20, penalty, -1},
        {make_ids(600, 3, V), 12, sampled(12345, 1.3f, 0, 1.0f), -1},  // two prompt chunks (max_batch 512)
        {make_ids(9, 4, V), 16, SamplingParams{}, 2},
        {make_ids(3, 5, V), 10, sampled(7, 0.7f, 5, 0.8f), -1},        // joins when a slot frees
        {make_ids(17, 6, V), 14, SamplingParams{}, -1},
    };
    std::vector<Got> alone;
    for (const Req& r : reqs) {
        Engine solo = make_engine(path, 1);
        alone.push_back(run(solo, {r}, 1)[0]);
    }
    Engine e = make_engine(path, 4);
    const std::vector<Got> together = run(e, reqs, 2);
    for (size_t i = 0; i < reqs.size(); ++i) {
        CHECK(together[i].tokens == alone[i].tokens, "request %zu: other tokens in a batch than alone", i);
        CHECK(together[i].tokens.size() == static_cast<size_t>(reqs[i].max_new), "request %zu: %zu tokens", i,
              together[i].tokens.size());
        CHECK(together[i].lps.size() == (reqs[i].top >= 0 ? together[i].tokens.size() : 0), "request %zu: logprobs", i);
        bool same_lp = together[i].lps.size() == alone[i].lps.size();
        for (size_t k = 0; same_lp && k < together[i].lps.size(); ++k)
            same_lp = together[i].lps[k].logprob == alone[i].lps[k].logprob && together[i].lps[k].top == alone[i].lps[k].top;
        CHECK(same_lp, "request %zu: other logprobs in a batch than alone", i);
    }
    // Greedy requests: the host's argmax equals the device sampler's, so Engine::generate agrees.
    for (size_t i : {size_t{1}, size_t{3}, size_t{5}}) {
        Engine g = make_engine(path, 1);
        const auto want = g.generate(reqs[i].prompt, reqs[i].max_new, reqs[i].p);
        CHECK(together[i].tokens == want, "greedy request %zu: slots and generate() differ", i);
    }
    // A seeded request again in the same engine (another slot, the others' caches left behind): the same draws.
    const std::vector<Got> again = run(e, {reqs[0], reqs[2]}, 2);
    CHECK(again[0].tokens == alone[0].tokens && again[1].tokens == alone[2].tokens, "seeded requests do not replay");
}

}  // namespace

int main() {
    if (cuda_device_count() == 0) {
        std::printf("SKIP: %s\n", cuda_device_description().c_str());
        return 77;
    }
    std::printf("%s\n", cuda_device_description().c_str());
    const std::string path = "/tmp/bllama_test_cuda_slots_" + std::to_string(getpid()) + ".gguf";
    try {
        bench::write_model(kShape, false, path);
        test_joining_requests_equal_their_solo_runs(path);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "FAIL: exception: %s\n", e.what());
        ++g_failures;
    }
    unlink(path.c_str());
    std::printf("%d checks, %d failures\n", g_checks, g_failures);
    return g_failures ? 1 : 0;
}

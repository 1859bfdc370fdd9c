// The fused attention job (csrc/cpu/forward.cpp: q/k/v, rope, the KV-cache write and attention in one chunk per kv
// head, used where there are >= 4 kv heads per thread) gives bit-identical logits to the split path (projections by
// rows, then rope, cache writes and attention as separate steps): a model with 8 kv heads runs fused on 1 and 2
// threads and split on 3 and 5. Prompts in several chunks (the GEMM paths, causal attention inside a chunk), decode
// steps, and forward_batch over sequences at different positions; fp32 and fp16 KV caches; grouped and plain
// heads. test_model checks the fused path against the scalar reference (its 4-kv-head model on one thread).
#include <cstdio>
#include <cstring>
#include <string>
#include <unistd.h>
#include <vector>

#include "check_msg.h"
#include "cpu/model.h"
#include "random_gguf.h"

using namespace bllama;

namespace {

std::vector<float> run(const std::string& path, int threads, bool kv_f16) {
    LoadOptions o;
    o.threads = threads;
    o.kv_f16 = kv_f16;
    o.head = HeadType::F16;
    o.max_context = 48;
    o.max_batch = 8;
    o.sequences = 3;
    auto m = Model::load(path, o);
    const int64_t V = m->config().vocab;
    std::vector<float> all, lg(static_cast<size_t>(20 * V));
    std::vector<int32_t> ids(20);
    for (int i = 0; i < 20; ++i) ids[static_cast<size_t>(i)] = static_cast<int32_t>((i * 7919 + 13) % V);
    m->forward(ids.data(), 20, 0, lg.data(), true);  // chunks of 8, 8, 4
    all.insert(all.end(), lg.begin(), lg.end());
    int32_t tok = 5;
    for (int s = 0; s < 5; ++s) {
        m->forward(&tok, 1, 20 + s, lg.data(), false);
        all.insert(all.end(), lg.begin(), lg.begin() + V);
        tok = static_cast<int32_t>((tok * 31 + 7) % V);
    }
    for (int sq = 1; sq < 3; ++sq) m->forward(ids.data(), 5 + sq, 0, lg.data(), false, sq);
    int32_t toks[3] = {1, 2, 3};
    int64_t pos[3] = {25, 6, 7};
    for (int s = 0; s < 3; ++s) {
        m->forward_batch(toks, pos, nullptr, 3, lg.data());
        all.insert(all.end(), lg.begin(), lg.begin() + 3 * V);
        for (auto& p : pos) ++p;
    }
    return all;
}

}  // namespace

int main() {
    // name, vocab, dim, layers, heads, kv heads, ffn, context, relu2, theta; head size 64.
    const bench::Shape shapes[] = {
        {"gqa", 300, 1024, 2, 16, 8, 512, 48, false, 10000.0f},
        {"mha", 260, 512, 2, 8, 8, 768, 48, true, 500000.0f},
    };
    for (const bench::Shape& s : shapes) {
        const std::string path = "test_fused_attention_" + std::to_string(getpid()) + "_" + s.name + ".gguf";
        bench::write_model(s, false, path);
        for (bool kv_f16 : {false, true}) {
            const auto fused1 = run(path, 1, kv_f16);
            for (int threads : {2, 3, 5}) {  // 2: fused; 3 and 5: split (8 kv heads < 4 per thread)
                const auto other = run(path, threads, kv_f16);
                CHECK(other.size() == fused1.size() &&
                          std::memcmp(other.data(), fused1.data(), fused1.size() * sizeof(float)) == 0,
                      "%s, %s KV: %d threads differ from 1", s.name, kv_f16 ? "fp16" : "fp32", threads);
            }
        }
        std::remove(path.c_str());
    }
    std::printf("%d checks, %d failures\n", g_checks, g_failures);
    return g_failures ? 1 : 0;
}

// A random bitnet GGUF of real shapes (TQ2_0 or TQ1_0 codes, f16 tied embedding, norms near 1), streamed
// to disk so that a 2B-parameter file needs no more memory than one tensor: the model file of the engine
// benchmarks (bench_decode on the CPU, bench_cuda_decode on the GPU).
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "gguf_writer.h"
#include "kernels/half.h"

namespace bllama {
namespace bench {

struct Shape {
    const char* name;
    int64_t vocab, dim, layers, heads, kv_heads, ffn, context;
    bool relu2;
    float theta;
};
inline const Shape kShapes[] = {
    {"1.7b", 32000, 2048, 24, 16, 16, 8192, 1024, false, 10000.0f},
    {"2b4t", 128256, 2560, 30, 20, 5, 6912, 4096, true, 500000.0f},
    // bLlamaConfig.preset("small", vocab_size=2048): the model bench/serve_throughput.py serves (compute-bound:
    // its weights fit in cache, so its prompt speed is the serving benchmark's time to first token)
    {"small", 2048, 512, 8, 8, 8, 1536, 512, false, 10000.0f},
};

struct Rng {  // xorshift64*: fast enough to fill a gigabyte of codes
    uint64_t s;
    uint64_t next() {
        s ^= s >> 12, s ^= s << 25, s ^= s >> 27;
        return s * 0x2545F4914F6CDD1Dull;
    }
};

inline void write_model(const Shape& s, bool tq1, const std::string& path) {
    testutil::GgufBuilder w;
    w.string("general.architecture", "bitnet");
    w.u32("bitnet.context_length", static_cast<uint32_t>(s.context));
    w.u32("bitnet.embedding_length", static_cast<uint32_t>(s.dim));
    w.u32("bitnet.block_count", static_cast<uint32_t>(s.layers));
    w.u32("bitnet.feed_forward_length", static_cast<uint32_t>(s.ffn));
    w.u32("bitnet.attention.head_count", static_cast<uint32_t>(s.heads));
    w.u32("bitnet.attention.head_count_kv", static_cast<uint32_t>(s.kv_heads));
    w.f32("bitnet.attention.layer_norm_rms_epsilon", 1e-5f);
    w.f32("bitnet.rope.freq_base", s.theta);
    w.u32("bitnet.vocab_size", static_cast<uint32_t>(s.vocab));
    w.string("bllama.activation", s.relu2 ? "relu2" : "silu");
    w.boolean("bllama.tie_embeddings", true);
    const uint32_t tq = tq1 ? 34 : 35;
    const uint64_t blk = tq1 ? 54 : 66;
    auto add = [&](const std::string& n, std::vector<uint64_t> dims, uint32_t type, uint64_t nbytes) {
        w.tensor_streamed(n, std::move(dims), type, nbytes);
    };
    const uint64_t D = s.dim, F = s.ffn, KV = s.dim / s.heads * s.kv_heads, V = s.vocab;
    add("token_embd.weight", {D, V}, 1, D * V * 2);
    add("output_norm.weight", {D}, 0, D * 4);
    for (int64_t l = 0; l < s.layers; ++l) {
        const std::string p = "blk." + std::to_string(l) + ".";
        for (const char* n : {"attn_norm", "attn_sub_norm", "ffn_norm"}) add(p + n + ".weight", {D}, 0, D * 4);
        add(p + "ffn_sub_norm.weight", {F}, 0, F * 4);
        add(p + "attn_q.weight", {D, D}, tq, D * D / 256 * blk);
        add(p + "attn_k.weight", {D, KV}, tq, D * KV / 256 * blk);
        add(p + "attn_v.weight", {D, KV}, tq, D * KV / 256 * blk);
        add(p + "attn_output.weight", {D, D}, tq, D * D / 256 * blk);
        add(p + "ffn_gate.weight", {D, F}, tq, D * F / 256 * blk);
        add(p + "ffn_up.weight", {D, F}, tq, D * F / 256 * blk);
        add(p + "ffn_down.weight", {F, D}, tq, F * D / 256 * blk);
    }
    // Valid code bytes: TQ2_0 four 2-bit codes in {0,1,2}; TQ1_0 any byte decodes to valid trits.
    uint8_t tq2_bytes[81];
    for (int i = 0; i < 81; ++i) tq2_bytes[i] = static_cast<uint8_t>(i % 3 | (i / 3 % 3) << 2 | (i / 9 % 3) << 4 | (i / 27) << 6);
    Rng rng{0x1234567u};
    w.write(path, [&](const std::string&, uint32_t type, uint64_t nbytes, uint8_t* out) {
        if (type == 0) {  // norms near 1
            for (uint64_t i = 0; i < nbytes / 4; ++i) {
                const float v = 0.8f + (rng.next() >> 40) * (0.4f / 16777216.0f);
                std::memcpy(out + 4 * i, &v, 4);
            }
        } else if (type == 1) {  // embedding: small f16 values
            for (uint64_t i = 0; i < nbytes / 2; ++i) {
                const uint16_t h = f32_to_f16(((rng.next() >> 40) * (1.0f / 16777216.0f) - 0.5f) * 0.1f);
                std::memcpy(out + 2 * i, &h, 2);
            }
        } else {
            const uint16_t d = f32_to_f16(0.02f);
            const uint64_t qbytes = blk - 2;
            for (uint64_t b = 0; b < nbytes / blk; ++b) {
                uint8_t* p = out + b * blk;
                for (uint64_t i = 0; i < qbytes; i += 8) {
                    uint64_t r = rng.next();
                    for (uint64_t j = 0; j < 8 && i + j < qbytes; ++j, r >>= 8)
                        p[i + j] = tq1 ? static_cast<uint8_t>(r) : tq2_bytes[(r & 0xff) % 81];
                }
                std::memcpy(p + qbytes, &d, 2);
            }
        }
    });
}

inline const Shape* find_shape(const std::string& name) {
    for (const Shape& s : kShapes)
        if (name == s.name) return &s;
    return nullptr;
}

}  // namespace bench
}  // namespace bllama

// Test helpers: a random bitnet model generator that keeps the ternary codes and scales for reference
// computations (written with the one GGUF writer, tests/support/gguf_writer.h), temp files and checks.
// Header-only; tests only.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <random>
#include <stdexcept>
#include <string>
#include <unistd.h>
#include <vector>

#include "gguf_writer.h"
#include "ternary_encoders.h"
#include "kernels/half.h"

namespace testutil {

// --- random bitnet models ------------------------------------------------------------------------

struct Spec {
    int64_t vocab = 384, dim = 256, layers = 2, heads = 4, kv_heads = 2, ffn = 512, context = 96;
    bool relu2 = false, tied = true, tq1 = false, out_scales = false, f32_embedding = false;
    bool qkv_bias = false;  // blk.N.attn_{q,k,v}.bias (Qwen2), large enough to move every logit
    float rope_theta = 10000.0f, eps = 1e-5f;
    uint32_t seed = 1;
    int64_t head_dim = 0;  // 0: dim / heads; else attention.key_length / value_length (Qwen3-style heads)
    bool qk_norm = false;  // blk.N.attn_q_norm / attn_k_norm (Qwen3)
    int64_t meta_head_dim = 0;  // > 0: the head width the metadata says, whatever the tensors have (a broken file)
    int64_t hd() const { return head_dim ? head_dim : dim / heads; }
};

struct RefLinear {
    int64_t rows = 0, cols = 0;
    std::vector<int8_t> codes;  // [rows, cols]
    float scale = 0;            // already rounded to fp16
    float out_scale = 1.0f;
    std::vector<float> bias;    // [rows] added after out_scale; empty: none
};

struct RefLayer {
    std::vector<float> attn_norm, attn_sub_norm, ffn_norm, ffn_sub_norm;
    std::vector<float> q_norm, k_norm;  // [hd], qk_norm only
    RefLinear q, k, v, o, gate, up, down;
};

struct RefModel {
    Spec spec;
    std::vector<float> embd, head;  // [V, D] values as the engine sees them (f16-rounded)
    std::vector<float> output_norm;
    std::vector<RefLayer> layers;
};

inline std::vector<uint8_t> f32_bytes(const std::vector<float>& v) {
    std::vector<uint8_t> b(v.size() * 4);
    std::memcpy(b.data(), v.data(), b.size());
    return b;
}

// Builds a random model; fills `ref` with the exact values the engine must compute with.
inline GgufBuilder random_model(const Spec& s, RefModel* ref) {
    std::mt19937 rng(s.seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::uniform_int_distribution<int> trit(-1, 1);
    std::uniform_real_distribution<float> uni(0.0f, 1.0f);
    RefModel m;
    m.spec = s;
    GgufBuilder g;
    g.string("general.architecture", "bitnet");
    g.string("general.name", "random-test");
    g.u32("bitnet.context_length", static_cast<uint32_t>(s.context));
    g.u32("bitnet.embedding_length", static_cast<uint32_t>(s.dim));
    g.u32("bitnet.block_count", static_cast<uint32_t>(s.layers));
    g.u32("bitnet.feed_forward_length", static_cast<uint32_t>(s.ffn));
    g.u32("bitnet.attention.head_count", static_cast<uint32_t>(s.heads));
    g.u32("bitnet.attention.head_count_kv", static_cast<uint32_t>(s.kv_heads));
    g.f32("bitnet.attention.layer_norm_rms_epsilon", s.eps);
    g.f32("bitnet.rope.freq_base", s.rope_theta);
    const int64_t meta_hd = s.meta_head_dim ? s.meta_head_dim : s.hd();
    g.u32("bitnet.rope.dimension_count", static_cast<uint32_t>(meta_hd));
    if (s.head_dim || s.meta_head_dim) {
        g.u32("bitnet.attention.key_length", static_cast<uint32_t>(meta_hd));
        g.u32("bitnet.attention.value_length", static_cast<uint32_t>(meta_hd));
    }
    g.u32("bitnet.vocab_size", static_cast<uint32_t>(s.vocab));
    g.string("bllama.activation", s.relu2 ? "relu2" : "silu");
    g.boolean("bllama.tie_embeddings", s.tied);
    g.string("tokenizer.ggml.model", "llama");
    std::vector<std::string> toks;
    std::vector<float> scores;
    std::vector<int32_t> types;
    for (int64_t i = 0; i < s.vocab; ++i) {
        toks.push_back(i < 3 ? std::string(i == 0 ? "<unk>" : i == 1 ? "<s>" : "</s>") : "tok" + std::to_string(i));
        scores.push_back(-static_cast<float>(i));
        types.push_back(i < 3 ? 3 : 1);
    }
    g.strings("tokenizer.ggml.tokens", toks);
    g.array<float>("tokenizer.ggml.scores", T_F32, scores);
    g.array<int32_t>("tokenizer.ggml.token_type", T_I32, types);
    g.u32("tokenizer.ggml.bos_token_id", 1);
    g.u32("tokenizer.ggml.eos_token_id", 2);
    std::vector<uint8_t> blob;
    for (int i = 0; i < 300; ++i) blob.push_back(static_cast<uint8_t>(i * 7 + 3));
    g.array<uint8_t>("bllama.tokenizer.sp_model", T_U8, blob);

    auto f16_matrix = [&](const std::string& name, std::vector<float>& values) {
        const size_t n = static_cast<size_t>(s.vocab * s.dim);
        values.resize(n);
        std::vector<uint8_t> bytes;
        for (size_t i = 0; i < n; ++i) {
            const uint16_t h = bllama::f32_to_f16(0.15f * normal(rng));
            values[i] = bllama::f16_to_f32(h);
        }
        if (s.f32_embedding) {
            bytes = f32_bytes(values);  // f16-exact values stored as f32: the engine's f16 copy is exact
            g.tensor(name, {uint64_t(s.dim), uint64_t(s.vocab)}, G_F32, bytes);
        } else {
            for (float v : values) {
                const uint16_t h = bllama::f32_to_f16(v);
                bytes.push_back(static_cast<uint8_t>(h & 0xff));
                bytes.push_back(static_cast<uint8_t>(h >> 8));
            }
            g.tensor(name, {uint64_t(s.dim), uint64_t(s.vocab)}, G_F16, bytes);
        }
    };
    auto norm = [&](const std::string& name, int64_t n, std::vector<float>& w) {
        w.resize(static_cast<size_t>(n));
        for (auto& x : w) x = 0.6f + 0.8f * uni(rng);
        g.tensor(name, {uint64_t(n)}, G_F32, f32_bytes(w));
    };
    auto linear = [&](const std::string& prefix, int64_t in, int64_t out, RefLinear& L) {
        L.rows = out;
        L.cols = in;
        L.codes.resize(static_cast<size_t>(in * out));
        for (auto& c : L.codes) c = static_cast<int8_t>(trit(rng));
        L.scale = bllama::f16_to_f32(bllama::f32_to_f16((0.5f + uni(rng)) / std::sqrt(static_cast<float>(in))));
        // Stored inputs are padded with zero codes to whole 256-blocks (heads * head_dim need not be a multiple).
        const int64_t in_pad = (in + 255) / 256 * 256;
        std::vector<int8_t> padded(static_cast<size_t>(in_pad * out), 0);
        for (int64_t r = 0; r < out; ++r)
            std::copy(L.codes.begin() + r * in, L.codes.begin() + (r + 1) * in, padded.begin() + r * in_pad);
        auto data = s.tq1 ? encode_tq1_0(padded, out, in_pad, L.scale) : encode_tq2_0(padded, out, in_pad, L.scale);
        g.tensor(prefix + ".weight", {uint64_t(in_pad), uint64_t(out)}, s.tq1 ? G_TQ1_0 : G_TQ2_0, data);
        if (s.out_scales) {
            L.out_scale = 0.5f + uni(rng);
            g.tensor(prefix + ".scale", {1}, G_F32, f32_bytes({L.out_scale}));
        }
        const bool biased = prefix.size() > 7 && (prefix.compare(prefix.size() - 7, 7, ".attn_q") == 0 ||
                                                  prefix.compare(prefix.size() - 7, 7, ".attn_k") == 0 ||
                                                  prefix.compare(prefix.size() - 7, 7, ".attn_v") == 0);
        if (s.qkv_bias && biased) {  // about the size of the projection's outputs, as Qwen2's are
            L.bias.resize(static_cast<size_t>(out));
            for (auto& b : L.bias) b = 0.7f * normal(rng);
            g.tensor(prefix + ".bias", {uint64_t(out)}, G_F32, f32_bytes(L.bias));
        }
    };

    f16_matrix("token_embd.weight", m.embd);
    norm("output_norm.weight", s.dim, m.output_norm);
    if (s.tied) m.head = m.embd;
    else f16_matrix("output.weight", m.head);
    const int64_t kvd = s.hd() * s.kv_heads, qd = s.hd() * s.heads;
    m.layers.resize(static_cast<size_t>(s.layers));
    for (int64_t l = 0; l < s.layers; ++l) {
        RefLayer& L = m.layers[static_cast<size_t>(l)];
        const std::string p = "blk." + std::to_string(l) + ".";
        norm(p + "attn_norm.weight", s.dim, L.attn_norm);
        norm(p + "attn_sub_norm.weight", qd, L.attn_sub_norm);
        norm(p + "ffn_norm.weight", s.dim, L.ffn_norm);
        norm(p + "ffn_sub_norm.weight", s.ffn, L.ffn_sub_norm);
        if (s.qk_norm) {
            norm(p + "attn_q_norm.weight", s.hd(), L.q_norm);
            norm(p + "attn_k_norm.weight", s.hd(), L.k_norm);
        }
        linear(p + "attn_q", s.dim, qd, L.q);
        linear(p + "attn_k", s.dim, kvd, L.k);
        linear(p + "attn_v", s.dim, kvd, L.v);
        linear(p + "attn_output", qd, s.dim, L.o);
        linear(p + "ffn_gate", s.dim, s.ffn, L.gate);
        linear(p + "ffn_up", s.dim, s.ffn, L.up);
        linear(p + "ffn_down", s.ffn, s.dim, L.down);
    }
    if (ref) *ref = std::move(m);
    return g;
}

// A file removed when the object goes away.
struct TempFile {
    std::string path;
    explicit TempFile(const std::string& tag) {
        path = "/tmp/bllama_test_" + tag + "_" + std::to_string(::getpid()) + ".gguf";
    }
    void write(const std::vector<uint8_t>& bytes) const {
        FILE* f = std::fopen(path.c_str(), "wb");
        if (!f) throw std::runtime_error("cannot write " + path);
        if (!bytes.empty()) std::fwrite(bytes.data(), 1, bytes.size(), f);
        std::fclose(f);
    }
    ~TempFile() { std::remove(path.c_str()); }
};

// Minimal check macros: print and count failures; main returns nonzero if any.
inline int& failures() {
    static int n = 0;
    return n;
}
#define CHECK(cond)                                                                          \
    do {                                                                                     \
        if (!(cond)) {                                                                       \
            std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);    \
            ++testutil::failures();                                                          \
        }                                                                                    \
    } while (0)

// Runs fn and expects an exception of type E whose message contains `needle`.
template <class E, class Fn>
bool throws(Fn&& fn, const std::string& needle = "", std::string* msg = nullptr) {
    try {
        fn();
    } catch (const E& e) {
        if (msg) *msg = e.what();
        if (needle.empty() || std::string(e.what()).find(needle) != std::string::npos) return true;
        std::fprintf(stderr, "  exception message '%s' lacks '%s'\n", e.what(), needle.c_str());
        return false;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "  unexpected exception type: %s\n", e.what());
        return false;
    }
    std::fprintf(stderr, "  no exception thrown (expected '%s')\n", needle.c_str());
    return false;
}

}  // namespace testutil

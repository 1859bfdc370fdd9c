// GGUF round trip: a random bitnet model written by the test writer is read back through the
// memory-mapped reader (metadata of every type, tensors, data bytes), its ternary blocks decode to
// the codes written, and the model loads (also as GGUF v2, other alignments, an f32 embedding).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>

#include "cpu/model.h"
#include "engine/engine.h"
#include "engine/gguf.h"
#include "gguf_test_writer.h"
#include "kernels/ternary.h"

using namespace bllama;
using namespace testutil;

static void test_metadata_round_trip() {
    Spec s;
    RefModel ref;
    GgufBuilder g = random_model(s, &ref);
    g.u64("test.u64", 1ull << 40);
    g.i32("test.i32", -7);
    g.f64("test.f64", 0.125);
    g.array<int16_t>("test.i16s", T_I16, {-1, 2, -3});
    g.strings("test.empty_strings", {});
    TempFile tf("meta");
    Layout lay;
    tf.write(g.build(&lay));
    GgufFile f = GgufFile::open(tf.path);
    CHECK(f.version() == 3);
    CHECK(f.alignment() == 32);
    CHECK(f.data_offset() == lay.data_start);
    CHECK(f.get_string("general.architecture") == "bitnet");
    CHECK(f.get_int("bitnet.embedding_length") == s.dim);
    CHECK(f.get_int("test.u64") == (int64_t(1) << 40));
    CHECK(f.get_int("test.i32") == -7);
    CHECK(f.get_float("test.f64") == 0.125);
    CHECK(std::fabs(f.get_float("bitnet.attention.layer_norm_rms_epsilon") - 1e-5) < 1e-9);
    CHECK(f.get_bool("bllama.tie_embeddings") == true);
    CHECK(f.get_int("missing.key", 42) == 42);
    CHECK(throws<GgufError>([&] { f.get_int("missing.key"); }, "missing metadata key 'missing.key'"));
    CHECK(throws<GgufError>([&] { f.get_string("bitnet.block_count"); }, "expected string, got uint32"));
    CHECK(throws<GgufError>([&] { f.get_float("general.name"); }, "'general.name'"));

    const GgufKV* toks = f.find("tokenizer.ggml.tokens");
    CHECK(toks && toks->type == GgufType::ARRAY && toks->elem_type == GgufType::STRING);
    auto tv = f.string_array(*toks);
    CHECK(tv.size() == static_cast<size_t>(s.vocab) && tv[1] == "<s>" && tv[100] == "tok100");
    const GgufKV* scores = f.find("tokenizer.ggml.scores");
    CHECK(scores && scores->elem_type == GgufType::F32 && scores->count == static_cast<uint64_t>(s.vocab));
    float sc5;
    std::memcpy(&sc5, f.raw_value(*scores) + 5 * 4, 4);
    CHECK(sc5 == -5.0f);
    const GgufKV* blob = f.find("bllama.tokenizer.sp_model");
    CHECK(blob && blob->elem_type == GgufType::U8 && blob->count == 300);
    CHECK(f.raw_value(*blob)[10] == static_cast<uint8_t>(73));
    const GgufKV* i16s = f.find("test.i16s");
    int16_t v2;
    std::memcpy(&v2, f.raw_value(*i16s) + 4, 2);
    CHECK(i16s->count == 3 && v2 == -3);
    CHECK(f.string_array(*f.find("test.empty_strings")).empty());

    // Tensors: names, dims, types, offsets and bytes.
    const size_t n_tensors = 2 + 11 * static_cast<size_t>(s.layers);
    CHECK(f.tensors().size() == n_tensors);
    const GgufTensor* q = f.find_tensor("blk.1.attn_q.weight");
    CHECK(q && q->n_dims == 2 && q->dims[0] == s.dim && q->dims[1] == s.dim && q->type == 35);
    CHECK(q->nbytes == static_cast<uint64_t>(s.dim * s.dim / 256 * 66));
    CHECK(q->data == f.file_data() + lay.t_data_pos["blk.1.attn_q.weight"]);
    const GgufTensor* e = f.find_tensor("token_embd.weight");
    uint16_t h;
    std::memcpy(&h, e->data + 2 * 77, 2);
    CHECK(f16_to_f32(h) == ref.embd[77]);
    const GgufTensor* n = f.find_tensor("blk.0.ffn_sub_norm.weight");
    float nv;
    std::memcpy(&nv, n->data + 4 * 3, 4);
    CHECK(n->n_dims == 1 && n->dims[0] == s.ffn && nv == ref.layers[0].ffn_sub_norm[3]);
}

// The test encoders agree with the kernels' decoders, for both ternary types.
static void test_ternary_blocks() {
    for (bool tq1 : {false, true}) {
        Spec s;
        s.tq1 = tq1;
        s.layers = 1;
        RefModel ref;
        GgufFile f = GgufFile::from_bytes(random_model(s, &ref).build());
        for (auto [name, L] : {std::pair<const char*, const RefLinear*>{"blk.0.attn_k.weight", &ref.layers[0].k},
                               {"blk.0.ffn_down.weight", &ref.layers[0].down}}) {
            const GgufTensor* t = f.find_tensor(name);
            CHECK(t && t->type == (tq1 ? 34u : 35u));
            TernaryMatrix m = tq1 ? TernaryMatrix::from_tq1_0(t->data, L->rows, L->cols)
                                  : TernaryMatrix::from_tq2_0(t->data, L->rows, L->cols);
            int bad = 0;
            for (int64_t r = 0; r < L->rows; ++r)
                for (int64_t c = 0; c < L->cols; ++c) bad += m.code(r, c) != L->codes[r * L->cols + c];
            CHECK(bad == 0);
            CHECK(m.block_scale(0, 0) == L->scale);
        }
    }
}

// bitnet.cpp's I2_S (type 36): rows * cols / 4 code bytes plus a 32-byte tail holding the tensor's scale
// (ggml_nbytes in its fork); a file one byte short of that is refused, and rows must be whole 128-blocks.
static void test_i2_s_size() {
    const std::vector<uint8_t> codes(256 * 3 / 4 + 32, 0x55);
    auto file = [&](size_t bytes, uint64_t cols) {
        GgufBuilder g;
        g.string("general.architecture", "bitnet-b1.58");
        g.tensor("w", {cols, 3}, 36, std::vector<uint8_t>(codes.begin(), codes.begin() + static_cast<long>(bytes)));
        return g.build();
    };
    GgufFile f = GgufFile::from_bytes(file(codes.size(), 256));
    const GgufTensor* t = f.find_tensor("w");
    CHECK(t && t->nbytes == 256 * 3 / 4 + 32 && ggml_type_name(t->type) == "I2_S");
    CHECK(throws<GgufError>([&] { GgufFile::from_bytes(file(codes.size() - 1, 256)); }, "runs past the end"));
    CHECK(throws<GgufError>([&] { GgufFile::from_bytes(file(codes.size(), 200)); }, "I2_S block size 128"));
}

static std::vector<float> logits_of(GgufFile file, const std::vector<int32_t>& ids) {
    LoadOptions o;
    o.threads = 1;
    Engine eng(Model::load(std::move(file), o));
    return eng.logits(ids);
}

// v2 files, other alignments (1 forces the unaligned-f16 copy path) and an f32 embedding all load
// and compute the same function.
static void test_variants_load() {
    Spec s;
    s.layers = 1;
    const std::vector<int32_t> ids = {1, 5, 9, 200};
    GgufBuilder base = random_model(s, nullptr);
    const auto want = logits_of(GgufFile::from_bytes(base.build()), ids);
    for (uint32_t align : {1u, 8u, 64u, 4096u}) {
        GgufBuilder g = random_model(s, nullptr);
        g.alignment = align;
        GgufFile f = GgufFile::from_bytes(g.build());
        CHECK(f.alignment() == align);
        CHECK(logits_of(std::move(f), ids) == want);
    }
    GgufBuilder v2 = random_model(s, nullptr);
    v2.version = 2;
    GgufFile f2 = GgufFile::from_bytes(v2.build());
    CHECK(f2.version() == 2);
    CHECK(logits_of(std::move(f2), ids) == want);
    Spec s32 = s;
    s32.f32_embedding = true;
    CHECK(logits_of(GgufFile::from_bytes(random_model(s32, nullptr).build()), ids) == want);
}

static void test_model_config() {
    Spec s;
    s.relu2 = true;
    s.tied = false;
    s.tq1 = true;
    s.kv_heads = 1;
    TempFile tf("cfg");
    tf.write(random_model(s, nullptr).build());
    Engine eng(tf.path);
    const ModelConfig& c = eng.config();
    CHECK(c.vocab == s.vocab && c.dim == s.dim && c.n_layers == s.layers && c.n_heads == s.heads);
    CHECK(c.n_kv_heads == 1 && c.head_dim == s.dim / s.heads && c.ffn == s.ffn && c.context == s.context);
    CHECK(c.activation == Activation::Relu2 && !c.tied && c.weight_type == 34);
    CHECK(eng.vocab_size() == s.vocab && eng.context_length() == s.context);
    CHECK(eng.last_stats().load_seconds > 0);
}

static void test_model_errors() {
    auto load = [](const GgufBuilder& g) { Model::load(GgufFile::from_bytes(g.build()), LoadOptions{1, 0, 8}); };
    {
        GgufBuilder g = random_model(Spec{}, nullptr);
        g.string("general.architecture", "llama");  // duplicate key
        CHECK(throws<GgufError>([&] { load(g); }, "duplicate metadata key 'general.architecture'"));
    }
    Spec s;
    s.layers = 1;
    // A different architecture: rebuild with the first key changed.
    {
        GgufBuilder g;
        g.string("general.architecture", "llama");
        CHECK(throws<ModelError>([&] { load(g); }, "unsupported architecture 'llama'"));
    }
    {
        GgufBuilder g = random_model(s, nullptr);
        g.tensor("blk.7.attn_q.weight", {256, 256}, G_TQ2_0, std::vector<uint8_t>(256 * 66));
        CHECK(throws<ModelError>([&] { load(g); }, "unexpected tensor 'blk.7.attn_q.weight'"));
    }
    {
        GgufBuilder g = random_model(s, nullptr);
        g.tensor("output.weight", {uint64_t(s.dim), uint64_t(s.vocab)}, G_F16, std::vector<uint8_t>(s.dim * s.vocab * 2));
        CHECK(throws<ModelError>([&] { load(g); }, "tie_embeddings"));
    }
    CHECK(throws<FileNotFound>([] { Engine e("/nonexistent/dir/model.gguf"); }, "no such file"));
    CHECK(throws<FileError>([] { Engine e("/tmp"); }, "not a regular file"));
}

// Keys llama.cpp reads for every architecture that change the model's function (RoPE scaling, head sizes, the causal
// mask) were ignored: the file ran as if they were absent. Now each is refused by name, while the values that mean
// "unchanged" still load and give the same logits; a tensor some converters add says what it is.
static void test_unsupported_metadata() {
    Spec s;
    s.layers = 1;
    const std::vector<int32_t> ids = {1, 5, 9, 200};
    const auto want = logits_of(GgufFile::from_bytes(random_model(s, nullptr).build()), ids);
    auto load = [](const GgufBuilder& g) { Model::load(GgufFile::from_bytes(g.build()), LoadOptions{1, 0, 8}); };
    struct Case {
        std::function<void(GgufBuilder&)> add;
        const char* refusal;  // nullptr: loads with the same logits
    };
    const std::vector<Case> cases = {
        {[](GgufBuilder& g) { g.string("bitnet.rope.scaling.type", "linear"); g.f32("bitnet.rope.scaling.factor", 4.0f); },
         "metadata 'bitnet.rope.scaling.factor' = 4.000000 (rope.scaling.type 'linear'): RoPE scaling is not supported"},
        {[](GgufBuilder& g) { g.string("bitnet.rope.scaling.type", "yarn"); g.f32("bitnet.rope.scaling.factor", 8.0f); },
         "(rope.scaling.type 'yarn'): RoPE scaling"},
        {[](GgufBuilder& g) { g.f32("bitnet.rope.scaling.factor", 2.0f); },  // no type: llama.cpp's default is linear
         "(rope.scaling.type 'linear'): RoPE scaling"},
        {[](GgufBuilder& g) { g.f32("bitnet.rope.scale_linear", 2.0f); }, "'bitnet.rope.scale_linear' = 2.000000"},
        {[](GgufBuilder& g) { g.f32("bitnet.rope.scaling.attn_factor", 0.5f); }, "rope.scaling.attn_factor"},
        // Heads of another width are read (test_head_dim_and_qk_norm); values narrower than keys, or a width
        // the tensors contradict, are refused.
        {[](GgufBuilder& g) { g.u32("bitnet.attention.key_length", 128); },
         "'bitnet.attention.key_length' and 'attention.value_length' must both be given and equal (128 vs absent)"},
        {[](GgufBuilder& g) { g.u32("bitnet.attention.value_length", 32); }, "must both be given and equal (absent vs 32)"},
        {[](GgufBuilder& g) { g.u32("bitnet.attention.key_length", 64); g.u32("bitnet.attention.value_length", 32); },
         "must both be given and equal (64 vs 32)"},
        {[](GgufBuilder& g) { g.u32("bitnet.attention.key_length", 128); g.u32("bitnet.attention.value_length", 128); },
         "rope.dimension_count 64 != head dim 128"},
        {[](GgufBuilder& g) { g.boolean("bitnet.attention.causal", false); }, "non-causal attention is not supported"},
        {[](GgufBuilder& g) { g.tensor("rope_freqs.weight", {32}, G_F32, std::vector<uint8_t>(128)); },
         "tensor 'rope_freqs.weight' element 0 = 0.000000: RoPE frequency divisors must be finite and > 0"},
        {[](GgufBuilder& g) { g.tensor("rope_freqs.weight", {16}, G_F32, f32_bytes(std::vector<float>(16, 1.0f))); },
         "tensor 'rope_freqs.weight' must be F32 [32]"},
        {[](GgufBuilder& g) { g.tensor("blk.0.rope_factors_long.weight", {32}, G_F32, std::vector<uint8_t>(128)); },
         "(Phi-3's long / short RoPE factors: not supported)"},
        {[](GgufBuilder& g) { g.tensor("rope_freqs.weight", {32}, G_F32, f32_bytes(std::vector<float>(32, 1.0f))); },
         nullptr},  // divisors of 1: plain RoPE
        // q/k/v biases (Qwen2's): zeros load and change nothing; every other bias, and a bias of another shape, type
        // or with a non-finite value, is refused by name (test_model.cpp checks nonzero ones against the reference)
        {[](GgufBuilder& g) { g.tensor("blk.0.attn_q.bias", {256}, G_F32, std::vector<uint8_t>(1024)); }, nullptr},
        {[](GgufBuilder& g) { g.tensor("blk.0.attn_output.bias", {256}, G_F32, std::vector<uint8_t>(1024)); },
         "unexpected tensor 'blk.0.attn_output.bias' for a bitnet model (biases are supported on attn_q / attn_k / "
         "attn_v only)"},
        {[](GgufBuilder& g) { g.tensor("blk.0.ffn_up.bias", {512}, G_F32, std::vector<uint8_t>(2048)); },
         "unexpected tensor 'blk.0.ffn_up.bias'"},
        {[](GgufBuilder& g) { g.tensor("blk.0.attn_k.bias", {256}, G_F32, std::vector<uint8_t>(1024)); },
         "tensor 'blk.0.attn_k.bias' has ggml dims {256}, expected {128}"},
        {[](GgufBuilder& g) { g.tensor("blk.0.attn_q.bias", {256, 1}, G_F32, std::vector<uint8_t>(1024)); },
         "tensor 'blk.0.attn_q.bias' has ggml dims {256, 1}, expected {256}"},
        {[](GgufBuilder& g) { g.tensor("blk.0.attn_v.bias", {128}, G_F16, std::vector<uint8_t>(256)); },
         "tensor 'blk.0.attn_v.bias' has type F16, expected F32"},
        {[](GgufBuilder& g) {
             std::vector<float> b(128, 0.5f);
             b[3] = std::nanf("");
             g.tensor("blk.0.attn_v.bias", {128}, G_F32, f32_bytes(b));
         },
         "tensor 'blk.0.attn_v.bias' holds a non-finite value (NaN or Inf) at element 3"},
        {[](GgufBuilder& g) {
             g.tensor("blk.0.attn_k.bias", {128}, G_F32, f32_bytes(std::vector<float>(128, INFINITY)));
         },
         "tensor 'blk.0.attn_k.bias' holds a non-finite value (NaN or Inf) at element 0"},
        {[](GgufBuilder& g) { g.string("bitnet.rope.scaling.type", "none"); g.f32("bitnet.rope.scaling.factor", 4.0f); },
         nullptr},
        {[](GgufBuilder& g) { g.string("bitnet.rope.scaling.type", "linear"); g.f32("bitnet.rope.scaling.factor", 1.0f); },
         nullptr},
        {[](GgufBuilder& g) { g.f32("bitnet.rope.scaling.factor", 0.0f); }, nullptr},  // llama.cpp: 0 is unset
        {[](GgufBuilder& g) { g.u32("bitnet.attention.key_length", 64); g.u32("bitnet.attention.value_length", 64); },
         nullptr},
        {[](GgufBuilder& g) { g.boolean("bitnet.attention.causal", true); g.f32("bitnet.rope.scaling.attn_factor", 1.0f); },
         nullptr},
    };
    for (const Case& c : cases) {
        GgufBuilder g = random_model(s, nullptr);
        c.add(g);
        if (c.refusal) CHECK(throws<ModelError>([&] { load(g); }, c.refusal));
        else CHECK(logits_of(GgufFile::from_bytes(g.build()), ids) == want);
    }
    // Llama-3.1's scaling divides the low frequencies (rope_freqs.weight was refused): dividing the lowest one by 8
    // changes the logits from position 1 on and leaves position 0 (angle 0 whatever the frequency) as it was.
    // bllama/model/transformer.py's rope_divisors and tests/test_hf_import.py check the values against transformers.
    std::vector<float> div(32, 1.0f);
    div[31] = 8.0f;
    GgufBuilder g = random_model(s, nullptr);
    g.tensor("rope_freqs.weight", {32}, G_F32, f32_bytes(div));
    const auto scaled = logits_of(GgufFile::from_bytes(g.build()), ids);
    CHECK(scaled != want);
    CHECK(std::equal(scaled.begin(), scaled.begin() + static_cast<std::ptrdiff_t>(scaled.size() / ids.size()),
                     want.begin()));
}

// Qwen3-style files: attention.key_length other than embedding_length / head_count sizes q, k, v, o and the
// attention sub-norm; attn_q_norm / attn_k_norm come as a pair of f32 [head_dim] in every layer. (test_model.cpp
// checks their logits against the scalar reference.)
static void test_head_dim_and_qk_norm() {
    Spec s;
    s.head_dim = 96;
    s.qk_norm = true;
    TempFile tf("hd");
    tf.write(random_model(s, nullptr).build());
    Engine eng(tf.path);
    const ModelConfig& c = eng.config();
    CHECK(c.head_dim == 96 && c.attn_dim == 384 && c.attn_in == 512 && c.qk_norm && c.dim_in == 256);
    auto load = [](const GgufBuilder& g) { Model::load(GgufFile::from_bytes(g.build()), LoadOptions{1, 0, 8}); };
    Spec plain;
    plain.layers = 2;
    const std::vector<float> norm(64, 1.0f);
    {
        GgufBuilder g = random_model(plain, nullptr);
        g.tensor("blk.0.attn_q_norm.weight", {64}, G_F32, f32_bytes(norm));
        CHECK(throws<ModelError>([&] { load(g); }, "missing tensor 'blk.0.attn_k_norm.weight'"));
    }
    {
        GgufBuilder g = random_model(plain, nullptr);
        for (int l = 0; l < 2; ++l) {
            const std::string p = "blk." + std::to_string(l) + ".";
            g.tensor(p + "attn_q_norm.weight", {32}, G_F32, f32_bytes(std::vector<float>(32, 1.0f)));
            g.tensor(p + "attn_k_norm.weight", {64}, G_F32, f32_bytes(norm));
        }
        CHECK(throws<ModelError>([&] { load(g); }, "tensor 'blk.0.attn_q_norm.weight' has ggml dims {32}, expected {64}"));
    }
    {
        GgufBuilder g = random_model(plain, nullptr);
        g.tensor("blk.1.attn_q_norm.weight", {64}, G_F32, f32_bytes(norm));
        g.tensor("blk.1.attn_k_norm.weight", {64}, G_F32, f32_bytes(norm));
        CHECK(throws<ModelError>([&] { load(g); }, "unexpected tensor 'blk.1.attn_q_norm.weight'"));
    }
    {  // layer 0 only: every layer must have them
        GgufBuilder g = random_model(plain, nullptr);
        g.tensor("blk.0.attn_q_norm.weight", {64}, G_F32, f32_bytes(norm));
        g.tensor("blk.0.attn_k_norm.weight", {64}, G_F32, f32_bytes(norm));
        CHECK(throws<ModelError>([&] { load(g); }, "missing tensor 'blk.1.attn_q_norm.weight'"));
    }
    {  // a NaN in a QK-norm weight is refused by name, as in every other norm
        Spec one = plain;
        one.layers = 1;
        GgufBuilder g = random_model(one, nullptr);
        std::vector<float> bad = norm;
        bad[5] = std::nanf("");
        g.tensor("blk.0.attn_q_norm.weight", {64}, G_F32, f32_bytes(norm));
        g.tensor("blk.0.attn_k_norm.weight", {64}, G_F32, f32_bytes(bad));
        CHECK(throws<ModelError>([&] { load(g); }, "tensor 'blk.0.attn_k_norm.weight' holds a non-finite value"));
    }
    {  // a width no model has
        GgufBuilder g = random_model(plain, nullptr);
        g.u32("bitnet.attention.key_length", 1 << 13);
        g.u32("bitnet.attention.value_length", 1 << 13);
        CHECK(throws<ModelError>([&] { load(g); }, "'bitnet.attention.key_length' = 8192 is out of range [1, 4096]"));
    }
    {  // a width the tensors contradict: 4 heads of 128 need a 512-wide sub-norm and q, the file's are 384
        Spec wide = plain;
        wide.head_dim = 96;
        wide.meta_head_dim = 128;
        GgufBuilder g = random_model(wide, nullptr);
        CHECK(throws<ModelError>([&] { load(g); }, "tensor 'blk.0.attn_sub_norm.weight' has ggml dims {384}, expected {512}"));
    }
}

int main() {
    test_metadata_round_trip();
    test_ternary_blocks();
    test_i2_s_size();
    test_variants_load();
    test_model_config();
    test_model_errors();
    test_unsupported_metadata();
    test_head_dim_and_qk_norm();
    if (failures()) {
        std::fprintf(stderr, "test_gguf: %d failure(s)\n", failures());
        return 1;
    }
    std::printf("test_gguf: ok\n");
    return 0;
}

#include "engine/weights.h"

#include <cmath>
#include <cstring>
#include <set>

#include "kernels/half.h"

namespace bllama {

namespace {

std::string dims_str(const GgufTensor& t) {
    std::string s = "{";
    for (int i = 0; i < t.n_dims; ++i) s += (i ? ", " : "") + std::to_string(t.dims[i]);
    return s + "}";
}

// Finds `name` and checks its ggml dims (contiguous dim first) and type.
class TensorChecker {
public:
    explicit TensorChecker(const GgufFile& f) : f_(f) {}

    const GgufTensor* find(const std::string& name) {
        const GgufTensor* t = f_.find_tensor(name);
        if (t) used_.insert(name);
        return t;
    }
    const GgufTensor& get(const std::string& name, std::initializer_list<int64_t> dims,
                          std::initializer_list<GgmlType> types) {
        const GgufTensor* t = find(name);
        if (!t) throw ModelError("missing tensor '" + name + "'");
        bool type_ok = false;
        std::string allowed;
        for (GgmlType ty : types) {
            type_ok |= t->type == static_cast<uint32_t>(ty);
            allowed += (allowed.empty() ? "" : " or ") + ggml_type_name(static_cast<uint32_t>(ty));
        }
        if (!type_ok)
            throw ModelError("tensor '" + name + "' has type " + ggml_type_name(t->type) + ", expected " + allowed);
        bool shape_ok = t->n_dims == static_cast<int>(dims.size());
        int i = 0;
        for (int64_t d : dims) shape_ok = shape_ok && t->dims[i++] == d;
        if (!shape_ok) {
            std::string want = "{";
            i = 0;
            for (int64_t d : dims) want += (i++ ? ", " : "") + std::to_string(d);
            throw ModelError("tensor '" + name + "' has ggml dims " + dims_str(*t) + ", expected " + want + "}");
        }
        return *t;
    }
    // Every tensor in the file must be one the model uses: anything else means a different model.
    void check_all_used() const {
        for (const GgufTensor& t : f_.tensors())
            if (!used_.count(t.name)) throw ModelError("unexpected tensor '" + t.name + "' for a bitnet model" + why(t.name));
    }

private:
    // What a tensor that some converters write means, where its name says it.
    static std::string why(const std::string& name) {
        auto ends = [&](const char* sfx) {
            const size_t n = std::strlen(sfx);
            return name.size() >= n && name.compare(name.size() - n, n, sfx) == 0;
        };
        if (ends("rope_factors_long.weight") || ends("rope_factors_short.weight"))
            return " (Phi-3's long / short RoPE factors: not supported)";
        if (ends(".bias")) return " (biases are supported on attn_q / attn_k / attn_v only)";
        return "";
    }
    const GgufFile& f_;
    std::set<std::string> used_;
};

// A NaN or Inf in a norm, the embedding or the head would load without a word and turn every logit into NaN; the
// file is refused by the tensor's name instead. f16: exponent bits all ones. A scan of the embedding costs about
// as much as reading it once, which a load does anyway.
void check_finite(const GgufTensor& t) {
    const size_t n = static_cast<size_t>(t.n_elements);
    size_t bad = n;
    if (t.type == static_cast<uint32_t>(GgmlType::F16)) {
        for (size_t i = 0; i < n && bad == n; ++i) {
            uint16_t h;
            std::memcpy(&h, t.data + 2 * i, 2);
            if ((h & 0x7C00u) == 0x7C00u) bad = i;
        }
    } else {
        for (size_t i = 0; i < n && bad == n; ++i) {
            uint32_t u;
            std::memcpy(&u, t.data + 4 * i, 4);
            if ((u & 0x7F800000u) == 0x7F800000u) bad = i;
        }
    }
    if (bad != n)
        throw ModelError("tensor '" + t.name + "' holds a non-finite value (NaN or Inf) at element " + std::to_string(bad));
}

BitLinearTensor bitlinear(TensorChecker& tc, const std::string& prefix, int64_t in, int64_t out, bool may_have_bias = false) {
    BitLinearTensor b;
    b.weight = &tc.get(prefix + ".weight", {in, out}, {GgmlType::TQ2_0, GgmlType::TQ1_0, GgmlType::I2_S});
    b.rows = out;
    b.cols = in;
    if (const GgufTensor* s = tc.find(prefix + ".scale")) {
        tc.get(prefix + ".scale", {1}, {GgmlType::F32});
        std::memcpy(&b.out_scale, s->data, 4);
        if (!std::isfinite(b.out_scale)) throw ModelError("tensor '" + prefix + ".scale' is not finite");
        b.has_out_scale = true;
    }
    if (may_have_bias && tc.find(prefix + ".bias")) {
        b.bias = &tc.get(prefix + ".bias", {out}, {GgmlType::F32});
        check_finite(*b.bias);
    }
    return b;
}

}  // namespace

ModelTensors check_model_tensors(const GgufFile& f, const ModelConfig& c) {
    TensorChecker tc(f);
    ModelTensors m;
    m.embedding = &tc.get("token_embd.weight", {c.dim, c.vocab}, {GgmlType::F16, GgmlType::F32});
    if (!c.tied) m.output = &tc.get("output.weight", {c.dim, c.vocab}, {GgmlType::F16, GgmlType::F32});
    m.output_norm = &tc.get("output_norm.weight", {c.dim}, {GgmlType::F32});
    if (!c.rope_divisors.empty()) tc.get("rope_freqs.weight", {c.head_dim / 2}, {GgmlType::F32});  // read_config's
    m.layers.resize(static_cast<size_t>(c.n_layers));
    for (int64_t l = 0; l < c.n_layers; ++l) {
        const std::string p = "blk." + std::to_string(l) + ".";
        LayerTensors& L = m.layers[static_cast<size_t>(l)];
        L.attn_norm = &tc.get(p + "attn_norm.weight", {c.dim}, {GgmlType::F32});
        if (c.sub_norms) {  // without them, a file that still has the tensors fails check_all_used()
            L.attn_sub_norm = &tc.get(p + "attn_sub_norm.weight", {c.attn_dim}, {GgmlType::F32});
            L.ffn_sub_norm = &tc.get(p + "ffn_sub_norm.weight", {c.ffn}, {GgmlType::F32});
        }
        L.ffn_norm = &tc.get(p + "ffn_norm.weight", {c.dim}, {GgmlType::F32});
        if (c.qk_norm) {  // both in every layer: one without the other is a file some step left half-written
            L.attn_q_norm = &tc.get(p + "attn_q_norm.weight", {c.head_dim}, {GgmlType::F32});
            L.attn_k_norm = &tc.get(p + "attn_k_norm.weight", {c.head_dim}, {GgmlType::F32});
        }
        // Inputs are stored padded to whole 256-blocks (config.h, dim_in / ffn_in).
        // q, k and v may each have a bias (Qwen2); any other bias fails check_all_used().
        L.q = bitlinear(tc, p + "attn_q", c.dim_in, c.attn_dim, true);
        L.k = bitlinear(tc, p + "attn_k", c.dim_in, c.kv_dim(), true);
        L.v = bitlinear(tc, p + "attn_v", c.dim_in, c.kv_dim(), true);
        L.o = bitlinear(tc, p + "attn_output", c.attn_in, c.dim);
        L.gate = bitlinear(tc, p + "ffn_gate", c.dim_in, c.ffn);
        L.up = bitlinear(tc, p + "ffn_up", c.dim_in, c.ffn);
        L.down = bitlinear(tc, p + "ffn_down", c.ffn_in, c.dim);
    }
    tc.check_all_used();
    check_finite(*m.embedding);
    if (m.output) check_finite(*m.output);
    check_finite(*m.output_norm);
    for (const LayerTensors& L : m.layers)
        for (const GgufTensor* t : {L.attn_norm, L.ffn_norm, L.attn_sub_norm, L.ffn_sub_norm, L.attn_q_norm, L.attn_k_norm})
            if (t) check_finite(*t);
    return m;
}

std::vector<float> f32_values(const GgufTensor& t) {
    std::vector<float> v(static_cast<size_t>(t.n_elements));
    std::memcpy(v.data(), t.data, v.size() * sizeof(float));
    return v;
}

const uint16_t* f16_values(const GgufTensor& t, std::vector<uint16_t>& owned) {
    const size_t n = static_cast<size_t>(t.n_elements);
    if (t.type == static_cast<uint32_t>(GgmlType::F16)) {
        if (reinterpret_cast<uintptr_t>(t.data) % alignof(uint16_t) == 0) return reinterpret_cast<const uint16_t*>(t.data);
        owned.resize(n);
        std::memcpy(owned.data(), t.data, n * 2);
        return owned.data();
    }
    owned.resize(n);
    for (size_t i = 0; i < n; ++i) {
        float f;
        std::memcpy(&f, t.data + 4 * i, 4);
        owned[i] = f32_to_f16(f);
    }
    return owned.data();
}

Q8Head requantize_head_q8(const uint16_t* head, int64_t vocab, int64_t dim, ThreadPool& pool) {
    Q8Head q8;
    try {
        q8 = Q8Head(vocab, dim);
    } catch (const std::invalid_argument& e) {
        throw ModelError(std::string("q8 head: ") + e.what());
    }
    const int nc = pool.size() * 4;
    pool.run(nc, [&](int i, int) {
        int64_t b, e;
        split_range(vocab, i, nc, 64, b, e);
        if (b < e) q8.quantize_rows_f16(head, b, e);
    });
    return q8;
}

}  // namespace bllama

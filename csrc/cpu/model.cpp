// Loading: tensors are checked against the config (names, shapes, types) before any is used.
#include "cpu/model.h"

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
            if (!used_.count(t.name)) throw ModelError("unexpected tensor '" + t.name + "' for a bitnet model");
    }

private:
    const GgufFile& f_;
    std::set<std::string> used_;
};

std::vector<float> f32_vector(const GgufTensor& t) {
    std::vector<float> v(static_cast<size_t>(t.n_elements));
    std::memcpy(v.data(), t.data, v.size() * sizeof(float));  // the mapping may be unaligned for floats
    return v;
}

// f16 matrix from the mapping when it is 2-byte aligned, else (or for f32 files) an owned f16 copy.
const uint16_t* f16_matrix(const GgufTensor& t, std::vector<uint16_t>& owned) {
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

BitLinear bitlinear(const GgufFile& f, TensorChecker& tc, const std::string& prefix, int64_t in, int64_t out) {
    const std::string name = prefix + ".weight";
    const GgufTensor& t = tc.get(name, {in, out}, {GgmlType::TQ2_0, GgmlType::TQ1_0, GgmlType::I2_S});
    BitLinear b;
    try {
        switch (static_cast<GgmlType>(t.type)) {
            case GgmlType::TQ2_0: b.w = TernaryMatrix::from_tq2_0(t.data, out, in); break;
            case GgmlType::TQ1_0: b.w = TernaryMatrix::from_tq1_0(t.data, out, in); break;
            default: b.w = TernaryMatrix::from_i2_s(t.data, out, in); break;
        }
    } catch (const std::invalid_argument& e) {
        throw ModelError("tensor '" + name + "': " + e.what());
    }
    f.release(t);  // now held in the kernels' layout: keeps peak RSS near the model's own size
    if (const GgufTensor* s = tc.find(prefix + ".scale")) {
        tc.get(prefix + ".scale", {1}, {GgmlType::F32});
        std::memcpy(&b.out_scale, s->data, 4);
        if (!std::isfinite(b.out_scale)) throw ModelError("tensor '" + prefix + ".scale' is not finite");
        b.has_out_scale = true;
    }
    return b;
}

}  // namespace

const char* head_type_name(HeadType h) { return h == HeadType::Q8 ? "q8" : "f16"; }

HeadType parse_head_type(const std::string& s) {
    if (s == "f16") return HeadType::F16;
    if (s == "q8") return HeadType::Q8;
    throw std::invalid_argument("head must be 'f16' or 'q8', got '" + s + "'");
}

std::unique_ptr<Model> Model::load(const std::string& path, const LoadOptions& opts) {
    GgufFile f = GgufFile::open(path);  // its errors already name the path
    try {
        return load(std::move(f), opts);
    } catch (const ModelError& e) {
        throw ModelError("'" + path + "': " + e.what());
    }
}

std::unique_ptr<Model> Model::load(GgufFile file, const LoadOptions& opts) {
    return std::unique_ptr<Model>(new Model(std::move(file), opts));  // private constructor
}

Model::Model(GgufFile file, const LoadOptions& opts)
    : file_(std::move(file)), cfg_(read_config(file_)), kernel_(best_kernel()), kernels_(kernel_table(kernel_)), kv_f16_(opts.kv_f16), pool_(opts.threads) {
    load_weights(opts.head);
    allocate(opts);
}

Model::~Model() = default;

void Model::load_weights(HeadType head) {
    const ModelConfig& c = cfg_;
    TensorChecker tc(file_);
    const GgufTensor& emb = tc.get("token_embd.weight", {c.dim, c.vocab}, {GgmlType::F16, GgmlType::F32});
    embd_ = f16_matrix(emb, embd_owned_);
    const GgufTensor* out = nullptr;
    if (c.tied) {
        head_ = embd_;
    } else {
        out = &tc.get("output.weight", {c.dim, c.vocab}, {GgmlType::F16, GgmlType::F32});
        head_ = f16_matrix(*out, head_owned_);
    }
    head_type_ = head;
    if (head == HeadType::Q8) {
        // Requantize from the f16 values the f16 head would use, rows split across the pool. Afterwards
        // only the int8 copy is read: a tied table's pages are touched again only for looked-up rows,
        // and an untied f16 head is dropped (its mapping released, or its owned copy freed).
        try {
            head_q8_ = Q8Head(c.vocab, c.dim);
        } catch (const std::invalid_argument& e) {
            throw ModelError(std::string("q8 head: ") + e.what());
        }
        const int nc = pool_.size() * 4;
        const uint16_t* src = head_;
        pool_.run(nc, [&](int i, int) {
            int64_t b, e;
            split_range(c.vocab, i, nc, 64, b, e);
            if (b < e) head_q8_.quantize_rows_f16(src, b, e);
        });
        if (out) {
            if (head_owned_.empty()) file_.release(*out);
            std::vector<uint16_t>().swap(head_owned_);
        } else if (embd_owned_.empty()) {
            file_.release(emb);  // quantizing read the whole table; lookups fault back only their rows
        }
        head_ = nullptr;
    }
    output_norm_ = f32_vector(tc.get("output_norm.weight", {c.dim}, {GgmlType::F32}));
    layers_.resize(static_cast<size_t>(c.n_layers));
    for (int64_t l = 0; l < c.n_layers; ++l) {
        const std::string p = "blk." + std::to_string(l) + ".";
        LayerWeights& L = layers_[static_cast<size_t>(l)];
        L.attn_norm = f32_vector(tc.get(p + "attn_norm.weight", {c.dim}, {GgmlType::F32}));
        if (c.sub_norms) {  // without them, a file that still has the tensors fails check_all_used()
            L.attn_sub_norm = f32_vector(tc.get(p + "attn_sub_norm.weight", {c.dim}, {GgmlType::F32}));
            L.ffn_sub_norm = f32_vector(tc.get(p + "ffn_sub_norm.weight", {c.ffn}, {GgmlType::F32}));
        }
        L.ffn_norm = f32_vector(tc.get(p + "ffn_norm.weight", {c.dim}, {GgmlType::F32}));
        // Inputs are stored padded to whole 256-blocks (config.h, dim_in / ffn_in).
        L.q = bitlinear(file_, tc, p + "attn_q", c.dim_in, c.dim);
        L.k = bitlinear(file_, tc, p + "attn_k", c.dim_in, c.kv_dim());
        L.v = bitlinear(file_, tc, p + "attn_v", c.dim_in, c.kv_dim());
        L.o = bitlinear(file_, tc, p + "attn_output", c.dim_in, c.dim);
        L.gate = bitlinear(file_, tc, p + "ffn_gate", c.dim_in, c.ffn);
        L.up = bitlinear(file_, tc, p + "ffn_up", c.dim_in, c.ffn);
        L.down = bitlinear(file_, tc, p + "ffn_down", c.ffn_in, c.dim);
    }
    tc.check_all_used();
}

void Model::allocate(const LoadOptions& opts) {
    const ModelConfig& c = cfg_;
    ctx_ = opts.max_context > 0 ? std::min(opts.max_context, c.context) : c.context;
    max_batch_ = std::max<int64_t>(1, std::min<int64_t>(opts.max_batch, ctx_));
    if (opts.sequences < 1 || opts.sequences > max_batch_)
        throw std::invalid_argument("sequences must be in [1, max_batch = " + std::to_string(max_batch_) + "], got " +
                                    std::to_string(opts.sequences));
    sequences_ = opts.sequences;
    // The cache is address space until touched, but refuse sizes no machine could ever fill.
    const double kv_bytes = 2.0 * sequences_ * c.n_layers * ctx_ * c.kv_dim() * (kv_f16_ ? 2 : 4);
    if (kv_bytes > 256.0 * (1ull << 30))
        throw ModelError("context " + std::to_string(ctx_) + " needs " + std::to_string(kv_bytes / (1ull << 30)) +
                         " GiB of KV cache; load with a smaller max context");
    const size_t kv_count = static_cast<size_t>(sequences_ * c.n_layers * ctx_ * c.kv_dim());
    if (kv_f16_) {
        k16_cache_ = AnonArray<uint16_t>(kv_count);
        v16_cache_ = AnonArray<uint16_t>(kv_count);
    } else {
        k_cache_ = AnonArray<float>(kv_count);
        v_cache_ = AnonArray<float>(kv_count);
    }

    const size_t B = static_cast<size_t>(max_batch_), D = c.dim, F = c.ffn, KV = c.kv_dim();
    x_.assign(B * D, 0.0f);
    xn_.assign(B * std::max(D, F), 0.0f);
    xp_.assign(B * std::max(c.dim_in, c.ffn_in), 0.0f);  // BitLinear inputs, rows padded with zeros
    q_.assign(B * D, 0.0f);
    k_.assign(B * KV, 0.0f);
    v_.assign(B * KV, 0.0f);
    att_.assign(B * D, 0.0f);
    gate_.assign(B * F, 0.0f);
    up_.assign(B * F, 0.0f);
    cos_.assign(B * c.head_dim / 2, 0.0f);
    sin_.assign(B * c.head_dim / 2, 0.0f);
    scores_.assign(static_cast<size_t>(pool_.size()) * ctx_, 0.0f);
    row_pos_.assign(B, 0);
    row_slot_.assign(B, 0);
    inv_freq_.resize(c.head_dim / 2);
    for (int64_t i = 0; i < c.head_dim / 2; ++i) inv_freq_[i] = rope_inv_freq(c, i);
    // Size the activation buffers once at the largest batch so forward() never grows them.
    quantize_acts(xp_.data(), max_batch_, c.dim_in, qa_dim_, kernel_);
    quantize_acts(xp_.data(), max_batch_, c.ffn_in, qa_ffn_, kernel_);
    if (head_type_ == HeadType::Q8) quantize_acts(xn_.data(), max_batch_, c.dim, qa_head_, kernel_);
}

size_t Model::head_bytes() const {
    if (head_type_ == HeadType::Q8) return head_q8_.bytes();
    return static_cast<size_t>(2 * cfg_.vocab * cfg_.dim);
}

size_t Model::weight_bytes() const {
    size_t b = 0;
    for (const LayerWeights& L : layers_)
        for (const BitLinear* w : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) b += w->w.bytes();
    return b;
}

double Model::decode_bytes(int64_t pos) const {
    const ModelConfig& c = cfg_;
    const double head = static_cast<double>(head_bytes()), emb_row = 2.0 * c.dim;
    const double kv = 2.0 * c.n_layers * (pos + 1) * c.kv_dim() * (kv_f16_ ? 2 : 4);
    return static_cast<double>(weight_bytes()) + head + emb_row + kv;
}

}  // namespace bllama

// Loading: the file's tensors, checked against the config by the shared step (engine/weights.h) before any is
// used, packed into the kernels' layout.
#include "cpu/model.h"

#include "engine/weights.h"
#include "kernels/cpu_features.h"
#include "kernels/huge_pages.h"

#include <cstdio>
#include <cstdlib>

namespace bllama {

namespace {

// The layout a BitLinear tensor is packed in.
TernaryLayout packed_layout(const BitLinearTensor& t, TernaryLayout tq1) {
    return static_cast<GgmlType>(t.weight->type) == GgmlType::TQ1_0 ? tq1 : TernaryLayout::TwoBit;
}

BitLinear bitlinear(const GgufFile& f, WeightArena& arena, const BitLinearTensor& t, TernaryLayout tq1) {
    BitLinear b;
    try {
        switch (static_cast<GgmlType>(t.weight->type)) {
            case GgmlType::TQ2_0: b.w = TernaryMatrix::from_tq2_0(t.weight->data, t.rows, t.cols, &arena); break;
            case GgmlType::TQ1_0: b.w = TernaryMatrix::from_tq1_0(t.weight->data, t.rows, t.cols, tq1, &arena); break;
            default: b.w = TernaryMatrix::from_i2_s(t.weight->data, t.rows, t.cols, &arena); break;
        }
    } catch (const std::invalid_argument& e) {
        throw ModelError("tensor '" + t.weight->name + "': " + e.what());
    }
    f.release(*t.weight);  // now held in the kernels' layout: keeps peak RSS near the model's own size
    b.out_scale = t.out_scale;
    b.has_out_scale = t.has_out_scale;
    if (t.bias) b.bias = f32_values(*t.bias);
    return b;
}

}  // namespace

Tq1Layout parse_tq1_layout(const std::string& s) {
    if (s == "auto") return Tq1Layout::Auto;
    if (s == "2bit") return Tq1Layout::TwoBit;
    if (s == "base3") return Tq1Layout::Base3;
    throw std::invalid_argument("tq1_layout must be 'auto', '2bit' or 'base3', got '" + s + "'");
}

TernaryLayout resolve_tq1_layout(Tq1Layout l, KernelKind kind) {
    if (l == Tq1Layout::Auto) {
        if (const char* env = std::getenv("BLLAMA_TQ1_LAYOUT")) {
            try {
                l = parse_tq1_layout(env);
            } catch (const std::invalid_argument& e) {
                std::fprintf(stderr, "bllama: BLLAMA_TQ1_LAYOUT: %s; using auto\n", e.what());
            }
        }
    }
    if (l == Tq1Layout::Base3) return TernaryLayout::Base3;
    if (l == Tq1Layout::TwoBit) return TernaryLayout::TwoBit;
    // Base 3 where decode is faster than with the 2-bit repack (bench/RESULTS.md, "Quiet rerun, third session"):
    // AVX-512 VNNI with VBMI (decode 1.04-1.07x on 0.85x the bytes; prompts 0.92-0.95x, the panel expansion). Not AVX2
    // (its compare expansion left the prompt at 0.94x and 3-4-token batches at 0.8x), not AVX-512 without VBMI
    // (the compare expansion, ~4%), not ARM: its base-3 kernels (ternary1_neon.cpp) are checked under qemu but never
    // timed on ARM hardware, and they spend four instructions per 16 weights decoding trits where the 2-bit layout
    // spends one or two, so whether the 0.81x bytes win depends on the core's bandwidth per instruction: unmeasured,
    // the 2-bit repack stays the default and base3 is the explicit choice for the resident memory.
    return kind == KernelKind::Avx512Vnni && has_base3_kernel(kind) && cpu_features().avx512_vbmi ? TernaryLayout::Base3
                                                                                                  : TernaryLayout::TwoBit;
}

const char* head_type_name(HeadType h) { return h == HeadType::Q8 ? "q8" : h == HeadType::Q4 ? "q4" : "f16"; }

HeadType parse_head_type(const std::string& s) {
    if (s == "f16") return HeadType::F16;
    if (s == "q8") return HeadType::Q8;
    if (s == "q4") return HeadType::Q4;
    throw std::invalid_argument("head must be 'f16', 'q8' or 'q4', got '" + s + "'");
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
    : file_(std::move(file)), cfg_(read_config(file_)), kernel_(best_kernel()), kernels_(kernel_table(kernel_)), kv_f16_(opts.kv_f16), pool_(opts.threads, opts.pin_threads), chunks_(pool_.size()) {
    load_weights(opts.head, resolve_tq1_layout(opts.tq1_layout, kernel_));
    allocate(opts);
}

Model::~Model() = default;

void Model::load_weights(HeadType head, TernaryLayout tq1) {
    const ModelConfig& c = cfg_;
    const ModelTensors t = check_model_tensors(file_, c);
    embd_ = f16_values(*t.embedding, embd_owned_);
    head_ = c.tied ? embd_ : f16_values(*t.output, head_owned_);
    if (head == HeadType::Q4 && c.dim % kQ4Block != 0) head = HeadType::Q8;  // Q4 blocks need whole 32-column runs
    head_type_ = head;
    output_norm_ = f32_values(*t.output_norm);
    if (head == HeadType::Q4) {
        try {
            head_q4_ = Q4Head(c.vocab, c.dim);
            // The head reads the final norm's output, so its columns' errors weigh by that norm's gain squared.
            // (bench/RESULTS.md, "4-bit head: searched scales": on the shipped model this took the 4-bit head from
            // +0.95% perplexity over f16 (absmax scales) to -0.02%; searched scales without it, +0.28%.)
            const std::vector<float> importance = q4_importance_from_norm(output_norm_.data(), c.dim);
            const int nc = pool_.size() * 4;
            pool_.run(nc, [&](int i, int) {
                int64_t b, e;
                split_range(c.vocab, i, nc, 64, b, e);
                if (b < e) head_q4_.quantize_rows_f16(head_, b, e, importance.empty() ? nullptr : importance.data());
            });
        } catch (const std::invalid_argument& e) {
            throw ModelError(std::string("q4 head: ") + e.what());
        }
    } else if (head == HeadType::Q8) {
        head_q8_ = requantize_head_q8(head_, c.vocab, c.dim, pool_);
    }
    if (head != HeadType::F16) {
        // Requantize from the f16 values the f16 head would use. Afterwards only the int8 copy is read: a tied
        // table's pages are touched again only for looked-up rows, and an untied f16 head is dropped (its mapping
        // released, or its owned copy freed).
        if (t.output) {
            if (head_owned_.empty()) file_.release(*t.output);
            std::vector<uint16_t>().swap(head_owned_);
        } else if (embd_owned_.empty()) {
            file_.release(*t.embedding);  // quantizing read the whole table; lookups fault back only their rows
        }
        head_ = nullptr;
    }
    layers_.resize(static_cast<size_t>(c.n_layers));
    // Every layer's packed codes in one huge-page buffer (WeightArena), sized by a first pass over the shapes.
    size_t packed = 0;
    for (const LayerTensors& T : t.layers)
        for (const BitLinearTensor* b : {&T.q, &T.k, &T.v, &T.o, &T.gate, &T.up, &T.down})
            packed += (TernaryMatrix::packed_bytes(b->rows, b->cols, packed_layout(*b, tq1)) + 63) / 64 * 64;
    WeightArena arena(packed);
    for (int64_t l = 0; l < c.n_layers; ++l) {
        const LayerTensors& T = t.layers[static_cast<size_t>(l)];
        LayerWeights& L = layers_[static_cast<size_t>(l)];
        L.attn_norm = f32_values(*T.attn_norm);
        if (c.sub_norms) {
            L.attn_sub_norm = f32_values(*T.attn_sub_norm);
            L.ffn_sub_norm = f32_values(*T.ffn_sub_norm);
        }
        L.ffn_norm = f32_values(*T.ffn_norm);
        if (c.qk_norm) {
            L.q_norm = f32_values(*T.attn_q_norm);
            L.k_norm = f32_values(*T.attn_k_norm);
        }
        L.q = bitlinear(file_, arena, T.q, tq1);
        L.k = bitlinear(file_, arena, T.k, tq1);
        L.v = bitlinear(file_, arena, T.v, tq1);
        L.o = bitlinear(file_, arena, T.o, tq1);
        L.gate = bitlinear(file_, arena, T.gate, tq1);
        L.up = bitlinear(file_, arena, T.up, tq1);
        L.down = bitlinear(file_, arena, T.down, tq1);
    }
}

void Model::allocate(const LoadOptions& opts) {
    const ModelConfig& c = cfg_;
    ctx_ = opts.max_context > 0 ? std::min(opts.max_context, c.context) : c.context;
    max_batch_ = std::max<int64_t>(1, std::min<int64_t>(opts.max_batch, ctx_));
    if (opts.sequences < 1 || opts.sequences > max_batch_)
        throw std::invalid_argument("max_sequences must be in [1, " + std::to_string(max_batch_) +
                                    "] on the CPU (a step's rows fit one prompt chunk), got " +
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
    // On 2 MiB pages a decode step's attention reads each head's keys and values ~1.6x faster (4 KiB pages: a TLB
    // miss and a stopped hardware prefetcher every 16 positions): 1.7B decode 1.065x at position ~160, 1.23x at
    // ~800. The price: a sequence commits its cache in 2 MiB steps, which for contexts under 8K (a head's keys
    // under 2 MiB) is the whole of it at its first token, as the peer engines' caches are.
    advise_huge_pages(k16_cache_.data(), k16_cache_.size() * sizeof(uint16_t));
    advise_huge_pages(v16_cache_.data(), v16_cache_.size() * sizeof(uint16_t));
    advise_huge_pages(k_cache_.data(), k_cache_.size() * sizeof(float));
    advise_huge_pages(v_cache_.data(), v_cache_.size() * sizeof(float));

    const size_t B = static_cast<size_t>(max_batch_), D = c.dim, F = c.ffn, KV = c.kv_dim(), QD = c.attn_dim;
    x_.assign(B * D, 0.0f);
    xn_.assign(B * std::max(D, F), 0.0f);
    xp_.assign(B * std::max({c.dim_in, c.ffn_in, c.attn_in}), 0.0f);  // BitLinear inputs, rows padded with zeros
    q_.assign(B * std::max(D, QD), 0.0f);  // also the o and down projections' outputs (D wide)
    k_.assign(B * KV, 0.0f);
    v_.assign(B * KV, 0.0f);
    att_.assign(B * QD, 0.0f);
    gate_.assign(B * F, 0.0f);
    up_.assign(B * F, 0.0f);
    cos_.assign(B * c.head_dim / 2, 0.0f);
    sin_.assign(B * c.head_dim / 2, 0.0f);
    // A thread's scores: scores_rows() rows of ctx_ (attend_group_f16, attend_many_f32).
    scores_.assign(static_cast<size_t>(pool_.size() * scores_rows() * ctx_), 0.0f);
    if (kv_f16_) kv32_ = AnonArray<float>(static_cast<size_t>(pool_.size() * 2 * ctx_ * c.head_dim));
    row_pos_.assign(B, 0);
    row_slot_.assign(B, 0);
    head_rows_.assign(B, 0);
    inv_freq_.resize(c.head_dim / 2);
    for (int64_t i = 0; i < c.head_dim / 2; ++i) inv_freq_[i] = rope_inv_freq(c, i);
    // Size the activation buffers once at the largest batch so forward() never grows them.
    quantize_acts(xp_.data(), max_batch_, c.dim_in, qa_dim_, kernel_);
    quantize_acts(xp_.data(), max_batch_, c.ffn_in, qa_ffn_, kernel_);
    quantize_acts(xp_.data(), max_batch_, c.attn_in, qa_attn_, kernel_);
    if (head_type_ != HeadType::F16) quantize_acts(xn_.data(), max_batch_, c.dim, qa_head_, kernel_);
}

size_t Model::head_bytes() const {
    if (head_type_ == HeadType::Q8) return head_q8_.bytes();
    if (head_type_ == HeadType::Q4) return head_q4_.bytes();
    return static_cast<size_t>(2 * cfg_.vocab * cfg_.dim);
}

size_t Model::weight_bytes() const {
    size_t b = 0;
    for (const LayerWeights& L : layers_)
        for (const BitLinear* w : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) b += w->w.bytes();
    return b;
}

double gemv_read_bytes(const TernaryMatrix& w) {
    const double scales = static_cast<double>((w.rows() + 15) / 16 * 16) * static_cast<double>(w.cols() / 256) * 4;
    return static_cast<double>(w.bytes()) - (w.uniform_scale() ? scales : 0.0);
}

double Model::decode_bytes(int64_t pos) const {
    const ModelConfig& c = cfg_;
    const double head = static_cast<double>(head_bytes()), emb_row = 2.0 * c.dim;
    const double kv = 2.0 * c.n_layers * (pos + 1) * c.kv_dim() * (kv_f16_ ? 2 : 4);
    double weights = 0;  // what the GEMVs read, not weight_bytes() (memory held)
    for (const LayerWeights& L : layers_)
        for (const BitLinear* w : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) weights += gemv_read_bytes(w->w);
    return weights + head + emb_row + kv;
}

}  // namespace bllama

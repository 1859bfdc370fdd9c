// A loaded bitnet model: weights in the kernels' layout, the KV cache, scratch buffers and the
// thread pool, all created at load. forward() runs a chunk of tokens (a prompt: GEMM path) or a
// single token (decode: GEMV path) and performs no allocation.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/config.h"
#include "engine/gguf.h"
#include "engine/mapped_file.h"
#include "engine/threadpool.h"
#include "kernels/dispatch.h"
#include "kernels/head_q4.h"
#include "kernels/head_q8.h"
#include "kernels/ternary.h"

namespace bllama {

// F16: the file's f16 head as is (exact). Q8: requantized at load to int8 with one fp32 scale per row
// (kernels/head_q8.h): half the head's bytes per decode token. Q4: 4-bit with one f16 scale per 32 columns
// (kernels/head_q4.h): 0.28x the f16 head's bytes, held-out perplexity within 0.5% of f16 (bench/head_accuracy.py);
// the default. A hidden size that is not a multiple of 32 loads Q4 as Q8.
enum class HeadType { F16, Q8, Q4 };
// How a TQ1_0 file's projections are held (LoadOptions::tq1_layout; docs/engine.md, "Files", kernels/pack).
enum class Tq1Layout { Auto, TwoBit, Base3 };
Tq1Layout parse_tq1_layout(const std::string& s);  // "auto" / "2bit" / "base3"; std::invalid_argument otherwise
TernaryLayout resolve_tq1_layout(Tq1Layout l, KernelKind kind);  // Auto (and BLLAMA_TQ1_LAYOUT) made concrete
const char* head_type_name(HeadType h);   // "f16" / "q8" / "q4"
HeadType parse_head_type(const std::string& s);  // throws std::invalid_argument

enum class Device { Cpu, Cuda };

// RoPE frequency of pair i: float64 then rounded once, as bllama/model.py does (every backend uses this).
inline double rope_inv_freq(const ModelConfig& c, int64_t i) {
    const double f = 1.0 / std::pow(static_cast<double>(c.rope_theta), 2.0 * static_cast<double>(i) / static_cast<double>(c.head_dim));
    return c.rope_divisors.empty() ? f : f / static_cast<double>(c.rope_divisors[static_cast<size_t>(i)]);
}

struct LoadOptions {
    int threads = 0;          // <= 0: default_thread_count()
    int64_t max_context = 0;  // > 0: cap the KV cache below the file's context length
    int64_t max_batch = 64;   // tokens per prompt chunk (longer prompts run in several chunks)
    // fp16 KV cache (the default, as every peer engine): half the cache's bytes per decode token, ~1e-3 relative
    // deviation of the attention output; false: fp32, exactly the model's function.
    bool kv_f16 = true;
    HeadType head = HeadType::Q4;   // LM head format (docs/engine.md, "LM head"); F16 for exact logits
    Device device = Device::Cpu;    // Engine: which backend runs the model
    int sequences = 1;              // sequences decoded together (a KV cache for each); CPU: <= max_batch
    bool pin_threads = false;       // pin the pool's workers to physical cores (ThreadPool; BLLAMA_PIN=1 too)
    // TQ1_0 files: Auto keeps them at 1.6 bits (TernaryLayout::Base3) where decode measured faster than the 2-bit
    // repack (the AVX-512 kind on a CPU with VBMI; resolve_tq1_layout; prompts are 5-8% slower there) and repacks
    // them to 2 bits elsewhere;
    // BLLAMA_TQ1_LAYOUT=2bit|base3 overrides Auto.
    Tq1Layout tq1_layout = Tq1Layout::Auto;
};

// One BitLinear: ternary codes with per-block scales, and the optional extra output scale tensor.
struct BitLinear {
    TernaryMatrix w;
    float out_scale = 1.0f;
    bool has_out_scale = false;
    std::vector<float> bias;  // [rows] added after the scale; empty: none (no cost)
};

struct LayerWeights {
    std::vector<float> attn_norm, attn_sub_norm, ffn_norm, ffn_sub_norm;
    std::vector<float> q_norm, k_norm;  // [head_dim], QK-norm only (ModelConfig::qk_norm)
    BitLinear q, k, v, o, gate, up, down;
};

// The checks every backend's forward makes before any work: n > 0 tokens at positions pos .. pos+n-1 within
// `context` (std::invalid_argument / std::out_of_range naming `who`), every id in [0, vocab).
void check_forward_args(const char* who, const int32_t* tokens, int64_t n, int64_t pos, int64_t context,
                        int64_t vocab);

// Bytes one decode GEMV reads from w: its codes, and its per-block scales only where they differ (a uniform
// matrix's epilogue uses the one scale, so its scale array, 1/16 of the codes, is never read).
double gemv_read_bytes(const TernaryMatrix& w);

class Model {
public:
    static std::unique_ptr<Model> load(const std::string& path, const LoadOptions& opts = {});
    static std::unique_ptr<Model> load(GgufFile file, const LoadOptions& opts = {});

    const ModelConfig& config() const { return cfg_; }
    const GgufFile& gguf() const { return file_; }
    int64_t context() const { return ctx_; }  // KV cache capacity (<= config().context)
    int threads() const { return pool_.size(); }
    uint64_t pool_handoffs() const { return pool_.handoffs(); }  // jobs handed to the workers so far
    uint64_t pool_sleeps() const { return pool_.sleeps(); }      // times a worker slept between jobs
    bool kv_f16() const { return kv_f16_; }
    KernelKind kernel() const { return kernel_; }
    HeadType head_type() const { return head_type_; }
    size_t head_bytes() const;  // bytes the head matmul reads per token

    // Runs tokens[0, n) of sequence `slot` at positions pos .. pos+n-1, reading its KV cache for positions < pos
    // and writing it for the new ones. logits receives vocab floats for the last token, or n * vocab
    // (row per token) when all_logits. Throws std::out_of_range for bad ids / positions / slot.
    void forward(const int32_t* tokens, int64_t n, int64_t pos, float* logits, bool all_logits, int slot = 0);
    // One decode step of n sequences together: row t is token tokens[t] at position pos[t] of sequence slots[t]
    // (slots null: sequence t; the slots must be distinct). The matmuls read every weight once for all n rows;
    // logits [n, vocab]. Row t's logits are bit-identical to forward(&tokens[t], 1, pos[t], ..., slots[t]) (every
    // kernel works row by row).
    void forward_batch(const int32_t* tokens, const int64_t* pos, const int32_t* slots, int64_t n, float* logits);
    // The same for up to max_batch() rows where a sequence may take several rows at distinct positions (a prompt
    // chunk beside other sequences' decode rows; each row attends to positions 0 .. pos[t] of its sequence, the
    // earlier ones already in the cache or rows of this call), and the head runs only for logit_rows (increasing
    // row indices): logits [n_logits, vocab], row i for row logit_rows[i]. Each row's values are bit-identical to
    // running it alone (for the f16 head: up to kF16ExactTokens logit rows).
    void forward_batch(const int32_t* tokens, const int64_t* pos, const int32_t* slots, int64_t n, float* logits,
                       const int64_t* logit_rows, int64_t n_logits);
    int sequences() const { return sequences_; }
    int64_t max_batch() const { return max_batch_; }  // tokens per prompt chunk

    // The loaded weights, for backends that copy them elsewhere (csrc/cuda).
    const LayerWeights& layer(int64_t l) const { return layers_[static_cast<size_t>(l)]; }
    const std::vector<float>& output_norm() const { return output_norm_; }
    const uint16_t* embedding_f16() const { return embd_; }   // [V, D]
    const uint16_t* head_f16() const { return head_; }        // [V, D]; null when the head is Q8
    const Q8Head& head_q8() const { return head_q8_; }        // HeadType::Q8 only (empty otherwise)
    const Q4Head& head_q4() const { return head_q4_; }        // HeadType::Q4 only (empty otherwise)
    // Hands back the mapped file (its metadata stays readable) and frees everything else.
    static GgufFile release_file(std::unique_ptr<Model> m) { return std::move(m->file_); }

    // Bytes a decode step at position pos reads: weights, head, one embedding row, the KV cache.
    double decode_bytes(int64_t pos) const;
    size_t weight_bytes() const;

    Model(const Model&) = delete;
    Model& operator=(const Model&) = delete;
    ~Model();

private:
    Model(GgufFile file, const LoadOptions& opts);
    void load_weights(HeadType head, TernaryLayout tq1);
    void allocate(const LoadOptions& opts);
    // The n rows at row_pos_ / row_slot_ (set by forward / forward_batch).
    void forward_rows(const int32_t* tokens, int64_t n, float* logits, bool all_logits);
    void attention(int64_t layer, int64_t n);
    void head(const int64_t* rows, int64_t m, float* logits);  // logits of hidden rows rows[0..m) of x_
    void attend_one(int64_t layer, int64_t t, int64_t h, int thread);
    // attend_one for every query head of kv head g and rows [t0, t1), several query vectors per pass over the keys:
    // a run of prompt rows of one sequence shares one fp32 copy of its fp16 keys and values (the same bits: the
    // conversion is exact).
    void attend_rows(int64_t layer, int64_t g, int64_t t0, int64_t t1, int thread);
    void write_kv(int64_t layer, int64_t n, int64_t b, int64_t e);
    void rope_tables(int64_t n);
    // First element of kv head g's keys (or values) in the cache: [ctx][head_dim], position after position, so a
    // decode step's attention reads each head's keys as one stream (rows of all heads interleaved put one head's
    // consecutive keys a whole cache row apart, a stride the hardware prefetchers do not follow).
    int64_t cache_head(int64_t slot, int64_t layer, int64_t g) const {
        return ((slot * cfg_.n_layers + layer) * cfg_.n_kv_heads + g) * ctx_ * cfg_.head_dim;
    }
    void apply_rope(float* x, int64_t n, int64_t n_heads, int64_t h0, int64_t h1);

    GgufFile file_;
    ModelConfig cfg_;
    KernelKind kernel_;
    const KernelTable& kernels_;  // kernel_'s table: the attention calls go through it
    bool kv_f16_ = false;
    ThreadPool pool_;
    GuidedChunks chunks_;  // how a matmul job's rows are cut for the pool (engine/threadpool.h says why)
    int64_t ctx_ = 0, max_batch_ = 0;
    int sequences_ = 1;

    std::vector<LayerWeights> layers_;
    std::vector<float> output_norm_;
    const uint16_t* embd_ = nullptr;   // [V, D] f16, in the mapping or in embd_owned_
    const uint16_t* head_ = nullptr;   // [V, D] f16 (== embd_ when tied)
    std::vector<uint16_t> embd_owned_, head_owned_;
    HeadType head_type_ = HeadType::F16;
    Q8Head head_q8_;                   // HeadType::Q8: [V, D] int8 + per-row scales (head_ is then null)
    Q4Head head_q4_;                   // HeadType::Q4: [V, D] 4-bit + per-block scales (head_ is then null)
    std::vector<double> inv_freq_;     // [hd/2], float64 like bllama/model.py

    // KV cache: [sequence][layer][kv head][position][head_dim] (cache_head), fp32 or fp16 (one pair is used); a
    // sequence's part is committed when first touched, in 2 MiB steps (Model::allocate says why).
    AnonArray<float> k_cache_, v_cache_;
    AnonArray<uint16_t> k16_cache_, v16_cache_;

    // Scratch, sized for max_batch tokens.
    std::vector<float> xp_;  // [max_batch, max(dim_in, ffn_in)] BitLinear inputs with zeroed padding
    std::vector<float> x_, xn_, q_, k_, v_, att_, gate_, up_, cos_, sin_;  // q_, att_: rows of attn_dim
    // Score rows a thread's scratch holds: a kv head's query heads (attend_group_f16), at least the 4 vectors that
    // attend_many_f32 runs at once.
    int64_t scores_rows() const { return std::max<int64_t>(cfg_.n_heads / cfg_.n_kv_heads, 4); }
    std::vector<float> scores_;  // [threads, scores_rows(), ctx]
    AnonArray<float> kv32_;      // [threads][2][ctx * head_dim]: attend_rows' fp32 keys and values (fp16 cache only)
    std::vector<int64_t> row_pos_, row_slot_;  // [max_batch]: position and sequence of each row of a chunk
    std::vector<int64_t> head_rows_;           // [max_batch]: forward_rows' head rows
    QuantizedActs qa_dim_, qa_ffn_, qa_head_;
    QuantizedActs qa_attn_;  // o's input: attn_in wide (dim_in unless the heads are of another width)
};

}  // namespace bllama

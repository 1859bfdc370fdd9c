// Model hyper-parameters read from GGUF metadata (docs/architecture.md, "Config").
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/gguf.h"

namespace bllama {

// The file is a valid GGUF but not a model this engine can run (wrong architecture, missing or
// inconsistent keys/tensors). Mapped to Python's ValueError like GgufError.
class ModelError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

enum class Activation { Silu, Relu2 };
const char* activation_name(Activation a);

struct ModelConfig {
    int64_t vocab = 0;       // V
    int64_t dim = 0;         // D
    int64_t n_layers = 0;    // L
    int64_t n_heads = 0;     // H
    int64_t n_kv_heads = 0;  // Hkv
    int64_t head_dim = 0;    // D / H, or attention.key_length (Qwen3-0.6B: D 1024, 16 heads of 128)
    int64_t attn_dim = 0;    // H * head_dim: q's outputs, o's inputs (D unless key_length says otherwise)
    int64_t ffn = 0;         // F
    // Stored (padded) input lengths of the ternary tensors: D and F rounded up to a multiple of 256.
    // A logical length that is not a multiple of 256 is stored zero-padded; the engine feeds zero
    // activations to the padding, so the stored pad codes never contribute.
    int64_t dim_in = 0, ffn_in = 0;
    int64_t attn_in = 0;     // o's stored input length: attn_dim rounded up to a multiple of 256
    int64_t context = 0;     // T as stored in the file
    float rms_eps = 1e-5f;
    float rope_theta = 10000.0f;
    Activation activation = Activation::Silu;
    bool tied = true;
    // bllama.sub_norms (default true): the "subln" block. False: no attn_sub_norm / ffn_sub_norm
    // (HF1BitLLM / Falcon3-1.58bit LLaMA blocks); o_proj and down_proj read their inputs unnormalized.
    bool sub_norms = true;
    // Qwen3's QK-norm (blk.N.attn_q_norm / attn_k_norm, f32 [head_dim]): each head of q and k RMS-normed before RoPE.
    // Present in the file or not; a file with one of the two is refused.
    bool qk_norm = false;
    // Qwen2's q/k/v biases (blk.N.attn_{q,k,v}.bias) in any layer; what weights.cpp checks and the backends add.
    bool qkv_bias = false;
    uint32_t weight_type = 35;  // ggml type of the projections (TQ2_0, TQ1_0 or I2_S)
    // rope_freqs.weight: what each RoPE frequency is divided by ([head_dim / 2], Llama-3.1's scaling as llama.cpp
    // stores it); empty: plain RoPE.
    std::vector<float> rope_divisors;

    int64_t kv_dim() const { return n_kv_heads * head_dim; }
};

// Reads and sanity-checks the config; vocab falls back to token_embd's row count, `tied` to the
// absence of output.weight. Throws ModelError / GgufError.
ModelConfig read_config(const GgufFile& f);

}  // namespace bllama

// The model's tensors in a GGUF file, checked against its config before any backend reads them: every tensor
// the config implies is present with its ggml dims and type, the optional ".scale" tensors are finite, and the
// file holds nothing else. Both backends load from this view (csrc/cpu packs the ternary blocks into its kernels'
// layout, csrc/cuda into its own), so neither depends on the other's weight layout.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/config.h"
#include "engine/gguf.h"
#include "engine/threadpool.h"
#include "kernels/head_q8.h"

namespace bllama {

// One BitLinear as the file stores it.
struct BitLinearTensor {
    const GgufTensor* weight = nullptr;  // TQ2_0, TQ1_0 or I2_S; ggml dims {cols, rows}: the file's blocks
    int64_t rows = 0, cols = 0;          // out features, stored (256-padded) in features
    float out_scale = 1.0f;              // the optional "<prefix>.scale" tensor
    bool has_out_scale = false;
    // The optional "<prefix>.bias" (attn_q / attn_k / attn_v only, as llama.cpp's qwen2 writes them): f32 [rows],
    // finite, added to the output after the scale and before RoPE. Null: none.
    const GgufTensor* bias = nullptr;
};

struct LayerTensors {
    const GgufTensor *attn_norm = nullptr, *ffn_norm = nullptr;          // f32 [D]
    const GgufTensor *attn_sub_norm = nullptr, *ffn_sub_norm = nullptr;  // f32 [H * hd] / [F]; null without sub-norms
    const GgufTensor *attn_q_norm = nullptr, *attn_k_norm = nullptr;      // f32 [hd]; null without QK-norm
    BitLinearTensor q, k, v, o, gate, up, down;
};

struct ModelTensors {
    const GgufTensor* embedding = nullptr;    // token_embd.weight [V, D], f16 or f32
    const GgufTensor* output = nullptr;       // output.weight [V, D], f16 or f32; null when tied
    const GgufTensor* output_norm = nullptr;  // f32 [D]
    std::vector<LayerTensors> layers;
};

// Throws ModelError naming the first tensor that is missing, of the wrong type or shape, unexpected, or holding a
// non-finite value (norms, embedding, head, ".scale", ".bias"; block scales are checked as the blocks are packed). The pointers live as long as `f`.
ModelTensors check_model_tensors(const GgufFile& f, const ModelConfig& c);

// An f32 tensor's values (the mapping may be unaligned for floats).
std::vector<float> f32_values(const GgufTensor& t);
// An f16 or f32 matrix as f16: the mapping itself when it is f16 and 2-byte aligned, else `owned` filled.
const uint16_t* f16_values(const GgufTensor& t, std::vector<uint16_t>& owned);
// head="q8": the f16 head requantized to int8 rows (kernels/head_q8.h), rows split across the pool. Throws
// ModelError for a shape the int8 head cannot hold, std::invalid_argument for a non-finite weight.
Q8Head requantize_head_q8(const uint16_t* head, int64_t vocab, int64_t dim, ThreadPool& pool);

}  // namespace bllama

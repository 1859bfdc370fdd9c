#include "engine/config.h"

#include <cmath>
#include <string>

#include "engine/weights.h"  // f32_values

namespace bllama {

const char* activation_name(Activation a) { return a == Activation::Relu2 ? "relu2" : "silu"; }

namespace {
int64_t positive(const GgufFile& f, const std::string& key, int64_t v, int64_t max) {
    if (v <= 0 || v > max)
        throw ModelError("metadata '" + key + "' = " + std::to_string(v) + " is out of range [1, " + std::to_string(max) + "]");
    return v;
}
// Keys llama.cpp reads for every architecture (so a converter may write them for a bitnet file) that change the
// model's function in ways this engine does not implement: a file that sets them is refused by name, not run as if
// they were absent (a silent wrong answer: the same weights under other positions, a longer head or no causal mask).
void check_unsupported_metadata(const GgufFile& f, const std::string& p) {
    // RoPE scaling: llama.cpp scales positions by 1 / factor (scale_linear is the older key) under the type "linear"
    // (its default when the type is absent) and "yarn"; only "none" ignores the factor.
    const std::string type = f.get_string(p + "rope.scaling.type", "linear");
    for (const char* k : {"rope.scaling.factor", "rope.scale_linear"}) {
        if (!f.find(p + k) || type == "none") continue;
        const double factor = f.get_float(p + k);
        if (factor != 0.0 && factor != 1.0)
            throw ModelError("metadata '" + p + k + "' = " + std::to_string(factor) + " (rope.scaling.type '" + type +
                             "'): RoPE scaling is not supported; this engine runs unscaled RoPE only");
    }
    if (f.find(p + "rope.scaling.attn_factor") && f.get_float(p + "rope.scaling.attn_factor") != 1.0)
        throw ModelError("metadata '" + p + "rope.scaling.attn_factor' = " +
                         std::to_string(f.get_float(p + "rope.scaling.attn_factor")) + ": RoPE scaling is not supported");
    if (f.find(p + "attention.causal") && !f.get_bool(p + "attention.causal"))
        throw ModelError("metadata '" + p + "attention.causal' = false: non-causal attention is not supported");
}
// rope_freqs.weight (llama.cpp's form of Llama-3.1's RoPE scaling): one divisor per frequency, each finite and > 0.
std::vector<float> read_rope_divisors(const GgufFile& f, int64_t head_dim) {
    const GgufTensor* t = f.find_tensor("rope_freqs.weight");
    if (!t) return {};
    const int64_t n = head_dim / 2;
    if (t->type != static_cast<uint32_t>(GgmlType::F32) || t->n_dims != 1 || t->dims[0] != n)
        throw ModelError("tensor 'rope_freqs.weight' must be F32 [" + std::to_string(n) +
                         "] (one divisor per RoPE frequency of the head dim " + std::to_string(head_dim) + ")");
    const std::vector<float> v = f32_values(*t);
    for (size_t i = 0; i < v.size(); ++i)
        if (!(std::isfinite(v[i]) && v[i] > 0.0f))
            throw ModelError("tensor 'rope_freqs.weight' element " + std::to_string(i) + " = " + std::to_string(v[i]) +
                             ": RoPE frequency divisors must be finite and > 0");
    return v;
}
}  // namespace

ModelConfig read_config(const GgufFile& f) {
    // llama.cpp's 'bitnet' (SiLU unless bllama.activation says otherwise), and bitnet.cpp's names for the
    // BitNet b1.58 2B-4T graph ('bitnet-b1.58', earlier 'bitnet-25': the same blocks with ReLU^2 in the FFN).
    const std::string arch = f.get_string("general.architecture");
    const bool b158 = arch == "bitnet-b1.58" || arch == "bitnet-25";
    if (arch != "bitnet" && !b158)
        throw ModelError("unsupported architecture '" + arch +
                         "' (general.architecture): this engine runs 'bitnet', 'bitnet-b1.58' and 'bitnet-25' models");
    const std::string p = arch + ".";
    auto geti = [&](const std::string& k, int64_t max) { return positive(f, p + k, f.get_int(p + k), max); };

    ModelConfig c;
    c.dim = geti("embedding_length", 1 << 20);
    c.n_layers = geti("block_count", 1 << 16);
    c.ffn = geti("feed_forward_length", 1 << 22);
    c.n_heads = geti("attention.head_count", 1 << 16);
    c.context = geti("context_length", 1 << 22);
    c.n_kv_heads = f.find(p + "attention.head_count_kv") ? geti("attention.head_count_kv", 1 << 16) : c.n_heads;
    c.rms_eps = static_cast<float>(f.get_float(p + "attention.layer_norm_rms_epsilon"));
    c.rope_theta = static_cast<float>(f.get_float(p + "rope.freq_base", 10000.0));
    if (!(c.rms_eps > 0.0f && c.rms_eps < 1.0f))
        throw ModelError("metadata '" + p + "attention.layer_norm_rms_epsilon' = " + std::to_string(c.rms_eps) + " is not in (0, 1)");
    if (!(c.rope_theta > 1.0f && c.rope_theta < 1e12f))
        throw ModelError("metadata '" + p + "rope.freq_base' = " + std::to_string(c.rope_theta) + " is not in (1, 1e12)");

    // Per-head widths: llama.cpp's key_length / value_length (q, k, v and o are sized by them), else dim / heads.
    // Values of another width than keys (DeepSeek's MLA) are a different attention.
    const bool has_kl = f.find(p + "attention.key_length") != nullptr, has_vl = f.find(p + "attention.value_length") != nullptr;
    if (has_kl || has_vl) {
        if (!has_kl || !has_vl || f.get_int(p + "attention.key_length") != f.get_int(p + "attention.value_length"))
            throw ModelError("metadata '" + p + "attention.key_length' and 'attention.value_length' must both be given and "
                             "equal (" + (has_kl ? std::to_string(f.get_int(p + "attention.key_length")) : "absent") +
                             " vs " + (has_vl ? std::to_string(f.get_int(p + "attention.value_length")) : "absent") +
                             "): value heads of another width than key heads are not supported");
        c.head_dim = geti("attention.key_length", 1 << 12);
    } else {
        if (c.dim % c.n_heads != 0)
            throw ModelError("embedding_length " + std::to_string(c.dim) + " is not divisible by head_count " +
                             std::to_string(c.n_heads) + " (and there is no attention.key_length)");
        c.head_dim = c.dim / c.n_heads;
    }
    c.attn_dim = c.n_heads * c.head_dim;
    if (c.attn_dim > (1 << 20))
        throw ModelError("head_count x key_length = " + std::to_string(c.attn_dim) + " is out of range [1, 1048576]");
    if (c.head_dim % 2 != 0) throw ModelError("head dim " + std::to_string(c.head_dim) + " must be even for RoPE");
    if (c.n_heads % c.n_kv_heads != 0)
        throw ModelError("head_count " + std::to_string(c.n_heads) + " is not a multiple of head_count_kv " + std::to_string(c.n_kv_heads));
    if (f.find(p + "rope.dimension_count")) {
        const int64_t rd = f.get_int(p + "rope.dimension_count");
        if (rd != c.head_dim)
            throw ModelError("rope.dimension_count " + std::to_string(rd) + " != head dim " + std::to_string(c.head_dim) +
                             " (partial rotary embeddings are not supported)");
    }
    check_unsupported_metadata(f, p);
    c.rope_divisors = read_rope_divisors(f, c.head_dim);
    c.dim_in = (c.dim + 255) / 256 * 256;  // ternary rows are stored padded to whole 256-blocks
    c.ffn_in = (c.ffn + 255) / 256 * 256;
    c.attn_in = (c.attn_dim + 255) / 256 * 256;
    c.sub_norms = f.get_bool("bllama.sub_norms", true);

    const std::string act = f.get_string("bllama.activation", b158 ? "relu2" : "silu");
    if (act == "silu") c.activation = Activation::Silu;
    else if (act == "relu2") c.activation = Activation::Relu2;
    else throw ModelError("metadata 'bllama.activation' = '" + act + "': expected 'silu' or 'relu2'");

    const GgufTensor* emb = f.find_tensor("token_embd.weight");
    if (!emb) throw ModelError("missing tensor 'token_embd.weight'");
    if (f.find(p + "vocab_size")) c.vocab = geti("vocab_size", int64_t(1) << 31);
    else if (emb->n_dims == 2) c.vocab = emb->dims[1];
    else throw ModelError("tensor 'token_embd.weight' must be 2-D");

    const bool has_output = f.find_tensor("output.weight") != nullptr;
    c.tied = f.get_bool("bllama.tie_embeddings", !has_output);
    if (c.tied && has_output)
        throw ModelError("bllama.tie_embeddings is true but the file also has 'output.weight'");
    if (!c.tied && !has_output)
        throw ModelError("bllama.tie_embeddings is false but the file has no 'output.weight'");

    const GgufTensor* q0 = f.find_tensor("blk.0.attn_q.weight");
    if (!q0) throw ModelError("missing tensor 'blk.0.attn_q.weight'");
    c.weight_type = q0->type;
    c.qk_norm = f.find_tensor("blk.0.attn_q_norm.weight") || f.find_tensor("blk.0.attn_k_norm.weight");
    for (int64_t l = 0; l < c.n_layers && !c.qkv_bias; ++l)  // any layer: a bias a file leaves out is zeros
        for (const char* m : {"attn_q", "attn_k", "attn_v"})
            c.qkv_bias = c.qkv_bias || f.find_tensor("blk." + std::to_string(l) + "." + m + ".bias");
    return c;
}

}  // namespace bllama

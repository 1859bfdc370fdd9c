// What the decode loop (Engine) needs from a device: run a prompt and pick the first token, feed a token
// and pick the next, and produce all logits of a sequence. The CPU backend wraps Model + Sampler; the
// CUDA backend (csrc/cuda/cuda_backend.cu) keeps logits and sampling on the GPU, so only one token id
// crosses to the host per step.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "cpu/model.h"
#include "engine/config.h"
#include "engine/gguf.h"
#include "engine/sampler.h"
#include "engine/slots.h"

namespace bllama {

// Facts for Runtime.config / stats.
struct BackendInfo {
    std::string device;       // "cpu" or "cuda"
    std::string device_name;  // CPU kernel family or the GPU's description
    std::string kernel;       // ternary kernel family in use
    int threads = 0;          // CPU threads (0 on the GPU)
    size_t weight_bytes = 0;  // ternary weights as held in memory
    bool kv_f16 = false;
    std::string head;         // "f16" / "q8"
    size_t head_bytes = 0;
};

class Backend {
public:
    virtual ~Backend() = default;
    virtual const ModelConfig& config() const = 0;
    virtual const GgufFile& gguf() const = 0;
    virtual int64_t context() const = 0;
    virtual BackendInfo info() const = 0;

    // Starts a sequence: resets sampling to `params` (already validated), marks the prompt tokens as seen,
    // runs the prompt at positions 0 .. n-1 and returns the first sampled token.
    virtual int32_t prefill(const std::vector<int32_t>& prompt, const SamplingParams& params) = 0;
    // Marks `token` seen, runs it at position `pos` and returns the next sampled token.
    virtual int32_t decode(int32_t token, int64_t pos) = 0;
    // Logits [n, vocab] for ids at positions 0 .. n-1, from an empty cache.
    virtual void logits(const int32_t* ids, int64_t n, float* out) = 0;

    // Batched decoding: up to max_sequences() sequences advance together, one token each per step.
    // Backends without it keep 1 (Engine::generate_batch then runs the prompts one after another).
    virtual int max_sequences() const { return 1; }
    // Starts prompts.size() <= max_sequences() sequences in slots 0.. (each like prefill; slot b samples with
    // seed params.seed + b) and returns their first sampled tokens.
    virtual std::vector<int32_t> prefill_batch(const std::vector<std::vector<int32_t>>& prompts,
                                               const SamplingParams& params);
    // Runs the last sampled token of each sequence b < B with live[b] (live null: all of them) and writes its next
    // token to next[b]; the others may be run too (their next[b] then updated) or skipped (left as they are).
    // Returns the number of sequences it ran.
    virtual int decode_batch(int B, const uint8_t* live, int32_t* next);

    // Continuous batching (engine/slots.h): every slot starts, runs prompt chunks and decodes on its own.
    // The defaults throw std::logic_error (a backend with max_sequences() == 1 still offers them for slot 0).
    // True where a prompt chunk writes the same KV values, bit for bit, as decode steps of the same tokens
    // (and any chunking does too): only then may a kept KV cache be resumed (prefix reuse).
    virtual bool exact_kv_reuse() const { return false; }
    virtual int64_t prompt_chunk() const { return 64; }  // tokens a prompt forward runs at once
    // Resets slot's sampler to params (validated) and marks `seen` (the whole prompt) as seen.
    virtual void begin_slot(int slot, const std::vector<int32_t>& seen, const SamplingParams& params);
    // Runs tokens[0, n) of `slot` at positions pos .. pos+n-1. With sample: returns the next token sampled from the
    // last row's logits (and its logprobs in *lp when lp_top >= 0: lp_top alternatives); otherwise returns -1.
    virtual int32_t prefill_slot(int slot, const int32_t* tokens, int64_t n, int64_t pos, bool sample, int lp_top,
                                 TokenLogprobs* lp);
    // One decode step of n rows: token tokens[r] of slot slots[r] (distinct) at position pos[r]; each row marks its
    // token seen and samples next[r] with its slot's sampler. lp_top[r] >= 0 fills lps[r] (raw-logit logprobs).
    virtual void decode_slots(int n, const int32_t* slots, const int32_t* tokens, const int64_t* pos, int32_t* next,
                              const int* lp_top, TokenLogprobs* lps);
    // One step of mixed rows (SlotRow): decode rows first, then each joining slot's prompt rows, consecutive and at
    // increasing positions. Row r with sample set writes next[r] (and lps[r] when its lp_top >= 0); other rows'
    // entries are left alone. True from mixed_step(): one forward runs all rows (each weight read once for decode
    // and prompt rows alike), up to max_step_rows() of them; the default runs decode_slots for the decode rows and
    // prefill_slot for each slot's prompt rows.
    virtual bool mixed_step() const { return false; }
    virtual int64_t max_step_rows() const { return prompt_chunk(); }
    virtual void step_rows(const std::vector<SlotRow>& rows, int32_t* next, TokenLogprobs* lps);
};

// The CPU backend over a loaded Model.
std::unique_ptr<Backend> make_cpu_backend(std::unique_ptr<Model> model);
// The CUDA backend; throws std::runtime_error naming the reason when this build has no CUDA or no GPU is
// present, ModelError when the file cannot run on the GPU.
std::unique_ptr<Backend> make_cuda_backend(const std::string& path, const LoadOptions& opts);
bool cuda_compiled();              // this build has the CUDA backend
int cuda_device_count();           // 0 without a driver or GPU (or without CUDA in the build)
std::string cuda_device_description();

}  // namespace bllama

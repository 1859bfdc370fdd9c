// The decode loop: prompt forward, sample, feed back, until max_new_tokens, a stop token, or the
// per-token callback asks to stop. Owns a Backend (the CPU Model + Sampler, or the CUDA backend);
// not thread-safe (one caller).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "cpu/model.h"
#include "engine/backend.h"
#include "engine/sampler.h"
#include "engine/slots.h"

namespace bllama {

enum class StopReason { None, Length, StopToken, Callback };
const char* stop_reason_name(StopReason r);

struct GenerateStats {
    int64_t prompt_tokens = 0;
    int64_t cached_tokens = 0;    // of those, reused from the KV cache the previous sequence left (not run again)
    double prompt_seconds = 0;    // prompt forward + choosing the first token
    int64_t decode_tokens = 0;    // single-token forwards run after the prompt
    double decode_seconds = 0;    // their forwards + sampling
    int64_t generated_tokens = 0; // ids returned
    double load_seconds = 0;
    StopReason stop_reason = StopReason::None;
};

// Called with each generated token (stop tokens excluded); return true to stop after it.
using TokenCallback = std::function<bool(int32_t)>;
// generate_batch's: (prompt index, token) for every returned token; truthy ends that sequence after it.
using BatchTokenCallback = std::function<bool(int, int32_t)>;

class Engine {
public:
    // opts.device picks the backend (Device::Cuda: csrc/cuda; throws where unavailable).
    Engine(const std::string& path, const LoadOptions& opts = {});
    explicit Engine(std::unique_ptr<Model> model, double load_seconds = 0);
    explicit Engine(std::unique_ptr<Backend> backend, double load_seconds = 0);

    const Backend& backend() const { return *backend_; }
    BackendInfo info() const { return backend_->info(); }
    const GgufFile& gguf() const { return backend_->gguf(); }
    const ModelConfig& config() const { return backend_->config(); }
    int64_t vocab_size() const { return backend_->config().vocab; }
    int64_t context_length() const { return backend_->context(); }

    // Generated ids (a stop token ends generation and is not included). Throws std::invalid_argument
    // (empty prompt, bad sampling params, negative max_new_tokens) or std::out_of_range (token id
    // outside [0, vocab), prompt + max_new_tokens > context length). Exceptions from the callback
    // propagate. Runs in sequence slot 0 and resumes at the longest common prefix of the prompt with the tokens
    // slot 0's KV cache holds (the previous generate's prompt and reply, or a Slots request's) where the backend's
    // KV reuse is exact (Backend::exact_kv_reuse): the tokens are those of a cold cache, only the time differs.
    std::vector<int32_t> generate(const std::vector<int32_t>& prompt, int64_t max_new_tokens,
                                  const SamplingParams& params, const std::vector<int32_t>& stop_ids = {},
                                  const TokenCallback& on_token = nullptr);

    // Several prompts at once. With LoadOptions::sequences > 1 (CPU or CUDA) up to max_sequences() of them
    // decode together, one token each per step (each weight read once for all of them). Prompt i samples with
    // seed params.seed + i (so equal prompts still draw different samples) and gets exactly the tokens
    // generate(prompts[i]) gets with that seed (CPU: up to 8 sequences, beyond that the f16 head's rounding
    // order differs; CUDA: any batch).
    // Otherwise they run one after another. Same checks and stop rules as generate(), per sequence;
    // last_stats() sums over the sequences (decode_tokens: the sequence steps run; on the CPU finished sequences
    // leave the batch, on the GPU they keep stepping until the whole batch is done). on_token(i, token) runs for
    // every returned token of prompt i; truthy ends that sequence after it (the others go on); its exceptions
    // propagate.
    std::vector<std::vector<int32_t>> generate_batch(const std::vector<std::vector<int32_t>>& prompts,
                                                     int64_t max_new_tokens, const SamplingParams& params,
                                                     const std::vector<int32_t>& stop_ids = {},
                                                     const BatchTokenCallback& on_token = nullptr);
    int max_sequences() const { return backend_->max_sequences(); }

    // Logits for every position of ids, row-major [n, vocab], from an empty cache.
    std::vector<float> logits(const std::vector<int32_t>& ids);
    void logits(const std::vector<int32_t>& ids, float* out);  // out holds n * vocab floats

    // Continuous batching over the max_sequences() slots (engine/slots.h), created on first use. While any slot is
    // taken, generate / generate_batch / logits / reset throw std::runtime_error (they would overwrite its cache).
    Slots& slots();
    int slots_active() const { return slots_ ? slots_->active() : 0; }

    void reset();  // forget every kept KV cache (the next generate starts cold)
    const GenerateStats& last_stats() const { return stats_; }

private:
    explicit Engine(std::pair<std::unique_ptr<Backend>, double> loaded);
    void check_ids(const std::vector<int32_t>& ids, const char* what) const;
    void check_request(const std::vector<int32_t>& prompt, int64_t max_new_tokens) const {
        bllama::check_request(prompt, max_new_tokens, vocab_size(), context_length());
    }
    void check_no_slots(const char* what) const;

    std::unique_ptr<Backend> backend_;
    GenerateStats stats_;
    double load_seconds_ = 0;
    int64_t n_past_ = 0;
    KvLedger kept_;                 // what each slot's KV cache holds (shared with slots_)
    std::unique_ptr<Slots> slots_;
};

}  // namespace bllama

// Continuous batching: a fixed set of sequence slots (one KV cache each) that requests join and leave between
// steps. A step runs one decode token for every running slot plus prompt rows of joining slots within a token
// budget (step_tokens), all as the rows of one forward where the backend can (Backend::mixed_step: each weight is
// read once for decode and prompt rows alike), so a long prompt holds the others up by one budget per step at most. Each slot keeps its own sampler and seed: a request gets exactly the tokens it gets
// alone (docs/engine.md, "Slots"). A slot that ends keeps its KV cache; a later request whose prompt shares a
// prefix with what a free slot holds resumes there (prefix reuse), on backends whose prompt and decode paths
// write bit-identical KV (Backend::exact_kv_reuse). Not thread-safe: the caller serializes (bindings: the turn).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "engine/sampler.h"

namespace bllama {

class Backend;

// Which tokens each sequence slot's KV cache holds at positions 0 .. n-1. Engine::generate (slot 0) and Slots
// share one, so each resumes where the other left a slot.
using KvLedger = std::vector<std::vector<int32_t>>;

// Length of the common prefix of `kept` and `prompt`, capped at prompt.size() - 1: the last prompt token always
// runs (its logits choose the first new token).
int64_t reusable_prefix(const std::vector<int32_t>& kept, const std::vector<int32_t>& prompt);

// The checks every generation makes before any work: a non-empty prompt of ids in [0, vocab) (std::invalid_argument
// / std::out_of_range naming the index), max_new_tokens >= 0, prompt + max_new_tokens within `context`.
void check_request(const std::vector<int32_t>& prompt, int64_t max_new_tokens, int64_t vocab, int64_t context);

// Log-probabilities of one sampled token, from the model's raw logits (before penalty and temperature).
struct TokenLogprobs {
    float logprob = 0;
    std::vector<std::pair<int32_t, float>> top;  // best first (ties: lower id first)
};
// Fills out from a raw logits row (vocab floats): log_softmax at `token` and the `top` best entries.
void compute_logprobs(const float* logits, int64_t vocab, int32_t token, int top, TokenLogprobs& out);
constexpr int kMaxTopLogprobs = 20;
// Samples from a raw logits row with s (which changes the row in place); with lp_top >= 0 and lp, also fills *lp from
// a copy of the raw row taken first into scratch (vocab floats). Every backend's per-slot sampling.
int32_t sample_with_logprobs(Sampler& s, float* row, int64_t vocab, int lp_top, TokenLogprobs* lp, float* scratch);

// One row of a step (Backend::step_rows): token `token` of `slot` at position `pos`. decode: a decode row (its token
// is marked seen before sampling; a prompt row's tokens were marked by begin_slot). sample: the next token is drawn
// from this row's logits (decode rows, and a prompt's last row); lp_top >= 0 also reports its logprobs.
struct SlotRow {
    int32_t slot = 0;
    int32_t token = 0;
    int64_t pos = 0;
    bool decode = false;
    bool sample = false;
    int lp_top = -1;
};

enum class FinishReason { None, Length, Stop };
const char* finish_reason_name(FinishReason r);  // "" / "length" / "stop"

struct SlotRequest {
    std::vector<int32_t> prompt;
    int64_t max_new_tokens = 0;
    SamplingParams params;
    std::vector<int32_t> stop_ids;
    bool logprob = false;  // report each token's logprob
    int top_logprobs = 0;  // and this many alternatives (implies logprob)
};

struct SlotEvent {
    int slot = -1;
    int32_t token = -1;  // -1: none (a stop id ended the slot, or the event reports a prompt chunk)
    bool has_logprob = false;
    TokenLogprobs logprobs;
    FinishReason finish = FinishReason::None;
    int64_t cached_tokens = 0;  // prompt tokens reused from the slot's kept KV cache
};

// add() when every slot is busy.
class SlotsFull : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

class Slots {
public:
    // kept: one entry per slot (backend.max_sequences()); it must outlive this object.
    Slots(Backend& backend, KvLedger& kept);

    int capacity() const { return static_cast<int>(slots_.size()); }
    // Checks the request (check_request, validate(params), logprob counts in [0, kMaxTopLogprobs]); throws SlotsFull
    // when no free slot can take it. Picks the free slot whose kept tokens share the longest prefix with the prompt,
    // else the least recently used one. Runs nothing.
    int add(SlotRequest req);
    // One step (see the file comment); events for the slots that produced something, [] when idle.
    std::vector<SlotEvent> step();
    // Retires a slot now (no event); its KV cache and tokens stay for reuse. Unknown slot: std::out_of_range.
    void cancel(int slot);
    int active() const;  // slots taken (joining, running, or finished but not yet reported)
    // Tokens a step runs on a backend with mixed steps (Backend::mixed_step): every decode row, then prompt rows
    // of joining slots up to this many rows in all (at least one; at most Backend::max_step_rows()). Default:
    // Backend::prompt_chunk() (64 on the CPU). Fewer: shorter steps for the running slots, slower prompts.
    int64_t step_tokens() const { return step_tokens_; }
    void set_step_tokens(int64_t n);  // std::invalid_argument for n < 1

private:
    enum class Phase { Free, Prefill, Decode, Report };
    struct State {
        Phase phase = Phase::Free;
        SlotRequest req;
        int64_t next_prompt = 0;  // Prefill: prompt[next_prompt..] still to run
        int32_t pending = 0;      // Decode: the sampled token to feed next, at position pos
        int64_t pos = 0;
        int64_t generated = 0;
        int64_t cached = 0;
        uint64_t last_used = 0;   // LRU order of add()
    };
    int logprob_ask(const State& s) const { return s.req.logprob ? s.req.top_logprobs : -1; }
    // The event for a token sampled by slot s (its finish decided here); frees the slot when it ends.
    SlotEvent sampled(int s, int32_t token, const TokenLogprobs* lp);

    Backend& backend_;
    KvLedger& kept_;
    std::vector<State> slots_;
    uint64_t clock_ = 0;
    int64_t step_tokens_ = 0;
    // One step's rows and what they sampled, reserved once
    std::vector<SlotRow> rows_;
    std::vector<int32_t> row_next_;
    std::vector<TokenLogprobs> row_logprobs_;
    std::vector<int> joining_;
    std::vector<int64_t> take_;  // prompt rows each slot runs this step
};

}  // namespace bllama

#include "engine/backend.h"

#include <algorithm>
#include <stdexcept>

namespace bllama {

namespace {

class CpuBackend final : public Backend {
public:
    explicit CpuBackend(std::unique_ptr<Model> m) : model_(std::move(m)) {
        const size_t S = static_cast<size_t>(model_->sequences()), V = static_cast<size_t>(model_->config().vocab);
        samplers_.reserve(S);
        for (size_t s = 0; s < S; ++s) samplers_.emplace_back(static_cast<int64_t>(V));
        logits_.assign(S * V, 0.0f);
        tokens_.assign(S, 0);
        pos_.assign(S, 0);
        row_tok_.assign(S, 0);
        row_pos_.assign(S, 0);
        row_slot_.assign(S, 0);
        prefill_logits_.assign(V, 0.0f);
        raw_row_.assign(V, 0.0f);
        const size_t R = static_cast<size_t>(model_->max_batch());
        step_tok_.assign(R, 0), step_slot_.assign(R, 0), step_pos_.assign(R, 0), step_logit_rows_.assign(R, 0);
    }

    const ModelConfig& config() const override { return model_->config(); }
    const GgufFile& gguf() const override { return model_->gguf(); }
    int64_t context() const override { return model_->context(); }
    BackendInfo info() const override {
        BackendInfo i;
        i.device = "cpu";
        i.device_name = kernel_name(model_->kernel());
        i.kernel = kernel_name(model_->kernel());
        i.threads = model_->threads();
        i.weight_bytes = model_->weight_bytes();
        i.kv_f16 = model_->kv_f16();
        i.head = head_type_name(model_->head_type());
        i.head_bytes = model_->head_bytes();
        return i;
    }

    int32_t prefill(const std::vector<int32_t>& prompt, const SamplingParams& params) override {
        return start(0, prompt, params);
    }
    int32_t decode(int32_t token, int64_t pos) override {
        samplers_[0].observe(token);
        model_->forward(&token, 1, pos, logits_.data(), false);
        return samplers_[0].sample(logits_.data());
    }
    void logits(const int32_t* ids, int64_t n, float* out) override { model_->forward(ids, n, 0, out, true); }

    // Batched decoding: each sequence its own KV cache and Sampler (slot b seeded with seed + b draws what
    // the sequence draws alone with that seed); a step runs the sequences' pending tokens as the rows of one forward_batch, so each
    // weight is read once for all of them.
    int max_sequences() const override { return model_->sequences(); }
    std::vector<int32_t> prefill_batch(const std::vector<std::vector<int32_t>>& prompts,
                                       const SamplingParams& params) override {
        if (prompts.size() > samplers_.size()) throw std::invalid_argument("prefill_batch: more prompts than sequences");
        std::vector<int32_t> first(prompts.size());
        for (size_t b = 0; b < prompts.size(); ++b) {
            SamplingParams pb = params;
            pb.seed += b;
            first[b] = start(static_cast<int>(b), prompts[b], pb);
        }
        return first;
    }
    // Only the live sequences run (finished ones cost nothing): their pending tokens become the rows.
    int decode_batch(int B, const uint8_t* live, int32_t* next) override {
        if (B < 1 || B > static_cast<int>(samplers_.size())) throw std::invalid_argument("decode_batch: bad batch size");
        const size_t V = static_cast<size_t>(model_->config().vocab);
        int n = 0;
        for (int b = 0; b < B; ++b) {
            if (live && !live[b]) continue;
            const size_t i = static_cast<size_t>(b), r = static_cast<size_t>(n++);
            samplers_[i].observe(tokens_[i]);
            row_tok_[r] = tokens_[i], row_pos_[r] = pos_[i], row_slot_[r] = b;
        }
        if (n == 0) return 0;
        model_->forward_batch(row_tok_.data(), row_pos_.data(), row_slot_.data(), n, logits_.data());
        for (int r = 0; r < n; ++r) {
            const size_t i = static_cast<size_t>(row_slot_[static_cast<size_t>(r)]);
            next[i] = tokens_[i] = samplers_[i].sample(logits_.data() + static_cast<size_t>(r) * V);
            pos_[i] += 1;
        }
        return n;
    }

    // Continuous batching. Prompt chunks (GEMM) and decode steps (GEMV) compute every row alone with integer sums
    // and the same per-row float order, so the KV values they write agree bit for bit
    // (tests/cpp/test_slots.cpp checks it on every kernel kind this machine has).
    bool exact_kv_reuse() const override { return true; }
    int64_t prompt_chunk() const override { return model_->max_batch(); }
    void begin_slot(int slot, const std::vector<int32_t>& seen, const SamplingParams& params) override {
        Sampler& s = samplers_.at(static_cast<size_t>(slot));
        s.reset(params);
        for (int32_t t : seen) s.observe(t);
    }
    int32_t prefill_slot(int slot, const int32_t* tokens, int64_t n, int64_t pos, bool sample, int lp_top,
                         TokenLogprobs* lp) override {
        Sampler& s = samplers_.at(static_cast<size_t>(slot));
        model_->forward(tokens, n, pos, prefill_logits_.data(), false, slot);
        if (!sample) return -1;
        return sample_row(s, prefill_logits_.data(), lp_top, lp);
    }
    void decode_slots(int n, const int32_t* slots, const int32_t* tokens, const int64_t* pos, int32_t* next,
                      const int* lp_top, TokenLogprobs* lps) override {
        if (n < 1 || n > static_cast<int>(samplers_.size())) throw std::invalid_argument("decode_slots: bad row count");
        for (int r = 0; r < n; ++r) samplers_.at(static_cast<size_t>(slots[r])).observe(tokens[r]);
        model_->forward_batch(tokens, pos, slots, n, logits_.data());
        const size_t V = static_cast<size_t>(model_->config().vocab);
        for (int r = 0; r < n; ++r)
            next[r] = sample_row(samplers_[static_cast<size_t>(slots[r])], logits_.data() + static_cast<size_t>(r) * V,
                                 lp_top ? lp_top[r] : -1, lps ? lps + r : nullptr);
    }

    // Mixed steps: decode rows and prompt rows of joining slots as the rows of one forward_batch; the head runs only
    // for the rows that sample (decode rows, a prompt's last row), each with its slot's sampler.
    bool mixed_step() const override { return true; }
    int64_t max_step_rows() const override { return model_->max_batch(); }
    void step_rows(const std::vector<SlotRow>& rows, int32_t* next, TokenLogprobs* lps) override {
        const int64_t n = static_cast<int64_t>(rows.size());
        if (n == 0) return;
        if (n > model_->max_batch())
            throw std::invalid_argument("step_rows: " + std::to_string(n) + " rows, more than max_batch = " +
                                        std::to_string(model_->max_batch()));
        int64_t m = 0;
        for (int64_t r = 0; r < n; ++r) {
            const SlotRow& row = rows[static_cast<size_t>(r)];
            step_tok_[static_cast<size_t>(r)] = row.token, step_pos_[static_cast<size_t>(r)] = row.pos;
            step_slot_[static_cast<size_t>(r)] = row.slot;
            if (!row.sample) continue;
            if (m == static_cast<int64_t>(samplers_.size()))
                throw std::invalid_argument("step_rows: more sampled rows than sequences");
            step_logit_rows_[static_cast<size_t>(m++)] = r;
        }
        model_->forward_batch(step_tok_.data(), step_pos_.data(), step_slot_.data(), n, logits_.data(),
                              step_logit_rows_.data(), m);
        const size_t V = static_cast<size_t>(model_->config().vocab);
        for (int64_t i = 0; i < m; ++i) {
            const size_t r = static_cast<size_t>(step_logit_rows_[static_cast<size_t>(i)]);
            Sampler& s = samplers_.at(static_cast<size_t>(rows[r].slot));
            if (rows[r].decode) s.observe(rows[r].token);
            next[r] = sample_row(s, logits_.data() + static_cast<size_t>(i) * V, rows[r].lp_top, lps ? lps + r : nullptr);
        }
    }

private:
    // The logprobs (lp_top >= 0) come from the row before the sampler's penalty and temperature change it in place.
    int32_t sample_row(Sampler& s, float* row, int lp_top, TokenLogprobs* lp) {
        return sample_with_logprobs(s, row, model_->config().vocab, lp_top, lp, raw_row_.data());
    }

    // A sequence in `slot`: its prompt at positions 0.., its first token sampled; it is pending at position n.
    int32_t start(int slot, const std::vector<int32_t>& prompt, const SamplingParams& params) {
        const size_t i = static_cast<size_t>(slot);
        Sampler& s = samplers_[i];
        s.reset(params);
        for (int32_t t : prompt) s.observe(t);
        const int64_t n = static_cast<int64_t>(prompt.size());
        model_->forward(prompt.data(), n, 0, logits_.data(), false, slot);
        tokens_[i] = s.sample(logits_.data());
        pos_[i] = n;
        return tokens_[i];
    }

    std::unique_ptr<Model> model_;
    std::vector<Sampler> samplers_;  // one per sequence
    std::vector<float> logits_;      // [sequences, vocab]
    std::vector<int32_t> tokens_;    // batched decoding: each sequence's pending token and its position
    std::vector<int64_t> pos_;
    std::vector<int32_t> row_tok_, row_slot_;  // one step's rows: the live sequences' tokens and slots
    std::vector<int64_t> row_pos_;
    std::vector<float> prefill_logits_, raw_row_;  // slots: a prompt chunk's last row; a row before sampling
    std::vector<int32_t> step_tok_, step_slot_;    // step_rows' rows (max_batch) and the rows that sample
    std::vector<int64_t> step_pos_, step_logit_rows_;
};

}  // namespace

std::vector<int32_t> Backend::prefill_batch(const std::vector<std::vector<int32_t>>&, const SamplingParams&) {
    throw std::logic_error("this backend decodes one sequence at a time");
}
int Backend::decode_batch(int, const uint8_t*, int32_t*) {
    throw std::logic_error("this backend decodes one sequence at a time");
}
void Backend::begin_slot(int, const std::vector<int32_t>&, const SamplingParams&) {
    throw std::logic_error("this backend has no slots");
}
int32_t Backend::prefill_slot(int, const int32_t*, int64_t, int64_t, bool, int, TokenLogprobs*) {
    throw std::logic_error("this backend has no slots");
}
void Backend::decode_slots(int, const int32_t*, const int32_t*, const int64_t*, int32_t*, const int*, TokenLogprobs*) {
    throw std::logic_error("this backend has no slots");
}

// Without one forward for mixed rows: one decode_slots for the decode rows, one prefill_slot per slot's prompt rows.
void Backend::step_rows(const std::vector<SlotRow>& rows, int32_t* next, TokenLogprobs* lps) {
    size_t r = 0;
    std::vector<int32_t> slots, tokens, out;
    std::vector<int64_t> pos;
    std::vector<int> lp_top;
    for (; r < rows.size() && rows[r].decode; ++r) {
        if (!rows[r].sample) throw std::logic_error("step_rows: a decode row that does not sample");
        slots.push_back(rows[r].slot), tokens.push_back(rows[r].token), pos.push_back(rows[r].pos);
        lp_top.push_back(rows[r].lp_top);
    }
    if (r > 0) {
        out.resize(r);
        std::vector<TokenLogprobs> lp(r);
        decode_slots(static_cast<int>(r), slots.data(), tokens.data(), pos.data(), out.data(), lp_top.data(), lp.data());
        for (size_t i = 0; i < r; ++i) {
            next[i] = out[i];
            if (lps && lp_top[i] >= 0) lps[i] = std::move(lp[i]);
        }
    }
    while (r < rows.size()) {
        const size_t b = r;
        tokens.clear();
        for (; r < rows.size() && !rows[r].decode && rows[r].slot == rows[b].slot; ++r) {
            if (r > b && (rows[r].pos != rows[r - 1].pos + 1 || rows[r - 1].sample))
                throw std::logic_error("step_rows: a slot's prompt rows must be consecutive and sample only at the end");
            tokens.push_back(rows[r].token);
        }
        if (tokens.empty()) throw std::logic_error("step_rows: decode rows must come first");
        const SlotRow& last = rows[r - 1];
        const int32_t t = prefill_slot(last.slot, tokens.data(), static_cast<int64_t>(tokens.size()), rows[b].pos,
                                       last.sample, last.sample ? last.lp_top : -1, lps ? lps + (r - 1) : nullptr);
        if (last.sample) next[r - 1] = t;
    }
}

std::unique_ptr<Backend> make_cpu_backend(std::unique_ptr<Model> model) {
    return std::make_unique<CpuBackend>(std::move(model));
}

#ifndef BLLAMA_WITH_CUDA  // else csrc/cuda/cuda_backend.cu defines these
bool cuda_compiled() { return false; }
int cuda_device_count() { return 0; }
std::string cuda_device_description() { return "this build has no CUDA backend (CMake found no CUDA compiler)"; }
std::unique_ptr<Backend> make_cuda_backend(const std::string&, const LoadOptions&) {
    throw std::runtime_error(
        "device='cuda': this build of bllama has no CUDA backend (CMake found no CUDA compiler when it was "
        "built; install the CUDA toolkit and reinstall with `pip install -e .`)");
}
#endif

}  // namespace bllama

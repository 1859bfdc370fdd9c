// The Engine's CUDA backend: one sequence in slot 0 of a CudaModel. Logits and sampling stay on the GPU;
// a decode step is one graph replay and one 4-byte copy.
#include <algorithm>
#include <memory>
#include <stdexcept>
#include <string>

#include "engine/backend.h"
#include "cuda/cuda_model.h"

namespace bllama {

namespace {

class CudaBackend final : public Backend {
public:
    CudaBackend(std::unique_ptr<cuda::CudaModel> m, GgufFile file)
        : model_(std::move(m)), file_(std::move(file)) {}

    const ModelConfig& config() const override { return model_->config(); }
    const GgufFile& gguf() const override { return file_; }
    int64_t context() const override { return model_->context(); }
    BackendInfo info() const override {
        BackendInfo i;
        i.device = "cuda";
        i.device_name = cuda::device_description();
        i.kernel = std::string("dp4a gemv + ") + cuda::prompt_gemm_name(model_->options().gemm) + " gemm";
        i.weight_bytes = model_->weight_bytes();
        i.kv_f16 = model_->options().kv_f16;
        i.head = model_->head_is_q8() ? "q8" : "f16";
        i.head_bytes = model_->head_bytes();
        return i;
    }

    int32_t prefill(const std::vector<int32_t>& prompt, const SamplingParams& params) override {
        const int64_t n = static_cast<int64_t>(prompt.size());
        model_->begin_sequence(0, prompt, params);
        model_->prefill(0, prompt.data(), n, 0, nullptr);
        return model_->sample_after_prefill(0, n);
    }
    int32_t decode(int32_t token, int64_t pos) override {
        // The graph feeds the token it sampled; a caller's own token is uploaded first.
        if (token != model_->pending_token(0) || pos != model_->pending_pos(0)) model_->set_pending(0, token, pos);
        int32_t next = 0;
        model_->decode_step(1, &next);
        return next;
    }
    void logits(const int32_t* ids, int64_t n, float* out) override { model_->prefill(0, ids, n, 0, out); }

    int max_sequences() const override { return model_->slots(); }
    std::vector<int32_t> prefill_batch(const std::vector<std::vector<int32_t>>& prompts,
                                       const SamplingParams& params) override {
        if (prompts.size() > static_cast<size_t>(model_->slots()))
            throw std::invalid_argument("prefill_batch: more prompts than sequences");
        std::vector<int32_t> first(prompts.size());
        for (size_t b = 0; b < prompts.size(); ++b) {
            const int slot = static_cast<int>(b);
            const int64_t n = static_cast<int64_t>(prompts[b].size());
            model_->begin_sequence(slot, prompts[b], params);
            model_->prefill(slot, prompts[b].data(), n, 0, nullptr);
            first[b] = model_->sample_after_prefill(slot, n);
        }
        return first;
    }
    // One graph per batch size: every sequence steps (a finished one's token is dropped by the caller).
    int decode_batch(int B, const uint8_t*, int32_t* next) override {
        model_->decode_step(B, next);
        return B;
    }

    // Continuous batching (engine/slots.h). Compiled, not yet run on a GPU. Each slot samples on the host with its
    // own Sampler (the CPU's: settings and seed per request), so mixed settings share a batch and a seeded request
    // draws in a batch what it draws alone in the slots; logprobs come from the same raw logits rows. The device runs
    // every slot greedy without a penalty, so the logits it leaves are the raw ones and, for a greedy slot without
    // penalty or logprobs, its argmax is already the host's answer (no copy). The host Sampler's generator is not
    // the GPU sampler's: a sampled request through the slots draws other tokens than Engine::generate on the GPU
    // with the same seed (greedy agrees). Rows that sample on the host copy their logits to the host each step
    // (V floats each): fine for now, a per-row device sampler would avoid it. KV reuse stays off
    // (exact_kv_reuse false): the prompt GEMMs (MMA / cuBLASLt) and the decode GEMV are not checked bit for bit
    // against each other on a GPU yet.
    int64_t prompt_chunk() const override { return model_->options().max_batch; }
    void begin_slot(int slot, const std::vector<int32_t>& seen, const SamplingParams& params) override {
        ensure_slot_state();
        model_->begin_sequence(slot, {}, SamplingParams{});  // greedy, no penalty: one setting, graphs are kept
        Sampler& s = samplers_.at(static_cast<size_t>(slot));
        s.reset(params);
        for (int32_t t : seen) s.observe(t);
        on_device_[static_cast<size_t>(slot)] = device_greedy(params);
        rest_[static_cast<size_t>(slot)] = 0;  // no reuse: its prompt starts at position 0
    }
    int32_t prefill_slot(int slot, const int32_t* tokens, int64_t n, int64_t pos, bool sample, int lp_top,
                         TokenLogprobs* lp) override {
        ensure_slot_state();
        model_->prefill(slot, tokens, n, pos, nullptr);  // leaves the last row's logits in the device's row 0
        rest_[static_cast<size_t>(slot)] = pos + n;
        if (!sample) return -1;
        model_->download_logits(1, host_logits_.data());
        const int32_t next = sample_row(samplers_.at(static_cast<size_t>(slot)), host_logits_.data(),
                                        lp ? lp_top : -1, lp);
        model_->set_pending(slot, next, pos + n);  // the slot's next decode input, whatever the device would pick
        return next;
    }
    // The graph steps slots 0 .. B-1 (B = the highest slot asked for + 1). A slot in that range that is not asked
    // for runs too: its row is parked at its rest position (the first one its cache has not written), so what it
    // writes lands where nothing is kept (a joining slot's next prompt chunk overwrites it) and never past the
    // context; its sampler state is reset when a request next takes it (begin_slot).
    void decode_slots(int n, const int32_t* slots, const int32_t* tokens, const int64_t* pos, int32_t* next,
                      const int* lp_top, TokenLogprobs* lps) override {
        ensure_slot_state();
        const int S = model_->slots();
        asked_.assign(static_cast<size_t>(S), 0);
        int B = 0, host_rows = 0;
        for (int r = 0; r < n; ++r) {
            const int s = slots[r];
            if (s < 0 || s >= S) throw std::out_of_range("decode_slots: slot " + std::to_string(s) + " is out of range");
            if (asked_[static_cast<size_t>(s)]) throw std::invalid_argument("decode_slots: slot " + std::to_string(s) + " twice");
            asked_[static_cast<size_t>(s)] = 1;
            B = std::max(B, s + 1);
            if (!on_device_[static_cast<size_t>(s)] || (lp_top && lp_top[r] >= 0)) host_rows = std::max(host_rows, s + 1);
            if (model_->pending_token(s) != tokens[r] || model_->pending_pos(s) != pos[r])
                model_->set_pending(s, tokens[r], pos[r]);
        }
        for (int b = 0; b < B; ++b)
            if (!asked_[static_cast<size_t>(b)] && model_->pending_pos(b) != rest_[static_cast<size_t>(b)])
                model_->set_pending(b, model_->pending_token(b), rest_[static_cast<size_t>(b)]);
        step_out_.resize(static_cast<size_t>(S));
        model_->decode_step(B, step_out_.data());
        // Rows 0 .. host_rows-1 of the step's logits (raw: the device ran greedy without a penalty) to the host.
        if (host_rows > 0) model_->download_logits(host_rows, host_logits_.data());
        const size_t V = static_cast<size_t>(model_->config().vocab);
        for (int r = 0; r < n; ++r) {
            const size_t s = static_cast<size_t>(slots[r]);
            Sampler& sampler = samplers_[s];
            sampler.observe(tokens[r]);
            const int lp = lp_top ? lp_top[r] : -1;
            if (on_device_[s] && lp < 0) next[r] = step_out_[s];  // the device's argmax is the host's answer
            else next[r] = sample_row(sampler, host_logits_.data() + s * V, lps ? lp : -1, lps ? lps + r : nullptr);
            rest_[s] = pos[r] + 1;
        }
    }

private:
    // A greedy request without a penalty: the device's own argmax (ties to the lowest id, as the CPU's) is its token.
    static bool device_greedy(const SamplingParams& p) {
        return is_greedy(p) && p.repetition_penalty == 1.0f;
    }
    void ensure_slot_state() {
        const size_t S = static_cast<size_t>(model_->slots()), V = static_cast<size_t>(model_->config().vocab);
        if (samplers_.size() == S) return;
        samplers_.clear();
        for (size_t s = 0; s < S; ++s) samplers_.emplace_back(static_cast<int64_t>(V));
        on_device_.assign(S, 1);
        rest_.assign(S, 0);
        host_logits_.assign(S * V, 0.0f);
        raw_row_.assign(V, 0.0f);
    }
    int32_t sample_row(Sampler& s, float* row, int lp_top, TokenLogprobs* lp) {
        return sample_with_logprobs(s, row, model_->config().vocab, lp_top, lp, raw_row_.data());
    }

    std::unique_ptr<cuda::CudaModel> model_;
    GgufFile file_;
    // Slots, sized on first use: a host Sampler per slot, whether the device's greedy token serves it, and rows of
    // logits copied back.
    std::vector<Sampler> samplers_;
    std::vector<uint8_t> on_device_;
    std::vector<float> host_logits_, raw_row_;
    std::vector<int64_t> rest_;     // per slot: the first position its cache has not written (where an idle row runs)
    std::vector<uint8_t> asked_;
    std::vector<int32_t> step_out_;
};

}  // namespace

bool cuda_compiled() { return true; }
int cuda_device_count() { return cuda::device_count(); }
std::string cuda_device_description() { return cuda::device_description(); }

std::unique_ptr<Backend> make_cuda_backend(const std::string& path, const LoadOptions& opts) {
    if (cuda::device_count() == 0) throw std::runtime_error(std::string("device='cuda': ") + cuda::device_description());
    GgufFile file = GgufFile::open(path);  // its errors already name the path
    cuda::CudaOptions co;
    co.max_context = opts.max_context;
    co.kv_f16 = opts.kv_f16;
    co.slots = opts.sequences;
    co.head = opts.head == HeadType::Q4 ? HeadType::Q8 : opts.head;  // no 4-bit GPU head: its int8 one instead
    co.threads = opts.threads;
    co = cuda::cuda_options_from_env(co);
    std::unique_ptr<cuda::CudaModel> gpu;
    try {
        gpu = std::make_unique<cuda::CudaModel>(file, co);
    } catch (const ModelError& e) {
        throw ModelError("'" + path + "': " + e.what());  // named like the CPU loader's errors
    }
    return std::make_unique<CudaBackend>(std::move(gpu), std::move(file));
}

}  // namespace bllama

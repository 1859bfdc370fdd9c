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

    // Continuous batching (engine/slots.h). Compiled, not yet run on a GPU. The decode graph bakes in one sampling
    // setting for all rows and draws row b with seed + b, so running slots share one setting (Slots refuses others
    // with SlotsFull until they finish) and a sampled slot b draws with seed + b. KV reuse stays off
    // (exact_kv_reuse false): the prompt GEMMs (MMA / cuBLASLt) and the decode GEMV are not checked bit for bit
    // against each other on a GPU yet. Logprobs: refused (the logits are sampled in place on the device).
    bool per_slot_sampling() const override { return false; }
    int64_t prompt_chunk() const override { return model_->options().max_batch; }
    void begin_slot(int slot, const std::vector<int32_t>& seen, const SamplingParams& params) override {
        SamplingParams p = params;
        if (!p.do_sample || p.temperature <= 0.0f) {  // greedy: one canonical setting, so the graphs are kept
            p = SamplingParams{};
            p.repetition_penalty = params.repetition_penalty;
        }
        model_->begin_sequence(slot, seen, p);
        rest_.resize(static_cast<size_t>(model_->slots()), 0);
        rest_[static_cast<size_t>(slot)] = 0;  // no reuse: its prompt starts at position 0
    }
    int32_t prefill_slot(int slot, const int32_t* tokens, int64_t n, int64_t pos, bool sample, int lp_top,
                         TokenLogprobs*) override {
        if (lp_top >= 0) throw std::invalid_argument("logprobs are not available on device='cuda' yet");
        model_->prefill(slot, tokens, n, pos, nullptr);
        rest_.resize(static_cast<size_t>(model_->slots()), 0);
        rest_[static_cast<size_t>(slot)] = pos + n;
        return sample ? model_->sample_after_prefill(slot, pos + n) : -1;
    }
    // The graph steps slots 0 .. B-1 (B = the highest slot asked for + 1). A slot in that range that is not asked
    // for runs too: its row is parked at its rest position (the first one its cache has not written), so what it
    // writes lands where nothing is kept (a joining slot's next prompt chunk overwrites it) and never past the
    // context; its sampler state is reset when a request next takes it (begin_sequence).
    void decode_slots(int n, const int32_t* slots, const int32_t* tokens, const int64_t* pos, int32_t* next,
                      const int* lp_top, TokenLogprobs*) override {
        const int S = model_->slots();
        rest_.resize(static_cast<size_t>(S), 0);
        asked_.assign(static_cast<size_t>(S), 0);
        int B = 0;
        for (int r = 0; r < n; ++r) {
            const int s = slots[r];
            if (s < 0 || s >= S) throw std::out_of_range("decode_slots: slot " + std::to_string(s) + " is out of range");
            if (lp_top && lp_top[r] >= 0) throw std::invalid_argument("logprobs are not available on device='cuda' yet");
            asked_[static_cast<size_t>(s)] = 1;
            B = std::max(B, s + 1);
            if (model_->pending_token(s) != tokens[r] || model_->pending_pos(s) != pos[r])
                model_->set_pending(s, tokens[r], pos[r]);
        }
        for (int b = 0; b < B; ++b)
            if (!asked_[static_cast<size_t>(b)] && model_->pending_pos(b) != rest_[static_cast<size_t>(b)])
                model_->set_pending(b, model_->pending_token(b), rest_[static_cast<size_t>(b)]);
        step_out_.resize(static_cast<size_t>(S));
        model_->decode_step(B, step_out_.data());
        for (int r = 0; r < n; ++r) {
            next[r] = step_out_[static_cast<size_t>(slots[r])];
            rest_[static_cast<size_t>(slots[r])] = pos[r] + 1;
        }
    }

private:
    std::unique_ptr<cuda::CudaModel> model_;
    GgufFile file_;
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

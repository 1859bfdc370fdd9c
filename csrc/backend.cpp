#include "backend.h"

#include <stdexcept>


namespace bllama {

namespace {

class CpuBackend final : public Backend {
public:
    explicit CpuBackend(std::unique_ptr<Model> m)
        : model_(std::move(m)), sampler_(model_->config().vocab), logits_(static_cast<size_t>(model_->config().vocab)) {}

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
        sampler_.reset(params);
        for (int32_t t : prompt) sampler_.observe(t);
        model_->forward(prompt.data(), static_cast<int64_t>(prompt.size()), 0, logits_.data(), false);
        return sampler_.sample(logits_.data());
    }
    int32_t decode(int32_t token, int64_t pos) override {
        sampler_.observe(token);
        model_->forward(&token, 1, pos, logits_.data(), false);
        return sampler_.sample(logits_.data());
    }
    void logits(const int32_t* ids, int64_t n, float* out) override { model_->forward(ids, n, 0, out, true); }

private:
    std::unique_ptr<Model> model_;
    Sampler sampler_;
    std::vector<float> logits_;
};

}  // namespace

std::vector<int32_t> Backend::prefill_batch(const std::vector<std::vector<int32_t>>&, const SamplingParams&) {
    throw std::logic_error("this backend decodes one sequence at a time");
}
void Backend::decode_batch(int, int32_t*) { throw std::logic_error("this backend decodes one sequence at a time"); }

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

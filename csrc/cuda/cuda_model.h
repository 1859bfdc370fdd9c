// A bitnet model on one GPU: packed ternary weights (cuda/layout.h layout, ~2 bits per weight, never
// expanded), f16 embedding/head, a KV cache for `slots` independent sequences, and preallocated scratch.
//
// Prompt chunks run kernel by kernel (GEMM path). A decode step for slots 0 .. B-1 is one CUDA graph,
// captured once per (B, sampling parameters) and replayed: its kernels read the input token and the
// position of each slot from device memory, sample on the GPU, write the next token back to the same
// buffer and advance the positions, so consecutive steps need nothing from the host; only the sampled
// token ids (4 bytes per slot) are copied out per step.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "cpu/model.h"
#include "cuda/kernels/cuda_util.cuh"
#include "cuda/kernels/kernels.cuh"
#include "engine/config.h"
#include "engine/sampler.h"
#include "engine/weights.h"

namespace bllama {
namespace cuda {

enum class PromptGemm { Mma, CublasLt };
const char* prompt_gemm_name(PromptGemm g);

struct CudaOptions {
    int64_t max_context = 0;  // > 0: cap the KV cache below the file's context length
    bool kv_f16 = false;
    int slots = 1;            // sequences decoded together (batched decode)
    int max_batch = 512;      // prompt tokens per chunk
    PromptGemm gemm = PromptGemm::Mma;
    bool graphs = true;       // false: decode steps launch kernel by kernel (debugging, timing the graph gain)
    bool pdl = true;          // Programmatic Dependent Launch for the decode step's kernels (sm_90+; ignored
                              // below): each kernel starts while the one ahead drains (launch.cuh).
                              // On by default: it measured faster at batch 1 on an H100 and an H200
                              // (bench/NOTES-cuda.md, "Not yet done", item 1).
    HeadType head = HeadType::F16;  // Q8: the head requantized at load to int8 rows as the CPU does (kernels/head_q8.h)
    int threads = 0;          // host threads for that requantization (<= 0: default_thread_count())
    // Decode-step experiments of issue #18, off by default (bench_cuda_decode's variants; tests/cuda/
    // test_decode_variants.cu checks them against the default path): the greedy token taken inside the f16 head
    // kernel (fused_argmax; batch 1, greedy, no repetition penalty, f16 head, else ignored).
    bool fused_argmax = false;
};
// Defaults overridden by the environment: BLLAMA_CUDA_GEMM=mma|cublaslt, BLLAMA_CUDA_GRAPHS=0, BLLAMA_CUDA_PDL=0.
CudaOptions cuda_options_from_env(CudaOptions base);

class CudaModel {
public:
    // Checks the file's tensors against its config (engine/weights.h, the CPU loader's checks), packs the ternary
    // blocks straight into the GPU layout (cuda/layout.h) and uploads everything; the file's pages of the uploaded
    // tensors are released, its metadata stays readable. Throws ModelError for files the GPU cannot run
    // (per-block scales) as well as for invalid ones.
    CudaModel(const GgufFile& file, const CudaOptions& opts);
    ~CudaModel();
    CudaModel(const CudaModel&) = delete;
    CudaModel& operator=(const CudaModel&) = delete;

    const ModelConfig& config() const { return cfg_; }
    int64_t context() const { return ctx_; }
    int slots() const { return opts_.slots; }
    const CudaOptions& options() const { return opts_; }
    bool pdl_active() const { return pdl_; }               // options().pdl and the device supports it
    size_t weight_bytes() const { return weight_bytes_; }  // packed ternary words on the device
    size_t head_bytes() const;                             // what the head reads per token
    bool head_is_q8() const { return head_q8_.size() != 0; }  // the int8 head (LoadOptions head="q8")
    size_t device_bytes() const;                           // everything this model allocated

    // Runs tokens[0, n) of `slot` at positions pos0 .. pos0 + n - 1 (prompt path, chunked). Afterwards
    // the last token's logits are on the device for sample_after_prefill; with host_logits, all n rows
    // are also copied there ([n, vocab]). Throws std::out_of_range on bad ids / positions / slot.
    void prefill(int slot, const int32_t* tokens, int64_t n, int64_t pos0, float* host_logits);

    // Sampling state for a new sequence in `slot`: seen tokens (for the repetition penalty) = `seen`. The
    // parameters are shared by all slots; slot b draws with seed params.seed + b.
    void begin_sequence(int slot, const std::vector<int32_t>& seen, const SamplingParams& params);
    // Samples the slot's first token from the logits prefill left, makes it the slot's next input at
    // position `pos` (the prompt length), and returns it.
    int32_t sample_after_prefill(int slot, int64_t pos);

    // One decode step for slots 0 .. B-1: each slot's pending token runs at its position, the next
    // tokens are sampled and written to out[0, B). The slot's next input is the token it returned.
    void decode_step(int B, int32_t* out);
    // K decode steps with one host synchronization (issue #18 experiment): the step's graph is replayed K times
    // back to back, each step's tokens gathered on the device; out[k * B + b] is slot b's token of step k.
    // The same tokens as K calls of decode_step; the caller sees no token before all K are done (no early stop).
    void decode_steps(int B, int K, int32_t* out);
    // Overrides a slot's pending token and position (when the caller feeds a token it chose itself).
    void set_pending(int slot, int32_t token, int64_t pos);
    int32_t pending_token(int slot) const { return pending_tok_[static_cast<size_t>(slot)]; }
    int64_t pending_pos(int slot) const { return pending_pos_[static_cast<size_t>(slot)]; }

    void synchronize() const { stream_.sync(); }

    // Copies rows [0, rows) of the logits buffer to the host: after decode_step(B), rows < B hold that step's
    // logits as sampling left them (the repetition penalty and, when sampling, the temperature applied in
    // place). Tests and debugging; synchronizes.
    void download_logits(int rows, float* out) const;

private:
    struct Layer {
        DevTernary qkv, o, gate_up, down;
        const float *attn_norm, *attn_sub_norm, *ffn_norm, *ffn_sub_norm;  // sub-norms null when absent
        const float *q_norm = nullptr, *k_norm = nullptr;                  // QK-norm only
        const float* qkv_bias = nullptr;  // [qkv rows], zeros where q, k or v has none; null when none has one
    };

    void upload(const GgufFile& file);
    void upload_qkv_biases(const ModelTensors& t);  // after layers_ exists
    void allocate();
    void matmul(const DevTernary& w, int n, float* y, int ldy, Epilogue ep);
    // y (ep) W * quant(rmsnorm(x, norm_w)) for n rows of d values at stride ldx: rmsnorm_quant, then matmul.
    void normed_matmul(const DevTernary& w, const float* x, int ldx, const float* norm_w, int d, int n, float* y,
                       int ldy, Epilogue ep);
    DevActs acts(int cols) const { return DevActs{act_q_.get(), act_scale_.get(), act_sum_.get(), cols}; }
    // The transformer layers for n tokens already embedded in x_. Prompt: one slot, consecutive positions
    // from pos0 (attention_prefill). Decode: per-token positions/slots in d_pos/d_slot (attention_decode).
    void layers(int n, const int32_t* d_pos, const int32_t* d_slot, bool prompt, int pos0, int slot);
    // Final norm + head for rows [row0, row0 + n) of x_ into logits_ rows [0, n).
    void head(int row0, int n);
    void record_decode_step(int B);  // the kernels of one step, on stream_
    void launch_decode_step(int B);  // record_decode_step(B), through its captured graph when opts_.graphs
    void check_slot(int slot) const;

    ModelConfig cfg_;
    CudaOptions opts_;
    bool pdl_ = false;
    int64_t ctx_ = 0;
    int qkv_rows_ = 0;
    CudaStream stream_;

    DeviceBuffer<uint32_t> words_;   // every ternary matrix, back to back
    DeviceBuffer<float> norms_;      // every norm weight, back to back
    DeviceBuffer<float> biases_;     // the layers' q|k|v biases, back to back (empty: no layer has one)
    DeviceBuffer<__half> embd_, head_owned_;
    const __half* head_ = nullptr;   // embd_ when tied; null with the q8 head
    DeviceBuffer<int8_t> head_q8_;   // the CPU's head="q8" ([V, D] int8, one scale per row), or empty
    DeviceBuffer<float> head_q8_scale_;
    DeviceBuffer<float> cos_, sin_;  // [ctx, hd/2]
    std::vector<Layer> layers_;
    const float* output_norm_ = nullptr;
    size_t weight_bytes_ = 0;

    KvCache kv_;
    DeviceBuffer<float> k32_, v32_;
    DeviceBuffer<__half> k16_, v16_;

    // Scratch for M = max(max_batch, slots) rows.
    int M_ = 0, logit_rows_ = 0;
    DeviceBuffer<int32_t> tok_buf_;  // [M] prompt chunk ids
    DeviceBuffer<int32_t> pos_buf_, slot_buf_;  // [M] prompt chunk positions / slot
    DeviceBuffer<float> x_, qkv_, att_, gate_, xn_, logits_, attn_ws_;
    DeviceBuffer<int8_t> act_q_;
    DeviceBuffer<float> act_scale_;
    DeviceBuffer<int32_t> act_sum_;
    std::unique_ptr<CublasLtGemm> cublaslt_;

    // Decode state, per slot: pending token and its position (device copies are what the graph reads).
    DeviceBuffer<int32_t> d_tokens_, d_pos_, d_slots_;
    DeviceBuffer<uint8_t> d_seen_;   // [slots, V]
    DeviceBuffer<uint64_t> d_step_;  // [slots] RNG counters
    DeviceBuffer<uint8_t> sample_ws_;
    std::vector<int32_t> pending_tok_;
    std::vector<int64_t> pending_pos_;
    int32_t* h_tokens_ = nullptr;    // pinned [slots]
    DevSampling sampling_;
    std::map<int, GraphExec> graphs_;  // by B, for sampling_
    DeviceBuffer<int32_t> d_hist_;   // decode_steps: [K, B] tokens
    DeviceBuffer<unsigned long long> argmax_key_;  // fused_argmax state (zero between steps)
    DeviceBuffer<unsigned> argmax_count_;
    bool fused_argmax_active(int B) const;
};

}  // namespace cuda
}  // namespace bllama

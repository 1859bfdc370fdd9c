// The CUDA backend's kernels: one launcher per job, raw device pointers, all on a caller's stream, no
// allocation and no host synchronization inside (so every launcher can be captured in a CUDA graph).
// The math of each is the CPU engine's (docs/architecture.md); where the CPU result is exact (integer
// dot products, the quantizer given the same float inputs, argmax) the GPU must be bit-identical.
//
// Shapes are int: the largest tensors (vocab x dim, ffn x dim) are far below 2^31 elements, and every
// index that can exceed that (KV cache offsets) is computed in int64 inside the kernels.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <memory>

namespace bllama {
namespace cuda {

// ---------------------------------------------------------------------------------------------------
// Ternary matmuls (gemv_ternary.cu, gemm_ternary_mma.cu, gemm_cublaslt.cu)

// A ternary matrix on the device in the cuda/layout.h layout. Several BitLinears that read the same
// input may be stacked by rows (q|k|v, gate|up) so one launch runs them all: segment i covers rows
// [i ? seg_end[i-1] : 0, seg_end[i]) and carries that BitLinear's scale and output scale.
constexpr int kMaxSegments = 3;
struct DevTernary {
    const uint32_t* words = nullptr;  // [rows, cols / 16] words
    int rows = 0, cols = 0;           // cols % 256 == 0 (the stored, padded input length)
    int n_seg = 1;
    int seg_end[kMaxSegments] = {0, 0, 0};
    float seg_scale[kMaxSegments] = {0, 0, 0};
    float seg_out_scale[kMaxSegments] = {1, 1, 1};  // 1: none
};
// Output value of row r (segment i) for token t, exactly as the CPU engine computes it:
//   acc = sum_k u[r,k] * x.q[t,k] - x.row_sum[t]            (int32, exact)
//   v   = ((float)acc * (seg_scale[i] / x.scale[t])) * seg_out_scale[i]   (fp32, two roundings, never fused)

// Int8 activations of n tokens: a BitLinear input (rmsnorm_quant writes them).
struct DevActs {
    int8_t* q = nullptr;         // [n, cols] row-major; columns past the logical length are 0
    float* scale = nullptr;      // [n]: a_t = (1 / max(absmax, 1e-5)) * 127
    int32_t* row_sum = nullptr;  // [n]: sum of q over the row
    int cols = 0;
};

enum class Epilogue : int {
    Store = 0,     // y[t * ldy + r] = v
    AddTo = 1,     // y[t * ldy + r] += v  (the residual add)
    GluSilu = 2,   // two segments of R rows (gate | up): y[t * ldy + r] = silu(v_r) * v_{R + r}, r < R
    GluRelu2 = 3,  // the same with relu(z)^2
};
// silu(z) = z / (1 + expf(-z)) with IEEE expf (no fast math): within 2 ulp of the CPU's std::exp.

// Decode GEMV for 1 <= n_tokens <= kGemvMaxTokens: every weight word is read once for all tokens.
constexpr int kGemvMaxTokens = 8;
void ternary_gemv(const DevTernary& w, const DevActs& x, int n_tokens, float* y, int ldy, Epilogue ep,
                  cudaStream_t stream);

// Prompt GEMM for any n_tokens >= 1: our int8 tensor-core kernel (mma.sync m16n8k32, u8 codes x s8
// activations), which unpacks the 2-bit words itself; the weights are never expanded in memory.
void ternary_gemm_mma(const DevTernary& w, const DevActs& x, int n_tokens, float* y, int ldy, Epilogue ep,
                      cudaStream_t stream);

// Prompt GEMM through cuBLASLt: one matrix at a time is unpacked into an int8 workspace (q in {-1,0,1}),
// multiplied by cuBLASLt in its int8 "TN" layout into int32, then the epilogue kernel. cuBLASLt is
// opened at run time (dlopen); available() is false when it cannot be found or the build had no headers.
class CublasLtGemm {
public:
    static bool available();
    // Workspace for matrices up to max_rows x max_cols and up to max_tokens tokens.
    CublasLtGemm(int max_rows, int max_cols, int max_tokens);
    ~CublasLtGemm();
    CublasLtGemm(const CublasLtGemm&) = delete;
    CublasLtGemm& operator=(const CublasLtGemm&) = delete;
    void run(const DevTernary& w, const DevActs& x, int n_tokens, float* y, int ldy, Epilogue ep,
             cudaStream_t stream);

    struct Impl;  // defined in gemm_cublaslt.cu: keeps cublasLt.h out of this header
private:
    std::unique_ptr<Impl> impl_;
};

// ---------------------------------------------------------------------------------------------------
// Norms, embedding, quantization (norm_quant.cu)

// x[t, :] = f16 row tokens[t] of table [vocab, dim] as fp32. Token ids were validated by the host.
void embed(const __half* table, int dim, const int32_t* tokens, int n, float* x, cudaStream_t stream);

// The fused BitLinear input: for each of n rows (x at stride ldx, d values), xn = rmsnorm(x, w) (w null:
// xn = x, no norm), then quantized per row into out exactly like quantize_acts on xn:
// m = max(max_k |xn_k|, 1e-5f), a = (1.0f / m) * 127.0f, q = clamp(rint(xn * a), -128, 127),
// with q = 0 for columns [d, out.cols) and row_sum = sum of q.
// rmsnorm: xn_k = x_k * (1 / sqrtf(mean(x^2) + eps)) * w_k, fp32 (summation order differs from the CPU).
void rmsnorm_quant(const float* x, int ldx, const float* w, int n, int d, float eps, DevActs out,
                   cudaStream_t stream);

// Plain rmsnorm (the final norm before the head): out[t * ldo + k].
void rmsnorm(const float* x, int ldx, const float* w, int n, int d, float eps, float* out, int ldo,
             cudaStream_t stream);

// ---------------------------------------------------------------------------------------------------
// RoPE, KV cache, attention (rope_kv.cu, attention.cu)

// The KV cache: [slot][layer][ctx][kv_dim], fp32 or fp16 (k and v alike).
struct KvCache {
    void* k = nullptr;
    void* v = nullptr;
    bool f16 = false;
    int n_layers = 0, ctx = 0, kv_dim = 0;
};

// For each token t (0 <= t < n) of qkv [n, ldq] (q at columns [0, H*hd), k at [H*hd, H*hd + KV), v next):
// rotates q and k in place with NEOX RoPE at position pos[t] (cos/sin tables [ctx, hd/2], fp32, built on
// the host exactly like the CPU's), then stores k and v in the cache at (slot[t], layer, pos[t]). bias (null:
// none): [H*hd + 2*KV], added to q, k and v first (Qwen2's q/k/v biases: after the projection, before RoPE).
void rope_kv_write(float* qkv, int ldq, int n, const int32_t* pos, const int32_t* slot, int layer, int H,
                   int Hkv, int hd, const float* cos_tab, const float* sin_tab, KvCache kv,
                   cudaStream_t stream, const float* bias = nullptr);

// Qwen3's QK-norm, before rope_kv_write: each of the H q heads and Hkv k heads of qkv's n rows (layout as there)
// RMS-normalized over its hd values in place, times q_w / k_w [hd] (hd <= 256).
void qk_norm(float* qkv, int ldq, int n, int H, int Hkv, int hd, const float* q_w, const float* k_w, float eps,
             cudaStream_t stream);

// Decode attention: token t's query (row t of q, stride ldq, H heads of hd) attends positions
// 0 .. pos[t] of slot[t] in the cache (causal, GQA: head h reads kv head h / (H / Hkv), scale 1/sqrt(hd)).
// The sequence is split into chunks processed by separate blocks (flash-decoding) and combined with a
// numerically stable log-sum-exp; the split count adapts to pos[t] on the device (graph-safe).
// out[t * ldo + h * hd + i]. workspace: attention_decode_workspace_floats(n, H, hd) floats.
constexpr int kAttnMaxSplits = 64;
size_t attention_decode_workspace_floats(int n, int H, int hd);
void attention_decode(const float* q, int ldq, int n, const int32_t* pos, const int32_t* slot, int layer,
                      int H, int Hkv, int hd, KvCache kv, float* out, int ldo, float* workspace,
                      cudaStream_t stream);

// Prompt attention: n tokens of one slot at positions pos0 .. pos0 + n - 1 (their k, v already in the
// cache), each attending positions 0 .. its own. Tiled over queries and keys (K/V tiles in shared memory).
void attention_prefill(const float* q, int ldq, int n, int pos0, int slot, int layer, int H, int Hkv, int hd,
                       KvCache kv, float* out, int ldo, cudaStream_t stream);

// ---------------------------------------------------------------------------------------------------
// LM head and sampling (head.cu, head_q8.cu, sampling.cu)

// logits[t * V + r] = sum_k float(w[r, k]) * x[t * D + k], fp32 accumulation; w [V, D] f16.
void head_f16(const __half* w, int V, int D, const float* x, int n, float* logits, cudaStream_t stream);

// Decode-step experiment (issue #18, off by default): head_f16 for one token that also writes the greedy token
// (the largest logit, the lowest index on ties, as sample() with greedy and no repetition penalty) into tokens[0]
// and advances step[0] when not null. key / count: one zeroed u64 and u32 of device state, left zeroed.
void head_f16_argmax(const __half* w, int V, int D, const float* x, float* logits, unsigned long long* key,
                     unsigned* count, int32_t* tokens, uint64_t* step, cudaStream_t stream);

// The int8 head (the CPU's head="q8", csrc/kernels/head_q8.h): w [V, D] int8 with one fp32 scale per row, x the
// int8 activations of the final-normed rows (rmsnorm_quant; row t at x.q + t * x.cols, D <= x.cols):
// logits[t * V + r] = (float)acc * (row_scale[r] / x.scale[t]), acc = sum_k w[r, k] * x.q[t, k] in int32 (exact),
// so for the same activations the logits are bit-identical to q8_head_matmul.
void head_q8(const int8_t* w, const float* row_scale, int V, int D, const DevActs& x, int n, float* logits,
             cudaStream_t stream);

struct DevSampling {
    bool greedy = true;              // argmax, whatever the rest says
    float temperature = 1.0f;        // > 0 when !greedy
    int top_k = 0;                   // 0: all of the vocabulary
    float top_p = 1.0f;              // >= 1: off
    float repetition_penalty = 1.0f; // 1: off; logit > 0 ? logit / p : logit * p for seen tokens
    uint64_t seed = 0;
};

// One token per row of logits [n, V] (modified in place by penalty and temperature) into tokens[t].
// greedy: the largest logit, the lowest index on ties (the CPU's argmax, after the penalty).
// Otherwise the CPU Sampler's distribution (csrc/engine/sampler.cpp: penalty, temperature, top-k, then top-p
// over the survivors) drawn with a counter-based RNG keyed by (seed + t, step[t]): row t draws what row 0 of a
// one-row call draws with seed + t and the same counter and history. seen: [n, V] bytes, nonzero for
// tokens already in that row's sequence (may be null when repetition_penalty == 1). step: n device counters,
// one per row, each incremented once per call by the kernel (graph-safe); may be null (counter 0).
// workspace: sample_workspace_bytes(n, V) bytes.
size_t sample_workspace_bytes(int n, int V);
void sample(float* logits, int V, int n, const DevSampling& p, const uint8_t* seen, uint64_t* step,
            int32_t* tokens, void* workspace, cudaStream_t stream);

// ---------------------------------------------------------------------------------------------------
// Device queries (device.cu)

int device_count();  // 0 when there is no driver or no GPU (never throws)
// "NVIDIA H100 80GB HBM3, sm_90, 132 SMs, 79.1 GiB" or the reason there is none.
const char* device_description();

}  // namespace cuda
}  // namespace bllama

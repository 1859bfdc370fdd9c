// RoPE on q and k (NEOX pairing: element i with i + hd/2) and the KV-cache store, in one launch.
//
// Grid (ceil(items / 256), n), one thread per item of token blockIdx.y: items are the rotation pairs of
// the H query heads and the Hkv key heads ((H + Hkv) * hd/2 of them), then the KV values of v. Each
// item is independent, so there are no barriers; a pair is read, rotated and written by one thread.
// An optional q|k|v bias is added first (fp32, as the CPU adds it after the projection).
// The rotation uses the CPU's fp32 operations with explicit roundings (no FMA contraction):
//   u[i] = u1*c - u2*s,  u[i + hd/2] = u1*s + u2*c.
#include <stdexcept>

#include "cuda/kernels/cuda_util.cuh"
#include "cuda/kernels/kernels.cuh"
#include "cuda/kernels/launch.cuh"
#include "cuda/kernels/norm_common.cuh"

namespace bllama {
namespace cuda {

namespace {

__device__ __forceinline__ void store_kv(void* cache, bool f16, int64_t at, float v) {
    if (f16) static_cast<__half*>(cache)[at] = __float2half_rn(v);  // round to nearest even, as the CPU
    else static_cast<float*>(cache)[at] = v;
}

__global__ void rope_kv_kernel(float* __restrict__ qkv, int ldq, const int32_t* __restrict__ pos,
                               const int32_t* __restrict__ slot, int layer, int H, int Hkv, int hd,
                               const float* __restrict__ cos_tab, const float* __restrict__ sin_tab, KvCache kv,
                               const float* __restrict__ bias) {
    pdl_trigger();
    pdl_wait();  // before the early exit below (launch.cuh)
    const int t = blockIdx.y;
    const int half = hd / 2;
    const int n_pairs = (H + Hkv) * half;
    const int KV = Hkv * hd;
    const int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= n_pairs + KV) return;

    float* row = qkv + static_cast<int64_t>(t) * ldq;
    const int p = pos[t];
    // Cache row (slot, layer, p), int64: slots * layers * ctx * kv_dim may pass 2^31.
    const int64_t at = ((static_cast<int64_t>(slot[t]) * kv.n_layers + layer) * kv.ctx + p) * kv.kv_dim;

    if (e < n_pairs) {
        const int head = e / half, i = e % half;
        const float c = cos_tab[static_cast<int64_t>(p) * half + i];
        const float s = sin_tab[static_cast<int64_t>(p) * half + i];
        // q heads first, then k heads: the k columns start right after the q columns.
        float* u = row + head * hd;
        float u1 = u[i], u2 = u[i + half];
        if (bias) {  // fp32 adds, as the CPU's bitlinear_rows does them
            u1 = __fadd_rn(u1, bias[head * hd + i]);
            u2 = __fadd_rn(u2, bias[head * hd + i + half]);
        }
        const float r1 = __fsub_rn(__fmul_rn(u1, c), __fmul_rn(u2, s));
        const float r2 = __fadd_rn(__fmul_rn(u1, s), __fmul_rn(u2, c));
        u[i] = r1;
        u[i + half] = r2;
        if (head >= H) {
            const int col = (head - H) * hd + i;
            store_kv(kv.k, kv.f16, at + col, r1);
            store_kv(kv.k, kv.f16, at + col + half, r2);
        }
    } else {
        const int j = e - n_pairs;
        float v = row[H * hd + KV + j];
        if (bias) row[H * hd + KV + j] = v = __fadd_rn(v, bias[H * hd + KV + j]);
        store_kv(kv.v, kv.f16, at + j, v);
    }
}

// Qwen3's QK-norm: block (head, t) RMS-normalizes head `head` of token t's q (head < H) or k (H <= head) in place,
// one warp per head (hd <= 256). The sum of squares in norm_common.cuh's canonical order, as the other norms here.
__global__ void qk_norm_kernel(float* __restrict__ qkv, int ldq, int H, int hd, const float* __restrict__ q_w,
                               const float* __restrict__ k_w, float eps) {
    pdl_trigger();
    pdl_wait();
    __shared__ float chunk_sums[8];  // hd <= 256: at most 2 chunks of 128
    const int head = blockIdx.x, t = blockIdx.y, lane = threadIdx.x;
    float* u = qkv + static_cast<int64_t>(t) * ldq + static_cast<int64_t>(head) * hd;
    const float* w = head < H ? q_w : k_w;
    const int K = (hd + detail::kNormChunk - 1) / detail::kNormChunk;
    for (int k = 0; k < K; ++k) {
        float e[detail::kNormGroup];
        const int k0 = (k * 32 + lane) * detail::kNormGroup;
#pragma unroll
        for (int c = 0; c < detail::kNormGroup; ++c) e[c] = k0 + c < hd ? u[k0 + c] : 0.0f;
        const float s = detail::warp_sum_xor(detail::sumsq_group(e));
        if (lane == 0) chunk_sums[k] = s;
    }
    __syncwarp();
    const float r = detail::rms_factor(detail::lane_sums_total(chunk_sums, K, lane), hd, eps);
    for (int i = lane; i < hd; i += 32) u[i] = detail::norm_value(u[i], r, w[i]);  // every read above is done
}

}  // namespace

void qk_norm(float* qkv, int ldq, int n, int H, int Hkv, int hd, const float* q_w, const float* k_w, float eps,
             cudaStream_t stream) {
    if (n <= 0) return;
    if (hd <= 0 || hd > 256 || H <= 0 || Hkv <= 0) throw std::invalid_argument("qk_norm: bad head shape");
    if (n > 65535) throw std::invalid_argument("qk_norm: at most 65535 tokens per call");
    launch(qk_norm_kernel, dim3(H + Hkv, n), 32, 0, stream, qkv, ldq, H, hd, q_w, k_w, eps);
}

void rope_kv_write(float* qkv, int ldq, int n, const int32_t* pos, const int32_t* slot, int layer, int H, int Hkv,
                   int hd, const float* cos_tab, const float* sin_tab, KvCache kv, cudaStream_t stream,
                   const float* bias) {
    if (n <= 0) return;
    if (hd <= 0 || hd % 2 || H <= 0 || Hkv <= 0 || Hkv * hd != kv.kv_dim)
        throw std::invalid_argument("rope_kv_write: bad head shape");
    if (n > 65535) throw std::invalid_argument("rope_kv_write: at most 65535 tokens per call");
    const int items = (H + Hkv) * (hd / 2) + Hkv * hd;
    const dim3 grid((items + 255) / 256, n);
    launch(rope_kv_kernel, grid, 256, 0, stream, qkv, ldq, pos, slot, layer, H, Hkv, hd, cos_tab, sin_tab, kv, bias);
}

}  // namespace cuda
}  // namespace bllama

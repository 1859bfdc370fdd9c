// RoPE on q and k (NEOX pairing: element i with i + hd/2) and the KV-cache store, in one launch.
//
// Grid (ceil(items / 256), n), one thread per item of token blockIdx.y: items are the rotation pairs of
// the H query heads and the Hkv key heads ((H + Hkv) * hd/2 of them), then the KV values of v. Each
// item is independent, so there are no barriers; a pair is read, rotated and written by one thread.
// The rotation uses the CPU's fp32 operations with explicit roundings (no FMA contraction):
//   u[i] = u1*c - u2*s,  u[i + hd/2] = u1*s + u2*c.
#include <stdexcept>

#include "cuda/kernels/cuda_util.cuh"
#include "cuda/kernels/kernels.cuh"
#include "cuda/kernels/launch.cuh"

namespace bllama {
namespace cuda {

namespace {

__device__ __forceinline__ void store_kv(void* cache, bool f16, int64_t at, float v) {
    if (f16) static_cast<__half*>(cache)[at] = __float2half_rn(v);  // round to nearest even, as the CPU
    else static_cast<float*>(cache)[at] = v;
}

__global__ void rope_kv_kernel(float* __restrict__ qkv, int ldq, const int32_t* __restrict__ pos,
                               const int32_t* __restrict__ slot, int layer, int H, int Hkv, int hd,
                               const float* __restrict__ cos_tab, const float* __restrict__ sin_tab, KvCache kv) {
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
        const float u1 = u[i], u2 = u[i + half];
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
        store_kv(kv.v, kv.f16, at + j, row[H * hd + KV + j]);
    }
}

}  // namespace

void rope_kv_write(float* qkv, int ldq, int n, const int32_t* pos, const int32_t* slot, int layer, int H, int Hkv,
                   int hd, const float* cos_tab, const float* sin_tab, KvCache kv, cudaStream_t stream) {
    if (n <= 0) return;
    if (hd <= 0 || hd % 2 || H <= 0 || Hkv <= 0 || Hkv * hd != kv.kv_dim)
        throw std::invalid_argument("rope_kv_write: bad head shape");
    if (n > 65535) throw std::invalid_argument("rope_kv_write: at most 65535 tokens per call");
    const int items = (H + Hkv) * (hd / 2) + Hkv * hd;
    const dim3 grid((items + 255) / 256, n);
    launch(rope_kv_kernel, grid, 256, 0, stream, qkv, ldq, pos, slot, layer, H, Hkv, hd, cos_tab, sin_tab, kv);
}

}  // namespace cuda
}  // namespace bllama

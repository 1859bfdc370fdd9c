// LM head: logits = W x with W [V, D] f16 and x fp32, fp32 accumulation.
//
// At one token this is a GEMV that streams the whole matrix once (131 MB for the 1.7B model), so it
// is bandwidth-bound: each warp owns kRows rows, each lane loads 16 bytes (8 halves) per row per step,
// coalesced across the warp, with several steps unrolled so many loads are in flight. With more tokens
// every weight load is reused for up to NT tokens held in registers; more than 8 tokens loop over
// token tiles (the warp's rows are then still in L1/L2 for the next tile).
// Grid: ceil(V / (8 * kRows)) blocks of 256 threads (8 warps); no shared memory, no barriers.
#include <algorithm>
#include <stdexcept>

#include "cuda/kernels/cuda_util.cuh"
#include "cuda/kernels/head_common.cuh"
#include "cuda/kernels/kernels.cuh"
#include "cuda/kernels/launch.cuh"

namespace bllama {
namespace cuda {

namespace {

constexpr int kRows = 2;  // rows per warp: each x load is reused for both

// 8 halves -> 8 floats.
__device__ __forceinline__ void unpack8(const uint4& raw, float (&f)[8]) {
    const __half2* h = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float2 v = __half22float2(h[i]);
        f[2 * i] = v.x, f[2 * i + 1] = v.y;
    }
}

// VEC8: D % 8 == 0 and 16-byte aligned rows (w and x). STREAM: the weights are read once (a single
// token tile), so they bypass L1 retention in favour of x.
template <int NT, bool VEC8, bool STREAM>
__global__ void __launch_bounds__(kHeadThreads)
    head_kernel(const __half* __restrict__ w, int V, int D, const float* __restrict__ x, int n,
                float* __restrict__ logits) {
    const int lane = threadIdx.x & 31;
    const __half* wr[kRows];
    const int r0 = head_warp_start<kRows, 4, VEC8>(w, V, D, wr);  // the first 2 KiB of each row prefetched
    if (r0 >= V) return;  // whole warps only: no barrier follows
    const int nr = min(kRows, V - r0);

    for (int t0 = 0; t0 < n; t0 += NT) {
        const int nt = min(NT, n - t0);
        float acc[kRows][NT];
#pragma unroll
        for (int r = 0; r < kRows; ++r)
#pragma unroll
            for (int t = 0; t < NT; ++t) acc[r][t] = 0.0f;

        if (VEC8) {
#pragma unroll 4
            for (int k = lane * 8; k < D; k += 256) {
                float wf[kRows][8];
#pragma unroll
                for (int r = 0; r < kRows; ++r) {
                    const uint4* p = reinterpret_cast<const uint4*>(wr[r] + k);
                    unpack8(STREAM ? __ldcs(p) : __ldg(p), wf[r]);
                }
#pragma unroll
                for (int t = 0; t < NT; ++t) {
                    if (t < nt) {
                        const float4* xp = reinterpret_cast<const float4*>(x + static_cast<int64_t>(t0 + t) * D + k);
                        const float4 a = __ldg(xp), b = __ldg(xp + 1);
                        const float xv[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
                        for (int r = 0; r < kRows; ++r)
#pragma unroll
                            for (int c = 0; c < 8; ++c) acc[r][t] = fmaf(wf[r][c], xv[c], acc[r][t]);
                    }
                }
            }
        } else {
            for (int k = lane; k < D; k += 32) {
                float wf[kRows], xv[NT];
#pragma unroll
                for (int r = 0; r < kRows; ++r) wf[r] = __half2float(wr[r][k]);
#pragma unroll
                for (int t = 0; t < NT; ++t) xv[t] = t < nt ? __ldg(x + static_cast<int64_t>(t0 + t) * D + k) : 0.0f;
#pragma unroll
                for (int t = 0; t < NT; ++t)
#pragma unroll
                    for (int r = 0; r < kRows; ++r) acc[r][t] = fmaf(wf[r], xv[t], acc[r][t]);
            }
        }

        // Butterfly sums: every lane ends with every total; lane (r * NT + t) % 32 stores one.
#pragma unroll
        for (int r = 0; r < kRows; ++r)
#pragma unroll
            for (int t = 0; t < NT; ++t) {
                float v = acc[r][t];
#pragma unroll
                for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
                if (lane == (r * NT + t) % 32 && r < nr && t < nt)
                    logits[static_cast<int64_t>(t0 + t) * V + r0 + r] = v;
            }
    }
}

template <int NT>
void launch_head(const __half* w, int V, int D, const float* x, int n, float* logits, bool vec8,
                 cudaStream_t stream) {
    const int rows_per_block = (kHeadThreads / 32) * kRows;
    const int grid = (V + rows_per_block - 1) / rows_per_block;
    const bool stream_w = n <= NT;
    if (vec8 && stream_w) launch(head_kernel<NT, true, true>, grid, kHeadThreads, 0, stream, w, V, D, x, n, logits);
    else if (vec8) launch(head_kernel<NT, true, false>, grid, kHeadThreads, 0, stream, w, V, D, x, n, logits);
    else launch(head_kernel<NT, false, false>, grid, kHeadThreads, 0, stream, w, V, D, x, n, logits);
}

}  // namespace

void head_f16(const __half* w, int V, int D, const float* x, int n, float* logits, cudaStream_t stream) {
    if (n <= 0 || V <= 0) return;
    if (D <= 0) throw std::invalid_argument("head_f16: D must be positive");
    const bool vec8 = D % 8 == 0 && (reinterpret_cast<uintptr_t>(w) & 15u) == 0 &&
                      (reinterpret_cast<uintptr_t>(x) & 15u) == 0;
    if (n == 1) launch_head<1>(w, V, D, x, n, logits, vec8, stream);
    else if (n == 2) launch_head<2>(w, V, D, x, n, logits, vec8, stream);
    else if (n <= 4) launch_head<4>(w, V, D, x, n, logits, vec8, stream);
    else launch_head<8>(w, V, D, x, n, logits, vec8, stream);
}

}  // namespace cuda
}  // namespace bllama

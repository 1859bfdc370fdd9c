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

// The fused greedy step of the decode variant (head_f16_argmax, one token): a block's warps fold their rows'
// (value, index) into a shared key, the block's last warp folds that into the global key, and the grid's last
// block writes the token and clears the key and the counter for the next step. Key: the value's bits mapped to an
// unsigned order in the high word, ~index in the low one, so the largest value wins and, among equal values, the
// lowest index: the greedy kernel's rule. NaN never wins (as there); no candidate at all leaves token 0.
struct ArgmaxArgs {
    unsigned long long* key = nullptr;  // zero between steps
    unsigned* count = nullptr;          // zero between steps
    int32_t* tokens = nullptr;
    uint64_t* step = nullptr;           // the RNG counter the greedy kernel advances (may be null)
};
__device__ __forceinline__ unsigned long long argmax_key(float v, int i) {
    if (v != v) return 0;
    const unsigned b = __float_as_uint(v);
    const unsigned ord = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
    return (static_cast<unsigned long long>(ord) << 32) | (0xFFFFFFFFu - static_cast<unsigned>(i));
}
__device__ __forceinline__ void argmax_warp_done(unsigned long long key, unsigned long long* s_key, unsigned* s_cnt,
                                                 const ArgmaxArgs& am) {
    const int lane = threadIdx.x & 31;
    if (lane != 0) return;
    if (key) atomicMax(s_key, key);
    __threadfence_block();
    if (atomicAdd(s_cnt, 1u) != kHeadThreads / 32 - 1) return;
    __threadfence_block();
    const unsigned long long bk = atomicAdd(s_key, 0ull);  // every warp's max is in
    if (bk) atomicMax(am.key, bk);
    __threadfence();
    if (atomicAdd(am.count, 1u) != gridDim.x - 1) return;
    __threadfence();
    const unsigned long long k = atomicExch(am.key, 0ull);
    am.tokens[0] = k ? static_cast<int32_t>(0xFFFFFFFFu - static_cast<unsigned>(k & 0xFFFFFFFFu)) : 0;
    if (am.step) am.step[0] += 1;
    atomicExch(am.count, 0u);
}

// VEC8: D % 8 == 0 and 16-byte aligned rows (w and x). STREAM: the weights are read once (a single
// token tile), so they bypass L1 retention in favour of x. ARGMAX (NT == 1, n == 1 only): also the greedy token.
template <int NT, bool VEC8, bool STREAM, bool ARGMAX = false>
__global__ void __launch_bounds__(kHeadThreads)
    head_kernel(const __half* __restrict__ w, int V, int D, const float* __restrict__ x, int n,
                float* __restrict__ logits, ArgmaxArgs am = ArgmaxArgs{}) {
    static_assert(!ARGMAX || NT == 1, "the fused argmax takes one token");
    const int lane = threadIdx.x & 31;
    __shared__ unsigned long long s_key;
    __shared__ unsigned s_cnt;
    if constexpr (ARGMAX) {
        if (threadIdx.x == 0) s_key = 0, s_cnt = 0;
        __syncthreads();  // the only barrier: every warp is still here
    }
    const __half* wr[kRows];
    const int r0 = head_warp_start<kRows, 4, VEC8>(w, V, D, wr);  // the first 2 KiB of each row prefetched
    if (r0 >= V) {  // whole warps only: no barrier follows
        if constexpr (ARGMAX) argmax_warp_done(0, &s_key, &s_cnt, am);
        return;
    }
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
                if constexpr (ARGMAX) acc[r][t] = v;  // every lane holds every total
            }
        if constexpr (ARGMAX) {
            unsigned long long best = 0;
#pragma unroll
            for (int r = 0; r < kRows; ++r)
                if (r < nr) best = max(best, argmax_key(acc[r][0], r0 + r));
            argmax_warp_done(best, &s_key, &s_cnt, am);
        }
    }
}

template <int NT>
void launch_head(const __half* w, int V, int D, const float* x, int n, float* logits, bool vec8,
                 cudaStream_t stream) {
    const int rows_per_block = (kHeadThreads / 32) * kRows;
    const int grid = (V + rows_per_block - 1) / rows_per_block;
    const bool stream_w = n <= NT;
    if (vec8 && stream_w) launch(head_kernel<NT, true, true>, grid, kHeadThreads, 0, stream, w, V, D, x, n, logits, ArgmaxArgs{});
    else if (vec8) launch(head_kernel<NT, true, false>, grid, kHeadThreads, 0, stream, w, V, D, x, n, logits, ArgmaxArgs{});
    else launch(head_kernel<NT, false, false>, grid, kHeadThreads, 0, stream, w, V, D, x, n, logits, ArgmaxArgs{});
}

}  // namespace

void head_f16_argmax(const __half* w, int V, int D, const float* x, float* logits, unsigned long long* key,
                     unsigned* count, int32_t* tokens, uint64_t* step, cudaStream_t stream) {
    if (V <= 0 || D <= 0) throw std::invalid_argument("head_f16_argmax: V and D must be positive");
    if (!key || !count || !tokens) throw std::invalid_argument("head_f16_argmax: null state");
    const bool vec8 = D % 8 == 0 && (reinterpret_cast<uintptr_t>(w) & 15u) == 0 &&
                      (reinterpret_cast<uintptr_t>(x) & 15u) == 0;
    const int grid = (V + (kHeadThreads / 32) * kRows - 1) / ((kHeadThreads / 32) * kRows);
    const ArgmaxArgs am{key, count, tokens, step};
    if (vec8) launch(head_kernel<1, true, true, true>, grid, kHeadThreads, 0, stream, w, V, D, x, 1, logits, am);
    else launch(head_kernel<1, false, false, true>, grid, kHeadThreads, 0, stream, w, V, D, x, 1, logits, am);
}

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

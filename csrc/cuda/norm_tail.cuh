// The "norm tail" of a decode GEMV (kernels.cuh, NormTail): after its last store to y, every block counts itself
// done; the last one computes the next BitLinear's input, rmsnorm_quant(y, ldy, norm_w, NT, d, eps, out), with
// exactly rmsnorm_quant's arithmetic (norm_common.cuh: the canonical sum of squares, the CPU's quantizer), so the
// separate launch of that kernel, and its wait for the GEMV to drain, disappear from the decode step.
//
// The values (NT rows of d floats, d % 4 == 0) are held in registers, kTailGroups / NT groups of 4 per row and
// thread: thread i holds groups i, i + blockDim.x, ... of every row (zeros past d), so the 32 lanes of a warp hold
// whole 128-value chunks (chunk sums in the canonical order). Three barriers: after the chunk sums, after the
// per-row factors, after the absmax. y was written by other blocks of this launch: it is read through L2 (__ldcg),
// after the fence that pairs with theirs. Every lane executes every shuffle (groups past the end hold zeros and only
// their stores are skipped): a shuffle under a condition the compiler cannot prove warp-uniform became a helper
// call and spills. The launcher (gemv_ternary.cu) guarantees norm_tail_fits(NT, d, blockDim.x).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/kernels.cuh"
#include "cuda/norm_common.cuh"

namespace bllama {
namespace cuda {
namespace detail {

constexpr int kTailGroups = 8;     // groups of 4 values per thread: 32 floats in registers (more spilled the GEMVs)
constexpr int kTailMaxTokens = 4;  // at 256 threads: 4 rows of 2048 values or 1 of 8192 (the 1.7B FFN)

// Shared memory the tail needs: chunk sums [NT][K], then per row its factor, absmax bits and code sum.
__host__ __device__ constexpr int norm_tail_smem_bytes(int nt, int d) {
    return (nt * ((d + kNormChunk - 1) / kNormChunk) + 3 * nt) * 4;
}
// Whether a block of `threads` threads can hold the tail's NT rows of d values (kTailGroups / NT groups per row
// and thread).
__host__ __device__ constexpr bool norm_tail_fits(int nt, int d, int threads) {
    return nt >= 1 && nt <= kTailMaxTokens && 32 * ((d + kNormChunk - 1) / kNormChunk) <= kTailGroups / nt * threads;
}

// Called by every thread of every block after its last store to y. smem: norm_tail_smem_bytes(NT, d) bytes that
// the block no longer needs (the GEMV's staged activations).
template <int NT>
__device__ __forceinline__ void norm_tail(const NormTail& tl, const float* y, int ldy, int d, float* smem) {
    constexpr int JR = kTailGroups / NT;  // groups per row and thread: group threadIdx.x + j * blockDim.x
    __shared__ int s_last;
    __threadfence();  // this thread's stores of y, before its block counts itself (the threadFenceReduction pattern)
    __syncthreads();  // also: every warp is done with the activations staged in shared memory
    if (threadIdx.x == 0) {
        __threadfence();
        s_last = atomicAdd(tl.counter, 1) == static_cast<int>(gridDim.x) - 1;
        if (s_last) *tl.counter = 0;  // every block of this launch has counted: ready for the next launch
    }
    __syncthreads();
    if (!s_last) return;
    __threadfence();

    const int T = blockDim.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5, W = T >> 5;
    const int K = (d + kNormChunk - 1) / kNormChunk, Gp = 32 * K;
    float* s_c = smem;                                        // [NT][K]
    float* s_r = s_c + NT * K;                                // [NT]
    unsigned* s_max = reinterpret_cast<unsigned*>(s_r + NT);  // [NT]: absmax >= 0, so its bits order like it
    int* s_sum = reinterpret_cast<int*>(s_max + NT);          // [NT]
    if (threadIdx.x < NT) {
        s_max[threadIdx.x] = 0u;
        s_sum[threadIdx.x] = 0;
    }

    // Group g = threadIdx.x + j * T of row t; its warp's first group g - lane, so `g - lane < Gp` is warp-uniform.
    float e[NT][JR][kNormGroup];
#pragma unroll
    for (int t = 0; t < NT; ++t)
#pragma unroll
        for (int j = 0; j < JR; ++j) {
            const int g = threadIdx.x + j * T;
            if (g * kNormGroup < d) {
                const float4 f = __ldcg(reinterpret_cast<const float4*>(y + static_cast<int64_t>(t) * ldy) + g);
                e[t][j][0] = f.x, e[t][j][1] = f.y, e[t][j][2] = f.z, e[t][j][3] = f.w;
            } else {
                e[t][j][0] = e[t][j][1] = e[t][j][2] = e[t][j][3] = 0.0f;
            }
        }
    if (tl.norm_w) {
#pragma unroll
        for (int t = 0; t < NT; ++t)
#pragma unroll
            for (int j = 0; j < JR; ++j) {
                const int g0 = threadIdx.x - lane + j * T;
                const float c = warp_sum_xor(sumsq_group(e[t][j]));
                if (lane == 0 && g0 < Gp) s_c[t * K + g0 / 32] = c;
            }
    }
    __syncthreads();
    for (int t = warp; t < NT; t += W) {
        const float r = tl.norm_w ? rms_factor(lane_sums_total(s_c + t * K, K, lane), d, tl.eps) : 1.0f;
        if (lane == 0) s_r[t] = r;
    }
    __syncthreads();

    // xn in place (0 past d: the weights are 0 there) and each row's absmax.
#pragma unroll
    for (int t = 0; t < NT; ++t) {
        const float r = s_r[t];
        float m = 0.0f;
#pragma unroll
        for (int j = 0; j < JR; ++j) {
            if (tl.norm_w) {
                float wv[kNormGroup];
                load_group<true>(tl.norm_w, threadIdx.x + j * T, d, wv);
#pragma unroll
                for (int c = 0; c < kNormGroup; ++c) e[t][j][c] = norm_value(e[t][j][c], r, wv[c]);
            }
#pragma unroll
            for (int c = 0; c < kNormGroup; ++c) m = fmaxf(m, fabsf(e[t][j][c]));
        }
        m = warp_max(m);
        if (lane == 0) atomicMax(&s_max[t], __float_as_uint(m));
    }
    __syncthreads();

    // The codes (zero past d), stored 4 at a time, and each row's code sum.
    const int cols = tl.out.cols;
#pragma unroll
    for (int t = 0; t < NT; ++t) {
        const float a = quant_scale(__uint_as_float(s_max[t]));
        int sum = 0;
#pragma unroll
        for (int j = 0; j < JR; ++j) {
            const int g = threadIdx.x + j * T;
            int q[kNormGroup];
#pragma unroll
            for (int c = 0; c < kNormGroup; ++c) {
                q[c] = quant_code(e[t][j][c], a);
                sum += q[c];
            }
            if (g * kNormGroup < d)
                *reinterpret_cast<char4*>(tl.out.q + static_cast<int64_t>(t) * cols + g * kNormGroup) =
                    make_char4(static_cast<signed char>(q[0]), static_cast<signed char>(q[1]),
                               static_cast<signed char>(q[2]), static_cast<signed char>(q[3]));
        }
        sum = warp_sum_int(sum);
        if (lane == 0) atomicAdd(&s_sum[t], sum);
    }
    const int pad = cols - d;  // padding columns of the stored rows
    for (int idx = threadIdx.x; idx < NT * pad; idx += T)
        tl.out.q[static_cast<int64_t>(idx / pad) * cols + d + idx % pad] = 0;
    __syncthreads();
    if (threadIdx.x < NT) {
        tl.out.scale[threadIdx.x] = quant_scale(__uint_as_float(s_max[threadIdx.x]));
        tl.out.row_sum[threadIdx.x] = s_sum[threadIdx.x];
    }
}

}  // namespace detail
}  // namespace cuda
}  // namespace bllama

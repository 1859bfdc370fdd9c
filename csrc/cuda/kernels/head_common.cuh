// What the two LM head kernels share (head.cu: f16 rows, head_q8.cu: int8 rows with one scale each): the grid
// shape and the start of every warp. Both stream a [V, D] matrix once per token tile with 16-byte lane loads,
// each warp owning kRows consecutive rows; only the element type and the rows per warp differ.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/kernels/launch.cuh"

namespace bllama {
namespace cuda {

constexpr int kHeadThreads = 256;  // 8 warps per block; grid: ceil(V / (8 * kRows)) blocks

// The start of a head kernel, run by every thread: triggers the dependent launch, points wr[] at the warp's
// kRows rows r0 .. r0 + kRows - 1 (rows past V clamp to row V - 1, so loads stay in bounds), asks L2 for the
// first kPrefetch 16-byte loads of each row (VEC layouts only) while the kernel ahead still runs, then waits for
// that kernel (PDL, launch.cuh). The weights are constant, so they may be touched before the wait; the prefetch
// is compiled for sm_90 only: elsewhere nothing runs ahead of the wait. Returns r0; the caller returns at once
// when r0 >= V (whole warps only: no barrier follows).
template <int kRows, int kPrefetch, bool VEC, class T>
__device__ __forceinline__ int head_warp_start(const T* w, int V, int D, const T* (&wr)[kRows]) {
    pdl_trigger();
    const int r0 = (blockIdx.x * (kHeadThreads / 32) + (threadIdx.x >> 5)) * kRows;
#pragma unroll
    for (int r = 0; r < kRows; ++r) wr[r] = w + static_cast<int64_t>(min(r0 + r, V - 1)) * D;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    constexpr int kPerLoad = 16 / static_cast<int>(sizeof(T));  // elements per 16-byte lane load
    const int lane = threadIdx.x & 31;
    if (VEC && r0 < V)
#pragma unroll
        for (int r = 0; r < kRows; ++r)
#pragma unroll
            for (int i = 0; i < kPrefetch; ++i)
                if (lane * kPerLoad + i * 32 * kPerLoad < D)
                    prefetch_global_l2(wr[r] + lane * kPerLoad + i * 32 * kPerLoad);
#endif
    pdl_wait();
    return r0;
}

}  // namespace cuda
}  // namespace bllama

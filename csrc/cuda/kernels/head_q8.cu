// Int8 LM head (the CPU's head="q8", csrc/kernels/head_q8.h): logits = W x with W [V, D] int8 and one fp32
// scale per row, x the int8 activations of the final-normed rows.
//
// Same shape as the f16 head (head.cu) at half the bytes: each warp owns kRows rows, each lane loads 16 bytes
// (16 weights) per row per step, coalesced across the warp, several steps in flight; the matching 16 activation
// bytes of each token come from L1 (they are shared by every warp). Products are summed exactly in int32 (dp4a,
// signed x signed), so the sums equal the CPU kernels' and the epilogue is the CPU's:
//   logits[t * V + r] = (float)acc * (scale[r] / x.scale[t]).
// Grid: ceil(V / (8 * kRows)) blocks of 256 threads (8 warps); no shared memory, no barriers.
#include <stdexcept>
#include <string>

#include "cuda/kernels/cuda_util.cuh"
#include "cuda/kernels/head_common.cuh"
#include "cuda/kernels/kernels.cuh"
#include "cuda/kernels/launch.cuh"

namespace bllama {
namespace cuda {

namespace {

constexpr int kRows = 4;  // rows per warp: each activation load is reused for all of them

__device__ __forceinline__ int dot16(const uint4& w, const uint4& a, int acc) {
    acc = __dp4a(static_cast<int>(w.x), static_cast<int>(a.x), acc);
    acc = __dp4a(static_cast<int>(w.y), static_cast<int>(a.y), acc);
    acc = __dp4a(static_cast<int>(w.z), static_cast<int>(a.z), acc);
    return __dp4a(static_cast<int>(w.w), static_cast<int>(a.w), acc);
}

// VEC16: D % 16 == 0 and 16-byte aligned rows (w and x.q at stride x.cols). STREAM: the weights are read
// once (a single token tile), so they bypass L1 retention in favour of the activations.
template <int NT, bool VEC16, bool STREAM>
__global__ void __launch_bounds__(kHeadThreads)
    head_q8_kernel(const int8_t* __restrict__ w, const float* __restrict__ row_scale, int V, int D, DevActs x, int n,
                   float* __restrict__ logits) {
    const int lane = threadIdx.x & 31;
    const int8_t* wr[kRows];
    const int r0 = head_warp_start<kRows, 2, VEC16>(w, V, D, wr);  // the first 1 KiB of each row prefetched
    if (r0 >= V) return;  // whole warps only: no barrier follows
    const int nr = min(kRows, V - r0);

    for (int t0 = 0; t0 < n; t0 += NT) {
        const int nt = min(NT, n - t0);
        int acc[kRows][NT];
#pragma unroll
        for (int r = 0; r < kRows; ++r)
#pragma unroll
            for (int t = 0; t < NT; ++t) acc[r][t] = 0;

        if (VEC16) {
#pragma unroll 2
            for (int k = lane * 16; k < D; k += 512) {
                uint4 wv[kRows];
#pragma unroll
                for (int r = 0; r < kRows; ++r) {
                    const uint4* p = reinterpret_cast<const uint4*>(wr[r] + k);
                    wv[r] = STREAM ? __ldcs(p) : __ldg(p);
                }
#pragma unroll
                for (int t = 0; t < NT; ++t) {
                    if (t < nt) {
                        const uint4 a = __ldg(reinterpret_cast<const uint4*>(x.q + static_cast<int64_t>(t0 + t) * x.cols + k));
#pragma unroll
                        for (int r = 0; r < kRows; ++r) acc[r][t] = dot16(wv[r], a, acc[r][t]);
                    }
                }
            }
        } else {
#pragma unroll 1
            for (int k = lane; k < D; k += 32) {
                int wv[kRows];
#pragma unroll
                for (int r = 0; r < kRows; ++r) wv[r] = wr[r][k];
#pragma unroll
                for (int t = 0; t < NT; ++t) {
                    const int a = t < nt ? x.q[static_cast<int64_t>(t0 + t) * x.cols + k] : 0;
#pragma unroll
                    for (int r = 0; r < kRows; ++r) acc[r][t] += wv[r] * a;
                }
            }
        }

        // Butterfly sums (exact in int32); lane (r * NT + t) % 32 applies the epilogue and stores.
#pragma unroll
        for (int r = 0; r < kRows; ++r)
#pragma unroll
            for (int t = 0; t < NT; ++t) {
                int v = acc[r][t];
#pragma unroll
                for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
                if (lane == (r * NT + t) % 32 && r < nr && t < nt)
                    logits[static_cast<int64_t>(t0 + t) * V + r0 + r] =
                        __fmul_rn(static_cast<float>(v), __fdiv_rn(row_scale[r0 + r], x.scale[t0 + t]));
            }
    }
}

template <int NT>
void launch_head_q8(const int8_t* w, const float* scale, int V, int D, const DevActs& x, int n, float* logits,
                    bool vec16, cudaStream_t stream) {
    const int rows_per_block = (kHeadThreads / 32) * kRows;
    const int grid = (V + rows_per_block - 1) / rows_per_block;
    const bool stream_w = n <= NT;
    if (vec16 && stream_w) launch(head_q8_kernel<NT, true, true>, grid, kHeadThreads, 0, stream, w, scale, V, D, x, n, logits);
    else if (vec16) launch(head_q8_kernel<NT, true, false>, grid, kHeadThreads, 0, stream, w, scale, V, D, x, n, logits);
    else launch(head_q8_kernel<NT, false, false>, grid, kHeadThreads, 0, stream, w, scale, V, D, x, n, logits);
}

}  // namespace

void head_q8(const int8_t* w, const float* row_scale, int V, int D, const DevActs& x, int n, float* logits,
             cudaStream_t stream) {
    if (n <= 0 || V <= 0) return;
    if (D <= 0 || x.cols < D)
        throw std::invalid_argument("head_q8: need 0 < D <= x.cols, got D " + std::to_string(D) + ", x.cols " +
                                    std::to_string(x.cols));
    if (!w || !row_scale || !x.q || !x.scale || !logits) throw std::invalid_argument("head_q8: null pointer");
    auto aligned16 = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; };
    const bool vec16 = D % 16 == 0 && x.cols % 16 == 0 && aligned16(w) && aligned16(x.q);
    if (n == 1) launch_head_q8<1>(w, row_scale, V, D, x, n, logits, vec16, stream);
    else if (n == 2) launch_head_q8<2>(w, row_scale, V, D, x, n, logits, vec16, stream);
    else if (n <= 4) launch_head_q8<4>(w, row_scale, V, D, x, n, logits, vec16, stream);
    else launch_head_q8<8>(w, row_scale, V, D, x, n, logits, vec16, stream);
}

}  // namespace cuda
}  // namespace bllama

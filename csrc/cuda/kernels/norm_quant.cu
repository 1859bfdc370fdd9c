// Embedding lookup, RMSNorm, and the fused BitLinear input (RMSNorm + per-token int8 quantization).
//
// rmsnorm_quant / rmsnorm: one block per token row. The row stays in registers between the passes
// (each thread holds up to 4 groups of 4 floats, coalesced: group j of thread i is group i + j * blockDim
// of the row), so x is read from memory once. The sum of squares is added in the canonical order of
// norm_common.cuh (independent of the block size, so every block shape gives the same bits), and
// the quantizer uses exactly the CPU's fp32 operations (every rounding explicit: __fmul_rn and friends are
// never contracted into an FMA), so for the same normed input the scale, the int8 codes and the row sum
// are bit-identical to quantize_acts.
//
// Every kernel here may be launched with PDL (launch.cuh): it waits before touching x / tokens / outputs.
#include <algorithm>
#include <stdexcept>

#include "cuda/kernels/cuda_util.cuh"
#include "cuda/kernels/kernels.cuh"
#include "cuda/kernels/launch.cuh"
#include "cuda/kernels/norm_common.cuh"

namespace bllama {
namespace cuda {

namespace {

using namespace detail;

// ---------------------------------------------------------------------------------------------------
// Embedding

// One block per token; VEC8: 16-byte loads of 8 halves and two float4 stores.
template <bool VEC8>
__global__ void embed_kernel(const __half* __restrict__ table, int dim, const int32_t* __restrict__ tokens,
                             float* __restrict__ x) {
    pdl_trigger();
    pdl_wait();
    const int t = blockIdx.x;
    const __half* row = table + static_cast<int64_t>(tokens[t]) * dim;
    float* out = x + static_cast<int64_t>(t) * dim;
    if (VEC8) {
        for (int v = threadIdx.x; v < dim / 8; v += blockDim.x) {
            const uint4 raw = __ldg(reinterpret_cast<const uint4*>(row) + v);
            const __half2* h = reinterpret_cast<const __half2*>(&raw);
            const float2 a = __half22float2(h[0]), b = __half22float2(h[1]);
            const float2 c = __half22float2(h[2]), d = __half22float2(h[3]);
            reinterpret_cast<float4*>(out)[2 * v] = make_float4(a.x, a.y, b.x, b.y);
            reinterpret_cast<float4*>(out)[2 * v + 1] = make_float4(c.x, c.y, d.x, d.y);
        }
    } else {
        for (int k = threadIdx.x; k < dim; k += blockDim.x) out[k] = __half2float(row[k]);
    }
}

// ---------------------------------------------------------------------------------------------------
// Block reductions: every thread gets the result. `red` is a block-private __shared__ array of 32;
// each reduction uses its own array, so no barrier is needed before reuse. (The sum of squares has its
// own, block-shape independent order: norm_common.cuh.)

// blockDim.x is a multiple of 32 (the launchers guarantee it).
__device__ __forceinline__ float block_max(float v, float* red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    if (lane == 0) red[warp] = v;
    __syncthreads();
    v = lane < nw ? red[lane] : 0.0f;  // the values reduced are >= 0
    return warp_max(v);
}
__device__ __forceinline__ int block_sum_int(int v, int* red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum_int(v);
    if (lane == 0) red[warp] = v;
    __syncthreads();
    v = lane < nw ? red[lane] : 0;
    return warp_sum_int(v);
}

// Stores of group g (elements 4g .. 4g+3, only those < d). VEC4: one 16-byte (float) / 4-byte (int8) store.
template <bool VEC4>
__device__ __forceinline__ void store_group(float* row, int g, int d, const float (&v)[kNormGroup]) {
    const int k0 = g * kNormGroup;
    if (VEC4) {
        if (k0 < d) *reinterpret_cast<float4*>(row + k0) = make_float4(v[0], v[1], v[2], v[3]);
    } else {
#pragma unroll
        for (int c = 0; c < kNormGroup; ++c)
            if (k0 + c < d) row[k0 + c] = v[c];
    }
}
template <bool VEC4>
__device__ __forceinline__ void store_group_q(int8_t* row, int g, int d, const int (&q)[kNormGroup]) {
    const int k0 = g * kNormGroup;
    if (VEC4) {
        if (k0 < d)
            *reinterpret_cast<char4*>(row + k0) = make_char4(static_cast<signed char>(q[0]), static_cast<signed char>(q[1]),
                                                             static_cast<signed char>(q[2]), static_cast<signed char>(q[3]));
    } else {
#pragma unroll
        for (int c = 0; c < kNormGroup; ++c)
            if (k0 + c < d) row[k0 + c] = static_cast<int8_t>(q[c]);
    }
}

constexpr int kNormGroupsPerThread = 4;  // norm_rows_kernel: up to 16 floats of the row per thread

// One row per block. The row is held in registers as groups of 4 (norm_common.cuh): thread i holds groups
// i + j * blockDim.x, j < 4, so 16 * blockDim.x >= d. VEC4: 16-byte loads and stores (d % 4 == 0, aligned
// rows); otherwise scalar ones. QUANT: write DevActs (q over `cols` columns, zero past d, scale, row_sum);
// otherwise write the normed floats to out.
template <bool VEC4, bool QUANT>
__global__ void __launch_bounds__(1024)
    norm_rows_kernel(const float* __restrict__ x, int ldx, const float* __restrict__ w, int d, float eps,
                     float* __restrict__ out, int ldo, int8_t* __restrict__ q, float* __restrict__ scale,
                     int32_t* __restrict__ row_sum, int cols) {
    constexpr int NV = kNormGroupsPerThread;
    __shared__ float red_c[NV * 32], red_max[32];  // red_c: the chunk sums (at most NV * 32 warps of them)
    __shared__ int red_sum[32];
    pdl_trigger();
    const int t = blockIdx.x, T = blockDim.x;

    // The norm weights are constant: requested before waiting for the kernel that wrote x. Zeros past d.
    float wv[NV][kNormGroup];
    if (w) {
#pragma unroll
        for (int j = 0; j < NV; ++j) load_group<VEC4>(w, threadIdx.x + j * T, d, wv[j]);
    }
    pdl_wait();

    // Issue all loads first (independent, in flight together), then reduce.
    const float* xr = x + static_cast<int64_t>(t) * ldx;
    float v[NV][kNormGroup];
#pragma unroll
    for (int j = 0; j < NV; ++j) load_group<VEC4>(xr, threadIdx.x + j * T, d, v[j]);

    if (w) {
        // The canonical sum of squares: group threadIdx.x + j * T is lane `lane` of chunk warp + j * nw.
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = T >> 5;
        const int K = (d + kNormChunk - 1) / kNormChunk;
#pragma unroll
        for (int j = 0; j < NV; ++j) {
            const float c = warp_sum_xor(sumsq_group(v[j]));
            const int k = warp + j * nw;
            if (lane == 0 && k < K) red_c[k] = c;
        }
        __syncthreads();
        const float r = rms_factor(lane_sums_total(red_c, K, lane), d, eps);
#pragma unroll
        for (int j = 0; j < NV; ++j)
#pragma unroll
            for (int c = 0; c < kNormGroup; ++c) v[j][c] = norm_value(v[j][c], r, wv[j][c]);  // 0 past d
    }

    if (!QUANT) {
        float* o = out + static_cast<int64_t>(t) * ldo;
#pragma unroll
        for (int j = 0; j < NV; ++j) store_group<VEC4>(o, threadIdx.x + j * T, d, v[j]);
        return;
    }

    float amax = 0.0f;
#pragma unroll
    for (int j = 0; j < NV; ++j)
#pragma unroll
        for (int c = 0; c < kNormGroup; ++c) amax = fmaxf(amax, fabsf(v[j][c]));
    const float a = quant_scale(block_max(amax, red_max));

    int8_t* qr = q + static_cast<int64_t>(t) * cols;
    int sum = 0;
#pragma unroll
    for (int j = 0; j < NV; ++j) {
        int qi[kNormGroup];
#pragma unroll
        for (int c = 0; c < kNormGroup; ++c) {
            qi[c] = quant_code(v[j][c], a);  // 0 past d (v is 0 there)
            sum += qi[c];
        }
        store_group_q<VEC4>(qr, threadIdx.x + j * T, d, qi);
    }
    for (int k = d + threadIdx.x; k < cols; k += T) qr[k] = 0;  // padding columns
    sum = block_sum_int(sum, red_sum);
    if (threadIdx.x == 0) {
        scale[t] = a;
        row_sum[t] = sum;
    }
}

// Rows longer than the register cache holds (d > 16384): the same math, re-reading x (from L1/L2) in each
// pass and recomputing xn, which gives the same values as the first computation. Exactly 1024 threads:
// warp w adds the chunk sums of its chunks w, w + 32, ... in order, which is lane w's sum of the canonical
// order (norm_common.cuh).
template <bool QUANT>
__global__ void __launch_bounds__(1024) norm_rows_long_kernel(const float* __restrict__ x, int ldx,
                                                              const float* __restrict__ w, int d, float eps,
                                                              float* __restrict__ out, int ldo, int8_t* __restrict__ q,
                                                              float* __restrict__ scale, int32_t* __restrict__ row_sum,
                                                              int cols) {
    __shared__ float red_ss[32], red_max[32];
    __shared__ int red_sum[32];
    pdl_trigger();
    pdl_wait();
    const int t = blockIdx.x;
    const float* xr = x + static_cast<int64_t>(t) * ldx;
    float r = 1.0f;
    if (w) {
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        const int K = (d + kNormChunk - 1) / kNormChunk;
        float p = 0.0f;
        for (int k = warp; k < K; k += 32) {
            float e[kNormGroup];
            load_group<false>(xr, 32 * k + lane, d, e);
            p = __fadd_rn(p, warp_sum_xor(sumsq_group(e)));
        }
        if (lane == 0) red_ss[warp] = p;
        __syncthreads();
        r = rms_factor(warp_sum_xor(red_ss[lane]), d, eps);
    }
    auto xn = [&](int k) { return w ? norm_value(xr[k], r, w[k]) : xr[k]; };
    if (!QUANT) {
        float* o = out + static_cast<int64_t>(t) * ldo;
        for (int k = threadIdx.x; k < d; k += blockDim.x) o[k] = xn(k);
        return;
    }
    float amax = 0.0f;
    for (int k = threadIdx.x; k < d; k += blockDim.x) amax = fmaxf(amax, fabsf(xn(k)));
    const float a = quant_scale(block_max(amax, red_max));
    int8_t* qr = q + static_cast<int64_t>(t) * cols;
    int sum = 0;
    for (int k = threadIdx.x; k < cols; k += blockDim.x) {
        const int qi = k < d ? quant_code(xn(k), a) : 0;
        qr[k] = static_cast<int8_t>(qi);
        sum += qi;
    }
    sum = block_sum_int(sum, red_sum);
    if (threadIdx.x == 0) {
        scale[t] = a;
        row_sum[t] = sum;
    }
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Picks the load width and the block size for a row of d values, then launches norm_rows_kernel over n rows.
template <bool QUANT>
void launch_norm_rows(const float* x, int ldx, const float* w, int n, int d, float eps, float* out, int ldo,
                      int8_t* q, float* scale, int32_t* row_sum, int cols, cudaStream_t stream) {
    if (n <= 0) return;
    if (d <= 0) throw std::invalid_argument("rmsnorm: d must be positive");
    // 16-byte path: every row start and the weights 16-byte aligned, and (quantizing) the int8 rows too.
    bool vec4 = d % 4 == 0 && ldx % 4 == 0 && aligned16(x) && (!w || aligned16(w));
    if (QUANT) vec4 = vec4 && cols % 4 == 0 && (reinterpret_cast<uintptr_t>(q) & 3u) == 0;
    else vec4 = vec4 && ldo % 4 == 0 && aligned16(out);
    const int groups = (d + kNormGroup - 1) / kNormGroup;
    const dim3 grid(n);
    // The cached variant holds up to 16 floats per thread (64 registers at most at 1024 threads).
    if (groups <= kNormGroupsPerThread * 1024) {
        const int th = (groups + kNormGroupsPerThread - 1) / kNormGroupsPerThread;
        const int threads = std::max(128, (th + 31) / 32 * 32);
        if (vec4)
            launch(norm_rows_kernel<true, QUANT>, grid, threads, 0, stream, x, ldx, w, d, eps, out, ldo, q, scale,
                   row_sum, cols);
        else
            launch(norm_rows_kernel<false, QUANT>, grid, threads, 0, stream, x, ldx, w, d, eps, out, ldo, q, scale,
                   row_sum, cols);
    } else {
        launch(norm_rows_long_kernel<QUANT>, grid, 1024, 0, stream, x, ldx, w, d, eps, out, ldo, q, scale, row_sum,
               cols);
    }
}

}  // namespace

void embed(const __half* table, int dim, const int32_t* tokens, int n, float* x, cudaStream_t stream) {
    if (n <= 0) return;
    const bool vec8 = dim % 8 == 0 && aligned16(table) && aligned16(x);
    const int threads = std::min(256, std::max(32, ((vec8 ? dim / 8 : dim) + 31) / 32 * 32));
    if (vec8) launch(embed_kernel<true>, n, threads, 0, stream, table, dim, tokens, x);
    else launch(embed_kernel<false>, n, threads, 0, stream, table, dim, tokens, x);
}

void rmsnorm_quant(const float* x, int ldx, const float* w, int n, int d, float eps, DevActs out,
                   cudaStream_t stream) {
    if (out.cols < d) throw std::invalid_argument("rmsnorm_quant: out.cols < d");
    launch_norm_rows<true>(x, ldx, w, n, d, eps, nullptr, 0, out.q, out.scale, out.row_sum, out.cols, stream);
}

void rmsnorm(const float* x, int ldx, const float* w, int n, int d, float eps, float* out, int ldo,
             cudaStream_t stream) {
    launch_norm_rows<false>(x, ldx, w, n, d, eps, out, ldo, nullptr, nullptr, nullptr, 0, stream);
}

}  // namespace cuda
}  // namespace bllama

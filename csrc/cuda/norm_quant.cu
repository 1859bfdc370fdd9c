// Embedding lookup, RMSNorm, and the fused BitLinear input (RMSNorm + per-token int8 quantization).
//
// rmsnorm_quant / rmsnorm: one block per token row. The row stays in registers between the passes
// (each thread holds up to NV vectors of VEC floats, coalesced: vector j of thread i is vector
// i + j * blockDim of the row), so x is read from memory once. The quantizer uses exactly the CPU's fp32
// operations (every rounding explicit: __fmul_rn and friends are never contracted into an FMA), so for
// the same normed input the scale, the int8 codes and the row sum are bit-identical to quantize_acts.
#include <algorithm>
#include <stdexcept>

#include "cuda/cuda_util.cuh"
#include "cuda/kernels.cuh"

namespace bllama {
namespace cuda {

namespace {

// ---------------------------------------------------------------------------------------------------
// Embedding

// One block per token; VEC8: 16-byte loads of 8 halves and two float4 stores.
template <bool VEC8>
__global__ void embed_kernel(const __half* __restrict__ table, int dim, const int32_t* __restrict__ tokens,
                             float* __restrict__ x) {
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
// each reduction uses its own array, so no barrier is needed before reuse.

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ int warp_sum_int(int v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// blockDim.x is a multiple of 32 (the launchers guarantee it).
__device__ __forceinline__ float block_sum(float v, float* red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    if (lane == 0) red[warp] = v;
    __syncthreads();
    v = lane < nw ? red[lane] : 0.0f;
    return warp_sum(v);
}
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

// Vector loads/stores of VEC (1 or 4) consecutive floats / int8s.
template <int VEC>
struct Vec;
template <>
struct Vec<1> {
    __device__ static void load(const float* p, float* v) { v[0] = __ldg(p); }
    __device__ static void store(float* p, const float* v) { p[0] = v[0]; }
    __device__ static void store_q(int8_t* p, const int* q) { p[0] = static_cast<int8_t>(q[0]); }
};
template <>
struct Vec<4> {
    __device__ static void load(const float* p, float* v) {
        const float4 f = __ldg(reinterpret_cast<const float4*>(p));
        v[0] = f.x, v[1] = f.y, v[2] = f.z, v[3] = f.w;
    }
    __device__ static void store(float* p, const float* v) {
        *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
    }
    __device__ static void store_q(int8_t* p, const int* q) {
        *reinterpret_cast<char4*>(p) = make_char4(static_cast<signed char>(q[0]), static_cast<signed char>(q[1]),
                                                  static_cast<signed char>(q[2]), static_cast<signed char>(q[3]));
    }
};

// 1 / sqrtf(mean(x^2) + eps) with the CPU's roundings: ss / d, + eps, sqrt, reciprocal (all IEEE).
__device__ __forceinline__ float rms_factor(float ss, int d, float eps) {
    return __frcp_rn(__fsqrt_rn(__fadd_rn(__fdiv_rn(ss, static_cast<float>(d)), eps)));
}

// One row per block. The row (d values, d % VEC == 0) is held in registers: v[j] is vector
// threadIdx.x + j * blockDim.x; NV * blockDim.x * VEC >= d. QUANT: write DevActs (q over `cols` columns,
// zero past d, scale, row_sum); otherwise write the normed floats to out.
template <int VEC, int NV, bool QUANT>
__global__ void __launch_bounds__(1024)
    norm_rows_kernel(const float* __restrict__ x, int ldx, const float* __restrict__ w, int d, float eps,
                     float* __restrict__ out, int ldo, int8_t* __restrict__ q, float* __restrict__ scale,
                     int32_t* __restrict__ row_sum, int cols) {
    __shared__ float red_ss[32], red_max[32];
    __shared__ int red_sum[32];
    const int t = blockIdx.x;
    const float* xr = x + static_cast<int64_t>(t) * ldx;
    const int nvec = d / VEC;

    // Issue all loads first (independent, in flight together), then reduce.
    float v[NV][VEC];
#pragma unroll
    for (int j = 0; j < NV; ++j) {
        const int i = threadIdx.x + j * blockDim.x;
        if (i < nvec) {
            Vec<VEC>::load(xr + i * VEC, v[j]);
        } else {
#pragma unroll
            for (int c = 0; c < VEC; ++c) v[j][c] = 0.0f;
        }
    }

    if (w) {
        float ss = 0.0f;
#pragma unroll
        for (int j = 0; j < NV; ++j)
#pragma unroll
            for (int c = 0; c < VEC; ++c) ss = fmaf(v[j][c], v[j][c], ss);
        const float r = rms_factor(block_sum(ss, red_ss), d, eps);
        // xn = (x * r) * w, two roundings as on the CPU.
#pragma unroll
        for (int j = 0; j < NV; ++j) {
            const int i = threadIdx.x + j * blockDim.x;
            if (i < nvec) {
                float wv[VEC];
                Vec<VEC>::load(w + i * VEC, wv);
#pragma unroll
                for (int c = 0; c < VEC; ++c) v[j][c] = __fmul_rn(__fmul_rn(v[j][c], r), wv[c]);
            }
        }
    }

    if (!QUANT) {
        float* o = out + static_cast<int64_t>(t) * ldo;
#pragma unroll
        for (int j = 0; j < NV; ++j) {
            const int i = threadIdx.x + j * blockDim.x;
            if (i < nvec) Vec<VEC>::store(o + i * VEC, v[j]);
        }
        return;
    }

    // absmax is order-independent (exact), so m and a equal the CPU's bit for bit.
    float amax = 0.0f;
#pragma unroll
    for (int j = 0; j < NV; ++j)
#pragma unroll
        for (int c = 0; c < VEC; ++c) amax = fmaxf(amax, fabsf(v[j][c]));
    const float m = fmaxf(block_max(amax, red_max), 1e-5f);
    const float a = __fmul_rn(__frcp_rn(m), 127.0f);  // (1.0f / m) * 127.0f

    int8_t* qr = q + static_cast<int64_t>(t) * cols;
    int sum = 0;
#pragma unroll
    for (int j = 0; j < NV; ++j) {
        const int i = threadIdx.x + j * blockDim.x;
        if (i < nvec) {
            int qi[VEC];
#pragma unroll
            for (int c = 0; c < VEC; ++c) {
                // nearbyint in the default mode rounds half to even, as __float2int_rn does.
                qi[c] = min(127, max(-128, __float2int_rn(__fmul_rn(v[j][c], a))));
                sum += qi[c];
            }
            Vec<VEC>::store_q(qr + i * VEC, qi);
        }
    }
    for (int k = d + threadIdx.x; k < cols; k += blockDim.x) qr[k] = 0;  // padding columns
    sum = block_sum_int(sum, red_sum);
    if (threadIdx.x == 0) {
        scale[t] = a;
        row_sum[t] = sum;
    }
}

// Rows longer than the register cache holds (d > 16384): the same math, re-reading x (from L1/L2) in each
// pass and recomputing xn, which gives the same values as the first computation.
template <bool QUANT>
__global__ void __launch_bounds__(1024) norm_rows_long_kernel(const float* __restrict__ x, int ldx,
                                                              const float* __restrict__ w, int d, float eps,
                                                              float* __restrict__ out, int ldo, int8_t* __restrict__ q,
                                                              float* __restrict__ scale, int32_t* __restrict__ row_sum,
                                                              int cols) {
    __shared__ float red_ss[32], red_max[32];
    __shared__ int red_sum[32];
    const int t = blockIdx.x;
    const float* xr = x + static_cast<int64_t>(t) * ldx;
    float r = 1.0f;
    if (w) {
        float ss = 0.0f;
        for (int k = threadIdx.x; k < d; k += blockDim.x) ss = fmaf(xr[k], xr[k], ss);
        r = rms_factor(block_sum(ss, red_ss), d, eps);
    }
    auto xn = [&](int k) { return w ? __fmul_rn(__fmul_rn(xr[k], r), w[k]) : xr[k]; };
    if (!QUANT) {
        float* o = out + static_cast<int64_t>(t) * ldo;
        for (int k = threadIdx.x; k < d; k += blockDim.x) o[k] = xn(k);
        return;
    }
    float amax = 0.0f;
    for (int k = threadIdx.x; k < d; k += blockDim.x) amax = fmaxf(amax, fabsf(xn(k)));
    const float m = fmaxf(block_max(amax, red_max), 1e-5f);
    const float a = __fmul_rn(__frcp_rn(m), 127.0f);
    int8_t* qr = q + static_cast<int64_t>(t) * cols;
    int sum = 0;
    for (int k = threadIdx.x; k < cols; k += blockDim.x) {
        const int qi = k < d ? min(127, max(-128, __float2int_rn(__fmul_rn(xn(k), a)))) : 0;
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

// Picks the vector width, the registers per thread and the block size for a row of d values, then
// launches norm_rows_kernel over n rows.
template <bool QUANT>
void launch_norm_rows(const float* x, int ldx, const float* w, int n, int d, float eps, float* out, int ldo,
                      int8_t* q, float* scale, int32_t* row_sum, int cols, cudaStream_t stream) {
    if (n <= 0) return;
    if (d <= 0) throw std::invalid_argument("rmsnorm: d must be positive");
    // float4 path: every row start and the weights 16-byte aligned, and (quantizing) the int8 rows too.
    bool vec4 = d % 4 == 0 && ldx % 4 == 0 && aligned16(x) && (!w || aligned16(w));
    if (QUANT) vec4 = vec4 && cols % 4 == 0 && (reinterpret_cast<uintptr_t>(q) & 3u) == 0;
    else vec4 = vec4 && ldo % 4 == 0 && aligned16(out);
    const int vec = vec4 ? 4 : 1;
    const int nvec = d / vec;
    auto threads_for = [&](int nv) {
        const int th = (nvec + nv - 1) / nv;
        return std::max(128, (th + 31) / 32 * 32);
    };
    const dim3 grid(n);
#define BLLAMA_NORM_LAUNCH(V, NV)                                                                        \
    norm_rows_kernel<V, NV, QUANT><<<grid, threads_for(NV), 0, stream>>>(x, ldx, w, d, eps, out, ldo, q, \
                                                                          scale, row_sum, cols)
    // Both cached variants hold up to 16 floats per thread (64 registers at most at 1024 threads).
    if (vec4 && nvec <= 4 * 1024) BLLAMA_NORM_LAUNCH(4, 4);
    else if (!vec4 && nvec <= 16 * 1024) BLLAMA_NORM_LAUNCH(1, 16);
    else
        norm_rows_long_kernel<QUANT><<<grid, 1024, 0, stream>>>(x, ldx, w, d, eps, out, ldo, q, scale, row_sum, cols);
#undef BLLAMA_NORM_LAUNCH
    CUDA_CHECK_LAUNCH();
}

}  // namespace

void embed(const __half* table, int dim, const int32_t* tokens, int n, float* x, cudaStream_t stream) {
    if (n <= 0) return;
    const bool vec8 = dim % 8 == 0 && aligned16(table) && aligned16(x);
    const int threads = std::min(256, std::max(32, ((vec8 ? dim / 8 : dim) + 31) / 32 * 32));
    if (vec8) embed_kernel<true><<<n, threads, 0, stream>>>(table, dim, tokens, x);
    else embed_kernel<false><<<n, threads, 0, stream>>>(table, dim, tokens, x);
    CUDA_CHECK_LAUNCH();
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

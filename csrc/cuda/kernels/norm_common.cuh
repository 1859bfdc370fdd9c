// The arithmetic of the BitLinear input (RMSNorm + per-row int8 quantization) that rmsnorm_quant and
// rmsnorm (norm_quant.cu) share, so that their results do not depend on the block shape a kernel picks
// (tests/cuda/test_ops.cu checks the order against a host model of it).
//
// Every float operation is an explicit _rn intrinsic or fmaf (nvcc would otherwise contract a * b + c).
//
// The sum of squares is added in one canonical order that depends only on d, not on the block shape:
//   groups:  group v holds elements 4v .. 4v+3 (zero past d); s_v = fma(x3, x3, fma(x2, x2, fma(x1, x1, x0*x0)));
//   chunks:  chunk k holds groups 32k .. 32k+31 (128 elements); c_k = the warp butterfly (xor 16, 8, 4, 2, 1)
//            of s_{32k + lane} (warp_sum_xor: every lane ends with the same bits);
//   lanes:   p_l = ((c_l + c_{l+32}) + c_{l+64}) + ...  for k < K = ceil(d / 128);
//   total:   ss = the warp butterfly of p_l.
// A kernel may give the chunks to its warps in any way: a chunk is always reduced by one whole warp, and
// only the chunk sums cross warps (through shared memory: lane_sums_total), or a block of exactly 32 warps
// lets warp w add its own chunks w, w + 32, ... into p_w (norm_rows_long_kernel).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace bllama {
namespace cuda {
namespace detail {

constexpr int kNormGroup = 4;                       // elements per group
constexpr int kNormChunk = 32 * kNormGroup;         // elements per chunk

__device__ __forceinline__ float sumsq_group(const float (&e)[kNormGroup]) {
    return fmaf(e[3], e[3], fmaf(e[2], e[2], fmaf(e[1], e[1], __fmul_rn(e[0], e[0]))));
}

// Butterfly sum over the warp; every lane gets the same value (a + b == b + a at each step).
__device__ __forceinline__ float warp_sum_xor(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Max and integer sum over the warp (order-independent: exact), every lane gets the result.
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ int warp_sum_int(int v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// The canonical total from the K chunk sums c[0 .. K) (shared memory); called by a whole warp, every lane
// gets the total.
__device__ __forceinline__ float lane_sums_total(const float* c, int K, int lane) {
    float p = 0.0f;
    for (int k = lane; k < K; k += 32) p = __fadd_rn(p, c[k]);
    return warp_sum_xor(p);
}

// 1 / sqrtf(mean(x^2) + eps) with the CPU's roundings: ss / d, + eps, sqrt, reciprocal (all IEEE).
__device__ __forceinline__ float rms_factor(float ss, int d, float eps) {
    return __frcp_rn(__fsqrt_rn(__fadd_rn(__fdiv_rn(ss, static_cast<float>(d)), eps)));
}

// xn = (x * r) * w, two roundings as on the CPU.
__device__ __forceinline__ float norm_value(float x, float r, float w) { return __fmul_rn(__fmul_rn(x, r), w); }

// The quantizer of csrc/kernels (quantize_acts): a = (1.0f / max(absmax, 1e-5f)) * 127.0f, then
// q = clamp(rint(xn * a), -128, 127) (nearbyint in the default mode rounds half to even, as __float2int_rn).
// absmax is order-independent (exact), so any reduction of it gives the same a.
__device__ __forceinline__ float quant_scale(float absmax) {
    return __fmul_rn(__frcp_rn(fmaxf(absmax, 1e-5f)), 127.0f);
}
__device__ __forceinline__ int quant_code(float xn, float a) {
    return min(127, max(-128, __float2int_rn(__fmul_rn(xn, a))));
}

// Group g of a row of d floats (zeros past d). VEC4: d % 4 == 0 and the row 16-byte aligned.
template <bool VEC4>
__device__ __forceinline__ void load_group(const float* __restrict__ row, int g, int d, float (&e)[kNormGroup]) {
    const int k0 = g * kNormGroup;
    if (VEC4) {
        if (k0 < d) {
            const float4 f = __ldg(reinterpret_cast<const float4*>(row + k0));
            e[0] = f.x, e[1] = f.y, e[2] = f.z, e[3] = f.w;
        } else {
            e[0] = e[1] = e[2] = e[3] = 0.0f;
        }
    } else {
#pragma unroll
        for (int c = 0; c < kNormGroup; ++c) e[c] = k0 + c < d ? __ldg(row + k0 + c) : 0.0f;
    }
}

}  // namespace detail
}  // namespace cuda
}  // namespace bllama

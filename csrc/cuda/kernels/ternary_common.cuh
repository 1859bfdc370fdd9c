// What the three ternary matmul paths (gemv_ternary.cu, gemm_ternary_mma.cu, gemm_cublaslt.cu) share:
// argument checks, cached device properties, and the BitLinear epilogue, so that all of them round
// exactly like the CPU engine (csrc/cpu/forward.cpp):
//   v = ((float)acc * (seg_scale / act_scale)) * seg_out_scale
// then Store (y = v), AddTo (y = y + v), or a GLU of a gate and an up value. Every float operation is an
// explicit _rn intrinsic: nvcc contracts a * b + c into an FMA by default, which would round once where
// the CPU rounds twice. The division is IEEE (no fast math) like the CPU's.
#pragma once

#include "cuda/kernels/cuda_util.cuh"
#include "cuda/kernels/kernels.cuh"

namespace bllama {
namespace cuda {
namespace detail {

// Scale and output scale of the segment holding row r. Only compile-time indices into the arrays: a
// run-time index into a kernel parameter can make the compiler copy it to local memory.
struct SegScale {
    float scale, out_scale;
};
__device__ __forceinline__ SegScale segment_scales(const DevTernary& w, int r) {
    SegScale s{w.seg_scale[0], w.seg_out_scale[0]};
#pragma unroll
    for (int i = 1; i < kMaxSegments; ++i)
        if (i < w.n_seg && r >= w.seg_end[i - 1]) s = SegScale{w.seg_scale[i], w.seg_out_scale[i]};
    return s;
}

// acc is the exact integer dot product sum_k q[r,k] x[t,k] (the row-sum correction already applied).
__device__ __forceinline__ float bitlinear_value(int32_t acc, SegScale s, float act_scale) {
    const float ratio = __fdiv_rn(s.scale, act_scale);
    return __fmul_rn(__fmul_rn(__int2float_rn(acc), ratio), s.out_scale);
}

// silu(z) = z / (1 + expf(-z)); expf is the full-precision one (within 2 ulp of the host's).
__device__ __forceinline__ float glu_value(Epilogue ep, float gate, float up) {
    const float a = ep == Epilogue::GluSilu ? __fdiv_rn(gate, __fadd_rn(1.0f, expf(-gate)))
                                            : (gate > 0.0f ? __fmul_rn(gate, gate) : 0.0f);
    return __fmul_rn(a, up);
}

// Store or AddTo of one finished value (not for the GLU modes).
__device__ __forceinline__ void store_value(Epilogue ep, float* p, float v) {
    if (ep == Epilogue::AddTo) *p = __fadd_rn(*p, v);
    else *p = v;
}

__host__ __device__ constexpr bool is_glu(Epilogue ep) {
    return ep == Epilogue::GluSilu || ep == Epilogue::GluRelu2;
}

}  // namespace detail

// Host-side argument checks shared by the launchers (throw std::invalid_argument with `who` in the text):
// shapes, segments (the GLU modes need exactly two of R rows each), ldy, null and misaligned pointers.
// Returns the number of output rows: w.rows, or R = w.rows / 2 for the GLU modes.
int check_ternary_args(const char* who, const DevTernary& w, const DevActs& x, int n_tokens, const float* y,
                       int ldy, Epilogue ep);

namespace detail {
// ternary_gemm_mma with its tile shape forced (benchmarks and tests; Auto is what ternary_gemm_mma does):
// Large = 128 rows x 128 tokens per block (8 warps), Small = 64 x 64 (4 warps).
enum class MmaTile { Auto, Large, Small };
void ternary_gemm_mma_tile(const DevTernary& w, const DevActs& x, int n_tokens, float* y, int ldy, Epilogue ep,
                           cudaStream_t stream, MmaTile tile);
}  // namespace detail

// Properties of the current device that the launchers size their grids with (read once per device).
struct DeviceLimits {
    int sms = 0;              // multiprocessors
    int smem_per_sm = 0;      // shared memory per multiprocessor, bytes
    int smem_block_optin = 0; // the most dynamic shared memory one block may be given (after opting in)
};
const DeviceLimits& device_limits();

// Lets `kernel` be launched with `bytes` of dynamic shared memory: above 48 KiB a kernel must opt in.
// A host-only call, legal while a stream is being captured into a graph.
inline void allow_dynamic_smem(const void* kernel, int bytes) {
    if (bytes > 48 * 1024)
        CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
}

}  // namespace cuda
}  // namespace bllama

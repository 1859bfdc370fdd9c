// Decode GEMV: y = W x for 1..8 tokens, W ternary in the ternary_rows.h layout, x int8.
//
// Decode is a stream over the weights (2 bits each), so the kernel is built to keep the memory system
// busy and to touch each weight byte once:
// - A warp owns a "unit" of NR rows (GLU: NR/2 gate rows and their NR/2 up rows, so one lane ends up
//   holding both halves of an output). Each lane reads 16-byte words (64 columns) of each row, 32 lanes
//   side by side (512 contiguous bytes per row and load), S loads per row: NR * S independent 16-byte
//   loads in flight per lane before the first use (NR * S = 8 for short rows; see pick_nr).
// - The codes are unpacked in registers: (word >> 2j) & 0x03030303 gives the unsigned codes (0..2) of 4
//   consecutive columns, multiplied against 4 int8 activations by one dp4a. The codes are < 128, so the
//   signed dp4a computes the unsigned-by-signed product exactly; the row sum of the activations turns
//   sum u*x into sum q*x at the end.
// - The block's activations (n_tokens * cols bytes) are staged once in shared memory, swizzled so that
//   the lanes' 16-byte reads (lane l wants columns 64l..64l+63) hit 8 different bank groups.
// - One reduce-scatter over the warp (about V shuffles for V partial sums instead of 5V) leaves each
//   (row, token) sum in its own lane, which applies the epilogue.
// - Warps loop over units (grid-stride) and prefetch the next unit's words before the epilogue of this
//   one; the first unit's words are requested before the activations are staged, hiding that latency.
//
// ternary_gemv_normed is the same kernel with another staging step (Src = NormSrc): every block computes
// the RMSNorm + int8 quantization of the float input rows itself (norm_common.cuh, bit-identical to
// rmsnorm_quant) while its first weight words are in flight, and writes the codes straight into its
// shared-memory activations; scale and row sum stay in registers. Three steps (sum of squares, absmax,
// codes), one barrier each; at one or two tokens the rows are held in registers (read once), otherwise
// each step re-reads them (from L1). Its grid is sized for the redundant float reads (every block reads
// the whole input): on an H200 that broadcast makes it a win at one token only (bench/NOTES-cuda.md).
//
// PDL (launch.cuh): the first weight words (constant) are requested before pdl_wait() (with prefetch_l2, the
// whole matrix is asked of L2 as well); everything that touches the activations, their scales or y comes after it.
#include <algorithm>
#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "cuda/cuda_util.cuh"
#include "cuda/kernels.cuh"
#include "cuda/launch.cuh"
#include "cuda/norm_common.cuh"
#include "cuda/norm_tail.cuh"
#include "cuda/ternary_common.cuh"

namespace bllama {
namespace cuda {

// ---------------------------------------------------------------------------------------------------
// Shared host helpers (declared in ternary_common.cuh)

int check_ternary_matrix(const char* who, const DevTernary& w, int n_tokens, const float* y, int ldy, Epilogue ep) {
    auto fail = [&](const std::string& why) { throw std::invalid_argument(std::string(who) + ": " + why); };
    if (n_tokens < 0) fail("negative n_tokens");
    if (w.rows <= 0 || w.cols <= 0 || w.cols % 256 != 0)
        fail("need rows > 0 and cols a positive multiple of 256, got " + std::to_string(w.rows) + " x " +
             std::to_string(w.cols));
    if (w.n_seg < 1 || w.n_seg > kMaxSegments) fail("n_seg must be 1.." + std::to_string(kMaxSegments));
    for (int i = 0; i < w.n_seg; ++i)
        if (w.seg_end[i] < (i ? w.seg_end[i - 1] : 0)) fail("segment ends must not decrease");
    if (w.seg_end[w.n_seg - 1] != w.rows) fail("the last segment must end at rows");
    const int out_rows = detail::is_glu(ep) ? w.rows / 2 : w.rows;
    if (detail::is_glu(ep) && (w.n_seg != 2 || w.rows % 2 != 0 || w.seg_end[0] != out_rows))
        fail("the GLU epilogues need two segments of R rows each (gate | up)");
    if (static_cast<int>(ep) < 0 || static_cast<int>(ep) > 3) fail("unknown epilogue");
    if (ldy < out_rows) fail("ldy " + std::to_string(ldy) + " < output rows " + std::to_string(out_rows));
    if (n_tokens == 0) return out_rows;
    if (!w.words || !y) fail("null pointer");
    if (reinterpret_cast<uintptr_t>(w.words) % 16) fail("weights must be 16-byte aligned");
    return out_rows;
}

int check_ternary_args(const char* who, const DevTernary& w, const DevActs& x, int n_tokens, const float* y,
                       int ldy, Epilogue ep) {
    auto fail = [&](const std::string& why) { throw std::invalid_argument(std::string(who) + ": " + why); };
    if (x.cols != w.cols)
        fail("activation length " + std::to_string(x.cols) + " != matrix cols " + std::to_string(w.cols));
    const int out_rows = check_ternary_matrix(who, w, n_tokens, y, ldy, ep);
    if (n_tokens == 0) return out_rows;
    if (!x.q || !x.scale || !x.row_sum) fail("null pointer");
    if (reinterpret_cast<uintptr_t>(x.q) % 16) fail("weights and activations must be 16-byte aligned");
    return out_rows;
}

const DeviceLimits& device_limits() {
    constexpr int kMaxDevices = 64;
    static DeviceLimits limits[kMaxDevices];
    static std::once_flag once[kMaxDevices];
    int dev = 0;
    CUDA_CHECK(cudaGetDevice(&dev));
    if (dev < 0 || dev >= kMaxDevices) throw std::runtime_error("device_limits: device index out of range");
    std::call_once(once[dev], [dev] {
        DeviceLimits& l = limits[dev];
        CUDA_CHECK(cudaDeviceGetAttribute(&l.sms, cudaDevAttrMultiProcessorCount, dev));
        CUDA_CHECK(cudaDeviceGetAttribute(&l.smem_per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev));
        CUDA_CHECK(cudaDeviceGetAttribute(&l.smem_block_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    });
    return limits[dev];
}

namespace {

constexpr int kBlockThreadsMax = 256;

constexpr int next_pow2(int v) { return v <= 1 ? 1 : 2 * next_pow2((v + 1) / 2); }

// Rows per unit for NT tokens and S 16-byte loads per row and lane: 8 loads in flight per lane, and at
// most 32 partial sums (NR * next_pow2(NT)) for the reduce-scatter.
constexpr int pick_nr(int nt, int s) { return s == 1 ? (nt <= 4 ? 8 : 4) : s == 2 ? 4 : 2; }

__device__ __forceinline__ uint32_t part(const uint4& v, int i) {
    return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// Where the activations' 16-byte chunk c lives in shared memory. Lane l reads chunks 4l..4l+3 (one at a
// time, i fixed); 8 lanes (one shared-memory wavefront of 16-byte reads) then cover chunk indices
// 32p + 4l' + i, l' < 8. XOR-ing the two low bits with bits 3..4 spreads those over 8 different 16-byte
// bank groups; it only permutes within aligned groups of 4, so a row stays within its own range.
__device__ __forceinline__ int act_slot(int c) { return c ^ ((c >> 3) & 3); }

// One reduce-scatter step over HALF * 2 values: lanes with bit `OFF` set keep the upper half of the
// values, the others the lower half, each adding the half its partner gives away (HALF shuffles).
// Recursion instead of a loop: every array index must be a compile-time constant (a run-time index
// would put the array in local memory), and the compiler does not fully unroll a loop of halving length.
template <int HALF, int OFF, int V>
__device__ __forceinline__ void scatter_steps(int (&v)[V], int lane, int& idx) {
    if constexpr (HALF >= 1) {
        const bool upper = (lane & OFF) != 0;
#pragma unroll
        for (int k = 0; k < HALF; ++k) {
            const int send = upper ? v[k] : v[k + HALF];
            const int keep = upper ? v[k + HALF] : v[k];
            v[k] = keep + __shfl_xor_sync(0xffffffffu, send, OFF);
        }
        if (upper) idx += HALF;
        scatter_steps<HALF / 2, OFF / 2>(v, lane, idx);
    }
}

// Sum of v[i] over the warp for V = 2^m values at once: m reduce-scatter steps (V/2 + V/4 + ... + 1
// shuffles), then the plain butterfly over the lane bits below 32/V. Returns in every lane the full sum
// of value `idx`; lanes that differ only in bits below 32/V hold the same value.
template <int V>
__device__ __forceinline__ int reduce_scatter(int (&v)[V], int lane, int& idx) {
    static_assert(V >= 1 && V <= 32 && (V & (V - 1)) == 0, "V must be a power of two <= 32");
    idx = 0;
    scatter_steps<V / 2, 16>(v, lane, idx);
    int s = v[0];
#pragma unroll
    for (int off = 16 / V; off >= 1; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    return s;
}

// ---------------------------------------------------------------------------------------------------
// ternary_gemv_normed's staging: RMSNorm + quantization of the float rows inside each block.

// The float input of ternary_gemv_normed (one launch's tokens).
struct NormSrc {
    const float* x;  // [NT, ldx]
    int ldx;
    const float* w;  // [d] norm weights, or null: no norm (quantization only)
    int d;           // 1 <= d <= cols
    float eps;
    bool vec4;       // d % 4 == 0, ldx % 4 == 0, x and w 16-byte aligned: 16-byte loads
};

constexpr int kMaxWarps = kBlockThreadsMax / 32;

// Shared memory of the normed kernel: the NT * cols activation bytes, then the chunk sums of squares
// [NT][cols / 128] floats, then per-warp absmax [NT][kMaxWarps] floats and row sums [NT][kMaxWarps] ints.
constexpr int normed_smem_bytes(int nt, int cols) {
    return nt * cols + nt * (cols / detail::kNormChunk) * 4 + nt * kMaxWarps * 8;
}

template <int N, class T>
__device__ __forceinline__ T pick(const T (&a)[N], int i) {  // a[i] with only compile-time indices
    T v = a[0];
#pragma unroll
    for (int k = 1; k < N; ++k)
        if (i == k) v = a[k];
    return v;
}

__device__ __forceinline__ void load_norm_group(const NormSrc& x, const float* row, int g, float (&e)[detail::kNormGroup]) {
    if (x.vec4) detail::load_group<true>(row, g, x.d, e);
    else detail::load_group<false>(row, g, x.d, e);
}

// xn of the group's 4 elements (0 past d: x and w are 0 there).
__device__ __forceinline__ float normed(const NormSrc& x, float e, float r, float w) {
    return x.w ? detail::norm_value(e, r, w) : e;
}

// Both stagings below write the block's activations exactly as rmsnorm_quant + the unfused staging would:
// the codes of token t at s_act[t * cols / 16 + act_slot(c)] (16-byte chunks c, zeros past d), and each
// token's scale and row sum into scale[t], row_sum[t] of every thread. They execute pdl_wait() after their
// norm-weight loads (constant) and end with a barrier. Warp w takes the 128-element chunks w, w + W, ...
// (lane l: group 32k + l of chunk k); three barriers: after the chunk sums of squares, after the per-warp
// absmax, after the codes and per-warp row sums.

// The rows held in registers (when every warp has at most CAP chunks of the stored row): the norm weights
// are loaded before pdl_wait(), x once after it; no re-reads.
template <int NT, int CAP>
__device__ __forceinline__ void stage_normed_cached(const NormSrc& x, int cols, uint4* s_act, float (&scale)[NT],
                                                    int (&row_sum)[NT]) {
    using namespace detail;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, W = blockDim.x >> 5;
    const int Kc = cols / kNormChunk;                   // chunks of the stored row (Kc <= CAP * W)
    const int K = (x.d + kNormChunk - 1) / kNormChunk;  // chunks with data
    const int a16 = cols >> 4;
    float* s_chunk = reinterpret_cast<float*>(reinterpret_cast<int8_t*>(s_act) + NT * cols);  // [NT][Kc]
    float* s_max = s_chunk + NT * Kc;                                                           // [NT][kMaxWarps]
    int* s_sum = reinterpret_cast<int*>(s_max + NT * kMaxWarps);                                // [NT][kMaxWarps]
    uint32_t* s_words = reinterpret_cast<uint32_t*>(s_act);

    float wv[CAP][kNormGroup];  // zeros past d (and for chunks past Kc)
    if (x.w) {
#pragma unroll
        for (int i = 0; i < CAP; ++i) load_norm_group(x, x.w, 32 * (warp + i * W) + lane, wv[i]);
    }
    pdl_wait();
    float e[CAP][NT][kNormGroup];
#pragma unroll
    for (int i = 0; i < CAP; ++i)
#pragma unroll
        for (int t = 0; t < NT; ++t) load_norm_group(x, x.x + static_cast<int64_t>(t) * x.ldx, 32 * (warp + i * W) + lane, e[i][t]);

    // 1. Chunk sums of squares (canonical order, norm_common.cuh).
    if (x.w) {
#pragma unroll
        for (int i = 0; i < CAP; ++i) {
            const int k = warp + i * W;
            if (k >= K) continue;  // warp-uniform
#pragma unroll
            for (int t = 0; t < NT; ++t) {
                const float c = warp_sum_xor(sumsq_group(e[i][t]));
                if (lane == 0) s_chunk[t * Kc + k] = c;
            }
        }
    }
    __syncthreads();

    // 2. xn in place, and its absmax.
    float amax[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) {
        const float r = x.w ? rms_factor(lane_sums_total(s_chunk + t * Kc, K, lane), x.d, x.eps) : 1.0f;
        amax[t] = 0.0f;
#pragma unroll
        for (int i = 0; i < CAP; ++i)
#pragma unroll
            for (int c = 0; c < kNormGroup; ++c) {
                e[i][t][c] = normed(x, e[i][t][c], r, x.w ? wv[i][c] : 0.0f);
                amax[t] = fmaxf(amax[t], fabsf(e[i][t][c]));
            }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) amax[t] = fmaxf(amax[t], __shfl_xor_sync(0xffffffffu, amax[t], o));
        if (lane == 0) s_max[t * kMaxWarps + warp] = amax[t];
    }
    __syncthreads();

    // 3. The codes of every chunk of the stored row (zeros past d), 4 per 32-bit shared-memory word.
#pragma unroll
    for (int t = 0; t < NT; ++t) {
        float m = 0.0f;
        for (int i = 0; i < W; ++i) m = fmaxf(m, s_max[t * kMaxWarps + i]);
        const float a = quant_scale(m);
        scale[t] = a;
        int sum = 0;
#pragma unroll
        for (int i = 0; i < CAP; ++i) {
            const int k = warp + i * W;
            if (k >= Kc) continue;
            uint32_t packed = 0;
#pragma unroll
            for (int c = 0; c < kNormGroup; ++c) {
                const int q = quant_code(e[i][t][c], a);
                sum += q;
                packed |= (static_cast<uint32_t>(q) & 0xffu) << (8 * c);
            }
            const int g = 32 * k + lane;  // bytes 4 (g & 3) .. +3 of the 16-byte activation chunk g / 4
            s_words[(t * a16 + act_slot(g >> 2)) * 4 + (g & 3)] = packed;
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
        if (lane == 0) s_sum[t * kMaxWarps + warp] = sum;
    }
    __syncthreads();  // also publishes the codes
#pragma unroll
    for (int t = 0; t < NT; ++t) {
        int total = 0;
        for (int i = 0; i < W; ++i) total += s_sum[t * kMaxWarps + i];
        row_sum[t] = total;
    }
}

// Any row length: three passes over the rows, each batched so several loads per lane are in flight (pass 1
// reads x from L2; passes 2 and 3 re-read it from L1 together with the norm weights, prefetched into L1
// before pdl_wait(); fewer chunks per step there keep the registers in check).
template <int NT>
__device__ __forceinline__ void stage_normed_streamed(const NormSrc& x, int cols, uint4* s_act, float (&scale)[NT],
                                                      int (&row_sum)[NT]) {
    using namespace detail;
    constexpr int U1 = NT >= 8 ? 1 : 8 / NT;
    constexpr int U = NT >= 4 ? 1 : 4 / NT;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, W = blockDim.x >> 5;
    const int Kc = cols / kNormChunk;                  // chunks of the stored row
    const int K = (x.d + kNormChunk - 1) / kNormChunk;  // chunks with data
    const int a16 = cols >> 4;
    float* s_chunk = reinterpret_cast<float*>(reinterpret_cast<int8_t*>(s_act) + NT * cols);  // [NT][Kc]
    float* s_max = s_chunk + NT * Kc;                                                           // [NT][kMaxWarps]
    int* s_sum = reinterpret_cast<int*>(s_max + NT * kMaxWarps);                                // [NT][kMaxWarps]
    uint32_t* s_words = reinterpret_cast<uint32_t*>(s_act);

    // The norm weights are constant: into L1 before waiting for the kernel that wrote x.
    if (x.w)
        for (int k = warp; k < K; k += W)
            if ((32 * k + lane) * kNormGroup < x.d) prefetch_l1(x.w + (32 * k + lane) * kNormGroup);
    pdl_wait();

    auto row = [&](int t) { return x.x + static_cast<int64_t>(t) * x.ldx; };

    // 1. Chunk sums of squares (canonical order, norm_common.cuh).
    if (x.w) {
        for (int k0 = warp; k0 < K; k0 += U1 * W) {
            float e[U1][NT][kNormGroup];
#pragma unroll
            for (int u = 0; u < U1; ++u)
#pragma unroll
                for (int t = 0; t < NT; ++t) load_norm_group(x, row(t), 32 * (k0 + u * W) + lane, e[u][t]);
#pragma unroll
            for (int u = 0; u < U1; ++u) {
                if (k0 + u * W >= K) continue;  // warp-uniform
#pragma unroll
                for (int t = 0; t < NT; ++t) {
                    const float c = warp_sum_xor(sumsq_group(e[u][t]));
                    if (lane == 0) s_chunk[t * Kc + k0 + u * W] = c;
                }
            }
        }
    }
    __syncthreads();
    float r[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) r[t] = x.w ? rms_factor(lane_sums_total(s_chunk + t * Kc, K, lane), x.d, x.eps) : 1.0f;

    // 2. absmax of xn.
    float amax[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) amax[t] = 0.0f;
    for (int k0 = warp; k0 < K; k0 += U * W) {
        float e[U][NT][kNormGroup], wv[U][kNormGroup];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int g = 32 * (k0 + u * W) + lane;
            if (x.w) load_norm_group(x, x.w, g, wv[u]);
#pragma unroll
            for (int t = 0; t < NT; ++t) load_norm_group(x, row(t), g, e[u][t]);
        }
#pragma unroll
        for (int u = 0; u < U; ++u)
#pragma unroll
            for (int t = 0; t < NT; ++t)
#pragma unroll
                for (int c = 0; c < kNormGroup; ++c)
                    amax[t] = fmaxf(amax[t], fabsf(normed(x, e[u][t][c], r[t], x.w ? wv[u][c] : 0.0f)));
    }
#pragma unroll
    for (int t = 0; t < NT; ++t) {
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) amax[t] = fmaxf(amax[t], __shfl_xor_sync(0xffffffffu, amax[t], o));
        if (lane == 0) s_max[t * kMaxWarps + warp] = amax[t];
    }
    __syncthreads();
    float a[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) {
        float m = 0.0f;
        for (int i = 0; i < W; ++i) m = fmaxf(m, s_max[t * kMaxWarps + i]);
        a[t] = quant_scale(m);
    }

    // 3. The codes of every chunk of the stored row (zeros past d), 4 per 32-bit shared-memory word.
    int sum[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) sum[t] = 0;
    for (int k0 = warp; k0 < Kc; k0 += U * W) {
        float e[U][NT][kNormGroup], wv[U][kNormGroup];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int g = 32 * (k0 + u * W) + lane;
            if (x.w) load_norm_group(x, x.w, g, wv[u]);
#pragma unroll
            for (int t = 0; t < NT; ++t) load_norm_group(x, row(t), g, e[u][t]);
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            if (k0 + u * W >= Kc) continue;
            const int g = 32 * (k0 + u * W) + lane;
#pragma unroll
            for (int t = 0; t < NT; ++t) {
                uint32_t packed = 0;
#pragma unroll
                for (int c = 0; c < kNormGroup; ++c) {
                    const int q = quant_code(normed(x, e[u][t][c], r[t], x.w ? wv[u][c] : 0.0f), a[t]);
                    sum[t] += q;
                    packed |= (static_cast<uint32_t>(q) & 0xffu) << (8 * c);
                }
                // Group g: bytes 4 (g & 3) .. +3 of the 16-byte activation chunk g / 4.
                s_words[(t * a16 + act_slot(g >> 2)) * 4 + (g & 3)] = packed;
            }
        }
    }
#pragma unroll
    for (int t = 0; t < NT; ++t) {
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) sum[t] += __shfl_xor_sync(0xffffffffu, sum[t], o);
        if (lane == 0) s_sum[t * kMaxWarps + warp] = sum[t];
    }
    __syncthreads();  // also publishes the codes
#pragma unroll
    for (int t = 0; t < NT; ++t) {
        int total = 0;
        for (int i = 0; i < W; ++i) total += s_sum[t * kMaxWarps + i];
        row_sum[t] = total;
        scale[t] = a[t];
    }
}

// In registers at one or two tokens: 8 (4) groups per lane and token, 32 floats (every 1.7B / 2B-4T row at one
// token with the launcher's warp counts); longer rows and more tokens (where both stagings in one kernel
// would spill) take the streamed staging.
template <int NT>
__device__ __forceinline__ void stage_normed(const NormSrc& x, int cols, uint4* s_act, float (&scale)[NT],
                                             int (&row_sum)[NT]) {
    if constexpr (NT <= 2) {
        constexpr int CAP = 8 / NT;
        if (cols / detail::kNormChunk <= CAP * static_cast<int>(blockDim.x >> 5)) {
            stage_normed_cached<NT, CAP>(x, cols, s_act, scale, row_sum);
            return;
        }
    }
    stage_normed_streamed<NT>(x, cols, s_act, scale, row_sum);
}

// NT tokens (compile time: the accumulators live in registers), NR rows per unit, S loads per row and
// lane per chunk (one chunk = 32 * S * 16 bytes of a row; rows longer than that take several chunks).
// Src: DevActs (ternary_gemv: int8 activations from rmsnorm_quant) or NormSrc (ternary_gemv_normed).
// TAIL (ternary_gemv_tail): the last block to finish then computes the next BitLinear's input (norm_tail.cuh).
template <int NT, int NR, int S, class Src, bool TAIL>
__global__ void __launch_bounds__(kBlockThreadsMax)
    ternary_gemv_kernel(DevTernary w, Src x, float* __restrict__ y, int ldy, Epilogue ep, int n_units,
                        bool prefetch_all, NormTail tail) {
    constexpr bool kNormed = std::is_same<Src, NormSrc>::value;
    constexpr int NTP = next_pow2(NT);
    constexpr int V = NR * NTP;       // partial sums per lane, value index p * NTP + t
    constexpr int TG = NT <= 4 ? NT : 2;  // tokens whose activations are held in registers at once
    constexpr int kChunk = 32 * S;    // 16-byte words per row and chunk
    static_assert(V <= 32 && NR % 2 == 0, "unit shape");
    extern __shared__ uint4 s_act[];  // [NT][cols / 16], chunks permuted by act_slot
    pdl_trigger();

    const bool glu = detail::is_glu(ep);
    const int lane = threadIdx.x & 31;
    const int warps = blockDim.x >> 5;
    const int n16 = w.cols >> 6;  // 16-byte words per weight row
    const int a16 = w.cols >> 4;  // 16-byte chunks per activation row
    const int out_rows = glu ? w.rows >> 1 : w.rows;
    const int n_chunks = (n16 + kChunk - 1) / kChunk;
    const uint4* __restrict__ words = reinterpret_cast<const uint4*>(w.words);

    // Weight row of slot p of unit u, or -1 past the end. GLU: slots [0, NR/2) are gate rows, slot
    // p + NR/2 is the up row of slot p's gate row.
    auto slot_row = [&](int u, int p) -> int {
        if (glu) {
            const int g = u * (NR / 2) + p % (NR / 2);
            return g < out_rows ? g + (p >= NR / 2 ? out_rows : 0) : -1;
        }
        const int r = u * NR + p;
        return r < out_rows ? r : -1;
    };

    uint4 wv[NR][S];
    auto load = [&](int u, int chunk) {
#pragma unroll
        for (int p = 0; p < NR; ++p) {
            const int r = slot_row(u, p);
            const uint4* row = words + static_cast<size_t>(r < 0 ? 0 : r) * n16;
#pragma unroll
            for (int s = 0; s < S; ++s) {
                const int k = chunk * kChunk + s * 32 + lane;
                wv[p][s] = (r >= 0 && k < n16) ? __ldg(row + k) : make_uint4(0, 0, 0, 0);
            }
        }
    };

    int unit = blockIdx.x * warps + (threadIdx.x >> 5);
    const int unit_stride = gridDim.x * warps;
    if (unit < n_units) load(unit, 0);  // in flight while the activations are staged
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900  // PDL only: elsewhere nothing runs ahead of the wait
    if (prefetch_all) {  // the rest of the matrix into L2, this block's slice, before waiting (launch.cuh)
        const char* base = reinterpret_cast<const char*>(w.words);
        const size_t bytes = static_cast<size_t>(w.rows) * static_cast<size_t>(w.cols / 4);
        const size_t slice = (bytes + gridDim.x - 1) / gridDim.x;
        const size_t stop = (blockIdx.x + 1) * slice, end = stop < bytes ? stop : bytes;
        for (size_t off = blockIdx.x * slice + threadIdx.x * 128; off < end; off += static_cast<size_t>(blockDim.x) * 128)
            prefetch_l2(base + off);
    }
#endif

    float act_scale[NT];  // ternary_gemv_normed: each token's scale and row sum
    int act_sum[NT];
    if constexpr (kNormed) {
        stage_normed<NT>(x, w.cols, s_act, act_scale, act_sum);
    } else {
        pdl_wait();
        const uint4* xq = reinterpret_cast<const uint4*>(x.q);
        // TAIL: the last block may write these bytes later in this launch (ternary_gemv_tail over its own input),
        // so not through the read-only path.
#pragma unroll
        for (int t = 0; t < NT; ++t)
            for (int c = threadIdx.x; c < a16; c += blockDim.x)
                s_act[t * a16 + act_slot(c)] = TAIL ? __ldcg(xq + static_cast<size_t>(t) * a16 + c)
                                                    : __ldg(xq + static_cast<size_t>(t) * a16 + c);
        __syncthreads();
    }

    for (; unit < n_units; unit += unit_stride) {
        int acc[NR][NTP];
#pragma unroll
        for (int p = 0; p < NR; ++p)
#pragma unroll
            for (int t = 0; t < NTP; ++t) acc[p][t] = 0;

        for (int chunk = 0;;) {
#pragma unroll
            for (int s = 0; s < S; ++s) {
                const int k = chunk * kChunk + s * 32 + lane;  // this lane's 16-byte word of every row
                if (k >= n16) continue;                        // only the last chunk has a ragged end
#pragma unroll
                for (int t0 = 0; t0 < NT; t0 += TG) {
                    uint4 a[TG][4];  // the 64 activations of columns 64k..64k+63, per token
#pragma unroll
                    for (int tt = 0; tt < TG; ++tt)
#pragma unroll
                        for (int i = 0; i < 4; ++i)
                            if (t0 + tt < NT) a[tt][i] = s_act[(t0 + tt) * a16 + act_slot(4 * k + i)];
#pragma unroll
                    for (int p = 0; p < NR; ++p)
#pragma unroll
                        for (int i = 0; i < 4; ++i) {
                            const uint32_t word = part(wv[p][s], i);  // columns 64k + 16i .. +15
#pragma unroll
                            for (int j = 0; j < 4; ++j) {
                                const int codes = static_cast<int>((word >> (2 * j)) & 0x03030303u);
#pragma unroll
                                for (int tt = 0; tt < TG; ++tt)
                                    if (t0 + tt < NT)
                                        acc[p][t0 + tt] = __dp4a(codes, static_cast<int>(part(a[tt][i], j)),
                                                                 acc[p][t0 + tt]);
                            }
                        }
                }
            }
            if (++chunk >= n_chunks) break;
            load(unit, chunk);
        }
        if (unit + unit_stride < n_units) load(unit + unit_stride, 0);  // overlaps the epilogue below

        int v[V];
#pragma unroll
        for (int p = 0; p < NR; ++p)
#pragma unroll
            for (int t = 0; t < NTP; ++t) v[p * NTP + t] = acc[p][t];
        int idx;
        const int sum = reduce_scatter<V>(v, lane, idx);
        const int p = idx / NTP, t = idx % NTP;
        const int r = slot_row(unit, p);
        const bool valid = t < NT && r >= 0;
        float val = 0.0f;
        if (valid) {
            int32_t rs;
            float sc;
            if constexpr (kNormed) {
                rs = pick(act_sum, t);
                sc = pick(act_scale, t);
            } else {
                rs = x.row_sum[t];
                sc = x.scale[t];
            }
            val = detail::bitlinear_value(sum - rs, detail::segment_scales(w, r), sc);
        }
        const bool leader = (lane & (32 / V - 1)) == 0;  // one lane per value
        if (!glu) {
            if (leader && valid) detail::store_value(ep, y + static_cast<size_t>(t) * ldy + r, val);
        } else {
            // Value idx + V/2 (slot p + NR/2: the up row of this gate row, same token) sits in lane ^ 16:
            // the first reduce-scatter step split the values by lane bit 4.
            const float up = __shfl_xor_sync(0xffffffffu, val, 16);
            if (leader && valid && p < NR / 2) y[static_cast<size_t>(t) * ldy + r] = detail::glu_value(ep, val, up);
        }
    }
    if constexpr (TAIL) detail::norm_tail<NT>(tail, y, ldy, out_rows, reinterpret_cast<float*>(s_act));
}

// tail (DevActs only; null: none): returns false, having launched the GEMV alone, where one block cannot hold the
// tail's rows (the caller then runs rmsnorm_quant).
template <int NT, int S, class Src>
bool launch_gemv(const DevTernary& w, const Src& x, float* y, int ldy, Epilogue ep, int out_rows,
                 cudaStream_t stream, const NormTail* tail = nullptr) {
    constexpr bool kNormed = std::is_same<Src, NormSrc>::value;
    constexpr int NR = pick_nr(NT, S);
    const int rows_per_unit = detail::is_glu(ep) ? NR / 2 : NR;
    const int n_units = (out_rows + rows_per_unit - 1) / rows_per_unit;
    int smem = kNormed ? normed_smem_bytes(NT, w.cols) : NT * w.cols;
    const DeviceLimits& dl = device_limits();

    // Grid shape. Every block stages NT * cols activation bytes, which costs L2 traffic; a block count of
    // at most rows / (16 NT) keeps that under a quarter of the weight bytes. (Normed: every block reads
    // the NT float rows and the norm weights, (NT + 1) * cols * 4 bytes, so at most rows / (64 (NT + 1))
    // blocks: about one per SM on the 1.7B shapes.) But at least one block per SM, so that every SM streams
    // weights. Within that, as few warps per block as give every warp one unit (more, smaller blocks spread
    // a small matrix over more SMs); past it, the warps loop over units. And enough warps per block that the
    // blocks that fit in an SM's shared memory hold 16 warps.
    const int blocks_by_smem = std::max(1, dl.smem_per_sm / (smem + 1024));
    const int max_blocks = std::max(dl.sms, kNormed ? w.rows / (64 * (NT + 1)) : w.rows / (16 * NT));
    int warps = 1;
    while (warps < kBlockThreadsMax / 32 && ((n_units + warps - 1) / warps > max_blocks || warps * blocks_by_smem < 16))
        warps *= 2;
    const int grid = std::max(1, std::min((n_units + warps - 1) / warps, max_blocks));
    // The tail holds its rows in registers: where a block of the most threads can, the blocks get the warps it needs
    // (the grid stays as it is, so every SM still streams weights; the added warps may find no unit).
    bool fused_tail = false;
    if constexpr (!kNormed && NT <= detail::kTailMaxTokens) {
        if (tail && detail::norm_tail_fits(NT, out_rows, kBlockThreadsMax)) {
            while (!detail::norm_tail_fits(NT, out_rows, warps * 32)) warps *= 2;
            fused_tail = true;
            smem = std::max(smem, detail::norm_tail_smem_bytes(NT, out_rows));
        }
    }
    const NormTail no_tail{};
    auto go = [&](auto kernel, const NormTail& t) {
        allow_dynamic_smem(reinterpret_cast<const void*>(kernel), smem);
        launch(kernel, grid, warps * 32, smem, stream, w, x, y, ldy, ep, n_units, l2_prefetch_flag(), t);
    };
    if constexpr (!kNormed && NT <= detail::kTailMaxTokens) {
        if (fused_tail) {
            go(ternary_gemv_kernel<NT, NR, S, Src, true>, *tail);
            return true;
        }
    }
    go(ternary_gemv_kernel<NT, NR, S, Src, false>, no_tail);
    return !tail;
}

template <int NT, class Src>
bool launch_gemv_s(const DevTernary& w, const Src& x, float* y, int ldy, Epilogue ep, int out_rows,
                   cudaStream_t stream, const NormTail* tail) {
    const int n16 = w.cols / 64;
    if (n16 <= 32) return launch_gemv<NT, 1>(w, x, y, ldy, ep, out_rows, stream, tail);
    if (n16 <= 64) return launch_gemv<NT, 2>(w, x, y, ldy, ep, out_rows, stream, tail);
    return launch_gemv<NT, 4>(w, x, y, ldy, ep, out_rows, stream, tail);
}

template <class Src>
bool launch_gemv_n(int nt, const DevTernary& w, const Src& x, float* y, int ldy, Epilogue ep, int out_rows,
                   cudaStream_t stream, const NormTail* tail = nullptr) {
    switch (nt) {
        case 1: return launch_gemv_s<1>(w, x, y, ldy, ep, out_rows, stream, tail);
        case 2: return launch_gemv_s<2>(w, x, y, ldy, ep, out_rows, stream, tail);
        case 3: return launch_gemv_s<3>(w, x, y, ldy, ep, out_rows, stream, tail);
        case 4: return launch_gemv_s<4>(w, x, y, ldy, ep, out_rows, stream, tail);
        case 5: return launch_gemv_s<5>(w, x, y, ldy, ep, out_rows, stream, tail);
        case 6: return launch_gemv_s<6>(w, x, y, ldy, ep, out_rows, stream, tail);
        case 7: return launch_gemv_s<7>(w, x, y, ldy, ep, out_rows, stream, tail);
        default: return launch_gemv_s<8>(w, x, y, ldy, ep, out_rows, stream, tail);
    }
}

}  // namespace

void ternary_gemv(const DevTernary& w, const DevActs& x, int n_tokens, float* y, int ldy, Epilogue ep,
                  cudaStream_t stream) {
    const int out_rows = check_ternary_args("ternary_gemv", w, x, n_tokens, y, ldy, ep);
    if (n_tokens > kGemvMaxTokens)
        throw std::invalid_argument("ternary_gemv: n_tokens " + std::to_string(n_tokens) + " > " +
                                    std::to_string(kGemvMaxTokens) + " (use a GEMM)");
    if (n_tokens == 0) return;
    // The block stages n_tokens activation rows in shared memory; split the tokens when they do not fit
    // (only for cols above ~28K at 8 tokens on a Hopper).
    const int per_launch = std::min(n_tokens, device_limits().smem_block_optin / w.cols);
    if (per_launch < 1)
        throw std::invalid_argument("ternary_gemv: cols " + std::to_string(w.cols) +
                                    " exceeds the shared memory of one block");
    for (int t0 = 0; t0 < n_tokens; t0 += per_launch) {
        const int nt = std::min(per_launch, n_tokens - t0);
        DevActs xs = x;
        xs.q = x.q + static_cast<size_t>(t0) * x.cols;
        xs.scale = x.scale + t0;
        xs.row_sum = x.row_sum + t0;
        launch_gemv_n(nt, w, xs, y + static_cast<size_t>(t0) * ldy, ldy, ep, out_rows, stream);
    }
}

bool ternary_gemv_tail(const DevTernary& w, const DevActs& x, int n_tokens, float* y, int ldy, Epilogue ep,
                       const NormTail& tail, cudaStream_t stream) {
    const int out_rows = check_ternary_args("ternary_gemv_tail", w, x, n_tokens, y, ldy, ep);
    auto fail = [&](const std::string& why) { throw std::invalid_argument("ternary_gemv_tail: " + why); };
    if (n_tokens > kGemvMaxTokens)
        fail("n_tokens " + std::to_string(n_tokens) + " > " + std::to_string(kGemvMaxTokens) + " (use a GEMM)");
    if (tail.out.cols < out_rows)
        fail("tail.out.cols " + std::to_string(tail.out.cols) + " < output rows " + std::to_string(out_rows));
    if (n_tokens == 0) return false;
    if (!tail.counter || !tail.out.q || !tail.out.scale || !tail.out.row_sum) fail("null pointer");
    auto aligned16 = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; };
    // In the kernel: one launch for all the tokens, 16-byte loads of y and the norm weights, 4-byte code stores.
    const bool in_kernel = n_tokens * w.cols <= device_limits().smem_block_optin && out_rows % 4 == 0 &&
                           ldy % 4 == 0 && aligned16(y) && (!tail.norm_w || aligned16(tail.norm_w)) &&
                           tail.out.cols % 4 == 0 && (reinterpret_cast<uintptr_t>(tail.out.q) & 3u) == 0;
    if (in_kernel && launch_gemv_n(n_tokens, w, x, y, ldy, ep, out_rows, stream, &tail)) return true;
    if (!in_kernel) ternary_gemv(w, x, n_tokens, y, ldy, ep, stream);
    rmsnorm_quant(y, ldy, tail.norm_w, n_tokens, out_rows, tail.eps, tail.out, stream);
    return false;
}

void ternary_gemv_normed(const DevTernary& w, const float* x, int ldx, const float* norm_w, int d, float eps,
                         int n_tokens, float* y, int ldy, Epilogue ep, cudaStream_t stream) {
    const char* who = "ternary_gemv_normed";
    const int out_rows = check_ternary_matrix(who, w, n_tokens, y, ldy, ep);
    auto fail = [&](const std::string& why) { throw std::invalid_argument(std::string(who) + ": " + why); };
    if (n_tokens > kGemvMaxTokens)
        fail("n_tokens " + std::to_string(n_tokens) + " > " + std::to_string(kGemvMaxTokens) + " (use a GEMM)");
    if (d < 1 || d > w.cols) fail("d " + std::to_string(d) + " outside [1, cols " + std::to_string(w.cols) + "]");
    if (n_tokens == 0) return;
    if (!x) fail("null pointer");
    if (n_tokens > 1 && ldx < d) fail("ldx " + std::to_string(ldx) + " < d " + std::to_string(d));
    auto aligned16 = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; };
    NormSrc src{x, ldx, norm_w, d, eps, false};
    src.vec4 = d % 4 == 0 && (n_tokens == 1 || ldx % 4 == 0) && aligned16(x) && (!norm_w || aligned16(norm_w));
    // Split the tokens when their rows do not fit in one block's shared memory.
    const int per_launch = std::min(n_tokens, device_limits().smem_block_optin / normed_smem_bytes(1, w.cols));
    if (per_launch < 1)
        fail("cols " + std::to_string(w.cols) + " exceeds the shared memory of one block");
    for (int t0 = 0; t0 < n_tokens; t0 += per_launch) {
        const int nt = std::min(per_launch, n_tokens - t0);
        NormSrc xs = src;
        xs.x = x + static_cast<size_t>(t0) * ldx;
        launch_gemv_n(nt, w, xs, y + static_cast<size_t>(t0) * ldy, ldy, ep, out_rows, stream);
    }
}

}  // namespace cuda
}  // namespace bllama

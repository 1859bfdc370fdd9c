// Decode GEMV: y = W x for 1..8 tokens, W ternary in the cuda/layout.h layout, x int8.
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
// PDL (launch.cuh): the first weight words (constant) are requested before pdl_wait(); everything that touches
// the activations, their scales or y comes after it.
#include <algorithm>
#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <string>

#include "cuda/kernels/cuda_util.cuh"
#include "cuda/kernels/kernels.cuh"
#include "cuda/kernels/launch.cuh"
#include "cuda/kernels/ternary_common.cuh"

namespace bllama {
namespace cuda {

// ---------------------------------------------------------------------------------------------------
// Shared host helpers (declared in ternary_common.cuh)

int check_ternary_args(const char* who, const DevTernary& w, const DevActs& x, int n_tokens, const float* y,
                       int ldy, Epilogue ep) {
    auto fail = [&](const std::string& why) { throw std::invalid_argument(std::string(who) + ": " + why); };
    if (x.cols != w.cols)
        fail("activation length " + std::to_string(x.cols) + " != matrix cols " + std::to_string(w.cols));
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

// NT tokens (compile time: the accumulators live in registers), NR rows per unit, S loads per row and
// lane per chunk (one chunk = 32 * S * 16 bytes of a row; rows longer than that take several chunks).
template <int NT, int NR, int S>
__global__ void __launch_bounds__(kBlockThreadsMax)
    ternary_gemv_kernel(DevTernary w, DevActs x, float* __restrict__ y, int ldy, Epilogue ep, int n_units) {
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
    pdl_wait();
    const uint4* xq = reinterpret_cast<const uint4*>(x.q);
#pragma unroll
    for (int t = 0; t < NT; ++t)
        for (int c = threadIdx.x; c < a16; c += blockDim.x)
            s_act[t * a16 + act_slot(c)] = __ldg(xq + static_cast<size_t>(t) * a16 + c);
    __syncthreads();

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
        if (valid) val = detail::bitlinear_value(sum - x.row_sum[t], detail::segment_scales(w, r), x.scale[t]);
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
}

template <int NT, int S>
void launch_gemv(const DevTernary& w, const DevActs& x, float* y, int ldy, Epilogue ep, int out_rows,
                 cudaStream_t stream) {
    constexpr int NR = pick_nr(NT, S);
    const int rows_per_unit = detail::is_glu(ep) ? NR / 2 : NR;
    const int n_units = (out_rows + rows_per_unit - 1) / rows_per_unit;
    const int smem = NT * w.cols;
    const DeviceLimits& dl = device_limits();

    // Grid shape. Every block stages NT * cols activation bytes, which costs L2 traffic; a block count of
    // at most rows / (16 NT) keeps that under a quarter of the weight bytes. But at least one block per SM,
    // so that every SM streams weights. Within that, as few warps per block as give every warp one unit
    // (more, smaller blocks spread a small matrix over more SMs); past it, the warps loop over units. And
    // enough warps per block that the blocks that fit in an SM's shared memory hold 16 warps.
    const int blocks_by_smem = std::max(1, dl.smem_per_sm / (smem + 1024));
    const int max_blocks = std::max(dl.sms, w.rows / (16 * NT));
    int warps = 1;
    while (warps < kBlockThreadsMax / 32 && ((n_units + warps - 1) / warps > max_blocks || warps * blocks_by_smem < 16))
        warps *= 2;
    const int grid = std::max(1, std::min((n_units + warps - 1) / warps, max_blocks));
    const auto kernel = ternary_gemv_kernel<NT, NR, S>;
    allow_dynamic_smem(reinterpret_cast<const void*>(kernel), smem);
    launch(kernel, grid, warps * 32, smem, stream, w, x, y, ldy, ep, n_units);
}

template <int NT>
void launch_gemv_s(const DevTernary& w, const DevActs& x, float* y, int ldy, Epilogue ep, int out_rows,
                   cudaStream_t stream) {
    const int n16 = w.cols / 64;
    if (n16 <= 32) launch_gemv<NT, 1>(w, x, y, ldy, ep, out_rows, stream);
    else if (n16 <= 64) launch_gemv<NT, 2>(w, x, y, ldy, ep, out_rows, stream);
    else launch_gemv<NT, 4>(w, x, y, ldy, ep, out_rows, stream);
}

void launch_gemv_n(int nt, const DevTernary& w, const DevActs& x, float* y, int ldy, Epilogue ep, int out_rows,
                   cudaStream_t stream) {
    switch (nt) {
        case 1: return launch_gemv_s<1>(w, x, y, ldy, ep, out_rows, stream);
        case 2: return launch_gemv_s<2>(w, x, y, ldy, ep, out_rows, stream);
        case 3: return launch_gemv_s<3>(w, x, y, ldy, ep, out_rows, stream);
        case 4: return launch_gemv_s<4>(w, x, y, ldy, ep, out_rows, stream);
        case 5: return launch_gemv_s<5>(w, x, y, ldy, ep, out_rows, stream);
        case 6: return launch_gemv_s<6>(w, x, y, ldy, ep, out_rows, stream);
        case 7: return launch_gemv_s<7>(w, x, y, ldy, ep, out_rows, stream);
        default: return launch_gemv_s<8>(w, x, y, ldy, ep, out_rows, stream);
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

}  // namespace cuda
}  // namespace bllama

// Next-token selection on the device: greedy (argmax) or the CPU Sampler's distribution
// (csrc/engine/sampler.cpp: repetition penalty, temperature, top-k, then top-p over the survivors).
//
// Greedy, the decode hot path: one block of 1024 threads per row, one pass over the logits with
// 16-byte loads (penalty applied and written back on the way), then a block argmax; ties go to the
// lowest index, as the CPU's argmax.
//
// Sampling: one block of 1024 threads per row.
//  1. penalty + max, 2. p_i = exp((l_i - max) * (1 / T)) written over the logits (as the CPU does).
//  3. The candidates are always a prefix of the CPU's order (p descending, id ascending). With the
//     50-bit key (p bits << 20 | ~id) that order is "key descending" and every key is distinct, so a
//     candidate set is {key >= B} for one bound B. B is found by radix selection over 10-bit digits
//     of the key (shared-memory histograms, at most 5 passes, usually 2-3): for top-k by counts (the
//     k-th largest key), for top-p by probability mass among the top-k survivors (the first key in
//     order whose cumulative mass reaches top_p of their total).
//  4. One draw: u uniform in [0, mass of the set), and the member where the running mass (in index
//     order) passes u. Masses are 64-bit fixed point (p * 2^S, S chosen so V * 2^S <= 2^63): integer
//     sums are exact in any order, so the result does not depend on thread scheduling. (p below 2^-S,
//     about 1e-14, counts as zero mass.)
// The random number is a counter-based hash of (seed + row, step[row]), each row with its own counter: row t
// of a batch draws exactly what row 0 draws alone with seed + t and the same history (the Engine gives prompt i
// of a batch the seed + i). step[row] is read by one thread of the row's block and incremented once per call
// (graph-safe: no host involvement).
#include <cmath>
#include <stdexcept>

#include "cuda/kernels/cuda_util.cuh"
#include "cuda/kernels/kernels.cuh"
#include "cuda/kernels/launch.cuh"

namespace bllama {
namespace cuda {

namespace {

constexpr int kThreads = 1024;  // the scans below assume exactly 32 warps
constexpr int kBins = 1024;     // 10-bit digits
constexpr int kKeyBits = 50;    // p bits 29..0 (p in [0, 1]: bits 31, 30 are 0) and 20 bits of ~id
constexpr int kMaxVocab = 1 << 20;

__device__ __forceinline__ float penalize(float l, float rp) {
    return l > 0.0f ? __fdiv_rn(l, rp) : __fmul_rn(l, rp);  // CPU: l / rp or l * rp
}

// ---------------------------------------------------------------------------------------------------
// Greedy

struct Best {
    float v;
    int i;
};
// a better than b: larger value, or equal value and lower index (NaN never wins).
__device__ __forceinline__ bool better(float v, int i, const Best& b) { return v > b.v || (v == b.v && i < b.i); }

template <bool VEC4>
__global__ void __launch_bounds__(kThreads)
    greedy_kernel(float* __restrict__ logits, int V, float rp, const uint8_t* __restrict__ seen,
                  uint64_t* __restrict__ step, int32_t* __restrict__ tokens) {
    pdl_trigger();
    pdl_wait();
    const int row = blockIdx.x;
    float* L = logits + static_cast<int64_t>(row) * V;
    const uint8_t* S = seen ? seen + static_cast<int64_t>(row) * V : nullptr;
    Best best{-INFINITY, V};  // index V: any real element, even -inf, beats it
    if (VEC4) {
        float4* L4 = reinterpret_cast<float4*>(L);
#pragma unroll 4
        for (int i4 = threadIdx.x; i4 < V / 4; i4 += kThreads) {
            float4 f = L4[i4];
            if (S) {
                const uchar4 s = reinterpret_cast<const uchar4*>(S)[i4];
                if (s.x | s.y | s.z | s.w) {
                    if (s.x) f.x = penalize(f.x, rp);
                    if (s.y) f.y = penalize(f.y, rp);
                    if (s.z) f.z = penalize(f.z, rp);
                    if (s.w) f.w = penalize(f.w, rp);
                    L4[i4] = f;
                }
            }
            const int i = 4 * i4;
            if (better(f.x, i, best)) best = {f.x, i};
            if (better(f.y, i + 1, best)) best = {f.y, i + 1};
            if (better(f.z, i + 2, best)) best = {f.z, i + 2};
            if (better(f.w, i + 3, best)) best = {f.w, i + 3};
        }
    } else {
        for (int i = threadIdx.x; i < V; i += kThreads) {
            float f = L[i];
            if (S && S[i]) {
                f = penalize(f, rp);
                L[i] = f;
            }
            if (better(f, i, best)) best = {f, i};
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        const float v = __shfl_xor_sync(0xffffffffu, best.v, o);
        const int i = __shfl_xor_sync(0xffffffffu, best.i, o);
        if (better(v, i, best)) best = {v, i};
    }
    __shared__ Best red[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) red[warp] = best;
    __syncthreads();
    if (warp == 0) {
        best = red[lane];
        for (int o = 16; o > 0; o >>= 1) {
            const float v = __shfl_xor_sync(0xffffffffu, best.v, o);
            const int i = __shfl_xor_sync(0xffffffffu, best.i, o);
            if (better(v, i, best)) best = {v, i};
        }
        if (lane == 0) {
            tokens[row] = best.i < V ? best.i : 0;  // all NaN: 0, like the CPU
            if (step) step[row] += 1;               // nothing else in this launch reads it
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Sampling

struct SampleArgs {
    float inv_t;          // 1.0f / temperature, as the CPU computes it
    float rp;             // repetition penalty (1: off)
    int top_k;            // 0 < top_k < V, or 0: off
    float top_p;          // < 1, or 1: off
    float fix_scale;      // 2^S
    uint64_t seed;
};

struct SampleSmem {
    unsigned int cnt[kBins];
    unsigned long long mass[kBins];
    unsigned long long scan[32];
    float red[32];
    int sel_bin;
    unsigned int sel_cnt;
    unsigned long long sel_need;
    unsigned long long step;
    int token;
};

__device__ __forceinline__ uint64_t mix64(uint64_t z) {  // splitmix64's finalizer
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

__device__ __forceinline__ uint64_t make_key(float p, int i) {
    return (static_cast<uint64_t>(__float_as_uint(p)) << 20) | ((~static_cast<uint32_t>(i)) & 0xFFFFFu);
}
__device__ __forceinline__ uint64_t fixed(float p, float fix_scale) { return __float2ull_rz(p * fix_scale); }

// Inclusive scan over the block's 1024 threads in thread order; *total gets the sum. Ends with a
// barrier, so `sm.scan` may be reused at once.
__device__ uint64_t block_scan(uint64_t v, SampleSmem& sm, uint64_t* total) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int o = 1; o < 32; o <<= 1) {
        const uint64_t u = __shfl_up_sync(0xffffffffu, v, o);
        if (lane >= o) v += u;
    }
    if (lane == 31) sm.scan[warp] = v;
    __syncthreads();
    if (warp == 0) {
        uint64_t w = sm.scan[lane];
        for (int o = 1; o < 32; o <<= 1) {
            const uint64_t u = __shfl_up_sync(0xffffffffu, w, o);
            if (lane >= o) w += u;
        }
        sm.scan[lane] = w;
    }
    __syncthreads();
    const uint64_t r = v + (warp > 0 ? sm.scan[warp - 1] : 0);
    *total = sm.scan[31];
    __syncthreads();
    return r;
}

__device__ float block_max(float v, SampleSmem& sm) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    if (lane == 0) sm.red[warp] = v;
    __syncthreads();
    v = sm.red[lane];
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    __syncthreads();
    return v;
}

// The bound B of a prefix of the order "key descending" among the keys >= filter:
//  MASS false: the prefix of `need` elements (1 <= need <= their count): B = the need-th largest key.
//  MASS true:  the shortest prefix whose fixed-point mass reaches max(1, top_p * their total mass).
// Digit by digit from the top: histogram the digit of the elements that match the digits chosen so
// far, scan the bins from the largest down, and descend into the bin where the running count/mass
// reaches `need`. Stops early when that bin is taken whole (counts) or holds one element (mass); B
// then has zeros below the chosen digits, which keeps exactly the elements at or above that bin.
template <bool MASS>
__device__ uint64_t select_bound(const float* P, int V, uint64_t filter, uint64_t need, float top_p, float fix_scale,
                                 SampleSmem& sm) {
    uint64_t prefix = 0;
    for (int shift = kKeyBits - 10; shift >= 0; shift -= 10) {
        for (int b = threadIdx.x; b < kBins; b += kThreads) {
            sm.cnt[b] = 0;
            if (MASS) sm.mass[b] = 0;
        }
        __syncthreads();
        const uint64_t hi = prefix >> (shift + 10);
        for (int i = threadIdx.x; i < V; i += kThreads) {
            const float p = P[i];
            const uint64_t key = make_key(p, i);
            if (key < filter || (key >> (shift + 10)) != hi) continue;
            const unsigned bin = static_cast<unsigned>(key >> shift) & (kBins - 1);
            if (MASS) {
                // Zero-mass elements can never be where the mass reaches a target >= 1; leaving them
                // out only shortens the search (they stay in the set if above B, drawn with weight 0).
                const uint64_t f = fixed(p, fix_scale);
                if (f == 0) continue;
                atomicAdd(&sm.mass[bin], static_cast<unsigned long long>(f));
            }
            atomicAdd(&sm.cnt[bin], 1u);
        }
        __syncthreads();
        const int b = kBins - 1 - static_cast<int>(threadIdx.x);  // thread 0 takes the top bin
        const uint64_t c = MASS ? sm.mass[b] : sm.cnt[b];
        uint64_t total;
        const uint64_t incl = block_scan(c, sm, &total);
        if (MASS && shift == kKeyBits - 10) {
            // The first pass sees every candidate: the target is top_p of their total (>= 1 unit).
            const uint64_t t = static_cast<uint64_t>(static_cast<double>(top_p) * static_cast<double>(total));
            need = t > 0 ? t : 1;
        }
        const uint64_t excl = incl - c;
        if (excl < need && need <= incl) {  // exactly one thread (c > 0 there)
            sm.sel_bin = b;
            sm.sel_need = need - excl;
            sm.sel_cnt = sm.cnt[b];
        }
        __syncthreads();
        prefix |= static_cast<uint64_t>(sm.sel_bin) << shift;
        need = sm.sel_need;
        const bool done = MASS ? sm.sel_cnt == 1 : need == sm.sel_cnt;
        __syncthreads();  // sel_* are read by all before anyone can write them again
        if (done) break;
    }
    // Stopping early may leave B below `filter` (elements of the chosen bin that the filter excluded).
    return prefix > filter ? prefix : filter;
}

__global__ void __launch_bounds__(kThreads)
    sample_kernel(float* __restrict__ logits, int V, SampleArgs a, const uint8_t* __restrict__ seen,
                  uint64_t* __restrict__ step, int32_t* __restrict__ tokens) {
    __shared__ SampleSmem sm;
    pdl_trigger();
    pdl_wait();
    const int row = blockIdx.x;
    float* L = logits + static_cast<int64_t>(row) * V;
    const uint8_t* S = seen ? seen + static_cast<int64_t>(row) * V : nullptr;
    if (threadIdx.x == 0) {
        sm.step = step ? step[row] : 0;
        sm.token = 0;
    }

    // 1. Penalty (written back) and the max.
    float mx = -INFINITY;
    for (int i = threadIdx.x; i < V; i += kThreads) {
        float l = L[i];
        if (S && S[i]) {
            l = penalize(l, a.rp);
            L[i] = l;
        }
        mx = fmaxf(mx, l);
    }
    mx = block_max(mx, sm);  // its barriers also publish sm.step / sm.token

    // 2. Probabilities up to a common factor, in place: exp((l - max) * inv_t) in [0, 1].
    for (int i = threadIdx.x; i < V; i += kThreads) L[i] = expf(__fmul_rn(__fsub_rn(L[i], mx), a.inv_t));
    __syncthreads();

    // 3. The candidate set {key >= B}.
    uint64_t B = 0;
    if (a.top_k > 0) B = select_bound<false>(L, V, 0, static_cast<uint64_t>(a.top_k), 0.0f, a.fix_scale, sm);
    if (a.top_p < 1.0f) B = select_bound<true>(L, V, B, 0, a.top_p, a.fix_scale, sm);

    // 4. The draw: each thread sums the mass of the members in its contiguous segment; the segment
    // holding u is rescanned by its thread.
    const int seg = (V + kThreads - 1) / kThreads;
    const int b0 = min(V, static_cast<int>(threadIdx.x) * seg), b1 = min(V, b0 + seg);
    uint64_t own = 0;
    for (int i = b0; i < b1; ++i) {
        const float p = L[i];
        if (make_key(p, i) >= B) own += fixed(p, a.fix_scale);
    }
    uint64_t total;
    const uint64_t incl = block_scan(own, sm, &total);
    const uint64_t r = mix64(mix64(mix64(a.seed + static_cast<uint64_t>(row)) ^ sm.step) + 0x9e3779b97f4a7c15ull);
    const uint64_t u = __umul64hi(r, total);  // uniform in [0, total); total >= 1 (the top element has p = 1)
    const uint64_t excl = incl - own;
    if (own > 0 && excl <= u && u < incl) {
        uint64_t cum = excl;
        for (int i = b0; i < b1; ++i) {
            const float p = L[i];
            if (make_key(p, i) < B) continue;
            cum += fixed(p, a.fix_scale);
            if (u < cum) {
                sm.token = i;
                break;
            }
        }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        tokens[row] = sm.token;
        if (step) step[row] = sm.step + 1;  // after the only read of step[row] in this launch
    }
}

}  // namespace

size_t sample_workspace_bytes(int n, int V) { return 0; }  // everything lives in shared memory

void sample(float* logits, int V, int n, const DevSampling& p, const uint8_t* seen, uint64_t* step,
            int32_t* tokens, void* workspace, cudaStream_t stream) {
    if (n <= 0) return;
    if (V <= 0 || V > kMaxVocab) throw std::invalid_argument("sample: vocabulary size must be in [1, 2^20]");
    const bool penalty = p.repetition_penalty != 1.0f && seen != nullptr;
    const uint8_t* s = penalty ? seen : nullptr;
    if (p.greedy || !(p.temperature > 0.0f)) {
        const bool vec4 = V % 4 == 0 && (reinterpret_cast<uintptr_t>(logits) & 15u) == 0 &&
                          (reinterpret_cast<uintptr_t>(seen) & 3u) == 0;
        if (vec4) launch(greedy_kernel<true>, n, kThreads, 0, stream, logits, V, p.repetition_penalty, s, step, tokens);
        else launch(greedy_kernel<false>, n, kThreads, 0, stream, logits, V, p.repetition_penalty, s, step, tokens);
        return;
    }
    SampleArgs a;
    a.inv_t = 1.0f / p.temperature;
    a.rp = p.repetition_penalty;
    a.top_k = p.top_k > 0 && p.top_k < V ? p.top_k : 0;
    a.top_p = p.top_p < 1.0f ? p.top_p : 1.0f;
    int bits = 0;  // ceil(log2(V))
    while ((1 << bits) < V) ++bits;
    a.fix_scale = std::ldexp(1.0f, 63 - bits);
    a.seed = p.seed;
    launch(sample_kernel, n, kThreads, 0, stream, logits, V, a, s, step, tokens);
}

}  // namespace cuda
}  // namespace bllama

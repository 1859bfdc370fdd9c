// Causal grouped-query attention over the KV cache: decode (flash-decoding) and prompt (tiled).
//
// Both work in the log2 domain: scores are q.k * (scale * log2(e)) and weights exp2(s - max), which is
// softmax(q.k * scale) exactly in real arithmetic (fp32 rounding differs from the CPU's by ~1e-7).
//
// Decode, two launches:
//  1. attn_split_kernel, grid (max splits, Hkv * sub-groups, n), 128 threads. Block (s, g, t) takes
//     chunk s of token t's keys 0 .. pos[t] for up to QG query heads sharing kv head g, so each K/V row
//     is read once for the whole group. The chunk length and split count depend only on pos[t]
//     (attn_chunk), read on the device, so one captured graph serves every position: blocks past the
//     split count exit at once. Inside a block, lanes form groups of LPK lanes; a group takes one key
//     at a time (each lane 8 of its hd values, loads of 16 bytes), and keeps its own online-softmax
//     state (max, sum, unnormalized output) while the next key's K/V are already in flight. The groups
//     are merged with shuffles, the 4 warps through shared memory, and the block writes one partial
//     (max, sum, acc[hd]) to the workspace.
//  2. attn_combine_kernel, grid (H, n): merges the partials of each head with log-sum-exp weights.
//
// Prompt: attn_prefill_kernel, grid (ceil(n / 16), H), 128 threads: 16 queries of one head per block,
// 8 threads per query. Q (transposed), K (transposed, padded) and V tiles of BK keys in shared memory;
// each thread computes BK/8 scores of its query, the row's online softmax is done with shuffles inside
// its 8 lanes, and each thread accumulates hd/8 output columns.
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "cuda/kernels/cuda_util.cuh"
#include "cuda/kernels/kernels.cuh"
#include "cuda/kernels/launch.cuh"

namespace bllama {
namespace cuda {

namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr int kDecodeThreads = 128;  // 4 warps
constexpr int kEpl = 8;              // head elements per lane in the decode kernel
constexpr int kMinChunk = 64;        // keys per split at least (shorter splits cost more to combine)

// Split plan for a sequence of len keys: every split nonempty, at most kAttnMaxSplits of them.
__host__ __device__ __forceinline__ int attn_chunk(int len) {
    return max(kMinChunk, (len + kAttnMaxSplits - 1) / kAttnMaxSplits);
}
__host__ __device__ __forceinline__ int attn_splits(int len) {
    const int c = attn_chunk(len);
    return (len + c - 1) / c;
}

// Workspace layout: acc [n][H][kAttnMaxSplits][hd] floats, then (max, sum) [n][H][kAttnMaxSplits] float2.
__host__ __device__ __forceinline__ int64_t part_index(int t, int h, int s, int H) {
    return (static_cast<int64_t>(t) * H + h) * kAttnMaxSplits + s;
}

// 8 consecutive head values of one K or V row, loaded as raw registers (so the next key's load can be
// in flight while the current one is used) and converted to floats on use.
template <class T, bool VEC>
struct Row8;
template <>
struct Row8<float, true> {
    float4 a, b;
    __device__ void load(const float* p, int) {
        a = __ldg(reinterpret_cast<const float4*>(p));
        b = __ldg(reinterpret_cast<const float4*>(p) + 1);
    }
    __device__ void get(float (&f)[kEpl]) const {
        f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w, f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
    }
};
template <>
struct Row8<__half, true> {
    uint4 a;
    __device__ void load(const __half* p, int) { a = __ldg(reinterpret_cast<const uint4*>(p)); }
    __device__ void get(float (&f)[kEpl]) const {
        const __half2* h = reinterpret_cast<const __half2*>(&a);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const float2 v = __half22float2(h[i]);
            f[2 * i] = v.x, f[2 * i + 1] = v.y;
        }
    }
};
// Any head size: scalar loads of the first nvalid values, zeros after.
template <class T>
struct Row8<T, false> {
    float v[kEpl];
    __device__ void load(const T* p, int nvalid) {
#pragma unroll
        for (int c = 0; c < kEpl; ++c) v[c] = c < nvalid ? to_float(p[c]) : 0.0f;
    }
    __device__ void get(float (&f)[kEpl]) const {
#pragma unroll
        for (int c = 0; c < kEpl; ++c) f[c] = v[c];
    }
    __device__ static float to_float(float x) { return x; }
    __device__ static float to_float(__half x) { return __half2float(x); }
};

// Merges online-softmax state (m2, l2, a2) into (m, l, a); m == -inf means "no keys yet".
__device__ __forceinline__ void merge_state(float& m, float& l, float (&a)[kEpl], float m2, float l2,
                                            const float (&a2)[kEpl]) {
    const float mx = fmaxf(m, m2);
    const float w1 = m == -INFINITY ? 0.0f : exp2f(m - mx);
    const float w2 = m2 == -INFINITY ? 0.0f : exp2f(m2 - mx);
    l = l * w1 + l2 * w2;
#pragma unroll
    for (int c = 0; c < kEpl; ++c) a[c] = a[c] * w1 + a2[c] * w2;
    m = mx;
}

// The combine of one head's partials (attn_combine_kernel). combine_weights is run by one warp: wt[s] =
// 2^(m_s - M) for the ns splits (M their max) and *inv_sum = 1 / sum_s l_s wt[s]; then out[e] =
// combine_value(e) * inv_sum. Loads go through L2 (__ldcg).
static_assert(kAttnMaxSplits == 64, "combine_weights reads the splits as two per lane of one warp");
__device__ __forceinline__ void combine_weights(const float2* __restrict__ ml, int ns, int lane, float* wt,
                                                float* inv_sum) {
    // Every split that ran is nonempty, so its max is finite.
    const float2 a = lane < ns ? __ldcg(ml + lane) : make_float2(-INFINITY, 0.0f);
    const float2 b = lane + 32 < ns ? __ldcg(ml + lane + 32) : make_float2(-INFINITY, 0.0f);
    float mx = fmaxf(a.x, b.x);
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    const float wa = lane < ns ? exp2f(a.x - mx) : 0.0f;
    const float wb = lane + 32 < ns ? exp2f(b.x - mx) : 0.0f;
    wt[lane] = wa;
    wt[lane + 32] = wb;
    float sum = a.y * wa + b.y * wb;
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    if (lane == 0) *inv_sum = 1.0f / sum;
}
__device__ __forceinline__ float combine_value(const float* __restrict__ acc, const float* wt, int ns, int hd, int e) {
    float o = 0.0f;
    for (int s = 0; s < ns; ++s) o = fmaf(__ldcg(acc + static_cast<int64_t>(s) * hd + e), wt[s], o);
    return o;
}

// LPK lanes per key (hd <= 8 * LPK); QG query heads per block; T the cache element type.
template <int LPK, bool VEC, int QG, class T>
__global__ void __launch_bounds__(kDecodeThreads)
    attn_split_kernel(const float* __restrict__ q, int ldq, const int32_t* __restrict__ pos,
                      const int32_t* __restrict__ slot, int layer, int H, int Hkv, int hd, int n_sub,
                      float scale_log2, const T* __restrict__ kc, const T* __restrict__ vc, int n_layers, int ctx,
                      int kv_dim, float* __restrict__ ws_acc, float2* __restrict__ ws_ml) {
    constexpr int kGroupsPerWarp = 32 / LPK;
    constexpr int kGroups = kGroupsPerWarp * (kDecodeThreads / 32);
    constexpr int kWarps = kDecodeThreads / 32;
    pdl_trigger();
    pdl_wait();  // q and the cache were just written; before the early exit below (launch.cuh)

    const int t = blockIdx.z;
    const int len = pos[t] + 1;
    const int chunk = attn_chunk(len);
    const int s = blockIdx.x;
    if (s * chunk >= len) return;  // this split is past the end at this position (graph-safe early exit)
    const int begin = s * chunk, end = min(len, begin + chunk);

    const int G = H / Hkv;
    const int g = blockIdx.y / n_sub;             // kv head
    const int h0 = g * G + (blockIdx.y % n_sub) * QG;  // first query head of this block
    const int nq = min(QG, g * G + G - h0);

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int grp = warp * kGroupsPerWarp + lane / LPK;
    const int e0 = (lane % LPK) * kEpl;                 // this lane's first head element
    const int nvalid = min(kEpl, max(0, hd - e0));      // its elements inside hd (VEC: all 8)
    // The lanes of one group: they alone exchange partial dot products inside the key loop, where
    // different groups may run different numbers of iterations.
    const unsigned gmask = LPK == 32 ? 0xffffffffu : ((1u << LPK) - 1u) << ((lane / LPK) * LPK);

    float qv[QG][kEpl];
#pragma unroll
    for (int i = 0; i < QG; ++i) {
        Row8<float, VEC> r;
        if (i < nq) r.load(q + static_cast<int64_t>(t) * ldq + (h0 + i) * hd + e0, nvalid);
        else r.load(q, 0);  // VEC: any valid row (unused); scalar: zeros
        r.get(qv[i]);
    }

    const int64_t base = (static_cast<int64_t>(slot[t]) * n_layers + layer) * ctx * kv_dim + g * hd + e0;
    const T* kp = kc + base;
    const T* vp = vc + base;

    float m[QG], l[QG], acc[QG][kEpl];
#pragma unroll
    for (int i = 0; i < QG; ++i) {
        m[i] = -INFINITY, l[i] = 0.0f;
#pragma unroll
        for (int c = 0; c < kEpl; ++c) acc[i][c] = 0.0f;
    }
    // One key into this group's online-softmax state.
    auto consume = [&](const float (&kf)[kEpl], const float (&vf)[kEpl]) {
#pragma unroll
        for (int i = 0; i < QG; ++i) {
            if (i < nq) {
                float d = 0.0f;
#pragma unroll
                for (int c = 0; c < kEpl; ++c) d = fmaf(qv[i][c], kf[c], d);
#pragma unroll
                for (int o = LPK / 2; o > 0; o >>= 1) d += __shfl_xor_sync(gmask, d, o);
                const float sc = d * scale_log2;
                const float mn = fmaxf(m[i], sc);
                const float corr = exp2f(m[i] - mn);  // exp2(-inf) = 0 for the first key
                const float p = exp2f(sc - mn);
                l[i] = l[i] * corr + p;
#pragma unroll
                for (int c = 0; c < kEpl; ++c) acc[i][c] = fmaf(p, vf[c], acc[i][c] * corr);
                m[i] = mn;
            }
        }
    };

    int j = begin + grp;
    Row8<T, VEC> kcur, vcur, knext, vnext;
    if (j < end) {
        kcur.load(kp + static_cast<int64_t>(j) * kv_dim, nvalid);
        vcur.load(vp + static_cast<int64_t>(j) * kv_dim, nvalid);
    }
    while (j < end) {
        const int jn = j + kGroups;
        if (jn < end) {  // prefetch the next key while this one is used
            knext.load(kp + static_cast<int64_t>(jn) * kv_dim, nvalid);
            vnext.load(vp + static_cast<int64_t>(jn) * kv_dim, nvalid);
        }
        float kf[kEpl], vf[kEpl];
        kcur.get(kf);
        vcur.get(vf);
        consume(kf, vf);
        kcur = knext;
        vcur = vnext;
        j = jn;
    }

    // Merge the groups of each warp: lanes with the same head elements are LPK, 2*LPK, ... apart.
#pragma unroll
    for (int o = LPK; o < 32; o <<= 1) {
#pragma unroll
        for (int i = 0; i < QG; ++i) {
            if (i < nq) {
                const float m2 = __shfl_xor_sync(0xffffffffu, m[i], o);
                const float l2 = __shfl_xor_sync(0xffffffffu, l[i], o);
                float a2[kEpl];
#pragma unroll
                for (int c = 0; c < kEpl; ++c) a2[c] = __shfl_xor_sync(0xffffffffu, acc[i][c], o);
                merge_state(m[i], l[i], acc[i], m2, l2, a2);
            }
        }
    }

    // Merge the warps through shared memory; group 0 of each warp holds its warp's state.
    __shared__ float sm_m[kWarps][QG], sm_l[kWarps][QG];
    __shared__ float sm_acc[kWarps][QG][LPK * kEpl];
    if (lane < LPK) {
#pragma unroll
        for (int i = 0; i < QG; ++i) {
            if (lane == 0) sm_m[warp][i] = m[i], sm_l[warp][i] = l[i];
#pragma unroll
            for (int c = 0; c < kEpl; ++c) sm_acc[warp][i][e0 + c] = acc[i][c];
        }
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < nq * hd; idx += kDecodeThreads) {
        const int i = idx / hd, e = idx % hd;
        float mx = -INFINITY;
#pragma unroll
        for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, sm_m[w][i]);
        float sum = 0.0f, a = 0.0f;
#pragma unroll
        for (int w = 0; w < kWarps; ++w) {
            const float wt = sm_m[w][i] == -INFINITY ? 0.0f : exp2f(sm_m[w][i] - mx);
            sum += sm_l[w][i] * wt;
            a += sm_acc[w][i][e] * wt;
        }
        const int64_t pi = part_index(t, h0 + i, s, H);
        ws_acc[pi * hd + e] = a;
        if (e == 0) ws_ml[pi] = make_float2(mx, sum);
    }
}

// One block per (head, token): out = sum_s acc_s * 2^(m_s - M) / sum_s l_s * 2^(m_s - M).
__global__ void attn_combine_kernel(const float* __restrict__ ws_acc, const float2* __restrict__ ws_ml,
                                    const int32_t* __restrict__ pos, int H, int hd, float* __restrict__ out,
                                    int ldo) {
    pdl_trigger();
    pdl_wait();
    const int h = blockIdx.x, t = blockIdx.y;
    const int ns = attn_splits(pos[t] + 1);
    const int64_t p0 = part_index(t, h, 0, H);
    __shared__ float wt[kAttnMaxSplits];
    __shared__ float inv_sum;
    if (threadIdx.x < 32) combine_weights(ws_ml + p0, ns, threadIdx.x, wt, &inv_sum);
    __syncthreads();
    for (int e = threadIdx.x; e < hd; e += blockDim.x)
        out[static_cast<int64_t>(t) * ldo + h * hd + e] = combine_value(ws_acc + p0 * hd, wt, ns, hd, e) * inv_sum;
}

// Everything a decode launch needs, gathered once by attention_decode.
struct DecodeArgs {
    const float* q;
    int ldq, n;
    const int32_t* pos;
    const int32_t* slot;
    int layer, H, Hkv, hd;
    KvCache kv;
    float scale_log2;
    float* ws_acc;
    float2* ws_ml;
    cudaStream_t stream;
};

template <int LPK, bool VEC, int QG, class T>
void launch_split_typed(const DecodeArgs& a) {
    const int n_sub = (a.H / a.Hkv + QG - 1) / QG;
    // Enough split blocks for the longest sequence the cache holds: attn_splits(len) <= ceil(len / kMinChunk)
    // and <= kAttnMaxSplits for every len <= ctx.
    const dim3 grid(std::min(kAttnMaxSplits, (a.kv.ctx + kMinChunk - 1) / kMinChunk), a.Hkv * n_sub, a.n);
    launch(attn_split_kernel<LPK, VEC, QG, T>, grid, kDecodeThreads, 0, a.stream, a.q, a.ldq, a.pos, a.slot,
           a.layer, a.H, a.Hkv, a.hd, n_sub, a.scale_log2, static_cast<const T*>(a.kv.k), static_cast<const T*>(a.kv.v),
           a.kv.n_layers, a.kv.ctx, a.kv.kv_dim, a.ws_acc, a.ws_ml);
}

// Query heads per block: the whole GQA group up to 4 (larger groups take several blocks).
template <int LPK, bool VEC>
void launch_split(const DecodeArgs& a) {
    const int G = a.H / a.Hkv;
    if (a.kv.f16) {
        if (G == 1) launch_split_typed<LPK, VEC, 1, __half>(a);
        else if (G == 2) launch_split_typed<LPK, VEC, 2, __half>(a);
        else launch_split_typed<LPK, VEC, 4, __half>(a);
    } else {
        if (G == 1) launch_split_typed<LPK, VEC, 1, float>(a);
        else if (G == 2) launch_split_typed<LPK, VEC, 2, float>(a);
        else launch_split_typed<LPK, VEC, 4, float>(a);
    }
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

void check_heads(int H, int Hkv, int hd, const KvCache& kv, const char* who) {
    if (H <= 0 || Hkv <= 0 || H % Hkv || hd <= 0 || hd % 2 || hd > 256 || Hkv * hd != kv.kv_dim)
        throw std::invalid_argument(std::string(who) +
                                    ": bad head shape (need H % Hkv == 0, even hd <= 256, Hkv * hd == kv_dim)");
}

float scale_log2_for(int hd) { return (1.0f / std::sqrt(static_cast<float>(hd))) * kLog2e; }

// The checks and the workspace split of attention_decode (n >= 1).
DecodeArgs decode_args(const char* who, const float* q, int ldq, int n, const int32_t* pos, const int32_t* slot,
                       int layer, int H, int Hkv, int hd, const KvCache& kv, float* workspace, cudaStream_t stream) {
    check_heads(H, Hkv, hd, kv, who);
    if (n > 65535) throw std::invalid_argument(std::string(who) + ": at most 65535 tokens per call");
    if (!workspace) throw std::invalid_argument(std::string(who) + ": null workspace");
    float2* ws_ml = reinterpret_cast<float2*>(workspace + static_cast<size_t>(n) * H * kAttnMaxSplits * hd);
    if (reinterpret_cast<uintptr_t>(ws_ml) & 7u) throw std::invalid_argument(std::string(who) + ": workspace misaligned");
    return DecodeArgs{q, ldq, n, pos, slot, layer, H, Hkv, hd, kv, scale_log2_for(hd), workspace, ws_ml, stream};
}

// Every q / K / V row start 16-byte aligned (the 8-values-per-lane kernels).
bool vec_rows(const float* q, int ldq, const KvCache& kv) {
    return ldq % 4 == 0 && kv.kv_dim % 8 == 0 && aligned16(q) && aligned16(kv.k) && aligned16(kv.v);
}

// The 8-values-per-lane split kernels (vec_rows), for hd 64 / 128 / 256 (8 * lanes per key); false (nothing
// launched) for other head sizes.
bool launch_split_vec(const DecodeArgs& a) {
    if (a.hd == 64) launch_split<8, true>(a);
    else if (a.hd == 128) launch_split<16, true>(a);
    else if (a.hd == 256) launch_split<32, true>(a);
    else return false;
    return true;
}

// ---------------------------------------------------------------------------------------------------
// Prompt attention

constexpr int kPrefillQ = 16;         // queries per block
constexpr int kPrefillThreads = 128;  // 8 per query

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }

template <int HDMAX>
__host__ __device__ constexpr int prefill_bk() {  // keys per tile: shared memory stays under 48 KB
    return HDMAX <= 128 ? 32 : 8;
}

template <int HDMAX, class T>
__global__ void __launch_bounds__(kPrefillThreads)
    attn_prefill_kernel(const float* __restrict__ q, int ldq, int n, int pos0, int H, int Hkv, int hd,
                        float scale_log2, const T* __restrict__ kc, const T* __restrict__ vc, int64_t cache_base,
                        int kv_dim, float* __restrict__ out, int ldo) {
    constexpr int BK = prefill_bk<HDMAX>();
    constexpr int NS = BK / 8;       // scores per thread per tile
    constexpr int NC = HDMAX / 8;    // output columns per thread
    __shared__ float qT[HDMAX][kPrefillQ];   // [d][query]: a warp's 4 queries are 4 consecutive words
    __shared__ float kT[HDMAX][BK + 1];      // [d][key], padded: the transposing stores hit distinct banks
    __shared__ float vs[BK][HDMAX];          // [key][d]

    const int tile = gridDim.x - 1 - blockIdx.x;  // the longest (last) query tiles start first
    const int h = blockIdx.y;
    const int g = h / (H / Hkv);
    const int q0 = tile * kPrefillQ;
    const int nq = min(kPrefillQ, n - q0);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int qi = threadIdx.x >> 3, l8 = threadIdx.x & 7;

    for (int r = warp; r < kPrefillQ; r += kPrefillThreads / 32)
        for (int d = lane; d < HDMAX; d += 32)
            qT[d][r] = r < nq && d < hd ? q[static_cast<int64_t>(q0 + r) * ldq + h * hd + d] : 0.0f;

    // Rows past n (zero queries) act as the last real query: finite scores, never written.
    const int qpos = pos0 + q0 + min(qi, nq - 1);
    const int kend = pos0 + q0 + nq;  // keys 0 .. kend-1 are needed by this block
    const T* kp = kc + cache_base + g * hd;
    const T* vp = vc + cache_base + g * hd;

    float m = -INFINITY, l = 0.0f, acc[NC];
#pragma unroll
    for (int c = 0; c < NC; ++c) acc[c] = 0.0f;

    for (int k0 = 0; k0 < kend; k0 += BK) {
        __syncthreads();  // the previous tile's readers are done (and, first time, qT is written)
        for (int r = warp; r < BK; r += kPrefillThreads / 32) {
            const int j = k0 + r;
            for (int d = lane; d < HDMAX; d += 32) {
                float kv = 0.0f, vv = 0.0f;
                if (j < kend && d < hd) {
                    kv = to_f(kp[static_cast<int64_t>(j) * kv_dim + d]);
                    vv = to_f(vp[static_cast<int64_t>(j) * kv_dim + d]);
                }
                kT[d][r] = kv;
                vs[r][d] = vv;
            }
        }
        __syncthreads();

        float sc[NS];
#pragma unroll
        for (int c = 0; c < NS; ++c) sc[c] = 0.0f;
#pragma unroll 8
        for (int d = 0; d < hd; ++d) {
            const float qd = qT[d][qi];
#pragma unroll
            for (int c = 0; c < NS; ++c) sc[c] = fmaf(qd, kT[d][l8 + 8 * c], sc[c]);
        }
        float tmax = -INFINITY;
#pragma unroll
        for (int c = 0; c < NS; ++c) {
            const int j = k0 + l8 + 8 * c;
            sc[c] = j <= qpos ? sc[c] * scale_log2 : -INFINITY;  // causal (j <= qpos < kend)
            tmax = fmaxf(tmax, sc[c]);
        }
        for (int o = 4; o > 0; o >>= 1) tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, o));
        const float mn = fmaxf(m, tmax);  // finite: key 0 is in the first tile of every query
        const float corr = m == -INFINITY ? 0.0f : exp2f(m - mn);
        m = mn;
        l *= corr;
#pragma unroll
        for (int c = 0; c < NC; ++c) acc[c] *= corr;
#pragma unroll
        for (int c = 0; c < NS; ++c) {
            sc[c] = sc[c] == -INFINITY ? 0.0f : exp2f(sc[c] - mn);
            l += sc[c];
        }
        // acc += p . V: the weight of key (src + 8c) lives in lane src of this query's 8 lanes.
#pragma unroll
        for (int c = 0; c < NS; ++c) {
#pragma unroll
            for (int src = 0; src < 8; ++src) {
                const float p = __shfl_sync(0xffffffffu, sc[c], (lane & 24) | src);
                const float* vrow = vs[src + 8 * c];
#pragma unroll
                for (int cc = 0; cc < NC; ++cc) acc[cc] = fmaf(p, vrow[l8 + 8 * cc], acc[cc]);
            }
        }
    }

    for (int o = 4; o > 0; o >>= 1) l += __shfl_xor_sync(0xffffffffu, l, o);
    if (qi < nq) {
        const float inv = 1.0f / l;
        float* orow = out + static_cast<int64_t>(q0 + qi) * ldo + h * hd;
#pragma unroll
        for (int c = 0; c < NC; ++c) {
            const int d = l8 + 8 * c;
            if (d < hd) orow[d] = acc[c] * inv;
        }
    }
}

template <int HDMAX>
void launch_prefill(const float* q, int ldq, int n, int pos0, int slot, int layer, int H, int Hkv, int hd,
                    const KvCache& kv, float* out, int ldo, float scale_log2, cudaStream_t stream) {
    const dim3 grid((n + kPrefillQ - 1) / kPrefillQ, H);
    const int64_t base = (static_cast<int64_t>(slot) * kv.n_layers + layer) * kv.ctx * kv.kv_dim;
    if (kv.f16)
        attn_prefill_kernel<HDMAX, __half><<<grid, kPrefillThreads, 0, stream>>>(
            q, ldq, n, pos0, H, Hkv, hd, scale_log2, static_cast<const __half*>(kv.k),
            static_cast<const __half*>(kv.v), base, kv.kv_dim, out, ldo);
    else
        attn_prefill_kernel<HDMAX, float><<<grid, kPrefillThreads, 0, stream>>>(
            q, ldq, n, pos0, H, Hkv, hd, scale_log2, static_cast<const float*>(kv.k),
            static_cast<const float*>(kv.v), base, kv.kv_dim, out, ldo);
    CUDA_CHECK_LAUNCH();
}

}  // namespace

size_t attention_decode_workspace_floats(int n, int H, int hd) {
    return static_cast<size_t>(n) * H * kAttnMaxSplits * (hd + 2);
}

void attention_decode(const float* q, int ldq, int n, const int32_t* pos, const int32_t* slot, int layer, int H,
                      int Hkv, int hd, KvCache kv, float* out, int ldo, float* workspace, cudaStream_t stream) {
    if (n <= 0) return;
    const DecodeArgs a = decode_args("attention_decode", q, ldq, n, pos, slot, layer, H, Hkv, hd, kv, workspace, stream);
    // 16-byte q/K/V loads (8 values per lane) when hd is 8 * (lanes per key) and every row start is aligned;
    // other head sizes take the scalar variant.
    if (!(vec_rows(q, ldq, kv) && launch_split_vec(a))) {
        if (hd <= 64) launch_split<8, false>(a);
        else launch_split<32, false>(a);
    }
    launch(attn_combine_kernel, dim3(H, n), hd <= 64 ? 64 : 128, 0, stream, a.ws_acc, a.ws_ml, pos, H, hd, out, ldo);
}

void attention_prefill(const float* q, int ldq, int n, int pos0, int slot, int layer, int H, int Hkv, int hd,
                       KvCache kv, float* out, int ldo, cudaStream_t stream) {
    if (n <= 0) return;
    check_heads(H, Hkv, hd, kv, "attention_prefill");
    if (H > 65535) throw std::invalid_argument("attention_prefill: too many heads");
    const float sl2 = scale_log2_for(hd);
    if (hd <= 64) launch_prefill<64>(q, ldq, n, pos0, slot, layer, H, Hkv, hd, kv, out, ldo, sl2, stream);
    else if (hd <= 128) launch_prefill<128>(q, ldq, n, pos0, slot, layer, H, Hkv, hd, kv, out, ldo, sl2, stream);
    else launch_prefill<256>(q, ldq, n, pos0, slot, layer, H, Hkv, hd, kv, out, ldo, sl2, stream);
}

}  // namespace cuda
}  // namespace bllama

// AVX2 kernels (no VNNI): the same 2-bit plane layout as AVX-512, one ymm = 8 rows x 4 columns.
// vpmaddubsw multiplies unsigned codes 0..2 by int8 activations into int16 pairs, which are summed in
// int16 over one 256-column block and only then widened with vpmaddwd: each vpmaddubsw lane lies in
// [-512, 508] and a block adds 64 of them per lane, so the int16 sum stays in [-32768, 32512]: exact.
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <utility>
#include <vector>

#include "kernels/pack.h"
#include "kernels/simd.h"
#include "kernels/ternary_avx2.h"

namespace bllama {

namespace {

inline float hmax(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
}

inline int32_t hsum_i32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

// ---- activations -----------------------------------------------------------------------------

}  // namespace

void quantize_rows_avx2(const float* x, int64_t t0, int64_t t1, int64_t cols, QuantizedActs& out) {
    const int64_t nb = (cols + kBlock - 1) / kBlock;
    const __m256 sign = _mm256_set1_ps(-0.0f), lo = _mm256_set1_ps(-128.0f), hi = _mm256_set1_ps(127.0f);
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int64_t t = t0; t < t1; ++t) {
        const float* xt = x + t * cols;
        __m256 m = _mm256_setzero_ps();
        int64_t k = 0;
        for (; k + 8 <= cols; k += 8) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(xt + k)));
        float amax = hmax(m);
        for (; k < cols; ++k) amax = std::max(amax, std::fabs(xt[k]));
        const float a = (1.0f / std::max(amax, 1e-5f)) * 127.0f;  // as PyTorch: see ref.cpp
        out.act_scale[static_cast<size_t>(t)] = a;
        const __m256 av = _mm256_set1_ps(a);
        int8_t* qt = out.q.data() + t * cols;
        auto q8 = [&](int64_t i) {
            __m256 v = _mm256_mul_ps(_mm256_loadu_ps(xt + i), av);
            v = _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            return _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(v, lo), hi));
        };
        int32_t total = 0;
        for (int64_t b = 0; b < nb; ++b) {
            const int64_t end = std::min(cols, (b + 1) * kBlock);
            __m256i s = _mm256_setzero_si256();
            for (k = b * kBlock; k + 32 <= end; k += 32) {
                const __m256i i0 = q8(k), i1 = q8(k + 8), i2 = q8(k + 16), i3 = q8(k + 24);
                s = _mm256_add_epi32(s, _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3)));
                // packs work per 128-bit lane; the permute restores element order.
                const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
                _mm256_storeu_si256(reinterpret_cast<__m256i*>(qt + k), _mm256_permutevar8x32_epi32(p, perm));
            }
            int32_t bs = hsum_i32(s);
            for (; k < end; ++k) {
                float v = std::nearbyint(xt[k] * a);
                v = v < -128.0f ? -128.0f : (v > 127.0f ? 127.0f : v);
                qt[k] = static_cast<int8_t>(v);
                bs += qt[k];
            }
            out.block_sums[static_cast<size_t>(t * nb + b)] = bs;
            total += bs;
        }
        out.row_sums[static_cast<size_t>(t)] = total;
    }
}

namespace {

// ---- ternary tiles: R halves (8 rows each) x N tokens ---------------------------------------------

struct TileArgs {
    const TernaryMatrix::Impl* w;
    const QuantizedActs* x;
    float* y;
    int64_t ldy, rb, re;
    int64_t h0, t0;  // first 8-row half, first token
    const uint8_t* panel = nullptr;  // set: the 2-bit codes of the tile's one group (not w's own)
    // Decode: the end of the range's codes, up to which the stream prefetches (past it lie other threads' rows).
    const uint8_t* stream_end = nullptr;
};

template <int J>
inline __m256i plane(__m256i w, __m256i m3) {
    if constexpr (J == 0) return _mm256_and_si256(w, m3);
    else return _mm256_and_si256(_mm256_srli_epi16(w, 2 * J), m3);
}

// int16 sums of one 256-column block into acc16 (reset here).
// stream_end: prefetch the stream kGemvPrefetch ahead of wp[0], up to there (null: no prefetch).
template <int R, int N>
inline void block_dot16(__m256i (&acc16)[R][N], const uint8_t* const (&wp)[R], const int8_t* const (&qp)[N], int64_t b,
                        const uint8_t* stream_end) {
    const __m256i m3 = _mm256_set1_epi8(3);
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < N; ++t) acc16[r][t] = _mm256_setzero_si256();
    constexpr int64_t kChunksPerBlock = kBlock / kChunkCols;
    for (int64_t c = b * kChunksPerBlock; c < (b + 1) * kChunksPerBlock; ++c) {
        __m256i wv[R];
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) wv[r] = _mm256_load_si256(reinterpret_cast<const __m256i*>(wp[r] + c * kChunkBytes));
        const uint8_t* ahead = wp[0] + c * kChunkBytes + kGemvPrefetch;
        if (ahead < stream_end) _mm_prefetch(reinterpret_cast<const char*>(ahead), _MM_HINT_T0);
        const int64_t off = c * kChunkCols;
        auto step = [&](auto jc) {
            constexpr int J = decltype(jc)::value;
            __m256i xb[N];
#pragma GCC unroll 8
            for (int t = 0; t < N; ++t) xb[t] = _mm256_set1_epi32(load_i32(qp[t] + off + 4 * J));
#pragma GCC unroll 8
            for (int r = 0; r < R; ++r) {
                const __m256i code = plane<J>(wv[r], m3);
#pragma GCC unroll 8
                for (int t = 0; t < N; ++t) acc16[r][t] = _mm256_add_epi16(acc16[r][t], _mm256_maddubs_epi16(code, xb[t]));
            }
        };
        step(std::integral_constant<int, 0>{});
        step(std::integral_constant<int, 1>{});
        step(std::integral_constant<int, 2>{});
        step(std::integral_constant<int, 3>{});
    }
}

template <int R, int N>
inline void tile_ptrs(const TileArgs& a, const uint8_t* (&wp)[R], const int8_t* (&qp)[N]) {
    for (int r = 0; r < R; ++r) {
        const int64_t h = a.h0 + r;
        wp[r] = (a.panel ? a.panel : a.w->group_ptr(h / 2)) + (h % 2) * 32;
    }
    for (int t = 0; t < N; ++t) qp[t] = a.x->q.data() + (a.t0 + t) * a.w->cols;
}

template <int R, int N>
void tile_uniform(const TileArgs& a) {
    const TernaryMatrix::Impl& w = *a.w;
    const QuantizedActs& x = *a.x;
    const uint8_t* wp[R];
    const int8_t* qp[N];
    tile_ptrs<R, N>(a, wp, qp);
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i acc[R][N];
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < N; ++t) acc[r][t] = _mm256_setzero_si256();
    for (int64_t b = 0; b < w.nb; ++b) {
        __m256i acc16[R][N];
        block_dot16<R, N>(acc16, wp, qp, b, a.stream_end);
        for (int r = 0; r < R; ++r)
            for (int t = 0; t < N; ++t) acc[r][t] = _mm256_add_epi32(acc[r][t], _mm256_madd_epi16(acc16[r][t], ones));
    }
    for (int t = 0; t < N; ++t) {
        const int64_t tt = a.t0 + t;
        const __m256i rs = _mm256_set1_epi32(x.row_sums[static_cast<size_t>(tt)]);
        const __m256 f = _mm256_set1_ps(w.scale / x.act_scale[static_cast<size_t>(tt)]);
        for (int r = 0; r < R; ++r) {
            const int64_t h = a.h0 + r;
            const __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(acc[r][t], rs)), f);
            store_half(a.y + tt * a.ldy + h * 8, v, h, a.rb, a.re);
        }
    }
}

template <int R, int N>
void tile_blocks(const TileArgs& a) {
    const TernaryMatrix::Impl& w = *a.w;
    const QuantizedActs& x = *a.x;
    const uint8_t* wp[R];
    const int8_t* qp[N];
    tile_ptrs<R, N>(a, wp, qp);
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 s[R][N];
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < N; ++t) s[r][t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < w.nb; ++b) {
        __m256i acc16[R][N];
        block_dot16<R, N>(acc16, wp, qp, b, a.stream_end);
        for (int r = 0; r < R; ++r) {
            const int64_t h = a.h0 + r;
            const __m256 d = _mm256_load_ps(w.d_ptr(h / 2) + b * kGroupRows + (h % 2) * 8);
            for (int t = 0; t < N; ++t) {
                const size_t tt = static_cast<size_t>(a.t0 + t);
                const __m256i v = _mm256_sub_epi32(_mm256_madd_epi16(acc16[r][t], ones),
                                                   _mm256_set1_epi32(x.block_sums[tt * static_cast<size_t>(w.nb) + static_cast<size_t>(b)]));
                const __m256 p = _mm256_mul_ps(_mm256_cvtepi32_ps(v), _mm256_div_ps(d, _mm256_set1_ps(x.act_scale[tt])));
                s[r][t] = _mm256_add_ps(s[r][t], no_contract(p));
            }
        }
    }
    for (int t = 0; t < N; ++t)
        for (int r = 0; r < R; ++r) {
            const int64_t h = a.h0 + r;
            store_half(a.y + (a.t0 + t) * a.ldy + h * 8, s[r][t], h, a.rb, a.re);
        }
}

using TileFn = void (*)(const TileArgs&);
// 16 ymm: uniform holds 2*R*N accumulators (int16 + int32) + R weights + N broadcasts + 2 constants.
constexpr int kMaxR = 2, kMaxN = 2;

template <int R, int... Ns>
constexpr std::array<TileFn, sizeof...(Ns)> uniform_row(std::integer_sequence<int, Ns...>) {
    return {tile_uniform<R, Ns + 1>...};
}
template <int R, int... Ns>
constexpr std::array<TileFn, sizeof...(Ns)> blocks_row(std::integer_sequence<int, Ns...>) {
    return {tile_blocks<R, Ns + 1>...};
}
const std::array<TileFn, kMaxN> kUniform[kMaxR] = {uniform_row<1>(std::make_integer_sequence<int, kMaxN>{}),
                                                  uniform_row<2>(std::make_integer_sequence<int, kMaxN>{})};
const std::array<TileFn, kMaxN> kBlocks[kMaxR] = {blocks_row<1>(std::make_integer_sequence<int, kMaxN>{}),
                                                 blocks_row<2>(std::make_integer_sequence<int, kMaxN>{})};

// ---- prompt GEMM: a group's block unpacked once, every token tile over it ---------------------------
// The tiles above unpack each 64 bytes of codes (14 shifts and ands) for every pair of tokens, and that unpacking
// is a third of their vector ops. Here one 256-column block of a 16-row group is unpacked once into bytes (4 KiB,
// in L1) and each token then costs only a vpmaddubsw and an add per 8 rows x 4 columns. The int32 (uniform) or
// fp32 (per-block) sums of the group's 16 rows x n tokens live in memory between blocks.

constexpr int kPanelN = 4;                     // tokens per tile: 8 int16 sums + 2 code vectors + a broadcast
constexpr int64_t kPanelSteps = kBlock / 4;    // a step is 4 columns: one dword of activations
constexpr int64_t kPanelBytes = kPanelSteps * 64;
// From 8 tokens the unpacking is paid back: 1.02x the tiles above at 8, 1.14x at 32, 1.25x at 128; 0.92x at 4
// (one thread, 1.7B's shapes, alternating calls; NOTES-kernels.md, "Seventh session").
constexpr int64_t kPanelMinTokens = 8;

// Block b of a group's 2-bit stream into out: step s, half h (rows 8h..8h+7) at out + (2s + h) * 32, one code a byte.
inline void unpack_block(const uint8_t* codes, int64_t b, uint8_t* out) {
    const __m256i m3 = _mm256_set1_epi8(3);
    constexpr int64_t kChunks = kBlock / kChunkCols;
    for (int64_t c = 0; c < kChunks; ++c) {
        const uint8_t* src = codes + (b * kChunks + c) * kChunkBytes;
        for (int h = 0; h < 2; ++h) {
            const __m256i w = _mm256_load_si256(reinterpret_cast<const __m256i*>(src + h * 32));
            uint8_t* o = out + (8 * c + h) * 32;  // step 4c + J lies at o + 64 J
            _mm256_store_si256(reinterpret_cast<__m256i*>(o), plane<0>(w, m3));
            _mm256_store_si256(reinterpret_cast<__m256i*>(o + 64), plane<1>(w, m3));
            _mm256_store_si256(reinterpret_cast<__m256i*>(o + 128), plane<2>(w, m3));
            _mm256_store_si256(reinterpret_cast<__m256i*>(o + 192), plane<3>(w, m3));
        }
    }
}

struct PanelArgs {
    const TernaryMatrix::Impl* w;
    const QuantizedActs* x;
    const uint8_t* panel;  // unpack_block's output
    int64_t g, b, t0;
    void* sums;            // [n_tokens][16]: int32 (uniform) or float (per-block scales)
};

// acc[h][t] += vpmaddubsw(w_h, x_t) for two row halves x four tokens, in asm: gcc 12 copies every accumulator after
// its add (8 extra moves and a spill a step), which held the intrinsics version to ~0.75x of this one in an
// L1-resident loop on Zen 3 (bench/NOTES-kernels.md, "Seventh session").
inline void madd_step4(__m256i& a00, __m256i& a01, __m256i& a02, __m256i& a03, __m256i& a10, __m256i& a11,
                       __m256i& a12, __m256i& a13, __m256i w0, __m256i w1, __m256i x0, __m256i x1, __m256i x2,
                       __m256i x3) {
    __m256i p0, p1;
    __asm__(
        "vpmaddubsw %[x0], %[w0], %[p0]\n\t"
        "vpmaddubsw %[x0], %[w1], %[p1]\n\t"
        "vpaddw %[p0], %[a00], %[a00]\n\t"
        "vpaddw %[p1], %[a10], %[a10]\n\t"
        "vpmaddubsw %[x1], %[w0], %[p0]\n\t"
        "vpmaddubsw %[x1], %[w1], %[p1]\n\t"
        "vpaddw %[p0], %[a01], %[a01]\n\t"
        "vpaddw %[p1], %[a11], %[a11]\n\t"
        "vpmaddubsw %[x2], %[w0], %[p0]\n\t"
        "vpmaddubsw %[x2], %[w1], %[p1]\n\t"
        "vpaddw %[p0], %[a02], %[a02]\n\t"
        "vpaddw %[p1], %[a12], %[a12]\n\t"
        "vpmaddubsw %[x3], %[w0], %[p0]\n\t"
        "vpmaddubsw %[x3], %[w1], %[p1]\n\t"
        "vpaddw %[p0], %[a03], %[a03]\n\t"
        "vpaddw %[p1], %[a13], %[a13]"
        : [a00] "+x"(a00), [a01] "+x"(a01), [a02] "+x"(a02), [a03] "+x"(a03), [a10] "+x"(a10), [a11] "+x"(a11),
          [a12] "+x"(a12), [a13] "+x"(a13), [p0] "=&x"(p0), [p1] "=&x"(p1)
        : [w0] "x"(w0), [w1] "x"(w1), [x0] "x"(x0), [x1] "x"(x1), [x2] "x"(x2), [x3] "x"(x3));
}

// int16 sums of one block for two row halves x N tokens (qp: each token's activations at the block's start).
// 64 steps per lane of [-512, 508] each: within int16 (the file comment's bound).
template <int N>
inline void panel_dot(const uint8_t* panel, const int8_t* const (&qp)[N], __m256i (&acc)[2][N]) {
    if constexpr (N == 4) {
        __m256i a00 = _mm256_setzero_si256(), a01 = a00, a02 = a00, a03 = a00, a10 = a00, a11 = a00, a12 = a00,
                a13 = a00;
        for (int64_t s = 0; s < kPanelSteps; ++s) {
            const __m256i w0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(panel + s * 64));
            const __m256i w1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(panel + s * 64 + 32));
            madd_step4(a00, a01, a02, a03, a10, a11, a12, a13, w0, w1, bcast(qp[0] + 4 * s), bcast(qp[1] + 4 * s),
                       bcast(qp[2] + 4 * s), bcast(qp[3] + 4 * s));
        }
        acc[0][0] = a00, acc[0][1] = a01, acc[0][2] = a02, acc[0][3] = a03;
        acc[1][0] = a10, acc[1][1] = a11, acc[1][2] = a12, acc[1][3] = a13;
    } else {
        for (int h = 0; h < 2; ++h)
            for (int t = 0; t < N; ++t) acc[h][t] = _mm256_setzero_si256();
        for (int64_t s = 0; s < kPanelSteps; ++s) {
            const __m256i w0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(panel + s * 64));
            const __m256i w1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(panel + s * 64 + 32));
            for (int t = 0; t < N; ++t) {
                const __m256i xb = bcast(qp[t] + 4 * s);
                acc[0][t] = _mm256_add_epi16(acc[0][t], _mm256_maddubs_epi16(w0, xb));
                acc[1][t] = _mm256_add_epi16(acc[1][t], _mm256_maddubs_epi16(w1, xb));
            }
        }
    }
}

template <int N, bool Uniform>
void panel_tile(const PanelArgs& a) {
    const TernaryMatrix::Impl& w = *a.w;
    const QuantizedActs& x = *a.x;
    const int8_t* qp[N];
    for (int t = 0; t < N; ++t) qp[t] = x.q.data() + (a.t0 + t) * w.cols + a.b * kBlock;
    __m256i acc[2][N];
    panel_dot<N>(a.panel, qp, acc);
    const __m256i ones = _mm256_set1_epi16(1);
    for (int t = 0; t < N; ++t) {
        const size_t tt = static_cast<size_t>(a.t0 + t);
        for (int h = 0; h < 2; ++h) {
            const __m256i v = _mm256_madd_epi16(acc[h][t], ones);
            if constexpr (Uniform) {
                __m256i* p = static_cast<__m256i*>(a.sums) + tt * 2 + h;
                _mm256_store_si256(p, _mm256_add_epi32(_mm256_load_si256(p), v));
            } else {
                float* p = static_cast<float*>(a.sums) + (tt * 2 + h) * 8;
                const __m256 d = _mm256_load_ps(w.d_ptr(a.g) + a.b * kGroupRows + h * 8);
                const __m256i c = _mm256_sub_epi32(v, _mm256_set1_epi32(x.block_sums[tt * static_cast<size_t>(w.nb) + static_cast<size_t>(a.b)]));
                const __m256 q = _mm256_mul_ps(_mm256_cvtepi32_ps(c), _mm256_div_ps(d, _mm256_set1_ps(x.act_scale[tt])));
                _mm256_store_ps(p, _mm256_add_ps(_mm256_load_ps(p), no_contract(q)));
            }
        }
    }
}

using PanelFn = void (*)(const PanelArgs&);
template <bool Uniform, int... Ns>
constexpr std::array<PanelFn, sizeof...(Ns)> panel_row(std::integer_sequence<int, Ns...>) {
    return {panel_tile<Ns + 1, Uniform>...};
}
const std::array<PanelFn, kPanelN> kPanel[2] = {panel_row<false>(std::make_integer_sequence<int, kPanelN>{}),
                                                panel_row<true>(std::make_integer_sequence<int, kPanelN>{})};

// Rows of group g in [rb, re), every token, from `codes` (the group's 2-bit stream: w's own or an expanded one).
void gemm_group_panel(const TernaryMatrix::Impl& w, const uint8_t* codes, int64_t g, const QuantizedActs& x, float* y,
                      int64_t ldy, int64_t rb, int64_t re) {
    alignas(64) uint8_t panel[kPanelBytes];
    thread_local std::vector<float, AlignedAllocator<float>> sums;  // int32 bits when uniform: zero is zero either way
    const size_t n = static_cast<size_t>(x.n_tokens);
    sums.assign(n * kGroupRows, 0.0f);
    PanelArgs a{&w, &x, panel, g, 0, 0, sums.data()};
    for (a.b = 0; a.b < w.nb; ++a.b) {
        unpack_block(codes, a.b, panel);
        // The next block's codes come from memory while this one's tiles run: unpacking waited on them (a fifth of
        // this function's samples) with only the hardware prefetchers.
        if (a.b + 1 < w.nb)
            for (int64_t off = 0; off < kBlock * 4; off += 64)
                _mm_prefetch(reinterpret_cast<const char*>(codes + (a.b + 1) * kBlock * 4 + off), _MM_HINT_T0);
        for (a.t0 = 0; a.t0 < x.n_tokens; a.t0 += kPanelN)
            kPanel[w.uniform][std::min<int64_t>(kPanelN, x.n_tokens - a.t0) - 1](a);
    }
    for (size_t t = 0; t < n; ++t)
        for (int h = 0; h < 2; ++h) {
            const int64_t hh = 2 * g + h;
            if (hh * 8 >= re || hh * 8 + 8 <= rb) continue;
            float* dst = y + static_cast<int64_t>(t) * ldy + hh * 8;
            __m256 v;
            if (w.uniform) {
                const __m256i acc = _mm256_load_si256(reinterpret_cast<const __m256i*>(sums.data()) + t * 2 + h);
                v = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(acc, _mm256_set1_epi32(x.row_sums[t]))),
                                  _mm256_set1_ps(w.scale / x.act_scale[t]));
            } else {
                v = _mm256_load_ps(sums.data() + (t * 2 + h) * 8);
            }
            store_half(dst, v, hh, rb, re);
        }
}

}  // namespace

void ternary_matmul_avx2(const TernaryMatrix& m, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb,
                         int64_t re) {
    const TernaryMatrix::Impl& w = m.impl();
    if (x.n_tokens >= kPanelMinTokens) {
        for (int64_t g = rb / kGroupRows; g < (re + kGroupRows - 1) / kGroupRows; ++g)
            gemm_group_panel(w, w.group_ptr(g), g, x, y, ldy, rb, re);
        return;
    }
    const int64_t h_begin = rb / 8, h_end = (re + 7) / 8;
    // Both halves of one group per tile: the matrix is read as one linear stream; 1 half was slower and 4
    // spill (bench/NOTES-kernels.md, "Measurements from code comments").
    const int maxr = 2;
    TileArgs a{&w, &x, y, ldy, rb, re, 0, 0};
    a.stream_end = w.group_ptr((h_end + 1) / 2);
    for (int64_t h = h_begin; h < h_end; h += maxr) {
        const int r = static_cast<int>(std::min<int64_t>(maxr, h_end - h));
        a.h0 = h;
        for (int64_t t = 0; t < x.n_tokens; t += kMaxN) {
            const int n = static_cast<int>(std::min<int64_t>(kMaxN, x.n_tokens - t));
            a.t0 = t;
            (w.uniform ? kUniform[r - 1][n - 1] : kBlocks[r - 1][n - 1])(a);
        }
    }
}

void ternary_gemm_group_avx2(const TernaryMatrix& m, const uint8_t* panel, int64_t g, const QuantizedActs& x, float* y,
                             int64_t ldy, int64_t rb, int64_t re) {
    const TernaryMatrix::Impl& w = m.impl();
    if (x.n_tokens >= kPanelMinTokens) return gemm_group_panel(w, panel, g, x, y, ldy, rb, re);
    const int64_t h0 = std::max(2 * g, rb / 8), h1 = std::min(2 * g + 2, (re + 7) / 8);
    if (h1 <= h0) return;
    const int r = static_cast<int>(h1 - h0);
    TileArgs a{&w, &x, y, ldy, rb, re, h0, 0, panel};
    for (int64_t t = 0; t < x.n_tokens; t += kMaxN) {
        const int n = static_cast<int>(std::min<int64_t>(kMaxN, x.n_tokens - t));
        a.t0 = t;
        (w.uniform ? kUniform[r - 1][n - 1] : kBlocks[r - 1][n - 1])(a);
    }
}

}  // namespace bllama

#endif

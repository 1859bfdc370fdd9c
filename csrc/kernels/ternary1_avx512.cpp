// AVX-512 VNNI kernels for the base-3 layout (pack.h: five trits per byte, 1.625 bits per weight). A 64-byte
// chunk gives its planes one at a time: two unsigned byte compares read the top trit of x (the codes 0..2 of 16
// rows x 4 columns, which vpdpbusd multiplies against a broadcast activation dword), and x + 2x moves the next
// trit to the top. As in ternary_avx512.cpp, sum(code * q) - sum(q) is the ternary product.
// Decode (up to 4 tokens) streams the packed bytes; the prompt GEMM expands an R-group panel once into the 2-bit
// layout in a per-thread buffer and runs ternary_avx512.cpp's tiles over it (a buffer of plain codes, 1 byte a
// weight, measured slower: 4x the L2 traffic per token tile).
#if defined(__x86_64__) || defined(__i386__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#ifndef __clang__
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "kernels/cpu_features.h"
#include "kernels/pack.h"
#include "kernels/simd.h"
#include "kernels/ternary_avx512.h"

namespace bllama {

namespace {

struct Trits {
    __m512i t1 = _mm512_set1_epi8(86), t2 = _mm512_set1_epi8(static_cast<char>(171)), one = _mm512_set1_epi8(1);
    // The top trit of every byte: floor(3x / 256) = [x >= 86] + [x >= 171].
    __m512i top(__m512i x) const {
        const __m512i c = _mm512_maskz_mov_epi8(_mm512_cmpge_epu8_mask(x, t1), one);
        return _mm512_mask_add_epi8(c, _mm512_cmpge_epu8_mask(x, t2), c, one);
    }
    static __m512i next(__m512i x) { return _mm512_add_epi8(x, _mm512_add_epi8(x, x)); }  // 3x mod 256
};

struct Args {
    const TernaryMatrix::Impl* w;
    const QuantizedActs* x;
    float* y;
    int64_t ldy, rb, re;
};

// ---- decode: N tokens (1..4) against one 16-row group, streamed -------------------------------------------

// acc[t][n]: token t, plane n (the tail chunk's four planes share the first four).
template <int N, int K>
inline void dot_chunk(__m512i (&acc)[N][5], const uint8_t* src, const int8_t* const (&qp)[N], int64_t col,
                      const Trits& tr) {
    _mm_prefetch(reinterpret_cast<const char*>(src + kGemvPrefetch), _MM_HINT_T0);
    __m512i x = _mm512_load_si512(src);
#pragma GCC unroll 5
    for (int n = 0; n < K; ++n) {
        const __m512i c = tr.top(x);
#pragma GCC unroll 4
        for (int t = 0; t < N; ++t) acc[t][n] = _mm512_dpbusd_epi32(acc[t][n], c, bcast(qp[t] + col + 4 * n));
        if (n + 1 < K) x = Trits::next(x);
    }
}

template <int N>
inline void dot_block(__m512i (&acc)[N][5], const uint8_t* blk, const int8_t* const (&qp)[N], int64_t col0,
                      const Trits& tr) {
    for (int64_t c = 0; c < kB3FullChunks; ++c)
        dot_chunk<N, 5>(acc, blk + c * kChunkBytes, qp, col0 + c * kB3ChunkCols, tr);
    dot_chunk<N, 4>(acc, blk + kB3FullChunks * kChunkBytes, qp, col0 + kB3TailCol, tr);
}

template <int N>
inline __m512i sum5(const __m512i (&acc)[N][5], int t) {
    return _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(acc[t][0], acc[t][1]), _mm512_add_epi32(acc[t][2], acc[t][3])),
                            acc[t][4]);
}

template <int N, bool PerBlock>
void gemv_group(const Args& a, int64_t g, int64_t t0) {
    const TernaryMatrix::Impl& w = *a.w;
    const QuantizedActs& x = *a.x;
    const uint8_t* wp = w.group_ptr3(g);
    const int8_t* qp[N];
    for (int t = 0; t < N; ++t) qp[t] = x.q.data() + (t0 + t) * w.cols;
    const Trits tr;
    __m512i acc[N][5];
    auto reset = [&] {
        for (int t = 0; t < N; ++t)
            for (int n = 0; n < 5; ++n) acc[t][n] = _mm512_setzero_si512();
    };
    const __mmask16 mask = row_mask(g, a.rb, a.re);
    if constexpr (!PerBlock) {
        reset();
        for (int64_t b = 0; b < w.nb; ++b) dot_block<N>(acc, wp + b * kB3BlockBytes, qp, b * kBlock, tr);
        for (int t = 0; t < N; ++t) {
            const size_t tt = static_cast<size_t>(t0 + t);
            const __m512i rs = _mm512_set1_epi32(x.row_sums[tt]);
            const __m512 f = _mm512_set1_ps(w.scale / x.act_scale[tt]);
            const __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(sum5<N>(acc, t), rs)), f);
            _mm512_mask_storeu_ps(a.y + static_cast<int64_t>(tt) * a.ldy + g * kGroupRows, mask, v);
        }
    } else {
        __m512 s[N];
        for (int t = 0; t < N; ++t) s[t] = _mm512_setzero_ps();
        for (int64_t b = 0; b < w.nb; ++b) {
            reset();
            dot_block<N>(acc, wp + b * kB3BlockBytes, qp, b * kBlock, tr);
            const __m512 d = _mm512_load_ps(w.d_ptr(g) + b * kGroupRows);
            for (int t = 0; t < N; ++t) {
                const size_t tt = static_cast<size_t>(t0 + t);
                const __m512i bs = _mm512_set1_epi32(x.block_sums[tt * static_cast<size_t>(w.nb) + static_cast<size_t>(b)]);
                const __m512 p = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(sum5<N>(acc, t), bs)),
                                               _mm512_div_ps(d, _mm512_set1_ps(x.act_scale[tt])));
                s[t] = _mm512_add_ps(s[t], no_contract(p));
            }
        }
        for (int t = 0; t < N; ++t) _mm512_mask_storeu_ps(a.y + (t0 + t) * a.ldy + g * kGroupRows, mask, s[t]);
    }
}

// ---- prompt: R groups expanded once to the 2-bit layout, then the 2-bit GEMM tiles --------------------------
// A block's 64 planes are the same in both layouts (plane m = columns [4m, 4m + 4)); base-3 chunk c holds planes
// 5c .. 5c + 4, 2-bit chunk j planes 4j .. 4j + 3. So four base-3 chunks A..D (20 planes) are five 2-bit chunks:
//   [a0 a1 a2 a3] [a4 b0 b1 b2] [b3 b4 c0 c1] [c2 c3 c4 d0] [d1 d2 d3 d4]
// and the 4-trit tail chunk is the last 2-bit chunk [e0 e1 e2 e3].

// With VBMI each byte of those is two table lookups (base-3 byte -> its trits' 2-bit fields at their place in the
// output byte) and an OR: ~90 instructions per 16 x 256 block instead of ~500 for decoding 64 planes by compares,
// which cost 4-6% of a 128-token GEMM (bench/NOTES-kernels.md, "TQ1_0 prompt").
struct ExpandTables {
    // kA0 = a0..a3 at fields 0..3 (also the tail chunk's), kA1 = a4 at 0, kB1 = b0..b2 at 1..3, kB2 = b3 b4 at 0 1,
    // kC2 = c0 c1 at 2 3, kC3 = c2..c4 at 0..2, kD3 = d0 at 3, kD4 = d1..d4 at 0..3.
    enum { kA0, kA1, kB1, kB2, kC2, kC3, kD3, kD4, kCount };
    alignas(64) uint8_t t[kCount][256];
    ExpandTables() {
        // {first trit, count, first field} of each table.
        static constexpr int kSpec[kCount][3] = {{0, 4, 0}, {4, 1, 0}, {0, 3, 1}, {3, 2, 0},
                                                 {0, 2, 2}, {2, 3, 0}, {0, 1, 3}, {1, 4, 0}};
        for (int i = 0; i < kCount; ++i)
            for (int b = 0; b < 256; ++b) {
                int v = 0;
                for (int n = 0; n < kSpec[i][1]; ++n)
                    v |= base3_trit(static_cast<uint8_t>(b), kSpec[i][0] + n) << (2 * (kSpec[i][2] + n));
                t[i][b] = static_cast<uint8_t>(v);
            }
    }
};

const ExpandTables& expand_tables() {
    static const ExpandTables t;
    return t;
}

// table[x] for every byte: vpermi2b looks up 128 entries (index bits 0..6), the top bit picks the half.
__attribute__((target("avx512vbmi"))) inline __m512i lookup(const uint8_t* table, __m512i x, __mmask64 top) {
    const __m512i lo = _mm512_permutex2var_epi8(_mm512_load_si512(table), x, _mm512_load_si512(table + 64));
    const __m512i hi = _mm512_permutex2var_epi8(_mm512_load_si512(table + 128), x, _mm512_load_si512(table + 192));
    return _mm512_mask_blend_epi8(top, lo, hi);
}

__attribute__((target("avx512vbmi"))) void expand_group_vbmi(const TernaryMatrix::Impl& w, int64_t g, uint8_t* out) {
    const ExpandTables& T = expand_tables();
    const uint8_t* wp = w.group_ptr3(g);
    for (int64_t b = 0; b < w.nb; ++b) {
        const uint8_t* blk = wp + b * kB3BlockBytes;
        uint8_t* ob = out + b * kBlock * 4;
        for (int64_t k = 0; k < kB3FullChunks / 4; ++k) {
            const __m512i A = _mm512_load_si512(blk + (4 * k) * kChunkBytes), B = _mm512_load_si512(blk + (4 * k + 1) * kChunkBytes),
                          C = _mm512_load_si512(blk + (4 * k + 2) * kChunkBytes), D = _mm512_load_si512(blk + (4 * k + 3) * kChunkBytes);
            const __mmask64 ta = _mm512_movepi8_mask(A), tb = _mm512_movepi8_mask(B), tc = _mm512_movepi8_mask(C),
                            td = _mm512_movepi8_mask(D);
            uint8_t* o = ob + 5 * k * kChunkBytes;
            _mm512_store_si512(o, lookup(T.t[ExpandTables::kA0], A, ta));
            _mm512_store_si512(o + kChunkBytes, _mm512_or_si512(lookup(T.t[ExpandTables::kA1], A, ta), lookup(T.t[ExpandTables::kB1], B, tb)));
            _mm512_store_si512(o + 2 * kChunkBytes, _mm512_or_si512(lookup(T.t[ExpandTables::kB2], B, tb), lookup(T.t[ExpandTables::kC2], C, tc)));
            _mm512_store_si512(o + 3 * kChunkBytes, _mm512_or_si512(lookup(T.t[ExpandTables::kC3], C, tc), lookup(T.t[ExpandTables::kD3], D, td)));
            _mm512_store_si512(o + 4 * kChunkBytes, lookup(T.t[ExpandTables::kD4], D, td));
        }
        const __m512i E = _mm512_load_si512(blk + kB3FullChunks * kChunkBytes);
        _mm512_store_si512(ob + (kBlock / kChunkCols - 1) * kChunkBytes, lookup(T.t[ExpandTables::kA0], E, _mm512_movepi8_mask(E)));
    }
}

// Without VBMI (Cascade Lake): every plane decoded by compares, then four planes to a byte. Codes are at most 2, so
// 16-bit shifts never carry into the neighbouring byte.
void expand_group_compare(const TernaryMatrix::Impl& w, int64_t g, uint8_t* out) {
    const Trits tr;
    const uint8_t* wp = w.group_ptr3(g);
    constexpr int64_t kPlanes = kBlock / 4;  // 64 per block
    for (int64_t b = 0; b < w.nb; ++b) {
        const uint8_t* blk = wp + b * kB3BlockBytes;
        __m512i p[kPlanes];
        for (int64_t c = 0; c <= kB3FullChunks; ++c) {
            const int k = c < kB3FullChunks ? 5 : 4;
            __m512i x = _mm512_load_si512(blk + c * kChunkBytes);
            for (int n = 0; n < k; ++n) {
                p[c * 5 + n] = tr.top(x);
                x = Trits::next(x);
            }
        }
        uint8_t* ob = out + b * kBlock * 4;
        for (int64_t j = 0; j < kPlanes / 4; ++j) {
            const __m512i v = _mm512_or_si512(_mm512_or_si512(p[4 * j], _mm512_slli_epi16(p[4 * j + 1], 2)),
                                              _mm512_or_si512(_mm512_slli_epi16(p[4 * j + 2], 4), _mm512_slli_epi16(p[4 * j + 3], 6)));
            _mm512_store_si512(ob + j * kChunkBytes, v);
        }
    }
}

}  // namespace

void expand_base3_group_avx512(const TernaryMatrix& m, int64_t g, uint8_t* out, bool vbmi) {
    (vbmi ? expand_group_vbmi : expand_group_compare)(m.impl(), g, out);
}

void ternary1_matmul_avx512(const TernaryMatrix& m, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb,
                            int64_t re) {
    const TernaryMatrix::Impl& w = m.impl();
    const int64_t g_begin = rb / kGroupRows, g_end = (re + kGroupRows - 1) / kGroupRows;
    const Args a{&w, &x, y, ldy, rb, re};
    if (x.n_tokens <= 4) {
        using GemvFn = void (*)(const Args&, int64_t, int64_t);
        static const GemvFn kGemv[2][4] = {
            {gemv_group<1, false>, gemv_group<2, false>, gemv_group<3, false>, gemv_group<4, false>},
            {gemv_group<1, true>, gemv_group<2, true>, gemv_group<3, true>, gemv_group<4, true>}};
        const GemvFn f = kGemv[w.uniform ? 0 : 1][x.n_tokens - 1];
        for (int64_t g = g_begin; g < g_end; ++g) f(a, g, 0);
        return;
    }
    // Groups outer, tokens inner: R groups expanded to 2 bits (R * cols/4 bytes, in L2) while every token tile
    // streams past them in the 2-bit GEMM's own tiles; each thread keeps its own buffer, grown once.
    thread_local std::vector<uint8_t, AlignedAllocator<uint8_t>> panel;
    const int maxr = ternary_gemm_panel_groups_avx512(m);
    const size_t need = static_cast<size_t>(maxr * w.cols * 4);
    if (panel.size() < need) panel.resize(need);
    const bool vbmi = cpu_features().avx512_vbmi;
    for (int64_t g = g_begin; g < g_end; g += maxr) {
        const int r = static_cast<int>(std::min<int64_t>(maxr, g_end - g));
        for (int i = 0; i < r; ++i) expand_base3_group_avx512(m, g + i, panel.data() + i * w.cols * 4, vbmi);
        ternary_gemm_panel_avx512(m, panel.data(), g, r, x, y, ldy, rb, re);
    }
}

}  // namespace bllama

#endif

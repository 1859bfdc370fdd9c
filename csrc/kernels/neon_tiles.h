// Private to the aarch64 kernel files: the tile drivers that ternary_{neon,dotprod,i8mm}.cpp and
// head_q8_neon.cpp / head_q8_dotprod.cpp share. Only the integer dot product differs between the kinds
// (widening multiply-accumulate, sdot or smmla); everything around it (row groups, token tiles, the float epilogue
// that must equal ref.cpp bit for bit) is here, once.
//
// Everything is in an anonymous namespace on purpose: each file instantiates its own copy with its own ISA
// flags, and the linker can never keep the +dotprod copy for the plain-NEON kind (which would fault on a
// Cortex-A72).
#pragma once

#if defined(__aarch64__) || defined(_M_ARM64)
#include <arm_neon.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "kernels/head_q8.h"
#include "kernels/pack.h"

namespace bllama {
namespace {

// The same rounding steps as ref.cpp: keeps a product from being fused into the following add (the build
// passes -ffp-contract=off on aarch64 as well; this holds even where a user's flags turn it back on).
inline float32x4_t neon_no_contract(float32x4_t v) {
    __asm__("" : "+w"(v));
    return v;
}

// Stores lanes of v whose row 4*quad + lane lies in [rb, re) (rows outside belong to another thread, or
// are padding past the matrix).
inline void store_rows(float* y, int64_t row0, float32x4_t v, int64_t rb, int64_t re) {
    if (row0 >= rb && row0 + 4 <= re) {
        vst1q_f32(y + row0, v);
        return;
    }
    float lanes[4];
    vst1q_f32(lanes, v);
    for (int l = 0; l < 4; ++l)
        if (row0 + l >= rb && row0 + l < re) y[row0 + l] = lanes[l];
}

// The two bit planes of a packed byte: plane J holds code + 1 (0..2) of column 4J + s (pack.h).
template <int J>
inline int8x16_t ternary_plane(uint8x16_t w) {
    const uint8x16_t m3 = vdupq_n_u8(3);
    if constexpr (J == 0) return vreinterpretq_s8_u8(vandq_u8(w, m3));
    else if constexpr (J == 3) return vreinterpretq_s8_u8(vshrq_n_u8(w, 6));
    else return vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(w, 2 * J), m3));
}

// ---- ternary: one 16-row group x N tokens ----------------------------------------------------------------
//
// Dot::block<N>(acc, wp, qp, b) adds to acc[i][t] (lanes = rows 4i..4i+3 of the group) the int32 sums
// sum_k (code + 1) * x.q[t, k] over the 256 columns of block b. The "+1" is taken off here with the
// activations' block / row sums, exactly as in the x86 kernels. wp is group g's codes in the Dot's layout: the
// matrix's own stream, or (base-3 prompts, ternary1_arm.h) the group expanded to 2 bits in a scratch panel.
template <class Dot, int N>
void ternary_group_tile(const TernaryMatrix::Impl& w, const uint8_t* wp, const QuantizedActs& x, float* y,
                        int64_t ldy, int64_t rb, int64_t re, int64_t g, int64_t t0) {
    const int8_t* qp[N];
    for (int t = 0; t < N; ++t) qp[t] = x.q.data() + (t0 + t) * w.cols;
    int32x4_t acc[4][N];
    const int64_t row0 = g * kGroupRows;
    if (w.uniform) {
        for (int i = 0; i < 4; ++i)
            for (int t = 0; t < N; ++t) acc[i][t] = vdupq_n_s32(0);
        for (int64_t b = 0; b < w.nb; ++b) Dot::template block<N>(acc, wp, qp, b);
        for (int t = 0; t < N; ++t) {
            const size_t tt = static_cast<size_t>(t0 + t);
            const int32x4_t rs = vdupq_n_s32(x.row_sums[tt]);
            const float32x4_t f = vdupq_n_f32(w.scale / x.act_scale[tt]);
            for (int i = 0; i < 4; ++i)
                store_rows(y + static_cast<int64_t>(tt) * ldy, row0 + 4 * i,
                           vmulq_f32(vcvtq_f32_s32(vsubq_s32(acc[i][t], rs)), f), rb, re);
        }
        return;
    }
    // Per-block scales: y = sum_b (float)acc_b * (d_b / a), blocks in ascending order (ternary.h).
    float32x4_t s[4][N];
    for (int i = 0; i < 4; ++i)
        for (int t = 0; t < N; ++t) s[i][t] = vdupq_n_f32(0.0f);
    const float* d = w.d_ptr(g);
    for (int64_t b = 0; b < w.nb; ++b) {
        for (int i = 0; i < 4; ++i)
            for (int t = 0; t < N; ++t) acc[i][t] = vdupq_n_s32(0);
        Dot::template block<N>(acc, wp, qp, b);
        for (int i = 0; i < 4; ++i) {
            const float32x4_t di = vld1q_f32(d + b * kGroupRows + 4 * i);
            for (int t = 0; t < N; ++t) {
                const size_t tt = static_cast<size_t>(t0 + t);
                const int32x4_t v =
                    vsubq_s32(acc[i][t], vdupq_n_s32(x.block_sums[tt * static_cast<size_t>(w.nb) + static_cast<size_t>(b)]));
                const float32x4_t p = vmulq_f32(vcvtq_f32_s32(v), vdivq_f32(di, vdupq_n_f32(x.act_scale[tt])));
                s[i][t] = vaddq_f32(s[i][t], neon_no_contract(p));
            }
        }
    }
    for (int t = 0; t < N; ++t)
        for (int i = 0; i < 4; ++i) store_rows(y + (t0 + t) * ldy, row0 + 4 * i, s[i][t], rb, re);
}

// The plain-NEON Dot (ternary_neon.cpp, and the base-3 prompt path of ternary1_neon.cpp). A 16-byte load of a
// 64-byte chunk holds 4 rows x 4 columns per plane (pack.h). smlal/smlal2 multiply the plane's codes (0..2) by the
// activation dword broadcast to every row and add the products into int16 lanes, one lane per (row, column mod 4).
// A lane adds one product in [-256, 254] per chunk and plane, 64 per 256-column block, so its sum stays in
// [-16384, 16256]: exact in int16. Per block, saddlp + addp fold the four lanes of a row into one int32. Tiles of
// up to 2 tokens: 16 int16 accumulators + 4 weight vectors.
// Chunk c of a group: its four 16-byte weight vectors (rows 4i..4i+3) and each token's 16 activations of its columns.
template <int N>
inline void load_chunk(const uint8_t* wp, const int8_t* const (&qp)[N], int64_t c, uint8x16_t (&wv)[4],
                       int8x16_t (&xv)[N]) {
    for (int i = 0; i < 4; ++i) wv[i] = vld1q_u8(wp + c * kChunkBytes + 16 * i);
    for (int t = 0; t < N; ++t) xv[t] = vld1q_s8(qp[t] + c * kChunkCols);
}

struct WideningDot {
    template <int N>
    static void block(int32x4_t (&acc)[4][N], const uint8_t* wp, const int8_t* const (&qp)[N], int64_t b) {
        int16x8_t lo[4][N], hi[4][N];  // lo: rows 4i, 4i+1; hi: rows 4i+2, 4i+3 (4 column lanes each)
        for (int i = 0; i < 4; ++i)
            for (int t = 0; t < N; ++t) lo[i][t] = hi[i][t] = vdupq_n_s16(0);
        constexpr int64_t kChunksPerBlock = kBlock / kChunkCols;
        for (int64_t c = b * kChunksPerBlock; c < (b + 1) * kChunksPerBlock; ++c) {
            uint8x16_t wv[4];
            int8x16_t xv[N];
            load_chunk(wp, qp, c, wv, xv);
            auto plane = [&](auto jc) {
                constexpr int J = decltype(jc)::value;
                int8x16_t xb[N];  // columns 4J..4J+3, repeated for every row
                for (int t = 0; t < N; ++t)
                    xb[t] = vreinterpretq_s8_u32(vdupq_laneq_u32(vreinterpretq_u32_s8(xv[t]), J));
                for (int i = 0; i < 4; ++i) {
                    const int8x16_t code = ternary_plane<J>(wv[i]);
                    for (int t = 0; t < N; ++t) {
                        lo[i][t] = vmlal_s8(lo[i][t], vget_low_s8(code), vget_low_s8(xb[t]));
                        hi[i][t] = vmlal_high_s8(hi[i][t], code, xb[t]);
                    }
                }
            };
            plane(std::integral_constant<int, 0>{});
            plane(std::integral_constant<int, 1>{});
            plane(std::integral_constant<int, 2>{});
            plane(std::integral_constant<int, 3>{});
        }
        for (int i = 0; i < 4; ++i)
            for (int t = 0; t < N; ++t)
                acc[i][t] = vaddq_s32(acc[i][t], vpaddq_s32(vpaddlq_s16(lo[i][t]), vpaddlq_s16(hi[i][t])));
    }
};

#if defined(__ARM_FEATURE_DOTPROD)
// The sdot Dot of ternary_dotprod.cpp (whose header says how it works); here so that the i8mm file, built with
// +dotprod as well, can send one-token tiles to it. Only files compiled with +dotprod see it.
struct SdotDot {
    template <int N>
    static void block(int32x4_t (&acc)[4][N], const uint8_t* wp, const int8_t* const (&qp)[N], int64_t b) {
        constexpr int64_t kChunksPerBlock = kBlock / kChunkCols;
        const int64_t c0 = b * kChunksPerBlock, c1 = c0 + kChunksPerBlock;
        if constexpr (N == 1) {
            const uint8x16_t m1 = vdupq_n_u8(0x0c), m2 = vdupq_n_u8(0x30), m0 = vdupq_n_u8(0x03);
            int32x4_t a1[4], a4[4], a16[4];  // planes 0 and 3; plane 1 (x4); plane 2 (x16)
            for (int i = 0; i < 4; ++i) a1[i] = a4[i] = a16[i] = vdupq_n_s32(0);
            for (int64_t c = c0; c < c1; ++c) {
                const int8x16_t xv = vld1q_s8(qp[0] + c * kChunkCols);
                for (int i = 0; i < 4; ++i) {
                    const uint8x16_t wv = vld1q_u8(wp + c * kChunkBytes + 16 * i);
                    a1[i] = vdotq_laneq_s32(a1[i], vreinterpretq_s8_u8(vandq_u8(wv, m0)), xv, 0);
                    a4[i] = vdotq_laneq_s32(a4[i], vreinterpretq_s8_u8(vandq_u8(wv, m1)), xv, 1);
                    a16[i] = vdotq_laneq_s32(a16[i], vreinterpretq_s8_u8(vandq_u8(wv, m2)), xv, 2);
                    a1[i] = vdotq_laneq_s32(a1[i], vreinterpretq_s8_u8(vshrq_n_u8(wv, 6)), xv, 3);
                }
            }
            for (int i = 0; i < 4; ++i)
                acc[i][0] = vsraq_n_s32(vsraq_n_s32(vaddq_s32(acc[i][0], a1[i]), a4[i], 2), a16[i], 4);
        } else {
            for (int64_t c = c0; c < c1; ++c) {
                uint8x16_t wv[4];
                int8x16_t xv[N];
                load_chunk(wp, qp, c, wv, xv);
                auto plane = [&](auto jc) {
                    constexpr int J = decltype(jc)::value;
                    for (int i = 0; i < 4; ++i) {
                        const int8x16_t code = ternary_plane<J>(wv[i]);
                        for (int t = 0; t < N; ++t) acc[i][t] = vdotq_laneq_s32(acc[i][t], code, xv[t], J);
                    }
                };
                plane(std::integral_constant<int, 0>{});
                plane(std::integral_constant<int, 1>{});
                plane(std::integral_constant<int, 2>{});
                plane(std::integral_constant<int, 3>{});
            }
        }
    }
};

#endif

// The tile for the n <= N tokens left.
template <class Dot, int N>
void ternary_tile_upto(int64_t n, const TernaryMatrix::Impl& w, const uint8_t* wp, const QuantizedActs& x, float* y,
                       int64_t ldy, int64_t rb, int64_t re, int64_t g, int64_t t0) {
    if constexpr (N > 1)
        if (n < N) return ternary_tile_upto<Dot, N - 1>(n, w, wp, x, y, ldy, rb, re, g, t0);
    ternary_group_tile<Dot, N>(w, wp, x, y, ldy, rb, re, g, t0);
}

// Rows [rb, re) for every token: one group (a linear 4 * cols byte stream) at a time, tokens in tiles of up to
// MaxN that reuse each loaded (and, in the GEMM, unpacked) weight chunk.
template <class Dot, int MaxN>
void ternary_matmul_groups(const TernaryMatrix& m, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb,
                           int64_t re) {
    const TernaryMatrix::Impl& w = m.impl();
    for (int64_t g = rb / kGroupRows; g < (re + kGroupRows - 1) / kGroupRows; ++g)
        for (int64_t t = 0; t < x.n_tokens; t += MaxN)
            ternary_tile_upto<Dot, MaxN>(std::min<int64_t>(MaxN, x.n_tokens - t), w, w.group_ptr(g), x, y, ldy, rb, re, g,
                                         t);
}

// ---- int8 head: R rows x N tokens ----------------------------------------------------------------------
//
// Dot16::dot(acc, w, x) adds to the int32x4 acc the 16 products w[k] * x[k] (any lane split: only the
// horizontal sum is used). Exact for every int8 pair, so every kind gives the same acc (head_q8.h).
template <class Dot16, int R, int N>
void q8_tile(const Q8Head& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t r0, int64_t t0) {
    const int64_t cols = w.cols();
    const int8_t* wp[R];
    const int8_t* qp[N];
    for (int r = 0; r < R; ++r) wp[r] = w.row(r0 + r);
    for (int t = 0; t < N; ++t) qp[t] = x.q.data() + (t0 + t) * cols;
    int32x4_t acc[R][N];
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < N; ++t) acc[r][t] = vdupq_n_s32(0);
    int64_t c = 0;
    for (; c + 16 <= cols; c += 16) {
        int8x16_t a[N];
        for (int t = 0; t < N; ++t) a[t] = vld1q_s8(qp[t] + c);
        for (int r = 0; r < R; ++r) {
            const int8x16_t wv = vld1q_s8(wp[r] + c);
            for (int t = 0; t < N; ++t) acc[r][t] = Dot16::dot(acc[r][t], wv, a[t]);
        }
    }
    for (int t = 0; t < N; ++t) {
        const float a = x.act_scale[static_cast<size_t>(t0 + t)];
        for (int r = 0; r < R; ++r) {
            int32_t s = vaddvq_s32(acc[r][t]);
            for (int64_t k = c; k < cols; ++k) s += static_cast<int32_t>(wp[r][k]) * qp[t][k];
            y[(t0 + t) * ldy + r0 + r] = static_cast<float>(s) * (w.scale(r0 + r) / a);
        }
    }
}

// One token (decode): a row at a time with four independent accumulators, so the head is one linear stream.
template <class Dot16>
void q8_gemv_rows(const Q8Head& w, const QuantizedActs& x, float* y, int64_t rb, int64_t re) {
    const int64_t cols = w.cols();
    const int8_t* q = x.q.data();
    const float a = x.act_scale[0];
    for (int64_t r = rb; r < re; ++r) {
        const int8_t* wr = w.row(r);
        int32x4_t acc0 = vdupq_n_s32(0), acc1 = acc0, acc2 = acc0, acc3 = acc0;
        int64_t k = 0;
        for (; k + 64 <= cols; k += 64) {
            acc0 = Dot16::dot(acc0, vld1q_s8(wr + k), vld1q_s8(q + k));
            acc1 = Dot16::dot(acc1, vld1q_s8(wr + k + 16), vld1q_s8(q + k + 16));
            acc2 = Dot16::dot(acc2, vld1q_s8(wr + k + 32), vld1q_s8(q + k + 32));
            acc3 = Dot16::dot(acc3, vld1q_s8(wr + k + 48), vld1q_s8(q + k + 48));
        }
        for (; k + 16 <= cols; k += 16) acc0 = Dot16::dot(acc0, vld1q_s8(wr + k), vld1q_s8(q + k));
        int32_t s = vaddvq_s32(vaddq_s32(vaddq_s32(acc0, acc1), vaddq_s32(acc2, acc3)));
        for (; k < cols; ++k) s += static_cast<int32_t>(wr[k]) * q[k];
        y[r] = static_cast<float>(s) * (w.scale(r) / a);
    }
}

template <class Dot16>
void q8_head_rows(const Q8Head& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb, int64_t re) {
    if (x.n_tokens == 1) return q8_gemv_rows<Dot16>(w, x, y, rb, re);
    auto row_block = [&](auto r_const, int64_t r0) {
        constexpr int R = decltype(r_const)::value;
        int64_t t = 0;
        for (; t + 4 <= x.n_tokens; t += 4) q8_tile<Dot16, R, 4>(w, x, y, ldy, r0, t);
        for (; t < x.n_tokens; ++t) q8_tile<Dot16, R, 1>(w, x, y, ldy, r0, t);
    };
    int64_t r = rb;
    for (; r + 4 <= re; r += 4) row_block(std::integral_constant<int, 4>{}, r);
    for (; r < re; ++r) row_block(std::integral_constant<int, 1>{}, r);
}

}  // namespace
}  // namespace bllama

#endif

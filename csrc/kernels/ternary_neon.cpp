// Plain NEON (armv8-a: every aarch64 core, the Raspberry Pi 3/4's Cortex-A53/A72 included): the activation
// quantizer and the ternary matmul without sdot.
//
// A 16-byte load of a 64-byte chunk holds 4 rows x 4 columns per plane (pack.h). smlal/smlal2 multiply the
// plane's codes (0..2) by the activation dword broadcast to every row and add the products into int16 lanes,
// one lane per (row, column mod 4). A lane adds one product in [-256, 254] per chunk and plane, 64 per
// 256-column block, so its sum stays in [-16384, 16256]: exact in int16. Per block, saddlp + addp fold the
// four lanes of a row into one int32. Tiles of up to 2 tokens: 16 int16 accumulators + 4 weight vectors.
#if defined(__aarch64__) || defined(_M_ARM64)
#include <arm_neon.h>

#include <algorithm>
#include <cmath>

#include "kernels/neon_tiles.h"
#include "kernels/pack.h"
#include "kernels/simd.h"

namespace bllama {

void quantize_neon(const float* x, int64_t n_tokens, int64_t cols, QuantizedActs& out) {
    resize_acts(out, n_tokens, cols);
    const int64_t nb = (cols + kBlock - 1) / kBlock;
    const float32x4_t lo = vdupq_n_f32(-128.0f), hi = vdupq_n_f32(127.0f);
    for (int64_t t = 0; t < n_tokens; ++t) {
        const float* xt = x + t * cols;
        // fmaxnm ignores a NaN operand, as std::max(amax, NaN) in ref.cpp does.
        float32x4_t m = vdupq_n_f32(0.0f);
        int64_t k = 0;
        for (; k + 4 <= cols; k += 4) m = vmaxnmq_f32(m, vabsq_f32(vld1q_f32(xt + k)));
        float amax = vmaxnmvq_f32(m);
        for (; k < cols; ++k) amax = std::max(amax, std::fabs(xt[k]));
        const float a = (1.0f / std::max(amax, 1e-5f)) * 127.0f;  // as PyTorch: see ref.cpp
        out.act_scale[static_cast<size_t>(t)] = a;
        const float32x4_t av = vdupq_n_f32(a);
        int8_t* qt = out.q.data() + t * cols;
        // frintn rounds half to even, as nearbyint in the default mode; the clamp makes the narrowing exact.
        auto q4 = [&](int64_t i) {
            const float32x4_t v = vrndnq_f32(vmulq_f32(vld1q_f32(xt + i), av));
            return vcvtq_s32_f32(vminq_f32(vmaxq_f32(v, lo), hi));
        };
        int32_t total = 0;
        for (int64_t b = 0; b < nb; ++b) {
            const int64_t end = std::min(cols, (b + 1) * kBlock);
            int32x4_t s = vdupq_n_s32(0);
            for (k = b * kBlock; k + 16 <= end; k += 16) {
                const int32x4_t i0 = q4(k), i1 = q4(k + 4), i2 = q4(k + 8), i3 = q4(k + 12);
                s = vaddq_s32(s, vaddq_s32(vaddq_s32(i0, i1), vaddq_s32(i2, i3)));
                const int16x8_t h0 = vcombine_s16(vqmovn_s32(i0), vqmovn_s32(i1));
                const int16x8_t h1 = vcombine_s16(vqmovn_s32(i2), vqmovn_s32(i3));
                vst1q_s8(qt + k, vcombine_s8(vqmovn_s16(h0), vqmovn_s16(h1)));
            }
            int32_t bs = vaddvq_s32(s);
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

struct WideningDot {
    template <int N>
    static void block(int32x4_t (&acc)[4][N], const uint8_t* wp, const int8_t* const (&qp)[N], int64_t b) {
        int16x8_t lo[4][N], hi[4][N];  // lo: rows 4i, 4i+1; hi: rows 4i+2, 4i+3 (4 column lanes each)
        for (int i = 0; i < 4; ++i)
            for (int t = 0; t < N; ++t) lo[i][t] = hi[i][t] = vdupq_n_s16(0);
        constexpr int64_t kChunksPerBlock = kBlock / kChunkCols;
        for (int64_t c = b * kChunksPerBlock; c < (b + 1) * kChunksPerBlock; ++c) {
            uint8x16_t wv[4];
            for (int i = 0; i < 4; ++i) wv[i] = vld1q_u8(wp + c * kChunkBytes + 16 * i);
            int8x16_t xv[N];
            for (int t = 0; t < N; ++t) xv[t] = vld1q_s8(qp[t] + c * kChunkCols);
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

}  // namespace

void ternary_matmul_neon(const TernaryMatrix& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb,
                         int64_t re) {
    ternary_matmul_groups<WideningDot, 2>(w, x, y, ldy, rb, re);
}

}  // namespace bllama

#endif

// The aarch64 4-bit head's tile loop, shared by head_q4_neon.cpp (widening multiply-accumulates) and
// head_q4_dotprod.cpp (sdot): each instantiates it with its own block product, inside an anonymous namespace, so
// the linker never keeps a copy compiled for armv8.2-a for the plain-NEON kind (the rule of neon_tiles.h).
// A tile's 16 rows are four int32x4 / float32x4 groups: with head_q4.h's layout, the 16 bytes at 64c + 16j of a
// block are rows 4j..4j+3 x 4 columns in each nibble plane, so no lane crosses another.
#pragma once
#if defined(__aarch64__) || defined(_M_ARM64)
#include <arm_neon.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/head_q4.h"

namespace bllama {
namespace {

inline int8x16_t q4_broadcast4(const int8_t* x) {  // x[0..4) as one int32, in every lane
    int32_t v;
    std::memcpy(&v, x, sizeof v);
    return vreinterpretq_s8_s32(vdupq_n_s32(v));
}

// BlockDot(p, xb, s): s[j] += sum over the block's 32 columns of u * x for rows 4j..4j+3 (exact int32), from the
// block's 256 nibble bytes p and its activations xb.
template <class BlockDot>
void q4_tiles(const Q4Head& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb, int64_t re, BlockDot dot) {
    if (rb >= re) return;
    const int64_t cols = w.cols(), nb = w.blocks();
    for (int64_t t = 0; t < x.n_tokens; ++t) {
        const int8_t* q = x.q.data() + t * cols;
        const Q4GroupOffsets group(x, cols, nb, t, 1);
        const int32_t* offs = group.rows[0];
        const float32x4_t a = vdupq_n_f32(x.act_scale[static_cast<size_t>(t)]);
        for (int64_t tile = rb / kQ4Tile; tile * kQ4Tile < re; ++tile) {
            const uint8_t* nib = w.tile_nibbles(tile);
            const uint16_t* sc = w.tile_scales(tile);
            float32x4_t acc[4];
            for (int j = 0; j < 4; ++j) acc[j] = vdupq_n_f32(0.0f);
            for (int64_t b = 0; b < nb; ++b) {
                int32x4_t s[4];
                for (int j = 0; j < 4; ++j) s[j] = vdupq_n_s32(offs[static_cast<size_t>(b)]);
                dot(nib + b * kQ4TileBlockBytes, q + b * kQ4Block, s);
                for (int j = 0; j < 4; ++j) {
                    const float32x4_t d = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(sc + b * kQ4Tile + 4 * j)));
                    acc[j] = vfmaq_f32(acc[j], vcvtq_f32_s32(s[j]), d);  // fused, as head_q4.h defines
                }
            }
            alignas(16) float v[kQ4Tile];
            for (int j = 0; j < 4; ++j) vst1q_f32(v + 4 * j, vdivq_f32(acc[j], a));
            const int64_t r0 = tile * kQ4Tile;
            for (int64_t i = 0; i < kQ4Tile; ++i)
                if (r0 + i >= rb && r0 + i < re) y[t * ldy + r0 + i] = v[i];
        }
    }
}

}  // namespace
}  // namespace bllama
#endif

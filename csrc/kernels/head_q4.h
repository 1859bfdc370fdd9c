// 4-bit LM head: the output projection [vocab, hidden] as 4-bit integers with one f16 scale per 32 columns
// (4.5 bits a weight: 0.28x the f16 head's bytes, 0.56x the per-row int8 head's).
//
// At batch-1 decode the head is read in full every token (f16: 25% of a 1.7B token's bytes, 53% of a 2B4T
// token's), so its bytes are decode time. Per-block scales keep the rounding error local: one large weight only
// coarsens its own 32 columns (bench/head_accuracy.py measures held-out perplexity with each head format).
//
// Weights: block b of row r holds columns [32b, 32b + 32) as q[k] in [-8, 7] and one f16 scale d: w[k] ~ q[k] * d.
// Any (d, q) is a valid block; the quantizer at load chooses them (q4_quantize_block below): the scale of least
// squared error among candidates around absmax / 8 and absmax / 7, each refined by least squares, each column's
// error weighted by an importance the caller knows (the model passes the final norm's gain squared: the head's
// input column k scales with it); q[k] = clamp(nearbyint(w[k] / d), -8, 7) with d as stored. Per block it is never
// worse than llama.cpp's Q4_0 rule (kept as Q4ScaleRule::AbsMax, the baseline): with m the value of largest
// magnitude in the block (the first one on ties), d = f16(m / -8) (round to nearest even). On the shipped model
// the search moved held-out perplexity from +0.95% over the f16 head (absmax) to -0.02% (bench/RESULTS.md,
// "4-bit head: searched scales"). An all-zero block has d = 0 and q = 0.
// Layout (in memory only, built at load): rows in tiles of kQ4Tile = 16 (the last tile padded with q = 0, d = 0
// rows). Tile T, block b is 256 bytes: byte 64c + 4i + k (c, k in [0, 4), i in [0, 16)) holds u = q + 8 of row
// 16T + i at column 32b + 4c + k in its low nibble and at column 32b + 16 + 4c + k in its high nibble; then the
// tile's 16 f16 scales of block b, row by row. So one 64-byte load is 16 rows x 4 columns per nibble plane: a
// mask (low plane) or a mask of the high bits (high plane, 16u) gives what vpdpbusd / sdot multiplies by four
// activations broadcast to every lane, one int32 lane per row; no lane crosses another.
// Activations: quantize_acts (ternary.h) of the final-normed hidden rows: per token a = 127/absmax, int8 x.
// Output, exactly (every kind gives bit-identical y): acc starts at +0; for each block b in ascending order,
// p = sum_{k<32} q[32b+k] * x[32b+k] (an exact int32, any summation order) and acc = fma((float)p, d_b, acc)
// (fused, one rounding); y[t * ldy + r] = acc / a_t. SIMD paths compute p as sum(u * x) - 8 * sum(x) (the
// activation block sums once per call) and carry 16 (AVX-512) or 8 / 4 rows' acc in the lanes of one register.
// Files: head_q4.cpp (quantization and packing), ref.cpp (the reference), head_q4_avx2.cpp (vpmaddubsw), head_q4_avx512.cpp
// (512-bit vpdpbusd), head_q4_{neon,dotprod}.cpp (+ head_q4_arm.h), dispatch.cpp (the checked entry point).
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/ternary.h"

namespace bllama {

constexpr int64_t kQ4Block = 32;
constexpr int64_t kQ4Tile = 16;                              // rows interleaved per tile
constexpr int64_t kQ4TileBlockBytes = kQ4Tile * kQ4Block / 2;  // 256 nibble bytes per (tile, block)

// How a block's scale is chosen: AbsMax is llama.cpp's Q4_0 rule (the baseline, for comparisons); Search is the
// weighted least-squares search (the default).
enum class Q4ScaleRule { AbsMax, Search };

// Quantizes one block of kQ4Block finite weights v: writes q (in [-8, 7]) and returns the scale as f16 bits.
// importance: kQ4Block finite weights >= 0 of each column's squared error, or null (uniform). Throws
// std::invalid_argument when the absmax scale m / -8 overflows f16 (|m| > 524224); a searched scale that would
// overflow is skipped.
uint16_t q4_quantize_block(const float* v, const float* importance, Q4ScaleRule rule, int8_t* q);
// The block's importance-weighted squared reconstruction error sum_k imp[k] * (v[k] - q[k] * d)^2 in double
// (importance null: uniform), d the f16 scale's value: what q4_quantize_block's Search minimizes.
double q4_block_error(const float* v, const float* importance, uint16_t d, const int8_t* q);

// The column importance for a head whose input is RMSNorm(h) * gamma (the model's final norm): column k's input
// scales with gamma[k], so its weight error costs in proportion to gamma[k]^2. Empty (uniform) where that is not
// a usable weighting: a non-finite square or all zeros.
std::vector<float> q4_importance_from_norm(const float* gamma, int64_t n);

class Q4Head {
public:
    Q4Head() = default;
    // Storage for rows x cols (zero). Throws std::invalid_argument unless rows >= 0, 0 < cols <= 65536 and
    // cols % kQ4Block == 0.
    Q4Head(int64_t rows, int64_t cols);

    // Quantize rows [row_begin, row_end) of a row-major f16 / f32 matrix with this head's shape (separate
    // ranges may run on separate threads) with q4_quantize_block; importance: cols() column weights or null.
    // Throws std::invalid_argument on a non-finite weight, a negative or non-finite importance, or a block whose
    // absmax scale overflows f16.
    void quantize_rows_f16(const uint16_t* w, int64_t row_begin, int64_t row_end, const float* importance = nullptr,
                           Q4ScaleRule rule = Q4ScaleRule::Search);
    void quantize_rows_f32(const float* w, int64_t row_begin, int64_t row_end, const float* importance = nullptr,
                           Q4ScaleRule rule = Q4ScaleRule::Search);
    static Q4Head from_f16(const uint16_t* w, int64_t rows, int64_t cols, const float* importance = nullptr,
                           Q4ScaleRule rule = Q4ScaleRule::Search);
    static Q4Head from_f32(const float* w, int64_t rows, int64_t cols, const float* importance = nullptr,
                           Q4ScaleRule rule = Q4ScaleRule::Search);

    int64_t rows() const { return rows_; }
    int64_t cols() const { return cols_; }
    int64_t blocks() const { return cols_ / kQ4Block; }  // per row
    int64_t tiles() const { return (rows_ + kQ4Tile - 1) / kQ4Tile; }
    // Tile t: blocks() x kQ4TileBlockBytes nibble bytes, and blocks() x kQ4Tile f16 scales (layout above).
    const uint8_t* tile_nibbles(int64_t t) const { return nib_.data() + t * blocks() * kQ4TileBlockBytes; }
    const uint16_t* tile_scales(int64_t t) const { return scale_.data() + t * blocks() * kQ4Tile; }
    // The signed value of column k of row r (q in [-8, 7]), and its block's scale as fp32.
    int value(int64_t r, int64_t k) const;
    float scale(int64_t r, int64_t k) const;
    size_t bytes() const { return nib_.size() + scale_.size() * sizeof(uint16_t); }

private:
    template <class Load>
    void quantize_rows(Load load, int64_t row_begin, int64_t row_end, const float* importance, Q4ScaleRule rule);

    int64_t rows_ = 0, cols_ = 0;
    std::vector<uint8_t, AlignedAllocator<uint8_t>> nib_;    // [tiles, blocks, 256]
    std::vector<uint16_t, AlignedAllocator<uint16_t>> scale_;  // [tiles, blocks, 16] f16
};

// -8 * (the sum of block b's 32 activations) for each block of one token's int8 row: the u = q + 8 offset's
// share of sum(u * x), which the SIMD paths add back once per block (exact in int32).
inline void q4_offset_sums(const int8_t* x, int64_t blocks, int32_t* out) {
    for (int64_t b = 0; b < blocks; ++b) {
        int32_t s = 0;
        for (int64_t k = 0; k < kQ4Block; ++k) s += x[b * kQ4Block + k];
        out[b] = -8 * s;
    }
}

// q4_offset_sums of tokens [t0, t0 + n) of x (n <= 4; token t0 + k's at rows[k]): on the stack for up to
// kStackBlocks blocks a token (hidden sizes to 16384), so decoding allocates nothing whichever thread runs a head
// chunk; larger hidden sizes use a thread-local buffer that grows on its first use.
struct Q4GroupOffsets {
    static constexpr int64_t kStackBlocks = 512;
    int32_t local[4 * kStackBlocks];
    const int32_t* rows[4];
    Q4GroupOffsets(const QuantizedActs& x, int64_t cols, int64_t blocks, int64_t t0, int n) {
        int32_t* base = local;
        if (blocks > kStackBlocks) {
            thread_local std::vector<int32_t> big;
            if (big.size() < static_cast<size_t>(4 * blocks)) big.resize(static_cast<size_t>(4 * blocks));
            base = big.data();
        }
        for (int k = 0; k < n; ++k) {
            q4_offset_sums(x.q.data() + (t0 + k) * cols, blocks, base + k * blocks);
            rows[k] = base + k * blocks;
        }
    }
};

// y[t * ldy + r] for r in [row_begin, row_end), t in [0, x.n_tokens) (formula above). x.cols must equal
// w.cols(); the caller splits rows across threads (any range is valid).
void q4_head_matmul(const Q4Head& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t row_begin,
                    int64_t row_end, KernelKind kind = best_kernel());

}  // namespace bllama

// 4-bit LM head: the output projection [vocab, hidden] as 4-bit integers with one f16 scale per 32 columns
// (4.5 bits a weight: 0.28x the f16 head's bytes, 0.56x the per-row int8 head's).
//
// At batch-1 decode the head is read in full every token (f16: 25% of a 1.7B token's bytes, 53% of a 2B4T
// token's), so its bytes are decode time. Per-block scales keep the rounding error local: one large weight only
// coarsens its own 32 columns (bench/head_accuracy.py measures held-out perplexity with each head format).
//
// Weights: block b of row r holds columns [32b, 32b + 32). With m the value of largest magnitude in the block
// (the first one on ties), d = f16(m / -8) (round to nearest even) and q[k] = clamp(nearbyint(w[k] / d), -8, 7)
// with d as stored (converted back to fp32); an all-zero block has d = 0 and q = 0. Stored as u = q + 8 in
// nibbles: byte i of a block holds u[i] in its low and u[i + 16] in its high nibble.
// Activations: quantize_acts (ternary.h) of the final-normed hidden rows: per token a = 127/absmax, int8 x.
// Output, exactly (every kind gives bit-identical y): eight fp32 lanes acc[0..8) start at +0; for each block b
// in ascending order and each lane j, p = sum_{i<4} q[32b+4j+i] * x[32b+4j+i] (an exact int32) and
// acc[j] = fma((float)p, d_b, acc[j]) (fused, one rounding); then s = ((acc0+acc4) + (acc2+acc6)) +
// ((acc1+acc5) + (acc3+acc7)) and y[t * ldy + r] = s / a_t. The lane split is what one vpmaddubsw + vpmaddwd
// (or one sdot / vpdpbusd) per 32 bytes produces, so SIMD paths need no reordering.
// Files: head_q4.cpp (packing), ref.cpp (the reference), head_q4_avx2.cpp, head_q4_avx512.cpp (the one-token GEMV
// with 256-bit vpdpbusd), head_q4_{neon,dotprod}.cpp (+ head_q4_arm.h), dispatch.cpp (the checked entry point).
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/ternary.h"

namespace bllama {

constexpr int64_t kQ4Block = 32;

class Q4Head {
public:
    Q4Head() = default;
    // Storage for rows x cols (zero). Throws std::invalid_argument unless rows >= 0, 0 < cols <= 65536 and
    // cols % kQ4Block == 0.
    Q4Head(int64_t rows, int64_t cols);

    // Quantize rows [row_begin, row_end) of a row-major f16 / f32 matrix with this head's shape (separate
    // ranges may run on separate threads). Throws std::invalid_argument on a non-finite weight.
    void quantize_rows_f16(const uint16_t* w, int64_t row_begin, int64_t row_end);
    void quantize_rows_f32(const float* w, int64_t row_begin, int64_t row_end);
    static Q4Head from_f16(const uint16_t* w, int64_t rows, int64_t cols);
    static Q4Head from_f32(const float* w, int64_t rows, int64_t cols);

    int64_t rows() const { return rows_; }
    int64_t cols() const { return cols_; }
    int64_t blocks() const { return cols_ / kQ4Block; }  // per row
    const uint8_t* row(int64_t r) const { return nib_.data() + r * (cols_ / 2); }       // blocks() x 16 bytes
    const uint16_t* scales(int64_t r) const { return scale_.data() + r * blocks(); }  // blocks() f16 scales
    // The signed value of column k of row r (q in [-8, 7]), and its block's scale as fp32.
    int value(int64_t r, int64_t k) const;
    float scale(int64_t r, int64_t k) const;
    size_t bytes() const { return nib_.size() + scale_.size() * sizeof(uint16_t); }

private:
    template <class Load>
    void quantize_rows(Load load, int64_t row_begin, int64_t row_end);

    int64_t rows_ = 0, cols_ = 0;
    std::vector<uint8_t, AlignedAllocator<uint8_t>> nib_;  // [rows, cols / 2]
    std::vector<uint16_t> scale_;                          // [rows, cols / 32] f16
};

// y[t * ldy + r] for r in [row_begin, row_end), t in [0, x.n_tokens) (formula above). x.cols must equal
// w.cols(); the caller splits rows across threads (any range is valid).
void q4_head_matmul(const Q4Head& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t row_begin,
                    int64_t row_end, KernelKind kind = best_kernel());

}  // namespace bllama

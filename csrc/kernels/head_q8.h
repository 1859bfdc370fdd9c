// Int8 LM head: the output projection [vocab, hidden] held as int8 with one fp32 scale per row.
//
// At batch-1 decode the head is read in full every token; as f16 it is 25% (1.7B shapes) to 53%
// (2B4T shapes) of the bytes a token reads. Per-row int8 halves that.
//
// Weights: for row r with m = max_k |w[r,k]| (fp32), d_r = m / 127.0f and
// q[r,k] = nearbyint(w[r,k] / d_r) (ties to even), in [-127, 127]; an all-zero row has d_r = 0, q = 0.
// Activations: quantize_acts (ternary.h) of the final-normed hidden rows: per token a = 127/absmax,
// q in [-128, 127].
// Output: y[t * ldy + r] = (float)acc * (d_r / a_t), acc = sum_k q[r,k] * x.q[t,k] in int32 (exact:
// |acc| <= 128 * 127 * cols < 2^31 for cols <= kQ8HeadMaxCols). Every kernel kind computes the same
// acc and the same epilogue, so all kinds give bit-identical y.
// Files: pack.cpp (row quantization), ref.cpp (the reference kernel), head_q8_avx2.cpp (vpmovsxbw +
// vpmaddwd: exact for every int8 pair), head_q8_avx512.cpp (vpdpbusd on q + 128, with 128 * rowsum(w)
// subtracted: rowsum is kept per row at load); dispatch.h chooses.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/ternary.h"

namespace bllama {

// Keeps the VNNI path's biased sum, sum_k (q_t + 128) * w <= 255 * 127 * cols, inside int32.
constexpr int64_t kQ8HeadMaxCols = 65536;

class Q8Head {
public:
    Q8Head() = default;
    // Storage for rows x cols (zero). Throws std::invalid_argument unless 0 <= rows and
    // 0 < cols <= kQ8HeadMaxCols.
    Q8Head(int64_t rows, int64_t cols);

    // Quantize rows [row_begin, row_end) of a row-major f16 / f32 matrix with this head's shape.
    // Separate ranges may run on separate threads. Throws std::invalid_argument on a non-finite weight.
    void quantize_rows_f16(const uint16_t* w, int64_t row_begin, int64_t row_end);
    void quantize_rows_f32(const float* w, int64_t row_begin, int64_t row_end);
    static Q8Head from_f16(const uint16_t* w, int64_t rows, int64_t cols);
    static Q8Head from_f32(const float* w, int64_t rows, int64_t cols);

    int64_t rows() const { return rows_; }
    int64_t cols() const { return cols_; }
    const int8_t* row(int64_t r) const { return q_.data() + r * cols_; }
    float scale(int64_t r) const { return scale_[static_cast<size_t>(r)]; }
    int32_t row_sum(int64_t r) const { return sum_[static_cast<size_t>(r)]; }
    const float* scales() const { return scale_.data(); }
    const int32_t* row_sums() const { return sum_.data(); }
    size_t bytes() const { return q_.size() + scale_.size() * sizeof(float) + sum_.size() * sizeof(int32_t); }

private:
    template <class Load>
    void quantize_rows(Load load, int64_t row_begin, int64_t row_end);

    int64_t rows_ = 0, cols_ = 0;
    std::vector<int8_t, AlignedAllocator<int8_t>> q_;  // [rows, cols] row-major
    std::vector<float> scale_;                         // [rows] d_r
    std::vector<int32_t> sum_;                         // [rows] sum_k q[r,k]
};

// y[t * ldy + r] for r in [row_begin, row_end), t in [0, x.n_tokens) (formula above). x.cols must equal
// w.cols(); the caller splits rows across threads (any range is valid).
void q8_head_matmul(const Q8Head& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t row_begin,
                    int64_t row_end, KernelKind kind = best_kernel());

}  // namespace bllama

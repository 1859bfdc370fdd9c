// Int8 head: row quantization, the scalar reference kernel and the dispatch (head_q8.h).
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "kernels/half.h"
#include "kernels/cpu_features.h"
#include "kernels/head_q8.h"

namespace bllama {

Q8Head::Q8Head(int64_t rows, int64_t cols) : rows_(rows), cols_(cols) {
    if (rows < 0 || cols <= 0 || cols > kQ8HeadMaxCols)
        throw std::invalid_argument("Q8Head: need rows >= 0 and 0 < cols <= " + std::to_string(kQ8HeadMaxCols) +
                                    ", got " + std::to_string(rows) + " x " + std::to_string(cols));
    q_.assign(static_cast<size_t>(rows * cols), 0);
    scale_.assign(static_cast<size_t>(rows), 0.0f);
    sum_.assign(static_cast<size_t>(rows), 0);
}

template <class Load>
void Q8Head::quantize_rows(Load load, int64_t row_begin, int64_t row_end) {
    if (row_begin < 0 || row_end > rows_ || row_begin > row_end)
        throw std::invalid_argument("Q8Head: bad row range");
    std::vector<float> buf(static_cast<size_t>(cols_));
    for (int64_t r = row_begin; r < row_end; ++r) {
        float m = 0.0f;
        for (int64_t k = 0; k < cols_; ++k) {
            const float v = load(r * cols_ + k);
            if (!std::isfinite(v))
                throw std::invalid_argument("Q8Head: non-finite weight at row " + std::to_string(r) + ", column " +
                                            std::to_string(k));
            buf[static_cast<size_t>(k)] = v;
            m = std::max(m, std::fabs(v));
        }
        const float d = m / 127.0f;
        int8_t* q = q_.data() + r * cols_;
        int32_t s = 0;
        for (int64_t k = 0; k < cols_; ++k) {
            float v = d > 0.0f ? std::nearbyint(buf[static_cast<size_t>(k)] / d) : 0.0f;  // ties to even
            v = std::min(127.0f, std::max(-127.0f, v));  // |w / d| <= 127 up to one rounding
            q[k] = static_cast<int8_t>(v);
            s += q[k];
        }
        scale_[static_cast<size_t>(r)] = d;
        sum_[static_cast<size_t>(r)] = s;
    }
}

void Q8Head::quantize_rows_f16(const uint16_t* w, int64_t row_begin, int64_t row_end) {
    quantize_rows([w](int64_t i) { return f16_to_f32(w[i]); }, row_begin, row_end);
}
void Q8Head::quantize_rows_f32(const float* w, int64_t row_begin, int64_t row_end) {
    quantize_rows([w](int64_t i) { return w[i]; }, row_begin, row_end);
}
Q8Head Q8Head::from_f16(const uint16_t* w, int64_t rows, int64_t cols) {
    Q8Head h(rows, cols);
    h.quantize_rows_f16(w, 0, rows);
    return h;
}
Q8Head Q8Head::from_f32(const float* w, int64_t rows, int64_t cols) {
    Q8Head h(rows, cols);
    h.quantize_rows_f32(w, 0, rows);
    return h;
}

namespace {

void q8_head_scalar(const Q8Head& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb, int64_t re) {
    const int64_t cols = w.cols();
    for (int64_t r = rb; r < re; ++r) {
        const int8_t* wr = w.row(r);
        for (int64_t t = 0; t < x.n_tokens; ++t) {
            const int8_t* q = x.q.data() + t * cols;
            int32_t acc = 0;
            for (int64_t k = 0; k < cols; ++k) acc += static_cast<int32_t>(wr[k]) * q[k];
            y[t * ldy + r] = static_cast<float>(acc) * (w.scale(r) / x.act_scale[static_cast<size_t>(t)]);
        }
    }
}

Q8HeadMatmulFn fn_for(KernelKind kind) {
    switch (kind) {
        case KernelKind::Scalar: return q8_head_scalar_fn();
        case KernelKind::Avx2: return cpu_features().avx2 ? q8_head_avx2_fn() : nullptr;
        case KernelKind::Avx512Vnni: return cpu_features().avx512_vnni ? q8_head_avx512_fn() : nullptr;
    }
    return nullptr;
}

}  // namespace

Q8HeadMatmulFn q8_head_scalar_fn() { return q8_head_scalar; }

void q8_head_matmul(const Q8Head& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t row_begin,
                    int64_t row_end, KernelKind kind) {
    if (x.cols != w.cols()) throw std::invalid_argument("q8_head_matmul: activation cols != head cols");
    if (row_begin < 0 || row_end > w.rows() || row_begin > row_end)
        throw std::invalid_argument("q8_head_matmul: bad row range");
    if (x.n_tokens > 1 && ldy < row_end) throw std::invalid_argument("q8_head_matmul: ldy < row_end");
    const Q8HeadMatmulFn f = fn_for(kind);
    if (!f) throw std::invalid_argument(std::string("q8_head_matmul: kernel '") + kernel_name(kind) +
                                        "' is not supported on this CPU/build");
    if (row_begin == row_end || x.n_tokens == 0) return;
    f(w, x, y, ldy, row_begin, row_end);
}

}  // namespace bllama

// Q4Head packing (the format is defined in head_q4.h).
#include "kernels/head_q4.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "kernels/half.h"

namespace bllama {

Q4Head::Q4Head(int64_t rows, int64_t cols) : rows_(rows), cols_(cols) {
    if (rows < 0 || cols <= 0 || cols > 65536 || cols % kQ4Block != 0)
        throw std::invalid_argument("Q4Head: need rows >= 0 and 0 < cols <= 65536 with cols a multiple of " +
                                    std::to_string(kQ4Block) + ", got " + std::to_string(rows) + " x " +
                                    std::to_string(cols));
    nib_.assign(static_cast<size_t>(rows * cols / 2), 0x88);  // u = 8: q = 0
    scale_.assign(static_cast<size_t>(rows * blocks()), 0);
}

int Q4Head::value(int64_t r, int64_t k) const {
    const uint8_t byte = row(r)[(k / kQ4Block) * 16 + (k % 16)];
    return ((k % kQ4Block) < 16 ? (byte & 0x0F) : (byte >> 4)) - 8;
}

float Q4Head::scale(int64_t r, int64_t k) const { return f16_to_f32(scales(r)[k / kQ4Block]); }

template <class Load>
void Q4Head::quantize_rows(Load load, int64_t row_begin, int64_t row_end) {
    if (row_begin < 0 || row_end > rows_ || row_begin > row_end) throw std::invalid_argument("Q4Head: bad row range");
    float v[kQ4Block];
    for (int64_t r = row_begin; r < row_end; ++r) {
        for (int64_t b = 0; b < blocks(); ++b) {
            float m = 0.0f;
            for (int64_t i = 0; i < kQ4Block; ++i) {
                const int64_t k = b * kQ4Block + i;
                v[i] = load(r * cols_ + k);
                if (!std::isfinite(v[i]))
                    throw std::invalid_argument("Q4Head: non-finite weight at row " + std::to_string(r) +
                                                ", column " + std::to_string(k));
                if (std::fabs(v[i]) > std::fabs(m)) m = v[i];
            }
            const uint16_t dh = f32_to_f16(m / -8.0f);
            const float d = f16_to_f32(dh);
            if (!std::isfinite(d))
                throw std::invalid_argument("Q4Head: weight " + std::to_string(m) + " at row " + std::to_string(r) +
                                            " exceeds the f16 scale's range");
            scale_[static_cast<size_t>(r * blocks() + b)] = dh;
            uint8_t* out = nib_.data() + r * (cols_ / 2) + b * 16;
            int u[kQ4Block];
            for (int64_t i = 0; i < kQ4Block; ++i) {
                const float q = d != 0.0f ? std::nearbyint(v[i] / d) : 0.0f;  // ties to even
                u[i] = static_cast<int>(std::min(7.0f, std::max(-8.0f, q))) + 8;
            }
            for (int i = 0; i < 16; ++i) out[i] = static_cast<uint8_t>(u[i] | (u[i + 16] << 4));
        }
    }
}

void Q4Head::quantize_rows_f16(const uint16_t* w, int64_t row_begin, int64_t row_end) {
    quantize_rows([w](int64_t i) { return f16_to_f32(w[i]); }, row_begin, row_end);
}
void Q4Head::quantize_rows_f32(const float* w, int64_t row_begin, int64_t row_end) {
    quantize_rows([w](int64_t i) { return w[i]; }, row_begin, row_end);
}
Q4Head Q4Head::from_f16(const uint16_t* w, int64_t rows, int64_t cols) {
    Q4Head h(rows, cols);
    h.quantize_rows_f16(w, 0, rows);
    return h;
}
Q4Head Q4Head::from_f32(const float* w, int64_t rows, int64_t cols) {
    Q4Head h(rows, cols);
    h.quantize_rows_f32(w, 0, rows);
    return h;
}

}  // namespace bllama

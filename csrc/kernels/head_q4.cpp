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
    nib_.assign(static_cast<size_t>(tiles() * blocks() * kQ4TileBlockBytes), 0x88);  // u = 8: q = 0
    scale_.assign(static_cast<size_t>(tiles() * blocks() * kQ4Tile), 0);
}

namespace {
// Where column k's nibble of row r lives: the byte offset in nib_ (layout in head_q4.h); high = the high nibble.
int64_t nibble_byte(int64_t r, int64_t k, int64_t blocks, bool& high) {
    const int64_t b = k / kQ4Block, j = k % kQ4Block;
    high = j >= 16;
    const int64_t c = (j % 16) / 4;
    return ((r / kQ4Tile) * blocks + b) * kQ4TileBlockBytes + 64 * c + 4 * (r % kQ4Tile) + j % 4;
}
int64_t scale_index(int64_t r, int64_t b, int64_t blocks) { return ((r / kQ4Tile) * blocks + b) * kQ4Tile + r % kQ4Tile; }
}  // namespace

int Q4Head::value(int64_t r, int64_t k) const {
    bool high;
    const uint8_t byte = nib_[static_cast<size_t>(nibble_byte(r, k, blocks(), high))];
    return (high ? (byte >> 4) : (byte & 0x0F)) - 8;
}

float Q4Head::scale(int64_t r, int64_t k) const {
    return f16_to_f32(scale_[static_cast<size_t>(scale_index(r, k / kQ4Block, blocks()))]);
}

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
            scale_[static_cast<size_t>(scale_index(r, b, blocks()))] = dh;
            int u[kQ4Block];
            for (int64_t i = 0; i < kQ4Block; ++i) {
                const float q = d != 0.0f ? std::nearbyint(v[i] / d) : 0.0f;  // ties to even
                u[i] = static_cast<int>(std::min(7.0f, std::max(-8.0f, q))) + 8;
            }
            // Each byte belongs to one row, so row ranges on separate threads never share a byte.
            for (int i = 0; i < 16; ++i) {
                bool high;
                nib_[static_cast<size_t>(nibble_byte(r, b * kQ4Block + i, blocks(), high))] =
                    static_cast<uint8_t>(u[i] | (u[i + 16] << 4));
            }
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

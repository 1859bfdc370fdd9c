// Q4Head packing (the format is defined in head_q4.h).
#include "kernels/head_q4.h"

#include <algorithm>
#include <cmath>
#include <cstring>
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

namespace {
// Where the searched scale puts the block's largest magnitude m: d = m / t. Around -8 (llama.cpp's Q4_0 rule)
// and +7 (the top of the asymmetric range: a coarser step that reaches m without clipping); -9 and -10 clip m,
// which pays where m's column matters less than the step its neighbours get. Each candidate's rounding is refitted
// by least squares, so the grid only needs to land near the optimum's rounding, not on its scale. Eight (two SSE /
// NEON vectors, the axis the search vectorizes over): on the shipped model's head they reach 0.867 of absmax's
// weighted squared error, sixteen at steps of 0.25 from -8.5 to 7.75 reached 0.880 at twice the cost, 42 at
// steps of 0.125 from -9 to 8 0.867 (bench/RESULTS.md, "4-bit head: searched scales").
constexpr int kCandidates = 8;
constexpr float kTargets[kCandidates] = {-10.0f, -9.0f, -8.5f, -8.0f, -7.5f, -7.0f, -6.5f, 7.0f};

// clamp(nearbyint(x), -8, 7) for |x| <= 2^22 without a branch, so that compilers vectorize it on the base ISA
// (a compare-and-select clamp is not, unless -fno-trapping-math): adding and subtracting 1.5 * 2^23 rounds to an
// integer r, ties to even, in the default rounding mode; (|r + 8| - |r - 7| - 1) / 2 is then exactly r clamped.
inline float round_q4_fast(float x) {
    const float r = (x + 12582912.0f) - 12582912.0f;
    return 0.5f * (std::fabs(r + 8.0f) - std::fabs(r - 7.0f) - 1.0f);
}

// q[k] = clamp(nearbyint(v[k] / d), -8, 7) (q = 0 for d = 0): the stored values. m: the block's largest
// magnitude. Where |m / d| <= 2^20 (every scale the search keeps, and absmax's) round_q4_fast applies to every
// column directly and the loop vectorizes; otherwise each quotient is clamped first, which gives the same
// integer (the bounds are integers). Either way no call to nearbyintf (no instruction for it in base x86-64).
void round_block(const float* v, float m, float d, int8_t* q) {
    if (d == 0.0f) {
        std::fill(q, q + kQ4Block, int8_t(0));
        return;
    }
    float r[kQ4Block];
    if (std::fabs(m) <= 1048576.0f * std::fabs(d)) {
        for (int64_t i = 0; i < kQ4Block; ++i) r[i] = round_q4_fast(v[i] / d);
    } else {
        for (int64_t i = 0; i < kQ4Block; ++i) r[i] = round_q4_fast(std::min(8.0f, std::max(-9.0f, v[i] / d)));
    }
    for (int64_t i = 0; i < kQ4Block; ++i) q[i] = static_cast<int8_t>(r[i]);
}
// The value of largest magnitude (the first one on ties). A running compare-and-select is one serial chain
// through all 32 columns (it was 40% of the searched quantizer's time); the magnitudes' bit patterns order as the
// magnitudes do (finite values), so eight integer lanes find the largest (vectorizable), then a scan finds its
// first column.
float largest_magnitude(const float* v) {
    uint32_t bits[kQ4Block], lane[8] = {};
    std::memcpy(bits, v, sizeof bits);
    for (int64_t i = 0; i < kQ4Block; i += 8)
        for (int j = 0; j < 8; ++j) {
            const uint32_t a = bits[i + j] & 0x7fffffffu;
            lane[j] = lane[j] > a ? lane[j] : a;
        }
    uint32_t top = 0;
    for (int j = 0; j < 8; ++j) top = std::max(top, lane[j]);
    if (top == 0) return 0.0f;  // +0 for an all-zero block whatever its signs (as a running maximum from +0 gives)
    for (int64_t i = 0; i < kQ4Block; ++i)
        if ((bits[i] & 0x7fffffffu) == top) return v[i];
    return 0.0f;  // not reached
}
}  // namespace

double q4_block_error(const float* v, const float* importance, uint16_t d, const int8_t* q) {
    const double df = f16_to_f32(d);
    double e = 0.0;
    if (!importance) {
        for (int64_t i = 0; i < kQ4Block; ++i) {
            const double r = double(v[i]) - q[i] * df;
            e += r * r;
        }
        return e;
    }
    for (int64_t i = 0; i < kQ4Block; ++i) {
        const double r = double(v[i]) - q[i] * df;
        e += double(importance[i]) * r * r;
    }
    return e;
}

uint16_t q4_quantize_block(const float* v, const float* importance, Q4ScaleRule rule, int8_t* q) {
    const float m = largest_magnitude(v);
    const uint16_t d_absmax = f32_to_f16(m / -8.0f);
    if (!std::isfinite(f16_to_f32(d_absmax)))
        throw std::invalid_argument("Q4Head: weight " + std::to_string(m) + " exceeds the f16 scale's range");
    round_block(v, m, f16_to_f32(d_absmax), q);
    if (rule == Q4ScaleRule::AbsMax || m == 0.0f) return d_absmax;

    // Minimize E(d) = sum w (v - d q)^2 = Svv - 2 d Svq + d^2 Sqq over the candidates' roundings, each with its
    // least-squares scale d = Svq / Sqq as stored (f16); the winner is checked against absmax with the exact
    // error below.
    float w[kQ4Block], wv[kQ4Block];
    double svv = 0.0;
    for (int64_t i = 0; i < kQ4Block; ++i) {
        w[i] = importance ? importance[i] : 1.0f;
        wv[i] = w[i] * v[i];
        svv += double(wv[i]) * v[i];
    }
    // Every candidate's Svq and Sqq at once, one lane per candidate (|v / m| <= 1, so |v * t / m| <= 10).
    float inv[kCandidates], svq[kCandidates] = {}, sqq[kCandidates] = {};
    for (int c = 0; c < kCandidates; ++c) inv[c] = kTargets[c] / m;
    for (int64_t i = 0; i < kQ4Block; ++i) {
        const float vi = v[i], wi = w[i], wvi = wv[i];
        for (int c = 0; c < kCandidates; ++c) {
            const float qq = round_q4_fast(vi * inv[c]);
            svq[c] += wvi * qq;
            sqq[c] += wi * qq * qq;
        }
    }
    double best_e = INFINITY;
    float best_d = 0.0f;
    for (int c = 0; c < kCandidates; ++c) {
        if (!(sqq[c] > 0.0f)) continue;
        const float d = f16_to_f32(f32_to_f16(svq[c] / sqq[c]));
        if (!std::isfinite(d) || d == 0.0f) continue;
        const double e = svv - 2.0 * d * svq[c] + double(d) * d * sqq[c];
        if (e < best_e) best_e = e, best_d = d;
    }
    if (best_d == 0.0f) return d_absmax;
    // Nearest rounding at the stored scale is each column's best q for that scale (whatever its importance).
    int8_t q_s[kQ4Block];
    const uint16_t d_search = f32_to_f16(best_d);
    round_block(v, m, best_d, q_s);
    if (q4_block_error(v, importance, d_search, q_s) < q4_block_error(v, importance, d_absmax, q)) {
        std::copy(q_s, q_s + kQ4Block, q);
        return d_search;
    }
    return d_absmax;
}

std::vector<float> q4_importance_from_norm(const float* gamma, int64_t n) {
    std::vector<float> w(static_cast<size_t>(n));
    bool any = false;
    for (int64_t k = 0; k < n; ++k) {
        w[static_cast<size_t>(k)] = gamma[k] * gamma[k];
        if (!std::isfinite(w[static_cast<size_t>(k)])) return {};
        any = any || w[static_cast<size_t>(k)] > 0.0f;
    }
    if (!any) return {};
    return w;
}

int Q4Head::value(int64_t r, int64_t k) const {
    bool high;
    const uint8_t byte = nib_[static_cast<size_t>(nibble_byte(r, k, blocks(), high))];
    return (high ? (byte >> 4) : (byte & 0x0F)) - 8;
}

float Q4Head::scale(int64_t r, int64_t k) const {
    return f16_to_f32(scale_[static_cast<size_t>(scale_index(r, k / kQ4Block, blocks()))]);
}

template <class Load>
void Q4Head::quantize_rows(Load load, int64_t row_begin, int64_t row_end, const float* importance, Q4ScaleRule rule) {
    if (row_begin < 0 || row_end > rows_ || row_begin > row_end) throw std::invalid_argument("Q4Head: bad row range");
    if (importance)
        for (int64_t k = 0; k < cols_; ++k)
            if (!(importance[k] >= 0.0f) || !std::isfinite(importance[k]))
                throw std::invalid_argument("Q4Head: column importance " + std::to_string(importance[k]) +
                                            " at column " + std::to_string(k) + " is not a finite value >= 0");
    float v[kQ4Block];
    int8_t q[kQ4Block];
    for (int64_t r = row_begin; r < row_end; ++r) {
        for (int64_t b = 0; b < blocks(); ++b) {
            for (int64_t i = 0; i < kQ4Block; ++i) {
                const int64_t k = b * kQ4Block + i;
                v[i] = load(r * cols_ + k);
                if (!std::isfinite(v[i]))
                    throw std::invalid_argument("Q4Head: non-finite weight at row " + std::to_string(r) +
                                                ", column " + std::to_string(k));
            }
            uint16_t dh;
            try {
                dh = q4_quantize_block(v, importance ? importance + b * kQ4Block : nullptr, rule, q);
            } catch (const std::invalid_argument& e) {
                throw std::invalid_argument(std::string(e.what()) + " at row " + std::to_string(r));
            }
            scale_[static_cast<size_t>(scale_index(r, b, blocks()))] = dh;
            // Each byte belongs to one row, so row ranges on separate threads never share a byte.
            for (int i = 0; i < 16; ++i) {
                bool high;
                nib_[static_cast<size_t>(nibble_byte(r, b * kQ4Block + i, blocks(), high))] =
                    static_cast<uint8_t>((q[i] + 8) | ((q[i + 16] + 8) << 4));
            }
        }
    }
}

void Q4Head::quantize_rows_f16(const uint16_t* w, int64_t row_begin, int64_t row_end, const float* importance,
                               Q4ScaleRule rule) {
    quantize_rows([w](int64_t i) { return f16_to_f32(w[i]); }, row_begin, row_end, importance, rule);
}
void Q4Head::quantize_rows_f32(const float* w, int64_t row_begin, int64_t row_end, const float* importance,
                               Q4ScaleRule rule) {
    quantize_rows([w](int64_t i) { return w[i]; }, row_begin, row_end, importance, rule);
}
Q4Head Q4Head::from_f16(const uint16_t* w, int64_t rows, int64_t cols, const float* importance, Q4ScaleRule rule) {
    Q4Head h(rows, cols);
    h.quantize_rows_f16(w, 0, rows, importance, rule);
    return h;
}
Q4Head Q4Head::from_f32(const float* w, int64_t rows, int64_t cols, const float* importance, Q4ScaleRule rule) {
    Q4Head h(rows, cols);
    h.quantize_rows_f32(w, 0, rows, importance, rule);
    return h;
}

}  // namespace bllama

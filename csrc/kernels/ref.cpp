// The portable scalar reference of every kernel family (ref.h): the Scalar table, and what every SIMD kernel
// must reproduce bit for bit (ternary, quantizer, int8 head) or within the documented tolerance (f16 head,
// attention).
#include "kernels/ref.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/half.h"
#include "kernels/head_q4.h"
#include "kernels/head_q8.h"
#include "kernels/pack.h"
#include "kernels/ternary.h"

namespace bllama {

// ---- ternary: activation quantizer and matmul ----------------------------------------------------

namespace {

// The reference rounds each per-block product before adding it. Without this, a build with -mfma or
// -march=native could fuse s += p into an FMA and stop matching the SIMD kernels (which do the same).
inline float no_contract(float v) {
#if defined(__x86_64__) || defined(__i386__)
    __asm__("" : "+x"(v));
#elif defined(__aarch64__)
    __asm__("" : "+w"(v));
#endif
    return v;
}

}  // namespace

void quantize_ref(const float* x, int64_t n_tokens, int64_t cols, QuantizedActs& out) {
    resize_acts(out, n_tokens, cols);
    quantize_rows_ref(x, 0, n_tokens, cols, out);
}

void quantize_rows_ref(const float* x, int64_t t0, int64_t t1, int64_t cols, QuantizedActs& out) {
    const int64_t nb = (cols + kBlock - 1) / kBlock;
    for (int64_t t = t0; t < t1; ++t) {
        const float* xt = x + t * cols;
        float amax = 0.0f;
        for (int64_t k = 0; k < cols; ++k) amax = std::max(amax, std::fabs(xt[k]));
        // Same fp32 ops in the same order as bllama/model/bitlinear.py, so a and q match PyTorch bit for bit.
        // PyTorch evaluates `127.0 / t` as `t.reciprocal() * 127` (Tensor.__rtruediv__), which differs
        // from a correctly rounded 127 / t in the last bit for ~15% of inputs; we follow PyTorch.
        const float a = (1.0f / std::max(amax, 1e-5f)) * 127.0f;
        out.act_scale[static_cast<size_t>(t)] = a;
        int8_t* qt = out.q.data() + t * cols;
        int32_t total = 0;
        for (int64_t b = 0; b < nb; ++b) {
            int32_t s = 0;
            for (int64_t k = b * kBlock; k < std::min(cols, (b + 1) * kBlock); ++k) {
                float v = std::nearbyint(xt[k] * a);  // ties to even in the default rounding mode
                v = v < -128.0f ? -128.0f : (v > 127.0f ? 127.0f : v);
                qt[k] = static_cast<int8_t>(v);
                s += qt[k];
            }
            out.block_sums[static_cast<size_t>(t * nb + b)] = s;
            total += s;
        }
        out.row_sums[static_cast<size_t>(t)] = total;
    }
}

void ternary_matmul_ref(const TernaryMatrix& m, const QuantizedActs& x, float* y, int64_t ldy, int64_t row_begin,
                        int64_t row_end) {
    const TernaryMatrix::Impl& w = m.impl();
    const int64_t cols = w.cols, nb = w.nb;
    std::vector<int8_t> row(static_cast<size_t>(cols));
    for (int64_t r = row_begin; r < row_end; ++r) {
        if (w.base3) {  // both layouts: the same codes, so the same y
            base3_row_codes(w, r, row.data());
        } else {
            const uint8_t* gp = w.group_ptr(r / kGroupRows) + (r % kGroupRows) * 4;
            for (int64_t k = 0; k < cols; ++k) {
                const uint8_t byte = gp[(k / kChunkCols) * kChunkBytes + k % 4];
                row[static_cast<size_t>(k)] = static_cast<int8_t>(((byte >> (2 * ((k % kChunkCols) / 4))) & 3) - 1);
            }
        }
        const float* d = w.d_ptr(r / kGroupRows) + r % kGroupRows;
        for (int64_t t = 0; t < x.n_tokens; ++t) {
            const int8_t* q = x.q.data() + t * cols;
            const float a = x.act_scale[static_cast<size_t>(t)];
            if (w.uniform) {
                int32_t acc = 0;
                for (int64_t k = 0; k < cols; ++k) acc += row[static_cast<size_t>(k)] * q[k];
                y[t * ldy + r] = static_cast<float>(acc) * (w.scale / a);
            } else {
                // Per-block form: blocks summed in ascending order, each as (float)acc_b * (d_b / a).
                float s = 0.0f;
                for (int64_t b = 0; b < nb; ++b) {
                    int32_t acc = 0;
                    for (int64_t k = b * kBlock; k < (b + 1) * kBlock; ++k) acc += row[static_cast<size_t>(k)] * q[k];
                    s += no_contract(static_cast<float>(acc) * (d[b * kGroupRows] / a));
                }
                y[t * ldy + r] = s;
            }
        }
    }
}

// ---- f16 head ------------------------------------------------------------------------------------

void f16_matmul_ref(const uint16_t* w, int64_t cols, const float* x, int64_t n_tokens, float* y, int64_t ldy,
                    int64_t row_begin, int64_t row_end) {
    std::vector<float> row(static_cast<size_t>(cols));
    for (int64_t r = row_begin; r < row_end; ++r) {
        for (int64_t k = 0; k < cols; ++k) row[static_cast<size_t>(k)] = f16_to_f32(w[r * cols + k]);
        for (int64_t t = 0; t < n_tokens; ++t) {
            const float* xt = x + t * cols;
            float s = 0.0f;
            for (int64_t k = 0; k < cols; ++k) s += row[static_cast<size_t>(k)] * xt[k];
            y[t * ldy + r] = s;
        }
    }
}

// ---- int8 head -----------------------------------------------------------------------------------

void q8_head_matmul_ref(const Q8Head& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb, int64_t re) {
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

// ---- 4-bit head ----------------------------------------------------------------------------------

void q4_head_matmul_ref(const Q4Head& w, const QuantizedActs& x, float* y, int64_t ldy, int64_t rb, int64_t re) {
    const int64_t cols = w.cols();
    for (int64_t r = rb; r < re; ++r) {
        for (int64_t t = 0; t < x.n_tokens; ++t) {
            const int8_t* q = x.q.data() + t * cols;
            float acc = 0.0f;
            for (int64_t b = 0; b < w.blocks(); ++b) {
                int32_t p = 0;
                for (int64_t k = b * kQ4Block; k < (b + 1) * kQ4Block; ++k) p += w.value(r, k) * q[k];
                acc = std::fma(static_cast<float>(p), w.scale(r, b * kQ4Block), acc);
            }
            y[t * ldy + r] = acc / x.act_scale[static_cast<size_t>(t)];
        }
    }
}

// ---- attention -----------------------------------------------------------------------------------

namespace {

inline float ld(const float* p) { return *p; }
inline float ld(const uint16_t* p) { return f16_to_f32(*p); }

template <class KV>
void attend(const float* q, const KV* k, const KV* v, int64_t stride, int64_t len, int64_t hd, float scale,
            float* scores, float* out) {
    float mx = -INFINITY;
    for (int64_t j = 0; j < len; ++j) {
        const KV* kj = k + j * stride;
        float s = 0.0f;
        for (int64_t i = 0; i < hd; ++i) s += q[i] * ld(kj + i);
        s *= scale;
        scores[j] = s;
        mx = s > mx ? s : mx;
    }
    float sum = 0.0f;
    for (int64_t j = 0; j < len; ++j) {
        scores[j] = std::exp(scores[j] - mx);
        sum += scores[j];
    }
    const float inv = 1.0f / sum;
    for (int64_t i = 0; i < hd; ++i) out[i] = 0.0f;
    for (int64_t j = 0; j < len; ++j) {
        const float w = scores[j] * inv;
        const KV* vj = v + j * stride;
        for (int64_t i = 0; i < hd; ++i) out[i] += w * ld(vj + i);
    }
}

}  // namespace

void to_f16_ref(const float* x, uint16_t* y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] = f32_to_f16(x[i]);
}

void to_f32_ref(const uint16_t* x, float* y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] = f16_to_f32(x[i]);
}

void silu_mul_ref(float* g, const float* u, int64_t n) {
    for (int64_t i = 0; i < n; ++i) g[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

void attend_f32_ref(const float* q, const float* k, const float* v, int64_t stride, int64_t len, int64_t hd,
                    float scale, float* scores, float* out) {
    attend(q, k, v, stride, len, hd, scale, scores, out);
}
void attend_f16_ref(const float* q, const uint16_t* k, const uint16_t* v, int64_t stride, int64_t len, int64_t hd,
                    float scale, float* scores, float* out) {
    attend(q, k, v, stride, len, hd, scale, scores, out);
}

}  // namespace bllama

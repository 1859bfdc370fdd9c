// Float head, NEON: fcvtl widens 4 halves (armv8.0 has the conversion; no FEAT_FP16 arithmetic needed), fmla
// into fp32 accumulators. Decode batches (up to kF16ExactTokens tokens) read the head as one linear stream,
// 4 tokens per pass; prompt chunks use 4 x 4 register tiles (another summation order, as head_f16.h allows).
#if defined(__aarch64__) || defined(_M_ARM64)
#include <arm_neon.h>

#include <cstdint>

#include "kernels/half.h"
#include "kernels/head_f16.h"
#include "kernels/simd.h"

namespace bllama {

namespace {

inline float32x4_t load_f16x4(const uint16_t* p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }

template <int R, int N>
void f16_tile(const uint16_t* w, int64_t cols, const float* x, float* y, int64_t ldy, int64_t r0, int64_t t0) {
    float32x4_t acc[R][N];
    for (int r = 0; r < R; ++r)
        for (int t = 0; t < N; ++t) acc[r][t] = vdupq_n_f32(0.0f);
    const uint16_t* wr[R];
    const float* xt[N];
    for (int r = 0; r < R; ++r) wr[r] = w + (r0 + r) * cols;
    for (int t = 0; t < N; ++t) xt[t] = x + (t0 + t) * cols;
    int64_t k = 0;
    for (; k + 4 <= cols; k += 4) {
        float32x4_t xv[N];
        for (int t = 0; t < N; ++t) xv[t] = vld1q_f32(xt[t] + k);
        for (int r = 0; r < R; ++r) {
            const float32x4_t wv = load_f16x4(wr[r] + k);
            for (int t = 0; t < N; ++t) acc[r][t] = vfmaq_f32(acc[r][t], wv, xv[t]);
        }
    }
    for (int t = 0; t < N; ++t)
        for (int r = 0; r < R; ++r) {
            float s = vaddvq_f32(acc[r][t]);
            for (int64_t kk = k; kk < cols; ++kk) s += f16_to_f32(wr[r][kk]) * xt[t][kk];
            y[(t0 + t) * ldy + r0 + r] = s;
        }
}

// Decode-sized batches: one row at a time, four accumulators per token. Every (row, token) sum is added in the
// same order whatever N (batched decoding equals decoding alone, bit for bit).
template <int N>
void f16_gemv_rows(const uint16_t* w, int64_t cols, const float* x, float* y, int64_t ldy, int64_t rb, int64_t re) {
    for (int64_t r = rb; r < re; ++r) {
        const uint16_t* wr = w + r * cols;
        float32x4_t acc[N][4];
        for (int t = 0; t < N; ++t) acc[t][0] = acc[t][1] = acc[t][2] = acc[t][3] = vdupq_n_f32(0.0f);
        int64_t k = 0;
        for (; k + 16 <= cols; k += 16) {
            float32x4_t wv[4];
            for (int j = 0; j < 4; ++j) wv[j] = load_f16x4(wr + k + 4 * j);
            for (int t = 0; t < N; ++t)
                for (int j = 0; j < 4; ++j) acc[t][j] = vfmaq_f32(acc[t][j], wv[j], vld1q_f32(x + t * cols + k + 4 * j));
        }
        const int64_t k16 = k;
        for (int t = 0; t < N; ++t) {
            const float* xt = x + t * cols;
            for (k = k16; k + 4 <= cols; k += 4) acc[t][0] = vfmaq_f32(acc[t][0], load_f16x4(wr + k), vld1q_f32(xt + k));
            float s = vaddvq_f32(vaddq_f32(vaddq_f32(acc[t][0], acc[t][1]), vaddq_f32(acc[t][2], acc[t][3])));
            for (; k < cols; ++k) s += f16_to_f32(wr[k]) * xt[k];
            y[t * ldy + r] = s;
        }
    }
}

}  // namespace

void f16_matmul_neon(const uint16_t* w, int64_t cols, const float* x, int64_t n_tokens, float* y, int64_t ldy,
                     int64_t rb, int64_t re) {
    if (n_tokens > kF16ExactTokens) {  // prompt chunks: register tiles (another summation order)
        f16_tiles<4, 4>(rb, re, n_tokens, [&](auto rows, auto tokens, int64_t r, int64_t t) {
            f16_tile<decltype(rows)::value, decltype(tokens)::value>(w, cols, x, y, ldy, r, t);
        });
        return;
    }
    for (int64_t t = 0; t < n_tokens; t += 4) {  // up to 4 tokens per pass over the rows (16 accumulators)
        const int64_t n = n_tokens - t;
        const float* xt = x + t * cols;
        float* yt = y + t * ldy;
        if (n >= 4) f16_gemv_rows<4>(w, cols, xt, yt, ldy, rb, re);
        else if (n == 3) f16_gemv_rows<3>(w, cols, xt, yt, ldy, rb, re);
        else if (n == 2) f16_gemv_rows<2>(w, cols, xt, yt, ldy, rb, re);
        else f16_gemv_rows<1>(w, cols, xt, yt, ldy, rb, re);
    }
}

}  // namespace bllama

#endif

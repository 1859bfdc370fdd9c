// Float LM head: the output projection [vocab, hidden] kept as the file's IEEE half rows (head="f16").
// Reference in ref.cpp, SIMD in head_f16_avx2.cpp / head_f16_avx512.cpp, chosen through dispatch.h.
#pragma once

#include <cstdint>
#include <type_traits>

#include "kernels/dispatch.h"

namespace bllama {

// Float head: y[t * ldy + r] = sum_k f16(w[r,k]) * x[t,k] (w row-major IEEE half, x fp32). Up to
// kF16ExactTokens tokens (decode steps, batched or not), each token's sums are added in one order that does
// not depend on n_tokens, so a token's logits are the same alone or in a batch (per kernel kind); larger
// n_tokens (prompt chunks) use register tiles with another order.
constexpr int64_t kF16ExactTokens = 8;  // passes of 4 (AVX-512) or 2 (AVX2) tokens: the head is read 1-4 times
void f16_matmul(const uint16_t* w, int64_t cols, const float* x, int64_t n_tokens, float* y,
                int64_t ldy, int64_t row_begin, int64_t row_end, KernelKind kind = best_kernel());

// The prompt path's walk over rows [rb, re) x n_tokens, shared by every kernel kind: R x N register tiles, then the
// edges as 1-token and 1-row tiles. tile(rows, tokens, r0, t0) gets the tile's shape as std::integral_constant
// arguments, so each kind instantiates its own register tile for it.
template <int R, int N, class Tile>
inline void f16_tiles(int64_t rb, int64_t re, int64_t n_tokens, Tile&& tile) {
    using One = std::integral_constant<int, 1>;
    const auto row = [&](auto rows, int64_t r) {
        int64_t t = 0;
        for (; t + N <= n_tokens; t += N) tile(rows, std::integral_constant<int, N>{}, r, t);
        for (; t < n_tokens; ++t) tile(rows, One{}, r, t);
    };
    int64_t r = rb;
    for (; r + R <= re; r += R) row(std::integral_constant<int, R>{}, r);
    for (; r < re; ++r) row(One{}, r);
}

}  // namespace bllama

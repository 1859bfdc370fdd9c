// RoPE (NEOX pairing) and causal grouped-query attention over the KV cache.
#include <algorithm>
#include <cmath>

#include "cpu/model.h"

namespace bllama {

// cos_ / sin_ rows for the n rows of a chunk, each at its own position (row_pos_).
void Model::rope_tables(int64_t n) {
    const int64_t half = cfg_.head_dim / 2;
    for (int64_t t = 0; t < n; ++t)
        for (int64_t i = 0; i < half; ++i) {
            // Angle in float64, cos/sin rounded to fp32: the same table bllama/model/transformer.py builds.
            const double a = static_cast<double>(row_pos_[t]) * inv_freq_[i];
            cos_[t * half + i] = static_cast<float>(std::cos(a));
            sin_[t * half + i] = static_cast<float>(std::sin(a));
        }
}

// Rotates pairs (u[i], u[i + hd/2]) of heads [h0, h1) of every token in x [n, n_heads * hd]. A head is rotated
// on its own, so threads owning different heads can rotate them at the same time.
void Model::apply_rope(float* x, int64_t n, int64_t n_heads, int64_t h0, int64_t h1) {
    const int64_t hd = cfg_.head_dim, half = hd / 2;
    for (int64_t t = 0; t < n; ++t) {
        const float* cs = cos_.data() + t * half;
        const float* sn = sin_.data() + t * half;
        for (int64_t h = h0; h < h1; ++h) {
            float* u = x + (t * n_heads + h) * hd;
            for (int64_t i = 0; i < half; ++i) {
                const float u1 = u[i], u2 = u[i + half];
                u[i] = u1 * cs[i] - u2 * sn[i];
                u[i + half] = u1 * sn[i] + u2 * cs[i];
            }
        }
    }
}

// Columns [b, e) of k_ / v_'s n rows (whole kv heads) into each row's own sequence's cache, at its position.
void Model::write_kv(int64_t layer, int64_t n, int64_t b, int64_t e) {
    const int64_t KV = cfg_.kv_dim(), hd = cfg_.head_dim;
    for (int64_t t = 0; t < n; ++t) {
        for (int64_t g = b / hd; g < e / hd; ++g) {
            const int64_t at = cache_head(row_slot_[t], layer, g) + row_pos_[t] * hd;
            const float* k = k_.data() + t * KV + g * hd;
            const float* v = v_.data() + t * KV + g * hd;
            if (kv_f16_) {
                kernels_.to_f16(k, k16_cache_.data() + at, hd);
                kernels_.to_f16(v, v16_cache_.data() + at, hd);
            } else {
                std::copy(k, k + hd, k_cache_.data() + at);
                std::copy(v, v + hd, v_cache_.data() + at);
            }
        }
    }
}

// att_[t, h*hd:(h+1)*hd] = softmax(q k^T / sqrt(hd)) v over positions 0 .. row_pos_[t] of sequence row_slot_[t],
// with `thread`'s score row.
void Model::attend_one(int64_t layer, int64_t t, int64_t h, int thread) {
    const int64_t hd = cfg_.head_dim, D = cfg_.attn_dim;  // q_ and att_ rows: all heads
    const int64_t group = cfg_.n_heads / cfg_.n_kv_heads, g = h / group;
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    float* sc = scores_.data() + static_cast<int64_t>(thread) * scores_rows() * ctx_;
    // Causal: keys 0 .. row_pos_[t] of the row's own sequence.
    const int64_t base = cache_head(row_slot_[t], layer, g), len = row_pos_[t] + 1;
    const float* q = q_.data() + t * D + h * hd;
    float* o = att_.data() + t * D + h * hd;
    if (kv_f16_)
        kernels_.attend_f16(q, k16_cache_.data() + base, v16_cache_.data() + base, hd, len, hd,
                            scale, sc, o);
    else
        kernels_.attend_f32(q, k_cache_.data() + base, v_cache_.data() + base, hd, len, hd, scale,
                            sc, o);
}

// Rows of one sequence at consecutive positions (a prompt chunk) from this many on share an fp32 copy of the
// keys and values: attention then loads plain floats instead of converting every fp16 key and value again for
// every query row and head (the copy costs one conversion per position).
constexpr int64_t kSharedKvRows = 4;

void Model::attend_rows(int64_t layer, int64_t g, int64_t t0, int64_t t1, int thread) {
    const int64_t group = cfg_.n_heads / cfg_.n_kv_heads, hd = cfg_.head_dim, D = cfg_.attn_dim;  // q_, att_ rows
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    float* sc = scores_.data() + static_cast<int64_t>(thread) * scores_rows() * ctx_;
    for (int64_t t = t0; t < t1;) {
        int64_t u = t + 1;  // [t, u): one sequence's rows at consecutive positions
        while (u < t1 && row_slot_[u] == row_slot_[t] && row_pos_[u] == row_pos_[u - 1] + 1) ++u;
        const int64_t base = cache_head(row_slot_[t], layer, g);
        if (kv_f16_ && u - t < kSharedKvRows) {
            for (; t < u; ++t) {
                // The group's query heads in one call: their shared keys and values are converted once.
                const int64_t at = t * D + g * group * hd;
                kernels_.attend_group_f16(q_.data() + at, group, k16_cache_.data() + base, v16_cache_.data() + base,
                                          hd, row_pos_[t] + 1, hd, scale, sc, att_.data() + at);
            }
            continue;
        }
        // fp32 keys and values: the cache itself, or an fp16 cache's copy.
        const float *k, *v;
        if (!kv_f16_) {
            k = k_cache_.data() + base;
            v = v_cache_.data() + base;
        } else {
            int64_t len = 0;  // keys the run's rows see: positions 0 .. the largest row position
            for (int64_t r = t; r < u; ++r) len = std::max(len, row_pos_[r] + 1);
            float* k32 = kv32_.data() + static_cast<int64_t>(thread) * 2 * ctx_ * hd;
            float* v32 = k32 + ctx_ * hd;
            kernels_.to_f32(k16_cache_.data() + base, k32, len * hd);
            kernels_.to_f32(v16_cache_.data() + base, v32, len * hd);
            k = k32;
            v = v32;
        }
        // Every (row, query head) of the run in calls of up to kVectors: the kernel takes them 4 at a time (a row's
        // heads, then the next rows), each key and value loaded once for the 4.
        constexpr int64_t kVectors = 16;
        const float* qs[kVectors];
        float* os[kVectors];
        int64_t lens[kVectors];
        int64_t n = 0;
        for (; t < u; ++t)
            for (int64_t h = g * group; h < (g + 1) * group; ++h) {
                qs[n] = q_.data() + t * D + h * hd;
                os[n] = att_.data() + t * D + h * hd;
                lens[n++] = row_pos_[t] + 1;
                if (n == kVectors) {
                    kernels_.attend_many_f32(qs, lens, n, k, v, hd, hd, scale, sc, os);
                    n = 0;
                }
            }
        if (n > 0) kernels_.attend_many_f32(qs, lens, n, k, v, hd, hd, scale, sc, os);
    }
}

// Every row's attention, split across the pool: by (kv head, rows) pieces where a prompt chunk's rows can share
// their keys (attend_rows), else by (token, kv head) or (token, head) pairs (below).
void Model::attention(int64_t layer, int64_t n) {
    const int64_t H = cfg_.n_heads, KVH = cfg_.n_kv_heads;
    if (kv_f16_ && n >= kSharedKvRows * 2) {
        // Each kv head's rows in pieces of at least kSharedKvRows * 2, enough pieces to balance the threads.
        const int64_t want = std::max<int64_t>(1, (pool_.size() == 1 ? 1 : pool_.size() * 4) / KVH);
        const int64_t pieces = std::min(want, n / (kSharedKvRows * 2));
        pool_.run(static_cast<int>(KVH * pieces), [&](int chunk, int thread) {
            int64_t b, e;
            split_range(n, chunk % pieces, static_cast<int>(pieces), 1, b, e);
            attend_rows(layer, chunk / pieces, b, e, thread);
        });
        return;
    }
    // Tasks of (token, kv head) where query heads share a kv head and the cache is fp16: a group's heads then share
    // one conversion of their keys and values (attend_rows). Fewer tasks than (token, head) pairs balance worse
    // (2B4T decode: 5 on 2 threads), but each costs about half of its heads one by one (2B4T, position ~520: 5.6 ms
    // a token instead of 10.2, one thread).
    const bool grouped = kv_f16_ && H > KVH;
    const int64_t per_token = grouped ? KVH : H, tasks = n * per_token;
    const int nc = static_cast<int>(std::min<int64_t>(tasks, pool_.size() == 1 ? 1 : pool_.size() * 8));
    pool_.run(nc, [&](int chunk, int thread) {
        int64_t b, e;
        split_range(tasks, chunk, nc, 1, b, e);
        for (int64_t task = b; task < e; ++task) {
            const int64_t t = task / per_token, i = task % per_token;
            if (grouped) attend_rows(layer, i, t, t + 1, thread);
            else attend_one(layer, t, i, thread);
        }
    });
}

}  // namespace bllama

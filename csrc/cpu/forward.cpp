// The forward pass (docs/architecture.md, "Block"). Matmul rows are split across the pool and each
// thread finishes its own rows (output scale, residual add, activation) so the elementwise work
// is parallel too and needs no extra dispatch.
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "cpu/decode_profile.h"
#include "cpu/model.h"
#include "kernels/half.h"
#include "kernels/head_f16.h"
#include "kernels/pack.h"

namespace bllama {

namespace {


constexpr int64_t kRowAlign = 16;  // row split granularity (keeps kernel row groups whole)

// The sum of squares runs in 16 interleaved partial sums, added in a fixed order at the end: the compiler can keep
// them in vector registers (one long chain of dependent adds cost as much as a whole prompt row's matmuls on small
// models), and the result is the same bits on every machine and in every path.
void rmsnorm(const float* x, const float* w, float* out, int64_t n, int64_t d, float eps) {
    for (int64_t t = 0; t < n; ++t) {
        const float* xr = x + t * d;
        float* o = out + t * d;
        float part[16] = {0};
        int64_t i = 0;
        for (; i + 16 <= d; i += 16)
            for (int j = 0; j < 16; ++j) part[j] += xr[i + j] * xr[i + j];
        for (; i < d; ++i) part[i % 16] += xr[i] * xr[i];
        float ss = 0.0f;
        for (int j = 0; j < 16; ++j) ss += part[j];
        const float r = 1.0f / std::sqrt(ss / static_cast<float>(d) + eps);
        for (int64_t i = 0; i < d; ++i) o[i] = xr[i] * r * w[i];
    }
}

// Qwen3's QK-norm: heads [h0, h1) of every row of x [n, n_heads * hd] RMS-normed over their own hd values, in
// place (rmsnorm reads a value before it writes it), before RoPE.
void head_rmsnorm(float* x, const std::vector<float>& w, int64_t n, int64_t n_heads, int64_t hd, int64_t h0,
                  int64_t h1, float eps) {
    for (int64_t t = 0; t < n; ++t)
        for (int64_t h = h0; h < h1; ++h) {
            float* u = x + (t * n_heads + h) * hd;
            rmsnorm(u, w.data(), u, 1, hd, eps);
        }
}

// BitLinear input: rows of rmsnorm(x, w) (or x itself when w is null: no sub-norm) written at stride dp
// with the padding [d, dp) zeroed, so padded weight columns meet zero activations; then quantized. A prompt chunk's
// rows are split across the pool (each row's bits do not depend on which thread runs it): run by one thread they
// were ~7% of a small model's prompt time, with the other threads waiting.
constexpr int64_t kParallelInputValues = 32768;  // rows x width from which the split pays for a pool handoff

void bitlinear_input(ThreadPool& pool, const float* x, const float* w, float* xp, int64_t n, int64_t d, int64_t dp,
                     float eps, QuantizedActs& qa, KernelKind kind) {
    resize_acts(qa, n, dp);
    auto rows = [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
            if (w) rmsnorm(x + t * d, w, xp + t * dp, 1, d, eps);
            else std::copy(x + t * d, x + (t + 1) * d, xp + t * dp);
            std::fill(xp + t * dp + d, xp + (t + 1) * dp, 0.0f);
        }
        quantize_acts_rows(xp, t0, t1, dp, qa, kind);
    };
    if (pool.size() == 1 || n < 4 || n * d < kParallelInputValues) return rows(0, n);
    const int nc = static_cast<int>(std::min<int64_t>(n, pool.size() * 2));
    pool.run(nc, [&](int i, int) {
        int64_t b, e;
        split_range(n, i, nc, 1, b, e);
        if (b < e) rows(b, e);
    });
}

// x[t, r] += y[t, r] for rows [rb, re) of n tokens: the residual add, fused into each thread's share of
// the output projection so it runs where those values are still in cache.
void add_residual(float* x, const float* y, int64_t n, int64_t d, int64_t rb, int64_t re) {
    for (int64_t t = 0; t < n; ++t)
        for (int64_t r = rb; r < re; ++r) x[t * d + r] += y[t * d + r];
}

inline float relu2(float z) { return z > 0.0f ? z * z : 0.0f; }

// y[:, rb:re] = W x for one BitLinear, times its optional output scale, plus its optional bias. Every path (prompt
// rows, decode, the fused q/k/v + attention job, batched rows) projects through here, before RoPE.
void bitlinear_rows(const BitLinear& b, const QuantizedActs& x, float* y, int64_t ldy, int64_t n, int64_t rb,
                    int64_t re, KernelKind kind) {
    if (rb >= re) return;
    ternary_matmul(b.w, x, y, ldy, rb, re, kind);
    if (b.has_out_scale)
        for (int64_t t = 0; t < n; ++t)
            for (int64_t r = rb; r < re; ++r) y[t * ldy + r] *= b.out_scale;
    if (!b.bias.empty())
        for (int64_t t = 0; t < n; ++t)
            for (int64_t r = rb; r < re; ++r) y[t * ldy + r] += b.bias[static_cast<size_t>(r)];
}

}  // namespace

void check_forward_args(const char* who, const int32_t* tokens, int64_t n, int64_t pos, int64_t context,
                        int64_t vocab) {
    if (n <= 0) throw std::invalid_argument(std::string(who) + ": no tokens");
    if (pos < 0 || pos > context || n > context - pos)
        throw std::out_of_range(std::string(who) + ": positions " + std::to_string(pos) + ".." +
                                std::to_string(pos + n - 1) + " exceed the context length " + std::to_string(context));
    for (int64_t i = 0; i < n; ++i)
        if (tokens[i] < 0 || tokens[i] >= vocab)
            throw std::out_of_range("token id " + std::to_string(tokens[i]) + " at index " + std::to_string(i) +
                                    " is out of range [0, " + std::to_string(vocab) + ")");
}

void Model::forward(const int32_t* tokens, int64_t n, int64_t pos, float* logits, bool all_logits, int slot) {
    check_forward_args("forward", tokens, n, pos, ctx_, cfg_.vocab);
    if (slot < 0 || slot >= sequences_)
        throw std::out_of_range("sequence " + std::to_string(slot) + " is out of range [0, " + std::to_string(sequences_) +
                                ")");
    for (int64_t c = 0; c < n; c += max_batch_) {
        const int64_t m = std::min(max_batch_, n - c);
        const bool last = c + m == n;
        for (int64_t t = 0; t < m; ++t) row_pos_[t] = pos + c + t, row_slot_[t] = slot;
        if (all_logits) forward_rows(tokens + c, m, logits + c * cfg_.vocab, true);
        else forward_rows(tokens + c, m, last ? logits : nullptr, false);
    }
}

void Model::forward_batch(const int32_t* tokens, const int64_t* pos, const int32_t* slots, int64_t n, float* logits) {
    forward_batch(tokens, pos, slots, n, logits, nullptr, n);
}

void Model::forward_batch(const int32_t* tokens, const int64_t* pos, const int32_t* slots, int64_t n, float* logits,
                          const int64_t* logit_rows, int64_t n_logits) {
    // Rows are bounded by the scratch buffers (max_batch); without `slots`, row t is sequence t.
    const int64_t cap = slots ? max_batch_ : sequences_;
    if (n <= 0 || n > cap)
        throw std::invalid_argument("forward_batch: " + std::to_string(n) + " rows, need 1.." + std::to_string(cap));
    for (int64_t t = 0; t < n; ++t) {
        check_forward_args("forward_batch", tokens + t, 1, pos[t], ctx_, cfg_.vocab);
        const int64_t s = slots ? slots[t] : t;
        if (s < 0 || s >= sequences_)
            throw std::out_of_range("forward_batch: sequence " + std::to_string(s) + " is out of range [0, " +
                                    std::to_string(sequences_) + ")");
        // A sequence may take several rows (a prompt chunk beside decode rows): every row's K/V is stored before
        // any row attends, so a row sees its own sequence's earlier rows. Two rows at one position would write the
        // same cache entries.
        for (int64_t u = 0; u < t; ++u)
            if (row_slot_[u] == s && row_pos_[u] == pos[t])
                throw std::invalid_argument("forward_batch: sequence " + std::to_string(s) + " twice at position " +
                                            std::to_string(pos[t]));
        row_pos_[t] = pos[t], row_slot_[t] = s;
    }
    if (!logit_rows) {
        if (n_logits != n) throw std::invalid_argument("forward_batch: n_logits must be n without logit_rows");
        forward_rows(tokens, n, logits, true);
        return;
    }
    if (n_logits < 0 || n_logits > n) throw std::invalid_argument("forward_batch: n_logits out of range");
    for (int64_t i = 0; i < n_logits; ++i)
        if (logit_rows[i] < 0 || logit_rows[i] >= n || (i > 0 && logit_rows[i] <= logit_rows[i - 1]))
            throw std::invalid_argument("forward_batch: logit rows must be increasing row indices in [0, " +
                                        std::to_string(n) + ")");
    forward_rows(tokens, n, nullptr, false);
    if (n_logits > 0) head(logit_rows, n_logits, logits);
}

void Model::forward_rows(const int32_t* tokens, int64_t n, float* logits, bool all_logits) {
    const ModelConfig& c = cfg_;
    const int64_t D = c.dim, F = c.ffn, KV = c.kv_dim(), QD = c.attn_dim;
    const KernelKind kind = kernel_;
    // Matmul jobs run in chunks_ (several a thread, shrinking): a thread that falls behind, or is descheduled,
    // sheds work, and the threads finish close together.
#ifdef BLLAMA_DECODE_PROFILE
    const bool prof_on = n == 1 && logits && !all_logits;
    if (prof_on) {
        g_prof.tokens++, g_prof.threads = pool_.size();
        const double kv_row = double(KV) * (kv_f16_ ? 2 : 4);
        for (const LayerWeights& L : layers_) {
            g_prof.bytes[DecodeProfile::kQkvAttn] += gemv_read_bytes(L.q.w) + gemv_read_bytes(L.k.w) +
                                                     gemv_read_bytes(L.v.w) + 2 * kv_row * double(row_pos_[0] + 1);
            g_prof.bytes[DecodeProfile::kO] += gemv_read_bytes(L.o.w);
            g_prof.bytes[DecodeProfile::kGateUp] += gemv_read_bytes(L.gate.w) + gemv_read_bytes(L.up.w);
            g_prof.bytes[DecodeProfile::kDown] += gemv_read_bytes(L.down.w);
        }
        g_prof.bytes[DecodeProfile::kHead] += double(head_bytes());
    }
    g_prof_active = prof_on;
    const double prof_t0 = prof_on ? prof_now() : 0;
    double prof_t = prof_t0;
#endif

    for (int64_t t = 0; t < n; ++t) {
        const uint16_t* row = embd_ + static_cast<int64_t>(tokens[t]) * D;
        for (int64_t i = 0; i < D; ++i) x_[t * D + i] = f16_to_f32(row[i]);
    }
    rope_tables(n);
    // The fused attention block (below) hands out one chunk per kv head: with at least 4 per thread, dynamic
    // claiming still balances the threads (and sheds a descheduled one's share); with fewer (2B4T's 5 kv heads on 2
    // threads would split 3:2) the projections are split by rows and attention runs as its own job.
    const int64_t KVH = c.n_kv_heads, hd = c.head_dim, group = c.n_heads / c.n_kv_heads;
    const bool fused_attention = KVH >= 4 * pool_.size() && hd % kRowAlign == 0;
    PROF_MARK(kEmbed)

    for (int64_t l = 0; l < c.n_layers; ++l) {
        const LayerWeights& L = layers_[static_cast<size_t>(l)];

        // Attention: q, k, v share one quantized input.
        bitlinear_input(pool_, x_.data(), L.attn_norm.data(), xp_.data(), n, D, c.dim_in, c.rms_eps, qa_dim_, kind);
        PROF_MARK(kAttnIn)
        if (fused_attention) {
            // One job: kv head g's chunk computes the q rows of its query heads and its own k, v rows, rotates them,
            // writes k, v into the cache and attends. Attention reads no other chunk's rows, so the step from the
            // projections to attention needs no handoff, and rope and the cache writes run in parallel.
            pool_.run(static_cast<int>(KVH), [&](int g, int thread) {
                PROF_CHUNK_BEGIN
                const int64_t qb = g * group * hd, qe = qb + group * hd, kb = g * hd, ke = kb + hd;
                bitlinear_rows(L.q, qa_dim_, q_.data(), QD, n, qb, qe, kind);
                bitlinear_rows(L.k, qa_dim_, k_.data(), KV, n, kb, ke, kind);
                bitlinear_rows(L.v, qa_dim_, v_.data(), KV, n, kb, ke, kind);
#ifdef BLLAMA_DECODE_PROFILE
                const double pm_ = prof_on ? prof_now() : 0;
                if (prof_on && thread < 16) g_prof.qkv_busy[thread] += pm_ - pc0_;
#endif
                if (c.qk_norm) {
                    head_rmsnorm(q_.data(), L.q_norm, n, c.n_heads, hd, g * group, (g + 1) * group, c.rms_eps);
                    head_rmsnorm(k_.data(), L.k_norm, n, KVH, hd, g, g + 1, c.rms_eps);
                }
                apply_rope(q_.data(), n, c.n_heads, g * group, (g + 1) * group);
                apply_rope(k_.data(), n, KVH, g, g + 1);
                write_kv(l, n, kb, ke);
                attend_rows(l, g, 0, n, thread);
#ifdef BLLAMA_DECODE_PROFILE
                if (prof_on && thread < 16) g_prof.attn_busy[thread] += prof_now() - pm_;
#endif
                PROF_CHUNK_END(kQkvAttn, thread)
            });
        } else {
            pool_.run(chunks_.count(), [&](int i, int) {
                int64_t b, e;
                chunks_.range(QD, i, kRowAlign, b, e);
                bitlinear_rows(L.q, qa_dim_, q_.data(), QD, n, b, e, kind);
                chunks_.range(KV, i, kRowAlign, b, e);
                bitlinear_rows(L.k, qa_dim_, k_.data(), KV, n, b, e, kind);
                bitlinear_rows(L.v, qa_dim_, v_.data(), KV, n, b, e, kind);
            });
            if (c.qk_norm) {
                head_rmsnorm(q_.data(), L.q_norm, n, c.n_heads, hd, 0, c.n_heads, c.rms_eps);
                head_rmsnorm(k_.data(), L.k_norm, n, KVH, hd, 0, KVH, c.rms_eps);
            }
            apply_rope(q_.data(), n, c.n_heads, 0, c.n_heads);
            apply_rope(k_.data(), n, KVH, 0, KVH);
            write_kv(l, n, 0, KV);
            attention(l, n);
        }
        PROF_MARK(kQkvAttn)

        bitlinear_input(pool_, att_.data(), c.sub_norms ? L.attn_sub_norm.data() : nullptr, xp_.data(), n, QD,
                        c.attn_in, c.rms_eps, qa_attn_, kind);
        PROF_MARK(kOIn)
        pool_.run(chunks_.count(), [&](int i, int th) {
            (void)th;
            PROF_CHUNK_BEGIN
            int64_t b, e;
            chunks_.range(D, i, kRowAlign, b, e);
            bitlinear_rows(L.o, qa_attn_, q_.data(), D, n, b, e, kind);
            add_residual(x_.data(), q_.data(), n, D, b, e);
            PROF_CHUNK_END(kO, th)
        });
        PROF_MARK(kO)

        // Feed-forward: gate and up share one quantized input.
        bitlinear_input(pool_, x_.data(), L.ffn_norm.data(), xp_.data(), n, D, c.dim_in, c.rms_eps, qa_dim_, kind);
        PROF_MARK(kFfnIn)
        const bool relu_sq = c.activation == Activation::Relu2;
        pool_.run(chunks_.count(), [&](int i, int th) {
            (void)th;
            PROF_CHUNK_BEGIN
            int64_t b, e;
            chunks_.range(F, i, kRowAlign, b, e);
            bitlinear_rows(L.gate, qa_dim_, gate_.data(), F, n, b, e, kind);
            bitlinear_rows(L.up, qa_dim_, up_.data(), F, n, b, e, kind);
            for (int64_t t = 0; t < n; ++t) {
                float* g = gate_.data() + t * F;
                const float* u = up_.data() + t * F;
                if (relu_sq)
                    for (int64_t r = b; r < e; ++r) g[r] = relu2(g[r]) * u[r];
                else
                    kernels_.silu_mul(g + b, u + b, e - b);
            }
            PROF_CHUNK_END(kGateUp, th)
        });
        PROF_MARK(kGateUp)
        bitlinear_input(pool_, gate_.data(), c.sub_norms ? L.ffn_sub_norm.data() : nullptr, xp_.data(), n, F, c.ffn_in,
                        c.rms_eps, qa_ffn_, kind);
        PROF_MARK(kDownIn)
        pool_.run(chunks_.count(), [&](int i, int th) {
            (void)th;
            PROF_CHUNK_BEGIN
            int64_t b, e;
            chunks_.range(D, i, kRowAlign, b, e);
            bitlinear_rows(L.down, qa_ffn_, q_.data(), D, n, b, e, kind);
            add_residual(x_.data(), q_.data(), n, D, b, e);
            PROF_CHUNK_END(kDown, th)
        });
        PROF_MARK(kDown)
    }

    if (!logits) return;
    // The head over all rows, or only the last token's.
    const int64_t first = all_logits ? 0 : n - 1;
    for (int64_t t = first; t < n; ++t) head_rows_[t - first] = t;
    head(head_rows_.data(), n - first, logits);
#ifdef BLLAMA_DECODE_PROFILE
    if (prof_on) g_prof.total += prof_now() - prof_t0;
    g_prof_active = false;
#endif
}

// Head: a float (or int8 / 4-bit) matmul over the final-normed hidden rows rows[0..m) of x_, logits row i for rows[i].
// Every head kernel computes a row alone (the f16 one for up to kF16ExactTokens rows), so which other rows share
// the call does not change a row's logits.
void Model::head(const int64_t* rows, int64_t m, float* logits) {
    const ModelConfig& c = cfg_;
    const int64_t D = c.dim, V = c.vocab;
    const KernelKind kind = kernel_;
#ifdef BLLAMA_DECODE_PROFILE
    const bool prof_on = g_prof_active;
    double prof_t = prof_on ? prof_now() : 0;
#endif
    for (int64_t i = 0; i < m; ++i) rmsnorm(x_.data() + rows[i] * D, output_norm_.data(), xn_.data() + i * D, 1, D, c.rms_eps);
    if (head_type_ != HeadType::F16) {
        // Int8 / 4-bit head: the normed rows quantized per token like BitLinear inputs (kernels/head_q8.h, head_q4.h).
        quantize_acts(xn_.data(), m, D, qa_head_, kind);
        PROF_MARK(kHeadIn)
        const bool q4 = head_type_ == HeadType::Q4;
        pool_.run(chunks_.count(), [&](int i, int th) {
            (void)th;
            PROF_CHUNK_BEGIN
            int64_t b, e;
            chunks_.range(V, i, 64, b, e);
            if (b < e) {
                if (q4) q4_head_matmul(head_q4_, qa_head_, logits, V, b, e, kind);
                else q8_head_matmul(head_q8_, qa_head_, logits, V, b, e, kind);
            }
            PROF_CHUNK_END(kHead, th)
        });
        PROF_MARK(kHead)
        return;
    }
    PROF_MARK(kHeadIn)
    pool_.run(chunks_.count(), [&](int i, int th) {
        (void)th;
        PROF_CHUNK_BEGIN
        int64_t b, e;
        chunks_.range(V, i, 64, b, e);
        if (b < e) f16_matmul(head_, D, xn_.data(), m, logits, V, b, e, kind);
        PROF_CHUNK_END(kHead, th)
    });
    PROF_MARK(kHead)
}

}  // namespace bllama

#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace bllama {

void validate(const SamplingParams& p) {
    if (!(p.temperature >= 0.0f) || std::isinf(p.temperature))  // inf would sample uniformly, whatever the logits
        throw std::invalid_argument("temperature must be a finite number >= 0, got " + std::to_string(p.temperature));
    if (p.top_k < 0) throw std::invalid_argument("top_k must be >= 0, got " + std::to_string(p.top_k));
    if (!(p.top_p > 0.0f)) throw std::invalid_argument("top_p must be > 0 (1 or more: off), got " + std::to_string(p.top_p));
    if (!(p.repetition_penalty > 0.0f) || std::isinf(p.repetition_penalty))
        throw std::invalid_argument("repetition_penalty must be a positive number, got " + std::to_string(p.repetition_penalty));
}

int32_t argmax(const float* x, int64_t n) {
    int64_t best = 0;
    for (int64_t i = 1; i < n; ++i)
        if (x[i] > x[best]) best = i;
    return static_cast<int32_t>(best);
}

Sampler::Sampler(int64_t vocab) : vocab_(vocab), seen_(static_cast<size_t>(vocab), 0), idx_(static_cast<size_t>(vocab)) {
    seen_list_.reserve(static_cast<size_t>(vocab));  // at most every id once: observe() never allocates
}

void Sampler::reset(const SamplingParams& params) {
    validate(params);
    params_ = params;
    rng_.seed(params.seed);
    for (int32_t t : seen_list_) seen_[t] = 0;
    seen_list_.clear();
}

void Sampler::observe(int32_t token) {
    if (token < 0 || token >= vocab_) return;
    if (!seen_[token]) {
        seen_[token] = 1;
        seen_list_.push_back(token);  // amortized: grows at most to the context length, once
    }
}

int32_t Sampler::sample(float* logits) {
    const float rp = params_.repetition_penalty;
    if (rp != 1.0f)
        for (int32_t t : seen_list_) logits[t] = logits[t] > 0.0f ? logits[t] / rp : logits[t] * rp;
    if (is_greedy(params_)) return argmax(logits, vocab_);
    return sample_filtered(logits);
}

// Softmax over the top-k (or all) candidates, then the smallest prefix whose mass reaches top_p,
// then one draw. Candidates are ordered by (logit desc, id asc) so ties are deterministic. For
// top-p without top-k we sort a growing prefix instead of the whole vocabulary: the nucleus is
// usually tiny, and a prefix that already holds top_p of the mass is exactly the nucleus's prefix.
int32_t Sampler::sample_filtered(float* logits) {
    const float inv_t = 1.0f / params_.temperature;
    const float mx = logits[argmax(logits, vocab_)];
    // Probabilities up to a common factor, computed once for the whole vocabulary.
    double total = 0.0;
    for (int64_t i = 0; i < vocab_; ++i) {
        const float p = std::exp((logits[i] - mx) * inv_t);
        logits[i] = p;
        total += p;
    }
    auto by_prob = [logits](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
    for (int64_t i = 0; i < vocab_; ++i) idx_[i] = static_cast<int32_t>(i);

    int64_t k = params_.top_k > 0 ? std::min<int64_t>(params_.top_k, vocab_) : vocab_;
    const bool use_p = params_.top_p < 1.0f;
    int64_t sorted = 0;  // idx_[0, sorted) is in final order
    if (k < vocab_) {
        std::nth_element(idx_.begin(), idx_.begin() + k, idx_.end(), by_prob);
        std::sort(idx_.begin(), idx_.begin() + k, by_prob);
        sorted = k;
        total = 0.0;
        for (int64_t i = 0; i < k; ++i) total += logits[idx_[i]];
    }
    int64_t n = k;
    if (use_p) {
        const double target = params_.top_p * total;
        for (int64_t m = std::min<int64_t>(64, k);; m = std::min<int64_t>(m * 4, k)) {
            if (m > sorted) {
                std::partial_sort(idx_.begin() + sorted, idx_.begin() + m, idx_.begin() + k, by_prob);
                sorted = m;
            }
            double cum = 0.0;
            int64_t cut = -1;
            for (int64_t i = 0; i < m; ++i) {
                cum += logits[idx_[i]];
                if (cum >= target) { cut = i + 1; break; }
            }
            if (cut > 0) { n = cut; break; }
            if (m == k) { n = k; break; }  // rounding: keep everything
        }
    }
    double mass = 0.0;
    for (int64_t i = 0; i < n; ++i) mass += logits[idx_[i]];
    // 53 random bits -> uniform in [0, 1): the same on every platform (unlike std::uniform_real).
    const double u = static_cast<double>(rng_() >> 11) * 0x1.0p-53 * mass;
    double cum = 0.0;
    for (int64_t i = 0; i < n; ++i) {
        cum += logits[idx_[i]];
        if (u < cum) return idx_[i];
    }
    return idx_[n - 1];
}

}  // namespace bllama

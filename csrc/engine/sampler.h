// Next-token selection from logits: greedy, or temperature / top-k / top-p sampling, with an
// optional repetition penalty over the tokens seen so far. All buffers are sized once for the
// vocabulary; sample() does not allocate. Deterministic for a given seed and token history.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

namespace bllama {

struct SamplingParams {
    bool do_sample = false;          // false: greedy (argmax), whatever the other knobs say
    float temperature = 1.0f;        // <= 0 also means greedy
    int top_k = 0;                   // 0: off
    float top_p = 1.0f;              // >= 1: off
    float repetition_penalty = 1.0f; // 1: off; > 1 discourages repeats (HF/CTRL convention)
    // Reproducible per device kind: the CPU (mt19937_64, here) and the GPU (a counter-based hash, csrc/cuda/sampling.cu)
    // draw from the same distribution with different generators, so for one seed only greedy decoding agrees
    // across them.
    uint64_t seed = 0;
};

void validate(const SamplingParams& p);  // std::invalid_argument on NaN / negative values

// Whether `p` picks the argmax (every backend asks this one question). A temperature so small that 1/temperature
// overflows float (under ~2.9e-39) is the greedy limit: sampling would scale the top logit's 0 by inf into NaN and
// return the vocabulary's last id every time.
inline bool is_greedy(const SamplingParams& p) {
    return !p.do_sample || p.temperature <= 0.0f || std::isinf(1.0f / p.temperature);
}

class Sampler {
public:
    explicit Sampler(int64_t vocab);

    // Starts a new sequence: reseeds the RNG and forgets the seen tokens.
    void reset(const SamplingParams& params);
    // Marks a token as seen (prompt and generated tokens alike) for the repetition penalty.
    void observe(int32_t token);
    // Picks the next token. `logits` (vocab floats) is modified in place by the penalty/temperature.
    int32_t sample(float* logits);

private:
    int32_t sample_filtered(float* logits);

    int64_t vocab_;
    SamplingParams params_;
    std::mt19937_64 rng_;
    std::vector<uint8_t> seen_;
    std::vector<int32_t> seen_list_;
    std::vector<int32_t> idx_;  // candidate ids, reordered by probability
};

// Index of the largest value; the lowest index wins ties.
int32_t argmax(const float* x, int64_t n);

}  // namespace bllama

#include "engine/engine.h"

#include <algorithm>
#include <chrono>
#include <stdexcept>

namespace bllama {

namespace {
using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

bool is_stop(const std::vector<int32_t>& stop_ids, int32_t token) {
    return std::find(stop_ids.begin(), stop_ids.end(), token) != stop_ids.end();
}

std::pair<std::unique_ptr<Backend>, double> timed_load(const std::string& path, const LoadOptions& opts) {
    const auto t0 = Clock::now();
    auto b = opts.device == Device::Cuda ? make_cuda_backend(path, opts) : make_cpu_backend(Model::load(path, opts));
    return {std::move(b), seconds_since(t0)};
}
}  // namespace

const char* stop_reason_name(StopReason r) {
    switch (r) {
        case StopReason::Length: return "length";
        case StopReason::StopToken: return "stop_token";
        case StopReason::Callback: return "callback";
        default: return "none";
    }
}

Engine::Engine(const std::string& path, const LoadOptions& opts) : Engine(timed_load(path, opts)) {}

Engine::Engine(std::pair<std::unique_ptr<Backend>, double> loaded) : Engine(std::move(loaded.first), loaded.second) {}

Engine::Engine(std::unique_ptr<Model> model, double load_seconds)
    : Engine(make_cpu_backend(std::move(model)), load_seconds) {}

Engine::Engine(std::unique_ptr<Backend> backend, double load_seconds)
    : backend_(std::move(backend)), load_seconds_(load_seconds),
      kept_(static_cast<size_t>(std::max(1, backend_->max_sequences()))) {
    stats_.load_seconds = load_seconds_;
    // Sized once: the decode loop appends a token per step and must not allocate (tests/cpp/test_decode_alloc.cpp).
    for (auto& k : kept_) k.reserve(static_cast<size_t>(backend_->context()));
}

Slots& Engine::slots() {
    if (!slots_) slots_ = std::make_unique<Slots>(*backend_, kept_);
    return *slots_;
}

void Engine::check_no_slots(const char* what) const {
    if (slots_active() > 0)
        throw std::runtime_error(std::string("the engine is busy: ") + std::to_string(slots_active()) +
                                 " slot(s) are running; " + what + " would overwrite their KV cache");
}

void Engine::check_ids(const std::vector<int32_t>& ids, const char* what) const {
    if (ids.empty()) throw std::invalid_argument(std::string(what) + " is empty");
    const int64_t V = vocab_size();
    for (size_t i = 0; i < ids.size(); ++i)
        if (ids[i] < 0 || ids[i] >= V)
            throw std::out_of_range(std::string(what) + ": token id " + std::to_string(ids[i]) + " at index " +
                                    std::to_string(i) + " is out of range [0, " + std::to_string(V) + ")");
}

void Engine::reset() {
    check_no_slots("reset()");
    n_past_ = 0;
    for (auto& k : kept_) k.clear();
}

std::vector<int32_t> Engine::generate(const std::vector<int32_t>& prompt, int64_t max_new_tokens,
                                      const SamplingParams& params, const std::vector<int32_t>& stop_ids,
                                      const TokenCallback& on_token) {
    check_request(prompt, max_new_tokens);
    const int64_t n_prompt = static_cast<int64_t>(prompt.size());
    validate(params);  // before any work
    check_no_slots("generate()");

    stats_ = GenerateStats{};
    stats_.load_seconds = load_seconds_;
    stats_.prompt_tokens = n_prompt;
    std::vector<int32_t> out;
    out.reserve(static_cast<size_t>(max_new_tokens));
    n_past_ = 0;
    if (max_new_tokens == 0) {
        stats_.stop_reason = StopReason::Length;
        return out;
    }

    auto t0 = Clock::now();
    // Slot 0's kept KV cache covers prompt[0, reuse): only the rest runs. The ledger forgets the positions about to
    // be overwritten before anything runs, and learns each token once its KV is written, so it stays true if a
    // forward or the callback throws.
    auto& kept = kept_[0];
    const int64_t reuse = backend_->exact_kv_reuse() ? reusable_prefix(kept, prompt) : 0;
    kept.resize(static_cast<size_t>(reuse));
    int32_t next;
    if (reuse > 0) {
        backend_->begin_slot(0, prompt, params);
        next = backend_->prefill_slot(0, prompt.data() + reuse, n_prompt - reuse, reuse, true, -1, nullptr);
    } else {
        next = backend_->prefill(prompt, params);
    }
    kept.assign(prompt.begin(), prompt.end());
    n_past_ = n_prompt;
    stats_.cached_tokens = reuse;
    stats_.prompt_seconds = seconds_since(t0);

    t0 = Clock::now();
    for (;;) {
        if (is_stop(stop_ids, next)) {
            stats_.stop_reason = StopReason::StopToken;
            break;
        }
        out.push_back(next);
        // Count the step before the callback so the stats hold even if the callback throws.
        stats_.generated_tokens = static_cast<int64_t>(out.size());
        stats_.decode_seconds = seconds_since(t0);
        if (on_token && on_token(next)) {
            stats_.stop_reason = StopReason::Callback;
            break;
        }
        if (static_cast<int64_t>(out.size()) >= max_new_tokens) {
            stats_.stop_reason = StopReason::Length;
            break;
        }
        next = backend_->decode(next, n_past_);
        kept.push_back(out.back());
        ++n_past_;
        ++stats_.decode_tokens;
    }
    stats_.decode_seconds = seconds_since(t0);
    stats_.generated_tokens = static_cast<int64_t>(out.size());
    return out;
}

namespace {
SamplingParams with_seed(SamplingParams p, uint64_t seed) {
    p.seed = seed;
    return p;
}
}  // namespace

std::vector<std::vector<int32_t>> Engine::generate_batch(const std::vector<std::vector<int32_t>>& prompts,
                                                         int64_t max_new_tokens, const SamplingParams& params,
                                                         const std::vector<int32_t>& stop_ids,
                                                         const BatchTokenCallback& on_token) {
    if (prompts.empty()) throw std::invalid_argument("generate_batch: no prompts");
    for (const auto& p : prompts) check_request(p, max_new_tokens);
    validate(params);
    check_no_slots("generate_batch()");
    for (auto& k : kept_) k.clear();  // the batch overwrites the slots' caches (slot 0's is kept again when S <= 1)

    std::vector<std::vector<int32_t>> out(prompts.size());
    for (auto& o : out) o.reserve(static_cast<size_t>(max_new_tokens));  // no allocation per decoded token
    GenerateStats total;
    total.load_seconds = load_seconds_;
    const int S = backend_->max_sequences();
    if (S <= 1) {
        for (size_t i = 0; i < prompts.size(); ++i) {
            TokenCallback own;
            if (on_token) own = [&on_token, i](int32_t t) { return on_token(static_cast<int>(i), t); };
            out[i] = generate(prompts[i], max_new_tokens, with_seed(params, params.seed + i), stop_ids, own);
            total.prompt_tokens += stats_.prompt_tokens;
            total.prompt_seconds += stats_.prompt_seconds;
            total.decode_tokens += stats_.decode_tokens;
            total.decode_seconds += stats_.decode_seconds;
            total.generated_tokens += stats_.generated_tokens;
        }
        stats_ = total;
        return out;
    }
    for (size_t g0 = 0; g0 < prompts.size(); g0 += static_cast<size_t>(S)) {
        const int B = static_cast<int>(std::min(prompts.size() - g0, static_cast<size_t>(S)));
        const std::vector<std::vector<int32_t>> group(prompts.begin() + static_cast<std::ptrdiff_t>(g0),
                                                      prompts.begin() + static_cast<std::ptrdiff_t>(g0) + B);
        for (const auto& p : group) total.prompt_tokens += static_cast<int64_t>(p.size());
        if (max_new_tokens == 0) continue;
        auto t0 = Clock::now();
        // Prompt i samples with seed + i (the backend gives slot b of a group its seed + b).
        std::vector<int32_t> cur = backend_->prefill_batch(group, with_seed(params, params.seed + g0));
        total.prompt_seconds += seconds_since(t0);
        std::vector<uint8_t> live(static_cast<size_t>(B), 1);  // 0 once the sequence has stopped
        t0 = Clock::now();
        for (;;) {
            int n_live = 0;
            for (int b = 0; b < B; ++b) {
                auto& o = out[g0 + static_cast<size_t>(b)];
                uint8_t& running = live[static_cast<size_t>(b)];
                if (!running) continue;
                if (is_stop(stop_ids, cur[static_cast<size_t>(b)])) {
                    running = 0;
                    continue;
                }
                o.push_back(cur[static_cast<size_t>(b)]);
                const bool stop_here = on_token && on_token(static_cast<int>(g0) + b, cur[static_cast<size_t>(b)]);
                if (stop_here || static_cast<int64_t>(o.size()) >= max_new_tokens) running = 0;
                else ++n_live;
            }
            if (n_live == 0) break;
            // Finished sequences are left out where the backend can (CPU); on the GPU they keep stepping with
            // the rest and their tokens are dropped (max_new_tokens fits every prompt's context, so none can
            // overrun it).
            total.decode_tokens += backend_->decode_batch(B, live.data(), cur.data());
        }
        total.decode_seconds += seconds_since(t0);
    }
    for (const auto& o : out) total.generated_tokens += static_cast<int64_t>(o.size());
    stats_ = total;  // stop_reason stays None: each sequence stopped for its own reason
    n_past_ = 0;
    return out;
}

void Engine::logits(const std::vector<int32_t>& ids, float* out) {
    check_ids(ids, "ids");
    const int64_t n = static_cast<int64_t>(ids.size());
    if (n > context_length())
        throw std::out_of_range(std::to_string(n) + " tokens exceed the context length " + std::to_string(context_length()));
    check_no_slots("logits()");
    kept_[0].clear();
    backend_->logits(ids.data(), n, out);
    kept_[0] = ids;
    n_past_ = n;
}

std::vector<float> Engine::logits(const std::vector<int32_t>& ids) {
    check_ids(ids, "ids");
    std::vector<float> out(ids.size() * static_cast<size_t>(vocab_size()));
    logits(ids, out.data());
    return out;
}

}  // namespace bllama

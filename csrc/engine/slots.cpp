#include "engine/slots.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "engine/backend.h"

namespace bllama {

int64_t reusable_prefix(const std::vector<int32_t>& kept, const std::vector<int32_t>& prompt) {
    const size_t cap = prompt.empty() ? 0 : prompt.size() - 1;
    const size_t n = std::min(kept.size(), cap);
    size_t i = 0;
    while (i < n && kept[i] == prompt[i]) ++i;
    return static_cast<int64_t>(i);
}

void check_request(const std::vector<int32_t>& prompt, int64_t max_new_tokens, int64_t vocab, int64_t context) {
    if (prompt.empty()) throw std::invalid_argument("prompt is empty");
    for (size_t i = 0; i < prompt.size(); ++i)
        if (prompt[i] < 0 || prompt[i] >= vocab)
            throw std::out_of_range("prompt: token id " + std::to_string(prompt[i]) + " at index " + std::to_string(i) +
                                    " is out of range [0, " + std::to_string(vocab) + ")");
    if (max_new_tokens < 0) throw std::invalid_argument("max_new_tokens must be >= 0, got " + std::to_string(max_new_tokens));
    const int64_t n_prompt = static_cast<int64_t>(prompt.size());
    if (n_prompt > context || max_new_tokens > context - n_prompt)
        throw std::out_of_range("prompt (" + std::to_string(n_prompt) + " tokens) + max_new_tokens (" +
                                std::to_string(max_new_tokens) + ") exceeds the context length " + std::to_string(context));
}

void compute_logprobs(const float* logits, int64_t vocab, int32_t token, int top, TokenLogprobs& out) {
    // log_softmax in double: the sum over a large vocabulary keeps its digits.
    const float mx = *std::max_element(logits, logits + vocab);
    double sum = 0;
    for (int64_t i = 0; i < vocab; ++i) sum += std::exp(static_cast<double>(logits[i]) - mx);
    const double lse = static_cast<double>(mx) + std::log(sum);
    out.logprob = static_cast<float>(static_cast<double>(logits[token]) - lse);
    out.top.clear();
    const int k = static_cast<int>(std::min<int64_t>(std::max(top, 0), vocab));
    if (k == 0) return;
    std::vector<int32_t> idx(static_cast<size_t>(vocab));
    std::iota(idx.begin(), idx.end(), 0);
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [logits](int32_t a, int32_t b) {
        return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    });
    for (int i = 0; i < k; ++i)
        out.top.emplace_back(idx[static_cast<size_t>(i)], static_cast<float>(static_cast<double>(logits[idx[static_cast<size_t>(i)]]) - lse));
}

int32_t sample_with_logprobs(Sampler& s, float* row, int64_t vocab, int lp_top, TokenLogprobs* lp, float* scratch) {
    if (lp_top < 0 || !lp) return s.sample(row);
    std::copy(row, row + vocab, scratch);
    const int32_t t = s.sample(row);
    compute_logprobs(scratch, vocab, t, lp_top, *lp);
    return t;
}

const char* finish_reason_name(FinishReason r) {
    switch (r) {
        case FinishReason::Length: return "length";
        case FinishReason::Stop: return "stop";
        default: return "";
    }
}

Slots::Slots(Backend& backend, KvLedger& kept) : backend_(backend), kept_(kept) {
    const size_t S = static_cast<size_t>(backend.max_sequences());
    if (kept_.size() != S) throw std::logic_error("Slots: the KV ledger must have one entry per sequence");
    slots_.resize(S);
    step_tokens_ = backend.prompt_chunk();
    rows_.reserve(static_cast<size_t>(std::max<int64_t>(backend.max_step_rows(), S)) + S);
    row_next_.reserve(rows_.capacity());
    row_logprobs_.resize(rows_.capacity());
    joining_.reserve(S);
    take_.resize(S);
}

void Slots::set_step_tokens(int64_t n) {
    if (n < 1) throw std::invalid_argument("step tokens must be >= 1, got " + std::to_string(n));
    step_tokens_ = n;
}

int Slots::active() const {
    return static_cast<int>(std::count_if(slots_.begin(), slots_.end(), [](const State& s) { return s.phase != Phase::Free; }));
}

int Slots::add(SlotRequest req) {
    check_request(req.prompt, req.max_new_tokens, backend_.config().vocab, backend_.context());
    validate(req.params);
    if (req.top_logprobs < 0 || req.top_logprobs > kMaxTopLogprobs)
        throw std::invalid_argument("top logprobs must be in [0, " + std::to_string(kMaxTopLogprobs) + "], got " +
                                    std::to_string(req.top_logprobs));
    if (req.top_logprobs > 0) req.logprob = true;

    // The free slot with the longest reusable prefix; ties (and no prefix at all) go to the least recently used.
    const bool reuse = backend_.exact_kv_reuse();
    int best = -1;
    int64_t best_prefix = -1;
    for (int s = 0; s < capacity(); ++s) {
        const State& st = slots_[static_cast<size_t>(s)];
        if (st.phase != Phase::Free) continue;
        const int64_t prefix = reuse ? reusable_prefix(kept_[static_cast<size_t>(s)], req.prompt) : 0;
        if (prefix > best_prefix || (prefix == best_prefix && st.last_used < slots_[static_cast<size_t>(best)].last_used))
            best = s, best_prefix = prefix;
    }
    if (best < 0) throw SlotsFull("every slot is busy (" + std::to_string(capacity()) + " slots)");

    State& st = slots_[static_cast<size_t>(best)];
    // Positions from the prefix on are about to be overwritten: the ledger forgets them first.
    kept_[static_cast<size_t>(best)].resize(static_cast<size_t>(best_prefix));
    backend_.begin_slot(best, req.prompt, req.params);
    st = State{};
    st.req = std::move(req);
    st.phase = st.req.max_new_tokens == 0 ? Phase::Report : Phase::Prefill;
    st.next_prompt = best_prefix;
    st.cached = best_prefix;
    st.last_used = ++clock_;
    return best;
}

void Slots::cancel(int slot) {
    if (slot < 0 || slot >= capacity())
        throw std::out_of_range("slot " + std::to_string(slot) + " is out of range [0, " + std::to_string(capacity()) + ")");
    slots_[static_cast<size_t>(slot)].phase = Phase::Free;  // the ledger already holds what its KV cache holds
}

SlotEvent Slots::sampled(int s, int32_t token, const TokenLogprobs* lp) {
    State& st = slots_[static_cast<size_t>(s)];
    SlotEvent ev;
    ev.slot = s;
    ev.cached_tokens = st.cached;
    const auto& stops = st.req.stop_ids;
    if (std::find(stops.begin(), stops.end(), token) != stops.end()) {
        ev.finish = FinishReason::Stop;  // the stop id is not part of the reply (and never runs)
        st.phase = Phase::Free;
        return ev;
    }
    ev.token = token;
    if (lp) ev.has_logprob = true, ev.logprobs = *lp;
    if (++st.generated >= st.req.max_new_tokens) {
        ev.finish = FinishReason::Length;
        st.phase = Phase::Free;
    } else {
        st.phase = Phase::Decode;
        st.pending = token;
    }
    return ev;
}

std::vector<SlotEvent> Slots::step() {
    std::vector<SlotEvent> events;
    // Requests that asked for no tokens end without running anything.
    for (int s = 0; s < capacity(); ++s) {
        State& st = slots_[static_cast<size_t>(s)];
        if (st.phase != Phase::Report) continue;
        SlotEvent ev;
        ev.slot = s, ev.finish = FinishReason::Length, ev.cached_tokens = st.cached;
        events.push_back(std::move(ev));
        st.phase = Phase::Free;
    }

    // The step's rows: one decode token of every running slot, then prompt rows of joining slots (the order below)
    // within the token budget. Decode rows always run (the budget never delays a running reply); joining slots get
    // what the budget leaves, at least one row, so they progress however many slots decode.
    rows_.clear();
    for (int s = 0; s < capacity(); ++s) {
        const State& st = slots_[static_cast<size_t>(s)];
        if (st.phase != Phase::Decode) continue;
        SlotRow row;
        row.slot = s, row.token = st.pending, row.pos = st.pos, row.decode = true, row.sample = true;
        row.lp_top = logprob_ask(st);
        rows_.push_back(row);
    }
    const int64_t n_decode = static_cast<int64_t>(rows_.size());
    int64_t prompt_budget = backend_.prompt_chunk();  // a backend with separate prompt forwards: one chunk a step
    if (backend_.mixed_step())
        prompt_budget = std::min(std::max<int64_t>(step_tokens_ - n_decode, 1), backend_.max_step_rows() - n_decode);
    // Prompt rows: the slot that joined first takes a quarter of the budget; the joining slots whose whole rest fits
    // in what is left then finish now, the shortest first (equal ones in the order they joined); what remains goes
    // to the joining slots in the order they joined. So a short prompt that arrives during a long one's prefill gets
    // its first token at the next step instead of after the whole long prompt (at 4 requests/s in the serving
    // benchmark such requests were among the slowest first tokens), and no prompt waits on one that joined after it
    // unless that one finishes in the same step. Shortest-first for every row (partial prefills included) nearly
    // doubled the mean time to first token at overload (40 requests/s): long prompts started and then starved held
    // their slots (bench/NOTES-serve.md, item 11).
    joining_.clear();
    for (int s = 0; s < capacity(); ++s)
        if (slots_[static_cast<size_t>(s)].phase == Phase::Prefill) joining_.push_back(s);
    const auto left = [this](int s) {
        const State& st = slots_[static_cast<size_t>(s)];
        return static_cast<int64_t>(st.req.prompt.size()) - st.next_prompt;
    };
    const auto joined_before = [this](int a, int b) {
        return slots_[static_cast<size_t>(a)].last_used < slots_[static_cast<size_t>(b)].last_used;
    };
    std::fill(take_.begin(), take_.end(), 0);
    if (joining_.size() > 1) {
        std::sort(joining_.begin(), joining_.end(), [&](int a, int b) {
            return left(a) != left(b) ? left(a) < left(b) : joined_before(a, b);
        });
        const int oldest = *std::min_element(joining_.begin(), joining_.end(), joined_before);
        int64_t& first = take_[static_cast<size_t>(oldest)];
        first = std::min(left(oldest), std::max<int64_t>(prompt_budget / 4, 1));
        prompt_budget -= first;
        for (const int s : joining_) {
            const int64_t rest = left(s) - take_[static_cast<size_t>(s)];
            if (rest <= prompt_budget) take_[static_cast<size_t>(s)] += rest, prompt_budget -= rest;
        }
    }
    std::sort(joining_.begin(), joining_.end(), joined_before);
    for (const int s : joining_) {
        const int64_t m = std::min(prompt_budget, left(s) - take_[static_cast<size_t>(s)]);
        take_[static_cast<size_t>(s)] += m;
        prompt_budget -= m;
    }
    // Each slot's rows lie together, in joining_ order (the events below walk them so).
    size_t n_joining = 0;  // joining slots with rows this step: joining_[0 .. n_joining)
    for (const int s : joining_) {
        const int64_t m = take_[static_cast<size_t>(s)];
        if (m == 0) continue;
        const State& st = slots_[static_cast<size_t>(s)];
        const int64_t n_prompt = static_cast<int64_t>(st.req.prompt.size());
        for (int64_t i = 0; i < m; ++i) {
            SlotRow row;
            row.slot = s, row.pos = st.next_prompt + i, row.token = st.req.prompt[static_cast<size_t>(row.pos)];
            row.sample = row.pos == n_prompt - 1;
            row.lp_top = row.sample ? logprob_ask(st) : -1;
            rows_.push_back(row);
        }
        joining_[n_joining++] = s;
    }
    if (rows_.empty()) return events;

    row_next_.assign(rows_.size(), -1);
    row_logprobs_.resize(std::max(row_logprobs_.size(), rows_.size()));
    backend_.step_rows(rows_, row_next_.data(), row_logprobs_.data());

    // The KV of every row is written now: the ledger learns the tokens, then the events.
    for (int64_t r = 0; r < n_decode; ++r) {
        const SlotRow& row = rows_[static_cast<size_t>(r)];
        State& st = slots_[static_cast<size_t>(row.slot)];
        kept_[static_cast<size_t>(row.slot)].push_back(row.token);
        st.pos += 1;
        events.push_back(sampled(row.slot, row_next_[static_cast<size_t>(r)],
                                 row.lp_top >= 0 ? &row_logprobs_[static_cast<size_t>(r)] : nullptr));
    }
    size_t r = static_cast<size_t>(n_decode);
    for (size_t j = 0; j < n_joining; ++j) {
        const int s = joining_[j];
        State& st = slots_[static_cast<size_t>(s)];
        auto& kept = kept_[static_cast<size_t>(s)];
        const size_t first = r;
        for (; r < rows_.size() && rows_[r].slot == s; ++r) kept.push_back(rows_[r].token);
        st.next_prompt += static_cast<int64_t>(r - first);
        const SlotRow& last = rows_[r - 1];
        if (last.sample) {
            st.pos = st.next_prompt;
            events.push_back(sampled(s, row_next_[r - 1], last.lp_top >= 0 ? &row_logprobs_[r - 1] : nullptr));
        } else {
            SlotEvent ev;
            ev.slot = s, ev.cached_tokens = st.cached;
            events.push_back(std::move(ev));
        }
    }
    return events;
}

}  // namespace bllama

// Continuous batching and prefix reuse (engine/slots.h) against one-at-a-time runs on random-weight models:
// requests that join a running batch, mixed sampling settings, stop ids and lengths, logprobs, refusals; and
// resuming a kept KV cache (Engine::generate and Slots) gives the tokens of a cold cache, with prompt chunks that
// start at other positions than the cold run's.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <tuple>
#include <utility>
#include <map>
#include <memory>
#include <random>

#include "engine/engine.h"
#include "gguf_test_writer.h"

using namespace bllama;
using namespace testutil;

namespace {

std::vector<int32_t> random_ids(int n, int64_t vocab, uint32_t seed) {
    std::mt19937 rng(seed);
    std::vector<int32_t> ids(static_cast<size_t>(n));
    for (auto& t : ids) t = static_cast<int32_t>(rng() % static_cast<uint32_t>(vocab));
    return ids;
}

Spec small_spec() {
    Spec s;
    s.context = 96;
    s.layers = 2;
    return s;
}

Engine make_engine(const GgufBuilder& g, int sequences, bool kv_f16 = false, int64_t max_batch = 8) {
    LoadOptions o;
    o.threads = 2;
    o.max_batch = std::max<int64_t>(max_batch, sequences);  // prompts of more than 8 tokens run in several chunks
    o.sequences = sequences;
    o.kv_f16 = kv_f16;
    return Engine(Model::load(GgufFile::from_bytes(g.build()), o));
}

std::vector<int32_t> concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
}

SamplingParams greedy_penalty() {
    SamplingParams p;
    p.repetition_penalty = 1.3f;
    return p;
}
SamplingParams sampled(uint64_t seed, int top_k = 40) {
    SamplingParams p;
    p.do_sample = true, p.temperature = 1.2f, p.top_k = top_k, p.top_p = 0.95f, p.seed = seed;
    return p;
}

struct Run {
    std::vector<int32_t> tokens;
    FinishReason finish = FinishReason::None;
    int64_t cached = -1;
    int events = 0;
};

// Steps until every slot in `runs` has finished; `between(step)` may add requests mid-way.
template <class Between>
void drive(Slots& slots, std::map<int, Run>& runs, Between between) {
    for (int step = 0; step < 1000; ++step) {
        between(step);
        const auto events = slots.step();
        if (events.empty() && slots.active() == 0) return;
        for (const SlotEvent& e : events) {
            Run& r = runs[e.slot];
            CHECK(r.finish == FinishReason::None);  // nothing after a slot's last event
            ++r.events;
            if (r.cached < 0) r.cached = e.cached_tokens;
            CHECK(r.cached == e.cached_tokens);  // the same on every event of a request
            if (e.token >= 0) r.tokens.push_back(e.token);
            r.finish = e.finish;
        }
    }
    CHECK(!"drive: slots never finished");
}

// Prompt chunks and decode steps write the same KV values: a kept cache resumed by generate() gives the tokens of a
// cold cache, turn after turn of a growing conversation, greedy (with a penalty) and seeded sampling, fp32 and fp16.
void test_generate_prefix_reuse() {
    const Spec s = small_spec();
    const GgufBuilder g = random_model(s, nullptr);
    for (bool f16 : {false, true})
        for (const SamplingParams& p : {greedy_penalty(), sampled(7)}) {
            Engine warm = make_engine(g, 1, f16);
            std::vector<int32_t> history = random_ids(5, s.vocab, 31);
            int reused_turns = 0;
            for (int turn = 0; turn < 5; ++turn) {
                const std::vector<int32_t> prompt = history;
                const auto got = warm.generate(prompt, 6, p);
                const int64_t cached = warm.last_stats().cached_tokens;
                Engine cold = make_engine(g, 1, f16);
                const auto want = cold.generate(prompt, 6, p);
                CHECK(got == want);
                CHECK(cold.last_stats().cached_tokens == 0);
                // The cache held the previous prompt and all but the last generated token: all of it is shared.
                if (turn > 0) CHECK(cached > 0 && cached < static_cast<int64_t>(prompt.size()));
                reused_turns += cached > 0;
                // Next turn: this reply with its last token dropped (as a chat template re-encoding may change
                // it), then a new user turn of 3..9 tokens.
                history = concat(prompt, std::vector<int32_t>(got.begin(), got.end() - (got.empty() ? 0 : 1)));
                history = concat(history, random_ids(3 + 2 * turn, s.vocab, 40 + static_cast<uint32_t>(turn)));
            }
            CHECK(reused_turns == 4);
            // The same prompt again runs only its last token.
            const auto again = random_ids(12, s.vocab, 50);
            const auto a1 = warm.generate(again, 4, p);
            const auto a2 = warm.generate(again, 4, p);
            CHECK(a1 == a2);
            CHECK(warm.last_stats().cached_tokens == 11);
            // logits() overwrites slot 0 and is remembered as what it holds.
            warm.logits(random_ids(20, s.vocab, 51));
            const auto after = warm.generate(again, 4, p);
            CHECK(after == a1 && warm.last_stats().cached_tokens == 0);
            warm.reset();
            warm.generate(again, 4, p);
            CHECK(warm.last_stats().cached_tokens == 0);
        }
}

// A request that joins a running batch gets exactly its one-at-a-time tokens; mixed sampling settings share steps;
// stop ids and max_new_tokens end slots with the right reason and free them at once.
void test_join_running_batch() {
    const Spec s = small_spec();
    const GgufBuilder g = random_model(s, nullptr);
    Engine e = make_engine(g, 4);
    Slots& slots = e.slots();
    CHECK(slots.capacity() == 4);
    struct Req {
        std::vector<int32_t> prompt;
        int64_t max_new;
        SamplingParams p;
        std::vector<int32_t> stops;
    };
    const std::vector<Req> reqs = {
        {random_ids(21, s.vocab, 1), 14, sampled(3), {}},          // three prompt chunks
        {random_ids(4, s.vocab, 2), 10, greedy_penalty(), {}},
        {random_ids(9, s.vocab, 3), 12, sampled(11, 0), {}},
        {random_ids(2, s.vocab, 4), 9, SamplingParams{}, {}},
        {random_ids(17, s.vocab, 5), 8, sampled(5), {}},           // joins when a slot frees
    };
    // Solo runs, and a stop id taken from one of them so that request ends on it.
    std::vector<std::vector<int32_t>> want;
    for (const Req& r : reqs) {
        Engine solo = make_engine(g, 1);
        want.push_back(solo.generate(r.prompt, r.max_new, r.p, r.stops));
    }
    std::vector<Req> rs = reqs;
    rs[2].stops = {want[2][5]};
    {
        Engine solo = make_engine(g, 1);
        want[2] = solo.generate(rs[2].prompt, rs[2].max_new, rs[2].p, rs[2].stops);
        CHECK(static_cast<int64_t>(want[2].size()) < rs[2].max_new);
    }
    std::map<int, Run> runs;
    std::map<int, int> slot_of;  // request -> slot
    size_t added = 0;
    auto add = [&]() {
        const size_t i = added++;
        const int slot = slots.add(SlotRequest{rs[i].prompt, rs[i].max_new, rs[i].p, rs[i].stops, false, 0});
        runs[slot] = Run{};
        slot_of[static_cast<int>(i)] = slot;
    };
    std::map<int, Run> done;  // by request
    for (int step = 0; step < 400 && (added < rs.size() || slots.active() > 0); ++step) {
        // A first (three prompt chunks), B once A decodes, C and D together, E as soon as a slot is free.
        if (step == 0 || step == 5) add();
        if (step == 7) add(), add();
        if (step > 7 && added == 4 && slots.active() < slots.capacity()) add();
        for (const SlotEvent& ev : slots.step()) {
            Run& r = runs[ev.slot];
            CHECK(r.finish == FinishReason::None);
            if (r.cached < 0) r.cached = ev.cached_tokens;
            if (ev.token >= 0) r.tokens.push_back(ev.token);
            r.finish = ev.finish;
            if (ev.finish != FinishReason::None)
                for (auto& [req, slot] : slot_of)
                    if (slot == ev.slot && !done.count(req)) done[req] = r;
        }
    }
    CHECK(added == rs.size() && slots.active() == 0);
    for (size_t i = 0; i < rs.size(); ++i) {
        const Run& r = done[static_cast<int>(i)];
        const bool same = r.tokens == want[i];
        if (!same) std::fprintf(stderr, "  request %zu: %zu tokens, want %zu\n", i, r.tokens.size(), want[i].size());
        CHECK(same);
        CHECK(r.finish == (i == 2 ? FinishReason::Stop : FinishReason::Length));
    }
    CHECK(slots.step().empty());
}

// All 8 slots decoding together (the CPU head's exact range): each gets its solo tokens.
void test_full_batch() {
    const Spec s = small_spec();
    const GgufBuilder g = random_model(s, nullptr);
    for (int S : {8, 12}) {
        Engine e = make_engine(g, S);
        std::vector<std::vector<int32_t>> want(static_cast<size_t>(S));
        std::map<int, int> req_of;
        for (int i = 0; i < S; ++i) {
            const auto prompt = random_ids(1 + i % 5, s.vocab, 100 + static_cast<uint32_t>(i));
            const SamplingParams p = i % 2 ? sampled(static_cast<uint64_t>(i)) : greedy_penalty();
            Engine solo = make_engine(g, 1);
            want[static_cast<size_t>(i)] = solo.generate(prompt, 10, p);
            req_of[e.slots().add(SlotRequest{prompt, 10, p, {}, false, 0})] = i;
        }
        bool threw = throws<SlotsFull>([&] { e.slots().add(SlotRequest{{1}, 1, {}, {}, false, 0}); }, "busy");
        CHECK(threw);
        std::map<int, Run> runs;
        drive(e.slots(), runs, [](int) {});
        int differ = 0;
        for (auto& [slot, r] : runs) differ += r.tokens != want[static_cast<size_t>(req_of[slot])];
        std::printf("  %d slots decoding together: %d of %d requests differ from their solo runs\n", S, differ, S);
        if (S <= 8) CHECK(differ == 0);  // beyond 8 rows the f16 head's tiles may round differently (docs/engine.md)
    }
}

// A free slot's kept KV cache serves the next request with a shared prefix: the slot with the longest one is
// chosen, the tokens equal a cold run's, and cached_tokens says how many prompt tokens were reused.
void test_slot_prefix_reuse() {
    const Spec s = small_spec();
    const GgufBuilder g = random_model(s, nullptr);
    Engine e = make_engine(g, 3);
    Slots& slots = e.slots();
    const auto a = random_ids(19, s.vocab, 61), b = random_ids(6, s.vocab, 62);
    std::map<int, Run> runs;
    const int sa = slots.add(SlotRequest{a, 7, sampled(1), {}, false, 0});
    const int sb = slots.add(SlotRequest{b, 5, greedy_penalty(), {}, false, 0});
    drive(slots, runs, [](int) {});
    CHECK(runs[sa].cached == 0 && runs[sb].cached == 0);
    // Follow-ups: a's conversation grows; b's prompt is b itself (all but its last token reusable).
    const auto a2 = concat(concat(a, runs[sa].tokens), random_ids(11, s.vocab, 63));
    std::map<int, Run> runs2;
    const int sb2 = slots.add(SlotRequest{b, 5, greedy_penalty(), {}, false, 0});
    const int sa2 = slots.add(SlotRequest{a2, 9, sampled(2), {}, false, 0});
    CHECK(sa2 == sa && sb2 == sb);
    drive(slots, runs2, [](int) {});
    CHECK(runs2[sa2].cached == static_cast<int64_t>(a.size() + runs[sa].tokens.size()) - 1);
    CHECK(runs2[sb2].cached == static_cast<int64_t>(b.size()) - 1);
    Engine cold = make_engine(g, 1);
    CHECK(runs2[sa2].tokens == cold.generate(a2, 9, sampled(2)));
    CHECK(runs2[sb2].tokens == cold.generate(b, 5, greedy_penalty()));
    CHECK(runs2[sb2].tokens == runs[sb].tokens);
    // A request sharing nothing goes to the least recently used free slot (the third, never used).
    std::map<int, Run> runs3;
    const int sc = slots.add(SlotRequest{random_ids(3, s.vocab, 64), 2, {}, {}, false, 0});
    CHECK(sc != sa && sc != sb);
    drive(slots, runs3, [](int) {});
    // Engine::generate shares slot 0's ledger with the slots.
    const int64_t slot0_tokens = sa == 0 ? static_cast<int64_t>(a2.size() + runs2[sa].tokens.size()) - 1 : -1;
    const auto x = e.generate(sa == 0 ? a2 : b, 3, {});
    CHECK(x == cold.generate(sa == 0 ? a2 : b, 3, {}));
    if (slot0_tokens > 0) CHECK(e.last_stats().cached_tokens == static_cast<int64_t>(a2.size()) - 1);
}

// Cancel, max_new_tokens 0, busy refusals, request checks, logprobs.
void test_edges_and_logprobs() {
    const Spec s = small_spec();
    const GgufBuilder g = random_model(s, nullptr);
    Engine e = make_engine(g, 2);
    Slots& slots = e.slots();
    const auto p = random_ids(10, s.vocab, 71);
    CHECK(throws<std::invalid_argument>([&] { slots.add(SlotRequest{{}, 3, {}, {}, false, 0}); }, "prompt is empty"));
    CHECK(throws<std::out_of_range>([&] { slots.add(SlotRequest{{1, static_cast<int32_t>(s.vocab)}, 3, {}, {}, false, 0}); },
                                    "index 1"));
    CHECK(throws<std::out_of_range>([&] { slots.add(SlotRequest{p, s.context, {}, {}, false, 0}); }, "context length"));
    SamplingParams bad;
    bad.top_p = 0;
    CHECK(throws<std::invalid_argument>([&] { slots.add(SlotRequest{p, 3, bad, {}, false, 0}); }, "top_p"));
    CHECK(throws<std::invalid_argument>([&] { slots.add(SlotRequest{p, 3, {}, {}, true, kMaxTopLogprobs + 1}); }, "logprobs"));
    CHECK(slots.active() == 0);

    // max_new_tokens 0: one event, "length", no token, nothing run.
    const int z = slots.add(SlotRequest{p, 0, {}, {}, false, 0});
    auto ev = slots.step();
    CHECK(ev.size() == 1 && ev[0].slot == z && ev[0].token < 0 && ev[0].finish == FinishReason::Length);
    CHECK(slots.active() == 0);

    // Cancel mid-prefill and mid-decode: the slot frees, the engine's one-shot calls are refused while busy.
    const int c = slots.add(SlotRequest{random_ids(20, s.vocab, 72), 30, {}, {}, false, 0});
    CHECK(throws<std::runtime_error>([&] { e.generate(p, 2, {}); }, "busy"));
    CHECK(throws<std::runtime_error>([&] { e.logits(p); }, "busy"));
    ev = slots.step();  // one chunk of 8: an event without a token
    CHECK(ev.size() == 1 && ev[0].token < 0 && ev[0].finish == FinishReason::None);
    slots.cancel(c);
    CHECK(slots.active() == 0 && slots.step().empty());
    CHECK(throws<std::out_of_range>([&] { slots.cancel(2); }, "slot 2"));

    // Logprobs: log_softmax of the raw logits (a cold engine's logits()) at each token, top entries best first,
    // with a penalty and temperature that change what is sampled from but not what is reported.
    Engine ref = make_engine(g, 1);
    SamplingParams sp = sampled(9);
    sp.repetition_penalty = 1.5f;
    const int sl = slots.add(SlotRequest{p, 6, sp, {}, true, 5});
    const int sn = slots.add(SlotRequest{random_ids(4, s.vocab, 73), 6, {}, {}, false, 0});
    std::vector<SlotEvent> got;
    for (int i = 0; i < 40 && slots.active(); ++i)
        for (auto& x : slots.step()) {
            if (x.slot == sn) CHECK(!x.has_logprob && x.logprobs.top.empty());
            if (x.slot == sl && x.token >= 0) got.push_back(x);
        }
    CHECK(got.size() == 6);
    std::vector<int32_t> seq = p;
    const size_t V = static_cast<size_t>(s.vocab);
    double max_err = 0;
    for (const SlotEvent& x : got) {
        const auto logits = ref.logits(seq);
        const float* row = logits.data() + (seq.size() - 1) * V;
        double mx = row[0], sum = 0;
        for (size_t i = 0; i < V; ++i) mx = std::max(mx, static_cast<double>(row[i]));
        for (size_t i = 0; i < V; ++i) sum += std::exp(row[i] - mx);
        const double lse = mx + std::log(sum);
        CHECK(x.has_logprob && x.logprobs.top.size() == 5);
        max_err = std::max(max_err, std::fabs(x.logprobs.logprob - (row[x.token] - lse)));
        for (size_t k = 0; k < x.logprobs.top.size(); ++k) {
            const auto [id, lp] = x.logprobs.top[k];
            max_err = std::max(max_err, std::fabs(lp - (row[id] - lse)));
            if (k > 0) CHECK(lp <= x.logprobs.top[k - 1].second);
        }
        seq.push_back(x.token);
    }
    std::printf("  logprobs: max |engine - reference| = %.2e\n", max_err);
    CHECK(max_err < 1e-5);
}


// Model::forward_batch with one sequence in several rows (a prompt chunk beside other sequences' decode rows) and
// the head only for chosen rows: every chosen row's logits are bit-identical to the row run alone, for fp32 / fp16
// caches and the f16 / 4-bit heads; two rows of one sequence at one position and bad logit rows are refused.
void test_mixed_rows_forward() {
    const Spec s = small_spec();
    const GgufBuilder g = random_model(s, nullptr);
    const size_t V = static_cast<size_t>(s.vocab);
    for (bool f16 : {false, true})
        for (HeadType head : {HeadType::F16, HeadType::Q4}) {
            LoadOptions o;
            o.threads = 2, o.max_batch = 16, o.sequences = 3, o.kv_f16 = f16, o.head = head;
            auto mixed = Model::load(GgufFile::from_bytes(g.build()), o);
            o.sequences = 1;
            std::vector<std::unique_ptr<Model>> alone;
            for (int b = 0; b < 3; ++b) alone.push_back(Model::load(GgufFile::from_bytes(g.build()), o));
            // Sequences 0 and 2 hold prompts of 5 and 9 tokens; sequence 1 is empty.
            const auto p0 = random_ids(5, s.vocab, 80), p1 = random_ids(11, s.vocab, 81), p2 = random_ids(9, s.vocab, 82);
            std::vector<float> la(V), lb(16 * V);
            for (auto [b, p] : {std::pair<int, const std::vector<int32_t>*>{0, &p0}, {2, &p2}}) {
                mixed->forward(p->data(), static_cast<int64_t>(p->size()), 0, lb.data(), false, b);
                alone[static_cast<size_t>(b)]->forward(p->data(), static_cast<int64_t>(p->size()), 0, la.data(), false);
            }
            // Rows: decode of 0 at 5, prompt of 1 at 0..6, decode of 2 at 9; then the rest of 1's prompt (7..10)
            // with the next decodes. Logit rows: the decode rows and (second step) the prompt's last row.
            std::vector<int32_t> tok = {p0[0], p1[0], p1[1], p1[2], p1[3], p1[4], p1[5], p1[6], p2[1]};
            std::vector<int64_t> pos = {5, 0, 1, 2, 3, 4, 5, 6, 9};
            std::vector<int32_t> seq = {0, 1, 1, 1, 1, 1, 1, 1, 2};
            std::vector<int64_t> want_rows = {0, 8};
            mixed->forward_batch(tok.data(), pos.data(), seq.data(), 9, lb.data(), want_rows.data(), 2);
            int differ = 0;
            alone[0]->forward(&tok[0], 1, 5, la.data(), false);
            differ += std::memcmp(la.data(), lb.data(), V * 4) != 0;
            alone[2]->forward(&tok[8], 1, 9, la.data(), false);
            differ += std::memcmp(la.data(), lb.data() + V, V * 4) != 0;
            tok = {p0[1], p1[7], p1[8], p1[9], p1[10], p2[2]};
            pos = {6, 7, 8, 9, 10, 10};
            seq = {0, 1, 1, 1, 1, 2};
            want_rows = {0, 4, 5};
            mixed->forward_batch(tok.data(), pos.data(), seq.data(), 6, lb.data(), want_rows.data(), 3);
            alone[0]->forward(&tok[0], 1, 6, la.data(), false);
            differ += std::memcmp(la.data(), lb.data(), V * 4) != 0;
            alone[1]->forward(p1.data(), 11, 0, la.data(), false);  // the whole prompt alone, in two chunks of 8
            differ += std::memcmp(la.data(), lb.data() + V, V * 4) != 0;
            alone[2]->forward(&tok[5], 1, 10, la.data(), false);
            differ += std::memcmp(la.data(), lb.data() + 2 * V, V * 4) != 0;
            std::printf("  mixed rows (%s KV, %s head): %d of 5 logit rows differ from the rows run alone\n",
                        f16 ? "fp16" : "fp32", head_type_name(head), differ);
            CHECK(differ == 0);
            // Refusals.
            seq = {1, 1}, pos = {3, 3}, tok = {1, 2};
            CHECK(throws<std::invalid_argument>([&] { mixed->forward_batch(tok.data(), pos.data(), seq.data(), 2, lb.data()); },
                                                "sequence 1 twice at position 3"));
            pos = {3, 4};
            want_rows = {1, 0};
            CHECK(throws<std::invalid_argument>(
                [&] { mixed->forward_batch(tok.data(), pos.data(), seq.data(), 2, lb.data(), want_rows.data(), 2); },
                "logit rows"));
            want_rows = {2};
            CHECK(throws<std::invalid_argument>(
                [&] { mixed->forward_batch(tok.data(), pos.data(), seq.data(), 2, lb.data(), want_rows.data(), 1); },
                "logit rows"));
            std::vector<int32_t> many(17, 1), many_seq(17, 1);
            std::vector<int64_t> many_pos(17);
            for (int i = 0; i < 17; ++i) many_pos[static_cast<size_t>(i)] = i;
            CHECK(throws<std::invalid_argument>(
                [&] { mixed->forward_batch(many.data(), many_pos.data(), many_seq.data(), 17, lb.data()); }, "17 rows"));
        }
}

// Mixed steps under token budgets (odd, smaller than the running slots, larger than max_batch): several requests
// join at once and later, with mixed settings, stop ids and logprobs; each gets its solo tokens, and its logprobs
// are bit-identical to those of any other budget.
void test_mixed_step_budgets() {
    const Spec s = small_spec();
    const GgufBuilder g = random_model(s, nullptr);
    struct Req {
        std::vector<int32_t> prompt;
        int64_t max_new;
        SamplingParams p;
        int top;  // logprob alternatives, -1: none
    };
    const std::vector<Req> reqs = {
        {random_ids(12, s.vocab, 91), 16, greedy_penalty(), -1},  // start together
        {random_ids(3, s.vocab, 92), 20, sampled(4), 3},
        {random_ids(20, s.vocab, 93), 9, sampled(8), -1},         // join together at step 3
        {random_ids(7, s.vocab, 94), 11, SamplingParams{}, 0},
        {random_ids(1, s.vocab, 95), 6, sampled(9, 0), -1},
        {random_ids(30, s.vocab, 96), 7, greedy_penalty(), 2},    // joins when a slot frees
        {random_ids(2, s.vocab, 97), 5, sampled(12), -1},
    };
    std::vector<std::vector<int32_t>> want;
    for (const Req& r : reqs) {
        Engine solo = make_engine(g, 1);
        want.push_back(solo.generate(r.prompt, r.max_new, r.p));
    }
    std::vector<std::vector<SlotEvent>> first_lps;  // per request, from the first budget
    for (int64_t budget : {1, 2, 3, 5, 7, 13, 16, 64}) {
        Engine e = make_engine(g, 5, false, 16);
        Slots& slots = e.slots();
        slots.set_step_tokens(budget);
        CHECK(slots.step_tokens() == budget);
        std::map<int, int> req_of;  // slot -> request running there
        std::vector<std::vector<int32_t>> got(reqs.size());
        std::vector<std::vector<SlotEvent>> lps(reqs.size());
        std::vector<int> finished(reqs.size(), 0);
        size_t added = 0;
        auto add = [&]() {
            const Req& r = reqs[added];
            const int slot = slots.add(SlotRequest{r.prompt, r.max_new, r.p, {}, r.top >= 0, std::max(r.top, 0)});
            req_of[slot] = static_cast<int>(added++);
        };
        for (int step = 0; step < 600 && (added < reqs.size() || slots.active() > 0); ++step) {
            if (step == 0) add(), add();
            if (step == 3) add(), add(), add();
            if (step > 3 && added < reqs.size() && slots.active() < slots.capacity()) add();
            for (const SlotEvent& ev : slots.step()) {
                const int i = req_of.at(ev.slot);
                CHECK(!finished[static_cast<size_t>(i)]);
                if (ev.token >= 0) got[static_cast<size_t>(i)].push_back(ev.token);
                if (ev.has_logprob) lps[static_cast<size_t>(i)].push_back(ev);
                if (ev.finish != FinishReason::None) finished[static_cast<size_t>(i)] = 1;
            }
        }
        CHECK(added == reqs.size() && slots.active() == 0);
        int differ = 0;
        for (size_t i = 0; i < reqs.size(); ++i) {
            differ += got[i] != want[i];
            CHECK(lps[i].size() == (reqs[i].top >= 0 ? want[i].size() : 0));
        }
        std::printf("  step budget %2lld: %d of %zu requests differ from their solo runs\n",
                    static_cast<long long>(budget), differ, reqs.size());
        CHECK(differ == 0);
        if (first_lps.empty()) first_lps = lps;
        for (size_t i = 0; i < reqs.size(); ++i)
            for (size_t k = 0; k < std::min(lps[i].size(), first_lps[i].size()); ++k) {
                const TokenLogprobs& a = lps[i][k].logprobs;
                const TokenLogprobs& b = first_lps[i][k].logprobs;
                CHECK(a.logprob == b.logprob && a.top == b.top);
            }
    }
}

// Steps until slots a and b each sample their first token (-1: not within 40 steps).
std::pair<int, int> first_token_steps(Slots& slots, int a, int b) {
    int first_a = -1, first_b = -1;
    for (int step = 1; step <= 40 && (first_a < 0 || first_b < 0); ++step)
        for (const SlotEvent& ev : slots.step()) {
            if (ev.slot == a && ev.token >= 0 && first_a < 0) first_a = step;
            if (ev.slot == b && ev.token >= 0 && first_b < 0) first_b = step;
        }
    return {first_a, first_b};
}

// What a step runs: decode rows first, then max(budget - decoding, 1) prompt rows, split across joining slots (equal
// prompts that cannot finish in one step: oldest first). Seen through the events: a joining slot's first token comes
// on the step its last prompt row runs.
void test_step_budget_split() {
    const Spec s = small_spec();
    const GgufBuilder g = random_model(s, nullptr);
    for (auto [budget, decoding, want_steps_a, want_steps_b] :
         {std::tuple<int64_t, int, int, int>{5, 3, 5, 11}, {2, 3, 10, 20}, {16, 3, 1, 2}, {13, 0, 1, 2}}) {
        // Joining prompts a (10 tokens) and b (10 tokens): a is served first, b with what a leaves.
        Engine e = make_engine(g, 5, false, 16);
        Slots& slots = e.slots();
        slots.set_step_tokens(budget);
        for (int d = 0; d < decoding; ++d) slots.add(SlotRequest{random_ids(1, s.vocab, 200 + d), 60, {}, {}, false, 0});
        while (decoding > 0 && slots.step().size() < static_cast<size_t>(decoding)) {
        }
        const int a = slots.add(SlotRequest{random_ids(10, s.vocab, 210), 3, {}, {}, false, 0});
        const int b = slots.add(SlotRequest{random_ids(10, s.vocab, 211), 3, {}, {}, false, 0});
        const auto [first_a, first_b] = first_token_steps(slots, a, b);
        std::printf("  budget %lld, %d decoding: first tokens after %d and %d steps\n", static_cast<long long>(budget),
                    decoding, first_a, first_b);
        CHECK(first_a == want_steps_a && first_b == want_steps_b);
    }
    Engine e = make_engine(g, 2);
    CHECK(throws<std::invalid_argument>([&] { e.slots().set_step_tokens(0); }, "step tokens"));
}

// A short prompt that joins during a long one's prefill finishes at the next step instead of after all of it; a
// stream of prompts that would fill every step's budget cannot starve the first one to join; prompts that cannot
// finish in one step go in the order they joined.
void test_short_prompts_first() {
    const Spec s = small_spec();
    const GgufBuilder g = random_model(s, nullptr);
    // 40 then 6 tokens: step 1 runs 4 rows of the 40 (its quarter), the 6 (they fit), then 6 more of the 40, whose
    // other 30 take two steps. 30 then 20: the 20 never fit in a step, so they wait for the 30 (the order they joined).
    for (auto [na, nb, want_a, want_b] : {std::tuple<int, int, int, int>{40, 6, 3, 1}, {30, 20, 2, 4}}) {
        Engine e = make_engine(g, 5, false, 16);
        Slots& slots = e.slots();
        slots.set_step_tokens(16);
        const int a = slots.add(SlotRequest{random_ids(na, s.vocab, 220), 2, {}, {}, false, 0});
        const int b = slots.add(SlotRequest{random_ids(nb, s.vocab, 221), 2, {}, {}, false, 0});
        const auto [first_a, first_b] = first_token_steps(slots, a, b);
        std::printf("  %d then %d prompt tokens, budget 16: first tokens after %d and %d steps\n", na, nb, first_a,
                    first_b);
        CHECK(first_a == want_a && first_b == want_b);
    }
    {
        // Two 8-token prompts join at every step (when slots are free): they would fill the budget, and shortest-first
        // alone would never run the 40-token prompt that joined first. It runs its quarter (4 rows) and what the one
        // short prompt that fits leaves, 8 rows a step: done after 5 steps, with one short prompt answered a step.
        Engine e = make_engine(g, 5, false, 16);
        Slots& slots = e.slots();
        slots.set_step_tokens(16);
        const int a = slots.add(SlotRequest{random_ids(40, s.vocab, 230), 2, {}, {}, false, 0});
        int first_a = -1, others = 0;
        for (int step = 1; step <= 30 && first_a < 0; ++step) {
            for (int k = 0; k < 2; ++k) {
                try {
                    slots.add(SlotRequest{random_ids(8, s.vocab, 300 + 2 * step + k), 1, {}, {}, false, 0});
                } catch (const SlotsFull&) {
                }
            }
            for (const SlotEvent& ev : slots.step()) {
                if (ev.slot == a && ev.token >= 0) first_a = step;
                else if (ev.token >= 0) ++others;
            }
        }
        std::printf("  40 prompt tokens under a stream of 8-token prompts: first token after %d steps (%d others)\n",
                    first_a, others);
        CHECK(first_a == 5 && others == 5);
    }
}
}  // namespace

int main() {
    test_generate_prefix_reuse();
    test_join_running_batch();
    test_full_batch();
    test_slot_prefix_reuse();
    test_edges_and_logprobs();
    test_mixed_rows_forward();
    test_mixed_step_budgets();
    test_step_budget_split();
    test_short_prompts_first();
    if (failures()) {
        std::fprintf(stderr, "test_slots: %d failure(s)\n", failures());
        return 1;
    }
    std::printf("test_slots: ok\n");
    return 0;
}

// The persistent decode kernel's schedule (csrc/cuda/persistent_schedule.h), checked on the CPU: a simulator
// runs its work items on B blocks (items dealt round-robin, each block in program order, every item a start and
// a finish event so that others interleave while it runs) under many random interleavings (each with random
// block speeds, so some blocks lag far behind), and checks
//   - no deadlock: while items remain, some block can start or finish one;
//   - every hazard ordered: when an item starts, every item it depends on is finished. The dependencies come from
//     the items' declared reads and writes in program order (read-after-write, write-after-read,
//     write-after-write per buffer element), not from the counters, so the check is independent of the
//     targets it validates;
//   - the counters end at steps x bumps_per_step.
// The checker itself is tested: schedules with one wait target lowered (a hazard) or raised (a hang) must be
// caught.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "check_msg.h"
#include "cuda/persistent_schedule.h"

using namespace bllama::cuda;

namespace {

// For each item, the earlier items that must be finished before it starts.
std::vector<std::vector<int>> hazard_deps(const PersistSchedule& s) {
    const int nb = static_cast<int>(PersistBuf::kCount);
    std::vector<std::vector<int>> last_writer(nb), readers(nb);  // readers: since the last write, -1 separated
    std::vector<std::vector<std::vector<int>>> rd(nb);
    for (int b = 0; b < nb; ++b) {
        last_writer[b].assign(static_cast<size_t>(s.buf_size[b]), -1);
        rd[b].resize(static_cast<size_t>(s.buf_size[b]));
    }
    std::vector<std::vector<int>> deps(s.items.size());
    std::vector<int> stamp(s.items.size(), -1);
    for (size_t i = 0; i < s.items.size(); ++i) {
        const PersistItem& it = s.items[i];
        auto need = [&](int j) {
            if (j >= 0 && j != static_cast<int>(i) && stamp[static_cast<size_t>(j)] != static_cast<int>(i)) {
                stamp[static_cast<size_t>(j)] = static_cast<int>(i);
                deps[i].push_back(j);
            }
        };
        for (const PersistRange& r : it.reads) {
            const int b = static_cast<int>(r.buf);
            if (r.lo < 0 || r.hi > s.buf_size[b] || r.lo > r.hi) {
                std::fprintf(stderr, "item %zu reads out of its buffer\n", i);
                std::exit(1);
            }
            for (int64_t e = r.lo; e < r.hi; ++e) need(last_writer[b][static_cast<size_t>(e)]);
        }
        for (const PersistRange& r : it.writes) {
            const int b = static_cast<int>(r.buf);
            if (r.lo < 0 || r.hi > s.buf_size[b] || r.lo > r.hi) {
                std::fprintf(stderr, "item %zu writes out of its buffer\n", i);
                std::exit(1);
            }
            for (int64_t e = r.lo; e < r.hi; ++e) {
                need(last_writer[b][static_cast<size_t>(e)]);
                for (int j : rd[b][static_cast<size_t>(e)]) need(j);
            }
        }
        // Record after collecting, so an item that reads and writes one element does not depend on itself.
        for (const PersistRange& r : it.reads)
            for (int64_t e = r.lo; e < r.hi; ++e) {
                auto& v = rd[static_cast<int>(r.buf)][static_cast<size_t>(e)];
                if (v.empty() || v.back() != static_cast<int>(i)) v.push_back(static_cast<int>(i));
            }
        for (const PersistRange& r : it.writes)
            for (int64_t e = r.lo; e < r.hi; ++e) {
                last_writer[static_cast<int>(r.buf)][static_cast<size_t>(e)] = static_cast<int>(i);
                rd[static_cast<int>(r.buf)][static_cast<size_t>(e)].clear();
            }
    }
    return deps;
}

struct SimResult {
    bool deadlock = false;
    int hazards = 0;         // items started before one of their dependencies finished
    std::string first_problem;
    bool counters_ok = true;
};

// One interleaving: blocks with random speeds; at each event one enabled block (weighted by speed) either starts
// its current item (all waits satisfied) or finishes the one it runs.
SimResult simulate(const PersistSchedule& s, const std::vector<std::vector<int>>& deps, int blocks, uint64_t seed) {
    std::mt19937_64 rng(seed);
    const auto per = deal_items(s, blocks);
    std::vector<double> speed(static_cast<size_t>(blocks));
    for (double& v : speed) v = std::exp(std::uniform_real_distribution<double>(-3.0, 3.0)(rng));
    std::vector<size_t> next(static_cast<size_t>(blocks), 0);
    std::vector<char> running(static_cast<size_t>(blocks), 0), done(s.items.size(), 0);
    std::vector<uint32_t> ctr(s.counter_names.size(), 0);
    SimResult res;
    size_t finished = 0;
    std::vector<int> enabled;
    std::vector<double> w;
    while (finished < s.items.size()) {
        enabled.clear();
        w.clear();
        for (int b = 0; b < blocks; ++b) {
            const auto& list = per[static_cast<size_t>(b)];
            if (next[static_cast<size_t>(b)] >= list.size()) continue;
            bool ok = running[static_cast<size_t>(b)] != 0;
            if (!ok) {
                const PersistItem& it = s.items[static_cast<size_t>(list[next[static_cast<size_t>(b)]])];
                ok = std::all_of(it.waits.begin(), it.waits.end(),
                                 [&](const PersistWait& pw) { return ctr[static_cast<size_t>(pw.counter)] >= pw.target; });
            }
            if (ok) enabled.push_back(b), w.push_back(speed[static_cast<size_t>(b)]);
        }
        if (enabled.empty()) {
            res.deadlock = true;
            for (int b = 0; b < blocks && res.first_problem.empty(); ++b)
                if (next[static_cast<size_t>(b)] < per[static_cast<size_t>(b)].size()) {
                    const int i = per[static_cast<size_t>(b)][next[static_cast<size_t>(b)]];
                    const PersistItem& it = s.items[static_cast<size_t>(i)];
                    res.first_problem = "deadlock: block " + std::to_string(b) + " waits at item " + std::to_string(i) +
                                        " (" + persist_op_name(it.op) + ", layer " + std::to_string(it.layer) + ")";
                }
            return res;
        }
        const int b = enabled[std::discrete_distribution<size_t>(w.begin(), w.end())(rng)];
        const int i = per[static_cast<size_t>(b)][next[static_cast<size_t>(b)]];
        const PersistItem& it = s.items[static_cast<size_t>(i)];
        if (!running[static_cast<size_t>(b)]) {
            for (int j : deps[static_cast<size_t>(i)])
                if (!done[static_cast<size_t>(j)]) {
                    if (res.hazards++ == 0)
                        res.first_problem = "hazard: item " + std::to_string(i) + " (" + persist_op_name(it.op) + ", layer " +
                                            std::to_string(it.layer) + ") started before item " + std::to_string(j) + " (" +
                                            persist_op_name(s.items[static_cast<size_t>(j)].op) + ", layer " +
                                            std::to_string(s.items[static_cast<size_t>(j)].layer) + ") finished";
                    break;
                }
            running[static_cast<size_t>(b)] = 1;
        } else {
            for (int c : it.bumps) ++ctr[static_cast<size_t>(c)];
            done[static_cast<size_t>(i)] = 1;
            running[static_cast<size_t>(b)] = 0;
            ++next[static_cast<size_t>(b)];
            ++finished;
        }
    }
    for (size_t c = 0; c < ctr.size(); ++c)
        res.counters_ok = res.counters_ok && ctr[c] == s.bumps_per_step[c] * static_cast<uint32_t>(s.n_steps_modeled);
    return res;
}

// Runs `runs` interleavings; returns how many had a hazard / a deadlock (and the first message of each).
struct Tally {
    int hazard_runs = 0, deadlock_runs = 0, counter_bad = 0;
    std::string first;
};
Tally run_many(const PersistSchedule& s, int blocks, int runs, uint64_t seed) {
    const auto deps = hazard_deps(s);
    Tally t;
    for (int r = 0; r < runs; ++r) {
        const SimResult res = simulate(s, deps, blocks, seed + static_cast<uint64_t>(r) * 7919);
        t.hazard_runs += res.hazards > 0;
        t.deadlock_runs += res.deadlock;
        t.counter_bad += !res.deadlock && !res.counters_ok;
        if (t.first.empty()) t.first = res.first_problem;
    }
    return t;
}

PersistShape tiny_shape(int heads, int kv_heads) {
    PersistShape sh;
    sh.dim = 256, sh.n_heads = heads, sh.n_kv_heads = kv_heads, sh.head_dim = 256 / heads, sh.ffn = 512;
    sh.layers = 3, sh.vocab = 300;
    return sh;
}

// Index of the first item of `op` (in layer `layer`, or any for -1) after `from` that has a wait.
int find_item(const PersistSchedule& s, PersistOp op, int layer, int from = 0) {
    for (size_t i = static_cast<size_t>(from); i < s.items.size(); ++i)
        if (s.items[i].op == op && (layer < 0 || s.items[i].layer == layer) && !s.items[i].waits.empty())
            return static_cast<int>(i);
    return -1;
}

}  // namespace

int main() {
    // Correct schedules: many shapes, positions (split boundaries included), fine and coarse dependencies,
    // several block counts (fewer blocks than a stage has items, and more), multiple steps.
    struct Case {
        PersistShape sh;
        int pos, kps, tile, steps, blocks, runs;
        bool fine;
    };
    std::vector<Case> cases;
    for (bool fine : {true, false}) {
        cases.push_back({tiny_shape(4, 4), 0, 4, 2048, 2, 3, 60, fine});
        cases.push_back({tiny_shape(4, 2), 7, 4, 2048, 3, 7, 60, fine});    // GQA 2, the split boundary at 8
        cases.push_back({tiny_shape(8, 2), 30, 16, 1024, 2, 16, 60, fine}); // GQA 4
        cases.push_back({tiny_shape(4, 1), 5, 2, 4096, 2, 1, 10, fine});    // one block runs everything
        cases.push_back({tiny_shape(4, 4), 3, 32, 512, 2, 132, 40, fine});  // more blocks than items in a stage
    }
    PersistShape real;  // the default 1.7B shapes (D 2048, 16 heads, FFN 8192, 24 layers, vocab 32000)
    cases.push_back({real, 127, 32, 32768, 2, 132, 3, true});
    for (const Case& c : cases) {
        PersistOptions o;
        o.pos = c.pos, o.keys_per_split = c.kps, o.tile_bytes = c.tile, o.fine_deps = c.fine;
        const PersistSchedule s = build_persistent_schedule(c.sh, o, c.steps);
        const Tally t = run_many(s, c.blocks, c.runs, 1000 + c.blocks);
        CHECK(t.hazard_runs == 0 && t.deadlock_runs == 0 && t.counter_bad == 0,
              "D %d H %d/%d pos %d kps %d blocks %d fine %d: %d hazard runs, %d deadlocks, %d bad counters; %s", c.sh.dim,
              c.sh.n_heads, c.sh.n_kv_heads, c.pos, c.kps, c.blocks, c.fine, t.hazard_runs, t.deadlock_runs,
              t.counter_bad, t.first.c_str());
        if (c.sh.dim == real.dim) {
            uint32_t bumps = 0;
            for (uint32_t v : s.bumps_per_step) bumps = std::max(bumps, v);
            std::printf("1.7B schedule at pos %d: %zu items per step, %zu counters, at most %u bumps of one counter "
                        "per step\n", c.pos, s.items.size() / static_cast<size_t>(c.steps), s.counter_names.size(), bumps);
        }
    }

    // The checker finds broken schedules. Lowered targets: an o tile that waits for all combines but one, an
    // attention item that waits for all but one of its qkv tiles, the next step's embedding that does not wait for
    // the token. Each must show a hazard in some interleaving.
    {
        PersistOptions o;
        o.pos = 9, o.keys_per_split = 4, o.tile_bytes = 1024;
        const PersistShape sh = tiny_shape(4, 2);
        const PersistSchedule good = build_persistent_schedule(sh, o, 2);
        struct Mut {
            const char* what;
            PersistOp op;
            int layer;
            int from;
        };
        const int embed2 = find_item(good, PersistOp::Embed, -1);  // step 1's: step 0's has no wait
        const Mut muts[] = {{"o waits for one combine too few", PersistOp::O, 1, 0},
                            {"attn waits for one qkv tile too few", PersistOp::Attn, 0, 0},
                            {"gate_up waits for one o tile too few", PersistOp::GateUp, 2, 0},
                            {"step 2's embed does not wait for the token", PersistOp::Embed, -1, embed2}};
        for (const Mut& m : muts) {
            PersistSchedule bad = good;
            const int i = find_item(bad, m.op, m.layer, m.from);
            CHECK(i >= 0, "%s: no such item", m.what);
            if (i < 0) continue;
            // Lower the target of the item and of every later item of its stage (one wrong constant in the kernel).
            for (size_t k = static_cast<size_t>(i); k < bad.items.size() && bad.items[k].op == m.op; ++k)
                for (PersistWait& w : bad.items[k].waits) w.target -= 1;
            const Tally t = run_many(bad, 5, 200, 77);
            CHECK(t.hazard_runs > 0, "%s: the simulator saw no hazard in 200 interleavings", m.what);
            std::printf("mutation \"%s\": hazard in %d of 200 interleavings (%s)\n", m.what, t.hazard_runs, t.first.c_str());
        }
        // A raised target hangs: every interleaving must end in a detected deadlock.
        PersistSchedule hang = good;
        const int i = find_item(hang, PersistOp::Down, 1);
        hang.items[static_cast<size_t>(i)].waits[0].target += 1;
        const Tally t = run_many(hang, 4, 20, 5);
        CHECK(t.deadlock_runs == 20, "a raised target: %d of 20 interleavings deadlocked", t.deadlock_runs);
        // And a schedule whose reads are not ordered at all (every wait removed) shows hazards.
        PersistSchedule none = good;
        for (PersistItem& it : none.items) it.waits.clear();
        CHECK(run_many(none, 5, 20, 11).hazard_runs > 0, "no waits at all: no hazard seen");
    }

    std::printf("%d checks, %d failures\n", g_checks, g_failures);
    return g_failures ? 1 : 0;
}

#include "cuda/persistent_schedule.h"

#include <algorithm>
#include <map>
#include <stdexcept>

namespace bllama {
namespace cuda {

const char* persist_op_name(PersistOp op) {
    switch (op) {
        case PersistOp::Embed: return "embed";
        case PersistOp::Qkv: return "qkv";
        case PersistOp::Attn: return "attn";
        case PersistOp::Combine: return "combine";
        case PersistOp::O: return "o";
        case PersistOp::GateUp: return "gate_up";
        case PersistOp::Down: return "down";
        case PersistOp::Head: return "head";
        case PersistOp::Argmax: return "argmax";
    }
    return "?";
}

namespace {

// Builds items in program order. A wait for "every bump of counter c so far" takes its target from the running
// count, so targets are absolute over the modeled steps.
struct Builder {
    PersistSchedule s;
    std::map<std::string, int> ids;
    std::vector<uint32_t> count;  // bumps added so far, per counter

    int counter(const std::string& name) {
        auto it = ids.find(name);
        if (it != ids.end()) return it->second;
        const int id = static_cast<int>(s.counter_names.size());
        ids.emplace(name, id);
        s.counter_names.push_back(name);
        count.push_back(0);
        return id;
    }
    PersistWait all_of(int c) const { return PersistWait{c, count[static_cast<size_t>(c)]}; }
    void add(PersistItem it) {
        for (int c : it.bumps) ++count[static_cast<size_t>(c)];
        s.items.push_back(std::move(it));
    }
    // One item per row tile [r0, r0 + tile) of `total` output rows, each waiting on `wait`; `fill` sets the tile's
    // reads, writes and bumps.
    template <class Fill>
    void add_tiles(PersistOp op, int layer, int64_t total, int64_t tile, PersistWait wait, Fill fill) {
        int index = 0;
        for (int64_t r0 = 0; r0 < total; r0 += tile, ++index) {
            PersistItem it;
            it.op = op, it.layer = layer, it.index = index, it.row0 = r0, it.rows = std::min(tile, total - r0);
            it.waits.push_back(wait);
            fill(it);
            add(std::move(it));
        }
    }
};

int64_t tile_rows(int64_t row_bytes, int tile_bytes, int multiple) {
    int64_t r = std::max<int64_t>(1, tile_bytes / row_bytes);
    r = std::max<int64_t>(multiple, r / multiple * multiple);
    return r;
}

}  // namespace

PersistSchedule build_persistent_schedule(const PersistShape& sh, const PersistOptions& o, int steps) {
    if (sh.dim <= 0 || sh.n_heads <= 0 || sh.n_kv_heads <= 0 || sh.n_heads % sh.n_kv_heads || sh.head_dim <= 0 ||
        sh.ffn <= 0 || sh.layers <= 0 || sh.vocab <= 0 || sh.dim % 256 || sh.ffn % 256)
        throw std::invalid_argument("build_persistent_schedule: bad shape");
    if (steps < 1 || o.pos < 0 || o.keys_per_split < 1 || o.tile_bytes < 16)
        throw std::invalid_argument("build_persistent_schedule: bad options");
    const int64_t H = sh.n_heads, Hkv = sh.n_kv_heads, hd = sh.head_dim, G = H / Hkv;
    const int64_t qd = H * hd, kvd = Hkv * hd, qkv_rows = qd + 2 * kvd;
    // A fixed number of split items per kv head (enough for the last modeled position), so every step bumps the
    // attention counters equally often; splits past a step's length do nothing but count themselves.
    const int n_splits = (o.pos + steps - 1) / o.keys_per_split + 1;
    const int64_t max_pos = o.pos + steps;

    Builder b;
    PersistSchedule& s = b.s;
    s.n_steps_modeled = steps;
    auto size = [&](PersistBuf buf) -> int64_t& { return s.buf_size[static_cast<int>(buf)]; };
    size(PersistBuf::Tok) = 1;
    size(PersistBuf::X) = sh.dim;
    size(PersistBuf::Qkv) = qkv_rows;
    size(PersistBuf::Kv) = sh.layers * max_pos * 2 * kvd;
    size(PersistBuf::Part) = H * n_splits * (hd + 2);
    size(PersistBuf::Att) = qd;
    size(PersistBuf::H) = sh.ffn;
    size(PersistBuf::Logits) = sh.vocab;

    // Matmul tiles: packed rows are cols / 4 bytes (2 bits a weight); the f16 head 2 bytes a weight.
    const int64_t qkv_t = tile_rows(sh.dim / 4, o.tile_bytes, 8);
    const int64_t o_t = tile_rows(qd / 4, o.tile_bytes, 8);
    const int64_t gu_t = tile_rows(2 * sh.dim / 4, o.tile_bytes, 8);  // output rows: each reads a gate and an up row
    const int64_t dn_t = tile_rows(sh.ffn / 4, o.tile_bytes, 8);
    const int64_t head_t = tile_rows(2 * sh.dim, 8 * o.tile_bytes, 8);
    const int64_t n_head_tiles = (sh.vocab + head_t - 1) / head_t;
    size(PersistBuf::Cand) = n_head_tiles;

    const PersistRange x_all{PersistBuf::X, 0, sh.dim};
    auto kv_range = [&](int layer, int64_t p, int64_t g, bool value) {  // key or value of kv head g at position p
        const int64_t base = (layer * max_pos + p) * 2 * kvd + (value ? kvd : 0) + g * hd;
        return PersistRange{PersistBuf::Kv, base, base + hd};
    };

    const int c_tok = b.counter("tok"), c_emb = b.counter("embed"), c_head = b.counter("head");
    for (int step = 0; step < steps; ++step) {
        const int64_t pos = o.pos + step, len = pos + 1;
        {
            PersistItem it;
            it.op = PersistOp::Embed;
            if (step > 0) it.waits.push_back(b.all_of(c_tok)), it.reads.push_back({PersistBuf::Tok, 0, 1});
            it.writes.push_back(x_all);
            it.bumps = {c_emb};
            b.add(std::move(it));
        }
        int prev = c_emb;  // the counter whose every bump so far must be seen before this layer reads x
        for (int l = 0; l < sh.layers; ++l) {
            const std::string L = std::to_string(l);
            // qkv: per-kv-head counters (fine) or one counter.
            const int c_qkv = o.fine_deps ? -1 : b.counter("qkv" + L);
            std::vector<int> c_qkv_g(static_cast<size_t>(Hkv));
            for (int64_t g = 0; g < Hkv; ++g)
                c_qkv_g[static_cast<size_t>(g)] = o.fine_deps ? b.counter("qkv" + L + ".g" + std::to_string(g)) : c_qkv;
            auto group_rows_overlap = [&](int64_t g, int64_t r0, int64_t r1) {
                auto ov = [&](int64_t a, int64_t z) { return r0 < z && a < r1; };
                return ov(g * G * hd, (g + 1) * G * hd) || ov(qd + g * hd, qd + (g + 1) * hd) ||
                       ov(qd + kvd + g * hd, qd + kvd + (g + 1) * hd);
            };
            b.add_tiles(PersistOp::Qkv, l, qkv_rows, qkv_t, b.all_of(prev), [&](PersistItem& it) {
                it.reads = {x_all};
                it.writes = {{PersistBuf::Qkv, it.row0, it.row0 + it.rows}};
                if (o.fine_deps) {
                    for (int64_t g = 0; g < Hkv; ++g)
                        if (group_rows_overlap(g, it.row0, it.row0 + it.rows))
                            it.bumps.push_back(c_qkv_g[static_cast<size_t>(g)]);
                } else {
                    it.bumps = {c_qkv};
                }
            });
            // attention: (kv head, split). Reads q of the group's heads; the split's keys from the cache, except the
            // current position, whose key and value come from qkv (rotated in registers); the split holding pos
            // stores them in the cache.
            const int c_att = o.fine_deps ? -1 : b.counter("attn" + L);
            std::vector<int> c_att_g(static_cast<size_t>(Hkv));
            for (int64_t g = 0; g < Hkv; ++g)
                c_att_g[static_cast<size_t>(g)] = o.fine_deps ? b.counter("attn" + L + ".g" + std::to_string(g)) : c_att;
            std::vector<PersistWait> w_qkv_g;
            for (int64_t g = 0; g < Hkv; ++g) w_qkv_g.push_back(b.all_of(c_qkv_g[static_cast<size_t>(g)]));
            int index = 0;
            for (int64_t g = 0; g < Hkv; ++g)
                for (int sp = 0; sp < n_splits; ++sp, ++index) {
                    PersistItem it;
                    it.op = PersistOp::Attn, it.layer = l, it.index = index, it.kv_head = static_cast<int>(g), it.split = sp;
                    it.waits.push_back(w_qkv_g[static_cast<size_t>(g)]);
                    it.bumps = {c_att_g[static_cast<size_t>(g)]};
                    const int64_t k0 = static_cast<int64_t>(sp) * o.keys_per_split;
                    const int64_t k1 = std::min(len, k0 + o.keys_per_split);
                    if (k0 < len) {
                        it.reads.push_back({PersistBuf::Qkv, g * G * hd, (g + 1) * G * hd});
                        for (int64_t p = k0; p < k1; ++p) {
                            if (p == pos) continue;
                            it.reads.push_back(kv_range(l, p, g, false));
                            it.reads.push_back(kv_range(l, p, g, true));
                        }
                        if (pos >= k0 && pos < k1) {
                            it.reads.push_back({PersistBuf::Qkv, qd + g * hd, qd + (g + 1) * hd});
                            it.reads.push_back({PersistBuf::Qkv, qd + kvd + g * hd, qd + kvd + (g + 1) * hd});
                            it.writes.push_back(kv_range(l, pos, g, false));
                            it.writes.push_back(kv_range(l, pos, g, true));
                        }
                        for (int64_t h = g * G; h < (g + 1) * G; ++h) {
                            const int64_t p0 = (h * n_splits + sp) * (hd + 2);
                            it.writes.push_back({PersistBuf::Part, p0, p0 + hd + 2});
                        }
                    }
                    b.add(std::move(it));
                }
            // combine: one item per query head over the splits in use.
            const int c_comb = b.counter("combine" + L);
            std::vector<PersistWait> w_att_g;
            for (int64_t g = 0; g < Hkv; ++g) w_att_g.push_back(b.all_of(c_att_g[static_cast<size_t>(g)]));
            const int used = static_cast<int>((len + o.keys_per_split - 1) / o.keys_per_split);
            for (int64_t h = 0; h < H; ++h) {
                PersistItem it;
                it.op = PersistOp::Combine, it.layer = l, it.index = static_cast<int>(h), it.head = static_cast<int>(h);
                it.waits.push_back(w_att_g[static_cast<size_t>(h / G)]);
                it.reads = {{PersistBuf::Part, h * n_splits * (hd + 2), (h * n_splits + used) * (hd + 2)}};
                it.writes = {{PersistBuf::Att, h * hd, (h + 1) * hd}};
                it.bumps = {c_comb};
                b.add(std::move(it));
            }
            // o: x += W_o subnorm(att), row tiles.
            const int c_o = b.counter("o" + L);
            b.add_tiles(PersistOp::O, l, sh.dim, o_t, b.all_of(c_comb), [&](PersistItem& it) {
                it.reads = {{PersistBuf::Att, 0, qd}, {PersistBuf::X, it.row0, it.row0 + it.rows}};
                it.writes = {{PersistBuf::X, it.row0, it.row0 + it.rows}};
                it.bumps = {c_o};
            });
            // gate|up: h = glu(W_gate n, W_up n) with n = ffn_norm(x), output-row tiles (2 weight rows each).
            const int c_gu = b.counter("gate_up" + L);
            b.add_tiles(PersistOp::GateUp, l, sh.ffn, gu_t, b.all_of(c_o), [&](PersistItem& it) {
                it.reads = {x_all};
                it.writes = {{PersistBuf::H, it.row0, it.row0 + it.rows}};
                it.bumps = {c_gu};
            });
            // down: x += W_down subnorm(h).
            const int c_dn = b.counter("down" + L);
            b.add_tiles(PersistOp::Down, l, sh.dim, dn_t, b.all_of(c_gu), [&](PersistItem& it) {
                it.reads = {{PersistBuf::H, 0, sh.ffn}, {PersistBuf::X, it.row0, it.row0 + it.rows}};
                it.writes = {{PersistBuf::X, it.row0, it.row0 + it.rows}};
                it.bumps = {c_dn};
            });
            prev = c_dn;
        }
        // head tiles (final norm recomputed), each with its argmax candidate; one argmax item writes the token.
        const PersistWait w_last = b.all_of(prev);
        for (int64_t t = 0; t < n_head_tiles; ++t) {
            PersistItem it;
            it.op = PersistOp::Head, it.index = static_cast<int>(t), it.row0 = t * head_t;
            it.rows = std::min(head_t, sh.vocab - it.row0);
            it.waits.push_back(w_last);
            it.reads = {x_all};
            it.writes = {{PersistBuf::Logits, it.row0, it.row0 + it.rows}, {PersistBuf::Cand, t, t + 1}};
            it.bumps = {c_head};
            b.add(std::move(it));
        }
        PersistItem am;
        am.op = PersistOp::Argmax;
        am.waits.push_back(b.all_of(c_head));
        am.reads = {{PersistBuf::Cand, 0, n_head_tiles}};
        am.writes = {{PersistBuf::Tok, 0, 1}};
        am.bumps = {c_tok};
        b.add(std::move(am));
        if (step == 0) s.bumps_per_step = b.count;
    }
    // Every step must bump every counter equally often (the kernel's targets are step * bumps + in-step target).
    for (size_t c = 0; c < b.count.size(); ++c)
        if (b.count[c] != s.bumps_per_step[c] * static_cast<uint32_t>(steps))
            throw std::logic_error("build_persistent_schedule: counter " + s.counter_names[c] + " is bumped unevenly");
    return s;
}

std::vector<std::vector<int>> deal_items(const PersistSchedule& s, int blocks) {
    if (blocks < 1) throw std::invalid_argument("deal_items: blocks < 1");
    std::vector<std::vector<int>> per(static_cast<size_t>(blocks));
    for (size_t i = 0; i < s.items.size(); ++i) per[i % static_cast<size_t>(blocks)].push_back(static_cast<int>(i));
    return per;
}

}  // namespace cuda
}  // namespace bllama

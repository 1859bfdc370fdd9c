// The instruction schedule of the planned persistent decode kernel (issue #18, stage 2/3), as data: host-only,
// plain C++, so it is checked on the CPU (tests/cpp/test_persistent_schedule.cpp simulates it under random
// interleavings of the blocks) before a GPU ever runs it, and the kernel will read the same table.
//
// One decode step at batch 1 is a list of work items in program order (the order today's kernel-by-kernel path
// runs them). Per layer: qkv (row tiles of the stacked q|k|v GEMV; every item recomputes attn_norm + int8
// quantization of x in the canonical order), attn (one item per kv head and key split: rotates q and the
// current key itself, stores the rotated key/value in the cache from the last split), combine (one item per
// query head: log-sum-exp of its splits into the attention output), o (row tiles; recomputes attn_sub_norm;
// x += o), gate_up (row tiles of the stacked gate|up; recomputes ffn_norm; h = glu), down (row tiles; recomputes
// ffn_sub_norm; x += down). Then head (row tiles; recomputes the final norm; logits and a per-item argmax
// candidate), argmax (one item: the token), and the next step's embed (the token's row into x).
//
// Items are dealt to the blocks round-robin in program order (each block runs its items in that order), so the
// first unfinished item always has its block at it and every item it waits for done: no deadlock by
// construction; the simulator checks that empirically as well.
//
// Synchronization: every item waits for (counter >= target) pairs and, when done, bumps its counters by one
// (red.release; ld.acquire on the wait). Counters are never reset: a counter bumped n times per step has
// target k * n + m in step k, so a step needs no clearing pass. 32-bit counters wrap after 2^31 / n steps
// (n <= ~150: over 14 million steps), far beyond one kernel launch.
//
// Each item also declares the data it reads and writes (element ranges of named buffers). The simulator checks
// every read-after-write, write-after-read and write-after-write hazard against those declarations, not against
// the counters, so a wrong counter target or a missing wait is found even where the counters look plausible.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace bllama {
namespace cuda {

enum class PersistOp : uint8_t { Embed, Qkv, Attn, Combine, O, GateUp, Down, Head, Argmax };
const char* persist_op_name(PersistOp op);

// Buffers the items touch (the weights are constant and not listed). KV: [layer][position][2 * kv_dim].
enum class PersistBuf : uint8_t { Tok, X, Qkv, Kv, Part, Att, H, Logits, Cand, kCount };

struct PersistRange {
    PersistBuf buf;
    int64_t lo, hi;  // elements [lo, hi)
};
struct PersistWait {
    int counter;
    uint32_t target;  // within the step; the kernel adds step * bumps_per_step[counter]
};

struct PersistItem {
    PersistOp op;
    int layer = -1;      // -1: not a layer's item
    int index = 0;       // tile, (kv head, split) or head index within its stage
    int64_t row0 = 0, rows = 0;  // weight rows of a matmul tile
    int kv_head = -1, split = -1, head = -1;
    std::vector<PersistWait> waits;
    std::vector<int> bumps;  // counters bumped by one when the item is done
    std::vector<PersistRange> reads, writes;
};

struct PersistShape {
    int dim = 2048, n_heads = 16, n_kv_heads = 16, head_dim = 128, ffn = 8192, layers = 24, vocab = 32000;
};
struct PersistOptions {
    int tile_bytes = 32768;  // packed weight bytes per matmul item (rounded to whole rows)
    int keys_per_split = 32; // attention split length
    int pos = 0;             // the step's position (keys 0 .. pos)
    // Attention waits only for the qkv tiles holding its kv head's rows (per-kv-head counters), and combine only
    // for its kv head's splits; false: each waits for the whole previous stage.
    bool fine_deps = true;
};

struct PersistSchedule {
    std::vector<PersistItem> items;          // program order
    std::vector<std::string> counter_names;
    std::vector<uint32_t> bumps_per_step;    // per counter
    int64_t buf_size[static_cast<int>(PersistBuf::kCount)] = {};
    int n_steps_modeled = 1;                 // items covers this many consecutive steps (positions pos, pos + 1...)
};

// The schedule of `steps` consecutive decode steps (step k at position opts.pos + k; each step's embed reads the
// previous step's argmax token, the first step's the host's). Targets are absolute (step k's include k *
// bumps_per_step), so the simulator runs the items as they are.
PersistSchedule build_persistent_schedule(const PersistShape& shape, const PersistOptions& opts, int steps);

// Items of each block when `blocks` blocks deal them round-robin in program order.
std::vector<std::vector<int>> deal_items(const PersistSchedule& s, int blocks);

}  // namespace cuda
}  // namespace bllama

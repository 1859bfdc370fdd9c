// Where a decode token's time goes, for a build configured with -DCMAKE_CXX_FLAGS=-DBLLAMA_DECODE_PROFILE
// (bench/decode_breakdown.sh): forward.cpp's PROF_* markers record the wall time of every op of each one-row
// forward, the busy time of each pool thread inside each job, and the bytes each op must read; the table is
// printed to stderr at exit (bench/NOTES-kernels.md, "Decode time breakdown"). Without the macro the markers are
// empty. Not for production builds: a clock read around every op and every chunk.
#pragma once

#ifdef BLLAMA_DECODE_PROFILE
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "kernels/ternary.h"

namespace bllama {
namespace {
struct DecodeProfile {
    enum Op { kEmbed, kAttnIn, kQkvAttn, kOIn, kO, kFfnIn, kGateUp, kDownIn, kDown, kHeadIn, kHead, kOps };
    const char* names[kOps] = {"embed+rope table", "attn rmsnorm+quant", "q/k/v+attention job", "o sub-norm+quant",
                               "o job", "ffn rmsnorm+quant", "gate/up job", "down sub-norm+quant", "down job",
                               "head norm+quant", "head job"};
    double wall[kOps] = {}, busy[kOps][16] = {}, bytes[kOps] = {};
    double qkv_busy[16] = {}, attn_busy[16] = {}, total = 0;
    int64_t tokens = 0;
    int threads = 1;
    ~DecodeProfile() {
        if (!tokens) return;
        const double probe = std::getenv("BLLAMA_PROFILE_PROBE_GBS") ? std::atof(std::getenv("BLLAMA_PROFILE_PROBE_GBS")) : 0;
        std::fprintf(stderr, "decode profile: %lld tokens, %d threads, %.1f us per token (sum of ops %.1f)\n",
                     (long long)tokens, threads, total / tokens * 1e6, [&] { double s = 0; for (double w : wall) s += w; return s; }() / tokens * 1e6);
        std::fprintf(stderr, "%-22s %9s %6s %9s %8s %7s %s\n", "op", "us/token", "%tok", "MB/token", "GB/s", "%probe",
                     "busy us/token per thread (idle = wall x threads - busy)");
        for (int o = 0; o < kOps; ++o) {
            const double w = wall[o] / tokens, b = bytes[o] / tokens, gbs = w > 0 ? b / w / 1e9 : 0;
            double bs = 0;
            std::string per;
            for (int t = 0; t < threads; ++t) {
                bs += busy[o][t];
                per += std::to_string((int)(busy[o][t] / tokens * 1e6)) + " ";
            }
            std::fprintf(stderr, "%-22s %9.1f %6.1f %9.2f %8.2f %7.1f %s", names[o], w * 1e6, 100 * wall[o] / total,
                         b / 1e6, gbs, probe > 0 ? 100 * gbs / probe : 0.0, bs > 0 ? per.c_str() : "");
            if (bs > 0) std::fprintf(stderr, "idle %.1f", (wall[o] * threads - bs) / tokens * 1e6);
            std::fprintf(stderr, "\n");
        }
        double q = 0, a = 0;
        for (int t = 0; t < threads; ++t) q += qkv_busy[t], a += attn_busy[t];
        std::fprintf(stderr, "inside the q/k/v+attention job, busy us/token summed over threads: q/k/v matmuls %.1f, "
                     "rope+kv write+attention %.1f\n", q / tokens * 1e6, a / tokens * 1e6);
    }
};
DecodeProfile g_prof;
bool g_prof_active = false;  // set while forward_rows runs a profiled token (its head is then profiled too)
inline double prof_now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
}  // namespace
}  // namespace bllama

#define PROF_MARK(op)                                                  \
    if (prof_on) {                                                     \
        const double t_ = prof_now();                                  \
        g_prof.wall[DecodeProfile::op] += t_ - prof_t;                 \
        prof_t = t_;                                                   \
    }
#define PROF_CHUNK_BEGIN const double pc0_ = prof_on ? prof_now() : 0;
#define PROF_CHUNK_END(op, th) if (prof_on && (th) < 16) g_prof.busy[DecodeProfile::op][th] += prof_now() - pc0_;
#else
#define PROF_MARK(op)
#define PROF_CHUNK_BEGIN
#define PROF_CHUNK_END(op, th)
#endif

// Prompt and decode throughput of the engine on a random model of real shapes.
//
//   bench_decode [--shape 1.7b|2b4t|small] [--threads 1,2] [--prompt 128] [--decode 64] [--tq1] [--tq1-layout auto|2bit|base3] [--probe] [--kv-f32]
//                [--keep PATH] [--head q4|q8|f16] [--batch 2,4,8]
// Defaults are the engine's (LoadOptions): the 4-bit head and the fp16 KV cache.
//
// Writes a random GGUF (TQ2_0 codes, f16 tied embedding) to a temp file, then for each thread count
// loads it (load time), runs a `prompt`-token prompt (prompt tok/s) and `decode` single-token steps
// (decode tok/s), and reports bytes read per decode token, the implied GB/s and the peak RSS.
// --batch: then B sequences (each with the same prompt in its own KV cache) decode together through
// Model::forward_batch for `decode` steps; tokens/s counts every sequence's tokens.
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "kernels/half.h"
#include "kernels/ternary.h"
#include "membw.h"
#include "random_gguf.h"

using namespace bllama;
using namespace bllama::bench;
using Clock = std::chrono::steady_clock;

namespace {

double secs(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }
double peak_rss_mib() {
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss / 1024.0;
}

}  // namespace

int main(int argc, char** argv) {
    const Shape* shape = &kShapes[0];
    std::vector<int> threads = {1, 2};
    int64_t n_prompt = 128, n_decode = 64;
    bool tq1 = false, kv_f16 = LoadOptions{}.kv_f16, probe = false;
    Tq1Layout tq1_layout = Tq1Layout::Auto;
    HeadType head = LoadOptions{}.head;
    std::string keep;
    std::vector<int> batches;
    auto int_list = [](const std::string& v) {
        std::vector<int> out;
        for (size_t p = 0; p < v.size();) {
            const size_t q = v.find(',', p);
            out.push_back(std::stoi(v.substr(p, q - p)));
            p = q == std::string::npos ? v.size() : q + 1;
        }
        return out;
    };
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto val = [&]() -> std::string {
            if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value");
            return argv[++i];
        };
        if (a == "--shape") {
            const std::string v = val();
            shape = nullptr;
            for (const Shape& s : kShapes)
                if (v == s.name) shape = &s;
            if (!shape) throw std::invalid_argument("unknown shape " + v + " (1.7b, 2b4t, small)");
        } else if (a == "--threads") {
            threads = int_list(val());
        } else if (a == "--batch") {
            batches = int_list(val());
        } else if (a == "--prompt") n_prompt = std::stoll(val());
        else if (a == "--decode") n_decode = std::stoll(val());
        else if (a == "--tq1") tq1 = true;
        else if (a == "--tq1-layout") tq1_layout = parse_tq1_layout(val());
        else if (a == "--probe") probe = true;  // the memory read bandwidth probe (bench/membw.h) at each thread count
        else if (a == "--kv-f16") kv_f16 = true;
        else if (a == "--kv-f32") kv_f16 = false;
        else if (a == "--keep") keep = val();
        else if (a == "--head") head = parse_head_type(val());
        else {
            std::fprintf(stderr, "usage: %s [--shape 1.7b|2b4t|small] [--threads 1,2] [--prompt N] [--decode N] [--tq1] [--tq1-layout auto|2bit|base3] [--probe] [--kv-f16|--kv-f32] [--keep PATH] [--head q4|q8|f16] [--batch 2,4,8]\n", argv[0]);
            return 2;
        }
    }
    const std::string path = keep.empty() ? "/tmp/bllama_bench_" + std::to_string(getpid()) + ".gguf" : keep;
    std::printf("shape %s: vocab %lld, D %lld, %lld layers, %lld heads (%lld kv), FFN %lld, %s, %s, kernel %s%s, %s head\n",
                shape->name, (long long)shape->vocab, (long long)shape->dim, (long long)shape->layers,
                (long long)shape->heads, (long long)shape->kv_heads, (long long)shape->ffn,
                shape->relu2 ? "relu2" : "silu", tq1 ? "TQ1_0" : "TQ2_0", kernel_name(best_kernel()),
                kv_f16 ? ", fp16 KV" : ", fp32 KV", head_type_name(head));
    if (tq1)
        std::printf("TQ1_0 layout: %s\n",
                    resolve_tq1_layout(tq1_layout, best_kernel()) == TernaryLayout::Base3 ? "base3 (1.6-bit)" : "2bit (repack)");
    auto t0 = Clock::now();
    if (keep.empty() || access(path.c_str(), R_OK) != 0) {
        write_model(*shape, tq1, path);
        std::printf("wrote %s in %.1f s\n", path.c_str(), secs(t0));
    }

    std::printf("%7s %8s %10s %10s %10s %10s %9s %7s %9s\n", "threads", "load s", "prompt t/s", "decode t/s",
                "MB/token", "GB/s", "weightsMB", "headMB", "peakRSS");
    int rc = 0;
    try {
        for (int nt : threads) {
            LoadOptions o;
            o.threads = nt;
            o.max_context = n_prompt + n_decode;
            o.kv_f16 = kv_f16;
            o.head = head;
            o.tq1_layout = tq1_layout;
            for (int B : batches) o.sequences = std::max(o.sequences, B);
            t0 = Clock::now();
            auto model = Model::load(path, o);
            const double load_s = secs(t0);
            std::vector<int32_t> ids(static_cast<size_t>(n_prompt));
            for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>((i * 7919 + 13) % shape->vocab);
            std::vector<float> logits(static_cast<size_t>(shape->vocab));
            t0 = Clock::now();
            model->forward(ids.data(), n_prompt, 0, logits.data(), false);
            const double prompt_s = secs(t0);
            int32_t tok = argmax(logits.data(), shape->vocab);
            double bytes = 0;
            const uint64_t handoffs0 = model->pool_handoffs(), sleeps0 = model->pool_sleeps();
            t0 = Clock::now();
            for (int64_t i = 0; i < n_decode; ++i) {
                model->forward(&tok, 1, n_prompt + i, logits.data(), false);
                bytes += model->decode_bytes(n_prompt + i);
                tok = argmax(logits.data(), shape->vocab);
            }
            const double decode_s = secs(t0);
            const double tps = n_decode / decode_s;
            std::printf("%7d %8.2f %10.1f %10.2f %10.1f %10.2f %9.0f %7.0f %8.0fM\n", nt, load_s, n_prompt / prompt_s, tps,
                        bytes / n_decode / 1e6, bytes / decode_s / 1e9, model->weight_bytes() / 1e6,
                        model->head_bytes() / 1e6, peak_rss_mib());
            if (probe)
                std::printf("%7d   probe: %.2f GB/s memory read bandwidth (2 MiB pages; 4 KiB pages: %.2f)\n", nt,
                            measure_read_bandwidth(nt) / 1e9, measure_read_bandwidth(nt, size_t(1) << 30, 5, false) / 1e9);
            std::printf("%7d   pool: %.1f handoffs, %.1f worker sleeps per decode token\n", nt,
                        double(model->pool_handoffs() - handoffs0) / n_decode, double(model->pool_sleeps() - sleeps0) / n_decode);
            std::fflush(stdout);
            for (int B : batches) {
                std::vector<int32_t> toks(static_cast<size_t>(B));
                std::vector<int64_t> pos(static_cast<size_t>(B), n_prompt);
                std::vector<float> lb(static_cast<size_t>(B) * shape->vocab);
                for (int b = 0; b < B; ++b) {
                    model->forward(ids.data(), n_prompt, 0, logits.data(), false, b);
                    toks[static_cast<size_t>(b)] = argmax(logits.data(), shape->vocab);
                }
                t0 = Clock::now();
                for (int64_t i = 0; i < n_decode; ++i) {
                    model->forward_batch(toks.data(), pos.data(), nullptr, B, lb.data());
                    for (int b = 0; b < B; ++b) {
                        toks[static_cast<size_t>(b)] = argmax(lb.data() + static_cast<size_t>(b) * shape->vocab, shape->vocab);
                        pos[static_cast<size_t>(b)] += 1;
                    }
                }
                const double bs = secs(t0);
                std::printf("%7d   batch %2d: %10.2f tok/s decode (all sequences), %.2fx one sequence\n", nt, B,
                            B * n_decode / bs, B * n_decode / bs / tps);
                std::fflush(stdout);
            }
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        rc = 1;
    }
    if (keep.empty()) std::remove(path.c_str());
    return rc;
}

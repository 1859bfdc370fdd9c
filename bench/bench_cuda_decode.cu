// End-to-end GPU benchmark of the CUDA backend on a random model of real shapes.
//
//   bench_cuda_decode [--shape 1.7b|2b4t] [--prompt 512] [--decode 128] [--batch 1,4,16,64] [--kv-f16]
//                     [--head f16|q8] [--keep PATH] [--json PATH] [--reps 5] [--no-variants]
//
// Measures, in one run on one device:
//   copy GB/s   device-to-device cudaMemcpy of 1 GiB (bytes read + written), the bandwidth ceiling;
//   prompt      tok/s of a --prompt-token prefill, for each prompt GEMM (our MMA kernel, cuBLASLt);
//   decode      tok/s at batch 1 with the graph-captured step and without graphs (launch by launch),
//               and batched (B sequences per step); per-step times are host-clock medians of whole steps,
//               including the 4-byte token copy and the synchronization that generation really pays;
//   variants    the decode paths A/B (CudaOptions pdl): baseline (plain launches) and pdl (the default), each its
//               own CudaModel (4 slots, built from the same file, one at a time,
//               after the main model is freed), graph-captured decode at batch 1, 2 and 4; two rounds, the
//               variants interleaved, so the spread between rounds of one variant shows the noise;
//   floor       the bandwidth floor at batch 1: copy GB/s / bytes a step must read (ternary weights, f16 head,
//               one embedding row, the KV cache up to the mean position).
//   load        seconds to build the main CudaModel from the open file: checks, repack, q8 requantization, upload
//               (before the loader was shared it timed only the repack from a CPU-loaded model and the upload).
// Prompt times are medians of --reps prefills after one warm-up.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/cuda_model.h"
#include "cuda/kernels/cuda_util.cuh"
#include "random_gguf.h"

using namespace bllama;
using namespace bllama::cuda;
using Clock = std::chrono::steady_clock;

namespace {

double secs(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0.0 : v[v.size() / 2];
}

double copy_bandwidth_gbs() {
    const size_t bytes = size_t(1) << 30;
    DeviceBuffer<uint8_t> a(bytes), b(bytes);
    CUDA_CHECK(cudaMemset(a.get(), 1, bytes));
    CudaStream s;
    CudaEvent e0, e1;
    std::vector<double> gbs;
    for (int i = 0; i < 12; ++i) {
        e0.record(s.get());
        CUDA_CHECK(cudaMemcpyAsync(b.get(), a.get(), bytes, cudaMemcpyDeviceToDevice, s.get()));
        e1.record(s.get());
        const float ms = e1.ms_since(e0);
        if (i >= 2) gbs.push_back(2.0 * bytes / (ms * 1e-3) / 1e9);
    }
    return median(gbs);
}

std::vector<int32_t> prompt_ids(int64_t n, int64_t vocab, int64_t salt) {
    std::vector<int32_t> ids(static_cast<size_t>(n));
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>((i * 7919 + 13 + salt * 104729) % vocab);
    return ids;
}

struct DecodeResult {
    double tok_s = 0, step_ms = 0;
};

// B sequences: each slot gets a prompt, then `steps` batched decode steps (k_steps > 1: decode_steps, K steps per
// host synchronization; a step's time is then a K-step call's over K).
DecodeResult run_decode(CudaModel& m, int B, int64_t n_prompt, int64_t steps, int k_steps = 1) {
    const int64_t V = m.config().vocab;
    SamplingParams greedy;
    for (int b = 0; b < B; ++b) {
        const auto ids = prompt_ids(n_prompt, V, b);
        m.begin_sequence(b, ids, greedy);
        m.prefill(b, ids.data(), n_prompt, 0, nullptr);
        m.sample_after_prefill(b, n_prompt);
    }
    const int K = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(k_steps, steps - 1)));
    std::vector<int32_t> out(static_cast<size_t>(B) * K);
    m.decode_step(B, out.data());  // warm-up: graph capture and instantiation
    std::vector<double> step_s;
    int64_t done = 0;
    const auto t0 = Clock::now();
    while (done + K <= steps - 1) {
        const auto t = Clock::now();
        if (K == 1) m.decode_step(B, out.data());
        else m.decode_steps(B, K, out.data());
        step_s.push_back(secs(t) / K);
        done += K;
    }
    const double total = secs(t0);
    DecodeResult r;
    r.step_ms = median(step_s) * 1e3;
    r.tok_s = B * done / total;
    return r;
}

double run_prompt(CudaModel& m, int64_t n_prompt, int reps) {
    const auto ids = prompt_ids(n_prompt, m.config().vocab, 99);
    m.prefill(0, ids.data(), n_prompt, 0, nullptr);  // warm-up
    std::vector<double> t;
    for (int i = 0; i < reps; ++i) {
        const auto t0 = Clock::now();
        m.prefill(0, ids.data(), n_prompt, 0, nullptr);  // synchronizes at the end
        t.push_back(secs(t0));
    }
    return n_prompt / median(t);
}

}  // namespace

int main(int argc, char** argv) {
    std::string shape_name = "1.7b", keep, json;
    int64_t n_prompt = 512, n_decode = 128, decode_prompt = 128;
    std::vector<int> batches = {1, 4, 16, 64};
    bool kv_f16 = false, variants = true, head_q8 = false, stage1 = false;
    int reps = 5;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto val = [&]() -> std::string {
            if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value");
            return argv[++i];
        };
        if (a == "--shape") shape_name = val();
        else if (a == "--prompt") n_prompt = std::stoll(val());
        else if (a == "--decode") n_decode = std::stoll(val());
        else if (a == "--kv-f16") kv_f16 = true;
        else if (a == "--head") {
            const std::string h = val();
            if (h != "f16" && h != "q8") throw std::invalid_argument("--head must be f16 or q8");
            head_q8 = h == "q8";
        }
        else if (a == "--keep") keep = val();
        else if (a == "--json") json = val();
        else if (a == "--reps") reps = std::stoi(val());
        else if (a == "--no-variants") variants = false;
        else if (a == "--stage1") stage1 = true;
        else if (a == "--batch") {
            batches.clear();
            const std::string v = val();
            for (size_t p = 0; p < v.size();) {
                const size_t q = v.find(',', p);
                batches.push_back(std::stoi(v.substr(p, q - p)));
                p = q == std::string::npos ? v.size() : q + 1;
            }
        } else {
            std::fprintf(stderr, "usage: %s [--shape 1.7b|2b4t] [--prompt N] [--decode N] [--batch 1,4,16] [--kv-f16] "
                                 "[--head f16|q8] [--keep PATH] [--json PATH] [--reps N] [--no-variants] [--stage1]\n", argv[0]);
            return 2;
        }
    }
    if (device_count() == 0) {
        std::printf("SKIP: %s\n", device_description());
        return 77;
    }
    const bench::Shape* shape = bench::find_shape(shape_name);
    if (!shape) throw std::invalid_argument("unknown shape " + shape_name + " (1.7b, 2b4t)");
    const std::string path = keep.empty() ? "/tmp/bllama_cuda_bench_" + std::to_string(getpid()) + ".gguf" : keep;
    if (keep.empty() || access(path.c_str(), R_OK) != 0) {
        const auto t0 = Clock::now();
        bench::write_model(*shape, false, path);
        std::printf("wrote %s in %.1f s\n", path.c_str(), secs(t0));
    }
    std::printf("device: %s\nshape %s: vocab %lld, D %lld, %lld layers, %lld heads (%lld kv), FFN %lld%s%s\n",
                device_description(), shape->name, (long long)shape->vocab, (long long)shape->dim,
                (long long)shape->layers, (long long)shape->heads, (long long)shape->kv_heads, (long long)shape->ffn,
                kv_f16 ? ", fp16 KV" : "", head_q8 ? ", int8 head" : "");

    const double copy_gbs = copy_bandwidth_gbs();
    const int max_b = *std::max_element(batches.begin(), batches.end());
    const GgufFile file = GgufFile::open(path);

    CudaOptions co;
    co.max_context = std::max(n_prompt, decode_prompt + n_decode) + 8;
    co.kv_f16 = kv_f16;
    co.slots = max_b;
    co.head = head_q8 ? HeadType::Q8 : HeadType::F16;  // q8: requantized at load as the CPU does, the GPU runs its rows
    auto t0 = Clock::now();
    auto mp = std::make_unique<CudaModel>(file, co);
    CudaModel& m = *mp;
    const double load_s = secs(t0);

    // Bytes a batch-1 step reads: every packed weight, the head (f16 or int8), one embedding row, and the KV cache
    // of both k and v up to the mean position of the measured steps.
    const ModelConfig c = m.config();  // a copy: m is freed before the variants
    const double mean_pos = decode_prompt + n_decode / 2.0;
    const double kv_bytes = 2.0 * c.n_layers * mean_pos * c.kv_dim() * (kv_f16 ? 2 : 4);
    const double step_bytes = m.weight_bytes() + m.head_bytes() + 2.0 * c.dim + kv_bytes;
    const double floor_tok_s = copy_gbs * 1e9 / step_bytes;

    const double pp_mma = run_prompt(m, n_prompt, reps);
    double pp_lt = -1;
    if (CublasLtGemm::available()) {
        CudaOptions lt = co;
        lt.gemm = PromptGemm::CublasLt;
        lt.slots = 1;
        CudaModel mlt(file, lt);
        pp_lt = run_prompt(mlt, n_prompt, reps);
    }

    std::vector<std::pair<int, DecodeResult>> dec;
    for (int B : batches) dec.emplace_back(B, run_decode(m, B, decode_prompt, n_decode));
    DecodeResult nograph;
    {
        CudaOptions ng = co;
        ng.graphs = false;
        ng.slots = 1;
        CudaModel mng(file, ng);
        nograph = run_decode(mng, 1, decode_prompt, n_decode);
    }
    const double weight_mib = m.weight_bytes() / 1048576.0, head_mib = m.head_bytes() / 1048576.0;
    const double alloc_mib = m.device_bytes() / 1048576.0;
    mp.reset();  // the variants below build their own models, one at a time

    // The decode paths, A/B: each variant its own model; two rounds, variants interleaved.
    struct Variant {
        const char* name;
        bool pdl;
        int k_steps = 1;            // issue #18's decode-step experiments (--stage1): steps per host sync
        bool fused_argmax = false;  // and the greedy token inside the head kernel
        bool pdl_active = false;
        std::vector<std::vector<DecodeResult>> by_batch;  // [batch index][round]
        Variant(const char* n, bool p, bool am = false, int k = 1) : name(n), pdl(p), k_steps(k), fused_argmax(am), by_batch(3) {}
    };
    const int var_batches[3] = {1, 2, 4};
    std::vector<Variant> var;
    if (variants) {
        var = {{"baseline", false}, {"pdl", true}};
        if (stage1) {  // each on top of pdl (the default); tests/cuda/test_decode_variants.cu checks them first
            var.push_back({"pdl+fused_argmax", true, true});
            var.push_back({"pdl+K8", true, false, 8});
            var.push_back({"pdl+argmax+K8", true, true, 8});
        }
        for (int round = 0; round < 2; ++round)
            for (Variant& v : var) {
                CudaOptions vo = co;
                vo.slots = 4;
                vo.pdl = v.pdl;
                vo.fused_argmax = v.fused_argmax;
                CudaModel mv(file, vo);
                v.pdl_active = mv.pdl_active();
                for (int bi = 0; bi < 3; ++bi)
                    v.by_batch[bi].push_back(run_decode(mv, var_batches[bi], decode_prompt, n_decode, v.k_steps));
            }
    }
    auto mean_tok_s = [](const std::vector<DecodeResult>& r) {
        double s = 0;
        for (const DecodeResult& x : r) s += x.tok_s;
        return r.empty() ? 0.0 : s / r.size();
    };
    auto spread_pct = [&](const std::vector<DecodeResult>& r) {  // (max - min) / mean of the rounds
        double lo = 1e300, hi = 0;
        for (const DecodeResult& x : r) lo = std::min(lo, x.tok_s), hi = std::max(hi, x.tok_s);
        return r.empty() ? 0.0 : 100.0 * (hi - lo) / mean_tok_s(r);
    };

    std::printf("\nload %.2f s, %.0f MiB packed weights + %.0f MiB head on the GPU (%.0f MiB allocated in all)\n",
                load_s, weight_mib, head_mib, alloc_mib);
    std::printf("copy bandwidth %.0f GB/s; a batch-1 step reads %.1f MiB: floor %.0f tok/s\n", copy_gbs,
                step_bytes / 1048576.0, floor_tok_s);
    std::printf("%-34s %12s %10s\n", "measurement", "tok/s", "ms/step");
    std::printf("%-34s %12.0f %10s\n", ("prompt " + std::to_string(n_prompt) + ", mma gemm").c_str(), pp_mma, "-");
    if (pp_lt >= 0) std::printf("%-34s %12.0f %10s\n", ("prompt " + std::to_string(n_prompt) + ", cublaslt gemm").c_str(), pp_lt, "-");
    for (auto& [B, r] : dec)
        std::printf("%-34s %12.0f %10.3f\n", ("decode batch " + std::to_string(B) + ", graph").c_str(), r.tok_s, r.step_ms);
    std::printf("%-34s %12.0f %10.3f\n", "decode batch 1, no graph", nograph.tok_s, nograph.step_ms);
    std::printf("batch-1 decode at %.0f%% of the bandwidth floor\n", 100.0 * dec.front().second.tok_s / floor_tok_s);
    if (!var.empty()) {
        std::printf("\ndecode variants (own 4-slot model each, graphs; tok/s: mean of 2 rounds, spread = (max - min) / mean;"
                    " vs base: B=1)\n");
        std::printf("%-28s %10s %7s %9s %10s %7s %10s %7s %8s\n", "variant", "B=1 tok/s", "spread", "ms/step", "B=2 tok/s",
                    "spread", "B=4 tok/s", "spread", "vs base");
        const double base1 = mean_tok_s(var.front().by_batch[0]);
        for (const Variant& v : var) {
            std::vector<double> ms;
            for (const DecodeResult& r : v.by_batch[0]) ms.push_back(r.step_ms);
            const std::string name = std::string(v.name) + (v.pdl && !v.pdl_active ? " (no PDL)" : "");
            std::printf("%-28s %10.0f %6.1f%% %9.3f %10.0f %6.1f%% %10.0f %6.1f%% %+7.1f%%\n", name.c_str(),
                        mean_tok_s(v.by_batch[0]), spread_pct(v.by_batch[0]), median(ms), mean_tok_s(v.by_batch[1]),
                        spread_pct(v.by_batch[1]), mean_tok_s(v.by_batch[2]), spread_pct(v.by_batch[2]),
                        100.0 * (mean_tok_s(v.by_batch[0]) / base1 - 1.0));
        }
    }

    if (!json.empty()) {
        FILE* f = std::fopen(json.c_str(), "w");
        if (!f) throw std::runtime_error("cannot write " + json);
        std::fprintf(f, "{\"device\": \"%s\", \"shape\": \"%s\", \"kv_f16\": %s, \"head\": \"%s\", \"copy_GB_s\": %.1f, "
                        "\"load_s\": %.3f,\n",
                     device_description(), shape->name, kv_f16 ? "true" : "false", head_q8 ? "q8" : "f16", copy_gbs, load_s);
        std::fprintf(f, " \"step_bytes\": %.0f, \"floor_tok_s\": %.1f, \"prompt_tokens\": %lld, \"prompt_tok_s_mma\": %.1f, "
                        "\"prompt_tok_s_cublaslt\": %.1f,\n", step_bytes, floor_tok_s, (long long)n_prompt, pp_mma, pp_lt);
        std::fprintf(f, " \"decode_no_graph\": {\"tok_s\": %.1f, \"step_ms\": %.4f},\n \"decode\": [", nograph.tok_s, nograph.step_ms);
        for (size_t i = 0; i < dec.size(); ++i)
            std::fprintf(f, "%s{\"batch\": %d, \"tok_s\": %.1f, \"step_ms\": %.4f}", i ? ", " : "", dec[i].first,
                         dec[i].second.tok_s, dec[i].second.step_ms);
        std::fprintf(f, "],\n \"decode_variants\": [");
        for (size_t i = 0; i < var.size(); ++i) {
            const Variant& v = var[i];
            for (int bi = 0; bi < 3; ++bi) {
                const std::vector<DecodeResult>& r = v.by_batch[bi];
                std::fprintf(f, "%s\n  {\"name\": \"%s\", \"pdl\": %s, \"pdl_active\": %s, \"batch\": %d, "
                                "\"tok_s\": %.1f, \"spread_pct\": %.2f, \"rounds\": [",
                             i || bi ? "," : "", v.name, v.pdl ? "true" : "false", v.pdl_active ? "true" : "false",
                             var_batches[bi], mean_tok_s(r), spread_pct(r));
                for (size_t k = 0; k < r.size(); ++k)
                    std::fprintf(f, "%s{\"tok_s\": %.1f, \"step_ms\": %.4f}", k ? ", " : "", r[k].tok_s, r[k].step_ms);
                std::fprintf(f, "]}");
            }
        }
        std::fprintf(f, "]}\n");
        std::fclose(f);
        std::printf("wrote %s\n", json.c_str());
    }
    if (keep.empty()) std::remove(path.c_str());
    return 0;
}

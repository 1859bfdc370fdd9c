// CUDA kernel benchmark: the ternary matmuls on the model's own shapes, against the device's measured
// copy bandwidth (decode GEMV) and in int8 TOPS (prompt GEMM).
//
// Usage: bench_cuda_kernels [--json PATH] [--reps N] [--warmup N]
//
// Method. Copy bandwidth: cudaMemcpyAsync device to device of 1 GiB, bytes read + written. Each matmul
// is timed as a CUDA graph of K launches, each on a different copy of the weights (the copies together
// exceed 4x the L2 size, so every launch streams its weights from DRAM, as decode does), replayed
// --warmup times untimed and --reps times (default 50) between two events; the figure is the median
// replay over K. The graph removes the host's launch gaps; it is also how the model runs decode.
// Activations and outputs stay in one buffer each (in the model, the quantizer has just written them).
// GEMV bytes = packed weights + activations read + outputs written (AddTo: read and written). GEMM
// rate = 2 * rows * tokens * cols / time ("int8 TOPS", the ternary products counted as int8 ones).
// Kernels: gemv = ternary_gemv; mma = ternary_gemm_mma (its own tile choice), mma_large / mma_small =
// that kernel with the tile forced; cublaslt = the whole CublasLtGemm::run (unpack to int8 + cuBLASLt
// GEMM + epilogue kernel), what the model would pay on that path. Decode with the input norm, per call:
// norm+gemv = rmsnorm_quant + ternary_gemv (the decode path); "+pdl": the same graph with the K calls chained
// by Programmatic Dependent Launch (CudaOptions::pdl; sm_90 only, the rows are left out elsewhere), i.e. each
// call's first weight loads overlap the previous call's tail. Decode attention (1 token, positions 128 and
// 1024): rope+attn = rope_kv_write + attention_decode (three launches).
// Inputs are random (not zeros: see the device notes); the values are not checked here
// (tests/cuda/test_ternary_kernels.cu does that).
//
// Output: a table on stdout; with --json, one JSON object per line (device, copy, gemv, gemm, summary).
// Exit code 77 where there is no GPU.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/kernels/cuda_util.cuh"
#include "cuda/kernels/kernels.cuh"
#include "cuda/kernels/launch.cuh"
#include "cuda/kernels/ternary_common.cuh"

using namespace bllama;
using cuda::Epilogue;

namespace {

struct Options {
    std::string json;
    int reps = 50;
    int warmup = 5;
};

// Random ternary words (every 2-bit field 0..2) and int8 activations, from a hash of the index.
__device__ __forceinline__ uint32_t mix(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return static_cast<uint32_t>(x);
}
__global__ void fill_words(uint32_t* w, size_t n, uint64_t seed) {
    for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
         i += static_cast<size_t>(gridDim.x) * blockDim.x) {
        uint32_t v = 0;
        for (int f = 0; f < 16; ++f) v |= (mix(seed * 0x9E3779B97F4A7C15ull + i * 16 + f) % 3) << (2 * f);
        w[i] = v;
    }
}
__global__ void fill_floats(float* x, size_t n, uint64_t seed, float lo, float hi) {
    for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
         i += static_cast<size_t>(gridDim.x) * blockDim.x)
        x[i] = lo + (hi - lo) * static_cast<float>(mix(seed + i) >> 8) * 0x1.0p-24f;
}
__global__ void fill_acts(int8_t* q, size_t n, uint64_t seed) {
    for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
         i += static_cast<size_t>(gridDim.x) * blockDim.x)
        q[i] = static_cast<int8_t>(mix(seed + i) % 255 - 127);
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

struct Device {
    cudaDeviceProp prop{};
    double copy_gbps = 0;
};

struct Matrix {
    const char* model;
    const char* name;
    int rows, cols;  // weight rows (gate|up: 2F) and columns
    Epilogue ep;
    int out_rows() const { return ep == Epilogue::GluSilu || ep == Epilogue::GluRelu2 ? rows / 2 : rows; }
    double weight_bytes() const { return static_cast<double>(rows) * cols / 4; }
};

// The model presets of bllama/config.py: 1.7b (D 2048, 16 heads, MHA, F 8192, silu) and 2b4t (D 2560,
// 20 heads, 5 kv heads, F 6912, relu2). q|k|v and gate|up are stacked, as the model runs them.
std::vector<Matrix> model_matrices() {
    return {
        {"1.7b", "qkv", 2048 + 2 * 2048, 2048, Epilogue::Store},
        {"1.7b", "o", 2048, 2048, Epilogue::AddTo},
        {"1.7b", "gate|up", 2 * 8192, 2048, Epilogue::GluSilu},
        {"1.7b", "down", 2048, 8192, Epilogue::AddTo},
        {"2b4t", "qkv", 2560 + 2 * 640, 2560, Epilogue::Store},
        {"2b4t", "o", 2560, 2560, Epilogue::AddTo},
        {"2b4t", "gate|up", 2 * 6912, 2560, Epilogue::GluRelu2},
        {"2b4t", "down", 2560, 6912, Epilogue::AddTo},
    };
}
int model_layers(const std::string& model) { return model == "1.7b" ? 24 : 30; }

class Bench {
public:
    Bench(const Options& o) : opt_(o) {
        int dev = 0;
        CUDA_CHECK(cudaGetDevice(&dev));
        CUDA_CHECK(cudaGetDeviceProperties(&dev_.prop, dev));
        if (!opt_.json.empty()) {
            json_ = std::fopen(opt_.json.c_str(), "w");
            if (!json_) throw std::runtime_error("cannot write " + opt_.json);
        }
    }
    ~Bench() {
        if (json_) std::fclose(json_);
    }

    void run() {
        const cudaDeviceProp& p = dev_.prop;
        std::printf("device: %s, sm_%d%d, %d SMs, L2 %.1f MiB, %.1f GiB; reps %d (median), warm-up %d\n", p.name,
                    p.major, p.minor, p.multiProcessorCount, p.l2CacheSize / 1048576.0, p.totalGlobalMem / 1073741824.0,
                    opt_.reps, opt_.warmup);
        emit("{\"bench\":\"device\",\"name\":\"%s\",\"sm\":%d,\"sms\":%d,\"l2_bytes\":%d,\"mem_bytes\":%zu,\"reps\":%d}",
             p.name, p.major * 10 + p.minor, p.multiProcessorCount, p.l2CacheSize, p.totalGlobalMem, opt_.reps);
        copy_bandwidth();
        setup_buffers();
        const bool lt = cuda::CublasLtGemm::available();
        if (lt) lt_ = std::make_unique<cuda::CublasLtGemm>(max_rows_, max_cols_, kMaxTokens);
        else std::printf("cuBLASLt: not available (its rows are left out)\n");

        std::printf("\n== decode GEMV (weights streamed from DRAM; %% of the copy bandwidth)\n");
        std::printf("%-6s %-8s %6s x %-5s %3s  %-10s %9s %9s %7s\n", "model", "matrix", "rows", "cols", "n", "kernel", "us",
                    "GB/s", "% copy");
        for (const Matrix& m : mats_)
            for (int n : {1, 8}) {
                gemv_row(m, n, "gemv", [&](const cuda::DevTernary& w, float* y, cudaStream_t s) {
                    cuda::ternary_gemv(w, acts(m, n), n, y, m.out_rows(), m.ep, s);
                });
                if (n == 8)  // the tensor-core kernel at 8 tokens, for the GEMV/GEMM crossover
                    gemv_row(m, n, "mma", [&](const cuda::DevTernary& w, float* y, cudaStream_t s) {
                        cuda::ternary_gemm_mma(w, acts(m, n), n, y, m.out_rows(), m.ep, s);
                    });
            }

        std::printf("\n== decode GEMV with its input norm, 1 token (float input; us per call)\n");
        std::printf("%-6s %-8s %6s x %-5s %3s  %-10s %9s %9s %7s\n", "model", "matrix", "rows", "cols", "n", "kernel", "us",
                    "GB/s", "% copy");
        const bool pdl = cuda::pdl_supported();
        if (!pdl) std::printf("(no PDL on this device: the +pdl rows are left out)\n");
        for (const Matrix& m : mats_) {
            const int n = 1;
            auto norm_gemv = [&](const cuda::DevTernary& w, float* y, cudaStream_t s) {
                cuda::rmsnorm_quant(xf_.get(), m.cols, nw_.get(), n, m.cols, 1e-5f, acts(m, n), s);
                cuda::ternary_gemv(w, acts(m, n), n, y, m.out_rows(), m.ep, s);
            };
            auto plain = [&](const cuda::DevTernary& w, float* y, cudaStream_t s) {
                cuda::ternary_gemv(w, acts(m, n), n, y, m.out_rows(), m.ep, s);
            };
            gemv_row(m, n, "norm+gemv", norm_gemv);
            if (pdl) {
                gemv_row(m, n, "gemv+pdl", plain, true);
                gemv_row(m, n, "norm+gemv+pdl", norm_gemv, true);
            }
        }

        attention_rows(pdl);

        std::printf("\n== prompt GEMM (int8 TOPS = 2 * rows * tokens * cols / time)\n");
        std::printf("%-6s %-8s %6s x %-5s %4s  %-10s %9s %9s\n", "model", "matrix", "rows", "cols", "n", "kernel", "us", "TOPS");
        for (int n : {128, 512})
            for (const Matrix& m : mats_) {
                gemm_row(m, n, "mma", cuda::detail::MmaTile::Auto);
                gemm_row(m, n, "mma_large", cuda::detail::MmaTile::Large);
                gemm_row(m, n, "mma_small", cuda::detail::MmaTile::Small);
                if (lt) gemm_row(m, n, "cublaslt", cuda::detail::MmaTile::Auto, true);
            }
        summary();
    }

private:
    static constexpr int kMaxTokens = 512;
    Options opt_;
    Device dev_;
    FILE* json_ = nullptr;
    CudaStream stream_;
    std::vector<Matrix> mats_ = model_matrices();
    DeviceBuffer<uint32_t> weights_;  // the rotation pool
    DeviceBuffer<int8_t> act_q_;
    DeviceBuffer<float> act_scale_, y_;
    DeviceBuffer<int32_t> act_rs_;
    DeviceBuffer<float> xf_, nw_;  // float decode input [8, max_cols] and norm weights [max(rows, cols)]
    int max_rows_ = 0, max_cols_ = 0;
    std::unique_ptr<cuda::CublasLtGemm> lt_;
    struct Timing {
        std::string model, matrix, kernel;
        int n;
        double us;
    };
    std::vector<Timing> timings_;

    template <class... A>
    void emit(const char* fmt, A... a) {
        if (!json_) return;
        std::fprintf(json_, fmt, a...);
        std::fprintf(json_, "\n");
        std::fflush(json_);
    }

    void copy_bandwidth() {
        const size_t bytes = size_t(1) << 30;
        DeviceBuffer<uint8_t> a(bytes), b(bytes);
        CUDA_CHECK(cudaMemsetAsync(a.get(), 1, bytes, stream_.get()));
        std::vector<double> ms;
        CudaEvent e0, e1;
        for (int i = 0; i < opt_.warmup + opt_.reps; ++i) {
            e0.record(stream_.get());
            CUDA_CHECK(cudaMemcpyAsync(b.get(), a.get(), bytes, cudaMemcpyDeviceToDevice, stream_.get()));
            e1.record(stream_.get());
            const double t = e1.ms_since(e0);
            if (i >= opt_.warmup) ms.push_back(t);
        }
        const double t = median(ms);
        dev_.copy_gbps = 2.0 * bytes / (t * 1e-3) / 1e9;
        std::printf("copy: 1 GiB device to device, %.3f ms: %.0f GB/s (read + write)\n", t, dev_.copy_gbps);
        emit("{\"bench\":\"copy\",\"bytes\":%zu,\"ms\":%.4f,\"gbps\":%.1f}", bytes, t, dev_.copy_gbps);
    }

    void setup_buffers() {
        double max_w = 0;
        for (const Matrix& m : mats_) {
            max_w = std::max(max_w, m.weight_bytes());
            max_rows_ = std::max(max_rows_, m.rows);
            max_cols_ = std::max(max_cols_, m.cols);
        }
        // The pool: at least 4x L2 and 4 copies of the largest matrix.
        const size_t pool = std::max<size_t>(4 * static_cast<size_t>(dev_.prop.l2CacheSize), 4 * static_cast<size_t>(max_w));
        weights_ = DeviceBuffer<uint32_t>(pool / 4);
        fill_words<<<1024, 256, 0, stream_.get()>>>(weights_.get(), weights_.size(), 1);
        CUDA_CHECK_LAUNCH();
        act_q_ = DeviceBuffer<int8_t>(static_cast<size_t>(kMaxTokens) * max_cols_);
        fill_acts<<<1024, 256, 0, stream_.get()>>>(act_q_.get(), act_q_.size(), 2);
        CUDA_CHECK_LAUNCH();
        std::vector<float> sc(kMaxTokens, 1.0f / 64);
        std::vector<int32_t> rs(kMaxTokens, 0);
        act_scale_ = DeviceBuffer<float>(kMaxTokens);
        act_scale_.upload(sc.data(), sc.size(), stream_.get());
        act_rs_ = DeviceBuffer<int32_t>(kMaxTokens);
        act_rs_.upload(rs.data(), rs.size(), stream_.get());
        xf_ = DeviceBuffer<float>(static_cast<size_t>(8) * max_cols_);
        fill_floats<<<256, 256, 0, stream_.get()>>>(xf_.get(), xf_.size(), 3, -2.0f, 2.0f);
        CUDA_CHECK_LAUNCH();
        nw_ = DeviceBuffer<float>(static_cast<size_t>(std::max(max_cols_, max_rows_)));
        fill_floats<<<256, 256, 0, stream_.get()>>>(nw_.get(), nw_.size(), 4, 0.5f, 1.5f);
        CUDA_CHECK_LAUNCH();
        y_ = DeviceBuffer<float>(static_cast<size_t>(kMaxTokens) * max_rows_);
        CUDA_CHECK(cudaMemsetAsync(y_.get(), 0, y_.bytes(), stream_.get()));
        stream_.sync();
    }

    cuda::DevActs acts(const Matrix& m, int n) const {
        (void)n;
        cuda::DevActs x;
        x.q = act_q_.get();
        x.scale = act_scale_.get();
        x.row_sum = act_rs_.get();
        x.cols = m.cols;
        return x;
    }

    // Copy i of matrix m in the pool.
    cuda::DevTernary weights(const Matrix& m, int i) const {
        const size_t words = static_cast<size_t>(m.rows) * m.cols / 16;
        cuda::DevTernary w;
        w.words = weights_.get() + static_cast<size_t>(i) * words;
        w.rows = m.rows;
        w.cols = m.cols;
        if (m.out_rows() != m.rows) {
            w.n_seg = 2;
            w.seg_end[0] = m.rows / 2;
            w.seg_end[1] = m.rows;
        } else {
            w.n_seg = 1;
            w.seg_end[0] = m.rows;
        }
        for (int s = 0; s < cuda::kMaxSegments; ++s) w.seg_scale[s] = 0.01f;
        return w;
    }
    int copies(const Matrix& m) const {
        return static_cast<int>(weights_.size() / (static_cast<size_t>(m.rows) * m.cols / 16));
    }

    // Median time of one call, in microseconds: a graph of `copies` calls on rotating weights. pdl: every
    // launch after the first with Programmatic Dependent Launch.
    double time_calls(const Matrix& m, const std::function<void(const cuda::DevTernary&, float*, cudaStream_t)>& call,
                      bool pdl = false) {
        cudaStream_t s = stream_.get();
        const int k = copies(m);
        call(weights(m, 0), y_.get(), s);  // first call outside the capture (cuBLASLt picks its algorithm)
        stream_.sync();
        return time_chain_us(k, pdl, [&](int i) { call(weights(m, i), y_.get(), s); });
    }

    // Median time per call, in microseconds, of a graph of k calls call(0) .. call(k - 1) on stream_ (pdl: every
    // launch after the first with Programmatic Dependent Launch), replayed --warmup times untimed and --reps
    // times between two events.
    double time_chain_us(int k, bool pdl, const std::function<void(int)>& call) {
        cudaStream_t s = stream_.get();
        const GraphExec exec = capture_graph(s, [&] {
            for (int i = 0; i < k; ++i) {
                cuda::PdlScope scope(pdl && i > 0);
                call(i);
            }
        });
        CudaEvent e0, e1;
        std::vector<double> ms;
        for (int r = 0; r < opt_.warmup + opt_.reps; ++r) {
            e0.record(s);
            exec.launch(s);
            e1.record(s);
            const double t = e1.ms_since(e0);
            if (r >= opt_.warmup) ms.push_back(t);
        }
        return median(ms) * 1e3 / k;
    }

    // Decode attention for 1 token at a few positions, per call: rope_kv_write, then attention_decode (split +
    // combine), timed as a graph of one call per layer of an fp32 cache (each layer's keys are read from DRAM, as in a decode step).
    void attention_rows(bool pdl) {
        struct Heads {
            const char* model;
            int H, Hkv, hd;
        };
        std::printf("\n== decode attention with RoPE + KV store, 1 token (us per call, graph of one call per layer)\n");
        std::printf("%-6s %3s/%-3s x %-4s %5s  %-16s %9s\n", "model", "H", "Hkv", "hd", "pos", "kernel", "us");
        const int ctx = 2048;
        for (const Heads& h : {Heads{"1.7b", 16, 16, 128}, Heads{"2b4t", 20, 5, 128}}) {
            const int layers = model_layers(h.model), KV = h.Hkv * h.hd, ldq = h.H * h.hd + 2 * KV;
            const size_t cache = static_cast<size_t>(layers) * ctx * KV;
            DeviceBuffer<float> k(cache), v(cache), qkv(ldq), out(static_cast<size_t>(h.H) * h.hd);
            DeviceBuffer<float> cs(static_cast<size_t>(ctx) * h.hd / 2), sn(cs.size());
            DeviceBuffer<float> ws(cuda::attention_decode_workspace_floats(1, h.H, h.hd));
            DeviceBuffer<int32_t> pos(1), slot(1);
            cudaStream_t s = stream_.get();
            for (DeviceBuffer<float>* b : {&k, &v, &qkv, &cs, &sn})  // small finite values; the exact ones do not matter
                CUDA_CHECK(cudaMemsetAsync(b->get(), 0x3c, b->bytes(), s));
            CUDA_CHECK(cudaMemsetAsync(slot.get(), 0, 4, s));
            cuda::KvCache kv;
            kv.k = k.get(), kv.v = v.get(), kv.n_layers = layers, kv.ctx = ctx, kv.kv_dim = KV;
            for (int p : {128, 1024}) {
                pos.upload(&p, 1, s);
                stream_.sync();
                auto two_step = [&](int l) {
                    cuda::rope_kv_write(qkv.get(), ldq, 1, pos.get(), slot.get(), l, h.H, h.Hkv, h.hd, cs.get(), sn.get(), kv, s);
                    cuda::attention_decode(qkv.get(), ldq, 1, pos.get(), slot.get(), l, h.H, h.Hkv, h.hd, kv, out.get(),
                                           h.H * h.hd, ws.get(), s);
                };
                struct Row {
                    const char* name;
                    std::function<void(int)> call;
                    bool pdl;
                };
                for (const Row& r : {Row{"rope+attn", two_step, false}, Row{"rope+attn+pdl", two_step, true}}) {
                    if (r.pdl && !pdl) continue;
                    const double us = time_chain_us(layers, r.pdl, r.call);
                    std::printf("%-6s %3d/%-3d x %-4d %5d  %-16s %9.2f\n", h.model, h.H, h.Hkv, h.hd, p, r.name, us);
                    emit("{\"bench\":\"attention\",\"model\":\"%s\",\"pos\":%d,\"kernel\":\"%s\",\"us\":%.3f}", h.model, p,
                         r.name, us);
                }
            }
        }
    }

    void gemv_row(const Matrix& m, int n, const char* kernel,
                  const std::function<void(const cuda::DevTernary&, float*, cudaStream_t)>& call, bool pdl = false) {
        const double us = time_calls(m, call, pdl);
        const double out_bytes = static_cast<double>(n) * m.out_rows() * 4 * (m.ep == Epilogue::AddTo ? 2 : 1);
        const double bytes = m.weight_bytes() + static_cast<double>(n) * m.cols + out_bytes;
        const double gbps = bytes / (us * 1e-6) / 1e9, pct = 100.0 * gbps / dev_.copy_gbps;
        std::printf("%-6s %-8s %6d x %-5d %3d  %-10s %9.2f %9.0f %6.1f%%\n", m.model, m.name, m.rows, m.cols, n, kernel, us,
                    gbps, pct);
        emit("{\"bench\":\"gemv\",\"model\":\"%s\",\"matrix\":\"%s\",\"rows\":%d,\"cols\":%d,\"tokens\":%d,"
             "\"kernel\":\"%s\",\"us\":%.3f,\"bytes\":%.0f,\"gbps\":%.1f,\"pct_copy\":%.1f,\"copies\":%d}",
             m.model, m.name, m.rows, m.cols, n, kernel, us, bytes, gbps, pct, copies(m));
        timings_.push_back({m.model, m.name, kernel, n, us});
    }

    void gemm_row(const Matrix& m, int n, const char* kernel, cuda::detail::MmaTile tile, bool cublaslt = false) {
        const double us = time_calls(m, [&](const cuda::DevTernary& w, float* y, cudaStream_t s) {
            if (cublaslt) lt_->run(w, acts(m, n), n, y, m.out_rows(), m.ep, s);
            else cuda::detail::ternary_gemm_mma_tile(w, acts(m, n), n, y, m.out_rows(), m.ep, s, tile);
        });
        const double tops = 2.0 * m.rows * static_cast<double>(n) * m.cols / (us * 1e-6) / 1e12;
        std::printf("%-6s %-8s %6d x %-5d %4d  %-10s %9.2f %9.1f\n", m.model, m.name, m.rows, m.cols, n, kernel, us, tops);
        emit("{\"bench\":\"gemm\",\"model\":\"%s\",\"matrix\":\"%s\",\"rows\":%d,\"cols\":%d,\"tokens\":%d,"
             "\"kernel\":\"%s\",\"us\":%.3f,\"tops\":%.2f,\"copies\":%d}",
             m.model, m.name, m.rows, m.cols, n, kernel, us, tops, copies(m));
        timings_.push_back({m.model, m.name, kernel, n, us});
    }

    // Per model: the four projections of one layer times the layer count. Decode: the GEMV at 1 token
    // (ms per token of matmuls only). Prompt: the default MMA at 512 tokens (tokens per second of the
    // matmuls only, an upper bound for the end-to-end figure; the issue's target is 50,000 tok/s).
    void summary() {
        std::printf("\n== ternary projections only, whole model\n");
        for (const char* model : {"1.7b", "2b4t"}) {
            for (const char* kernel : {"gemv", "norm+gemv", "gemv+pdl", "norm+gemv+pdl", "mma", "cublaslt"}) {
                const int n = std::string(kernel).find("gemv") != std::string::npos ? 1 : 512;
                double us = 0;
                int found = 0;
                for (const Timing& t : timings_)
                    if (t.model == model && t.kernel == kernel && t.n == n) {
                        us += t.us;
                        ++found;
                    }
                if (found != 4) continue;
                const double total_ms = us * model_layers(model) * 1e-3;
                if (n == 1) {
                    std::printf("%-6s decode, 1 token, %-16s %.3f ms per token (%d layers)\n", model, (std::string(kernel) + ":").c_str(),
                                total_ms, model_layers(model));
                    emit("{\"bench\":\"summary\",\"model\":\"%s\",\"what\":\"decode_ms_per_token\",\"kernel\":\"%s\","
                         "\"value\":%.4f}",
                         model, kernel, total_ms);
                } else {
                    const double tok_s = n / (total_ms * 1e-3);
                    std::printf("%-6s prompt, 512 tokens, %-8s %.2f ms: %.0f tok/s\n", model, kernel, total_ms, tok_s);
                    emit("{\"bench\":\"summary\",\"model\":\"%s\",\"what\":\"prompt512_tok_s\",\"kernel\":\"%s\","
                         "\"value\":%.0f}",
                         model, kernel, tok_s);
                }
            }
        }
    }
};

}  // namespace

int main(int argc, char** argv) {
    Options opt;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--json" && i + 1 < argc) opt.json = argv[++i];
        else if (a == "--reps" && i + 1 < argc) opt.reps = std::max(1, std::atoi(argv[++i]));
        else if (a == "--warmup" && i + 1 < argc) opt.warmup = std::max(0, std::atoi(argv[++i]));
        else {
            std::fprintf(stderr, "usage: %s [--json PATH] [--reps N] [--warmup N]\n", argv[0]);
            return 2;
        }
    }
    if (cuda::device_count() == 0) {
        std::printf("bench_cuda_kernels: no GPU: %s\n", cuda::device_description());
        return 77;
    }
    try {
        Bench(opt).run();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_cuda_kernels: %s\n", e.what());
        return 1;
    }
    return 0;
}

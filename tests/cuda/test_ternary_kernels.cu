// GPU test of the ternary matmuls (cuda::ternary_gemv, cuda::ternary_gemm_mma with either tile shape,
// cuda::CublasLtGemm) against the CPU engine: Store and AddTo must equal it bit for bit; the GLU modes
// use the device's expf (within 2 ulp of the host's), so they are compared to the same formula on the
// host within a relative 1e-6 (about 8 ulp).
//
// Every trial draws fresh codes, activations, segment scales and output scales. The output buffer is
// poisoned with a NaN pattern no kernel computes (AddTo: finite random prior values in the rows it
// owns) so that an element left unwritten, or written outside [0, out_rows) of a row of ldy, is caught.
// The CPU reference is TernaryMatrix::from_codes + ternary_matmul per segment (the engine's kernels),
// times the segment's output scale, then the epilogue exactly as csrc/cpu/forward.cpp writes it.
//
// The decode step's pair rmsnorm_quant + ternary_gemv, replayed from a graph with PDL launches (sm_90), must
// equal the same pair launched plainly bit for bit, on the model's decode shapes.
//
// The seed is new every run and printed; BLLAMA_TEST_SEED=N repeats a run. Exit code 77 (ctest: skipped)
// where there is no GPU.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "check_msg.h"
#include "cuda/kernels/cuda_util.cuh"
#include "cuda/kernels/kernels.cuh"
#include "cuda/kernels/launch.cuh"
#include "cuda/kernels/ternary_common.cuh"
#include "cuda/layout.h"
#include "kernels/ternary.h"

using namespace bllama;
using cuda::Epilogue;

namespace {

constexpr uint32_t kPoisonBits = 0x7fc0deadu;  // a quiet NaN that no kernel computes

float poison() {
    float f;
    std::memcpy(&f, &kPoisonBits, 4);
    return f;
}
uint32_t bits(float f) {
    uint32_t b;
    std::memcpy(&b, &f, 4);
    return b;
}

const char* ep_name(Epilogue ep) {
    switch (ep) {
        case Epilogue::Store: return "Store";
        case Epilogue::AddTo: return "AddTo";
        case Epilogue::GluSilu: return "GluSilu";
        default: return "GluRelu2";
    }
}
bool is_glu(Epilogue ep) { return ep == Epilogue::GluSilu || ep == Epilogue::GluRelu2; }

// The host side of one trial: inputs, the prior contents of y, and the expected result.
struct Problem {
    int out_rows = 0, rows = 0, cols = 0, n = 0, ldy = 0;
    Epilogue ep = Epilogue::Store;
    int n_seg = 1;
    int seg_end[3] = {0, 0, 0};
    float scale[3] = {0, 0, 0}, out_scale[3] = {1, 1, 1};
    std::vector<int8_t> codes;  // [rows, cols]
    QuantizedActs qa;
    std::vector<int32_t> row_sum;
    std::vector<float> prior, want;  // [n, ldy]
    std::string desc;
};

float log_uniform(std::mt19937& rng, float lo, float hi) {
    std::uniform_real_distribution<float> u(std::log(lo), std::log(hi));
    return std::exp(u(rng));
}

Problem make_problem(std::mt19937& rng, int out_rows, int cols, int n, Epilogue ep, int n_seg) {
    Problem p;
    p.out_rows = out_rows;
    p.cols = cols;
    p.n = n;
    p.ep = ep;
    p.rows = is_glu(ep) ? 2 * out_rows : out_rows;
    p.ldy = out_rows + (rng() % 2 ? 0 : static_cast<int>(rng() % 37));
    if (is_glu(ep)) {
        p.n_seg = 2;
        p.seg_end[0] = out_rows;
        p.seg_end[1] = 2 * out_rows;
    } else {
        p.n_seg = std::max(1, std::min(n_seg, p.rows));
        std::vector<int> cuts;
        while (static_cast<int>(cuts.size()) < p.n_seg - 1) {
            const int c = 1 + static_cast<int>(rng() % (p.rows - 1));
            if (std::find(cuts.begin(), cuts.end(), c) == cuts.end()) cuts.push_back(c);
        }
        std::sort(cuts.begin(), cuts.end());
        for (int i = 0; i < p.n_seg - 1; ++i) p.seg_end[i] = cuts[static_cast<size_t>(i)];
        p.seg_end[p.n_seg - 1] = p.rows;
    }
    for (int i = 0; i < p.n_seg; ++i) {
        p.scale[i] = log_uniform(rng, 1e-3f, 4.0f);
        p.out_scale[i] = rng() % 2 ? 1.0f : log_uniform(rng, 0.05f, 20.0f);
    }

    // Codes: a density per matrix, plus some all-zero, all +1 and all -1 rows (the largest accumulators).
    // A splitmix64 stream per matrix: the model-sized matrices have tens of millions of codes.
    static const uint32_t kZeroFrac16[] = {1311, 21627, 39322, 63570};  // 2%, 33%, 60%, 97% of 65536
    const uint32_t pz = kZeroFrac16[rng() % 4];
    uint64_t state = (static_cast<uint64_t>(rng()) << 32) | rng();
    auto next = [&state] {
        uint64_t z = (state += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    };
    p.codes.resize(static_cast<size_t>(p.rows) * cols);
    for (int r = 0; r < p.rows; ++r) {
        int8_t* row = p.codes.data() + static_cast<size_t>(r) * cols;
        const unsigned special = rng() % 40;
        for (int k = 0; k < cols; ++k) {
            if (special < 3) {
                row[k] = static_cast<int8_t>(special == 0 ? 0 : special == 1 ? 1 : -1);
            } else {
                const uint64_t z = next();
                row[k] = static_cast<int8_t>((z & 0xFFFF) < pz ? 0 : ((z >> 16) & 1 ? 1 : -1));
            }
        }
    }

    // Activations: usually quantized from floats like the engine does (some tokens all zero, a zero
    // tail like padded columns); sometimes raw int8 over the full range, -128 included, with a random
    // scale (the kernels must not assume anything of the quantizer).
    if (rng() % 4 != 0) {
        std::vector<float> x(static_cast<size_t>(n) * cols);
        std::normal_distribution<float> nd(0.0f, 1.0f);
        const int tail = rng() % 3 == 0 ? static_cast<int>(rng() % 200) : 0;
        for (int t = 0; t < n; ++t) {
            const float mag = rng() % 9 == 0 ? 0.0f : log_uniform(rng, 1e-3f, 1e3f);
            for (int k = 0; k < cols; ++k)
                x[static_cast<size_t>(t) * cols + k] = k >= cols - tail ? 0.0f : nd(rng) * mag;
        }
        quantize_acts(x.data(), n, cols, p.qa);
    } else {
        p.qa.n_tokens = n;
        p.qa.cols = cols;
        p.qa.act_scale.resize(static_cast<size_t>(n));
        p.qa.q.resize(static_cast<size_t>(n) * cols);
        for (auto& v : p.qa.q) v = static_cast<int8_t>(static_cast<int>(rng() % 256) - 128);
        for (auto& a : p.qa.act_scale) a = log_uniform(rng, 0.1f, 1e5f);
        // The CPU kernels read these sums (quantize_acts fills them).
        const int nb = cols / 256;
        p.qa.block_sums.assign(static_cast<size_t>(n) * nb, 0);
        p.qa.row_sums.assign(static_cast<size_t>(n), 0);
        for (int t = 0; t < n; ++t)
            for (int k = 0; k < cols; ++k) {
                const int v = p.qa.q[static_cast<size_t>(t) * cols + k];
                p.qa.block_sums[static_cast<size_t>(t) * nb + k / 256] += v;
                p.qa.row_sums[static_cast<size_t>(t)] += v;
            }
    }
    p.row_sum.assign(static_cast<size_t>(n), 0);
    for (int t = 0; t < n; ++t)
        for (int k = 0; k < cols; ++k) p.row_sum[static_cast<size_t>(t)] += p.qa.q[static_cast<size_t>(t) * cols + k];

    // Reference: every weight row's value v, segment by segment.
    std::vector<float> full(static_cast<size_t>(n) * p.rows);
    for (int i = 0; i < p.n_seg; ++i) {
        const int b = i ? p.seg_end[i - 1] : 0, e = p.seg_end[i], sr = e - b;
        if (sr == 0) continue;
        const TernaryMatrix m =
            TernaryMatrix::from_codes(p.codes.data() + static_cast<size_t>(b) * cols, sr, cols, p.scale[i]);
        std::vector<float> ys(static_cast<size_t>(n) * sr);
        ternary_matmul(m, p.qa, ys.data(), sr, 0, sr);
        for (int t = 0; t < n; ++t)
            for (int r = 0; r < sr; ++r)
                full[static_cast<size_t>(t) * p.rows + b + r] = ys[static_cast<size_t>(t) * sr + r] * p.out_scale[i];
    }
    p.prior.assign(static_cast<size_t>(n) * p.ldy, poison());
    std::normal_distribution<float> prior_nd(0.0f, 10.0f);
    if (ep == Epilogue::AddTo)
        for (int t = 0; t < n; ++t)
            for (int r = 0; r < out_rows; ++r) p.prior[static_cast<size_t>(t) * p.ldy + r] = prior_nd(rng);
    p.want = p.prior;
    for (int t = 0; t < n; ++t)
        for (int r = 0; r < out_rows; ++r) {
            float& w = p.want[static_cast<size_t>(t) * p.ldy + r];
            const float v = full[static_cast<size_t>(t) * p.rows + r];
            if (ep == Epilogue::Store) {
                w = v;
            } else if (ep == Epilogue::AddTo) {
                w = w + v;
            } else {
                const float up = full[static_cast<size_t>(t) * p.rows + out_rows + r];
                const float a = ep == Epilogue::GluSilu ? v / (1.0f + std::exp(-v)) : (v > 0.0f ? v * v : 0.0f);
                w = a * up;
            }
        }

    char buf[200];
    std::snprintf(buf, sizeof buf, "%s rows %d (weights %d, %d seg) x cols %d, %d tokens, ldy %d", ep_name(ep), out_rows,
                  p.rows, p.n_seg, cols, n, p.ldy);
    p.desc = buf;
    return p;
}

// The device copies of one problem.
struct DeviceProblem {
    DeviceBuffer<uint32_t> words;
    DeviceBuffer<int8_t> q;
    DeviceBuffer<float> scale, y;
    DeviceBuffer<int32_t> row_sum;
    cuda::DevTernary w;
    cuda::DevActs x;

    explicit DeviceProblem(const Problem& p) {
        const TernaryRows tr = ternary_rows_from_codes(p.codes.data(), p.rows, p.cols, 1.0f);
        words = DeviceBuffer<uint32_t>(tr.words.size());
        words.upload(tr.words.data(), tr.words.size());
        q = DeviceBuffer<int8_t>(p.qa.q.size());
        q.upload(p.qa.q.data(), p.qa.q.size());
        scale = DeviceBuffer<float>(static_cast<size_t>(p.n));
        scale.upload(p.qa.act_scale.data(), static_cast<size_t>(p.n));
        row_sum = DeviceBuffer<int32_t>(static_cast<size_t>(p.n));
        row_sum.upload(p.row_sum.data(), static_cast<size_t>(p.n));
        y = DeviceBuffer<float>(p.prior.size());
        w.words = words.get();
        w.rows = p.rows;
        w.cols = p.cols;
        w.n_seg = p.n_seg;
        for (int i = 0; i < 3; ++i) {
            w.seg_end[i] = p.seg_end[i];
            w.seg_scale[i] = p.scale[i];
            w.seg_out_scale[i] = p.out_scale[i];
        }
        x.q = q.get();
        x.scale = scale.get();
        x.row_sum = row_sum.get();
        x.cols = p.cols;
        CUDA_CHECK(cudaDeviceSynchronize());
    }
};

// Compares y with the expected result; returns the number of bad elements (reports the first few).
int compare(const Problem& p, const std::vector<float>& got, const char* path) {
    int bad = 0;
    for (int t = 0; t < p.n; ++t)
        for (int r = 0; r < p.ldy; ++r) {
            const size_t i = static_cast<size_t>(t) * p.ldy + r;
            const float g = got[i], w = p.want[i];
            bool ok;
            if (r >= p.out_rows) ok = bits(g) == kPoisonBits;  // outside the rows: untouched
            else if (bits(g) == kPoisonBits) ok = false;       // not written
            else if (std::isnan(w)) ok = std::isnan(g);        // NaN payloads differ between host and device
            else if (!is_glu(p.ep)) ok = bits(g) == bits(w);
            else  // relative 1e-6 (>= 8 ulp); the absolute 1e-30 covers expf overflowing on one side only
                ok = bits(g) == bits(w) || (std::isfinite(g) && std::isfinite(w) &&
                                            std::fabs(g - w) <= 1e-6f * std::max(std::fabs(g), std::fabs(w)) + 1e-30f);
            if (!ok && ++bad <= 3)
                std::fprintf(stderr, "  %s: %s: t %d r %d: got %.9g (0x%08x), want %.9g (0x%08x)\n", path, p.desc.c_str(),
                             t, r, g, bits(g), w, bits(w));
        }
    return bad;
}

enum class Path { Gemv, Mma, MmaLarge, MmaSmall, CublasLt };
const char* path_name(Path path) {
    switch (path) {
        case Path::Gemv: return "ternary_gemv";
        case Path::Mma: return "ternary_gemm_mma";
        case Path::MmaLarge: return "mma(large tile)";
        case Path::MmaSmall: return "mma(small tile)";
        default: return "cublaslt";
    }
}

struct Context {
    CudaStream stream;
    std::unique_ptr<cuda::CublasLtGemm> lt;
    int lt_rows = 0, lt_cols = 0, lt_tokens = 0;
    int trials = 0;

    // The cuBLASLt workspace grows to the largest problem seen.
    cuda::CublasLtGemm& cublaslt(const Problem& p) {
        if (!lt || p.rows > lt_rows || p.cols > lt_cols || p.n > lt_tokens) {
            lt.reset();
            lt_rows = std::max(lt_rows, p.rows);
            lt_cols = std::max(lt_cols, p.cols);
            lt_tokens = std::max(lt_tokens, p.n);
            lt = std::make_unique<cuda::CublasLtGemm>(lt_rows, lt_cols, lt_tokens);
        }
        return *lt;
    }

    void launch(Path path, const Problem& p, DeviceProblem& d) {
        cudaStream_t s = stream.get();
        switch (path) {
            case Path::Gemv: cuda::ternary_gemv(d.w, d.x, p.n, d.y.get(), p.ldy, p.ep, s); break;
            case Path::Mma: cuda::ternary_gemm_mma(d.w, d.x, p.n, d.y.get(), p.ldy, p.ep, s); break;
            case Path::MmaLarge:
                cuda::detail::ternary_gemm_mma_tile(d.w, d.x, p.n, d.y.get(), p.ldy, p.ep, s, cuda::detail::MmaTile::Large);
                break;
            case Path::MmaSmall:
                cuda::detail::ternary_gemm_mma_tile(d.w, d.x, p.n, d.y.get(), p.ldy, p.ep, s, cuda::detail::MmaTile::Small);
                break;
            case Path::CublasLt: cublaslt(p).run(d.w, d.x, p.n, d.y.get(), p.ldy, p.ep, s); break;
        }
    }

    // Runs every applicable path on one problem, each on a freshly poisoned y.
    void check_all(const Problem& p) {
        ++trials;
        DeviceProblem d(p);
        std::vector<Path> paths = {Path::Mma, Path::MmaLarge, Path::MmaSmall};
        if (p.n <= cuda::kGemvMaxTokens) paths.insert(paths.begin(), Path::Gemv);
        if (cuda::CublasLtGemm::available()) paths.push_back(Path::CublasLt);
        std::vector<float> got(p.prior.size());
        for (Path path : paths) {
            d.y.upload(p.prior.data(), p.prior.size(), stream.get());
            launch(path, p, d);
            d.y.download(got.data(), got.size(), stream.get());
            stream.sync();
            const int bad = compare(p, got, path_name(path));
            CHECK(bad == 0, "%s: %s: %d wrong or unwritten elements", path_name(path), p.desc.c_str(), bad);
        }
    }
};

Epilogue random_ep(std::mt19937& rng) { return static_cast<Epilogue>(rng() % 4); }

int pick(std::mt19937& rng, const std::vector<int>& v) { return v[rng() % v.size()]; }

// Launches under stream capture, replayed from a graph: what the model's decode loop will do. The GEMV
// at 8 x 8192 and the large MMA tile need more than 48 KiB of shared memory (the opt-in call is made
// during the capture).
void check_graph(Context& ctx, std::mt19937& rng) {
    Problem a = make_problem(rng, 300, 8192, 8, Epilogue::Store, 3);
    Problem b = make_problem(rng, 257, 2560, 40, Epilogue::AddTo, 2);
    Problem c = make_problem(rng, 129, 1024, 17, Epilogue::GluSilu, 2);
    DeviceProblem da(a), db(b), dc(c);
    const bool lt = cuda::CublasLtGemm::available();
    if (lt) ctx.cublaslt(c);  // allocate outside the capture
    cudaStream_t s = ctx.stream.get();
    const GraphExec exec = capture_graph(s, [&] {
        cuda::ternary_gemv(da.w, da.x, a.n, da.y.get(), a.ldy, a.ep, s);
        cuda::detail::ternary_gemm_mma_tile(db.w, db.x, b.n, db.y.get(), b.ldy, b.ep, s, cuda::detail::MmaTile::Large);
        if (lt) ctx.lt->run(dc.w, dc.x, c.n, dc.y.get(), c.ldy, c.ep, s);
        else cuda::ternary_gemm_mma(dc.w, dc.x, c.n, dc.y.get(), c.ldy, c.ep, s);
    });
    for (int rep = 0; rep < 2; ++rep) {  // replayed twice: AddTo starts from the prior each time
        da.y.upload(a.prior.data(), a.prior.size(), s);
        db.y.upload(b.prior.data(), b.prior.size(), s);
        dc.y.upload(c.prior.data(), c.prior.size(), s);
        exec.launch(s);
        std::vector<float> ga(a.prior.size()), gb(b.prior.size()), gc(c.prior.size());
        da.y.download(ga.data(), ga.size(), s);
        db.y.download(gb.data(), gb.size(), s);
        dc.y.download(gc.data(), gc.size(), s);
        ctx.stream.sync();
        CHECK(compare(a, ga, "graph gemv") == 0, "graph replay %d: ternary_gemv", rep);
        CHECK(compare(b, gb, "graph mma") == 0, "graph replay %d: ternary_gemm_mma", rep);
        CHECK(compare(c, gc, "graph glu") == 0, "graph replay %d: %s", rep, lt ? "cublaslt" : "ternary_gemm_mma");
    }
}

// rmsnorm_quant + ternary_gemv (the decode step's BitLinear) on the weights of a random problem, from float rows of
// d values at stride ldx (NaN between d and ldx: never read), optionally with norm weights, optionally one row far
// below the quantizer's 1e-5 absmax floor; `offset` floats into the buffer (1: no 16-byte loads). Launched plainly
// once for the reference, then captured as the decode step records it (a plain launch first, then PDL launches
// where the device has them) and replayed `replays` times from the prior, with the activations poisoned before
// every replay (they must be rewritten each time). y must be bit-identical and rows past out_rows untouched.
void check_pdl_graph(Context& ctx, std::mt19937& rng, int out_rows, int cols, int d, int n, Epilogue ep, int n_seg,
                     bool with_norm, int offset, int replays) {
    ++ctx.trials;
    const Problem p = make_problem(rng, out_rows, cols, n, ep, n_seg);  // its weights, ldy and prior
    DeviceProblem dp(p);
    const int ldx = d + (rng() % 2 ? 0 : static_cast<int>(rng() % 9));
    const float eps = 1e-5f;
    std::vector<float> x(static_cast<size_t>(offset) + static_cast<size_t>(n) * ldx, std::nanf(""));
    std::normal_distribution<float> nd(0.0f, 1.0f);
    for (int t = 0; t < n; ++t) {
        const float mag = t == 1 && rng() % 2 ? 1e-8f : log_uniform(rng, 1e-3f, 1e3f);
        for (int k = 0; k < d; ++k) x[static_cast<size_t>(offset) + static_cast<size_t>(t) * ldx + k] = nd(rng) * mag;
    }
    std::vector<float> nw(static_cast<size_t>(d));
    std::uniform_real_distribution<float> uw(0.2f, 2.0f);
    for (auto& v : nw) v = uw(rng);
    DeviceBuffer<float> dx(x.size()), dnw(nw.size()), scale(static_cast<size_t>(n)), y_ref(p.prior.size());
    DeviceBuffer<int8_t> q(static_cast<size_t>(n) * cols);
    DeviceBuffer<int32_t> rs(static_cast<size_t>(n));
    cudaStream_t s = ctx.stream.get();
    dx.upload(x.data(), x.size(), s);
    dnw.upload(nw.data(), nw.size(), s);
    const float* xin = dx.get() + offset;
    const float* w = with_norm ? dnw.get() : nullptr;
    const cuda::DevActs acts{q.get(), scale.get(), rs.get(), cols};
    auto bitlinear = [&](float* y) {
        cuda::rmsnorm_quant(xin, ldx, w, n, d, eps, acts, s);
        cuda::ternary_gemv(dp.w, acts, n, y, p.ldy, ep, s);
    };
    char desc[300];
    std::snprintf(desc, sizeof desc, "pdl graph: %s, d %d, ldx %d, offset %d, %s", p.desc.c_str(), d, ldx, offset,
                  with_norm ? "norm" : "no norm");
    std::vector<float> want(p.prior.size()), got(p.prior.size());
    y_ref.upload(p.prior.data(), p.prior.size(), s);
    bitlinear(y_ref.get());
    y_ref.download(want.data(), want.size(), s);

    const GraphExec exec = capture_graph(s, [&] {
        cuda::rmsnorm_quant(xin, ldx, w, n, d, eps, acts, s);
        cuda::PdlScope pdl(cuda::pdl_supported());
        bitlinear(dp.y.get());
    });
    for (int rep = 0; rep < replays; ++rep) {
        dp.y.upload(p.prior.data(), p.prior.size(), s);
        CUDA_CHECK(cudaMemsetAsync(q.get(), 0x5A, q.bytes(), s));
        CUDA_CHECK(cudaMemsetAsync(scale.get(), 0xFF, scale.bytes(), s));
        CUDA_CHECK(cudaMemsetAsync(rs.get(), 0x7F, rs.bytes(), s));
        exec.launch(s);
        dp.y.download(got.data(), got.size(), s);
        ctx.stream.sync();
        int bad = 0;
        for (int t = 0; t < n; ++t)
            for (int r = 0; r < p.ldy; ++r) {
                const size_t i = static_cast<size_t>(t) * p.ldy + r;
                bool ok;
                if (r >= out_rows) ok = bits(got[i]) == kPoisonBits && bits(want[i]) == kPoisonBits;
                else if (bits(got[i]) == kPoisonBits) ok = false;
                else ok = bits(got[i]) == bits(want[i]) || (std::isnan(got[i]) && std::isnan(want[i]));
                if (!ok && ++bad <= 3)
                    std::fprintf(stderr, "  %s (replay %d): t %d r %d: graph %.9g (0x%08x), plain %.9g (0x%08x)\n", desc,
                                 rep, t, r, got[i], bits(got[i]), want[i], bits(want[i]));
            }
        CHECK(bad == 0, "%s (replay %d): %d elements differ from plain launches", desc, rep, bad);
    }
}

template <class F>
bool throws_invalid(F&& f) {
    try {
        f();
    } catch (const std::invalid_argument&) {
        return true;
    } catch (...) {
        return false;
    }
    return false;
}

// Bad arguments are refused on the host, before anything is launched; zero tokens is a no-op.
void check_arguments(Context& ctx, std::mt19937& rng) {
    Problem p = make_problem(rng, 64, 512, 9, Epilogue::Store, 1);
    DeviceProblem d(p);
    cudaStream_t s = ctx.stream.get();
    float* y = d.y.get();
    CHECK(throws_invalid([&] { cuda::ternary_gemv(d.w, d.x, 9, y, p.ldy, p.ep, s); }), "gemv accepted 9 tokens");
    CHECK(throws_invalid([&] { cuda::ternary_gemv(d.w, d.x, -1, y, p.ldy, p.ep, s); }), "gemv accepted -1 tokens");
    CHECK(throws_invalid([&] { cuda::ternary_gemm_mma(d.w, d.x, 2, y, p.out_rows - 1, p.ep, s); }),
          "mma accepted ldy < rows");
    CHECK(throws_invalid([&] { cuda::ternary_gemm_mma(d.w, d.x, 2, y, p.ldy, Epilogue::GluSilu, s); }),
          "mma accepted a GLU over one segment");
    cuda::DevTernary w2 = d.w;
    w2.cols = 384;
    CHECK(throws_invalid([&] { cuda::ternary_gemv(w2, d.x, 1, y, p.ldy, p.ep, s); }), "gemv accepted cols 384");
    cuda::DevActs x2 = d.x;
    x2.cols = 256;
    CHECK(throws_invalid([&] { cuda::ternary_gemm_mma(d.w, x2, 1, y, p.ldy, p.ep, s); }),
          "mma accepted activations of another length");
    cuda::DevTernary w3 = d.w;
    w3.seg_end[0] = p.rows - 1;
    CHECK(throws_invalid([&] { cuda::ternary_gemm_mma(w3, d.x, 1, y, p.ldy, p.ep, s); }),
          "mma accepted segments that do not end at rows");
    if (cuda::CublasLtGemm::available()) {
        cuda::CublasLtGemm small(16, 512, 4);
        CHECK(throws_invalid([&] { small.run(d.w, d.x, 2, y, p.ldy, p.ep, s); }),
              "cublaslt accepted a matrix larger than its workspace");
    }

    // n_tokens == 0: nothing is written.
    d.y.upload(p.prior.data(), p.prior.size(), s);
    cuda::ternary_gemv(d.w, d.x, 0, y, p.ldy, p.ep, s);
    cuda::ternary_gemm_mma(d.w, d.x, 0, y, p.ldy, p.ep, s);
    if (cuda::CublasLtGemm::available()) ctx.cublaslt(p).run(d.w, d.x, 0, y, p.ldy, p.ep, s);
    std::vector<float> got(p.prior.size());
    d.y.download(got.data(), got.size(), s);
    ctx.stream.sync();
    CHECK(std::memcmp(got.data(), p.prior.data(), got.size() * 4) == 0, "zero tokens wrote to y");
}

}  // namespace

int main() {
    if (cuda::device_count() == 0) {
        std::printf("SKIP: %s\n", cuda::device_description());
        return 77;
    }
    std::printf("device: %s\n", cuda::device_description());
    if (cuda::CublasLtGemm::available()) {
        std::printf("cuBLASLt: available\n");
    } else {
        try {
            cuda::CublasLtGemm probe(4, 256, 1);
        } catch (const std::exception& e) {
            std::printf("cuBLASLt: not tested: %s\n", e.what());
        }
    }
    std::fflush(stdout);

    try {
        Context ctx;
        // A new seed every run (printed; BLLAMA_TEST_SEED=N repeats a run).
        const char* seed_env = std::getenv("BLLAMA_TEST_SEED");
        const unsigned seed = seed_env ? static_cast<unsigned>(std::strtoul(seed_env, nullptr, 10)) : std::random_device{}();
        std::printf("seed %u\n", seed);
        std::mt19937 rng(seed);
        const std::vector<int> rows_set = {1,  2,  3,   5,   8,   15,  16,  17,  31,  33,   63,  64,
                                           65, 100, 127, 128, 129, 200, 257, 515, 1000, 2049, 4100};
        const std::vector<int> cols_set = {256, 512, 768, 1280, 2048, 2560, 4096, 6912, 8192, 8448};

        // Decode sizes: every token count of the GEMV, every column count class (1, 2, 4 loads per row and
        // lane; 8448 takes two chunks per row), every epilogue.
        for (int n = 1; n <= cuda::kGemvMaxTokens; ++n)
            for (int cols : cols_set) {
                const Epilogue ep = random_ep(rng);
                ctx.check_all(make_problem(rng, pick(rng, rows_set), cols, n, ep, 1 + static_cast<int>(rng() % 3)));
            }
        // Prompt sizes: token counts around the tile edges (64, 128) and beyond.
        const std::vector<int> tokens_set = {9,  16,  31,  32,  33,  63,  64,  65,  100, 127,
                                             128, 129, 191, 192, 255, 256, 257, 300};
        for (int n : tokens_set)
            for (int rep = 0; rep < 3; ++rep) {
                const Epilogue ep = static_cast<Epilogue>(rep == 0 ? rng() % 2 : 2 + rng() % 2);
                const int cols = pick(rng, cols_set);
                int rows = pick(rng, rows_set);
                while (static_cast<double>(rows) * cols * n > 4e8 && rows > 1) rows /= 2;  // keep the CPU side quick
                ctx.check_all(make_problem(rng, rows, cols, n, ep, 1 + static_cast<int>(rng() % 3)));
            }
        // The model's own shapes (1.7B: D 2048, F 8192, MHA; 2B-4T: D 2560, F 6912, 5 kv heads of 128).
        struct Shape {
            int out_rows, cols;
            Epilogue ep;
            int n_seg;
        };
        const Shape shapes[] = {
            {2048 + 2 * 2048, 2048, Epilogue::Store, 3},  // 1.7B q|k|v
            {2048, 2048, Epilogue::AddTo, 1},             // 1.7B o (+ residual)
            {8192, 2048, Epilogue::GluSilu, 2},           // 1.7B gate|up
            {2048, 8192, Epilogue::AddTo, 1},             // 1.7B down
            {2560 + 2 * 640, 2560, Epilogue::Store, 3},   // 2B-4T q|k|v
            {6912, 2560, Epilogue::GluRelu2, 2},          // 2B-4T gate|up
            {2560, 6912, Epilogue::AddTo, 1},             // 2B-4T down
        };
        for (const Shape& s : shapes)
            for (int n : {1, 4, 8, 77, 300}) ctx.check_all(make_problem(rng, s.out_rows, s.cols, n, s.ep, s.n_seg));
        // Rows longer than a block's shared memory holds for 8 tokens: the GEMV splits the tokens.
        ctx.check_all(make_problem(rng, 70, 30720, 8, Epilogue::AddTo, 2));
        ctx.check_all(make_problem(rng, 33, 30720, 37, Epilogue::GluSilu, 2));

        // The decode step's norm + GEMV at the model's decode shapes (1.7B: q|k|v, o, gate|up, down at 1 token;
        // 2B-4T gate|up at 4), replayed from graphs with PDL; then rows longer than rmsnorm_quant's register cache
        // (its long kernel), and more tokens than one block's shared memory holds at that length (the launch is split).
        check_pdl_graph(ctx, rng, 2048 + 2 * 2048, 2048, 2048, 1, Epilogue::Store, 3, true, 0, 20);
        check_pdl_graph(ctx, rng, 2048, 2048, 2048, 1, Epilogue::AddTo, 1, true, 0, 20);
        check_pdl_graph(ctx, rng, 8192, 2048, 2048, 1, Epilogue::GluSilu, 2, true, 0, 20);
        check_pdl_graph(ctx, rng, 2048, 8192, 8192, 1, Epilogue::AddTo, 1, true, 0, 20);
        check_pdl_graph(ctx, rng, 6912, 2560, 2560, 4, Epilogue::GluRelu2, 2, true, 0, 5);
        check_pdl_graph(ctx, rng, 70, 20224, 20000, 3, Epilogue::AddTo, 2, true, 0, 2);
        check_pdl_graph(ctx, rng, 33, 30720, 30720, 8, Epilogue::GluSilu, 2, true, 1, 2);

        check_graph(ctx, rng);
        check_arguments(ctx, rng);
        std::printf("%d trials\n", ctx.trials);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "FAIL: exception: %s\n", e.what());
        ++g_failures;
    }
    std::printf("%d checks, %d failures\n", g_checks, g_failures);
    return g_failures ? 1 : 0;
}

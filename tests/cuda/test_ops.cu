// The CUDA backend's non-matmul kernels against CPU references (csrc/cuda/kernels.cuh): embedding,
// RMSNorm (+ int8 quantization, bit-identical to quantize_acts without a norm; with one, bit-identical to a
// host model of the canonical summation order of csrc/cuda/norm_common.cuh), RoPE + KV-cache
// store, decode and prompt attention (float64 reference; decode also replayed from a CUDA graph at
// several positions), the f16 LM head, the int8
// head (bit-identical to the CPU's), and sampling (greedy == CPU argmax; sampled frequencies
// against the CPU Sampler's exact probabilities). Inputs are fresh random data for every trial;
// outputs are poisoned (NaN / odd bytes) first, so every element must have been written.
// Exits 77 (skipped) without a GPU.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "check_msg.h"
#include "cuda/kernels/cuda_util.cuh"
#include "cuda/kernels/kernels.cuh"
#include "cuda/kernels/launch.cuh"
#include "kernels/half.h"
#include "kernels/head_q8.h"
#include "kernels/ternary.h"
#include "engine/sampler.h"

using namespace bllama;
namespace cu = bllama::cuda;

namespace {

std::mt19937_64 g_rng(20240611);

float randn() { return std::normal_distribution<float>(0.0f, 1.0f)(g_rng); }
float unif(float a, float b) { return std::uniform_real_distribution<float>(a, b)(g_rng); }
int randint(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(g_rng); }  // inclusive
// Cheap uniform [-a, a) for filling large caches (xorshift64*, seeded from g_rng).
struct FastRng {
    uint64_t s = g_rng() | 1;
    float operator()(float a) {
        s ^= s >> 12, s ^= s << 25, s ^= s >> 27;
        return a * (static_cast<float>((s * 0x2545F4914F6CDD1Dull) >> 40) * 0x1.0p-23f - 1.0f);
    }
};

template <class T>
DeviceBuffer<T> to_dev(const std::vector<T>& v) {
    DeviceBuffer<T> d(std::max<size_t>(v.size(), 1));
    d.upload(v.data(), v.size());
    CUDA_CHECK(cudaDeviceSynchronize());  // also orders it before work on other (non-blocking) streams
    return d;
}
template <class T>
std::vector<T> from_dev(const DeviceBuffer<T>& d, size_t n) {
    std::vector<T> v(n);
    d.download(v.data(), n);
    CUDA_CHECK(cudaDeviceSynchronize());
    return v;
}
template <class T>
void poison(DeviceBuffer<T>& d, int byte = 0xFF) {  // 0xFF..: NaN as float
    CUDA_CHECK(cudaMemset(d.get(), byte, d.bytes()));
    CUDA_CHECK(cudaDeviceSynchronize());
}
bool is_poison_f(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u == 0xFFFFFFFFu;
}
uint16_t h_bits(__half h) { return static_cast<__half_raw>(h).x; }
__half bits_h(uint16_t u) {
    __half_raw r;
    r.x = u;
    return __half(r);
}

// ---------------------------------------------------------------------------------------------------
// Embedding

void test_embed() {
    const int vocab = 1000;
    for (int dim : {2048, 2560, 64, 37, 8}) {
        for (int n : {1, 5}) {
            std::vector<__half> table(static_cast<size_t>(vocab) * dim);
            for (auto& h : table) h = bits_h(f32_to_f16(randn() * 0.5f));
            std::vector<int32_t> tok(n);
            for (auto& t : tok) t = randint(0, vocab - 1);
            auto dt = to_dev(table);
            auto dk = to_dev(tok);
            DeviceBuffer<float> dx(static_cast<size_t>(n) * dim);
            poison(dx);
            cu::embed(dt.get(), dim, dk.get(), n, dx.get(), nullptr);
            auto x = from_dev(dx, dx.size());
            int bad = 0;
            for (int t = 0; t < n; ++t)
                for (int k = 0; k < dim; ++k)
                    bad += x[static_cast<size_t>(t) * dim + k] !=
                           f16_to_f32(h_bits(table[static_cast<size_t>(tok[t]) * dim + k]));
            CHECK(bad == 0, "embed dim=%d n=%d: %d values differ", dim, n, bad);
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// RMSNorm and the fused quantizer

// RMSNorm of one row with the CPU engine's fp32 operations (csrc/cpu/forward.cpp) except that the sum of
// squares is exact (float64): the engine's sequential fp32 sum drifts by ~sqrt(d) ulps over 16384
// values, more than the 1e-6 asked of the GPU, whose tree sum stays within a few ulps.
void ref_rmsnorm(const float* x, const float* w, float* out, int d, float eps) {
    double ss = 0.0;
    for (int i = 0; i < d; ++i) ss += static_cast<double>(x[i]) * x[i];
    const float r = static_cast<float>(1.0 / std::sqrt(ss / d + eps));
    for (int i = 0; i < d; ++i) out[i] = x[i] * r * w[i];
}

// The GPU's RMSNorm bit for bit: the sum of squares in the canonical order of csrc/cuda/norm_common.cuh
// (groups of 4 by fma, chunks of 32 groups by a warp butterfly, lane sums over chunks k = lane mod 32 in
// order, a last butterfly), then the CPU's roundings. Every operation is one IEEE float operation, on the
// host as on the device.
void canonical_rmsnorm(const float* x, const float* w, float* out, int d, float eps) {
    auto butterfly = [](float (&v)[32]) {
        for (int o = 16; o > 0; o >>= 1) {
            float t[32];
            for (int l = 0; l < 32; ++l) t[l] = v[l] + v[l ^ o];
            std::copy(t, t + 32, v);
        }
        return v[0];
    };
    const int K = (d + 127) / 128;
    std::vector<float> chunk(static_cast<size_t>(K));
    for (int k = 0; k < K; ++k) {
        float s[32];
        for (int l = 0; l < 32; ++l) {
            float e[4];
            for (int c = 0; c < 4; ++c) {
                const int i = 4 * (32 * k + l) + c;
                e[c] = i < d ? x[i] : 0.0f;
            }
            s[l] = std::fma(e[3], e[3], std::fma(e[2], e[2], std::fma(e[1], e[1], e[0] * e[0])));
        }
        chunk[static_cast<size_t>(k)] = butterfly(s);
    }
    float p[32];
    for (int l = 0; l < 32; ++l) {
        p[l] = 0.0f;
        for (int k = l; k < K; k += 32) p[l] = p[l] + chunk[static_cast<size_t>(k)];
    }
    const float ss = butterfly(p);
    const float r = 1.0f / std::sqrt(ss / static_cast<float>(d) + eps);
    for (int i = 0; i < d; ++i) {
        const float xr = x[i] * r;
        out[i] = xr * w[i];
    }
}

struct NormCase {
    int n, d, cols, ldx;
};

void test_rmsnorm_quant() {
    const float eps = 1e-5f;
    const NormCase cases[] = {{1, 2048, 2048, 2048}, {3, 2560, 2560, 2560}, {2, 8192, 8192, 8192},
                              {1, 16384, 16384, 16384}, {2, 6912, 6912, 6912}, {3, 37, 256, 41},
                              {2, 100, 256, 100},     {1, 20000, 20224, 20000}, {2, 5, 8, 7},
                              {4, 2048, 2304, 2052},  {1, 130, 256, 130},       {2, 8192, 8448, 8195},
                              {1, 16388, 16640, 16388}};
    int trial = 0;
    for (const NormCase& c : cases) {
        for (float mag : {1.0f, 1e-3f, 300.0f}) {
            ++trial;
            std::vector<float> x(static_cast<size_t>(c.n) * c.ldx), w(c.d);
            for (auto& v : x) v = randn() * mag;
            if (c.n > 1)  // one row far below the 1e-5 floor of the absmax
                for (int k = 0; k < c.d; ++k) x[static_cast<size_t>(c.ldx) + k] = randn() * 1e-8f;
            for (auto& v : w) v = unif(0.2f, 2.0f);
            auto dx = to_dev(x);
            auto dw = to_dev(w);
            DeviceBuffer<int8_t> dq(static_cast<size_t>(c.n) * c.cols);
            DeviceBuffer<float> ds(c.n);
            DeviceBuffer<int32_t> drs(c.n);
            cu::DevActs acts{dq.get(), ds.get(), drs.get(), c.cols};
            const int qpoison = trial % 2 ? 0x5A : 0xA5;  // alternate: a byte never written shows up

            // Without a norm: bit-identical to quantize_acts on the zero-padded rows.
            std::vector<float> xp(static_cast<size_t>(c.n) * c.cols, 0.0f);
            for (int t = 0; t < c.n; ++t)
                std::copy(x.begin() + static_cast<size_t>(t) * c.ldx, x.begin() + static_cast<size_t>(t) * c.ldx + c.d,
                          xp.begin() + static_cast<size_t>(t) * c.cols);
            QuantizedActs qa;
            quantize_acts(xp.data(), c.n, c.cols, qa, KernelKind::Scalar);
            poison(dq, qpoison);
            poison(ds);
            poison(drs);
            cu::rmsnorm_quant(dx.get(), c.ldx, nullptr, c.n, c.d, eps, acts, nullptr);
            auto q = from_dev(dq, dq.size());
            auto s = from_dev(ds, c.n);
            auto rs = from_dev(drs, c.n);
            int bad_q = 0, bad_s = 0, bad_rs = 0;
            for (size_t i = 0; i < q.size(); ++i) bad_q += q[i] != qa.q[i];
            for (int t = 0; t < c.n; ++t) {
                bad_s += std::memcmp(&s[t], &qa.act_scale[t], 4) != 0;
                bad_rs += rs[t] != qa.row_sums[t];
            }
            CHECK(bad_q == 0 && bad_s == 0 && bad_rs == 0,
                  "quant (no norm) n=%d d=%d cols=%d mag=%g: %d q, %d scales, %d row sums differ", c.n, c.d, c.cols,
                  mag, bad_q, bad_s, bad_rs);

            // Plain rmsnorm: within 1e-6 of the reference (the sum of squares is added in another order).
            std::vector<float> ref(static_cast<size_t>(c.n) * c.d);
            for (int t = 0; t < c.n; ++t)
                ref_rmsnorm(x.data() + static_cast<size_t>(t) * c.ldx, w.data(),
                            ref.data() + static_cast<size_t>(t) * c.d, c.d, eps);
            DeviceBuffer<float> dn(static_cast<size_t>(c.n) * c.d);
            poison(dn);
            cu::rmsnorm(dx.get(), c.ldx, dw.get(), c.n, c.d, eps, dn.get(), c.d, nullptr);
            auto xn = from_dev(dn, dn.size());
            int bad_n = 0;
            double worst = 0;
            for (size_t i = 0; i < xn.size(); ++i) {
                const double e = std::fabs(static_cast<double>(xn[i]) - ref[i]) / std::max(std::fabs(ref[i]), 1e-30f);
                if (!(e <= 1e-6)) ++bad_n;
                if (e > worst || std::isnan(e)) worst = e;
            }
            CHECK(bad_n == 0, "rmsnorm n=%d d=%d mag=%g: %d values off by > 1e-6 (worst %g)", c.n, c.d, mag, bad_n,
                  worst);
            // ... and bit-identical to the canonical order (whatever block size and load width the launcher chose).
            int bad_c = 0;
            std::vector<float> canon(static_cast<size_t>(c.d));
            for (int t = 0; t < c.n; ++t) {
                canonical_rmsnorm(x.data() + static_cast<size_t>(t) * c.ldx, w.data(), canon.data(), c.d, eps);
                for (int k = 0; k < c.d; ++k)
                    bad_c += std::memcmp(&canon[static_cast<size_t>(k)], &xn[static_cast<size_t>(t) * c.d + k], 4) != 0;
            }
            CHECK(bad_c == 0, "rmsnorm n=%d d=%d ldx=%d mag=%g: %d values differ from the canonical summation order",
                  c.n, c.d, c.ldx, mag, bad_c);

            // With the norm: the GPU's normed floats quantized on the CPU must equal the fused kernel
            // exactly (same reduction); against the reference's normed rows, q within +-1, mostly equal.
            std::vector<float> xnp(static_cast<size_t>(c.n) * c.cols, 0.0f), refp(xnp.size(), 0.0f);
            for (int t = 0; t < c.n; ++t)
                for (int k = 0; k < c.d; ++k) {
                    xnp[static_cast<size_t>(t) * c.cols + k] = xn[static_cast<size_t>(t) * c.d + k];
                    refp[static_cast<size_t>(t) * c.cols + k] = ref[static_cast<size_t>(t) * c.d + k];
                }
            QuantizedActs qg, qc;
            quantize_acts(xnp.data(), c.n, c.cols, qg, KernelKind::Scalar);
            quantize_acts(refp.data(), c.n, c.cols, qc, KernelKind::Scalar);
            poison(dq, qpoison ^ 0xFF);
            poison(ds);
            poison(drs);
            cu::rmsnorm_quant(dx.get(), c.ldx, dw.get(), c.n, c.d, eps, acts, nullptr);
            q = from_dev(dq, dq.size());
            s = from_dev(ds, c.n);
            rs = from_dev(drs, c.n);
            int exact_bad = 0, off1 = 0, far = 0;
            for (size_t i = 0; i < q.size(); ++i) {
                exact_bad += q[i] != qg.q[i];
                const int dlt = std::abs(static_cast<int>(q[i]) - qc.q[i]);
                off1 += dlt == 1;
                far += dlt > 1;
            }
            for (int t = 0; t < c.n; ++t) {
                exact_bad += std::memcmp(&s[t], &qg.act_scale[t], 4) != 0;
                exact_bad += rs[t] != qg.row_sums[t];
                far += !(std::fabs(s[t] - qc.act_scale[t]) <= 1e-6f * qc.act_scale[t]);
            }
            CHECK(exact_bad == 0, "rmsnorm_quant n=%d d=%d mag=%g: %d outputs differ from quantizing the GPU's rmsnorm",
                  c.n, c.d, mag, exact_bad);
            CHECK(far == 0 && static_cast<size_t>(off1) <= std::max<size_t>(2, q.size() / 200),
                  "rmsnorm_quant vs CPU n=%d d=%d mag=%g: %d codes off by 1, %d off by more (or scales)", c.n, c.d, mag,
                  off1, far);
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// RoPE + KV cache store

std::vector<double> inv_freq(int hd, double theta) {
    std::vector<double> f(hd / 2);
    for (int i = 0; i < hd / 2; ++i) f[i] = 1.0 / std::pow(theta, 2.0 * i / hd);
    return f;
}
// [ctx, hd/2] tables as Model::rope_tables builds them: the angle in float64, rounded to fp32 after cos/sin.
void rope_tables(int ctx, int hd, double theta, std::vector<float>& cs, std::vector<float>& sn) {
    const auto f = inv_freq(hd, theta);
    const int half = hd / 2;
    cs.resize(static_cast<size_t>(ctx) * half);
    sn.resize(cs.size());
    for (int p = 0; p < ctx; ++p)
        for (int i = 0; i < half; ++i) {
            const double a = static_cast<double>(p) * f[i];
            cs[static_cast<size_t>(p) * half + i] = static_cast<float>(std::cos(a));
            sn[static_cast<size_t>(p) * half + i] = static_cast<float>(std::sin(a));
        }
}

struct HeadCfg {
    int H, Hkv, hd;
};

// A KV cache of slots x layers x ctx rows on the device, with a host copy of its bits.
struct TestCache {
    int slots, layers, ctx, kv_dim;
    bool f16;
    DeviceBuffer<uint8_t> k, v;
    std::vector<uint8_t> hk, hv;
    TestCache(int s, int l, int c, int kvd, bool h)
        : slots(s), layers(l), ctx(c), kv_dim(kvd), f16(h),
          k(static_cast<size_t>(s) * l * c * kvd * (h ? 2 : 4)), v(k.size()), hk(k.size()), hv(k.size()) {}
    size_t elems() const { return static_cast<size_t>(slots) * layers * ctx * kv_dim; }
    int64_t row(int slot, int layer, int pos) const {
        return ((static_cast<int64_t>(slot) * layers + layer) * ctx + pos) * kv_dim;
    }
    float get(const std::vector<uint8_t>& h, int64_t i) const {
        if (f16) {
            uint16_t u;
            std::memcpy(&u, h.data() + 2 * i, 2);
            return f16_to_f32(u);
        }
        float f;
        std::memcpy(&f, h.data() + 4 * i, 4);
        return f;
    }
    void set(std::vector<uint8_t>& h, int64_t i, float f) {
        if (f16) {
            const uint16_t u = f32_to_f16(f);
            std::memcpy(h.data() + 2 * i, &u, 2);
        } else {
            std::memcpy(h.data() + 4 * i, &f, 4);
        }
    }
    void fill_random(float scale) {  // keys uniform in [-scale, scale), values in [-1, 1)
        FastRng r;
        for (size_t i = 0; i < elems(); ++i) {
            set(hk, i, r(scale));
            set(hv, i, r(1.0f));
        }
    }
    void upload() {
        k.upload(hk.data(), hk.size());
        v.upload(hv.data(), hv.size());
        CUDA_CHECK(cudaDeviceSynchronize());
    }
    void download() {
        k.download(hk.data(), hk.size());
        v.download(hv.data(), hv.size());
        CUDA_CHECK(cudaDeviceSynchronize());
    }
    cu::KvCache desc() const {
        cu::KvCache c;
        c.k = k.get();
        c.v = v.get();
        c.f16 = f16;
        c.n_layers = layers;
        c.ctx = ctx;
        c.kv_dim = kv_dim;
        return c;
    }
};

void test_rope_kv() {
    const HeadCfg cfgs[] = {{32, 32, 64}, {20, 5, 128}, {4, 2, 6}, {8, 1, 40}, {2, 2, 256}};
    for (const HeadCfg& hc : cfgs) {
        for (bool f16 : {false, true}) {
            for (bool biased : {false, true}) {  // Qwen2's q/k/v biases: added before the rotation, v's written back
                for (int n : {1, 3, 7}) {
                    const int KV = hc.Hkv * hc.hd, ctx = 64, layers = 2, slots = 3, layer = 1;
                    const int ldq = hc.H * hc.hd + 2 * KV + (n == 3 ? 5 : 0);
                    std::vector<float> cs, sn;
                    rope_tables(ctx, hc.hd, 10000.0, cs, sn);
                    TestCache cache(slots, layers, ctx, KV, f16);
                    cache.fill_random(1.0f);
                    cache.upload();
                    const auto before_k = cache.hk, before_v = cache.hv;
                    std::vector<int32_t> pos(n), slot(n);
                    for (int t = 0; t < n; ++t) {  // distinct (slot, pos) pairs
                        slot[t] = t % slots;
                        pos[t] = randint(0, ctx - 1);
                        for (int u = 0; u < t; ++u)
                            if (slot[u] == slot[t] && pos[u] == pos[t]) pos[t] = (pos[t] + 1 + t) % ctx, u = -1;
                    }
                    std::vector<float> qkv(static_cast<size_t>(n) * ldq);
                    for (auto& f : qkv) f = randn() * 2.0f;
                    auto dq = to_dev(qkv);
                    auto dp = to_dev(pos);
                    auto ds = to_dev(slot);
                    auto dc = to_dev(cs);
                    auto dsn = to_dev(sn);
                    std::vector<float> bias(static_cast<size_t>(hc.H * hc.hd + 2 * KV));
                    for (auto& b : bias) b = randn();
                    auto db = to_dev(bias);
                    cu::rope_kv_write(dq.get(), ldq, n, dp.get(), ds.get(), layer, hc.H, hc.Hkv, hc.hd, dc.get(),
                                      dsn.get(), cache.desc(), nullptr, biased ? db.get() : nullptr);
                    auto out = from_dev(dq, qkv.size());
                    cache.download();

                    // Expected rows, and the expected cache: the original with exactly n rows replaced.
                    const int half = hc.hd / 2;
                    std::vector<float> exp = qkv;
                    if (biased)
                        for (int t = 0; t < n; ++t)
                            for (size_t j = 0; j < bias.size(); ++j) exp[static_cast<size_t>(t) * ldq + j] += bias[j];
                    auto exp_k = before_k, exp_v = before_v;
                    int bad_rot = 0;
                    for (int t = 0; t < n; ++t) {
                        float* r = exp.data() + static_cast<size_t>(t) * ldq;
                        const float* c = cs.data() + static_cast<size_t>(pos[t]) * half;
                        const float* s = sn.data() + static_cast<size_t>(pos[t]) * half;
                        for (int hh = 0; hh < hc.H + hc.Hkv; ++hh) {
                            float* u = r + hh * hc.hd;
                            for (int i = 0; i < half; ++i) {
                                const float u1 = u[i], u2 = u[i + half];
                                u[i] = u1 * c[i] - u2 * s[i];
                                u[i + half] = u1 * s[i] + u2 * c[i];
                                const float* g = out.data() + static_cast<size_t>(t) * ldq + hh * hc.hd;
                                const float mag = std::fabs(u1) + std::fabs(u2);
                                bad_rot += !(std::fabs(g[i] - u[i]) <= 1e-6f * mag) ||
                                           !(std::fabs(g[i + half] - u[i + half]) <= 1e-6f * mag);
                            }
                        }
                        const int64_t at = cache.row(slot[t], layer, pos[t]);
                        for (int j = 0; j < KV; ++j) {
                            // The cache gets the GPU's rotated k (checked above), stored as fp32 or fp16.
                            cache.set(exp_k, at + j, out[static_cast<size_t>(t) * ldq + hc.H * hc.hd + j]);
                            cache.set(exp_v, at + j, r[hc.H * hc.hd + KV + j]);
                        }
                    }
                    int bad_rest = 0;  // v as given (plus its bias) and the padding columns untouched
                    for (int t = 0; t < n; ++t)
                        for (int j = (hc.H + hc.Hkv) * hc.hd; j < ldq; ++j)
                            bad_rest += std::memcmp(&out[static_cast<size_t>(t) * ldq + j],
                                                    &exp[static_cast<size_t>(t) * ldq + j], 4) != 0;
                    const bool cache_ok = cache.hk == exp_k && cache.hv == exp_v;
                    CHECK(bad_rot == 0 && bad_rest == 0 && cache_ok,
                          "rope_kv H=%d Hkv=%d hd=%d f16=%d bias=%d n=%d: %d rotations off, %d other values changed, "
                          "cache %s", hc.H, hc.Hkv, hc.hd, f16, biased, n, bad_rot, bad_rest, cache_ok ? "ok" : "WRONG");
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Attention

// out[hd] for query q (fp32) over keys 0 .. len-1 of kv head g at (slot, layer), in float64.
void ref_attention(const TestCache& c, const float* q, int slot, int layer, int g, int hd, int len, double* out) {
    std::vector<double> s(len);
    double mx = -INFINITY;
    const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
    for (int j = 0; j < len; ++j) {
        const int64_t at = c.row(slot, layer, j) + static_cast<int64_t>(g) * hd;
        double d = 0;
        for (int i = 0; i < hd; ++i) d += static_cast<double>(q[i]) * c.get(c.hk, at + i);
        s[j] = d * scale;
        mx = std::max(mx, s[j]);
    }
    double sum = 0;
    for (int j = 0; j < len; ++j) sum += (s[j] = std::exp(s[j] - mx));
    for (int i = 0; i < hd; ++i) out[i] = 0;
    for (int j = 0; j < len; ++j) {
        const int64_t at = c.row(slot, layer, j) + static_cast<int64_t>(g) * hd;
        for (int i = 0; i < hd; ++i) out[i] += s[j] / sum * c.get(c.hv, at + i);
    }
}

// ||gpu - ref|| / ||ref|| over one head's output (NaN: infinite).
double head_error(const float* gpu, const double* ref, int hd) {
    double e = 0, m = 0;
    for (int i = 0; i < hd; ++i) {
        e += (gpu[i] - ref[i]) * (gpu[i] - ref[i]);
        m += ref[i] * ref[i];
    }
    return std::isnan(e) ? INFINITY : std::sqrt(e / std::max(m, 1e-300));
}

// Positions past `upto[slot]` in every layer are NaN: reading a key outside the causal window poisons the
// output.
void poison_future(TestCache& c, const std::vector<int>& upto) {
    for (int s = 0; s < c.slots; ++s)
        for (int l = 0; l < c.layers; ++l)
            for (int p = upto[s] + 1; p < c.ctx; ++p)
                for (int j = 0; j < c.kv_dim; ++j) {
                    c.set(c.hk, c.row(s, l, p) + j, NAN);
                    c.set(c.hv, c.row(s, l, p) + j, NAN);
                }
}

void test_attention_decode() {
    const HeadCfg cfgs[] = {{32, 32, 64}, {20, 5, 128}, {8, 2, 64}, {16, 2, 64}, {6, 3, 40},
                            {4, 1, 128},  {2, 2, 256},  {3, 1, 6},  {5, 5, 96}};
    for (const HeadCfg& hc : cfgs) {
        for (bool f16 : {false, true}) {
            const int KV = hc.Hkv * hc.hd, D = hc.H * hc.hd;
            const int ctx = hc.hd == 64 && hc.H == 8 ? 5000 : 2100;  // 5000: chunks longer than the minimum
            const int slots = 3, layers = 2, layer = 1;
            TestCache cache(slots, layers, ctx, KV, f16);
            for (int n : {1, 4}) {
                std::vector<int32_t> pos(n), slot(n);
                std::vector<int> upto(slots, -1);
                for (int t = 0; t < n; ++t) {
                    slot[t] = n == 1 ? randint(0, slots - 1) : t % slots;
                    const int pick = randint(0, 3);
                    pos[t] = pick == 0 ? randint(0, 70) : pick == 1 ? ctx - 1 : randint(0, ctx - 1);
                    upto[slot[t]] = std::max(upto[slot[t]], pos[t]);
                }
                TestCache& c = cache;
                c.fill_random(0.6f);  // scores of a few units: peaked and flat heads alike
                poison_future(c, upto);
                c.upload();
                const int ldq = D + 2 * KV, ldo = D + 3;
                std::vector<float> q(static_cast<size_t>(n) * ldq);
                for (auto& f : q) f = randn() * 3.0f;
                auto dq = to_dev(q);
                auto dp = to_dev(pos);
                auto ds = to_dev(slot);
                DeviceBuffer<float> dout(static_cast<size_t>(n) * ldo);
                DeviceBuffer<float> ws(cu::attention_decode_workspace_floats(n, hc.H, hc.hd));
                poison(dout);
                poison(ws);
                cu::attention_decode(dq.get(), ldq, n, dp.get(), ds.get(), layer, hc.H, hc.Hkv, hc.hd, c.desc(),
                                     dout.get(), ldo, ws.get(), nullptr);
                auto out = from_dev(dout, dout.size());
                const double tol = 1e-5;
                double worst = 0;
                int bad = 0, untouched = 0;
                std::vector<double> ref(hc.hd);
                for (int t = 0; t < n; ++t) {
                    for (int h = 0; h < hc.H; ++h) {
                        ref_attention(c, q.data() + static_cast<size_t>(t) * ldq + h * hc.hd, slot[t], layer,
                                      h / (hc.H / hc.Hkv), hc.hd, pos[t] + 1, ref.data());
                        const double e =
                            head_error(out.data() + static_cast<size_t>(t) * ldo + h * hc.hd, ref.data(), hc.hd);
                        worst = std::max(worst, e);
                        bad += !(e <= tol);
                    }
                    for (int j = D; j < ldo; ++j) untouched += !is_poison_f(out[static_cast<size_t>(t) * ldo + j]);
                }
                CHECK(bad == 0 && untouched == 0,
                      "attention_decode H=%d Hkv=%d hd=%d f16=%d n=%d pos[0]=%d: %d heads off (worst %.3g), %d "
                      "columns past H*hd written",
                      hc.H, hc.Hkv, hc.hd, f16, n, pos[0], bad, worst, untouched);
            }
        }
    }

    // Graph replay: one capture, then new positions written to the device before each replay.
    {
        const HeadCfg hc{8, 2, 128};
        const int KV = hc.Hkv * hc.hd, D = hc.H * hc.hd, ctx = 4096, n = 2;
        TestCache c(2, 1, ctx, KV, false);
        c.fill_random(0.6f);
        c.upload();
        std::vector<float> q(static_cast<size_t>(n) * D);
        for (auto& f : q) f = randn();
        auto dq = to_dev(q);
        std::vector<int32_t> slot = {1, 0}, pos = {0, 0};
        auto dp = to_dev(pos);
        auto ds = to_dev(slot);
        DeviceBuffer<float> dout(static_cast<size_t>(n) * D);
        DeviceBuffer<float> ws(cu::attention_decode_workspace_floats(n, hc.H, hc.hd));
        CudaStream stream;
        const GraphExec exec = capture_graph(stream.get(), [&] {
            cu::attention_decode(dq.get(), D, n, dp.get(), ds.get(), 0, hc.H, hc.Hkv, hc.hd, c.desc(), dout.get(), D,
                                 ws.get(), stream.get());
        });
        int bad = 0;
        std::vector<double> ref(hc.hd);
        for (int p : {0, 63, 64, 65, 500, 2047, 4095, 129, 1}) {
            pos = {p, std::max(0, ctx - 1 - p)};
            dp.upload(pos.data(), n, stream.get());
            poison(dout);
            exec.launch(stream.get());
            stream.sync();
            auto out = from_dev(dout, dout.size());
            for (int t = 0; t < n; ++t)
                for (int h = 0; h < hc.H; ++h) {
                    ref_attention(c, q.data() + static_cast<size_t>(t) * D + h * hc.hd, slot[t], 0, h / (hc.H / hc.Hkv),
                                  hc.hd, pos[t] + 1, ref.data());
                    const float* o = out.data() + static_cast<size_t>(t) * D + h * hc.hd;
                    bad += !(head_error(o, ref.data(), hc.hd) <= 1e-5);
                }
        }
        CHECK(bad == 0, "attention_decode graph replays: %d heads off", bad);
    }
}

void test_attention_prefill() {
    const HeadCfg cfgs[] = {{32, 32, 64}, {20, 5, 128}, {8, 2, 64}, {6, 3, 40}, {4, 1, 128}, {2, 2, 256}, {3, 1, 6}};
    for (const HeadCfg& hc : cfgs) {
        for (bool f16 : {false, true}) {
            const int KV = hc.Hkv * hc.hd, D = hc.H * hc.hd, ctx = 1200, slots = 2, layers = 2, layer = 0;
            TestCache c(slots, layers, ctx, KV, f16);
            for (int n : {1, 5, 16, 17, 40, 100}) {
                const int pos0 = n == 100 ? randint(900, ctx - n) : randint(0, 3) == 0 ? 0 : randint(1, 300);
                const int slot = randint(0, slots - 1);
                std::vector<int> upto(slots, ctx - 1);
                upto[slot] = pos0 + n - 1;
                c.fill_random(0.6f);
                poison_future(c, upto);
                c.upload();
                const int ldq = D + 2 * KV + 1, ldo = D + 2;
                std::vector<float> q(static_cast<size_t>(n) * ldq);
                for (auto& f : q) f = randn() * 3.0f;
                auto dq = to_dev(q);
                DeviceBuffer<float> dout(static_cast<size_t>(n) * ldo);
                poison(dout);
                cu::attention_prefill(dq.get(), ldq, n, pos0, slot, layer, hc.H, hc.Hkv, hc.hd, c.desc(), dout.get(),
                                      ldo, nullptr);
                auto out = from_dev(dout, dout.size());
                double worst = 0;
                int bad = 0, untouched = 0;
                std::vector<double> ref(hc.hd);
                for (int t = 0; t < n; ++t) {
                    for (int h = 0; h < hc.H; ++h) {
                        ref_attention(c, q.data() + static_cast<size_t>(t) * ldq + h * hc.hd, slot, layer,
                                      h / (hc.H / hc.Hkv), hc.hd, pos0 + t + 1, ref.data());
                        const double e =
                            head_error(out.data() + static_cast<size_t>(t) * ldo + h * hc.hd, ref.data(), hc.hd);
                        worst = std::max(worst, e);
                        bad += !(e <= 1e-5);
                    }
                    for (int j = D; j < ldo; ++j) untouched += !is_poison_f(out[static_cast<size_t>(t) * ldo + j]);
                }
                CHECK(bad == 0 && untouched == 0,
                      "attention_prefill H=%d Hkv=%d hd=%d f16=%d n=%d pos0=%d: %d heads off (worst %.3g), %d columns "
                      "past H*hd written",
                      hc.H, hc.Hkv, hc.hd, f16, n, pos0, bad, worst, untouched);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// LM head

void test_head() {
    struct Case {
        int V, D, n;
    };
    const Case cases[] = {{32000, 2048, 1}, {1000, 2048, 1}, {1000, 2048, 2}, {1000, 2048, 3}, {777, 2560, 8},
                          {500, 64, 11},    {37, 40, 2},     {100, 36, 5},    {33, 8, 1},      {3001, 1024, 17}};
    for (const Case& c : cases) {
        std::vector<__half> w(static_cast<size_t>(c.V) * c.D);
        std::vector<float> x(static_cast<size_t>(c.n) * c.D);
        for (auto& h : w) h = bits_h(f32_to_f16(randn() * 0.05f));
        for (auto& f : x) f = randn();
        auto dw = to_dev(w);
        auto dx = to_dev(x);
        DeviceBuffer<float> dl(static_cast<size_t>(c.n) * c.V);
        poison(dl);
        cu::head_f16(dw.get(), c.V, c.D, dx.get(), c.n, dl.get(), nullptr);
        auto lg = from_dev(dl, dl.size());
        int bad = 0;
        double worst = 0;
        std::vector<float> wf(c.D);
        for (int r = 0; r < c.V; ++r) {
            for (int k = 0; k < c.D; ++k) wf[k] = f16_to_f32(h_bits(w[static_cast<size_t>(r) * c.D + k]));
            for (int t = 0; t < c.n; ++t) {
                double s = 0, a = 0;
                for (int k = 0; k < c.D; ++k) {
                    const double p = static_cast<double>(wf[k]) * x[static_cast<size_t>(t) * c.D + k];
                    s += p;
                    a += std::fabs(p);
                }
                // Relative to the sum of |products|: the logits themselves may cancel to near zero.
                const double e = std::fabs(lg[static_cast<size_t>(t) * c.V + r] - s) / std::max(a, 1e-30);
                if (!(e <= 1e-5)) ++bad;
                if (!(e <= worst)) worst = e;
            }
        }
        CHECK(bad == 0, "head_f16 V=%d D=%d n=%d: %d logits off (worst %.3g)", c.V, c.D, c.n, bad, worst);
    }
}

// The int8 head against the CPU's q8_head_matmul on the same int8 rows and activations: bit-identical logits
// (exact integer sums, the same fp32 epilogue). Vectorized rows (D % 16 == 0) and the scalar path, token counts
// across the 1 / 2 / 4 / 8 tiles and past them (rows reused from L1), an all-zero row (scale 0), activations at
// a padded row stride (x.cols > D).
void test_head_q8() {
    struct Case {
        int V, D, n, pad;
    };
    const Case cases[] = {{32000, 2048, 1, 0}, {1000, 2048, 2, 0}, {1000, 2048, 3, 16}, {777, 2560, 8, 0},
                          {500, 64, 11, 0},    {37, 40, 2, 0},     {100, 36, 5, 4},    {3001, 1024, 17, 0}};
    for (const Case& c : cases) {
        std::vector<float> w(static_cast<size_t>(c.V) * c.D), x(static_cast<size_t>(c.n) * c.D);
        for (auto& f : w) f = randn() * 0.05f;
        for (int k = 0; k < c.D; ++k) w[static_cast<size_t>(c.V / 2) * c.D + k] = 0.0f;
        for (auto& f : x) f = randn();
        const Q8Head h = Q8Head::from_f32(w.data(), c.V, c.D);
        QuantizedActs qa;
        quantize_acts(x.data(), c.n, c.D, qa, KernelKind::Scalar);
        std::vector<float> want(static_cast<size_t>(c.n) * c.V);
        q8_head_matmul(h, qa, want.data(), c.V, 0, c.V, KernelKind::Scalar);

        const int cols = c.D + c.pad;  // the GPU's activation rows at stride cols
        std::vector<int8_t> aq(static_cast<size_t>(c.n) * cols, 0);
        for (int t = 0; t < c.n; ++t)
            std::memcpy(aq.data() + static_cast<size_t>(t) * cols, qa.q.data() + static_cast<size_t>(t) * c.D, c.D);
        std::vector<int8_t> hq(h.row(0), h.row(0) + static_cast<size_t>(c.V) * c.D);
        std::vector<float> hs(h.scales(), h.scales() + c.V);
        auto dw = to_dev(hq);
        auto ds = to_dev(hs);
        auto dq = to_dev(aq);
        auto da = to_dev(qa.act_scale);
        DeviceBuffer<float> dl(static_cast<size_t>(c.n) * c.V);
        poison(dl);
        cu::DevActs a;
        a.q = dq.get();
        a.scale = da.get();
        a.cols = cols;
        cu::head_q8(dw.get(), ds.get(), c.V, c.D, a, c.n, dl.get(), nullptr);
        const auto got = from_dev(dl, dl.size());
        int bad = 0;
        for (size_t i = 0; i < got.size(); ++i) bad += std::memcmp(&got[i], &want[i], 4) != 0;
        CHECK(bad == 0, "head_q8 V=%d D=%d n=%d cols=%d: %d of %zu logits differ from q8_head_matmul", c.V, c.D, c.n,
              cols, bad, got.size());
    }
}

// ---------------------------------------------------------------------------------------------------
// Sampling

// The CPU Sampler's exact distribution (csrc/engine/sampler.cpp): penalty, p = exp((l - max) / T) in fp32, the
// order (p desc, id asc), top-k, then the shortest prefix whose mass reaches top_p of the survivors'.
std::vector<double> cpu_probs(std::vector<float> l, const std::vector<uint8_t>& seen, const SamplingParams& sp) {
    const int V = static_cast<int>(l.size());
    if (sp.repetition_penalty != 1.0f)
        for (int i = 0; i < V; ++i)
            if (seen[i]) l[i] = l[i] > 0.0f ? l[i] / sp.repetition_penalty : l[i] * sp.repetition_penalty;
    const float inv_t = 1.0f / sp.temperature;
    const float mx = l[argmax(l.data(), V)];
    std::vector<float> p(V);
    for (int i = 0; i < V; ++i) p[i] = std::exp((l[i] - mx) * inv_t);
    std::vector<int> idx(V);
    std::iota(idx.begin(), idx.end(), 0);
    std::sort(idx.begin(), idx.end(), [&](int a, int b) { return p[a] > p[b] || (p[a] == p[b] && a < b); });
    int k = sp.top_k > 0 ? std::min(sp.top_k, V) : V;
    double total = 0;
    for (int i = 0; i < k; ++i) total += p[idx[i]];
    int m = k;
    if (sp.top_p < 1.0f) {
        const double target = sp.top_p * total;
        double cum = 0;
        for (int i = 0; i < k; ++i) {
            cum += p[idx[i]];
            if (cum >= target) {
                m = i + 1;
                break;
            }
        }
    }
    double mass = 0;
    for (int i = 0; i < m; ++i) mass += p[idx[i]];
    std::vector<double> prob(V, 0.0);
    for (int i = 0; i < m; ++i) prob[idx[i]] = p[idx[i]] / mass;
    return prob;
}

// Pearson chi-square of counts against probabilities, with the categories (most probable first) merged
// into bins of expected count >= 20; fails when the statistic passes df + 6 sqrt(2 df) + 24 (false alarms
// below ~1e-7 at any df) or when a token of probability 0 was drawn.
void check_distribution(const std::vector<int64_t>& counts, const std::vector<double>& prob, int64_t N,
                        const char* what) {
    const int V = static_cast<int>(prob.size());
    int64_t impossible = 0;
    for (int i = 0; i < V; ++i)
        if (prob[i] == 0.0) impossible += counts[i];
    std::vector<int> order(V);
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int a, int b) { return prob[a] > prob[b]; });
    std::vector<double> be, bo;
    double e = 0, o = 0;
    for (int i : order) {
        if (prob[i] == 0.0) break;
        e += prob[i] * N;
        o += counts[i];
        if (e >= 20) {
            be.push_back(e), bo.push_back(o);
            e = o = 0;
        }
    }
    if (e > 0) {
        if (be.empty()) be.push_back(0), bo.push_back(0);
        be.back() += e, bo.back() += o;
    }
    double chi = 0;
    for (size_t b = 0; b < be.size(); ++b) chi += (bo[b] - be[b]) * (bo[b] - be[b]) / be[b];
    const double df = std::max<double>(1, static_cast<double>(be.size()) - 1);
    const double bound = df + 6 * std::sqrt(2 * df) + 24;
    std::printf("  %s: %zu bins, chi2 %.1f (bound %.1f)\n", what, be.size(), chi, bound);
    CHECK(impossible == 0 && chi <= bound, "%s: %lld draws of excluded tokens, chi2 %.1f > %.1f over %zu bins", what,
          static_cast<long long>(impossible), chi, bound, be.size());
}

cu::DevSampling dev_params(const SamplingParams& sp) {
    cu::DevSampling d;
    d.greedy = !sp.do_sample;
    d.temperature = sp.temperature;
    d.top_k = sp.top_k;
    d.top_p = sp.top_p;
    d.repetition_penalty = sp.repetition_penalty;
    d.seed = sp.seed;
    return d;
}

// `rows` copies of one logits row (and seen row) on the device; run() samples a fresh copy of them.
struct RowBatch {
    int V, rows;
    DeviceBuffer<float> pristine, work;
    DeviceBuffer<uint8_t> seen, ws;
    DeviceBuffer<int32_t> tokens;
    RowBatch(const std::vector<float>& row, const std::vector<uint8_t>& seen_row, int n)
        : V(static_cast<int>(row.size())), rows(n), pristine(static_cast<size_t>(n) * V), work(pristine.size()),
          seen(pristine.size()), ws(std::max<size_t>(1, cu::sample_workspace_bytes(n, V))), tokens(n) {
        std::vector<float> L(pristine.size());
        std::vector<uint8_t> S(pristine.size());
        for (int r = 0; r < rows; ++r) {
            std::copy(row.begin(), row.end(), L.begin() + static_cast<size_t>(r) * V);
            std::copy(seen_row.begin(), seen_row.end(), S.begin() + static_cast<size_t>(r) * V);
        }
        pristine.upload(L.data(), L.size());
        seen.upload(S.data(), S.size());
        CUDA_CHECK(cudaDeviceSynchronize());
    }
    // The tokens (step advanced once); `after` gets row 0's logits after the call.
    std::vector<int32_t> run(const SamplingParams& sp, DeviceBuffer<uint64_t>& step,
                             std::vector<float>* after = nullptr) {
        CUDA_CHECK(cudaMemcpy(work.get(), pristine.get(), work.bytes(), cudaMemcpyDeviceToDevice));
        poison(tokens);
        cu::sample(work.get(), V, rows, dev_params(sp), seen.get(), step.get(), tokens.get(), ws.get(), nullptr);
        CUDA_CHECK_LAUNCH();
        if (after) *after = from_dev(work, static_cast<size_t>(V));
        return from_dev(tokens, rows);
    }
};

std::vector<int32_t> sample_rows(const std::vector<float>& row, const std::vector<uint8_t>& seen, int rows,
                                 const SamplingParams& sp, DeviceBuffer<uint64_t>& step,
                                 std::vector<float>* after = nullptr) {
    RowBatch b(row, seen, rows);
    return b.run(sp, step, after);
}

uint64_t read_step(const DeviceBuffer<uint64_t>& s) { return from_dev(s, 1)[0]; }  // row 0's counter

// The RNG counters of rows [0, rows): base + r * stride.
void set_steps(DeviceBuffer<uint64_t>& step, int rows, uint64_t base, uint64_t stride) {
    std::vector<uint64_t> v(static_cast<size_t>(rows));
    for (int r = 0; r < rows; ++r) v[static_cast<size_t>(r)] = base + static_cast<uint64_t>(r) * stride;
    step.upload(v.data(), v.size());
    CUDA_CHECK(cudaDeviceSynchronize());
}

void test_sample() {
    DeviceBuffer<uint64_t> step(2048);  // one counter per row
    set_steps(step, 2048, 0, 0);

    // Greedy == the CPU Sampler's argmax (after the penalty, lowest index on ties), logits penalized alike.
    for (int V : {50, 1001, 32000, 128256}) {
        for (bool pen : {false, true}) {
            std::vector<float> l(V);
            for (auto& f : l) f = randn() * 3.0f;
            std::vector<uint8_t> seen(V, 0);
            SamplingParams sp;
            sp.repetition_penalty = pen ? 1.25f : 1.0f;  // 25 / 1.25 == 20 exactly: a tie made by the penalty
            if (pen)
                for (int i = 0; i < V; ++i) seen[i] = randint(0, 9) == 0;
            // Planted ties at the top: three equal maxima (one of them reached only through the penalty).
            const float top = 20.0f;
            const int a = randint(0, V - 1), b = randint(0, V - 1), c = randint(0, V - 1);
            l[a] = top, seen[a] = 0;
            l[b] = top, seen[b] = 0;
            if (pen) l[c] = top * 1.25f, seen[c] = 1;
            else l[c] = top;
            Sampler cpu(V);
            cpu.reset(sp);
            for (int i = 0; i < V; ++i)
                if (seen[i]) cpu.observe(i);
            std::vector<float> lc = l;
            const int32_t want = cpu.sample(lc.data());
            const uint64_t s0 = read_step(step);
            std::vector<float> after;
            for (int rows : {1, 3}) {
                auto got = sample_rows(l, seen, rows, sp, step, &after);
                int bad = 0;
                for (int32_t t : got) bad += t != want;
                CHECK(bad == 0, "greedy V=%d penalty=%d rows=%d: got %d, want %d", V, pen, rows, got[0], want);
                CHECK(std::memcmp(after.data(), lc.data(), 4 * static_cast<size_t>(V)) == 0,
                      "greedy V=%d penalty=%d: penalized logits differ from the CPU's", V, pen);
            }
            CHECK(read_step(step) == s0 + 2, "greedy: step advanced by %llu over 2 calls",
                  static_cast<unsigned long long>(read_step(step) - s0));
        }
    }

    // top_k = 1 sampling is greedy; the same seed and step give the same tokens; step counts calls.
    for (int V : {50, 32000, 1001}) {
        std::vector<float> l(V);
        for (auto& f : l) f = randn() * 2.0f;
        std::vector<uint8_t> seen(V, 0);
        for (int i = 0; i < V; ++i) seen[i] = randint(0, 19) == 0;
        SamplingParams sp;
        sp.do_sample = true, sp.temperature = 0.8f, sp.top_k = 1, sp.repetition_penalty = 1.2f, sp.seed = 7;
        Sampler cpu(V);
        SamplingParams g = sp;
        g.do_sample = false;
        cpu.reset(g);
        for (int i = 0; i < V; ++i)
            if (seen[i]) cpu.observe(i);
        std::vector<float> lc = l;
        const int32_t want = cpu.sample(lc.data());
        auto got = sample_rows(l, seen, 4, sp, step);
        int bad = 0;
        for (int32_t t : got) bad += t != want;
        CHECK(bad == 0, "top_k=1 V=%d: got %d, want %d", V, got[0], want);

        // Row r of a call draws what a one-row call draws with seed + r and the same counter and history (the
        // Engine's prompt i of a batch samples with seed + i); every counter advances by one per call; the same
        // counters replay the same tokens, other counters draw other ones.
        sp.top_k = 0, sp.top_p = 0.9f, sp.temperature = 1.5f;
        const int rows = 64;
        set_steps(step, rows, 500, 0);
        const auto batch = sample_rows(l, seen, rows, sp, step);
        const auto after = from_dev(step, rows);
        int not_advanced = 0;
        for (uint64_t c : after) not_advanced += c != 501;
        CHECK(not_advanced == 0, "sampling V=%d: %d row counters not advanced by exactly 1", V, not_advanced);
        int unlike = 0, distinct = 0;
        for (int r : {0, 1, 17, 63}) {
            SamplingParams one = sp;
            one.seed = sp.seed + static_cast<uint64_t>(r);
            set_steps(step, 1, 500, 0);
            unlike += sample_rows(l, seen, 1, one, step)[0] != batch[static_cast<size_t>(r)];
        }
        for (int r = 1; r < rows; ++r) distinct += batch[r] != batch[0];
        CHECK(unlike == 0 && distinct > 0,
              "sampling V=%d: %d of 4 rows differ from the one-row draw with seed + row; %d rows differ from row 0", V,
              unlike, distinct);
        set_steps(step, rows, 1000, 1);
        const auto first = sample_rows(l, seen, rows, sp, step);
        set_steps(step, rows, 1000, 1);
        const auto again = sample_rows(l, seen, rows, sp, step);
        const auto next = sample_rows(l, seen, rows, sp, step);  // counters 1001 + r
        CHECK(first == again && next != first, "sampling V=%d: counters do not replay / advance the draws", V);
        set_steps(step, rows, 0, 0);
    }

    // Graph replay of a sampling call: the step advances with every replay.
    {
        const int V = 32000;
        std::vector<float> l(V);
        for (auto& f : l) f = randn();
        auto dl = to_dev(l);
        DeviceBuffer<float> work(V);
        DeviceBuffer<int32_t> tok(1);
        CudaStream stream;
        SamplingParams sp;
        sp.do_sample = true, sp.temperature = 1.0f, sp.top_k = 40, sp.top_p = 0.95f, sp.seed = 3;
        const GraphExec exec = capture_graph(stream.get(), [&] {
            CUDA_CHECK(cudaMemcpyAsync(work.get(), dl.get(), 4 * static_cast<size_t>(V), cudaMemcpyDeviceToDevice,
                                       stream.get()));
            cu::sample(work.get(), V, 1, dev_params(sp), nullptr, step.get(), tok.get(), nullptr, stream.get());
        });
        const uint64_t s0 = read_step(step);
        std::vector<int32_t> seq1, seq2;
        for (int pass = 0; pass < 2; ++pass) {
            step.upload(&s0, 1);
            CUDA_CHECK(cudaDeviceSynchronize());
            for (int i = 0; i < 8; ++i) {
                exec.launch(stream.get());
                stream.sync();
                (pass ? seq2 : seq1).push_back(from_dev(tok, 1)[0]);
            }
        }
        CHECK(seq1 == seq2 && read_step(step) == s0 + 8, "sampling graph replays: not reproducible or step off");
    }

    // Frequencies against the exact distribution.
    struct DistCase {
        int V;
        int kind;  // 0: N(0, 1.5) logits; 1: a few dominant logits (two tied) over N(0, 1)
        float temperature;
        int top_k;
        float top_p;
        float penalty;
    };
    const DistCase cases[] = {
        {50, 0, 0.7f, 0, 1.0f, 1.0f},     {50, 0, 1.3f, 10, 1.0f, 1.0f},   {50, 0, 1.0f, 20, 0.8f, 1.0f},
        {50, 0, 0.9f, 0, 0.6f, 1.5f},     {32000, 1, 1.0f, 0, 0.9f, 1.0f}, {32000, 1, 1.0f, 3, 1.0f, 1.0f},
        {32000, 1, 0.8f, 2, 1.0f, 1.3f},  {32000, 0, 1.0f, 0, 0.95f, 1.0f}, {32000, 0, 1.0f, 0, 1.0f, 1.0f},
        {32000, 0, 1.0f, 1000, 1.0f, 1.0f}, {32000, 0, 0.7f, 1000, 0.5f, 1.2f}, {1001, 0, 1.0f, 0, 0.9f, 1.0f},
        {128256, 1, 1.0f, 50, 0.9f, 1.0f}, {128256, 0, 1.0f, 0, 0.5f, 1.0f}};
    for (const DistCase& dc : cases) {
        std::vector<float> l(dc.V);
        std::vector<uint8_t> seen(dc.V, 0);
        for (auto& f : l) f = randn() * (dc.kind == 0 ? 1.5f : 1.0f);
        if (dc.kind == 1) {
            const float big[] = {14.0f, 13.0f, 13.0f, 12.0f, 11.0f};  // e^14 >> the rest's total mass
            for (float b : big) l[randint(0, dc.V - 1)] = b;
        }
        if (dc.penalty != 1.0f)
            for (int i = 0; i < dc.V; ++i) seen[i] = randint(0, 4) == 0;
        SamplingParams sp;
        sp.do_sample = true, sp.temperature = dc.temperature, sp.top_k = dc.top_k, sp.top_p = dc.top_p;
        sp.repetition_penalty = dc.penalty, sp.seed = 1000 + dc.V;
        const auto prob = cpu_probs(l, seen, sp);
        const int64_t N = 20000;
        const int rows = dc.V >= 100000 ? 500 : 2000;
        std::vector<int64_t> counts(dc.V, 0);
        int64_t drawn = 0, out_of_range = 0;
        RowBatch batch(l, seen, rows);
        while (drawn < N) {
            set_steps(step, rows, static_cast<uint64_t>(drawn), 1);  // every draw its own counter
            for (int32_t t : batch.run(sp, step)) {
                if (t < 0 || t >= dc.V) ++out_of_range;
                else ++counts[t];
            }
            drawn += rows;
        }
        CHECK(out_of_range == 0, "sampling V=%d: %lld tokens out of range", dc.V, static_cast<long long>(out_of_range));
        char what[128];
        std::snprintf(what, sizeof what, "sample V=%d T=%.2f top_k=%d top_p=%.2f penalty=%.1f", dc.V, dc.temperature,
                      dc.top_k, dc.top_p, dc.penalty);
        check_distribution(counts, prob, drawn, what);
    }
}

}  // namespace

int main() {
    if (cu::device_count() == 0) {
        std::printf("SKIP: %s\n", cu::device_description());
        return 77;
    }
    std::printf("%s\n", cu::device_description());
    try {
        test_embed();
        test_rmsnorm_quant();
        test_rope_kv();
        test_attention_decode();
        test_attention_prefill();
        test_head();
        test_head_q8();
        test_sample();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "FAIL: exception: %s\n", e.what());
        ++g_failures;
    }
    std::printf("%d checks, %d failures\n", g_checks, g_failures);
    return g_failures ? 1 : 0;
}

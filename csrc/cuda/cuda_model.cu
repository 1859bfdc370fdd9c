#include "cuda/cuda_model.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "cuda/kernels/launch.cuh"
#include "cuda/layout.h"
#include "engine/weights.h"

namespace bllama {
namespace cuda {

const char* prompt_gemm_name(PromptGemm g) { return g == PromptGemm::CublasLt ? "cublaslt" : "mma"; }

CudaOptions cuda_options_from_env(CudaOptions o) {
    if (const char* g = std::getenv("BLLAMA_CUDA_GEMM")) {
        const std::string s = g;
        if (s == "cublaslt") o.gemm = PromptGemm::CublasLt;
        else if (s == "mma") o.gemm = PromptGemm::Mma;
        else throw std::invalid_argument("BLLAMA_CUDA_GEMM must be 'mma' or 'cublaslt', got '" + s + "'");
    }
    if (const char* g = std::getenv("BLLAMA_CUDA_GRAPHS")) o.graphs = std::string(g) != "0";
    if (const char* g = std::getenv("BLLAMA_CUDA_PDL")) o.pdl = std::string(g) == "1";
    return o;
}

namespace {

// Small kernels that glue a decode step together (everything else is in kernels.cuh). Both wait before
// touching anything (PDL, launch.cuh).

// Start of a step: the pending token of each slot joins its seen set (the CPU Sampler's observe()).
__global__ void mark_seen_kernel(const int32_t* tokens, uint8_t* seen, int V, int B) {
    pdl_trigger();
    pdl_wait();
    const int b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b < B) seen[static_cast<int64_t>(b) * V + tokens[b]] = 1;
}

// End of a step: every slot moves one position on (its next input is the token just sampled).
__global__ void advance_kernel(int32_t* pos, int B) {
    pdl_trigger();
    pdl_wait();  // the step's attention and RoPE read pos
    const int b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b < B) pos[b] += 1;
}

// Prompt chunk bookkeeping: pos[t] = pos0 + t, slot[t] = slot.
__global__ void fill_positions_kernel(int32_t* pos, int32_t* slot_ids, int n, int pos0, int slot) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t < n) {
        pos[t] = pos0 + t;
        slot_ids[t] = slot;
    }
}

DevTernary stacked(const uint32_t* words, std::initializer_list<const TernaryRows*> parts,
                   std::initializer_list<const BitLinearTensor*> lin) {
    DevTernary d;
    d.words = words;
    d.cols = static_cast<int>((*parts.begin())->cols);
    d.n_seg = static_cast<int>(parts.size());
    int i = 0, end = 0;
    auto li = lin.begin();
    for (const TernaryRows* p : parts) {
        end += static_cast<int>(p->rows);
        d.seg_end[i] = end;
        d.seg_scale[i] = p->scale;
        d.seg_out_scale[i] = (*li)->has_out_scale ? (*li)->out_scale : 1.0f;
        ++i;
        ++li;
    }
    d.rows = end;
    return d;
}

}  // namespace

CudaModel::CudaModel(const GgufFile& file, const CudaOptions& opts) : cfg_(read_config(file)), opts_(opts) {
    if (cuda::device_count() == 0) throw std::runtime_error(std::string("device='cuda': ") + device_description());
    if (opts_.slots < 1 || opts_.slots > 256) throw std::invalid_argument("CUDA slots must be in [1, 256]");
    if (opts_.max_batch < 1) throw std::invalid_argument("CUDA max_batch must be positive");
    if (cfg_.head_dim % 2 || cfg_.head_dim > 256)
        throw ModelError("the CUDA backend needs an even head_dim <= 256, got " + std::to_string(cfg_.head_dim));
    ctx_ = opts_.max_context > 0 ? std::min<int64_t>(opts_.max_context, cfg_.context) : cfg_.context;
    if (opts_.gemm == PromptGemm::CublasLt && !CublasLtGemm::available())
        throw std::runtime_error("BLLAMA_CUDA_GEMM=cublaslt: cuBLASLt could not be loaded (libcublasLt.so.13; set "
                                 "BLLAMA_CUBLASLT to its path) or this build had no cublasLt.h");
    pdl_ = opts_.pdl && pdl_supported();
    upload(file);
    allocate();
}

CudaModel::~CudaModel() {
    graphs_.clear();
    if (h_tokens_) cudaFreeHost(h_tokens_);
}

void CudaModel::upload(const GgufFile& file) {
    const ModelConfig& c = cfg_;
    const int64_t L = c.n_layers;
    const ModelTensors t = check_model_tensors(file, c);
    // Sizes first: one allocation for every matrix, one for every norm.
    size_t total_words = 0;
    for (const LayerTensors& w : t.layers)
        for (const BitLinearTensor* b : {&w.q, &w.k, &w.v, &w.o, &w.gate, &w.up, &w.down})
            total_words += static_cast<size_t>(b->rows * (b->cols / 16));
    words_ = DeviceBuffer<uint32_t>(total_words);
    weight_bytes_ = total_words * 4;
    const size_t norms_per_layer = static_cast<size_t>(2 * c.dim + (c.sub_norms ? c.attn_dim + c.ffn : 0) +
                                                       (c.qk_norm ? 2 * c.head_dim : 0));
    norms_ = DeviceBuffer<float>(static_cast<size_t>(L) * norms_per_layer + static_cast<size_t>(c.dim));

    size_t wpos = 0, npos = 0;
    // Packed straight from the file's blocks, a tensor at a time; its pages are dropped once packed.
    auto pack = [&](const BitLinearTensor& b) {
        TernaryRows r = ternary_rows_from_gguf(*b.weight);
        file.release(*b.weight);
        return r;
    };
    auto put_words = [&](const TernaryRows& r) {
        CUDA_CHECK(cudaMemcpy(words_.get() + wpos, r.words.data(), r.words.size() * 4, cudaMemcpyHostToDevice));
        wpos += r.words.size();
    };
    auto put_norm = [&](const GgufTensor& n) -> const float* {
        const std::vector<float> v = f32_values(n);
        float* dst = norms_.get() + npos;
        CUDA_CHECK(cudaMemcpy(dst, v.data(), v.size() * 4, cudaMemcpyHostToDevice));
        npos += v.size();
        return dst;
    };
    layers_.resize(static_cast<size_t>(L));
    for (int64_t l = 0; l < L; ++l) {
        const LayerTensors& w = t.layers[static_cast<size_t>(l)];
        Layer& g = layers_[static_cast<size_t>(l)];
        // Converted and uploaded a stack at a time, so host memory holds at most one layer's copy.
        {
            const TernaryRows q = pack(w.q), k = pack(w.k), v = pack(w.v);
            g.qkv = stacked(words_.get() + wpos, {&q, &k, &v}, {&w.q, &w.k, &w.v});
            put_words(q), put_words(k), put_words(v);
        }
        {
            const TernaryRows o = pack(w.o);
            g.o = stacked(words_.get() + wpos, {&o}, {&w.o});
            put_words(o);
        }
        {
            const TernaryRows ga = pack(w.gate), up = pack(w.up);
            g.gate_up = stacked(words_.get() + wpos, {&ga, &up}, {&w.gate, &w.up});
            put_words(ga), put_words(up);
        }
        {
            const TernaryRows d = pack(w.down);
            g.down = stacked(words_.get() + wpos, {&d}, {&w.down});
            put_words(d);
        }
        g.attn_norm = put_norm(*w.attn_norm);
        g.ffn_norm = put_norm(*w.ffn_norm);
        g.attn_sub_norm = c.sub_norms ? put_norm(*w.attn_sub_norm) : nullptr;
        g.ffn_sub_norm = c.sub_norms ? put_norm(*w.ffn_sub_norm) : nullptr;
        if (c.qk_norm) {
            g.q_norm = put_norm(*w.attn_q_norm);
            g.k_norm = put_norm(*w.attn_k_norm);
        }
    }
    upload_qkv_biases(t);
    output_norm_ = put_norm(*t.output_norm);
    qkv_rows_ = static_cast<int>(c.attn_dim + 2 * c.kv_dim());

    // The embedding and head as f16 (converted when the file has f32), as the CPU reads them.
    const size_t table = static_cast<size_t>(c.vocab * c.dim);
    std::vector<uint16_t> embd_owned, head_owned;
    const uint16_t* embd = f16_values(*t.embedding, embd_owned);
    embd_ = DeviceBuffer<__half>(table);
    CUDA_CHECK(cudaMemcpy(embd_.get(), embd, table * 2, cudaMemcpyHostToDevice));
    const uint16_t* head = c.tied ? embd : f16_values(*t.output, head_owned);
    if (opts_.head == HeadType::Q8) {  // requantized to int8 rows exactly as the CPU's head="q8"
        ThreadPool pool(opts_.threads);
        const Q8Head h = requantize_head_q8(head, c.vocab, c.dim, pool);
        head_q8_ = DeviceBuffer<int8_t>(table);
        head_q8_scale_ = DeviceBuffer<float>(static_cast<size_t>(c.vocab));
        CUDA_CHECK(cudaMemcpy(head_q8_.get(), h.row(0), table, cudaMemcpyHostToDevice));
        CUDA_CHECK(cudaMemcpy(head_q8_scale_.get(), h.scales(), static_cast<size_t>(c.vocab) * 4, cudaMemcpyHostToDevice));
    } else if (c.tied) {
        head_ = embd_.get();
    } else {
        head_owned_ = DeviceBuffer<__half>(table);
        CUDA_CHECK(cudaMemcpy(head_owned_.get(), head, table * 2, cudaMemcpyHostToDevice));
        head_ = head_owned_.get();
    }
    file.release(*t.embedding);  // on the device now; the host reads neither again
    if (t.output) file.release(*t.output);

    // RoPE tables exactly as the CPU builds them (float64 angle, fp32 cos/sin), for every position.
    const int64_t half = c.head_dim / 2;
    std::vector<float> cs(static_cast<size_t>(ctx_ * half)), sn(cs.size());
    for (int64_t i = 0; i < half; ++i) {
        const double inv_freq = rope_inv_freq(c, i);
        for (int64_t p = 0; p < ctx_; ++p) {
            const double a = static_cast<double>(p) * inv_freq;
            cs[static_cast<size_t>(p * half + i)] = static_cast<float>(std::cos(a));
            sn[static_cast<size_t>(p * half + i)] = static_cast<float>(std::sin(a));
        }
    }
    cos_ = DeviceBuffer<float>(cs.size());
    sin_ = DeviceBuffer<float>(sn.size());
    CUDA_CHECK(cudaMemcpy(cos_.get(), cs.data(), cs.size() * 4, cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(sin_.get(), sn.data(), sn.size() * 4, cudaMemcpyHostToDevice));
}

void CudaModel::allocate() {
    const ModelConfig& c = cfg_;
    const int S = opts_.slots;
    M_ = std::max(opts_.max_batch, S);
    logit_rows_ = std::max(S, 64);  // all-logits requests run the head 64 rows at a time
    const size_t M = static_cast<size_t>(M_);

    kv_.f16 = opts_.kv_f16;
    kv_.n_layers = static_cast<int>(c.n_layers);
    kv_.ctx = static_cast<int>(ctx_);
    kv_.kv_dim = static_cast<int>(c.kv_dim());
    const size_t kv_elems = static_cast<size_t>(S) * c.n_layers * ctx_ * c.kv_dim();
    if (kv_.f16) {
        k16_ = DeviceBuffer<__half>(kv_elems);
        v16_ = DeviceBuffer<__half>(kv_elems);
        kv_.k = k16_.get();
        kv_.v = v16_.get();
    } else {
        k32_ = DeviceBuffer<float>(kv_elems);
        v32_ = DeviceBuffer<float>(kv_elems);
        kv_.k = k32_.get();
        kv_.v = v32_.get();
    }

    tok_buf_ = DeviceBuffer<int32_t>(M);
    pos_buf_ = DeviceBuffer<int32_t>(M);
    slot_buf_ = DeviceBuffer<int32_t>(M);
    x_ = DeviceBuffer<float>(M * c.dim);
    qkv_ = DeviceBuffer<float>(M * qkv_rows_);
    att_ = DeviceBuffer<float>(M * c.attn_dim);
    gate_ = DeviceBuffer<float>(M * c.ffn);
    xn_ = DeviceBuffer<float>(M * c.dim);
    logits_ = DeviceBuffer<float>(static_cast<size_t>(logit_rows_) * c.vocab);
    const size_t attn_ws = attention_decode_workspace_floats(S, static_cast<int>(c.n_heads), static_cast<int>(c.head_dim));
    attn_ws_ = DeviceBuffer<float>(std::max<size_t>(1, attn_ws));
    const size_t cols = static_cast<size_t>(std::max({c.dim_in, c.ffn_in, c.attn_in}));
    act_q_ = DeviceBuffer<int8_t>(M * cols);
    act_scale_ = DeviceBuffer<float>(M);
    act_sum_ = DeviceBuffer<int32_t>(M);
    if (opts_.gemm == PromptGemm::CublasLt)
        cublaslt_ = std::make_unique<CublasLtGemm>(static_cast<int>(std::max(2 * c.ffn, static_cast<int64_t>(qkv_rows_))),
                                                   static_cast<int>(cols), M_);

    d_tokens_ = DeviceBuffer<int32_t>(static_cast<size_t>(S));
    d_pos_ = DeviceBuffer<int32_t>(static_cast<size_t>(S));
    d_slots_ = DeviceBuffer<int32_t>(static_cast<size_t>(S));
    std::vector<int32_t> ids(static_cast<size_t>(S)), zeros(static_cast<size_t>(S), 0);
    for (int s = 0; s < S; ++s) ids[static_cast<size_t>(s)] = s;
    d_slots_.upload(ids.data(), ids.size(), stream_.get());
    d_tokens_.upload(zeros.data(), zeros.size(), stream_.get());
    d_pos_.upload(zeros.data(), zeros.size(), stream_.get());
    d_seen_ = DeviceBuffer<uint8_t>(static_cast<size_t>(S) * c.vocab);
    CUDA_CHECK(cudaMemsetAsync(d_seen_.get(), 0, d_seen_.bytes(), stream_.get()));
    d_step_ = DeviceBuffer<uint64_t>(static_cast<size_t>(S));
    CUDA_CHECK(cudaMemsetAsync(d_step_.get(), 0, d_step_.bytes(), stream_.get()));
    sample_ws_ = DeviceBuffer<uint8_t>(std::max<size_t>(1, sample_workspace_bytes(S, static_cast<int>(c.vocab))));
    if (opts_.fused_argmax) {  // the fused head's state: zero now, left zero by every step
        argmax_key_ = DeviceBuffer<unsigned long long>(1);
        argmax_count_ = DeviceBuffer<unsigned>(1);
        CUDA_CHECK(cudaMemsetAsync(argmax_key_.get(), 0, argmax_key_.bytes(), stream_.get()));
        CUDA_CHECK(cudaMemsetAsync(argmax_count_.get(), 0, argmax_count_.bytes(), stream_.get()));
    }
    pending_tok_.assign(static_cast<size_t>(S), 0);
    pending_pos_.assign(static_cast<size_t>(S), 0);
    // upload() used plain cudaMemcpy (legacy default stream). From pageable memory it may return before its
    // DMA has landed, and stream_ (non-blocking) does not wait for the legacy stream: wait for the device.
    CUDA_CHECK(cudaDeviceSynchronize());
    CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&h_tokens_), static_cast<size_t>(S) * sizeof(int32_t)));
}

size_t CudaModel::head_bytes() const {
    return head_q8_.size() ? head_q8_.bytes() + head_q8_scale_.bytes() : static_cast<size_t>(cfg_.vocab * cfg_.dim * 2);
}

size_t CudaModel::device_bytes() const {
    return words_.bytes() + norms_.bytes() + biases_.bytes() + embd_.bytes() + head_owned_.bytes() + head_q8_.bytes() + head_q8_scale_.bytes() + cos_.bytes() + sin_.bytes() +
           k32_.bytes() + v32_.bytes() + k16_.bytes() + v16_.bytes() + tok_buf_.bytes() + pos_buf_.bytes() +
           slot_buf_.bytes() + x_.bytes() + qkv_.bytes() + att_.bytes() + gate_.bytes() + xn_.bytes() +
           logits_.bytes() + attn_ws_.bytes() + act_q_.bytes() + act_scale_.bytes() + act_sum_.bytes() +
           d_seen_.bytes() + sample_ws_.bytes();
}

void CudaModel::upload_qkv_biases(const ModelTensors& t) {
    const size_t rows = static_cast<size_t>(cfg_.attn_dim + 2 * cfg_.kv_dim());
    size_t biased = 0;
    for (const LayerTensors& w : t.layers) biased += (w.q.bias || w.k.bias || w.v.bias) ? 1 : 0;
    if (biased == 0) return;  // rope_kv_write gets null: no work for models without biases
    // rope_kv_write adds the biases after qk_norm has run, where the CPU (and PyTorch) add them before it
    if (cfg_.qk_norm)
        throw std::invalid_argument("q/k/v biases together with QK-norm are not supported by the CUDA backend");
    biases_ = DeviceBuffer<float>(biased * rows);
    std::vector<float> host(rows);
    size_t at = 0;
    for (size_t l = 0; l < t.layers.size(); ++l) {
        const LayerTensors& w = t.layers[l];
        if (!(w.q.bias || w.k.bias || w.v.bias)) continue;
        std::fill(host.begin(), host.end(), 0.0f);  // a missing one of the three adds zeros
        size_t col = 0;
        for (const BitLinearTensor* b : {&w.q, &w.k, &w.v}) {
            if (b->bias) {
                const std::vector<float> v = f32_values(*b->bias);
                std::copy(v.begin(), v.end(), host.begin() + static_cast<std::ptrdiff_t>(col));
            }
            col += static_cast<size_t>(b->rows);
        }
        float* dst = biases_.get() + at;
        CUDA_CHECK(cudaMemcpy(dst, host.data(), rows * 4, cudaMemcpyHostToDevice));
        layers_[l].qkv_bias = dst;
        at += rows;
    }
}

void CudaModel::check_slot(int slot) const {
    if (slot < 0 || slot >= opts_.slots)
        throw std::out_of_range("slot " + std::to_string(slot) + " is out of range [0, " + std::to_string(opts_.slots) + ")");
}

void CudaModel::matmul(const DevTernary& w, int n, float* y, int ldy, Epilogue ep) {
    const DevActs a = acts(w.cols);
    if (n <= kGemvMaxTokens) ternary_gemv(w, a, n, y, ldy, ep, stream_.get());
    else if (cublaslt_) cublaslt_->run(w, a, n, y, ldy, ep, stream_.get());
    else ternary_gemm_mma(w, a, n, y, ldy, ep, stream_.get());
}

void CudaModel::normed_matmul(const DevTernary& w, const float* x, int ldx, const float* norm_w, int d, int n,
                              float* y, int ldy, Epilogue ep) {
    rmsnorm_quant(x, ldx, norm_w, n, d, cfg_.rms_eps, acts(w.cols), stream_.get());
    matmul(w, n, y, ldy, ep);
}

void CudaModel::layers(int n, const int32_t* d_pos, const int32_t* d_slot, bool prompt, int pos0, int slot) {
    const ModelConfig& c = cfg_;
    const int D = static_cast<int>(c.dim), F = static_cast<int>(c.ffn), H = static_cast<int>(c.n_heads);
    const int Hkv = static_cast<int>(c.n_kv_heads), hd = static_cast<int>(c.head_dim);
    const int QD = static_cast<int>(c.attn_dim);  // att_ rows, o's inputs
    const int n_layers = static_cast<int>(c.n_layers);
    cudaStream_t s = stream_.get();
    const Epilogue glu = c.activation == Activation::Relu2 ? Epilogue::GluRelu2 : Epilogue::GluSilu;

    for (int l = 0; l < n_layers; ++l) {
        const Layer& L = layers_[static_cast<size_t>(l)];
        normed_matmul(L.qkv, x_.get(), D, L.attn_norm, D, n, qkv_.get(), qkv_rows_, Epilogue::Store);
        if (c.qk_norm) qk_norm(qkv_.get(), qkv_rows_, n, H, Hkv, hd, L.q_norm, L.k_norm, c.rms_eps, s);
        rope_kv_write(qkv_.get(), qkv_rows_, n, d_pos, d_slot, l, H, Hkv, hd, cos_.get(), sin_.get(), kv_, s,
                      L.qkv_bias);
        if (prompt)
            attention_prefill(qkv_.get(), qkv_rows_, n, pos0, slot, l, H, Hkv, hd, kv_, att_.get(), QD, s);
        else
            attention_decode(qkv_.get(), qkv_rows_, n, d_pos, d_slot, l, H, Hkv, hd, kv_, att_.get(), QD,
                             attn_ws_.get(), s);
        normed_matmul(L.o, att_.get(), QD, L.attn_sub_norm, QD, n, x_.get(), D, Epilogue::AddTo);
        normed_matmul(L.gate_up, x_.get(), D, L.ffn_norm, D, n, gate_.get(), F, glu);
        normed_matmul(L.down, gate_.get(), F, L.ffn_sub_norm, F, n, x_.get(), D, Epilogue::AddTo);
    }
}

void CudaModel::head(int row0, int n) {
    const int D = static_cast<int>(cfg_.dim);
    const float* x = x_.get() + static_cast<size_t>(row0) * D;
    if (head_q8_.size()) {  // as the CPU's q8 head: the normed rows quantized per token, then the int8 matmul
        const DevActs a = acts(D);
        rmsnorm_quant(x, D, output_norm_, n, D, cfg_.rms_eps, a, stream_.get());
        head_q8(head_q8_.get(), head_q8_scale_.get(), static_cast<int>(cfg_.vocab), D, a, n, logits_.get(), stream_.get());
        return;
    }
    rmsnorm(x, D, output_norm_, n, D, cfg_.rms_eps, xn_.get(), D, stream_.get());
    head_f16(head_, static_cast<int>(cfg_.vocab), D, xn_.get(), n, logits_.get(), stream_.get());
}

void CudaModel::prefill(int slot, const int32_t* tokens, int64_t n, int64_t pos0, float* host_logits) {
    check_slot(slot);
    check_forward_args("prefill", tokens, n, pos0, ctx_, cfg_.vocab);
    cudaStream_t s = stream_.get();
    const int V = static_cast<int>(cfg_.vocab), D = static_cast<int>(cfg_.dim);
    for (int64_t c0 = 0; c0 < n; c0 += opts_.max_batch) {
        const int m = static_cast<int>(std::min<int64_t>(opts_.max_batch, n - c0));
        const int p0 = static_cast<int>(pos0 + c0);
        tok_buf_.upload(tokens + c0, static_cast<size_t>(m), s);
        fill_positions_kernel<<<(m + 255) / 256, 256, 0, s>>>(pos_buf_.get(), slot_buf_.get(), m, p0, slot);
        CUDA_CHECK_LAUNCH();
        embed(embd_.get(), D, tok_buf_.get(), m, x_.get(), s);
        layers(m, pos_buf_.get(), slot_buf_.get(), /*prompt=*/true, p0, slot);
        if (host_logits) {
            for (int r = 0; r < m; r += logit_rows_) {
                const int k = std::min(logit_rows_, m - r);
                head(r, k);
                CUDA_CHECK(cudaMemcpyAsync(host_logits + (c0 + r) * V, logits_.get(), static_cast<size_t>(k) * V * 4,
                                           cudaMemcpyDeviceToHost, s));
                if (c0 + m == n && r + k == m && k > 1)  // the last token's logits to row 0 (sample_after_prefill)
                    CUDA_CHECK(cudaMemcpyAsync(logits_.get(), logits_.get() + static_cast<size_t>(k - 1) * V,
                                               static_cast<size_t>(V) * 4, cudaMemcpyDeviceToDevice, s));
                stream_.sync();  // logits_ is reused by the next rows
            }
        } else if (c0 + m == n) {
            head(m - 1, 1);  // the last token's logits stay on the device for sampling
        }
    }
    stream_.sync();
}

void CudaModel::begin_sequence(int slot, const std::vector<int32_t>& seen, const SamplingParams& p) {
    check_slot(slot);
    DevSampling d;
    d.greedy = is_greedy(p);
    d.temperature = p.temperature;
    d.top_k = p.top_k;
    d.top_p = p.top_p;
    d.repetition_penalty = p.repetition_penalty;
    d.seed = p.seed;
    const bool same = d.greedy == sampling_.greedy && d.temperature == sampling_.temperature &&
                      d.top_k == sampling_.top_k && d.top_p == sampling_.top_p &&
                      d.repetition_penalty == sampling_.repetition_penalty && d.seed == sampling_.seed;
    if (!same) graphs_.clear();  // the parameters are baked into the captured sample() launch
    sampling_ = d;
    const int V = static_cast<int>(cfg_.vocab);
    std::vector<uint8_t> mask(static_cast<size_t>(V), 0);
    for (int32_t t : seen)
        if (t >= 0 && t < V) mask[static_cast<size_t>(t)] = 1;
    CUDA_CHECK(cudaMemcpyAsync(d_seen_.get() + static_cast<size_t>(slot) * V, mask.data(), mask.size(),
                               cudaMemcpyHostToDevice, stream_.get()));
    CUDA_CHECK(cudaMemsetAsync(d_step_.get() + slot, 0, 8, stream_.get()));  // the slot's RNG counter
    stream_.sync();  // mask is a host temporary
}

int32_t CudaModel::sample_after_prefill(int slot, int64_t pos) {
    check_slot(slot);
    cudaStream_t s = stream_.get();
    const int V = static_cast<int>(cfg_.vocab);
    DevSampling ps = sampling_;  // the decode graph's row `slot` draws with seed + slot: so does its first token
    ps.seed += static_cast<uint64_t>(slot);
    sample(logits_.get(), V, 1, ps, d_seen_.get() + static_cast<size_t>(slot) * V, d_step_.get() + slot,
           d_tokens_.get() + slot, sample_ws_.get(), s);
    const int32_t p = static_cast<int32_t>(pos);
    CUDA_CHECK(cudaMemcpyAsync(d_pos_.get() + slot, &p, 4, cudaMemcpyHostToDevice, s));
    CUDA_CHECK(cudaMemcpyAsync(h_tokens_ + slot, d_tokens_.get() + slot, 4, cudaMemcpyDeviceToHost, s));
    stream_.sync();
    pending_tok_[static_cast<size_t>(slot)] = h_tokens_[slot];
    pending_pos_[static_cast<size_t>(slot)] = pos;
    return h_tokens_[slot];
}

void CudaModel::download_logits(int rows, float* out) const {
    if (rows < 0 || rows > logit_rows_) throw std::out_of_range("download_logits: rows out of range");
    CUDA_CHECK(cudaMemcpyAsync(out, logits_.get(), static_cast<size_t>(rows) * cfg_.vocab * 4, cudaMemcpyDeviceToHost,
                               stream_.get()));
    stream_.sync();
}

void CudaModel::set_pending(int slot, int32_t token, int64_t pos) {
    check_slot(slot);
    if (token < 0 || token >= cfg_.vocab) throw std::out_of_range("token id " + std::to_string(token) + " is out of range");
    const int32_t p = static_cast<int32_t>(pos);
    CUDA_CHECK(cudaMemcpyAsync(d_tokens_.get() + slot, &token, 4, cudaMemcpyHostToDevice, stream_.get()));
    CUDA_CHECK(cudaMemcpyAsync(d_pos_.get() + slot, &p, 4, cudaMemcpyHostToDevice, stream_.get()));
    stream_.sync();
    pending_tok_[static_cast<size_t>(slot)] = token;
    pending_pos_[static_cast<size_t>(slot)] = pos;
}

void CudaModel::record_decode_step(int B) {
    cudaStream_t s = stream_.get();
    const int V = static_cast<int>(cfg_.vocab), D = static_cast<int>(cfg_.dim);
    // The step's first kernel follows a copy (or the previous graph): a plain launch.
    mark_seen_kernel<<<(B + 127) / 128, 128, 0, s>>>(d_tokens_.get(), d_seen_.get(), V, B);
    CUDA_CHECK_LAUNCH();
    {
        // pdl: every kernel from here to advance may start while the one ahead drains (launch.cuh). The GEMMs
        // of a batched step (B > kGemvMaxTokens) and cuBLASLt do not take part: they launch plainly.
        PdlScope pdl(pdl_);
        embed(embd_.get(), D, d_tokens_.get(), B, x_.get(), s);
        layers(B, d_pos_.get(), d_slots_.get(), /*prompt=*/false, 0, 0);
        if (fused_argmax_active(B)) {
            rmsnorm(x_.get(), D, output_norm_, 1, D, cfg_.rms_eps, xn_.get(), D, s);
            head_f16_argmax(head_, V, D, xn_.get(), logits_.get(), argmax_key_.get(), argmax_count_.get(),
                            d_tokens_.get(), d_step_.get(), s);
        } else {
            head(0, B);
            sample(logits_.get(), V, B, sampling_, d_seen_.get(), d_step_.get(), d_tokens_.get(), sample_ws_.get(), s);
        }
        launch(advance_kernel, (B + 127) / 128, 128, 0, s, d_pos_.get(), B);
    }
    CUDA_CHECK(cudaMemcpyAsync(h_tokens_, d_tokens_.get(), static_cast<size_t>(B) * 4, cudaMemcpyDeviceToHost, s));
}

bool CudaModel::fused_argmax_active(int B) const {
    const bool greedy = sampling_.greedy || !(sampling_.temperature > 0.0f);
    return opts_.fused_argmax && B == 1 && greedy && sampling_.repetition_penalty == 1.0f && head_ && !head_q8_.size();
}

void CudaModel::launch_decode_step(int B) {
    if (!opts_.graphs) return record_decode_step(B);
    cudaStream_t s = stream_.get();
    auto it = graphs_.find(B);
    if (it == graphs_.end()) it = graphs_.emplace(B, capture_graph(s, [&] { record_decode_step(B); })).first;
    it->second.launch(s);
}

void CudaModel::decode_steps(int B, int K, int32_t* out) {
    if (K < 1) throw std::out_of_range("decode_steps: K must be >= 1");
    if (K == 1) return decode_step(B, out);
    if (B < 1 || B > opts_.slots)
        throw std::out_of_range("decode batch " + std::to_string(B) + " is out of range [1, " + std::to_string(opts_.slots) + "]");
    for (int b = 0; b < B; ++b)
        if (pending_pos_[static_cast<size_t>(b)] + K > ctx_)
            throw std::out_of_range("slot " + std::to_string(b) + ": " + std::to_string(K) + " steps from position " +
                                    std::to_string(pending_pos_[static_cast<size_t>(b)]) + " pass the context length " +
                                    std::to_string(ctx_));
    cudaStream_t s = stream_.get();
    if (d_hist_.size() < static_cast<size_t>(K) * B) d_hist_ = DeviceBuffer<int32_t>(static_cast<size_t>(K) * B);
    for (int k = 0; k < K; ++k) {
        launch_decode_step(B);
        CUDA_CHECK(cudaMemcpyAsync(d_hist_.get() + static_cast<size_t>(k) * B, d_tokens_.get(), static_cast<size_t>(B) * 4,
                                   cudaMemcpyDeviceToDevice, s));
    }
    CUDA_CHECK(cudaMemcpyAsync(out, d_hist_.get(), static_cast<size_t>(K) * B * 4, cudaMemcpyDeviceToHost, s));
    stream_.sync();
    for (int b = 0; b < B; ++b) {
        pending_tok_[static_cast<size_t>(b)] = out[static_cast<size_t>(K - 1) * B + b];
        pending_pos_[static_cast<size_t>(b)] += K;
    }
}

void CudaModel::decode_step(int B, int32_t* out) {
    if (B < 1 || B > opts_.slots)
        throw std::out_of_range("decode batch " + std::to_string(B) + " is out of range [1, " + std::to_string(opts_.slots) + "]");
    for (int b = 0; b < B; ++b)
        if (pending_pos_[static_cast<size_t>(b)] >= ctx_)
            throw std::out_of_range("slot " + std::to_string(b) + " is at position " +
                                    std::to_string(pending_pos_[static_cast<size_t>(b)]) + ", past the context length " +
                                    std::to_string(ctx_));
    launch_decode_step(B);
    stream_.sync();
    for (int b = 0; b < B; ++b) {
        out[b] = h_tokens_[b];
        pending_tok_[static_cast<size_t>(b)] = h_tokens_[b];
        pending_pos_[static_cast<size_t>(b)] += 1;
    }
}

}  // namespace cuda
}  // namespace bllama

#include "cuda/layout.h"

#include <cstring>
#include <memory>
#include <string>

#include "engine/config.h"
#include "kernels/pack.h"

namespace bllama {

int8_t TernaryRows::code(int64_t r, int64_t c) const {
    const uint32_t word = words[static_cast<size_t>(r * words_per_row() + c / 16)];
    const int j = static_cast<int>((c % 16) / 4), b = static_cast<int>(c % 4);
    return static_cast<int8_t>(((ternary_rows_unpack(word, j) >> (8 * b)) & 0xFF) - 1);
}

TernaryRows ternary_rows_from_gguf(const GgufTensor& t) {
    TernaryEncoding enc;
    switch (static_cast<GgmlType>(t.type)) {
        case GgmlType::TQ2_0: enc = TernaryEncoding::TQ2_0; break;
        case GgmlType::TQ1_0: enc = TernaryEncoding::TQ1_0; break;
        case GgmlType::I2_S: enc = TernaryEncoding::I2_S; break;
        default: throw ModelError("tensor '" + t.name + "' has type " + ggml_type_name(t.type) + ", not a ternary type");
    }
    TernaryRows out;
    out.cols = t.dims[0];
    out.rows = t.n_dims == 2 ? t.dims[1] : 0;
    if (t.n_dims != 2 || out.rows < 0 || out.cols <= 0 || out.cols % 256 != 0)
        throw ModelError("tensor '" + t.name + "': ternary_rows_from_gguf needs 2 dims with cols a positive multiple of 256");
    const int64_t wpr = out.words_per_row(), nb = out.cols / 256;
    out.words.resize(static_cast<size_t>(out.rows * wpr));
    std::vector<float> d(static_cast<size_t>(nb));
    std::unique_ptr<bool[]> nonzero(new bool[static_cast<size_t>(nb)]);
    ScaleTracker tr;
    try {
        const float tensor_scale = enc == TernaryEncoding::I2_S ? i2_s_scale(t.data, out.rows, out.cols, "I2_S") : 0.0f;
        for (int64_t r = 0; r < out.rows; ++r) {
            uint8_t* dst = reinterpret_cast<uint8_t*>(out.words.data() + r * wpr);
            repack_ternary_row(enc, t.data, out.rows, out.cols, r, dst, 4, d.data(), nonzero.get(),
                               ggml_type_name(t.type).c_str());
            for (int64_t b = 0; b < nb; ++b)
                if (nonzero[b]) tr.add(d[static_cast<size_t>(b)]);
        }
        // As the CPU matrix: I2_S has its one scale even when every code is 0; else the nonzero blocks' scale.
        out.scale = enc == TernaryEncoding::I2_S ? tensor_scale : (tr.any ? tr.value : 0.0f);
    } catch (const std::invalid_argument& e) {
        throw ModelError("tensor '" + t.name + "': " + e.what());
    }
    if (!tr.uniform)
        throw ModelError("tensor '" + t.name +
                         "' has different scales in different 256-blocks; the CUDA backend needs one scale per "
                         "tensor (run this file on the CPU: device='cpu')");
    return out;
}

TernaryRows ternary_rows_from_codes(const int8_t* q, int64_t rows, int64_t cols, float scale) {
    if (rows <= 0 || cols <= 0 || cols % 256 != 0)
        throw std::invalid_argument("ternary_rows_from_codes: need rows > 0 and cols a positive multiple of 256");
    TernaryRows t;
    t.rows = rows;
    t.cols = cols;
    t.scale = scale;
    const int64_t wpr = t.words_per_row();
    t.words.assign(static_cast<size_t>(rows * wpr), 0u);
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) {
            const int v = q[r * cols + c];
            if (v < -1 || v > 1) throw std::invalid_argument("ternary_rows_from_codes: code outside {-1,0,1}");
            const int64_t j = (c % 16) / 4, b = c % 4;
            t.words[static_cast<size_t>(r * wpr + c / 16)] |= static_cast<uint32_t>(v + 1) << (8 * b + 2 * j);
        }
    return t;
}

void ternary_rows_matmul_ref(const TernaryRows& w, const QuantizedActs& x, float* y, int64_t ldy) {
    if (x.cols != w.cols) throw std::invalid_argument("ternary_rows_matmul_ref: activation length != matrix cols");
    const int64_t wpr = w.words_per_row();
    for (int64_t t = 0; t < x.n_tokens; ++t) {
        const int8_t* xq = x.q.data() + t * x.cols;
        int32_t row_sum = 0;
        for (int64_t k = 0; k < x.cols; ++k) row_sum += xq[k];
        for (int64_t r = 0; r < w.rows; ++r) {
            int32_t acc = 0;
            for (int64_t c = 0; c < wpr; ++c) {
                const uint32_t word = w.words[static_cast<size_t>(r * wpr + c)];
                for (int j = 0; j < 4; ++j) {
                    const uint32_t u4 = ternary_rows_unpack(word, j);  // what dp4a reads
                    for (int b = 0; b < 4; ++b)
                        acc += static_cast<int32_t>((u4 >> (8 * b)) & 0xFF) * xq[c * 16 + j * 4 + b];
                }
            }
            acc -= row_sum;
            y[t * ldy + r] = static_cast<float>(acc) * (w.scale / x.act_scale[static_cast<size_t>(t)]);
        }
    }
}

}  // namespace bllama

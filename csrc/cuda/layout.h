// The GPU's ternary weight layout ("row-major 2-bit words"), built on the host at load and checked
// on the CPU: the device kernels (csrc/cuda) read exactly these words.
//
// A matrix [rows, cols] (cols % 256 == 0) is rows * cols/16 uint32 words, row-major: word w of row r
// covers columns [16w, 16w + 16). Column 16w + 4j + b sits at bits 8b + 2j .. 8b + 2j + 1 and holds the
// unsigned code u = q + 1 in {0, 1, 2}. Why: (word >> 2j) & 0x03030303 yields, one per byte, the codes
// of four consecutive columns 16w+4j .. 16w+4j+3, which is what one dp4a / one int8 MMA register
// multiplies against four contiguous int8 activations. Unsigned codes need no sign fix-up in registers:
// sum_k q_k x_k = sum_k u_k x_k - sum_k x_k, and sum_k x_k (the activation row sum) is computed once per
// token by the quantizer. It is the same per-row dword as the CPU layout (kernels/pack.h) with
// the 16-row interleave undone.
//
// Scales: the GPU backend keeps one fp32 scale per tensor (the bLLaMa and BitNet convention, where every
// TQ2_0 block's d is the same). Blocks whose codes are all zero may hold any d. A file with truly
// per-block scales is refused with a ModelError that says so.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/gguf.h"
#include "kernels/ternary.h"

namespace bllama {

struct TernaryRows {
    int64_t rows = 0, cols = 0;
    std::vector<uint32_t> words;  // [rows, cols / 16]
    float scale = 0.0f;           // the tensor's one scale (0 when every code is 0)

    int64_t words_per_row() const { return cols / 16; }
    int8_t code(int64_t r, int64_t c) const;  // q in {-1, 0, 1}
};

// Straight from a GGUF tensor's bytes (TQ2_0, TQ1_0 or I2_S; ggml dims {cols, rows}, cols % 256 == 0), with the
// decoders the CPU layout uses (kernels/pack.h): the load path, one repack. Throws ModelError naming the tensor for
// per-block scales, a code 3 or a non-finite I2_S scale.
TernaryRows ternary_rows_from_gguf(const GgufTensor& t);
// From codes q in {-1, 0, 1}, row-major [rows, cols] (tests, benchmarks).
TernaryRows ternary_rows_from_codes(const int8_t* q, int64_t rows, int64_t cols, float scale);

// The four unsigned codes of columns 16w + 4j .. +3 packed one per byte: the unpack every GPU kernel does.
inline uint32_t ternary_rows_unpack(uint32_t word, int j) { return (word >> (2 * j)) & 0x03030303u; }

// Host reference of the GPU matmul, straight from the words: y[t * ldy + r] = float(acc) * (scale / a_t)
// with acc = sum_k u * q - row_sum (the integer dot product), for all rows and tokens. Bit-identical to
// ternary_matmul on the CPU matrix the words came from.
void ternary_rows_matmul_ref(const TernaryRows& w, const QuantizedActs& x, float* y, int64_t ldy);

}  // namespace bllama

// Private to csrc/kernels (and the CUDA layout, which reads it): the packed ternary weight layout that
// pack.cpp builds and every ternary kernel reads.
//
// Weight layout ("16-row interleaved, 2-bit planes"). Rows are padded to a multiple of 16 and grouped
// in 16s. Group g is one contiguous stream of cols/16 chunks of 64 bytes; chunk c covers columns
// [16c, 16c+16) of the 16 rows. Byte 4*r + s of a chunk holds, at bits 2j..2j+1, the code (q + 1) of
// row 16g + r, column 16c + 4j + s.
// Why: a 64-byte load shifted right by 2j and masked with 3 gives, in each 32-bit lane, the four
// unsigned codes of one row for four consecutive columns, which is exactly what vpdpbusd (and
// vpmaddubsw + vpmaddwd) multiplies against one broadcast dword of contiguous int8 activations. So the
// activations stay in plain order, one vector accumulates 16 (AVX-512) or 8 (AVX2) rows with no
// horizontal reduction, and the GEMM gets its packed-B panel straight from the stored bytes.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>

#include "kernels/ternary.h"

namespace bllama {

struct FreeDeleter {
    void operator()(void* p) const noexcept { std::free(p); }
};
template <class T>
using AlignedArray = std::unique_ptr<T[], FreeDeleter>;

// 64-byte aligned, zero-filled, never null (size 0 still allocates one line).
template <class T>
AlignedArray<T> make_aligned(size_t n) {
    const size_t bytes = ((n * sizeof(T)) + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, bytes ? bytes : 64);
    if (!p) throw std::bad_alloc();
    std::memset(p, 0, bytes ? bytes : 64);
    return AlignedArray<T>(static_cast<T*>(p));
}

constexpr int64_t kBlock = 256;       // columns per scale block (GGUF QK_K)
constexpr int64_t kGroupRows = 16;    // rows interleaved per stream
constexpr int64_t kChunkCols = 16;    // columns per 64-byte chunk
constexpr int64_t kChunkBytes = 64;

struct TernaryMatrix::Impl {
    int64_t rows = 0, cols = 0;
    int64_t groups = 0;               // ceil(rows / 16)
    int64_t nb = 0;                   // cols / 256
    AlignedArray<uint8_t> packed;     // groups * cols * 4 bytes
    // Per-block scales as [group][block][16 rows] so a vector load gives 16 rows of one block.
    // All-zero blocks hold 0 whatever the file said: their d is meaningless and may be inf/nan.
    AlignedArray<float> d;
    bool uniform = true;
    float scale = 0.0f;               // the common d when uniform

    const uint8_t* group_ptr(int64_t g) const { return packed.get() + g * cols * 4; }
    float* d_ptr(int64_t g) { return d.get() + g * nb * kGroupRows; }
    const float* d_ptr(int64_t g) const { return d.get() + g * nb * kGroupRows; }
};

// Shared by every family: sizes out's buffers (no allocation when already large enough).
void resize_acts(QuantizedActs& out, int64_t n_tokens, int64_t cols);

// ---------------------------------------------------------------------------------------------
// The GGUF ternary decoders, shared with the GPU layout (cuda/layout.h) so that both build from the file's
// bytes with one decoder each.

enum class TernaryEncoding { TQ2_0, TQ1_0, I2_S };  // engine/gguf.h's GgmlType of the same names

// Row r of a GGUF ternary tensor (data: the whole tensor as the file stores it; cols % 256 == 0) repacked into
// the dwords both weight layouts are made of: dword c holds columns [16c, 16c + 16), column 16c + 4j + s at bits
// 8s + 2j as the code q + 1. Dword c goes to dst + c * stride bytes: kChunkBytes in this layout (16 rows
// interleaved), 4 in the GPU's plain rows. For each 256-block b, nonzero[b] says whether it has a nonzero code
// and d[b] is its scale (TQ2_0 / TQ1_0: the block's d; I2_S: the tensor's one scale, which the caller checks
// once with i2_s_scale). Throws std::invalid_argument starting with `who` on code 3.
void repack_ternary_row(TernaryEncoding enc, const uint8_t* data, int64_t rows, int64_t cols, int64_t r,
                        uint8_t* dst, int64_t stride, float* d, bool* nonzero, const char* who);
// The fp32 scale after an I2_S tensor's rows * cols / 4 code bytes; throws std::invalid_argument starting with
// `who` when it is not finite.
float i2_s_scale(const uint8_t* data, int64_t rows, int64_t cols, const char* who);

// Tracks TernaryMatrix::uniform_scale() while nonzero blocks are added: the first one's d (as fp32 bits, so +0
// and -0 or two nan payloads never count as equal) fixes the scale.
struct ScaleTracker {
    bool any = false, uniform = true;
    uint32_t bits = 0;
    float value = 0.0f;
    void add(float d) {
        uint32_t b;
        std::memcpy(&b, &d, sizeof b);
        if (!any) {
            any = true;
            bits = b;
            value = d;
        } else if (b != bits) {
            uniform = false;
        }
    }
};

}  // namespace bllama

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

#include "kernels/huge_pages.h"
#include "kernels/ternary.h"

namespace bllama {

// Frees its own allocation, or, for memory carved from a WeightArena, drops its share of the arena's buffer.
struct FreeDeleter {
    std::shared_ptr<void> owner;
    void operator()(void* p) const noexcept {
        if (!owner) std::free(p);
    }
};
template <class T>
using AlignedArray = std::unique_ptr<T[], FreeDeleter>;

// 64-byte aligned (2 MiB and on huge pages from 2 MiB up: huge_pages.h), zero-filled, never null (size 0 still
// allocates one line).
template <class T>
AlignedArray<T> make_aligned(size_t n) {
    const size_t bytes = ((n * sizeof(T)) + 63) / 64 * 64, align = large_alignment(bytes, 64);
    void* p = std::aligned_alloc(align, bytes ? (bytes + align - 1) / align * align : 64);
    if (!p) throw std::bad_alloc();
    advise_huge_pages(p, bytes);
    std::memset(p, 0, bytes ? bytes : 64);
    return AlignedArray<T>(static_cast<T*>(p));
}

constexpr int64_t kBlock = 256;       // columns per scale block (GGUF QK_K)
constexpr int64_t kGroupRows = 16;    // rows interleaved per stream
constexpr int64_t kChunkCols = 16;    // columns per 64-byte chunk
constexpr int64_t kChunkBytes = 64;

// Base-3 layout (TernaryLayout::Base3, "16-row interleaved, five trits per byte"): 1.625 bits per weight, the
// 1.6-bit form of TQ1_0 files. Rows are grouped in 16s as above; group g is one contiguous stream of nb blocks of
// kB3BlockBytes. A block's 256 columns are 12 chunks of 20 columns and a tail chunk of 16, 64 bytes each. Byte
// 4*r + s of chunk c < 12 holds the five codes (q + 1) of row 16g + r at columns 20c + 4n + s, n = 0..4; the tail
// chunk holds four, at columns 240 + 4n + s. A byte's trits t_0 (most significant) .. t_{k-1} are stored as the
// fixed-point fraction B = ceil(v * 256 / 3^k), v = sum t_n 3^(k-1-n): multiplying B by 3^n (mod 256) brings
// trit n to the top, where it is floor(3 x / 256), i.e. [x >= 86] + [x >= 171] (base3_trit).
// Why: plane n of a chunk (trit n of its 64 bytes) is, like a 2-bit plane above, 16 rows x 4 consecutive
// columns in dword lanes, which vpdpbusd multiplies against one broadcast dword of plain-order activations; a
// plane costs two byte adds (the next x = 3x) and two unsigned compares instead of a shift and a mask, and the
// stream is 0.81x the 2-bit layout's bytes.
constexpr int64_t kB3ChunkCols = 20;                  // columns per full chunk (5 trits per byte)
constexpr int64_t kB3FullChunks = 12;                 // full chunks per block: columns [0, 240)
constexpr int64_t kB3TailCol = kB3FullChunks * kB3ChunkCols;  // the 16-column tail chunk (4 trits per byte)
constexpr int64_t kB3BlockBytes = (kB3FullChunks + 1) * kChunkBytes;  // 832 per 16 rows x 256 columns
constexpr uint8_t kB3Zero5 = 128, kB3Zero4 = 127;     // bytes of five / four zero weights (codes 1)

// Trit n of a base-3 byte.
inline uint8_t base3_trit(uint8_t b, int n) {
    static constexpr uint8_t kPow3[5] = {1, 3, 9, 27, 81};
    const uint8_t x = static_cast<uint8_t>(b * kPow3[n]);
    return static_cast<uint8_t>((x * 3) >> 8);
}

struct TernaryMatrix::Impl {
    int64_t rows = 0, cols = 0;
    int64_t groups = 0;               // ceil(rows / 16)
    int64_t nb = 0;                   // cols / 256
    bool base3 = false;               // TernaryLayout::Base3 (packed is then groups * nb * kB3BlockBytes bytes)
    AlignedArray<uint8_t> packed;     // groups * cols * 4 bytes (2-bit layout)
    // Per-block scales as [group][block][16 rows] so a vector load gives 16 rows of one block.
    // All-zero blocks hold 0 whatever the file said: their d is meaningless and may be inf/nan.
    AlignedArray<float> d;
    bool uniform = true;
    float scale = 0.0f;               // the common d when uniform

    const uint8_t* group_ptr(int64_t g) const { return packed.get() + g * cols * 4; }
    const uint8_t* group_ptr3(int64_t g) const { return packed.get() + g * nb * kB3BlockBytes; }
    float* d_ptr(int64_t g) { return d.get() + g * nb * kGroupRows; }
    const float* d_ptr(int64_t g) const { return d.get() + g * nb * kGroupRows; }
};

// Shared by every family: sizes out's buffers (no allocation when already large enough).
void resize_acts(QuantizedActs& out, int64_t n_tokens, int64_t cols);

// Row r of a base-3 matrix as codes in {-1, 0, 1} (out: cols values): the slow decode the reference and the
// tests read.
void base3_row_codes(const TernaryMatrix::Impl& m, int64_t r, int8_t* out);

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

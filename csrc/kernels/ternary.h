// Ternary weight x int8 activation kernels: the contract between the kernels and the model.
//
// The scalar reference (ref.cpp) is what every SIMD path (ternary_avx2.cpp, ternary_avx512.cpp) must equal
// exactly (integer accumulation, same float epilogue); pack.cpp builds the weight layout. The kernel kind is
// chosen once (dispatch.h); tests can force any supported kind.
// Math: docs/architecture.md ("BitLinear, inference form").
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>
#include <vector>

#include "kernels/dispatch.h"
#include "kernels/huge_pages.h"

namespace bllama {

// 64-byte aligned storage so that SIMD loads of activation rows never split cache lines; from 2 MiB up (the
// 4-bit and int8 heads) 2 MiB aligned and on huge pages (huge_pages.h).
template <class T>
struct AlignedAllocator {
    using value_type = T;
    static constexpr size_t kAlign = 64;
    AlignedAllocator() noexcept = default;
    template <class U>
    AlignedAllocator(const AlignedAllocator<U>&) noexcept {}
    T* allocate(size_t n) {
        const size_t bytes = (n * sizeof(T) + kAlign - 1) / kAlign * kAlign, align = large_alignment(bytes, kAlign);
        void* p = std::aligned_alloc(align, bytes ? (bytes + align - 1) / align * align : kAlign);
        if (!p) throw std::bad_alloc();
        advise_huge_pages(p, bytes);
        return static_cast<T*>(p);
    }
    void deallocate(T* p, size_t) noexcept { std::free(p); }
    template <class U>
    bool operator==(const AlignedAllocator<U>&) const noexcept { return true; }
    template <class U>
    bool operator!=(const AlignedAllocator<U>&) const noexcept { return false; }
};

// How a TernaryMatrix holds its codes (pack.h): TwoBit, 2 bits per weight (every kernel kind); Base3, five
// trits per byte, 1.625 bits per weight, 0.81x the bytes each decode token reads (the 1.6-bit path of TQ1_0
// files; every SIMD kind has a base-3 kernel, ternary1_<isa>.cpp; see has_base3_kernel).
enum class TernaryLayout { TwoBit, Base3 };

// One huge-page-backed buffer that the packed codes of many matrices (a model's) are carved from: every matrix's
// codes then sit on 2 MiB pages whatever its own size (a 1 MiB q/k/v/o projection alone gets 4 KiB pages, or wastes
// 1 MiB when rounded up), and the memory is their sum rounded up to one huge page. Matrices that take from it share
// its ownership: it is freed with the last of them.
class WeightArena {
public:
    explicit WeightArena(size_t bytes);  // std::bad_alloc when the buffer cannot be had
    // `bytes` from the buffer, 64-byte aligned, or nullptr when it has no room left (the caller allocates its own).
    uint8_t* take(size_t bytes);
    const std::shared_ptr<void>& owner() const { return slab_; }
    size_t size() const { return size_; }
    size_t used() const { return used_; }

private:
    std::shared_ptr<void> slab_;
    size_t size_ = 0, used_ = 0;
};

// A ternary weight matrix [rows, cols] held at ~2 or ~1.6 bits per weight in the kernels' own layout.
// scale(r, k) is the fp32 scale of the 256-block holding element (r, k); uniform_scale() is set when
// every block that has a nonzero code carries the same scale (the bLLaMa export), which allows a
// faster epilogue.
class TernaryMatrix {
public:
    // From GGUF TQ2_0 / TQ1_0 block data (rows * cols/256 blocks, row-major). cols % 256 == 0.
    // Throws std::invalid_argument on bad shapes.
    // With `arena`, the packed codes are taken from it where it has room (WeightArena).
    static TernaryMatrix from_tq2_0(const uint8_t* blocks, int64_t rows, int64_t cols, WeightArena* arena = nullptr);
    static TernaryMatrix from_tq1_0(const uint8_t* blocks, int64_t rows, int64_t cols,
                                    TernaryLayout layout = TernaryLayout::TwoBit, WeightArena* arena = nullptr);
    // From bitnet.cpp's I2_S tensor data: rows * cols / 4 bytes of codes (128 values per 32 bytes, row-major),
    // then the tensor's fp32 scale. cols % 256 == 0. Throws std::invalid_argument on bad shapes, code 3 or a
    // scale that is not finite.
    static TernaryMatrix from_i2_s(const uint8_t* data, int64_t rows, int64_t cols, WeightArena* arena = nullptr);
    // The bytes of packed codes a [rows, cols] matrix holds in `layout` (what it takes from a WeightArena); 0 for a
    // shape no matrix can have.
    static size_t packed_bytes(int64_t rows, int64_t cols, TernaryLayout layout);
    // From codes in {-1,0,1} (row-major) and one scale for the whole tensor (tests, benchmarks).
    static TernaryMatrix from_codes(const int8_t* codes, int64_t rows, int64_t cols, float scale,
                                    TernaryLayout layout = TernaryLayout::TwoBit);

    int64_t rows() const;
    int64_t cols() const;
    size_t bytes() const;                  // memory held
    int8_t code(int64_t r, int64_t c) const;  // slow accessor for tests
    float block_scale(int64_t r, int64_t c) const;
    bool uniform_scale() const;
    TernaryLayout layout() const;

    TernaryMatrix();
    ~TernaryMatrix();
    TernaryMatrix(TernaryMatrix&&) noexcept;
    TernaryMatrix& operator=(TernaryMatrix&&) noexcept;

    struct Impl;
    const Impl& impl() const { return *impl_; }
private:
    std::unique_ptr<Impl> impl_;
};

// Per-token int8 activations for n_tokens rows of length cols, in the kernels' layout.
// act_scale[t] is `a` of docs/architecture.md, computed exactly as PyTorch evaluates `127.0 / m`:
// (1.0f / m) * 127.0f with m = max(absmax, 1e-5f) (Tensor.__rtruediv__ is reciprocal-then-multiply);
// q = clamp(nearbyint(x * a), -128, 127). Bitwise equal to bllama/model/bitlinear.py.
struct QuantizedActs {
    int64_t n_tokens = 0, cols = 0;
    std::vector<float> act_scale;          // [n_tokens]
    // kernel-private storage follows. Every kernel kind produces and consumes the same layout, so acts
    // quantized with one kind may be fed to any other.
    std::vector<int8_t, AlignedAllocator<int8_t>> q;  // [n_tokens, cols] plain row-major int8 values
    std::vector<uint8_t> scratch;          // unused for now
    std::vector<int32_t> block_sums;       // [n_tokens, ceil(cols/256)]: sum of q over each 256-block
    std::vector<int32_t> row_sums;         // [n_tokens]: sum of q over the whole row
};

// Quantize x [n_tokens, cols] (fp32, row-major) into out; reuses out's buffers (no allocation when sized).
void quantize_acts(const float* x, int64_t n_tokens, int64_t cols, QuantizedActs& out,
                   KernelKind kind = best_kernel());
// Rows [t0, t1) of x (still indexed from row 0) into out, already sized for them (resize_acts, pack.h), so that
// threads can quantize disjoint rows of one batch; the same bits as quantize_acts.
void quantize_acts_rows(const float* x, int64_t t0, int64_t t1, int64_t cols, QuantizedActs& out,
                        KernelKind kind = best_kernel());

// Row ranges that start and end on multiples of this avoid recomputing a shared 16-row group in two
// threads (any range is still correct).
constexpr int64_t kTernaryRowGranule = 16;

// y[t * ldy + r] = scale * sum_k code(r,k) * x.q[t,k] for r in [row_begin, row_end), all t.
// Exactly, with acc the int32 sum: uniform_scale(): y = (float)acc * (scale / a). Otherwise, per
// 256-block b in ascending order: y = sum_b (float)acc_b * (d_b / a), each product rounded to fp32
// before it is added (never fused). Every kernel kind gives bit-identical y.
// The caller splits rows across threads; any range is valid. n_tokens == 1 is the decode GEMV;
// larger n_tokens use a GEMM path that reuses unpacked weight tiles across tokens.
void ternary_matmul(const TernaryMatrix& w, const QuantizedActs& x, float* y, int64_t ldy,
                    int64_t row_begin, int64_t row_end, KernelKind kind = best_kernel());

// Whether `kind` has a SIMD kernel for the base-3 layout (otherwise ternary_matmul runs Base3 matrices on the
// scalar reference, correct but slow: the loader's auto rule then keeps TQ1_0 files in the 2-bit layout).
bool has_base3_kernel(KernelKind kind = best_kernel());

}  // namespace bllama

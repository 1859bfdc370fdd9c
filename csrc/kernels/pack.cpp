// Weights into the kernels' layouts, once at load: TernaryMatrix (pack.h) from GGUF TQ2_0 / TQ1_0 / I2_S blocks
// or plain codes, and the int8 head's rows (Q8Head, head_q8.h) from f16 / f32. Also the activation buffers'
// sizing that every quantizer shares.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "kernels/half.h"
#include "kernels/head_q8.h"
#include "kernels/pack.h"
#include "kernels/ternary.h"

namespace bllama {

// ---------------------------------------------------------------------------------------------
// TernaryMatrix

namespace {

constexpr size_t kTq2BlockBytes = 66;
constexpr size_t kTq1BlockBytes = 54;

void check_shape(int64_t rows, int64_t cols) {
    if (rows < 0 || cols <= 0 || cols % kBlock != 0)
        throw std::invalid_argument("TernaryMatrix: need rows >= 0 and cols a positive multiple of 256, got " +
                                    std::to_string(rows) + " x " + std::to_string(cols));
}

AlignedArray<uint8_t> packed_storage(size_t bytes, WeightArena* arena) {
    if (arena)
        if (uint8_t* p = arena->take(bytes)) return AlignedArray<uint8_t>(p, FreeDeleter{arena->owner()});
    return make_aligned<uint8_t>(bytes);
}

std::unique_ptr<TernaryMatrix::Impl> new_impl(int64_t rows, int64_t cols, TernaryLayout layout,
                                              WeightArena* arena = nullptr) {
    auto p = std::make_unique<TernaryMatrix::Impl>();
    p->rows = rows;
    p->cols = cols;
    p->groups = (rows + kGroupRows - 1) / kGroupRows;
    p->nb = cols / kBlock;
    p->base3 = layout == TernaryLayout::Base3;
    // Padding rows must decode as zeros (code 1 in every field) so a kernel may compute them freely.
    if (p->base3) {
        const int64_t blocks = p->groups * p->nb;
        p->packed = packed_storage(static_cast<size_t>(blocks * kB3BlockBytes), arena);
        for (int64_t i = 0; i < blocks; ++i) {
            uint8_t* blk = p->packed.get() + i * kB3BlockBytes;
            std::memset(blk, kB3Zero5, static_cast<size_t>(kB3FullChunks * kChunkBytes));
            std::memset(blk + kB3FullChunks * kChunkBytes, kB3Zero4, kChunkBytes);
        }
    } else {
        p->packed = packed_storage(static_cast<size_t>(p->groups * cols * 4), arena);
        std::memset(p->packed.get(), 0x55, static_cast<size_t>(p->groups * cols * 4));
    }
    p->d = make_aligned<float>(static_cast<size_t>(p->groups * p->nb * kGroupRows));
    return p;
}

// The base-3 bytes (pack.h) of every value v of five trits (243) and of four (81): ceil(v * 256 / 3^k), looked up so
// that packing costs a few multiply-adds per byte instead of a division (the load time of a TQ1_0 file).
struct Base3Bytes {
    uint8_t five[243]{}, four[81]{};
    constexpr Base3Bytes() {
        for (int v = 0; v < 243; ++v) five[v] = static_cast<uint8_t>((v * 256 + 242) / 243);
        for (int v = 0; v < 81; ++v) four[v] = static_cast<uint8_t>((v * 256 + 80) / 81);
    }
};
constexpr Base3Bytes kBase3Bytes;

// k trits codes[0], codes[4], ... (most significant first, each 0..2: from_codes checks them, the TQ1_0 decoder
// makes no other) as a base-3 byte.
inline uint8_t base3_byte(const uint8_t* codes, int k) {
    const int v4 = ((codes[0] * 3 + codes[4]) * 3 + codes[8]) * 3 + codes[12];
    return k == 5 ? kBase3Bytes.five[v4 * 3 + codes[16]] : kBase3Bytes.four[v4];
}

// One row of unsigned codes 0..2 (q + 1), length cols, into the base-3 layout.
void pack_row_base3(TernaryMatrix::Impl& m, int64_t r, const uint8_t* codes) {
    uint8_t* g = m.packed.get() + (r / kGroupRows) * m.nb * kB3BlockBytes + (r % kGroupRows) * 4;
    for (int64_t b = 0; b < m.nb; ++b) {
        const uint8_t* cb = codes + b * kBlock;
        uint8_t* gb = g + b * kB3BlockBytes;
        for (int s = 0; s < 4; ++s) {
            for (int64_t c = 0; c < kB3FullChunks; ++c) gb[c * kChunkBytes + s] = base3_byte(cb + c * kB3ChunkCols + s, 5);
            gb[kB3FullChunks * kChunkBytes + s] = base3_byte(cb + kB3TailCol + s, 4);
        }
    }
}

// Where row r's 4 bytes of its first 16-column chunk live (rows are interleaved in groups of kGroupRows).
uint8_t* row_dst(TernaryMatrix::Impl& m, int64_t r) {
    return m.packed.get() + (r / kGroupRows) * m.cols * 4 + (r % kGroupRows) * 4;
}

// Unsigned codes 0..2 (q + 1) of n columns (n % 16 == 0) into dwords at dst, dst + stride, ... (pack.h).
void pack_codes(const uint8_t* codes, int64_t n, uint8_t* dst, int64_t stride) {
    for (int64_t c = 0; c < n / kChunkCols; ++c) {
        const uint8_t* src = codes + c * kChunkCols;
        for (int s = 0; s < 4; ++s)
            dst[c * stride + s] = static_cast<uint8_t>(src[s] | (src[4 + s] << 2) | (src[8 + s] << 4) |
                                                       (src[12 + s] << 6));
    }
}

// codes: one row of unsigned codes 0..2 (q + 1), length cols.
void pack_row(TernaryMatrix::Impl& m, int64_t r, const uint8_t* codes) {
    pack_codes(codes, m.cols, row_dst(m, r), kChunkBytes);
}

// Block b of row r gets scale d; an all-zero block may carry any d in the file and is stored with 0.
void store_block_scale(TernaryMatrix::Impl& m, int64_t r, int64_t b, bool nonzero, float d) {
    m.d_ptr(r / kGroupRows)[b * kGroupRows + r % kGroupRows] = nonzero ? d : 0.0f;
}

void set_block_scale(TernaryMatrix::Impl& m, int64_t r, int64_t b, const uint8_t* codes, float d,
                     ScaleTracker& tr) {
    bool nonzero = false;
    for (int64_t k = 0; k < kBlock; ++k) nonzero |= codes[k] != 1;
    store_block_scale(m, r, b, nonzero, d);
    if (nonzero) tr.add(d);
}

void finish(TernaryMatrix::Impl& m, const ScaleTracker& tr) {
    m.uniform = tr.uniform;
    m.scale = tr.any ? tr.value : 0.0f;
}

uint16_t load_u16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }

// TQ2_0 and I2_S both store a 256-value block as 64 bytes of bit planes: within each half of 128 values, byte m
// holds values m, m + 32, m + 64, m + 96 as q + 1, in the bit pairs at shifts 0, 2, 4, 6 (TQ2_0) or 6, 4, 2, 0
// (I2_S). Word-at-a-time repack of block b of one row into its dwords (the load path of every model, so it is
// worth being faster than per element: bench/NOTES-kernels.md): a 16-column chunk is one bit pair of 16
// consecutive bytes, so two u64 loads, a shift and a mask give its 16 codes, and four shifted 32-bit slices of
// those OR straight into the row's dword.
// Returns whether the block has a nonzero code; throws on code 3.
bool repack_plane_block(const uint8_t* blk, bool msb_first, uint8_t* dst, int64_t stride, int64_t b, const char* who,
                        int64_t r) {
    static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the u64 view of the block bytes assumes little endian");
    constexpr uint64_t kLow = 0x5555555555555555ull, kMask = 0x0303030303030303ull;
    uint64_t w[8];
    std::memcpy(w, blk, 64);
    bool nonzero = false;
    for (uint64_t v : w) {
        if (v & (v >> 1) & kLow)
            throw std::invalid_argument(std::string(who) + ": code 3 is not ternary (row " + std::to_string(r) + ")");
        nonzero |= v != kLow;
    }
    for (int lc = 0; lc < 16; ++lc) {
        const int h = lc / 8, j = (lc % 8) / 2, half16 = lc % 2;
        const int shift = 2 * (msb_first ? 3 - j : j);
        const uint64_t lo = (w[h * 4 + half16 * 2] >> shift) & kMask;
        const uint64_t hi = (w[h * 4 + half16 * 2 + 1] >> shift) & kMask;
        const uint32_t out = static_cast<uint32_t>(lo) | static_cast<uint32_t>(lo >> 32) << 2 |
                             static_cast<uint32_t>(hi) << 4 | static_cast<uint32_t>(hi >> 32) << 6;
        std::memcpy(dst + (b * kBlock / kChunkCols + lc) * stride, &out, 4);
    }
    return nonzero;
}

// One TQ1_0 block's 256 codes (q + 1). A byte holds trits as a base-3 fraction scaled to 256: multiplying by
// 3^n (mod 256) moves trit n to the top, and (x * 3) >> 8 reads it off. Element order (gguf): qs[0..32) hold
// elements n*32 + m, qs[32..48) hold 160 + n*16 + m, qh[0..4) hold 240 + n*4 + m (4 trits per byte).
void decode_tq1_block(const uint8_t* blk, uint8_t* dst) {
    static const uint8_t pow3[5] = {1, 3, 9, 27, 81};
    auto trit = [](uint8_t byte, uint8_t p) -> uint8_t {
        const uint8_t v = static_cast<uint8_t>(byte * p);
        return static_cast<uint8_t>((static_cast<uint16_t>(v) * 3) >> 8);
    };
    for (int n = 0; n < 5; ++n)
        for (int i = 0; i < 32; ++i) dst[n * 32 + i] = trit(blk[i], pow3[n]);
    for (int n = 0; n < 5; ++n)
        for (int i = 0; i < 16; ++i) dst[160 + n * 16 + i] = trit(blk[32 + i], pow3[n]);
    for (int n = 0; n < 4; ++n)
        for (int i = 0; i < 4; ++i) dst[240 + n * 4 + i] = trit(blk[48 + i], pow3[n]);
}

}  // namespace

void repack_ternary_row(TernaryEncoding enc, const uint8_t* data, int64_t rows, int64_t cols, int64_t r,
                        uint8_t* dst, int64_t stride, float* d, bool* nonzero, const char* who) {
    const int64_t nb = cols / kBlock;
    float tensor_scale = 0.0f;
    if (enc == TernaryEncoding::I2_S) std::memcpy(&tensor_scale, data + rows * cols / 4, 4);
    for (int64_t b = 0; b < nb; ++b) {
        switch (enc) {
            case TernaryEncoding::TQ2_0: {
                const uint8_t* blk = data + (r * nb + b) * kTq2BlockBytes;
                nonzero[b] = repack_plane_block(blk, false, dst, stride, b, who, r);
                d[b] = f16_to_f32(load_u16(blk + 64));
                break;
            }
            case TernaryEncoding::I2_S:
                nonzero[b] = repack_plane_block(data + (r * nb + b) * 64, true, dst, stride, b, who, r);
                d[b] = tensor_scale;
                break;
            case TernaryEncoding::TQ1_0: {
                const uint8_t* blk = data + (r * nb + b) * kTq1BlockBytes;
                uint8_t codes[kBlock];
                decode_tq1_block(blk, codes);
                bool nz = false;
                for (int64_t k = 0; k < kBlock; ++k) nz |= codes[k] != 1;
                nonzero[b] = nz;
                pack_codes(codes, kBlock, dst + b * (kBlock / kChunkCols) * stride, stride);
                d[b] = f16_to_f32(load_u16(blk + 52));
                break;
            }
        }
        // A nonzero block's scale multiplies real weights: NaN or Inf there would make every output NaN. An
        // all-zero block's scale is never used and may hold anything (pack.h).
        if (nonzero[b] && !std::isfinite(d[b]))
            throw std::invalid_argument(std::string(who) + ": block scale " + std::to_string(d[b]) +
                                        " is not finite (row " + std::to_string(r) + ", block " + std::to_string(b) +
                                        ")");
    }
}

float i2_s_scale(const uint8_t* data, int64_t rows, int64_t cols, const char* who) {
    float scale;
    std::memcpy(&scale, data + rows * cols / 4, 4);  // the tensor's scale follows its codes
    if (!std::isfinite(scale))
        throw std::invalid_argument(std::string(who) + ": the tensor scale " + std::to_string(scale) + " is not finite");
    return scale;
}

namespace {

// The three GGUF constructors: `who` names the public one in errors.
std::unique_ptr<TernaryMatrix::Impl> from_gguf(TernaryEncoding enc, const uint8_t* data, int64_t rows, int64_t cols,
                                               const char* who, TernaryLayout layout, WeightArena* arena) {
    check_shape(rows, cols);
    auto m = new_impl(rows, cols, layout, arena);
    const float tensor_scale = enc == TernaryEncoding::I2_S ? i2_s_scale(data, rows, cols, who) : 0.0f;
    std::vector<float> d(static_cast<size_t>(m->nb));
    std::unique_ptr<bool[]> nonzero(new bool[static_cast<size_t>(m->nb)]);
    // Base3: each row goes through the one decoder of every encoding into plain dwords (pack.h), then into codes.
    std::vector<uint8_t> dwords(m->base3 ? static_cast<size_t>(cols / 4) : 0), codes(m->base3 ? static_cast<size_t>(cols) : 0);
    ScaleTracker tr;
    for (int64_t r = 0; r < rows; ++r) {
        if (m->base3) {
            repack_ternary_row(enc, data, rows, cols, r, dwords.data(), 4, d.data(), nonzero.get(), who);
            // Dword ch holds columns 16 ch + 4 j + s at bits 2 j of its byte s (pack.h).
            for (int64_t ch = 0; ch < cols / kChunkCols; ++ch)
                for (int j = 0; j < 4; ++j)
                    for (int si = 0; si < 4; ++si)
                        codes[static_cast<size_t>(ch * kChunkCols + 4 * j + si)] = (dwords[static_cast<size_t>(ch * 4 + si)] >> (2 * j)) & 3;
            pack_row_base3(*m, r, codes.data());
        } else {
            repack_ternary_row(enc, data, rows, cols, r, row_dst(*m, r), kChunkBytes, d.data(), nonzero.get(), who);
        }
        for (int64_t b = 0; b < m->nb; ++b) {
            store_block_scale(*m, r, b, nonzero[b], d[static_cast<size_t>(b)]);
            if (nonzero[b]) tr.add(d[static_cast<size_t>(b)]);
        }
    }
    finish(*m, tr);
    if (enc == TernaryEncoding::I2_S) {  // one scale for the whole tensor, as from_codes
        m->uniform = true;
        m->scale = tensor_scale;
    }
    return m;
}

}  // namespace

TernaryMatrix TernaryMatrix::from_tq2_0(const uint8_t* blocks, int64_t rows, int64_t cols, WeightArena* arena) {
    TernaryMatrix out;
    out.impl_ = from_gguf(TernaryEncoding::TQ2_0, blocks, rows, cols, "TernaryMatrix::from_tq2_0", TernaryLayout::TwoBit,
                          arena);
    return out;
}
TernaryMatrix TernaryMatrix::from_tq1_0(const uint8_t* blocks, int64_t rows, int64_t cols, TernaryLayout layout,
                                        WeightArena* arena) {
    TernaryMatrix out;
    out.impl_ = from_gguf(TernaryEncoding::TQ1_0, blocks, rows, cols, "TernaryMatrix::from_tq1_0", layout, arena);
    return out;
}
TernaryMatrix TernaryMatrix::from_i2_s(const uint8_t* data, int64_t rows, int64_t cols, WeightArena* arena) {
    TernaryMatrix out;
    out.impl_ = from_gguf(TernaryEncoding::I2_S, data, rows, cols, "TernaryMatrix::from_i2_s", TernaryLayout::TwoBit,
                          arena);
    return out;
}

size_t TernaryMatrix::packed_bytes(int64_t rows, int64_t cols, TernaryLayout layout) {
    if (rows < 0 || cols <= 0 || cols % kBlock != 0) return 0;  // no matrix has that shape (its packing throws)
    const int64_t groups = (rows + kGroupRows - 1) / kGroupRows;
    return static_cast<size_t>(layout == TernaryLayout::Base3 ? groups * (cols / kBlock) * kB3BlockBytes
                                                              : groups * cols * 4);
}

WeightArena::WeightArena(size_t bytes) {
    size_ = (bytes + kHugePage - 1) / kHugePage * kHugePage;
    void* p = std::aligned_alloc(kHugePage, size_ ? size_ : kHugePage);
    if (!p) throw std::bad_alloc();
    advise_huge_pages(p, size_);  // before the first touch: the packing writes every byte it hands out
    slab_ = std::shared_ptr<void>(p, std::free);
}

uint8_t* WeightArena::take(size_t bytes) {
    const size_t n = (bytes + 63) / 64 * 64;
    if (n > size_ - used_) return nullptr;
    uint8_t* p = static_cast<uint8_t*>(slab_.get()) + used_;
    used_ += n;
    return p;
}

TernaryMatrix TernaryMatrix::from_codes(const int8_t* codes, int64_t rows, int64_t cols, float scale,
                                       TernaryLayout layout) {
    check_shape(rows, cols);
    auto m = new_impl(rows, cols, layout);
    std::vector<uint8_t> u(static_cast<size_t>(cols));
    ScaleTracker tr;
    for (int64_t r = 0; r < rows; ++r) {
        for (int64_t k = 0; k < cols; ++k) {
            const int8_t v = codes[r * cols + k];
            if (v < -1 || v > 1) throw std::invalid_argument("TernaryMatrix::from_codes: code outside {-1,0,1}");
            u[static_cast<size_t>(k)] = static_cast<uint8_t>(v + 1);
        }
        for (int64_t b = 0; b < m->nb; ++b) set_block_scale(*m, r, b, u.data() + b * kBlock, scale, tr);
        if (m->base3) pack_row_base3(*m, r, u.data());
        else pack_row(*m, r, u.data());
    }
    finish(*m, tr);
    // Explicitly uniform even if every block is zero: the caller gave one tensor scale.
    m->uniform = true;
    m->scale = scale;
    TernaryMatrix out;
    out.impl_ = std::move(m);
    return out;
}

TernaryMatrix::TernaryMatrix() : impl_(std::make_unique<Impl>()) {}
TernaryMatrix::~TernaryMatrix() = default;
TernaryMatrix::TernaryMatrix(TernaryMatrix&&) noexcept = default;
TernaryMatrix& TernaryMatrix::operator=(TernaryMatrix&&) noexcept = default;

int64_t TernaryMatrix::rows() const { return impl_->rows; }
int64_t TernaryMatrix::cols() const { return impl_->cols; }
size_t TernaryMatrix::bytes() const {
    const int64_t codes = impl_->base3 ? impl_->groups * impl_->nb * kB3BlockBytes : impl_->groups * impl_->cols * 4;
    return static_cast<size_t>(codes + impl_->groups * impl_->nb * kGroupRows * 4);
}
TernaryLayout TernaryMatrix::layout() const { return impl_->base3 ? TernaryLayout::Base3 : TernaryLayout::TwoBit; }

namespace {

// Code (q + 1) of row r, column k of a base-3 matrix.
uint8_t base3_code(const TernaryMatrix::Impl& m, int64_t r, int64_t k) {
    const int64_t b = k / kBlock, kk = k % kBlock;
    const int64_t chunk = kk < kB3TailCol ? kk / kB3ChunkCols : kB3FullChunks;
    const int64_t o = kk - chunk * kB3ChunkCols;
    const uint8_t byte = m.group_ptr3(r / kGroupRows)[b * kB3BlockBytes + chunk * kChunkBytes + (r % kGroupRows) * 4 + o % 4];
    return base3_trit(byte, static_cast<int>(o / 4));
}

}  // namespace

void base3_row_codes(const TernaryMatrix::Impl& m, int64_t r, int8_t* out) {
    for (int64_t k = 0; k < m.cols; ++k) out[k] = static_cast<int8_t>(base3_code(m, r, k) - 1);
}

int8_t TernaryMatrix::code(int64_t r, int64_t c) const {
    const Impl& m = *impl_;
    if (m.base3) return static_cast<int8_t>(base3_code(m, r, c) - 1);
    const int64_t g = r / kGroupRows, rr = r % kGroupRows, ch = c / kChunkCols, j = (c % kChunkCols) / 4,
                  s = c % 4;
    const uint8_t byte = m.group_ptr(g)[ch * kChunkBytes + rr * 4 + s];
    return static_cast<int8_t>(((byte >> (2 * j)) & 3) - 1);
}
float TernaryMatrix::block_scale(int64_t r, int64_t c) const {
    return impl_->d_ptr(r / kGroupRows)[(c / kBlock) * kGroupRows + r % kGroupRows];
}
bool TernaryMatrix::uniform_scale() const { return impl_->uniform; }

void resize_acts(QuantizedActs& out, int64_t n_tokens, int64_t cols) {
    const int64_t nb = (cols + kBlock - 1) / kBlock;
    out.n_tokens = n_tokens;
    out.cols = cols;
    out.act_scale.resize(static_cast<size_t>(n_tokens));
    out.q.resize(static_cast<size_t>(n_tokens * cols));
    out.block_sums.resize(static_cast<size_t>(n_tokens * nb));
    out.row_sums.resize(static_cast<size_t>(n_tokens));
}

// ---------------------------------------------------------------------------------------------
// Q8Head

Q8Head::Q8Head(int64_t rows, int64_t cols) : rows_(rows), cols_(cols) {
    if (rows < 0 || cols <= 0 || cols > kQ8HeadMaxCols)
        throw std::invalid_argument("Q8Head: need rows >= 0 and 0 < cols <= " + std::to_string(kQ8HeadMaxCols) +
                                    ", got " + std::to_string(rows) + " x " + std::to_string(cols));
    q_.assign(static_cast<size_t>(rows * cols), 0);
    scale_.assign(static_cast<size_t>(rows), 0.0f);
    sum_.assign(static_cast<size_t>(rows), 0);
}

template <class Load>
void Q8Head::quantize_rows(Load load, int64_t row_begin, int64_t row_end) {
    if (row_begin < 0 || row_end > rows_ || row_begin > row_end)
        throw std::invalid_argument("Q8Head: bad row range");
    std::vector<float> buf(static_cast<size_t>(cols_));
    for (int64_t r = row_begin; r < row_end; ++r) {
        float m = 0.0f;
        for (int64_t k = 0; k < cols_; ++k) {
            const float v = load(r * cols_ + k);
            if (!std::isfinite(v))
                throw std::invalid_argument("Q8Head: non-finite weight at row " + std::to_string(r) + ", column " +
                                            std::to_string(k));
            buf[static_cast<size_t>(k)] = v;
            m = std::max(m, std::fabs(v));
        }
        const float d = m / 127.0f;
        int8_t* q = q_.data() + r * cols_;
        int32_t s = 0;
        for (int64_t k = 0; k < cols_; ++k) {
            float v = d > 0.0f ? std::nearbyint(buf[static_cast<size_t>(k)] / d) : 0.0f;  // ties to even
            v = std::min(127.0f, std::max(-127.0f, v));  // |w / d| <= 127 up to one rounding
            q[k] = static_cast<int8_t>(v);
            s += q[k];
        }
        scale_[static_cast<size_t>(r)] = d;
        sum_[static_cast<size_t>(r)] = s;
    }
}

void Q8Head::quantize_rows_f16(const uint16_t* w, int64_t row_begin, int64_t row_end) {
    quantize_rows([w](int64_t i) { return f16_to_f32(w[i]); }, row_begin, row_end);
}
void Q8Head::quantize_rows_f32(const float* w, int64_t row_begin, int64_t row_end) {
    quantize_rows([w](int64_t i) { return w[i]; }, row_begin, row_end);
}
Q8Head Q8Head::from_f16(const uint16_t* w, int64_t rows, int64_t cols) {
    Q8Head h(rows, cols);
    h.quantize_rows_f16(w, 0, rows);
    return h;
}
Q8Head Q8Head::from_f32(const float* w, int64_t rows, int64_t cols) {
    Q8Head h(rows, cols);
    h.quantize_rows_f32(w, 0, rows);
    return h;
}

}  // namespace bllama

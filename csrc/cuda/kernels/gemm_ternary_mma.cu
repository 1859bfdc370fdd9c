// Prompt GEMM: y = W x for any number of tokens on the int8 tensor cores (mma.sync m16n8k32, u8 codes
// times s8 activations, s32 accumulators), with the 2-bit weights unpacked in registers: the weights
// are never expanded in memory, so the kernel reads 2 bits per weight from global memory and shared
// memory alike.
//
// Tiling. A block computes BM weight rows x BN tokens, stepping over the columns 128 at a time (one
// k-tile) through a 3-stage cp.async pipeline in shared memory:
//   weights: BM rows x 8 words (32 bytes per row, packed as in cuda/layout.h)
//   tokens:  BN rows x 128 int8, each row padded to 144 bytes (conflict-free 16-byte reads, see below)
// Each warp owns WM x WN of the block (WM/16 m-tiles times WN/8 n-tiles of mma accumulators).
//
// The k-order trick. An mma lane (g = lane / 4, c = lane % 4) supplies, for MMA-k positions 4c..4c+3 and
// 16+4c..16+4c+3, four codes of row g (and of row g+8) and four activations of token g. The sum over k
// does not care which real column each MMA-k position stands for, as long as the weights and the
// activations agree. So for a k-tile, lane c takes the words 2c and 2c+1 of its rows (one 8-byte load
// per row: columns 32c .. 32c+31) and the same 32 columns of its token (two 16-byte loads). Word 2c+h,
// shifted by 2j and masked, holds the codes of columns 32c+16h+4j .. +3: exactly the 4 bytes at offset
// 16h+4j of the 16-byte activation load h. MMA s = 2h + jp (four per k-tile) takes j = 2jp for its first
// register pair and j = 2jp+1 for its second. No shuffles, no byte permutes: one shift and one AND per
// A register.
//
// GLU (gate | up): a warp's first WM/2 rows are gate rows and its last WM/2 the matching up rows, so
// the same lane holds both accumulators of an output and applies silu(gate) * up itself.
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "cuda/kernels/cuda_util.cuh"
#include "cuda/kernels/kernels.cuh"
#include "cuda/kernels/ternary_common.cuh"

namespace bllama {
namespace cuda {
namespace {

constexpr int kBK = 128;               // columns per k-tile
constexpr int kBKWords = kBK / 16;     // packed words per row and k-tile (32 bytes)
constexpr int kActStride = kBK + 16;   // bytes per token row in shared memory
constexpr int kStages = 3;

template <int BM_, int BN_, int WM_, int WN_>
struct Tile {
    static constexpr int BM = BM_, BN = BN_, WM = WM_, WN = WN_;
    static constexpr int kWarpsM = BM / WM, kWarpsN = BN / WN;
    static constexpr int kThreads = 32 * kWarpsM * kWarpsN;
    static constexpr int kMT = WM / 16, kNT = WN / 8;  // mma tiles per warp
    static constexpr int kABytes = BM * kBKWords * 4;  // one stage of weights
    static constexpr int kBBytes = BN * kActStride;    // one stage of activations
    static constexpr int kStageBytes = kABytes + kBBytes;
    static constexpr int kSmem = kStages * kStageBytes;
    static constexpr int kAPerThread = BM * 2 / kThreads;  // 16-byte copies per stage and thread
    static constexpr int kBPerThread = BN * 8 / kThreads;
    // Two blocks per SM (16 warps for the large tile): caps the registers at 128 per thread.
    static constexpr int kMinBlocks = kThreads >= 256 ? 2 : 4;
    static_assert(BM % WM == 0 && BN % WN == 0 && WM % 32 == 0 && WN % 8 == 0, "tile shape");
    static_assert(BM * 2 % kThreads == 0 && BN * 8 % kThreads == 0, "copies must divide evenly");
};
using TileLarge = Tile<128, 128, 64, 32>;  // 8 warps, 2 x 4
using TileSmall = Tile<64, 64, 32, 32>;    // 4 warps, 2 x 2

__device__ __forceinline__ void cp_async16(void* smem_dst, const void* gmem_src, int src_bytes) {
    // src_bytes 0 fills the 16 bytes with zeros (rows and tokens past the end).
    const uint32_t d = static_cast<uint32_t>(__cvta_generic_to_shared(smem_dst));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(gmem_src), "r"(src_bytes)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// d += a (16 x 32, u8, row) * b (32 x 8, s8, col).
__device__ __forceinline__ void mma_u8s8(int (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t codes(uint32_t word, int j) { return (word >> (2 * j)) & 0x03030303u; }
__device__ __forceinline__ uint32_t part(const uint4& v, int i) {
    return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

template <class T>
__global__ void __launch_bounds__(T::kThreads, T::kMinBlocks)
    ternary_mma_kernel(DevTernary w, DevActs x, int n_tokens, float* __restrict__ y, int ldy, Epilogue ep) {
    extern __shared__ __align__(16) uint8_t smem[];
    const bool glu = detail::is_glu(ep);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp % T::kWarpsM, wn = warp / T::kWarpsM;
    const int g = lane >> 2, c4 = lane & 3;
    const int out_rows = glu ? w.rows >> 1 : w.rows;
    const int wpr = w.cols >> 4;  // words per weight row
    const int n_kt = w.cols / kBK;
    const int tok0 = blockIdx.y * T::BN;

    // Weight row of the block's local row lr, or -1 past the end (see GLU in the header comment).
    auto tile_row = [&](int lr) -> int {
        if (glu) {
            const int i = lr % T::WM;
            const int gate = blockIdx.x * (T::BM / 2) + (lr / T::WM) * (T::WM / 2) + i % (T::WM / 2);
            return gate < out_rows ? gate + (i >= T::WM / 2 ? out_rows : 0) : -1;
        }
        const int r = blockIdx.x * T::BM + lr;
        return r < out_rows ? r : -1;
    };

    // This thread's share of every stage's copies: sources advance by one k-tile per stage.
    const uint32_t* a_src[T::kAPerThread];
    int a_dst[T::kAPerThread], a_bytes[T::kAPerThread];
#pragma unroll
    for (int i = 0; i < T::kAPerThread; ++i) {
        const int q = tid + i * T::kThreads, lr = q >> 1, half = q & 1;
        const int r = tile_row(lr);
        a_src[i] = w.words + static_cast<size_t>(r < 0 ? 0 : r) * wpr + half * 4;
        a_dst[i] = lr * kBKWords * 4 + half * 16;
        a_bytes[i] = r < 0 ? 0 : 16;
    }
    // Activation copies: 8 threads per token row (128 bytes), tokens b_lt0 + i * kThreads / 8.
    constexpr int kBTokStep = T::kThreads / 8;
    const int b_lt0 = tid >> 3, b_seg = tid & 7;
    const int8_t* b_src0 = x.q + static_cast<size_t>(tok0 + b_lt0) * w.cols + b_seg * 16;
    const size_t b_step = static_cast<size_t>(kBTokStep) * w.cols;
    auto load_stage = [&](int stage, int kt) {
        uint8_t* sa = smem + stage * T::kStageBytes;
        uint8_t* sb = sa + T::kABytes;
#pragma unroll
        for (int i = 0; i < T::kAPerThread; ++i) cp_async16(sa + a_dst[i], a_src[i] + kt * kBKWords, a_bytes[i]);
#pragma unroll
        for (int i = 0; i < T::kBPerThread; ++i) {
            const bool ok = tok0 + b_lt0 + i * kBTokStep < n_tokens;
            cp_async16(sb + (b_lt0 + i * kBTokStep) * kActStride + b_seg * 16,
                       ok ? b_src0 + i * b_step + kt * kBK : x.q, ok ? 16 : 0);
        }
    };

    int acc[T::kMT][T::kNT][4];
#pragma unroll
    for (int mi = 0; mi < T::kMT; ++mi)
#pragma unroll
        for (int ni = 0; ni < T::kNT; ++ni)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0;

#pragma unroll
    for (int s = 0; s < kStages - 1; ++s) {
        if (s < n_kt) load_stage(s, s);
        cp_async_commit();  // always commit, so that group i is k-tile i even past the end
    }

    for (int kt = 0; kt < n_kt; ++kt) {
        cp_async_wait<kStages - 2>();  // k-tile kt has landed (this thread's copies)
        __syncthreads();               // ... everyone's; and everyone is done with k-tile kt - 1
        if (kt + kStages - 1 < n_kt) load_stage((kt + kStages - 1) % kStages, kt + kStages - 1);
        cp_async_commit();

        const uint8_t* sa = smem + (kt % kStages) * T::kStageBytes;
        const uint8_t* sb = sa + T::kABytes;
        // Words 2c, 2c+1 of rows g and g+8 of each m-tile (8-byte loads; 16 lanes cover 32 banks).
        uint2 aw[T::kMT][2];
#pragma unroll
        for (int mi = 0; mi < T::kMT; ++mi) {
            const int r0 = wm * T::WM + mi * 16 + g;
            aw[mi][0] = *reinterpret_cast<const uint2*>(sa + (r0 * kBKWords + 2 * c4) * 4);
            aw[mi][1] = *reinterpret_cast<const uint2*>(sa + ((r0 + 8) * kBKWords + 2 * c4) * 4);
        }
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            // Columns 32c + 16h .. +15 of token g of each n-tile.
            uint4 bv[T::kNT];
#pragma unroll
            for (int ni = 0; ni < T::kNT; ++ni)
                bv[ni] = *reinterpret_cast<const uint4*>(sb + (wn * T::WN + ni * 8 + g) * kActStride + 32 * c4 + 16 * h);
#pragma unroll
            for (int jp = 0; jp < 2; ++jp) {
                uint32_t af[T::kMT][4];
#pragma unroll
                for (int mi = 0; mi < T::kMT; ++mi) {
                    const uint32_t lo = h ? aw[mi][0].y : aw[mi][0].x;  // row g, word 2c + h
                    const uint32_t hi = h ? aw[mi][1].y : aw[mi][1].x;  // row g + 8
                    af[mi][0] = codes(lo, 2 * jp);
                    af[mi][1] = codes(hi, 2 * jp);
                    af[mi][2] = codes(lo, 2 * jp + 1);
                    af[mi][3] = codes(hi, 2 * jp + 1);
                }
#pragma unroll
                for (int mi = 0; mi < T::kMT; ++mi)
#pragma unroll
                    for (int ni = 0; ni < T::kNT; ++ni)
                        mma_u8s8(acc[mi][ni], af[mi][0], af[mi][1], af[mi][2], af[mi][3], part(bv[ni], 2 * jp),
                                 part(bv[ni], 2 * jp + 1));
            }
        }
    }
    cp_async_wait<0>();  // nothing may be left in flight into shared memory when the block exits

    // Epilogue. Accumulator e of tile (mi, ni): row g + 8 * (e / 2), token 2c + e % 2.
    int tok[T::kNT][2], rsum[T::kNT][2];
    float ascale[T::kNT][2];
#pragma unroll
    for (int ni = 0; ni < T::kNT; ++ni)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            const int t = tok0 + wn * T::WN + ni * 8 + 2 * c4 + e;
            tok[ni][e] = t;
            rsum[ni][e] = t < n_tokens ? x.row_sum[t] : 0;
            ascale[ni][e] = t < n_tokens ? x.scale[t] : 1.0f;
        }
    const int mt_out = glu ? T::kMT / 2 : T::kMT;
#pragma unroll
    for (int mi = 0; mi < mt_out; ++mi)
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
            const int r = tile_row(wm * T::WM + mi * 16 + g + 8 * hr);  // a gate row under GLU
            if (r < 0) continue;
            const detail::SegScale ss = detail::segment_scales(w, r);
            const detail::SegScale su = glu ? detail::segment_scales(w, r + out_rows) : ss;
#pragma unroll
            for (int ni = 0; ni < T::kNT; ++ni)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int t = tok[ni][e];
                    if (t >= n_tokens) continue;
                    float* dst = y + static_cast<size_t>(t) * ldy + r;
                    const float v = detail::bitlinear_value(acc[mi][ni][2 * hr + e] - rsum[ni][e], ss, ascale[ni][e]);
                    if (!glu) {
                        detail::store_value(ep, dst, v);
                    } else {
                        const float u = detail::bitlinear_value(acc[mi + T::kMT / 2][ni][2 * hr + e] - rsum[ni][e], su,
                                                                ascale[ni][e]);
                        *dst = detail::glu_value(ep, v, u);
                    }
                }
        }
}

template <class T>
void launch_mma(const DevTernary& w, const DevActs& x, int n_tokens, float* y, int ldy, Epilogue ep, int out_rows,
                cudaStream_t stream) {
    const int rows_per_block = detail::is_glu(ep) ? T::BM / 2 : T::BM;
    const dim3 grid((out_rows + rows_per_block - 1) / rows_per_block, (n_tokens + T::BN - 1) / T::BN);
    if (grid.y > 65535) throw std::invalid_argument("ternary_gemm_mma: too many tokens for one launch");
    const auto kernel = ternary_mma_kernel<T>;
    allow_dynamic_smem(reinterpret_cast<const void*>(kernel), T::kSmem);
    kernel<<<grid, T::kThreads, T::kSmem, stream>>>(w, x, n_tokens, y, ldy, ep);
    CUDA_CHECK_LAUNCH();
}

// Estimated time of a tile shape, up to a constant: whole blocks per SM (the busiest SM sets the pace)
// times the work of a block over the shape's relative speed (the small tile reuses each byte of shared
// memory half as often).
template <class T>
double tile_cost(int out_rows, int n_tokens, bool glu, int sms, double speed) {
    const int rows_per_block = glu ? T::BM / 2 : T::BM;
    const long long blocks = static_cast<long long>((out_rows + rows_per_block - 1) / rows_per_block) *
                             ((n_tokens + T::BN - 1) / T::BN);
    return static_cast<double>((blocks + sms - 1) / sms) * T::BM * T::BN / speed;
}

}  // namespace

namespace detail {
void ternary_gemm_mma_tile(const DevTernary& w, const DevActs& x, int n_tokens, float* y, int ldy, Epilogue ep,
                           cudaStream_t stream, MmaTile tile) {
    const int out_rows = check_ternary_args("ternary_gemm_mma", w, x, n_tokens, y, ldy, ep);
    if (n_tokens == 0) return;
    if (tile == MmaTile::Auto) {
        const int sms = device_limits().sms;
        const bool glu = is_glu(ep);
        tile = tile_cost<TileLarge>(out_rows, n_tokens, glu, sms, 1.0) <=
                       tile_cost<TileSmall>(out_rows, n_tokens, glu, sms, 0.75)
                   ? MmaTile::Large
                   : MmaTile::Small;
    }
    if (tile == MmaTile::Large) launch_mma<TileLarge>(w, x, n_tokens, y, ldy, ep, out_rows, stream);
    else launch_mma<TileSmall>(w, x, n_tokens, y, ldy, ep, out_rows, stream);
}
}  // namespace detail

void ternary_gemm_mma(const DevTernary& w, const DevActs& x, int n_tokens, float* y, int ldy, Epilogue ep,
                      cudaStream_t stream) {
    detail::ternary_gemm_mma_tile(w, x, n_tokens, y, ldy, ep, stream, detail::MmaTile::Auto);
}

}  // namespace cuda
}  // namespace bllama

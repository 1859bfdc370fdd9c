// Stage 0 of issue #18 (the persistent decode kernel): two microbenchmarks that set the design's ceiling.
//
//   bench_cuda_stage0 [--mib 256] [--cols 2048] [--consumers 4] [--steps 20000] [--json PATH] [--deadline-s 20]
//
// stream  One block per SM (the SM count read at run time) streams the packed ternary weights (the real
//         cuda/layout.h words, built by ternary_rows_from_codes from random codes and tiled to --mib MiB, far
//         past L2). Two feeds:
//           tma    a producer warp copies CHUNK-byte pieces into a ring of shared-memory stages with the copy
//                  engine (cp.async.bulk + mbarrier); --consumers warps wait on a stage, use it, release it;
//           direct every warp loads its own 16-byte words (4 in flight per thread), no shared memory;
//         and three ALU loads on the words:
//           none   XOR the words (the data must be read, nothing computed),
//           shift  today's unpack (gemv_ternary.cu): (word >> 2j) & 0x03030303, one dp4a per 4 columns,
//           mask   word & (0x03030303 << 2j) into four accumulators (dp4a u8 x s8), combined at the end as
//                  a0 + (a1 >> 2) + (a2 >> 4) + (a3 >> 6): exact, since a_j is a multiple of 4^j; one
//                  operation per 4 columns fewer than shift.
//         GB/s (bytes of weights read) against a device-to-device copy (read + written) and a plain read
//         kernel. The shift and mask sums are checked against each other and against a host total (every
//         run, before its time is reported).
// hop     A cross-block hop of the persistent design: every block writes its slice of an 8 KB vector, bumps a
//         never-reset epoch counter (red.release.gpu), waits until the counter reaches blocks x (step + 1)
//         (ld.acquire.gpu) and reads the whole 8 KB through L2; us per hop, with every value checked. Also
//         the barrier without data, and a ping-pong between two blocks (one dependency edge: us per hop).
// Every wait has a %globaltimer watchdog (traps after --deadline-s); the host gives each kernel the same
// deadline plus 5 s and exits with status 3 if it is passed.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "cuda/kernels/cuda_util.cuh"
#include "cuda/kernels/kernels.cuh"
#include "cuda/kernels/persistent_sync.cuh"
#include "cuda/layout.h"

using namespace bllama;
using namespace bllama::cuda;
namespace ps = bllama::cuda::persist;

namespace {

enum Alu { kNone = 0, kShift = 1, kMask = 2 };
const char* alu_name(int a) { return a == kNone ? "none" : a == kShift ? "shift" : "mask"; }

__device__ __forceinline__ uint32_t part(const uint4& v, int i) {
    return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}
// Unsigned codes (bytes 0..128 after the mask) times signed activations: dp4a.u32.s32 is exact for both.
__device__ __forceinline__ int dp4a_us(uint32_t a, uint32_t b, int c) {
    int d;
    asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

// The ALU work on one 16-byte word (64 columns) against the 64 activations act[0..3] of those columns.
template <int ALU>
struct Acc {
    int a[4] = {0, 0, 0, 0};
    __device__ __forceinline__ void add(const uint4& w, const uint4 (&act)[4]) {
        if constexpr (ALU == kNone) {
            a[0] ^= static_cast<int>(w.x ^ w.y ^ w.z ^ w.w);
        } else if constexpr (ALU == kShift) {
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j)
                    a[0] = __dp4a(static_cast<int>((part(w, i) >> (2 * j)) & 0x03030303u),
                                  static_cast<int>(part(act[i], j)), a[0]);
        } else {
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) a[j] = dp4a_us(part(w, i) & (0x03030303u << (2 * j)), part(act[i], j), a[j]);
        }
    }
    // The exact dot product so far (none: the XOR fold), then cleared.
    __device__ __forceinline__ long long flush() {
        long long v = ALU == kMask ? static_cast<long long>(a[0]) + (a[1] >> 2) + (a[2] >> 4) + (a[3] >> 6) : a[0];
        a[0] = a[1] = a[2] = a[3] = 0;
        return v;
    }
};

struct StreamArgs {
    const uint4* w;       // the weight words, n_chunks * chunk_bytes
    const int8_t* x;      // cols activations
    long long* out;       // per consumer thread: its exact sum (or XOR fold)
    uint32_t* err;        // watchdog reason
    int n_chunks, chunk_bytes, cols, stages;
    unsigned long long deadline_ns;
};

// Activations of the fixed column group of this thread: the host checks that the thread stride and the chunk
// length are multiples of the row length in 16-byte words, so a thread always sees the same columns.
__device__ __forceinline__ void load_act(const int8_t* x, int cols, int g, uint4 (&act)[4]) {
    const int c = g % (cols / 64);
#pragma unroll
    for (int i = 0; i < 4; ++i) act[i] = __ldg(reinterpret_cast<const uint4*>(x) + 4 * c + i);
}

// Producer/consumer: warp 0 lane 0 feeds, warps 1..C consume. Block b takes chunks b, b + G, ...
template <int ALU>
__global__ void stream_tma_kernel(StreamArgs a) {
#if defined(BLLAMA_HAVE_BULK_COPY)
    extern __shared__ __align__(128) unsigned char smem[];
    const int S = a.stages;
    uint64_t* full = reinterpret_cast<uint64_t*>(smem);
    uint64_t* empty = full + S;
    unsigned char* buf = smem + 128;  // stages of chunk_bytes each (128-byte aligned)
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int consumers = (blockDim.x >> 5) - 1;
    if (threadIdx.x == 0) {
        for (int s = 0; s < S; ++s) ps::mbar_init(full + s, 1), ps::mbar_init(empty + s, consumers);
        ps::mbar_fence_init();
    }
    __syncthreads();
    const int n16 = a.chunk_bytes / 16;
    if (warp == 0) {
        if (lane == 0) {
            int i = 0;
            for (int ch = blockIdx.x; ch < a.n_chunks; ch += gridDim.x, ++i) {
                const int s = i % S;
                if (i >= S) ps::mbar_wait(empty + s, ((i / S) - 1) & 1, a.deadline_ns, a.err, 1);
                ps::mbar_arrive_expect_tx(full + s, a.chunk_bytes);
                ps::bulk_copy_g2s(buf + static_cast<size_t>(s) * a.chunk_bytes,
                                  a.w + static_cast<size_t>(ch) * n16, a.chunk_bytes, full + s);
            }
        }
        return;
    }
    const int ct = threadIdx.x - 32, stride = consumers * 32;
    uint4 act[4];
    load_act(a.x, a.cols, ct, act);
    Acc<ALU> acc;
    long long total = 0;
    int i = 0;
    for (int ch = blockIdx.x; ch < a.n_chunks; ch += gridDim.x, ++i) {
        const int s = i % S;
        ps::mbar_wait(full + s, (i / S) & 1, a.deadline_ns, a.err, 2);
        const uint4* st = reinterpret_cast<const uint4*>(buf + static_cast<size_t>(s) * a.chunk_bytes);
#pragma unroll 4
        for (int q = ct; q < n16; q += stride) acc.add(st[q], act);
        __syncwarp();
        if (lane == 0) ps::mbar_arrive(empty + s);
        total = ALU == kNone ? (total ^ acc.flush()) : total + acc.flush();
    }
    a.out[static_cast<size_t>(blockIdx.x) * stride + ct] = total;
#else
    __trap();  // the bulk copy engine is sm_90+ (the benchmark refuses other devices before launching)
#endif
}

// Direct loads: the same assignment of chunks and words, each thread with 4 words in flight.
template <int ALU>
__global__ void stream_direct_kernel(StreamArgs a) {
    const int ct = threadIdx.x, stride = blockDim.x;
    const int n16 = a.chunk_bytes / 16;
    uint4 act[4];
    load_act(a.x, a.cols, ct, act);
    Acc<ALU> acc;
    long long total = 0;
    for (int ch = blockIdx.x; ch < a.n_chunks; ch += gridDim.x) {
        const uint4* src = a.w + static_cast<size_t>(ch) * n16;
        int q = ct;
        for (; q + 3 * stride < n16; q += 4 * stride) {
            uint4 v[4];
#pragma unroll
            for (int k = 0; k < 4; ++k) v[k] = __ldg(src + q + k * stride);
#pragma unroll
            for (int k = 0; k < 4; ++k) acc.add(v[k], act);
        }
        for (; q < n16; q += stride) acc.add(__ldg(src + q), act);
        total = ALU == kNone ? (total ^ acc.flush()) : total + acc.flush();
    }
    a.out[static_cast<size_t>(blockIdx.x) * stride + ct] = total;
}

// The read ceiling: a plain grid-stride read of every word, many blocks, 4 loads in flight per thread.
__global__ void read_kernel(const uint4* __restrict__ w, size_t n16, unsigned* sink) {
    uint32_t x = 0;
    const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
    size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    for (; i + 3 * stride < n16; i += 4 * stride) {
        uint4 v[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) v[k] = __ldg(w + i + k * stride);
#pragma unroll
        for (int k = 0; k < 4; ++k) x ^= v[k].x ^ v[k].y ^ v[k].z ^ v[k].w;
    }
    for (; i < n16; i += stride) x ^= w[i].x;
    if (x == 0x9e3779b9u) *sink = x;  // keeps the loads; practically never stores
}

// ---------------------------------------------------------------------------------------------------
// Cross-block hops

constexpr int kHopBytes = 8192;
constexpr int kHop16 = kHopBytes / 16;
__device__ __forceinline__ uint4 hop_value(uint32_t step, uint32_t idx) {
    return make_uint4(step, idx, step * 2654435761u ^ idx, ~step);
}

// All blocks: write a slice of buf[step & 1], count in, wait for everyone, read all of it (if with_data).
// The counter is never reset: `base` is its value before this launch (the host counts the bumps; a block cannot
// read it at its start, since a faster block may already have counted itself in).
__global__ void hop_grid_kernel(uint4* buf, uint32_t* counter, uint32_t base, uint32_t* bad, uint32_t* err,
                                int steps, bool with_data, unsigned long long deadline_ns) {
    const int G = gridDim.x;
    uint32_t nbad = 0;
    for (int s = 0; s < steps; ++s) {
        uint4* b = buf + (s & 1) * kHop16;
        if (with_data) {
            const int lo = blockIdx.x * kHop16 / G, hi = (blockIdx.x + 1) * kHop16 / G;
            for (int k = lo + threadIdx.x; k < hi; k += blockDim.x) __stcg(b + k, hop_value(s, k));
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            ps::red_release_add(counter, 1);
            ps::wait_counter(counter, base + static_cast<uint32_t>(G) * (s + 1), deadline_ns, err, s);
        }
        __syncthreads();
        if (with_data)
            for (int k = threadIdx.x; k < kHop16; k += blockDim.x) {
                const uint4 v = ps::ld_cg16(b + k), e = hop_value(s, k);
                nbad += v.x != e.x || v.y != e.y || v.z != e.z || v.w != e.w;
            }
    }
    if (nbad) atomicAdd(bad, nbad);
}

// Two blocks: block 0 writes 8 KB into buf0 and bumps c[0]; block 1 waits for it, reads it, writes buf1 and bumps
// c[1]; block 0 waits for that, reads it, ... Each edge (write, release, acquire, read) is one hop.
// Both counters advance by `steps` per launch; `base` is their value before it (the host counts). The host gives
// the blocks more than half an SM's shared memory each, so they run on different SMs.
__global__ void hop_pingpong_kernel(uint4* buf, uint32_t* c, uint32_t base, uint32_t* bad, uint32_t* err, int steps,
                                    unsigned long long deadline_ns) {
    const int me = blockIdx.x;  // 0 or 1
    uint4* mine = buf + me * kHop16;
    const uint4* theirs = buf + (1 - me) * kHop16;
    const uint32_t base0 = base, base1 = base;
    uint32_t nbad = 0;
    for (int s = 0; s < steps; ++s) {
        if (me == 1 || s > 0) {  // wait for the other's step (block 0 starts)
            if (threadIdx.x == 0)
                ps::wait_counter(c + (1 - me), (me ? base0 : base1) + (me ? s + 1 : s), deadline_ns, err, s);
            __syncthreads();
            for (int k = threadIdx.x; k < kHop16; k += blockDim.x) {
                const uint4 v = ps::ld_cg16(theirs + k), e = hop_value(me ? s : s - 1, k + (1 - me) * kHop16);
                nbad += v.x != e.x || v.y != e.y || v.z != e.z || v.w != e.w;
            }
        }
        for (int k = threadIdx.x; k < kHop16; k += blockDim.x) __stcg(mine + k, hop_value(s, k + me * kHop16));
        __syncthreads();
        if (threadIdx.x == 0) ps::red_release_add(c + me, 1);
    }
    if (nbad) atomicAdd(bad, nbad);
}

// ---------------------------------------------------------------------------------------------------
// Host side

using Clock = std::chrono::steady_clock;
double g_deadline_s = 20;

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0.0 : v[v.size() / 2];
}

// Waits for `e` with a host deadline: a kernel that neither finishes nor traps ends the process (status 3),
// which frees the device, instead of hanging the whole call.
void wait_or_die(cudaEvent_t e, const char* what) {
    const auto t0 = Clock::now();
    for (;;) {
        const cudaError_t r = cudaEventQuery(e);
        if (r == cudaSuccess) return;
        if (r != cudaErrorNotReady) CUDA_CHECK(r);
        if (std::chrono::duration<double>(Clock::now() - t0).count() > g_deadline_s + 5) {
            std::fprintf(stderr, "host deadline: %s still running after %.0f s, exiting\n", what, g_deadline_s + 5);
            std::fflush(stdout);
            std::_Exit(3);
        }
        std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
}

// The device watchdog's deadline, g_deadline_s from now on the device's %globaltimer (not the host clock).
// Taken before a row's runs, outside the timed region (it synchronizes).
__global__ void read_globaltimer(unsigned long long* t) { *t = ps::global_ns(); }
unsigned long long deadline_from_now() {
    DeviceBuffer<unsigned long long> t(1);
    read_globaltimer<<<1, 1>>>(t.get());
    CUDA_CHECK_LAUNCH();
    unsigned long long h = 0;
    t.download(&h, 1);
    CUDA_CHECK(cudaDeviceSynchronize());
    return h + static_cast<unsigned long long>(g_deadline_s * 1e9);
}

// Times fn() (which enqueues one run on the default stream): 2 warm-ups, then the median of `reps`.
template <class F>
double time_ms(const char* what, int reps, F&& fn) {
    CudaEvent e0, e1;
    std::vector<double> ms;
    for (int r = 0; r < reps + 2; ++r) {
        e0.record(nullptr);
        fn();
        CUDA_CHECK_LAUNCH();
        e1.record(nullptr);
        wait_or_die(e1.get(), what);
        float t = 0;
        CUDA_CHECK(cudaEventElapsedTime(&t, e0.get(), e1.get()));
        if (r >= 2) ms.push_back(t);
    }
    return median(ms);
}

struct Row {
    std::string bench, feed, alu;
    int chunk = 0, stages = 0;
    double gbs = 0, us = 0;
    bool exact = true;
};

}  // namespace

int main(int argc, char** argv) {
    int mib = 256, cols = 2048, consumers = 4, steps = 20000;
    std::string json;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto val = [&]() -> std::string {
            if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value");
            return argv[++i];
        };
        if (a == "--mib") mib = std::stoi(val());
        else if (a == "--cols") cols = std::stoi(val());
        else if (a == "--consumers") consumers = std::stoi(val());
        else if (a == "--steps") steps = std::stoi(val());
        else if (a == "--json") json = val();
        else if (a == "--deadline-s") g_deadline_s = std::stod(val());
        else {
            std::fprintf(stderr, "usage: %s [--mib N] [--cols N] [--consumers N] [--steps N] [--json PATH] [--deadline-s S]\n",
                         argv[0]);
            return 2;
        }
    }
    if (device_count() == 0) {
        std::printf("SKIP: %s\n", device_description());
        return 77;
    }
    int dev = 0, cc_major = 0, sms = 0;
    CUDA_CHECK(cudaGetDevice(&dev));
    CUDA_CHECK(cudaDeviceGetAttribute(&cc_major, cudaDevAttrComputeCapabilityMajor, dev));
    CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    std::printf("device: %s; stage-0 microbenchmarks, %d blocks (one per SM)\n", device_description(), sms);
    if (cols % 256 || cols < 256 || consumers < 1 || consumers > 31)
        throw std::invalid_argument("--cols must be a multiple of 256, --consumers 1..31");
    const int row16 = cols / 64;  // 16-byte words per row
    const int stride = consumers * 32;
    // A thread keeps the activations of one column group in registers: its stride must be whole rows.
    if (stride % row16) throw std::invalid_argument("32 x --consumers must be a multiple of cols / 64");

    // The real layout: one matrix of random codes (rows x cols), tiled to mib MiB.
    const int base_rows = 4096;
    std::mt19937 rng(20261206);
    std::vector<int8_t> codes(static_cast<size_t>(base_rows) * cols);
    for (auto& c : codes) c = static_cast<int8_t>(static_cast<int>(rng() % 3) - 1);
    const TernaryRows tr = ternary_rows_from_codes(codes.data(), base_rows, cols, 1.0f);
    const size_t base_words = tr.words.size();
    const size_t reps = std::max<size_t>(1, (static_cast<size_t>(mib) << 20) / (base_words * 4));
    std::vector<int8_t> x(static_cast<size_t>(cols));
    for (auto& v : x) v = static_cast<int8_t>(static_cast<int>(rng() % 255) - 127);
    // Host total of sum u * x over one copy of the matrix (u = q + 1, the stored code).
    long long base_total = 0;
    for (int r = 0; r < base_rows; ++r)
        for (int k = 0; k < cols; ++k) base_total += (codes[static_cast<size_t>(r) * cols + k] + 1) * x[static_cast<size_t>(k)];
    const long long want_total = base_total * static_cast<long long>(reps);
    const size_t total_words = base_words * reps, total_bytes = total_words * 4;
    DeviceBuffer<uint32_t> w(total_words);
    for (size_t r = 0; r < reps; ++r)
        CUDA_CHECK(cudaMemcpy(w.get() + r * base_words, tr.words.data(), base_words * 4, cudaMemcpyHostToDevice));
    DeviceBuffer<int8_t> dx(x.size());
    dx.upload(x.data(), x.size());
    DeviceBuffer<uint32_t> err(1), sink(1);
    CUDA_CHECK(cudaMemset(err.get(), 0, 4));
    CUDA_CHECK(cudaDeviceSynchronize());
    std::printf("weights: %.0f MiB (%zu copies of a %d x %d matrix in the cuda/layout.h words)\n",
                total_bytes / 1048576.0, reps, base_rows, cols);

    std::vector<Row> rows;
    // Ceilings: copy (read + written) and a plain read.
    {
        DeviceBuffer<uint8_t> dst(total_bytes);
        const double ms = time_ms("copy", 7, [&] {
            CUDA_CHECK(cudaMemcpyAsync(dst.get(), w.get(), total_bytes, cudaMemcpyDeviceToDevice, nullptr));
        });
        rows.push_back({"stream", "copy", "-", 0, 0, 2.0 * total_bytes / (ms * 1e-3) / 1e9, ms * 1e3, true});
        const double ms2 = time_ms("read", 7, [&] {
            read_kernel<<<sms * 4, 512>>>(reinterpret_cast<const uint4*>(w.get()), total_bytes / 16, sink.get());
        });
        rows.push_back({"stream", "read", "-", 0, 0, total_bytes / (ms2 * 1e-3) / 1e9, ms2 * 1e3, true});
    }

    const int chunk_sizes[] = {8192, 16384, 32768};
    const int stage_counts[] = {2, 4, 8};
    DeviceBuffer<long long> out(static_cast<size_t>(sms) * stride);
    std::vector<long long> h_out(out.size()), ref_shift;
    for (int feed = 0; feed < 2; ++feed) {
        if (feed == 0 && cc_major < 9) {
            std::printf("tma feed skipped: the bulk copy engine needs sm_90+\n");
            continue;
        }
        for (int chunk : chunk_sizes) {
            if (total_bytes % chunk || (chunk / 16) % row16 || (chunk / 16) < stride) continue;
            for (int stages : stage_counts) {
                if (feed == 1 && stages != stage_counts[0]) continue;  // direct has no stages
                for (int alu = 0; alu < 3; ++alu) {
                    StreamArgs sa{reinterpret_cast<const uint4*>(w.get()), dx.get(), out.get(), err.get(),
                                  static_cast<int>(total_bytes / chunk), chunk, cols, stages, 0};
                    const int smem = 128 + stages * chunk;
                    if (smem > 227 * 1024) continue;
                    sa.deadline_ns = deadline_from_now();
                    auto launch = [&] {
                        if (feed == 0) {
                            void (*k)(StreamArgs) = alu == 0 ? stream_tma_kernel<kNone> : alu == 1 ? stream_tma_kernel<kShift>
                                                                                    : stream_tma_kernel<kMask>;
                            CUDA_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
                            k<<<sms, stride + 32, smem>>>(sa);
                        } else {
                            void (*k)(StreamArgs) = alu == 0 ? stream_direct_kernel<kNone> : alu == 1 ? stream_direct_kernel<kShift>
                                                                                       : stream_direct_kernel<kMask>;
                            k<<<sms, stride>>>(sa);
                        }
                    };
                    // Exactness first (one run), then the timing.
                    CUDA_CHECK(cudaMemset(out.get(), 0xA5, out.bytes()));
                    CudaEvent done;
                    launch();
                    CUDA_CHECK_LAUNCH();
                    done.record(nullptr);
                    wait_or_die(done.get(), "stream");
                    out.download(h_out.data(), h_out.size());
                    CUDA_CHECK(cudaDeviceSynchronize());
                    bool exact = true;
                    if (alu != kNone) {
                        long long sum = 0;
                        for (long long v : h_out) sum += v;
                        exact = sum == want_total;
                        if (alu == kShift) ref_shift = h_out;
                        else exact = exact && h_out == ref_shift;
                    }
                    const double ms = time_ms("stream", 5, launch);
                    Row r{"stream", feed == 0 ? "tma" : "direct", alu_name(alu), chunk, feed == 0 ? stages : 0,
                          total_bytes / (ms * 1e-3) / 1e9, ms * 1e3, exact};
                    rows.push_back(r);
                    std::printf("stream %-6s chunk %5d stages %d alu %-5s %7.0f GB/s %s\n", r.feed.c_str(), chunk,
                                r.stages, r.alu.c_str(), r.gbs, exact ? "" : "  MISMATCH (sum differs from the host's)");
                }
            }
        }
    }

    // Hops.
    {
        DeviceBuffer<uint4> hb(4 * kHop16);
        DeviceBuffer<uint32_t> ctr(4), bad(1);
        CUDA_CHECK(cudaMemset(ctr.get(), 0, ctr.bytes()));
        CUDA_CHECK(cudaMemset(hb.get(), 0, hb.bytes()));
        uint32_t grid_base = 0, pp_base = 0;  // the counters' values before the next launch
        for (int with_data = 0; with_data < 2; ++with_data) {
            CUDA_CHECK(cudaMemset(bad.get(), 0, 4));
            bool wd = with_data != 0;
            uint4* hbp = hb.get();
            uint32_t* cp = ctr.get();
            uint32_t* bp = bad.get();
            uint32_t* ep = err.get();
            unsigned long long dl = deadline_from_now();
            const double ms = time_ms("hop_grid", 5, [&] {
                void* args[] = {&hbp, &cp, &grid_base, &bp, &ep, &steps, &wd, &dl};
                CUDA_CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<void*>(hop_grid_kernel), dim3(sms), dim3(256),
                                                       args, 0, nullptr));
                grid_base += static_cast<uint32_t>(sms) * steps;
            });
            uint32_t nb = 0;
            bad.download(&nb, 1);
            CUDA_CHECK(cudaDeviceSynchronize());
            rows.push_back({"hop", wd ? "grid+8KB" : "grid", "-", kHopBytes, 0, 0, ms * 1e3 / steps, nb == 0});
            std::printf("hop grid (%d blocks)%s: %.3f us per hop%s\n", sms, wd ? " + 8 KB read" : "", ms * 1e3 / steps,
                        nb ? "  WRONG DATA SEEN" : "");
        }
        CUDA_CHECK(cudaMemset(bad.get(), 0, 4));
        uint4* hbp = hb.get();
        uint32_t* cp = ctr.get() + 2;
        uint32_t* bp = bad.get();
        uint32_t* ep = err.get();
        int smem_sm = 0, smem_optin = 0;
        CUDA_CHECK(cudaDeviceGetAttribute(&smem_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev));
        CUDA_CHECK(cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
        const int pp_smem = std::min(smem_optin, smem_sm / 2 + 1024);
        CUDA_CHECK(cudaFuncSetAttribute(reinterpret_cast<const void*>(hop_pingpong_kernel),
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, pp_smem));
        unsigned long long dl = deadline_from_now();
        const double ms = time_ms("hop_pingpong", 5, [&] {
            void* args[] = {&hbp, &cp, &pp_base, &bp, &ep, &steps, &dl};
            CUDA_CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<void*>(hop_pingpong_kernel), dim3(2), dim3(256),
                                                   args, static_cast<size_t>(pp_smem), nullptr));
            pp_base += static_cast<uint32_t>(steps);
        });
        uint32_t nb = 0;
        bad.download(&nb, 1);
        CUDA_CHECK(cudaDeviceSynchronize());
        // 2 * steps - 1 edges: every step of block 1 waits for block 0 and every later step of block 0 for block 1.
        const double us = ms * 1e3 / (2.0 * steps - 1);
        rows.push_back({"hop", "pingpong+8KB", "-", kHopBytes, 0, 0, us, nb == 0});
        std::printf("hop ping-pong (2 blocks) + 8 KB read: %.3f us per hop%s\n", us, nb ? "  WRONG DATA SEEN" : "");
    }

    bool all_exact = true;
    std::printf("\n%-7s %-13s %-6s %6s %6s %9s %9s %6s\n", "bench", "feed", "alu", "chunk", "stages", "GB/s", "us", "exact");
    const double copy = rows[0].gbs;
    for (const Row& r : rows) {
        all_exact = all_exact && r.exact;
        std::printf("%-7s %-13s %-6s %6d %6d %9.0f %9.3f %6s%s\n", r.bench.c_str(), r.feed.c_str(), r.alu.c_str(),
                    r.chunk, r.stages, r.gbs, r.us, r.exact ? "yes" : "NO",
                    r.bench == "stream" && r.feed != "copy" ? (" " + std::to_string(int(100 * r.gbs / copy + 0.5)) + "% of copy").c_str() : "");
    }
    if (!json.empty()) {
        FILE* f = std::fopen(json.c_str(), "w");
        if (!f) throw std::runtime_error("cannot write " + json);
        for (const Row& r : rows)
            std::fprintf(f, "{\"bench\": \"%s\", \"feed\": \"%s\", \"alu\": \"%s\", \"chunk\": %d, \"stages\": %d, "
                            "\"GB_s\": %.1f, \"us\": %.4f, \"exact\": %s, \"blocks\": %d, \"cols\": %d, \"consumers\": %d}\n",
                         r.bench.c_str(), r.feed.c_str(), r.alu.c_str(), r.chunk, r.stages, r.gbs, r.us,
                         r.exact ? "true" : "false", sms, cols, consumers);
        std::fclose(f);
        std::printf("wrote %s\n", json.c_str());
    }
    return all_exact ? 0 : 1;
}

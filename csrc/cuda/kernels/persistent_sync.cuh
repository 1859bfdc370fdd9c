// Device-side synchronization for persistent (one block per SM) kernels: epoch counters between blocks, a
// globaltimer watchdog, and the mbarrier / bulk-copy steps of a producer warp (issue #18). Used by the stage-0
// microbenchmarks (bench/bench_cuda_stage0.cu) and the persistent-layer skeleton; nothing in the default decode
// path includes it.
//
// Epoch counters are never reset: a waiter waits for `counter >= target`, where target grows with the step, so
// no block ever has to clear a counter another block may still be reading (the reset races that a counter
// "back to zero" design needs a second barrier for). Writers publish with red.release.gpu (one fire-and-forget
// atomic that orders every earlier write of the thread before it), readers observe with ld.acquire.gpu (orders
// every later read after it); the data in between must be read through L2 (ld.global.cg / ld.relaxed), never
// through the non-coherent __ldg path, which may serve a line cached before the flag flipped.
//
// The watchdog: every spin loop reads %globaltimer (ns) now and then and traps when a wait passed its
// deadline, so a wrong counter target costs a trap (the host sees cudaErrorLaunchFailure) in a fraction of a
// second instead of a hung device that only a reset would free.
#pragma once

#include <cstdint>

namespace bllama {
namespace cuda {
namespace persist {

__device__ __forceinline__ uint64_t global_ns() {
    uint64_t t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

__device__ __forceinline__ uint32_t ld_acquire(const uint32_t* p) {
    uint32_t v;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
#else
    v = *reinterpret_cast<const volatile uint32_t*>(p);
    __threadfence();
#endif
    return v;
}

// Adds `v` to *p after every earlier memory operation of this thread (release, device scope). Only one
// thread of a block should publish: __syncthreads() first, so the whole block's writes are ordered before it
// (the barrier orders them before thread 0's release; cumulativity carries them out with it).
__device__ __forceinline__ void red_release_add(uint32_t* p, uint32_t v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700
    asm volatile("red.release.gpu.global.add.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
#else
    __threadfence();
    atomicAdd(p, v);
#endif
}

// Why a watchdog fired: written to *err (when not null) before the trap, readable after the host sees the error
// only if the context survives; the printf goes to the host's stdout either way.
enum WatchdogReason : uint32_t { kWaitCounter = 1, kWaitBarrier = 2 };

// Spins until *counter >= target (wrap-free: counters are 32-bit and a run bumps them far less than 2^31
// times). One thread per block waits; the caller then __syncthreads() so the block's reads follow the acquire.
__device__ __forceinline__ void wait_counter(const uint32_t* counter, uint32_t target, uint64_t deadline_ns,
                                             uint32_t* err, uint32_t tag) {
    uint32_t spins = 0;
    while (static_cast<int32_t>(ld_acquire(counter) - target) < 0) {
        if ((++spins & 255u) == 0 && global_ns() > deadline_ns) {
            if (err) atomicExch(err, (kWaitCounter << 24) | (tag & 0xffffffu));
            printf("watchdog: block %d waited past its deadline for counter %p >= %u (has %u, tag %u)\n",
                   blockIdx.x, counter, target, ld_acquire(counter), tag);
            __trap();
        }
    }
}

// 16 bytes through L2 (bypassing L1: another SM wrote them after this kernel started).
__device__ __forceinline__ uint4 ld_cg16(const void* p) { return __ldcg(reinterpret_cast<const uint4*>(p)); }

// ---------------------------------------------------------------------------------------------------
// mbarrier + bulk copy (sm_90): a producer thread copies a chunk of global memory into a shared-memory stage
// with the copy engine; consumers wait on the stage's "full" barrier and release it on its "empty" barrier.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define BLLAMA_HAVE_BULK_COPY 1
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(bar)), "r"(count) : "memory");
}
// Makes the initialized barriers visible to the copy engine (the async proxy).
__device__ __forceinline__ void mbar_fence_init() { asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory"); }
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
    asm volatile("{\n .reg .b64 st;\n mbarrier.arrive.shared::cta.b64 st, [%0];\n}" ::"r"(smem_addr(bar)) : "memory");
}
__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
    asm volatile("{\n .reg .b64 st;\n mbarrier.arrive.expect_tx.shared::cta.b64 st, [%0], %1;\n}" ::"r"(smem_addr(bar)),
                 "r"(bytes)
                 : "memory");
}
__device__ __forceinline__ bool mbar_try_wait(uint64_t* bar, uint32_t parity) {
    uint32_t ok;
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}"
        : "=r"(ok)
        : "r"(smem_addr(bar)), "r"(parity)
        : "memory");
    return ok != 0;
}
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity, uint64_t deadline_ns, uint32_t* err,
                                          uint32_t tag) {
    uint32_t spins = 0;
    while (!mbar_try_wait(bar, parity)) {
        if ((++spins & 63u) == 0 && global_ns() > deadline_ns) {
            if (err) atomicExch(err, (kWaitBarrier << 24) | (tag & 0xffffffu));
            printf("watchdog: block %d thread %d waited past its deadline on an mbarrier (tag %u)\n", blockIdx.x,
                   threadIdx.x, tag);
            __trap();
        }
    }
}
// bytes % 16 == 0, both addresses 16-byte aligned. Completes `bytes` of transactions on `bar`.
__device__ __forceinline__ void bulk_copy_g2s(void* dst_smem, const void* src, uint32_t bytes, uint64_t* bar) {
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
            smem_addr(dst_smem)),
        "l"(src), "r"(bytes), "r"(smem_addr(bar))
        : "memory");
}
#endif

}  // namespace persist
}  // namespace cuda
}  // namespace bllama

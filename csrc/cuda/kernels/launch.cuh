// Kernel launches of the CUDA backend, with optional Programmatic Dependent Launch (PDL, sm_90+).
//
// A kernel launched with cudaLaunchAttributeProgrammaticStreamSerialization may start before the kernel
// ahead of it in the stream has finished: as soon as every block of that kernel has executed
// griddepcontrol.launch_dependents (pdl_trigger) or exited. It must then execute griddepcontrol.wait
// (pdl_wait), which returns once the kernel ahead has completed and its memory is visible, before it reads
// or writes anything an earlier kernel of the stream reads or writes. What it may do before the wait: read
// constant data (weights, norm weights), which is the point: the next matrix starts streaming while the
// previous kernel drains. Without the attribute both instructions are no-ops and the kernel runs as before.
//
// The rules every kernel that launch() may start with PDL follows:
//  - pdl_wait() is executed by every thread of every block, before any access to data another kernel
//    writes or reads, and before any early exit (so the kernel cannot complete before its predecessor, and
//    completion stays transitive down the stream);
//  - pdl_trigger() comes first: correctness never depends on where it is (the dependent waits for our
//    completion anyway); early, it lets the dependent's blocks become resident and issue their weight loads.
//
// Whether launch() uses PDL is a thread-local toggle set by PdlScope (CudaModel, around the kernels of a
// decode step) rather than an argument of every launcher: the kernels.cuh launchers keep their signatures,
// the prompt path (the same launchers) stays plainly serialized, and stream capture records on the calling
// thread (capture_graph uses cudaStreamCaptureModeThreadLocal), so the toggle covers exactly the launches
// captured into the decode graph. Stream capture turns the attribute into programmatic graph edges
// (CUDA 12.3+).
#pragma once

#include <cuda_runtime.h>

#include <utility>

#include "cuda/kernels/cuda_util.cuh"

namespace bllama {
namespace cuda {

// ---------------------------------------------------------------------------------------------------
// Device side

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// (Build with -DBLLAMA_PDL_NO_TRIGGER to compile the early trigger out, for experiments: the dependents then
// launch only as our blocks exit.)
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && !defined(BLLAMA_PDL_NO_TRIGGER)
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Prefetch of constant data (weights) into L2 before pdl_wait() (the LM heads); no register is tied up.
__device__ __forceinline__ void prefetch_global_l2(const void* p) {
    asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}

// ---------------------------------------------------------------------------------------------------
// Host side

// True when the current device can launch with PDL (compute capability 9.0 or newer). device.cu.
bool pdl_supported();

// Launches made by this thread while a PdlScope(true) lives use PDL; nested scopes restore the outer state.
// Pass true only where pdl_supported(): CudaModel decides once.
inline bool& pdl_flag() {
    static thread_local bool on = false;
    return on;
}
class PdlScope {
public:
    explicit PdlScope(bool on) : prev_(pdl_flag()) { pdl_flag() = on; }
    ~PdlScope() { pdl_flag() = prev_; }
    PdlScope(const PdlScope&) = delete;
    PdlScope& operator=(const PdlScope&) = delete;

private:
    bool prev_;
};

// kernel<<<grid, block, smem, stream>>>(args...), with the PDL attribute while a PdlScope(true) is active;
// checks the launch either way.
template <class... Params, class... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream, Args&&... args) {
    if (!pdl_flag()) {
        kernel<<<grid, block, smem, stream>>>(std::forward<Args>(args)...);
        CUDA_CHECK_LAUNCH();
        return;
    }
    cudaLaunchAttribute attr[1] = {};
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = stream;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));
    CUDA_CHECK_LAUNCH();
}

}  // namespace cuda
}  // namespace bllama

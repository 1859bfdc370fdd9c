// CUDA error checking and RAII device memory for the CUDA backend. Every CUDA call is checked; a
// failure becomes a CudaError (std::runtime_error) naming the call, the file and line, and CUDA's text.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <stdexcept>
#include <string>
#include <utility>

namespace bllama {

class CudaError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

inline void cuda_check(cudaError_t e, const char* what, const char* file, int line) {
    if (e != cudaSuccess)
        throw CudaError(std::string("CUDA error in ") + what + " (" + file + ":" + std::to_string(line) +
                        "): " + cudaGetErrorName(e) + ": " + cudaGetErrorString(e));
}
#define CUDA_CHECK(expr) ::bllama::cuda_check((expr), #expr, __FILE__, __LINE__)
// After a kernel launch: catches bad launch configurations at once (execution errors surface at the
// next synchronizing call, which is checked too).
#define CUDA_CHECK_LAUNCH() ::bllama::cuda_check(cudaGetLastError(), "kernel launch", __FILE__, __LINE__)

// An owning device array of n elements of T (uninitialized). Move-only.
template <class T>
class DeviceBuffer {
public:
    DeviceBuffer() = default;
    explicit DeviceBuffer(size_t n) : n_(n) {
        if (n) CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&p_), n * sizeof(T)));
    }
    ~DeviceBuffer() {
        if (p_) cudaFree(p_);
    }
    DeviceBuffer(DeviceBuffer&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
    DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
        if (this != &o) {
            if (p_) cudaFree(p_);
            p_ = std::exchange(o.p_, nullptr);
            n_ = std::exchange(o.n_, 0);
        }
        return *this;
    }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;

    T* get() const { return p_; }
    size_t size() const { return n_; }
    size_t bytes() const { return n_ * sizeof(T); }

    void upload(const T* src, size_t n, cudaStream_t s = nullptr) {
        if (n > n_) throw std::length_error("DeviceBuffer::upload: too many elements");
        if (n) CUDA_CHECK(cudaMemcpyAsync(p_, src, n * sizeof(T), cudaMemcpyHostToDevice, s));
    }
    void download(T* dst, size_t n, cudaStream_t s = nullptr) const {
        if (n > n_) throw std::length_error("DeviceBuffer::download: too many elements");
        if (n) CUDA_CHECK(cudaMemcpyAsync(dst, p_, n * sizeof(T), cudaMemcpyDeviceToHost, s));
    }

private:
    T* p_ = nullptr;
    size_t n_ = 0;
};

// RAII stream and events.
class CudaStream {
public:
    CudaStream() { CUDA_CHECK(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking)); }
    ~CudaStream() {
        if (s_) cudaStreamDestroy(s_);
    }
    CudaStream(const CudaStream&) = delete;
    CudaStream& operator=(const CudaStream&) = delete;
    cudaStream_t get() const { return s_; }
    void sync() const { CUDA_CHECK(cudaStreamSynchronize(s_)); }

private:
    cudaStream_t s_ = nullptr;
};

class CudaEvent {
public:
    CudaEvent() { CUDA_CHECK(cudaEventCreate(&e_)); }
    ~CudaEvent() {
        if (e_) cudaEventDestroy(e_);
    }
    CudaEvent(const CudaEvent&) = delete;
    CudaEvent& operator=(const CudaEvent&) = delete;
    cudaEvent_t get() const { return e_; }
    void record(cudaStream_t s) { CUDA_CHECK(cudaEventRecord(e_, s)); }
    // Milliseconds from `start` to this event (both recorded, this one completed).
    float ms_since(const CudaEvent& start) const {
        CUDA_CHECK(cudaEventSynchronize(e_));
        float ms = 0;
        CUDA_CHECK(cudaEventElapsedTime(&ms, start.e_, e_));
        return ms;
    }

private:
    cudaEvent_t e_ = nullptr;
};

// Owns an instantiated graph. Move-only.
class GraphExec {
public:
    GraphExec() = default;
    explicit GraphExec(cudaGraphExec_t e) : e_(e) {}
    ~GraphExec() {
        if (e_) cudaGraphExecDestroy(e_);
    }
    GraphExec(GraphExec&& o) noexcept : e_(std::exchange(o.e_, nullptr)) {}
    GraphExec& operator=(GraphExec&& o) noexcept {
        if (this != &o) {
            if (e_) cudaGraphExecDestroy(e_);
            e_ = std::exchange(o.e_, nullptr);
        }
        return *this;
    }
    GraphExec(const GraphExec&) = delete;
    GraphExec& operator=(const GraphExec&) = delete;
    cudaGraphExec_t get() const { return e_; }
    void launch(cudaStream_t s) const { CUDA_CHECK(cudaGraphLaunch(e_, s)); }

private:
    cudaGraphExec_t e_ = nullptr;
};

// Captures everything record() enqueues on stream s (thread-local capture mode) into an instantiated graph.
// If record() throws, the capture is ended and discarded before the exception goes on.
template <class Record>
GraphExec capture_graph(cudaStream_t s, Record&& record) {
    cudaGraph_t graph = nullptr;
    CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    try {
        record();
    } catch (...) {
        cudaStreamEndCapture(s, &graph);
        if (graph) cudaGraphDestroy(graph);
        throw;
    }
    CUDA_CHECK(cudaStreamEndCapture(s, &graph));
    cudaGraphExec_t exec = nullptr;
    const cudaError_t e = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    CUDA_CHECK(e);
    return GraphExec(exec);
}

}  // namespace bllama

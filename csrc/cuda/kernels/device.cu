#include <cstdio>
#include <string>

#include "cuda/kernels/kernels.cuh"
#include "cuda/kernels/launch.cuh"

namespace bllama {
namespace cuda {

int device_count() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();  // clear the sticky "no driver" / "no device" error
        return 0;
    }
    return n;
}

const char* device_description() {
    static std::string desc;
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        cudaGetLastError();
        // Without any NVIDIA driver cudart reports "driver version is insufficient": say what it means.
        desc = std::string("no CUDA device (no NVIDIA driver or GPU visible; cudaGetDeviceCount: ") +
               cudaGetErrorString(e) + ")";
        return desc.c_str();
    }
    if (n == 0) return "no CUDA device";
    int dev = 0;
    cudaDeviceProp p{};
    if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&p, dev) != cudaSuccess) {
        cudaGetLastError();
        return "CUDA device properties unavailable";
    }
    char buf[512];
    std::snprintf(buf, sizeof buf, "%s, sm_%d%d, %d SMs, %.1f GiB", p.name, p.major, p.minor, p.multiProcessorCount,
                  p.totalGlobalMem / 1073741824.0);
    desc = buf;
    return desc.c_str();
}

bool pdl_supported() {
    int dev = 0, major = 0;
    CUDA_CHECK(cudaGetDevice(&dev));
    CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    return major >= 9;
}

}  // namespace cuda
}  // namespace bllama

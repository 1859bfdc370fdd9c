// Prompt GEMM through cuBLASLt (the library's int8 tensor-core kernels), as a reference point for our own
// MMA kernel and a fallback:
//   1. unpack the ternary words of one matrix into an int8 workspace holding q in {-1, 0, 1};
//   2. cuBLASLt int8 x int8 -> int32 GEMM (no row-sum correction: the workspace holds signed q);
//   3. the epilogue kernel, the same float epilogue as the other paths (ternary_common.cuh).
//
// The library is opened at run time (dlopen), so that importing the engine needs no CUDA library and a
// machine without cuBLASLt still runs every other path. Tried in order: $BLLAMA_CUBLASLT (a full path),
// libcublasLt.so.13, libcublasLt.so, /usr/local/cuda/lib64/libcublasLt.so.13, and the pip wheel's
// nvidia/cu13/lib/libcublasLt.so.13 beside the directory holding this code's shared object
// (site-packages/bllama/_engine*.so -> site-packages/nvidia).
// A library whose major version differs from the headers' is refused (its ABI may differ).
//
// Layout. cuBLASLt's int8 path on Hopper takes only "TN": both operands contiguous along K. In its
// column-major terms, C (m x n, ldc = m) = A^T B with A = the unpacked weights stored k x m (lda = k:
// row r of W is column r of A) and B = the activations stored k x n (ldb = k). C is then [n, m] row-major
// from our side: C[t * m + r]. m, k and the leading dimensions must be multiples of 4, so m is the row
// count rounded up to 4 (the extra rows of the workspace are zeros) and k = cols (a multiple of 256).
#include <dlfcn.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "cuda/kernels/cuda_util.cuh"
#include "cuda/kernels/kernels.cuh"
#include "cuda/kernels/ternary_common.cuh"

#if BLLAMA_HAVE_CUBLASLT
#include <cublasLt.h>
#endif

namespace bllama {
namespace cuda {

#if BLLAMA_HAVE_CUBLASLT

namespace {

// Row r of the words -> row r of out as int8 q = u - 1, 16 columns (one word) per thread. Rows in
// [rows, m_pad) are zeros.
__global__ void unpack_ternary_kernel(const uint32_t* __restrict__ words, int rows, int wpr, int m_pad,
                                      int8_t* __restrict__ out) {
    const size_t total = static_cast<size_t>(m_pad) * wpr;
    for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
         i += static_cast<size_t>(gridDim.x) * blockDim.x) {
        uint4 o = make_uint4(0, 0, 0, 0);
        if (i / wpr < static_cast<size_t>(rows)) {
            const uint32_t wd = words[i];
            // Bytes of (wd >> 2j) & 0x03030303 are u of columns 16w + 4j .. +3; per-byte u - 1 (wrapping
            // within each byte: 0 - 1 = 0xFF = -1).
            o.x = __vsub4((wd >> 0) & 0x03030303u, 0x01010101u);
            o.y = __vsub4((wd >> 2) & 0x03030303u, 0x01010101u);
            o.z = __vsub4((wd >> 4) & 0x03030303u, 0x01010101u);
            o.w = __vsub4((wd >> 6) & 0x03030303u, 0x01010101u);
        }
        reinterpret_cast<uint4*>(out)[i] = o;
    }
}

// y from the int32 products c [n, ldc] (exact sum q * x), one thread per output element.
__global__ void lt_epilogue_kernel(const int32_t* __restrict__ c, int ldc, DevTernary w, DevActs x, int n_tokens,
                                   int out_rows, float* __restrict__ y, int ldy, Epilogue ep) {
    const bool glu = detail::is_glu(ep);
    for (int t = blockIdx.y; t < n_tokens; t += gridDim.y) {
        const float a = x.scale[t];
        const int32_t* ct = c + static_cast<size_t>(t) * ldc;
        float* yt = y + static_cast<size_t>(t) * ldy;
        for (int r = blockIdx.x * blockDim.x + threadIdx.x; r < out_rows; r += gridDim.x * blockDim.x) {
            const float v = detail::bitlinear_value(ct[r], detail::segment_scales(w, r), a);
            if (!glu) {
                detail::store_value(ep, yt + r, v);
            } else {
                const float u = detail::bitlinear_value(ct[r + out_rows], detail::segment_scales(w, r + out_rows), a);
                yt[r] = detail::glu_value(ep, v, u);
            }
        }
    }
}

// The entry points we use, typed from cublasLt.h.
struct LtApi {
    void* lib = nullptr;
    std::string path, error;
    decltype(&cublasLtGetVersion) get_version = nullptr;
    decltype(&cublasLtGetStatusName) status_name = nullptr;
    decltype(&cublasLtCreate) create = nullptr;
    decltype(&cublasLtDestroy) destroy = nullptr;
    decltype(&cublasLtMatmulDescCreate) desc_create = nullptr;
    decltype(&cublasLtMatmulDescDestroy) desc_destroy = nullptr;
    decltype(&cublasLtMatmulDescSetAttribute) desc_set = nullptr;
    decltype(&cublasLtMatrixLayoutCreate) layout_create = nullptr;
    decltype(&cublasLtMatrixLayoutDestroy) layout_destroy = nullptr;
    decltype(&cublasLtMatmulPreferenceCreate) pref_create = nullptr;
    decltype(&cublasLtMatmulPreferenceDestroy) pref_destroy = nullptr;
    decltype(&cublasLtMatmulPreferenceSetAttribute) pref_set = nullptr;
    decltype(&cublasLtMatmulAlgoGetHeuristic) heuristic = nullptr;
    decltype(&cublasLtMatmul) matmul = nullptr;
};

// A function of this file, for dladdr to find the shared object (or executable) that holds this code.
void lt_anchor() {}

template <class F>
bool resolve(void* lib, const char* name, F& fn, std::string& missing) {
    fn = reinterpret_cast<F>(dlsym(lib, name));
    if (!fn) missing += std::string(missing.empty() ? "" : ", ") + name;
    return fn != nullptr;
}

LtApi open_cublaslt() {
    LtApi api;
    std::vector<std::string> candidates;
    if (const char* env = std::getenv("BLLAMA_CUBLASLT"); env && *env) candidates.emplace_back(env);
    candidates.emplace_back("libcublasLt.so." + std::to_string(CUBLAS_VER_MAJOR));
    candidates.emplace_back("libcublasLt.so");
    candidates.emplace_back("/usr/local/cuda/lib64/libcublasLt.so." + std::to_string(CUBLAS_VER_MAJOR));
    Dl_info info{};
    if (dladdr(reinterpret_cast<void*>(&lt_anchor), &info) && info.dli_fname) {
        const std::string self = info.dli_fname;
        const size_t slash = self.rfind('/');
        if (slash != std::string::npos)
            candidates.push_back(self.substr(0, slash) + "/../nvidia/cu" + std::to_string(CUBLAS_VER_MAJOR) +
                                 "/lib/libcublasLt.so." + std::to_string(CUBLAS_VER_MAJOR));
    }
    std::string errors;
    for (const std::string& c : candidates) {
        void* lib = dlopen(c.c_str(), RTLD_NOW | RTLD_LOCAL);
        if (!lib) {
            const char* e = dlerror();  // names the file itself
            errors += "\n  " + (e ? std::string(e) : c + ": not found");
            continue;
        }
        std::string missing;
        bool ok = resolve(lib, "cublasLtGetVersion", api.get_version, missing);
        ok &= resolve(lib, "cublasLtGetStatusName", api.status_name, missing);
        ok &= resolve(lib, "cublasLtCreate", api.create, missing);
        ok &= resolve(lib, "cublasLtDestroy", api.destroy, missing);
        ok &= resolve(lib, "cublasLtMatmulDescCreate", api.desc_create, missing);
        ok &= resolve(lib, "cublasLtMatmulDescDestroy", api.desc_destroy, missing);
        ok &= resolve(lib, "cublasLtMatmulDescSetAttribute", api.desc_set, missing);
        ok &= resolve(lib, "cublasLtMatrixLayoutCreate", api.layout_create, missing);
        ok &= resolve(lib, "cublasLtMatrixLayoutDestroy", api.layout_destroy, missing);
        ok &= resolve(lib, "cublasLtMatmulPreferenceCreate", api.pref_create, missing);
        ok &= resolve(lib, "cublasLtMatmulPreferenceDestroy", api.pref_destroy, missing);
        ok &= resolve(lib, "cublasLtMatmulPreferenceSetAttribute", api.pref_set, missing);
        ok &= resolve(lib, "cublasLtMatmulAlgoGetHeuristic", api.heuristic, missing);
        ok &= resolve(lib, "cublasLtMatmul", api.matmul, missing);
        if (!ok) {
            errors += "\n  " + c + ": missing " + missing;
            dlclose(lib);
            continue;
        }
        const size_t version = api.get_version();
        if (version / 10000 != CUBLAS_VER_MAJOR) {
            errors += "\n  " + c + ": version " + std::to_string(version) + ", need major " +
                      std::to_string(CUBLAS_VER_MAJOR);
            dlclose(lib);
            continue;
        }
        api.lib = lib;
        api.path = c;
        return api;
    }
    api = LtApi{};
    api.error = "cuBLASLt could not be opened (set BLLAMA_CUBLASLT to the library's full path):" + errors;
    return api;
}

const LtApi& lt_api() {
    static const LtApi api = open_cublaslt();  // once per process; never closed
    return api;
}

void lt_check(cublasStatus_t s, const char* what) {
    if (s != CUBLAS_STATUS_SUCCESS)
        throw std::runtime_error(std::string("cuBLASLt: ") + what + " failed: " +
                                 (lt_api().status_name ? lt_api().status_name(s) : "") + " (" +
                                 std::to_string(static_cast<int>(s)) + ")");
}

int round_up4(int v) { return (v + 3) / 4 * 4; }

}  // namespace

struct CublasLtGemm::Impl {
    // One GEMM shape's descriptors and the algorithm the heuristic chose for it.
    struct Plan {
        cublasLtMatmulDesc_t desc = nullptr;
        cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
        cublasLtMatmulAlgo_t algo{};
    };

    const LtApi& api;
    int max_rows, max_cols, max_tokens;
    cublasLtHandle_t handle = nullptr;
    DeviceBuffer<int8_t> wq;       // [round_up4(max_rows), max_cols] unpacked weights
    DeviceBuffer<int32_t> prod;    // [max_tokens, round_up4(max_rows)] int32 products
    DeviceBuffer<uint8_t> lt_ws;   // cuBLASLt's own workspace
    std::mutex mu;                 // guards plans (run() may be called from several host threads)
    std::map<std::tuple<int, int, int>, Plan> plans;

    static constexpr size_t kLtWorkspace = 32u << 20;  // what cuBLASLt recommends for Hopper

    Impl(const LtApi& a, int rows, int cols, int tokens)
        : api(a),
          max_rows(rows),
          max_cols(cols),
          max_tokens(tokens),
          wq(static_cast<size_t>(round_up4(rows)) * cols),
          prod(static_cast<size_t>(tokens) * round_up4(rows)),
          lt_ws(kLtWorkspace) {
        lt_check(api.create(&handle), "cublasLtCreate");
    }
    ~Impl() {
        for (auto& kv : plans) {
            Plan& p = kv.second;
            if (p.a) api.layout_destroy(p.a);
            if (p.b) api.layout_destroy(p.b);
            if (p.c) api.layout_destroy(p.c);
            if (p.desc) api.desc_destroy(p.desc);
        }
        if (handle) api.destroy(handle);
    }

    // Descriptors and algorithm for C [m x n] = A^T [m x k] B [k x n]; host calls only (capture-safe).
    const Plan& plan(int m, int n, int k) {
        std::lock_guard<std::mutex> lock(mu);
        auto it = plans.find({m, n, k});
        if (it != plans.end()) return it->second;
        Plan p;
        try {
            lt_check(api.desc_create(&p.desc, CUBLAS_COMPUTE_32I, CUDA_R_32I), "cublasLtMatmulDescCreate");
            const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
            lt_check(api.desc_set(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), "set TRANSA");
            lt_check(api.desc_set(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), "set TRANSB");
            lt_check(api.layout_create(&p.a, CUDA_R_8I, k, m, k), "layout A");
            lt_check(api.layout_create(&p.b, CUDA_R_8I, k, n, k), "layout B");
            lt_check(api.layout_create(&p.c, CUDA_R_32I, m, n, m), "layout C");
            cublasLtMatmulPreference_t pref = nullptr;
            lt_check(api.pref_create(&pref), "cublasLtMatmulPreferenceCreate");
            const size_t ws = kLtWorkspace;
            cublasStatus_t s = api.pref_set(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
            cublasLtMatmulHeuristicResult_t result{};
            int found = 0;
            if (s == CUBLAS_STATUS_SUCCESS) s = api.heuristic(handle, p.desc, p.a, p.b, p.c, p.c, pref, 1, &result, &found);
            api.pref_destroy(pref);
            lt_check(s, "cublasLtMatmulAlgoGetHeuristic");
            if (found < 1)
                throw std::runtime_error("cuBLASLt: no int8 algorithm for m=" + std::to_string(m) +
                                         " n=" + std::to_string(n) + " k=" + std::to_string(k));
            p.algo = result.algo;
        } catch (...) {
            if (p.a) api.layout_destroy(p.a);
            if (p.b) api.layout_destroy(p.b);
            if (p.c) api.layout_destroy(p.c);
            if (p.desc) api.desc_destroy(p.desc);
            throw;
        }
        return plans.emplace(std::make_tuple(m, n, k), p).first->second;
    }
};

bool CublasLtGemm::available() { return lt_api().lib != nullptr; }

CublasLtGemm::CublasLtGemm(int max_rows, int max_cols, int max_tokens) {
    if (!available()) throw std::runtime_error(lt_api().error);
    if (max_rows <= 0 || max_cols <= 0 || max_cols % 256 != 0 || max_tokens <= 0)
        throw std::invalid_argument("CublasLtGemm: need max_rows > 0, max_cols a positive multiple of 256, "
                                    "max_tokens > 0");
    impl_ = std::make_unique<Impl>(lt_api(), max_rows, max_cols, max_tokens);
}

CublasLtGemm::~CublasLtGemm() = default;

void CublasLtGemm::run(const DevTernary& w, const DevActs& x, int n_tokens, float* y, int ldy, Epilogue ep,
                       cudaStream_t stream) {
    const int out_rows = check_ternary_args("CublasLtGemm::run", w, x, n_tokens, y, ldy, ep);
    if (w.rows > impl_->max_rows || w.cols > impl_->max_cols || n_tokens > impl_->max_tokens)
        throw std::invalid_argument("CublasLtGemm::run: " + std::to_string(w.rows) + " x " + std::to_string(w.cols) +
                                    " with " + std::to_string(n_tokens) + " tokens exceeds the workspace (" +
                                    std::to_string(impl_->max_rows) + " x " + std::to_string(impl_->max_cols) +
                                    ", " + std::to_string(impl_->max_tokens) + " tokens)");
    if (n_tokens == 0) return;
    const int m = round_up4(w.rows), k = w.cols, wpr = w.cols / 16;
    const int sms = device_limits().sms;

    const size_t total = static_cast<size_t>(m) * wpr;
    const int unpack_blocks = static_cast<int>(std::min<size_t>((total + 255) / 256, static_cast<size_t>(sms) * 16));
    unpack_ternary_kernel<<<unpack_blocks, 256, 0, stream>>>(w.words, w.rows, wpr, m, impl_->wq.get());
    CUDA_CHECK_LAUNCH();

    const Impl::Plan& p = impl_->plan(m, n_tokens, k);
    const int32_t one = 1, zero = 0;
    lt_check(impl_->api.matmul(impl_->handle, p.desc, &one, impl_->wq.get(), p.a, x.q, p.b, &zero, impl_->prod.get(),
                               p.c, impl_->prod.get(), p.c, &p.algo, impl_->lt_ws.get(), Impl::kLtWorkspace, stream),
             "cublasLtMatmul");

    const dim3 grid(std::min((out_rows + 255) / 256, 64), std::min(n_tokens, 65535));
    lt_epilogue_kernel<<<grid, 256, 0, stream>>>(impl_->prod.get(), m, w, x, n_tokens, out_rows, y, ldy, ep);
    CUDA_CHECK_LAUNCH();
}

#else  // !BLLAMA_HAVE_CUBLASLT

struct CublasLtGemm::Impl {};

namespace {
constexpr const char* kNoHeaders =
    "cuBLASLt support was not compiled in (cublasLt.h was not found at build time: pip install nvidia-cublas)";
}

bool CublasLtGemm::available() { return false; }
CublasLtGemm::CublasLtGemm(int, int, int) { throw std::runtime_error(kNoHeaders); }
CublasLtGemm::~CublasLtGemm() = default;
void CublasLtGemm::run(const DevTernary&, const DevActs&, int, float*, int, Epilogue, cudaStream_t) {
    throw std::runtime_error(kNoHeaders);
}

#endif  // BLLAMA_HAVE_CUBLASLT

}  // namespace cuda
}  // namespace bllama
